"""The client against gateways that behave as Bifrost's source says, over real loopback HTTP.

Most gateways here are scripted (`Gateway` below) so each test states exactly the behaviour it is about: Bifrost's
serial multi-key cursor, the cursor that `/v1/batches` never forwards to Anthropic/Gemini/Bedrock, a provider's own
401 beside the gateway's, error messages, page-size maxima, the raw-response header, pacing. The simulator covers
the end-to-end cases (auth modes, retries, retrieve of odd ids).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from exporter.client import (
    REASONS,
    BifrostClient,
    ListResult,
    PagePlace,
    RetrieveResult,
    _parse_retry_after,
    build_headers,
    parse_http_date,
)
from exporter.models import Batch
from exporter.providers import list_rules
from exporter.settings import Settings
from exporter.simulator import ProviderSpec, Simulator
from tests.harness import make_settings

KEY = "sk-bf-test-key-0001"


# --- a scripted gateway ------------------------------------------------------------------------------------------


@dataclass
class Seen:
    path: str  # raw request path, before any decoding
    query: dict[str, str]
    headers: dict[str, str]
    at: float  # the test clock when the request arrived


Reply = tuple[int, Any] | tuple[int, Any, dict[str, str]]
Route = Callable[[Seen], Reply]


@dataclass
class Gateway:
    """A loopback HTTP server answering every GET with `route`; records what it was asked."""

    route: Route
    clock: Callable[[], float] = time.monotonic
    seen: list[Seen] = field(default_factory=list)

    def serve(self, tls: ssl.SSLContext | None = None) -> Iterator[str]:
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                seen = Seen(
                    parts.path, query, {k.lower(): v for k, v in self.headers.items()}, gateway.clock()
                )
                gateway.seen.append(seen)
                reply = gateway.route(seen)
                status, body = reply[0], reply[1]
                headers = dict(reply[2]) if len(reply) == 3 else {}  # a copy: a reply may be sent again
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", headers.pop("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            server.socket = tls.wrap_socket(server.socket, server_side=True)
        thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
        thread.start()
        try:
            yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


@pytest.fixture
def gateway() -> Iterator[Callable[..., tuple[Gateway, str]]]:
    """Start scripted gateways for one test; all are stopped at its end."""
    running: list[Iterator[str]] = []

    def start(route: Route, clock: Callable[[], float] = time.monotonic) -> tuple[Gateway, str]:
        gw = Gateway(route, clock)
        serving = gw.serve()
        running.append(serving)
        return gw, next(serving)

    yield start
    for serving in running:
        for _ in serving:
            pass


def serial_cursor(key: int, native: str) -> str:
    """Bifrost's SerialCursor (core/schemas/pagination.go): URL-safe base64 of {"v":1,"i":key,"c":native}."""
    return base64.urlsafe_b64encode(json.dumps({"v": 1, "i": key, "c": native}).encode()).decode()


def serial_keys(keys: list[list[str]], *, reads_after: bool = True) -> Route:
    """Bifrost's serial multi-key listing (SerialListHelper): each key's pages in turn, then the next key.

    `reads_after=False` is what `/v1/batches` does for Anthropic, Gemini and Bedrock: the handler fills `After`,
    the provider reads `AfterID`/`PageToken`, so every request is answered with key 0's first page, and the
    next cursor built from that page is the same every time.
    """

    def route(seen: Seen) -> Reply:
        limit = int(seen.query.get("limit", "20"))
        key, start = 0, 0
        after = seen.query.get("after")
        if after and reads_after:
            cursor = json.loads(base64.urlsafe_b64decode(after))
            key = cursor["i"]
            start = keys[key].index(cursor["c"]) + 1 if cursor["c"] else 0
        ids = keys[key][start : start + limit]
        body: dict[str, Any] = {
            "object": "list",
            "data": [{"id": i, "object": "batch", "status": "in_progress"} for i in ids],
            "extra_fields": {"request_type": "batch_list", "latency": 25},
        }
        if start + limit < len(keys[key]):
            body |= {"has_more": True, "next_cursor": serial_cursor(key, ids[-1])}
        elif key + 1 < len(keys):
            body |= {"has_more": True, "next_cursor": serial_cursor(key + 1, "")}
        return 200, body

    return route


class FakeClock:
    """Monotonic time that moves only when the client sleeps, by exactly what it sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def settings_for(url: str, providers: list[str] | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"max_requests_per_second": 1000.0}
    values.update(overrides)
    return make_settings(url, providers or ["openai"], **values)


async def _list(settings: Settings, provider: str = "openai", **kw: Any) -> ListResult:
    client = BifrostClient(settings)
    try:
        return await client.list_batches(provider, **kw)
    finally:
        await client.aclose()


def list_once(settings: Settings, provider: str = "openai", **kw: Any) -> ListResult:
    return asyncio.run(_list(settings, provider, **kw))


def retrieve_once(settings: Settings, provider: str, batch_id: str, **client_kw: Any) -> RetrieveResult:
    async def run() -> RetrieveResult:
        client = BifrostClient(settings, **client_kw)
        try:
            return await client.retrieve(provider, batch_id)
        finally:
            await client.aclose()

    return asyncio.run(run())


def ids(result: ListResult) -> list[str]:
    return [b.id for b in result.batches]


# --- contract and headers ----------------------------------------------------------------------------------------


def test_reasons_keep_the_contract_order() -> None:
    assert REASONS == (
        "timeout",
        "connection",
        "auth",
        "upstream_auth",
        "rate_limited",
        "server_error",
        "client_error",
        "invalid_response",
        "cursor_loop",
        "cursor_ignored",
        "max_pages",
        "cursor_refused",  # v3: a cursor we sent was refused; the walk restarted from the head
    )


def test_retry_after_forms() -> None:
    now = time.time()
    assert _parse_retry_after("3", now) == 3
    assert _parse_retry_after(" 1.5 ", now) == 1.5
    assert _parse_retry_after("-4", now) == 0
    assert _parse_retry_after("nonsense", now) is None
    assert _parse_retry_after(None, now) is None
    http_date = _parse_retry_after(formatdate(now + 30, usegmt=True), now)
    assert http_date is not None and 28 <= http_date <= 31


def test_http_date_forms() -> None:
    """The gateway's Date (the cost horizon is judged on it too): junk is no time, never an exception."""
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT") == 784111777
    assert parse_http_date(" Sun, 06 Nov 1994 08:49:37 -0000 ") == 784111777  # no zone: GMT
    assert parse_http_date(formatdate(1_700_000_000, usegmt=True)) == 1_700_000_000
    for junk in (
        None,
        "",
        "nonsense",
        "Sun, 99 Nov 1994 08:49:37 GMT",
        "1700000000",
        "Sun, 06 Nov 99999 0:0:0",
    ):
        assert parse_http_date(junk) is None, junk


def test_headers_for_each_auth_mode() -> None:
    s = make_settings(
        "http://x",
        ["openai"],
        virtual_key=KEY,
        basic_auth_username="admin",
        basic_auth_password="pw",
        extra_headers={"X-Team": "batch", "Authorization": "ignored", "x-bf-send-back-raw-response": "true"},
    )
    h = build_headers(s)
    assert h["x-bf-vk"] == KEY
    assert h["Authorization"] == "Basic " + base64.b64encode(b"admin:pw").decode()
    assert h["X-Team"] == "batch"
    assert h["x-bf-send-back-raw-response"] == "false"  # extra_headers cannot turn the raw echo back on
    bearer = build_headers(make_settings("http://x", ["openai"], bearer_token="admin-session"))
    assert bearer["Authorization"] == "Bearer admin-session"
    assert "x-bf-vk" not in bearer


def test_every_request_asks_for_no_raw_response(gateway: Callable[..., tuple[Gateway, str]]) -> None:
    def route(seen: Seen) -> Reply:
        if seen.path.startswith("/v1/batches/"):
            return 200, {"id": "b1", "object": "batch", "status": "completed"}
        return serial_keys([["b1", "b2", "b3"]])(seen)

    gw, url = gateway(route)
    settings = settings_for(url, page_size=1)
    assert ids(list_once(settings)) == ["b1", "b2", "b3"]
    assert retrieve_once(settings, "openai", "b1").batch is not None
    assert len(gw.seen) == 4
    assert all(s.headers.get("x-bf-send-back-raw-response") == "false" for s in gw.seen)


def test_gateway_auth_accepts_our_headers_and_rejects_wrong_key() -> None:
    with Simulator(
        providers=[ProviderSpec("openai")], lifecycle=False, virtual_key=KEY, basic_auth=("admin", "pw")
    ) as sim:
        sim.add_batch("openai", batch_id="a")

        def poll(**auth: str) -> tuple[int, str | None]:
            result = list_once(settings_for(sim.url, ["openai"], **auth))
            return len(result.batches), result.failure.reason if result.failure else None

        assert poll(virtual_key=KEY, basic_auth_username="admin", basic_auth_password="pw") == (1, None)
        assert poll(virtual_key="sk-bf-wrong", basic_auth_username="admin", basic_auth_password="pw") == (
            0,
            "auth",
        )
        assert poll(virtual_key=KEY) == (0, "auth")


# --- retries -------------------------------------------------------------------------------------------------------


def test_retry_after_beyond_budget_fails_fast() -> None:
    with Simulator(providers=[ProviderSpec("openai")], lifecycle=False) as sim:
        sim.set_fault("rate_limit", retry_after=3600)
        clock = FakeClock()

        async def poll() -> ListResult:
            client = BifrostClient(
                settings_for(sim.url, max_retries=3), sleep=clock.sleep, monotonic=clock.monotonic
            )
            try:
                return await client.list_batches("openai")
            finally:
                await client.aclose()

        result = asyncio.run(poll())
        assert result.failure is not None and result.failure.reason == "rate_limited"
        assert clock.sleeps == []  # no point sleeping an hour inside one poll
        assert result.requests == 1


@pytest.mark.parametrize(
    ("fault", "reason", "retry_after", "held"),
    [
        ("rate_limit", "rate_limited", 600, 600),
        ("rate_limit", "rate_limited", 10**9, 3600),
        ("server_error", "server_error", 900, 900),
    ],
)
def test_a_long_retry_after_is_kept_to_across_polls(
    fault: str, reason: str, retry_after: int, held: int
) -> None:
    """A 429 asking for 10 minutes: the next polls fail as rate_limited without a request until then (a poll every
    30 s would otherwise spend the customer's limit asking again); capped at an hour; other providers are not held."""
    with Simulator(providers=[ProviderSpec("openai"), ProviderSpec("azure")], lifecycle=False) as sim:
        sim.add_batch("openai", batch_id="b1", status="in_progress")
        sim.set_fault(fault, provider="openai", retry_after=retry_after)
        clock = FakeClock()

        async def polls() -> list[ListResult]:
            client = BifrostClient(
                settings_for(sim.url, ["openai", "azure"], max_retries=3),
                sleep=clock.sleep,
                monotonic=clock.monotonic,
            )
            results = []
            try:
                results.append(await client.list_batches("openai"))
                sim.set_fault(None)
                clock.now += held - 1
                results.append(await client.list_batches("openai"))  # still held: not asked
                results.append(await client.list_batches("azure"))  # another provider: asked
                clock.now += 2
                results.append(await client.list_batches("openai"))  # the wait is over
                return results
            finally:
                await client.aclose()

        first, held_back, other, after = asyncio.run(polls())
        assert first.failure is not None and first.failure.reason == reason and first.requests == 1
        assert f"not asked again for {held}s" in first.failure.detail
        assert held_back.failure is not None and held_back.failure.reason == reason
        assert (
            held_back.requests == 0
            and "not asked: the gateway's Retry-After has 1s to run" in held_back.failure.detail
        )
        assert other.failure is None
        assert after.failure is None and ids(after) == ["b1"]
        assert sim.list_requests("openai") == 2 and clock.sleeps == []


def test_backoff_grows_with_jitter_and_stops_at_max_retries() -> None:
    with Simulator(providers=[ProviderSpec("openai")], lifecycle=False) as sim:
        sim.set_fault("server_error")
        clock = FakeClock()

        async def poll() -> ListResult:
            client = BifrostClient(
                settings_for(sim.url, max_retries=4),
                sleep=clock.sleep,
                monotonic=clock.monotonic,
                backoff_base=1.0,
                rng=lambda: 1.0,
            )
            try:
                return await client.list_batches("openai")
            finally:
                await client.aclose()

        result = asyncio.run(poll())
        assert result.failure is not None and result.failure.reason == "server_error"
        assert sim.list_requests("openai") == 5  # one try plus four retries
        assert (result.requests, result.retries, result.failure.attempts) == (5, 4, 5)
        assert clock.sleeps == [1.0, 2.0, 4.0, 8.0]  # the backoff already spaces the retries: no pacing wait


# --- loops: a repeated cursor, not a page of known ids -----------------------------------------------------------


def test_keys_of_one_account_listing_the_same_batches_are_not_a_loop(
    gateway: Callable[..., tuple[Gateway, str]],
) -> None:
    """OpenAI keys of one org list the same batches: key 1 repeats key 0 under new cursors, key 2 has more."""
    shared = [f"org-{i}" for i in range(5)]
    gw, url = gateway(serial_keys([shared, list(shared), ["other-0", "other-1"]]))
    result = list_once(settings_for(url, page_size=2))
    assert result.failure is None and result.truncated is None
    assert ids(result) == [*shared, "other-0", "other-1"]
    assert result.batch_count == 7
    assert result.pages == 3 + 3 + 1
    assert (result.stopped, result.next_cursor) == ("end", None)
    assert result.requests == len(gw.seen) == 7


def test_duplicate_pages_are_bounded_by_max_pages(gateway: Callable[..., tuple[Gateway, str]]) -> None:
    shared = [f"org-{i}" for i in range(4)]
    _, url = gateway(serial_keys([shared, list(shared), list(shared)]))
    result = list_once(settings_for(url, page_size=1, max_pages=6))
    assert result.truncated == "max_pages"
    assert result.pages == 6
    assert ids(result) == shared


@pytest.mark.parametrize("keys", [1, 3])
def test_gateway_ignoring_after_is_cursor_ignored(
    gateway: Callable[..., tuple[Gateway, str]], keys: int
) -> None:
    """Anthropic/Gemini/Bedrock through /v1/batches: every `after` is answered with page 1 and the same cursor."""
    batches = [[f"k{k}-{i}" for i in range(5)] for k in range(keys)]
    gw, url = gateway(serial_keys(batches, reads_after=False))
    result = list_once(settings_for(url, ["anthropic"], page_size=2), "anthropic")
    assert result.failure is None
    assert result.truncated == "cursor_ignored"
    assert ids(result) == ["k0-0", "k0-1"]  # what was seen is kept
    assert result.pages == 2 and len(gw.seen) == 2  # detected on the first repeat, no more requests
    detail = result.truncated_detail or ""
    assert "first page again" in detail and "anthropic" in detail
    assert "page_size up to 1000" in detail and "incremental" in detail
    assert len(detail) < 300


def test_old_gateway_without_next_cursor_ignoring_after(gateway: Callable[..., tuple[Gateway, str]]) -> None:
    """Older Bedrock converters set has_more from nextToken but no cursor at all: our cursor is the last id."""

    def route(seen: Seen) -> Reply:
        return 200, {
            "object": "list",
            "data": [{"id": "arn:aws:bedrock:us-east-1:1:model-invocation-job/a", "status": "InProgress"}],
            "has_more": True,
        }

    _, url = gateway(route)
    result = list_once(settings_for(url, ["bedrock"]), "bedrock")
    assert result.truncated == "cursor_ignored"
    assert result.batch_count == 1


def test_cursor_ignored_is_found_when_continuing_from_a_cursor(
    gateway: Callable[..., tuple[Gateway, str]],
) -> None:
    _, url = gateway(serial_keys([[f"b{i}" for i in range(6)]], reads_after=False))
    result = list_once(settings_for(url, ["gemini"], page_size=2), "gemini", after=serial_cursor(0, "b3"))
    assert result.truncated == "cursor_ignored"
    assert result.pages == 2
    assert ids(result) == ["b0", "b1"]


def test_cursor_ignored_is_found_on_a_one_page_continuation(
    gateway: Callable[..., tuple[Gateway, str]],
) -> None:
    """Incremental polls may read one page per poll: the repeat shows on the first page of the next call."""
    _, url = gateway(serial_keys([[f"b{i}" for i in range(6)]], reads_after=False))
    settings = settings_for(url, ["bedrock"], page_size=2)
    first = list_once(settings, "bedrock", max_pages=1, budget_truncates=False)
    assert (first.stopped, first.truncated) == ("budget", None) and first.next_cursor is not None
    again = list_once(settings, "bedrock", after=first.next_cursor, max_pages=1, budget_truncates=False)
    assert (again.truncated, again.pages) == ("cursor_ignored", 1)


def test_a_cursor_that_comes_back_later_is_a_loop(gateway: Callable[..., tuple[Gateway, str]]) -> None:
    """A → B → A with different pages each time: a repeat, but not the first page answered again."""
    pages = {None: ("p1", "A"), "A": ("p2", "B"), "B": ("p3", "A")}

    def route(seen: Seen) -> Reply:
        item, cursor = pages[seen.query.get("after")]
        return 200, {"object": "list", "data": [{"id": item}], "has_more": True, "next_cursor": cursor}

    _, url = gateway(route)
    result = list_once(settings_for(url))
    assert result.truncated == "cursor_loop"
    assert ids(result) == ["p1", "p2", "p3"]


def test_the_same_cursor_with_a_new_page_is_a_loop(gateway: Callable[..., tuple[Gateway, str]]) -> None:
    def route(seen: Seen) -> Reply:
        after = seen.query.get("after")
        data = [{"id": "first"}] if after is None else [{"id": f"after-{len(seen.path)}-{after}"}]
        return 200, {"object": "list", "data": data, "has_more": True, "next_cursor": after or "C"}

    _, url = gateway(route)
    result = list_once(settings_for(url))
    assert result.truncated == "cursor_loop"


def test_has_more_without_any_cursor(gateway: Callable[..., tuple[Gateway, str]]) -> None:
    _, url = gateway(lambda seen: (200, {"object": "list", "data": [], "has_more": True}))
    result = list_once(settings_for(url))
    assert result.truncated == "cursor_loop"
    assert "without any cursor" in (result.truncated_detail or "")


def test_empty_page_with_has_more_is_not_the_end(gateway: Callable[..., tuple[Gateway, str]]) -> None:
    _, url = gateway(serial_keys([[], [], ["b0", "b1"]]))
    result = list_once(settings_for(url))
    assert result.truncated is None and ids(result) == ["b0", "b1"] and result.pages == 3


# --- budgets, callers and continuation ---------------------------------------------------------------------------


def test_page_budget_without_truncation_continues_where_it_stopped(
    gateway: Callable[..., tuple[Gateway, str]],
) -> None:
    everything = [f"b{i}" for i in range(9)]
    _, url = gateway(serial_keys([everything[:5], everything[5:]]))
    settings = settings_for(url, page_size=2, max_pages=200)
    first = list_once(settings, max_pages=2, budget_truncates=False)
    assert (first.stopped, first.truncated, first.pages) == ("budget", None, 2)
    assert ids(first) == everything[:4] and first.next_cursor is not None
    rest = list_once(settings, after=first.next_cursor, max_pages=100, budget_truncates=False)
    assert (rest.stopped, rest.truncated, rest.next_cursor) == ("end", None, None)
    assert ids(first) + ids(rest) == everything


def test_page_budget_from_the_call_overrides_settings_and_truncates_by_default(
    gateway: Callable[..., tuple[Gateway, str]],
) -> None:
    _, url = gateway(serial_keys([[f"b{i}" for i in range(9)]]))
    result = list_once(settings_for(url, page_size=2, max_pages=200), max_pages=3)
    assert (result.truncated, result.stopped, result.pages) == ("max_pages", "end", 3)
    assert result.next_cursor is None
    assert "max_pages=3" in (result.truncated_detail or "")


def test_caller_stops_paging_cleanly(gateway: Callable[..., tuple[Gateway, str]]) -> None:
    everything = [f"b{i}" for i in range(7)]
    gw, url = gateway(serial_keys([everything]))
    pages: list[list[str]] = []

    def on_page(batches: list[Batch]) -> bool:
        pages.append([b.id for b in batches])
        return len(pages) < 2

    result = list_once(settings_for(url, page_size=3), on_page=on_page)
    assert pages == [everything[:3], everything[3:6]]
    assert (result.stopped, result.truncated, result.failure) == ("caller", None, None)
    assert result.batches == [] and result.batch_count == 6
    assert len(gw.seen) == 2 and result.next_cursor is not None
    rest = list_once(settings_for(url, page_size=3), after=result.next_cursor)
    assert ids(rest) == everything[6:]


def test_each_page_is_handed_over_with_the_cursor_it_was_read_with(
    gateway: Callable[..., tuple[Gateway, str]],
) -> None:
    """What the poller saves to read a page of running batches again: the cursor sent for it (None for the first),
    which, sent again, brings the same page back, also across the gateway's keys."""
    everything = [f"b{i}" for i in range(9)]
    _, url = gateway(serial_keys([everything[:5], everything[5:]]))
    settings = settings_for(url, page_size=2)
    place = PagePlace()
    pages: list[tuple[str | None, list[str]]] = []
    list_once(
        settings, on_page=lambda batches: pages.append((place.after, [b.id for b in batches])), place=place
    )
    assert [ids for _, ids in pages] == [["b0", "b1"], ["b2", "b3"], ["b4"], ["b5", "b6"], ["b7", "b8"]]
    assert pages[0][0] is None and all(after is not None for after, _ in pages[1:])
    for after, page_ids in pages[1:]:
        again = list_once(settings, after=after, max_pages=1, budget_truncates=False)
        assert ids(again) == page_ids


def test_on_page_sees_every_page_even_when_it_holds_only_known_ids(
    gateway: Callable[..., tuple[Gateway, str]],
) -> None:
    _, url = gateway(serial_keys([["a", "b"], ["a", "b"]]))
    seen: list[list[str]] = []
    result = list_once(settings_for(url), on_page=lambda batches: seen.append([b.id for b in batches]))
    assert seen == [["a", "b"], []]
    assert result.stopped == "end"


def test_requests_count_retries(gateway: Callable[..., tuple[Gateway, str]]) -> None:
    calls: list[int] = []

    def route(seen: Seen) -> Reply:
        calls.append(1)
        if len(calls) == 1:
            return 503, {"is_bifrost_error": True, "error": {"message": "warming up"}}
        return 200, {"object": "list", "data": [{"id": "x"}]}

    _, url = gateway(route)
    clock = FakeClock()

    async def run() -> ListResult:
        client = BifrostClient(settings_for(url, max_retries=2), sleep=clock.sleep, monotonic=clock.monotonic)
        try:
            return await client.list_batches("openai")
        finally:
            await client.aclose()

    result = asyncio.run(run())
    assert (result.requests, result.retries, result.pages, ids(result)) == (2, 1, 1, ["x"])


# --- page size per provider ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "sent"),
    [
        ("openai", 100),
        ("azure", 100),
        ("anthropic", 500),
        ("bedrock", 500),
        ("gemini", 500),
        ("my-custom", 500),
    ],
)
def test_page_size_is_clamped_to_the_provider_maximum(
    gateway: Callable[..., tuple[Gateway, str]], provider: str, sent: int
) -> None:
    gw, url = gateway(lambda seen: (200, {"object": "list", "data": []}))
    list_once(settings_for(url, [provider], page_size=500), provider)
    assert gw.seen[0].query["limit"] == str(sent)
    assert (list_rules(provider).max_page_size or 500) >= sent


def test_gigachat_is_sent_no_paging_parameter(gateway: Callable[..., tuple[Gateway, str]]) -> None:
    """GigaChat refuses any `limit` with an HTTP 500 operation error (docs/providers.md S18)."""
    gw, url = gateway(lambda seen: (200, {"object": "list", "data": []}))
    list_once(settings_for(url, ["gigachat"], page_size=500), "gigachat")
    assert gw.seen[0].query == {"provider": "gigachat"}


# --- errors: whose refusal, and what the gateway said -------------------------------------------------------------

PROVIDER_401 = {
    "is_bifrost_error": False,
    "status_code": 401,
    "error": {"type": "authentication_error", "message": "invalid x-api-key"},
    "extra_fields": {"provider": "anthropic", "request_type": "batch_list"},
}


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (401, PROVIDER_401, "upstream_auth"),
        (
            403,
            {"is_bifrost_error": False, "error": {"type": "permission_error", "message": "no"}},
            "upstream_auth",
        ),
        (
            401,
            {"is_bifrost_error": False, "error": {"code": "invalid_api_key", "message": "x"}},
            "upstream_auth",
        ),
        (401, {"is_bifrost_error": False, "status_code": 401, "error": {"message": "Unauthorized"}}, "auth"),
        (
            401,
            {"type": "virtual_key_required", "is_bifrost_error": False, "error": {"message": "vk"}},
            "auth",
        ),
        (
            401,
            {"is_bifrost_error": False, "error": {"type": "virtual_key_not_found", "message": "nf"}},
            "auth",
        ),
        (
            403,
            {"type": "provider_blocked", "is_bifrost_error": False, "error": {"message": "blocked"}},
            "auth",
        ),
        (403, {"is_bifrost_error": True, "error": {"type": "forbidden", "message": "nope"}}, "auth"),
        (401, b"<html>401 Authorization Required</html>", "auth"),
    ],
)
def test_provider_refusal_is_not_our_credentials(
    gateway: Callable[..., tuple[Gateway, str]], status: int, body: Any, reason: str
) -> None:
    _, url = gateway(lambda seen: (status, body))
    result = list_once(settings_for(url, ["anthropic"]), "anthropic")
    assert result.failure is not None
    assert (result.failure.reason, result.failure.status) == (reason, status)
    assert len(result.failure.detail) < 300
    retrieved = retrieve_once(settings_for(url, ["anthropic"]), "anthropic", "msgbatch_1")
    assert retrieved.failure is not None and retrieved.failure.reason == reason


def test_upstream_refusal_detail_names_the_provider_key(gateway: Callable[..., tuple[Gateway, str]]) -> None:
    _, url = gateway(lambda seen: (401, PROVIDER_401))
    failure = list_once(settings_for(url, ["anthropic"]), "anthropic").failure
    assert failure is not None
    assert failure.detail.startswith("HTTP 401 (authentication_error): invalid x-api-key")
    assert "provider key" in failure.detail


def test_gateway_message_reaches_the_detail(gateway: Callable[..., tuple[Gateway, str]]) -> None:
    body = {
        "is_bifrost_error": False,
        "status_code": 400,
        "error": {"message": "no batch-enabled keys found"},
    }
    _, url = gateway(lambda seen: (400, body))
    failure = list_once(settings_for(url)).failure
    assert failure is not None
    assert (failure.reason, failure.detail) == ("client_error", "HTTP 400: no batch-enabled keys found")


def test_gateway_message_is_sanitised_bounded_and_redacted(
    gateway: Callable[..., tuple[Gateway, str]],
) -> None:
    message = (
        f"bad key {KEY}\n\x1b[31mred\x00 and upstream sk-proj-ABCDEF1234567890 Bearer eyJhbGciOi.J9 "
        "AIzaSyA1234567890abcdefghijklmnopqrstuv 0123456789abcdef0123456789ABCDEF " + "x" * 400
    )
    _, url = gateway(lambda seen: (500, {"is_bifrost_error": True, "error": {"message": message}}))
    failure = list_once(settings_for(url, virtual_key=KEY)).failure
    assert failure is not None and failure.reason == "server_error"
    detail = failure.detail
    assert KEY not in detail and "sk-proj-ABCDEF" not in detail and "eyJhbGciOi" not in detail
    assert "AIzaSy" not in detail and "0123456789abcdef" not in detail  # Google's and Azure's key shapes
    assert detail.count("[REDACTED]") == 5
    assert detail.isprintable() and "\n" not in detail
    assert len(detail) <= len("HTTP 500: ") + 160


def test_unsupported_provider_is_not_a_failure(gateway: Callable[..., tuple[Gateway, str]]) -> None:
    body = {
        "is_bifrost_error": False,
        "status_code": 400,
        "error": {
            "code": "unsupported_operation",
            "message": "batch_list is not supported by cohere provider",
        },
    }
    _, url = gateway(lambda seen: (400, body))
    result = list_once(settings_for(url, ["cohere"]), "cohere")
    assert result.unsupported and result.failure is None


# --- retrieve ------------------------------------------------------------------------------------------------------


def test_retrieve_a_batch_with_its_timestamps(gateway: Callable[..., tuple[Gateway, str]]) -> None:
    body = {
        "id": "batch_abc",
        "object": "batch",
        "status": "in_progress",
        "request_counts": {"total": 10, "completed": 4, "failed": 1},
        "created_at": 1_700_000_000,
        "in_progress_at": 1_700_000_060,
        "expires_at": 1_700_086_400,
        "extra_fields": {"request_type": "batch_retrieve", "latency": 250},
    }
    gw, url = gateway(lambda seen: (200, body))
    result = retrieve_once(settings_for(url), "openai", "batch_abc")
    assert result.failure is None and not result.gone
    assert result.batch is not None
    assert (result.batch.id, result.batch.normalized_status) == ("batch_abc", "in_progress")
    assert result.batch.in_progress_at == 1_700_000_060
    assert result.latency_seconds == 0.25
    assert result.requests == 1
    assert gw.seen[0].path == "/v1/batches/batch_abc" and gw.seen[0].query == {"provider": "openai"}


@pytest.mark.parametrize(
    ("provider", "batch_id", "path"),
    [
        (
            "vertex",
            "projects/p1/locations/us-central1/batchPredictionJobs/123",
            "/v1/batches/projects%2Fp1%2Flocations%2Fus-central1%2FbatchPredictionJobs%2F123",
        ),
        # Bedrock takes the job id for its ARN, Gemini adds "batches/" itself: no "/" has to cross the route.
        (
            "bedrock",
            "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/abc123def456",
            "/v1/batches/abc123def456",
        ),
        ("gemini", "batches/a1b2c3", "/v1/batches/a1b2c3"),
        # By the id's shape, not the name: a custom provider in Bifrost over the Bedrock or Gemini implementation.
        (
            "my-bedrock",
            "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/abc123def456",
            "/v1/batches/abc123def456",
        ),
        ("gemini-eu", "batches/a1b2c3", "/v1/batches/a1b2c3"),
        ("openai", "../../health?x=1#y", "/v1/batches/..%2F..%2Fhealth%3Fx=1%23y"),
    ],
)
def test_retrieve_sends_the_id_as_one_path_segment(
    gateway: Callable[..., tuple[Gateway, str]], provider: str, batch_id: str, path: str
) -> None:
    gw, url = gateway(lambda seen: (200, {"id": batch_id, "status": "completed"}))
    result = retrieve_once(settings_for(url, [provider]), provider, batch_id)
    assert result.batch is not None and result.batch.id == batch_id
    assert [s.path for s in gw.seen] == [path]


def test_retrieve_falls_back_to_the_full_id(gateway: Callable[..., tuple[Gateway, str]]) -> None:
    arn = "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/abc123def456"
    not_found = {"is_bifrost_error": False, "status_code": 404, "error": {"message": "job not found"}}

    def route(seen: Seen) -> Reply:
        if seen.path.endswith("model-invocation-job%2Fabc123def456"):
            return 200, {"id": arn, "status": "InProgress"}
        return 404, not_found

    gw, url = gateway(route)
    found = retrieve_once(settings_for(url, ["bedrock"]), "bedrock", arn)
    assert found.batch is not None and found.batch.id == arn
    assert (found.requests, len(gw.seen)) == (2, 2)
    gone = retrieve_once(
        settings_for(url, ["bedrock"]), "bedrock", arn.replace("abc123def456", "0000deadbeef")
    )
    assert (gone.gone, gone.failure, gone.requests) == (True, None, 2)


def test_a_bare_404_is_not_a_gone_batch(gateway: Callable[..., tuple[Gateway, str]]) -> None:
    """A router's or proxy's 404 says nothing about the batch: reporting it gone would drop live batches."""
    _, url = gateway(lambda seen: (404, b"Not Found", {"Content-Type": "text/plain"}))
    result = retrieve_once(settings_for(url), "openai", "batch_1")
    assert not result.gone and result.batch is None
    assert result.failure is not None and result.failure.reason == "client_error"
    assert "retrieve route" in result.failure.detail


def test_retrieve_odd_ids_from_the_simulator() -> None:
    vertex_id = "projects/p1/locations/us-central1/batchPredictionJobs/42"
    arn = "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/xyz0123456ab"
    specs = [ProviderSpec("vertex", flavor="vertex"), ProviderSpec("bedrock", flavor="bedrock")]
    with Simulator(providers=specs, lifecycle=False) as sim:
        sim.add_batch("vertex", batch_id=vertex_id, status="in_progress")
        sim.add_batch("bedrock", batch_id=arn, status="in_progress")
        settings = settings_for(sim.url, ["vertex", "bedrock"])
        got_vertex = retrieve_once(settings, "vertex", vertex_id)
        got_arn = retrieve_once(settings, "bedrock", arn)
        missing = retrieve_once(settings, "bedrock", arn + "-gone")
    assert got_vertex.batch is not None and got_vertex.batch.id == vertex_id
    assert got_arn.batch is not None and got_arn.batch.id == arn
    assert missing.gone and missing.batch is None and missing.failure is None


def test_retrieve_404_is_gone_not_a_failure(gateway: Callable[..., tuple[Gateway, str]]) -> None:
    body = {"is_bifrost_error": False, "status_code": 404, "error": {"message": "No batch found"}}
    _, url = gateway(lambda seen: (404, body))
    result = retrieve_once(settings_for(url), "openai", "batch_old")
    assert (result.gone, result.batch, result.failure, result.requests) == (True, None, None, 1)


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (200, {"object": "list", "data": []}, "invalid_response"),
        (200, b"[1, 2]", "invalid_response"),
        (200, {"status": "completed"}, "invalid_response"),
        (500, {"is_bifrost_error": True, "error": {"message": "boom"}}, "server_error"),
        (429, {"type": "rate_limited", "error": {"message": "slow down"}}, "rate_limited"),
        (400, {"error": {"code": "unsupported_operation", "message": "no"}}, "client_error"),
    ],
)
def test_retrieve_failures_are_classified(
    gateway: Callable[..., tuple[Gateway, str]], status: int, body: Any, reason: str
) -> None:
    gw, url = gateway(lambda seen: (status, body, {"Retry-After": "0"}))
    clock = FakeClock()
    result = retrieve_once(
        settings_for(url, max_retries=2), "openai", "b1", sleep=clock.sleep, monotonic=clock.monotonic
    )
    assert result.batch is None and not result.gone
    assert result.failure is not None and result.failure.reason == reason
    retried = reason in ("server_error", "rate_limited")
    assert result.requests == len(gw.seen) == (3 if retried else 1)


def test_retrieve_never_raises_on_a_dead_gateway() -> None:
    result = retrieve_once(settings_for("http://127.0.0.1:9", max_retries=0), "openai", "b1")
    assert result.failure is not None and result.failure.reason == "connection"


# --- pacing --------------------------------------------------------------------------------------------------------


def test_requests_of_one_provider_are_paced(gateway: Callable[..., tuple[Gateway, str]]) -> None:
    clock = FakeClock()

    def route(seen: Seen) -> Reply:
        if seen.path.startswith("/v1/batches/"):
            return 200, {"id": seen.path.rsplit("/", 1)[1], "status": "in_progress"}
        return serial_keys([[f"b{i}" for i in range(10)]])(seen)

    gw, url = gateway(route, clock.monotonic)
    settings = settings_for(url, ["openai", "anthropic"], page_size=2, max_requests_per_second=4.0)
    marks: dict[str, float] = {}

    async def run() -> None:
        client = BifrostClient(settings, sleep=clock.sleep, monotonic=clock.monotonic)
        try:
            listed = await client.list_batches("openai")  # 5 pages, one after the other
            assert listed.batch_count == 10
            for i in range(2):  # retrieves share the provider's budget with the list
                assert (await client.retrieve("openai", f"b{i}")).batch is not None
            marks["before_other"] = clock.now
            assert (await client.retrieve("anthropic", "x")).batch is not None  # its own budget: no wait
            marks["before_burst"] = clock.now
            sleeps_before = len(clock.sleeps)
            burst = await asyncio.gather(*(client.retrieve("openai", f"c{i}") for i in range(6)))
            assert all(r.batch is not None for r in burst)
            marks["after_burst"] = clock.now
            assert len(clock.sleeps) - sleeps_before == 6  # every one of them waited for its slot
        finally:
            await client.aclose()

    asyncio.run(run())
    sequential = [s.at for s in gw.seen if s.query.get("provider") == "openai"][:7]
    assert [round(b - a, 9) for a, b in itertools.pairwise(sequential)] == [0.25] * 6
    assert max(sum(1 for t in sequential if s <= t < s + 1.0) for s in sequential) == 4
    anthropic = [s.at for s in gw.seen if s.query.get("provider") == "anthropic"]
    assert anthropic == [marks["before_other"]]
    # six concurrent retrieves queue behind each other instead of bursting: six slots of 1/4 s
    assert marks["after_burst"] - marks["before_burst"] == pytest.approx(6 * 0.25)


def _item(batch_id: str, created: Any) -> dict[str, Any]:
    return {"id": batch_id, "object": "batch", "status": "in_progress", "created_at": created}


def test_a_walk_of_which_nothing_can_be_read_fails_and_single_bad_items_are_skipped(
    gateway: Callable[..., tuple[Gateway, str]],
) -> None:
    """Items that changed shape (created_at as a date string): when no item of the walk can be read, the list fails
    as invalid_response (the poll keeps its last picture) instead of reporting an empty account, or a full list
    that saw every batch gone; a bad item among readable ones is skipped, as before."""
    pages: dict[str, list[dict[str, Any]]] = {}

    def route(seen: Seen) -> Reply:
        data = pages[seen.query.get("after", "")]
        more = seen.query.get("after", "") == "" and "p2" in pages
        body: dict[str, Any] = {"object": "list", "data": data, "has_more": more}
        if more:
            body["next_cursor"] = "p2"
        return 200, body

    _, url = gateway(route)
    settings = settings_for(url)
    pages[""] = [_item("a", "2026-12-06T10:00:00Z"), _item("b", "2026-12-06T10:01:00Z")]
    result = list_once(settings)
    assert result.failure is not None and result.failure.reason == "invalid_response"
    assert "no batch of the page could be read (2 items; first: " in result.failure.detail
    assert "created_at" in result.failure.detail
    pages[""] = [_item("a", 1_800_000_000), _item("b", "2026-12-06T10:01:00Z")]
    result = list_once(settings)
    assert result.failure is None and ids(result) == ["a"] and result.skipped_items == 1
    # A later page of nothing readable after readable ones: skipped (the walk could read something).
    pages["p2"] = [_item("c", "garbage")]
    result = list_once(settings)
    assert result.failure is None and ids(result) == ["a"] and result.skipped_items == 2

"""The simulator is product code other suites trust as "the gateway": these tests pin it to the API facts over
real HTTP on loopback, so a drift here cannot silently make every other suite test the wrong thing."""

from __future__ import annotations

import base64
import functools
import json
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from exporter.simulator import (
    DEFAULT_PROVIDERS,
    FAULTS,
    TERMINAL_STATUSES,
    ProviderSpec,
    Simulator,
    build_script,
    decode_cursor,
    encode_cursor,
    generate_batches,
    list_page_bytes,
)
from exporter.simulator.flavors import Flavor
from tests.conftest import free_port

T0 = 1_700_000_000.0


_SSL = ssl.create_default_context()
NO_RAW = {"x-bf-send-back-raw-response": "false"}  # what the exporter sends: no raw-response echo


def http(base_url: str) -> httpx.Client:
    """One shared SSL context: httpx would otherwise load the CA bundle per client, ~0.1 s each."""
    return httpx.Client(base_url=base_url, timeout=10, verify=_SSL)


class FakeClock:
    """Lifecycles move only when the test says so."""

    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def static(clock: FakeClock) -> Iterator[Simulator]:
    """An empty, still gateway: tests build exact scenarios in it."""
    with Simulator(lifecycle=False, clock=clock) as sim:
        yield sim


@pytest.fixture
def client(static: Simulator) -> Iterator[httpx.Client]:
    with http(static.url) as c:
        yield c


def walk(c: httpx.Client, provider: str, limit: int | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """A client following the facts' cursor rules; returns the ids seen and every page body."""
    ids: list[str] = []
    pages: list[dict[str, Any]] = []
    after: str | None = None
    for _ in range(200):
        params: dict[str, Any] = {"provider": provider}
        if limit is not None:
            params["limit"] = limit
        if after is not None:
            params["after"] = after
        r = c.get("/v1/batches", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        pages.append(body)
        ids.extend(item["id"] for item in body["data"])
        if not body.get("has_more"):
            return ids, pages
        after = (
            body.get("next_cursor")
            or body.get("last_id")
            or (body["data"][-1]["id"] if body["data"] else None)
        )
        assert after is not None
    raise AssertionError("paging did not terminate")


# ---- paging --------------------------------------------------------------------------------------------------


def test_cursor_paging_visits_every_batch_once_across_keys_including_an_empty_key(clock: FakeClock) -> None:
    spec = ProviderSpec("multi", keys=3, empty_keys=(1,))
    with (
        Simulator(providers=[spec], lifecycle=False, clock=clock) as sim,
        http(sim.url) as c,
    ):
        added = [sim.add_batch("multi", created_at=int(T0) - i)["id"] for i in range(7)]
        ids, pages = walk(c, "multi", limit=3)
    assert sorted(ids) == sorted(added)
    assert len(ids) == len(set(ids))
    # Key boundaries: a short page and an empty page (key 1) that still say has_more.
    assert any(p["data"] == [] and p.get("has_more") is True for p in pages[:-1])
    assert any(len(p["data"]) == 1 and p.get("has_more") is True for p in pages)
    assert "has_more" not in pages[-1]
    assert "next_cursor" not in pages[-1]
    assert all("next_cursor" in p for p in pages[:-1])
    for p in pages[:-1]:
        decoded = decode_cursor(p["next_cursor"])
        assert decoded is not None


def test_default_openai_pages_over_an_empty_key_then_one_org_twice(
    static: Simulator, client: httpx.Client
) -> None:
    """Key 0 belongs to an empty project; keys 1 and 2 to one org, which lists the same batches under each key."""
    openai = next(s for s in DEFAULT_PROVIDERS if s.name == "openai")
    assert (openai.keys, openai.empty_keys, openai.shared_account) == (3, (0,), True)
    ids = [static.add_batch("openai")["id"] for _ in range(3)]
    first = client.get("/v1/batches", params={"provider": "openai"}).json()
    assert first["data"] == []
    assert first["has_more"] is True
    assert "first_id" not in first
    assert "last_id" not in first
    seen, pages = walk(client, "openai")
    assert sorted(seen) == sorted(ids * 2)  # every batch once per key of the org
    cursors = [p["next_cursor"] for p in pages[:-1]]
    assert len(cursors) == len(set(cursors))  # ...each time under a new cursor: not a loop


def test_cursor_is_bifrost_serial_cursor() -> None:
    """core/schemas/pagination.go: URL-safe base64 of {"v":1,"i":key index,"c":native cursor}."""
    cursor = encode_cursor(1, "batch_abc")
    assert json.loads(base64.urlsafe_b64decode(cursor)) == {"v": 1, "i": 1, "c": "batch_abc"}
    assert decode_cursor(cursor) == (1, "batch_abc")
    assert decode_cursor(encode_cursor(2, None)) == (2, None)
    assert decode_cursor("batch_abc") is None
    assert decode_cursor("batches/0123456789abcdef0123") is None
    wrong_version = base64.urlsafe_b64encode(b'{"v":2,"i":0,"c":""}').decode()
    assert decode_cursor(wrong_version) is None


def test_legacy_paging_uses_last_id_and_never_sends_next_cursor(
    static: Simulator, client: httpx.Client
) -> None:
    added = [static.add_batch("azure", created_at=int(T0) - i)["id"] for i in range(5)]
    ids, pages = walk(client, "azure", limit=2)
    assert ids == added  # newest first
    assert [len(p["data"]) for p in pages] == [2, 2, 1]
    assert all("next_cursor" not in p for p in pages)
    assert pages[0]["first_id"] == added[0]
    assert pages[0]["last_id"] == added[1]
    assert pages[0]["has_more"] is True
    assert "has_more" not in pages[-1]


def test_anything_but_a_serial_cursor_is_http_500_in_cursor_style(
    static: Simulator, client: httpx.Client
) -> None:
    """A raw batch id or garbage as `after` fails DecodeSerialCursor: NewBifrostOperationError("invalid pagination
    cursor") is a Bifrost error without a status, which the transport sends as 500."""
    ids = [static.add_batch("openai", created_at=int(T0) - i)["id"] for i in range(4)]
    for after in (ids[1], "nope", "eyJ2IjoyfQ=="):
        r = client.get("/v1/batches", params={"provider": "openai", "after": after})
        assert r.status_code == 500, after
        assert r.json() == {
            "is_bifrost_error": True,
            "error": {"message": "invalid pagination cursor"},
            "extra_fields": {"provider": "openai", "request_type": "batch_list"},
        }
    past_last_key = client.get("/v1/batches", params={"provider": "openai", "after": encode_cursor(9, None)})
    assert past_last_key.status_code == 200  # every key exhausted: an empty final page
    assert past_last_key.json()["data"] == []
    assert "has_more" not in past_last_key.json()


def test_after_an_id_dropped_meanwhile_still_continues(static: Simulator, client: httpx.Client) -> None:
    ids = [static.add_batch("azure", created_at=int(T0) - i)["id"] for i in range(4)]
    page = client.get("/v1/batches", params={"provider": "azure", "limit": 2}).json()
    static.delete("azure", ids[1])  # lifecycle trimming can do this between pages
    rest = client.get("/v1/batches", params={"provider": "azure", "after": page["last_id"]}).json()
    assert [b["id"] for b in rest["data"]] == ids[2:]


def test_changes_made_atomically_reach_a_list_all_at_once(static: Simulator, client: httpx.Client) -> None:
    """A request that arrives during the block waits for its end and sees the whole burst, never a part."""
    seen: list[int] = []
    with static.atomically():
        static.add_batch("azure", created_at=int(T0))
        reader = threading.Thread(
            target=lambda: seen.append(
                len(client.get("/v1/batches", params={"provider": "azure"}).json()["data"])
            )
        )
        reader.start()
        reader.join(0.3)  # the list waits on the block (a real request takes milliseconds here)
        assert reader.is_alive() and not seen
        static.add_batch("azure", created_at=int(T0))
    reader.join(10)
    assert seen == [2]


def test_empty_store_answers_an_empty_list_without_has_more(client: httpx.Client) -> None:
    body = client.get("/v1/batches", params={"provider": "anthropic"}).json()
    assert body["object"] == "list"
    assert body["data"] == []
    assert set(body) == {"object", "data", "extra_fields"}


@functools.cache
def _many() -> list[dict[str, Any]]:
    return generate_batches("p", 1100, now=T0)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, 4), ("3", 3), ("abc", 4), ("0", 4), ("-2", 4), ("2.5", 4), ("", 4), ("5000", 1000)],
)
def test_limit_is_used_only_when_a_positive_int_and_capped(
    clock: FakeClock, raw: str | None, expected: int
) -> None:
    spec = ProviderSpec("p", style="legacy", default_limit=4, max_limit=0)  # the kind cap at 1000
    with (
        Simulator(providers=[spec], lifecycle=False, clock=clock) as sim,
        http(sim.url) as c,
    ):
        sim.load_batches("p", _many())
        params = {"provider": "p"} if raw is None else {"provider": "p", "limit": raw}
        assert len(c.get("/v1/batches", params=params, headers=NO_RAW).json()["data"]) == expected


def test_before_is_accepted_and_ignored(static: Simulator, client: httpx.Client) -> None:
    static.add_batch("azure")
    r = client.get("/v1/batches", params={"provider": "azure", "before": "whatever"})
    assert r.status_code == 200
    assert len(r.json()["data"]) == 1


# ---- errors and auth -----------------------------------------------------------------------------------------


def test_missing_provider_gives_the_exact_bifrost_body(client: httpx.Client) -> None:
    r = client.get("/v1/batches")
    assert r.status_code == 400
    assert r.content == (
        b'{"is_bifrost_error":false,"status_code":400,"error":{"message":"provider query parameter is required"}}'
    )


@pytest.mark.parametrize("provider", ["cohere", "mistral", "groq", "my-custom"])
def test_unsupported_and_unknown_providers_answer_unsupported_operation(
    client: httpx.Client, provider: str
) -> None:
    r = client.get("/v1/batches", params={"provider": provider})
    assert r.status_code == 400
    body = r.json()
    assert body["error"]["code"] == "unsupported_operation"
    assert body["error"]["message"] == f"batch_list is not supported by {provider} provider"
    assert body["is_bifrost_error"] is False


VK = "sk-bf-test-key"
BASIC = "Basic " + base64.b64encode(b"admin:pw").decode()


@pytest.mark.parametrize(
    ("headers", "status", "err_type"),
    [
        ({"x-bf-vk": VK}, 200, None),
        ({"Authorization": f"Bearer {VK}"}, 200, None),
        ({"x-api-key": VK}, 200, None),
        ({"api-key": VK}, 200, None),
        ({}, 401, "virtual_key_required"),
        ({"x-bf-vk": "sk-bf-wrong"}, 401, "virtual_key_not_found"),
        ({"Authorization": "Bearer sk-bf-wrong"}, 401, "virtual_key_not_found"),
    ],
)
def test_virtual_key_variants(
    clock: FakeClock, headers: dict[str, str], status: int, err_type: str | None
) -> None:
    with Simulator(lifecycle=False, clock=clock, virtual_key=VK) as sim, http(sim.url) as c:
        r = c.get("/v1/batches", params={"provider": "openai"}, headers=headers)
        assert r.status_code == status
        if err_type is not None:
            # plugins/governance/main.go: the governance `type` is top-level, with governance's own wording
            body = r.json()
            assert body["type"] == err_type
            assert (body["is_bifrost_error"], body["status_code"]) == (False, 401)
            assert body["error"]["message"].startswith("virtual key")
            assert "type" not in body["error"]
        assert c.get("/health").status_code == 200  # health never needs auth


@pytest.mark.parametrize(
    ("headers", "status", "refusal"),
    [
        ({"Authorization": BASIC, "x-bf-vk": VK}, 200, None),
        ({"Authorization": BASIC}, 401, "virtual_key_required"),
        ({"x-bf-vk": VK}, 401, "Unauthorized"),
        (
            {"Authorization": "Basic " + base64.b64encode(b"admin:nope").decode(), "x-bf-vk": VK},
            401,
            "Unauthorized",
        ),
        # with Basic on, the key must come in x-bf-vk
        ({"Authorization": BASIC, "x-api-key": VK}, 401, "virtual_key_required"),
    ],
)
def test_basic_auth_needs_the_key_in_x_bf_vk(
    clock: FakeClock, headers: dict[str, str], status: int, refusal: str | None
) -> None:
    """The admin-auth middleware answers a bare "Unauthorized"; past it, governance refuses with its own type."""
    with (
        Simulator(lifecycle=False, clock=clock, virtual_key=VK, basic_auth=("admin", "pw")) as sim,
        http(sim.url) as c,
    ):
        r = c.get("/v1/batches", params={"provider": "openai"}, headers=headers)
        assert r.status_code == status
        if refusal == "Unauthorized":
            assert r.json() == {
                "is_bifrost_error": False,
                "status_code": 401,
                "error": {"message": "Unauthorized"},
            }
        elif refusal is not None:
            assert r.json()["type"] == refusal


def test_request_log_records_header_names_never_values(clock: FakeClock) -> None:
    with Simulator(lifecycle=False, clock=clock, virtual_key=VK) as sim, http(sim.url) as c:
        c.get("/v1/batches", params={"provider": "openai", "limit": 5}, headers={"x-bf-vk": VK})
        log = sim.request_log()
    assert log[-1]["path"] == "/v1/batches"
    assert log[-1]["query"] == {"provider": "openai", "limit": "5"}
    assert log[-1]["auth_headers"] == ["x-bf-vk"]
    assert VK not in json.dumps(log)


# ---- faults --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "content_type", "check"),
    [
        ("server_error", 500, "application/json", lambda r: r.json()["status_code"] == 500),
        ("bad_gateway", 502, "text/html", lambda r: "502 Bad Gateway" in r.text),
        ("rate_limit", 429, "application/json", lambda r: r.json()["error"]["type"] == "rate_limited"),
        ("html", 200, "text/html", lambda r: r.text.lstrip().lower().startswith("<!doctype html")),
        ("auth", 401, "application/json", lambda r: r.json()["error"]["message"] == "Unauthorized"),
        ("forbidden", 403, "application/json", lambda r: r.json()["type"] == "virtual_key_blocked"),
        (
            "upstream_auth",
            401,
            "application/json",
            lambda r: (
                r.json()["is_bifrost_error"] is False
                and r.json()["error"]["code"] == "invalid_api_key"
                and r.json()["extra_fields"]["provider"] == "openai"
                and "type" not in r.json()
            ),
        ),
        (
            "upstream_forbidden",
            403,
            "application/json",
            lambda r: r.json()["error"]["type"] == "invalid_request_error" and "type" not in r.json(),
        ),
        (
            "no_batch_keys",
            400,
            "application/json",
            lambda r: (
                r.json() == {"is_bifrost_error": False, "error": {"message": "no batch-enabled keys found"}}
            ),
        ),
        (
            "unsupported",
            400,
            "application/json",
            lambda r: r.json()["error"]["code"] == "unsupported_operation",
        ),
        ("malformed_json", 200, "application/json", lambda r: _invalid_json(r.content)),
        ("not_list", 200, "application/json", lambda r: r.json().get("object") == "batch"),
    ],
)
def test_http_faults(
    static: Simulator, client: httpx.Client, fault: str, status: int, content_type: str, check: Any
) -> None:
    static.add_batch("openai", api_key=0)
    static.set_fault(fault)
    r = client.get("/v1/batches", params={"provider": "openai"})
    assert r.status_code == status
    assert r.headers["content-type"].startswith(content_type)
    assert r.headers["content-length"] == str(len(r.content))
    assert check(r)


def _invalid_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except ValueError:
        return True
    return False


def test_rate_limit_carries_retry_after(static: Simulator, client: httpx.Client) -> None:
    static.set_fault("rate_limit", retry_after=7)
    assert client.get("/v1/batches", params={"provider": "openai"}).headers["retry-after"] == "7"
    static.set_fault("rate_limit")
    assert client.get("/v1/batches", params={"provider": "openai"}).headers["retry-after"] == "1"


def test_not_list_can_be_a_json_array(static: Simulator, client: httpx.Client) -> None:
    static.add_batch("azure")
    static.set_fault("not_list", shape="array")
    assert isinstance(client.get("/v1/batches", params={"provider": "azure"}).json(), list)


def test_fault_times_clears_itself_and_provider_scope(static: Simulator, client: httpx.Client) -> None:
    static.set_fault("server_error", provider="azure", times=2)
    codes = [client.get("/v1/batches", params={"provider": "azure"}).status_code for _ in range(3)]
    assert codes == [500, 500, 200]
    static.set_fault("server_error", provider="azure")
    assert client.get("/v1/batches", params={"provider": "bedrock"}).status_code == 200
    assert client.get("/v1/batches", params={"provider": "azure"}).status_code == 500
    static.set_fault(None)
    assert client.get("/v1/batches", params={"provider": "azure"}).status_code == 200
    with pytest.raises(ValueError):
        static.set_fault("no_such_fault")
    assert "cursor_loop" in FAULTS


def test_faults_do_not_touch_health_or_retrieve(static: Simulator, client: httpx.Client) -> None:
    b = static.add_batch("azure")
    static.set_fault("server_error")
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get(f"/v1/batches/{b['id']}", params={"provider": "azure"}).status_code == 200


def test_slow_fault_delays_the_answer(static: Simulator, client: httpx.Client) -> None:
    static.set_fault("slow", delay=3, times=1)
    started = time.monotonic()
    assert client.get("/v1/batches", params={"provider": "openai"}).status_code == 200
    assert time.monotonic() - started >= 3
    started = time.monotonic()
    assert client.get("/v1/batches", params={"provider": "openai"}).status_code == 200
    assert time.monotonic() - started < 3  # times=1: gone after one request


def test_page_delay_is_applied_per_page(clock: FakeClock) -> None:
    spec = ProviderSpec("p", page_delay=0.1)
    with (
        Simulator(providers=[spec], lifecycle=False, clock=clock) as sim,
        http(sim.url) as c,
    ):
        started = time.monotonic()
        c.get("/v1/batches", params={"provider": "p"})
        assert time.monotonic() - started >= 0.1


def test_cursor_loop_returns_the_cursor_it_was_given(static: Simulator, client: httpx.Client) -> None:
    for i in range(5):
        static.add_batch("openai", created_at=int(T0) - i)
    static.set_fault("cursor_loop")
    first = client.get("/v1/batches", params={"provider": "openai", "limit": 2}).json()
    assert first["has_more"] is True
    cursor = first["next_cursor"]
    for _ in range(3):
        page = client.get("/v1/batches", params={"provider": "openai", "limit": 2, "after": cursor}).json()
        assert page["has_more"] is True
        assert page["next_cursor"] == cursor


def test_repeat_page_ignores_after_with_fresh_cursors(static: Simulator, client: httpx.Client) -> None:
    for i in range(5):
        static.add_batch("anthropic", created_at=int(T0) - i)
    static.set_fault("repeat_page", provider="anthropic")
    pages = []
    after = None
    for _ in range(3):
        params: dict[str, Any] = {"provider": "anthropic", "limit": 2}
        if after:
            params["after"] = after
        page = client.get("/v1/batches", params=params).json()
        pages.append(page)
        after = page["next_cursor"]
    assert all(p["has_more"] is True for p in pages)
    assert len({p["next_cursor"] for p in pages}) == 3  # the cursor never repeats...
    assert len({tuple(b["id"] for b in p["data"]) for p in pages}) == 1  # ...only the ids reveal the loop


def test_no_cursor_claims_more_without_any_way_to_get_it(static: Simulator, client: httpx.Client) -> None:
    static.add_batch("bedrock")
    static.set_fault("no_cursor", provider="bedrock")
    body = client.get("/v1/batches", params={"provider": "bedrock"}).json()
    assert body["has_more"] is True
    assert body["data"] == []
    assert not {"next_cursor", "last_id", "first_id"} & set(body)


# ---- control endpoints ---------------------------------------------------------------------------------------


def test_control_endpoints(static: Simulator, client: httpx.Client) -> None:
    r = client.post("/_sim/batches", json={"provider": "azure", "status": "completed", "batch_id": "batch_x"})
    assert r.status_code == 200
    assert r.json()["id"] == "batch_x"
    assert r.json()["completed_at"] == int(T0)
    r = client.post(
        "/_sim/batches/batch_x/status", json={"provider": "azure", "status": "failed", "at": int(T0) + 5}
    )
    assert r.status_code == 200
    assert r.json()["failed_at"] == int(T0) + 5
    assert static.batches("azure")[0]["status"] == "failed"
    r = client.post(
        "/_sim/fault", json={"fault": "rate_limit", "provider": "azure", "times": 1, "retry_after": 3}
    )
    assert r.status_code == 200
    limited = client.get("/v1/batches", params={"provider": "azure"})
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "3"
    assert client.get("/v1/batches", params={"provider": "azure"}).status_code == 200
    state = client.get("/_sim/state").json()
    assert state["providers"]["azure"]["statuses"] == {"failed": 1}
    assert state["providers"]["azure"]["list_requests"] == 2
    assert client.post("/_sim/fault", json={"fault": "bogus"}).status_code == 400
    assert client.post("/_sim/batches", json={"provider": "nope"}).status_code == 400
    assert static.list_requests("azure") == 2
    assert static.list_requests() == 2
    assert client.get("/v1/batches/batch_x", params={"provider": "azure"}).status_code == 200
    assert client.get("/_sim/state").json()["providers"]["azure"]["requests"]["retrieve"] == 1
    assert static.requests("azure", "retrieve") == 1
    assert client.post("/_sim/batches/batch_x/delete", json={"provider": "azure"}).json() == {
        "deleted": "batch_x"
    }
    assert client.post("/_sim/batches/batch_x/delete", json={"provider": "azure"}).status_code == 404
    assert static.batches("azure") == []


# ---- store semantics -----------------------------------------------------------------------------------------


def test_add_batch_sets_terminal_timestamps_and_fields_override(static: Simulator, clock: FakeClock) -> None:
    done = static.add_batch("openai", status="completed", created_at=int(T0) - 600)
    assert done["completed_at"] == int(T0)
    assert done["created_at"] == int(T0) - 600
    assert done["expires_at"] == int(T0) - 600 + 86_400
    nots = static.add_batch("openai", status="completed", completed_at=None, progress=40, extra_fields={})
    assert nots["completed_at"] is None
    assert nots["progress"] == 40
    assert nots["extra_fields"] == {}
    rc = static.add_batch("openai", status="failed", request_counts={"total": 3, "completed": 1, "failed": 2})
    assert rc["request_counts"] == {"total": 3, "completed": 1, "failed": 2}
    assert rc["failed_at"] == int(T0)
    clock.advance(10)
    static.set_status("openai", done["id"], "expired")
    after = next(b for b in static.batches("openai") if b["id"] == done["id"])
    assert after["status"] == "expired"
    assert after["expired_at"] == int(T0) + 10
    assert static.batches("openai")[0]["id"] == rc["id"]  # newest first (same created_at: latest added)
    static.clear("openai")
    assert static.batches("openai") == []
    with pytest.raises(ValueError):
        static.add_batch("nowhere")


def test_retrieve_and_cancel(clock: FakeClock) -> None:
    with Simulator(clock=clock, initial_batches=0, troubled=False) as sim, http(sim.url) as c:
        b = sim.add_batch("openai", status="in_progress")
        got = c.get(f"/v1/batches/{b['id']}", params={"provider": "openai"})
        assert got.status_code == 200
        assert got.json()["id"] == b["id"]
        assert c.get(f"/v1/batches/{b['id']}").status_code == 400
        assert c.get(f"/v1/batches/{b['id']}", params={"provider": "cohere"}).json()["error"]["code"] == (
            "unsupported_operation"
        )
        cancelled = c.post(f"/v1/batches/{b['id']}/cancel", params={"provider": "openai"})
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelling"
        assert cancelled.json()["cancelling_at"] == int(T0)
        clock.advance(30)
        final = c.get(f"/v1/batches/{b['id']}", params={"provider": "openai"}).json()
        assert final["status"] == "cancelled"
        assert final["cancelled_at"] > int(T0)
        assert c.post(f"/v1/batches/{b['id']}/cancel", params={"provider": "openai"}).status_code == 400
        assert sim.requests("openai", "retrieve") == 2
        assert sim.requests("openai", "cancel") == 2
        assert sim.requests(None, "retrieve") == 3  # the refused cohere retrieve was received too


def test_anthropic_cancel_ends_with_canceled_counts(clock: FakeClock) -> None:
    with Simulator(clock=clock, initial_batches=0, troubled=False) as sim, http(sim.url) as c:
        b = sim.add_batch("anthropic", status="in_progress")
        r = c.post(f"/v1/batches/{b['id']}/cancel", params={"provider": "anthropic"}).json()
        assert r["status"] == "cancelling"
        assert r["processing_status"] == "canceling"
        clock.advance(30)
        final = c.get(f"/v1/batches/{b['id']}", params={"provider": "anthropic"}).json()
    assert final["status"] == "ended"
    assert final["completed_at"] is not None
    assert final["request_counts"]["canceled"] == 60
    assert "pending" not in final["request_counts"]


# ---- lifecycle -----------------------------------------------------------------------------------------------


def test_lifecycle_starts_with_a_mix_and_moves_with_the_clock(clock: FakeClock) -> None:
    sim = Simulator(clock=clock, seed=3, max_batches=40, troubled=False)
    openai = sim.batches("openai")
    assert len(openai) == 12
    assert {"cohere", "mistral"}.isdisjoint(p for p, s in sim.state()["providers"].items() if s["batches"])
    for name in ("openai", "anthropic", "azure", "bedrock", "gemini", "vertex"):
        batches = sim.batches(name)
        statuses = {b["status"] for b in batches}
        assert statuses & TERMINAL_STATUSES, name
        for b in batches:
            if b["status"] in TERMINAL_STATUSES:
                ts = (
                    b.get("completed_at")
                    or b.get("failed_at")
                    or b.get("expired_at")
                    or b.get("cancelled_at")
                )
                assert ts is not None, (name, b)
                assert ts <= T0, (name, b)
    before = {b["id"]: b["status"] for b in sim.batches("openai")}
    clock.advance(300)
    sim.tick()
    after = {b["id"]: b for b in sim.batches("openai")}
    assert 10 <= len(after) - len(before) <= 30  # roughly one new batch per 20 s
    moved = [bid for bid, status in before.items() if after[bid]["status"] != status]
    assert moved
    finished = [b for b in after.values() if b["status"] == "completed" and b["completed_at"] > T0]
    assert finished
    assert all(b["request_counts"]["completed"] > 0 for b in finished)
    assert all(b["completed_at"] >= b["finalizing_at"] >= b["in_progress_at"] for b in finished)
    clock.advance(4 * 3600)
    sim.tick()
    for name in ("openai", "azure", "gemini"):
        assert len(sim.batches(name)) <= 40


def test_lifecycle_is_deterministic_per_seed() -> None:
    a_clock, b_clock = FakeClock(), FakeClock()
    a = Simulator(clock=a_clock, seed=7)
    b = Simulator(clock=b_clock, seed=7)
    for _ in range(5):
        a_clock.advance(37)
        b_clock.advance(37)
        a.tick()
    b.tick()  # fewer ticks, same clock: the same world
    assert a.batches("vertex") == b.batches("vertex")
    assert Simulator(clock=FakeClock(), seed=8).batches("vertex") != a.batches("vertex")


def test_lifecycle_ticks_lazily_on_list_requests(clock: FakeClock) -> None:
    with Simulator(clock=clock, initial_batches=0, troubled=False) as sim, http(sim.url) as c:
        assert walk(c, "azure")[0] == []
        clock.advance(120)
        assert len(walk(c, "azure")[0]) >= 3


def test_lifecycle_false_changes_only_through_the_api(static: Simulator, clock: FakeClock) -> None:
    static.add_batch("openai", status="in_progress")
    snapshot = static.batches("openai")
    clock.advance(3600)
    static.tick()
    assert static.batches("openai") == snapshot


def test_flavors_have_their_fields(clock: FakeClock) -> None:
    sim = Simulator(clock=clock, seed=1, initial_batches=30, max_batches=1000)
    clock.advance(1800)
    sim.tick()
    anthropic = sim.batches("anthropic")
    assert all(b["id"].startswith("msgbatch_") for b in anthropic)
    assert "completed" not in {b["status"] for b in anthropic}
    ended = [b for b in anthropic if b["status"] == "ended"]
    assert ended
    assert all(b["completed_at"] and b["processing_status"] == "ended" and b["results_url"] for b in ended)
    assert any({"succeeded", "canceled", "expired"} & set(b["request_counts"]) for b in ended)
    assert all("pending" not in b["request_counts"] for b in ended)

    assert all("in_progress_at" not in b and "metadata" not in b for b in anthropic)  # Anthropic has neither

    gemini = sim.batches("gemini")
    assert all(b["id"].startswith("batches/") and b["operation_name"] and "done" in b for b in gemini)
    assert not {"validating", "finalizing", "deleted"} & {b["status"] for b in gemini}

    assert all(
        b["id"].startswith("arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/")
        for b in sim.batches("bedrock")
    )
    azure = {b["status"] for b in sim.batches("azure")}
    assert "canceled" in azure
    assert "cancelled" not in azure
    vertex = sim.batches("vertex")
    assert all("display_name" in b and "input_blob" in b and "output_blob" in b for b in vertex)
    assert all(
        b["id"].startswith("projects/123456789012/locations/us-central1/batchPredictionJobs/") for b in vertex
    )
    failed = [b for b in sim.batches("openai") if b["status"] == "failed"]
    assert failed
    assert all(b["failed_at"] and b["errors"] for b in failed)
    # a batch refused while validating never had a total (OpenAI reports 0); one that ran has failed requests
    assert all(b["request_counts"]["failed"] > 0 or b["request_counts"]["total"] == 0 for b in failed)
    codes = {e["code"] for b in failed for e in b["errors"]["data"]}
    assert codes <= {"invalid_json_line", "token_limit_exceeded", "model_not_found"}
    expired = [b for b in sim.batches("openai") + sim.batches("azure") if b["status"] == "expired"]
    assert all(b["errors"]["data"][0]["code"] == "batch_expired" for b in expired)
    finished = [b for b in sim.batches("openai") if b["status"] == "completed"]
    assert all(
        b["created_at"] <= b["in_progress_at"] <= b["finalizing_at"] <= b["completed_at"] for b in finished
    )
    teams = {(b.get("metadata") or {}).get("team") for b in sim.batches("openai")}
    assert teams - {None}  # OpenAI batches carry the owner's metadata


def test_vertex_queued_arrives_as_validating_never_raw() -> None:
    """Bifrost maps JOB_STATE_QUEUED to `validating`; a raw provider state never reaches the list."""
    clock = FakeClock()
    sim = Simulator(clock=clock, seed=2, initial_batches=0, max_batches=1000, troubled=False)
    seen: set[str] = set()
    for _ in range(60):
        clock.advance(10)
        sim.tick()
        seen |= {b["status"] for b in sim.batches("vertex")}
    assert "validating" in seen
    assert not any(status.startswith("JOB_STATE_") for status in seen)


@pytest.mark.parametrize("cache_debug", [False, True])
def test_response_extra_fields_by_style(clock: FakeClock, cache_debug: bool) -> None:
    """Newer gateways put only latency on items, older ones fill them fully. cache_debug never appears unless
    asked for: the semantic cache plugin skips batch request types (plugins/semanticcache)."""
    with (
        Simulator(clock=clock, seed=4, initial_batches=40, cache_debug=cache_debug) as sim,
        http(sim.url) as c,
    ):
        cursor_pages = [
            c.get("/v1/batches", params={"provider": "openai", "limit": 5}, headers=NO_RAW).json()
            for _ in range(15)
        ]
        legacy = c.get("/v1/batches", params={"provider": "azure", "limit": 40}).json()
    for page in cursor_pages:
        top = page["extra_fields"]
        assert top["request_type"] == "batch_list"
        assert top["provider"] == "openai"
        assert isinstance(top["latency"], int)
        assert top["latency"] > 0
        assert all(set(b["extra_fields"]) == {"latency"} for b in page["data"])
    assert len({p["extra_fields"]["latency"] for p in cursor_pages}) > 1  # jittered
    items = legacy["data"]
    assert all(
        {"request_type", "provider", "model_requested", "model_deployment", "latency"}
        <= set(b["extra_fields"])
        for b in items
    )
    debug = [b["extra_fields"]["cache_debug"] for b in items if "cache_debug" in b["extra_fields"]]
    debug += [p["extra_fields"]["cache_debug"] for p in cursor_pages if "cache_debug" in p["extra_fields"]]
    assert bool(debug) == cache_debug
    for d in debug:
        assert d["hit_type"] in ("direct", "semantic", None)
        assert ("similarity" in d) == (d["hit_type"] == "semantic")


# ---- scripted scenarios -------------------------------------------------------------------------------------


SCRIPT_PROVIDERS = (
    ProviderSpec("openai", flavor="openai", keys=3, empty_keys=(0,), shared_account=True),
    ProviderSpec("azure", style="legacy", flavor="azure"),
    ProviderSpec("anthropic", flavor="anthropic"),
)


def test_script_ground_truth_is_what_the_gateway_ends_with(clock: FakeClock) -> None:
    """The ground truth a chaos test holds an exporter to is what the gateway really shows at the end, and
    nothing of it has happened when the script starts."""
    sim = Simulator(
        providers=SCRIPT_PROVIDERS, clock=clock, initial_batches=0, troubled=False, arrivals=False
    )
    script = build_script(SCRIPT_PROVIDERS, seed=9, batches=45, duration=60.0, first_finish=5.0)
    start = sim.play(script)
    assert start == T0
    everything = [b for p in SCRIPT_PROVIDERS for b in sim.batches(p.name)]
    assert len(everything) == 45
    assert not {b["status"] for b in everything} & TERMINAL_STATUSES
    clock.advance(30)
    sim.tick()
    midway = sum(b["status"] in TERMINAL_STATUSES for p in SCRIPT_PROVIDERS for b in sim.batches(p.name))
    assert midway == sum(1 for offset, _, _ in script.finish_times() if offset <= 30)
    clock.advance(31)
    sim.tick()
    shown = Counter(
        (p.name, "cancelled" if b["status"] == "canceled" else b["status"])
        for p in SCRIPT_PROVIDERS
        for b in sim.batches(p.name)
    )
    assert shown == script.finished()
    codes: Counter[tuple[str, str, str]] = Counter()
    for p in SCRIPT_PROVIDERS:
        for b in sim.batches(p.name):
            if b["status"] in ("failed", "expired"):
                for e in (b.get("errors") or {}).get("data") or [{"code": "none"}]:
                    codes[(p.name, b["status"], e["code"])] += 1
    assert codes == script.failures()
    assert set(script.finished()) >= {("anthropic", "ended"), ("openai", "completed"), ("azure", "failed")}
    assert script == build_script(SCRIPT_PROVIDERS, seed=9, batches=45, duration=60.0, first_finish=5.0)
    assert all(5.0 <= b.finish <= 60.0 for b in script.batches)
    expired = [b for b in script.batches if b.outcome == "expired"]
    assert all(b.created == b.finish - 86_400 for b in expired)  # they expire at the end of their window


def test_play_needs_a_lifecycle_and_arrivals_off_keeps_the_script_alone(clock: FakeClock) -> None:
    script = build_script(SCRIPT_PROVIDERS, seed=1, batches=3, duration=10.0)
    with pytest.raises(ValueError):
        Simulator(providers=SCRIPT_PROVIDERS, lifecycle=False, clock=clock).play(script)
    sim = Simulator(
        providers=SCRIPT_PROVIDERS, clock=clock, initial_batches=0, troubled=False, arrivals=False
    )
    sim.play(script)
    clock.advance(3600)
    sim.tick()
    assert sum(len(sim.batches(p.name)) for p in SCRIPT_PROVIDERS) == 3


# ---- helpers for other suites --------------------------------------------------------------------------------


def test_generate_batches_is_realistic_newest_first_and_deterministic() -> None:
    batches = generate_batches("openai", 200, seed=5, now=T0)
    assert batches == generate_batches("openai", 200, seed=5, now=T0)
    created = [b["created_at"] for b in batches]
    assert created == sorted(created, reverse=True)
    assert len({b["id"] for b in batches}) == 200
    statuses = {b["status"] for b in batches}
    assert {"completed", "failed"} <= statuses
    assert statuses & {"validating", "in_progress", "finalizing"}
    assert all("latency" in b["extra_fields"] for b in batches)
    assert any("cache_debug" in b["extra_fields"] for b in batches)
    assert generate_batches("x", 3, flavor="anthropic", now=T0)[0]["id"].startswith("msgbatch_")


def test_list_page_bytes_matches_the_server(static: Simulator, client: httpx.Client) -> None:
    sim = Simulator(lifecycle=False, latency_ms=100, send_back_raw_response=False, clock=FakeClock())
    batches = generate_batches("azure", 3, now=T0, flavor="azure")
    sim.load_batches("azure", batches)
    with sim, http(sim.url) as c:
        served = c.get("/v1/batches", params={"provider": "azure"}).json()
    built = json.loads(
        list_page_bytes(batches, provider="azure", latency_ms=served["extra_fields"]["latency"])
    )
    assert built == served
    raw = list_page_bytes([], has_more=True, next_cursor="abc")
    assert raw.startswith(b'{"object":"list","data":[],"has_more":true,"next_cursor":"abc"')


# ---- CLI -----------------------------------------------------------------------------------------------------


def test_cli_serves_health_until_terminated() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter.simulator", "--port", str(port), "--seed", "1", "--virtual-key", VK],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == f"bifrost simulator listening on http://127.0.0.1:{port}"
        with http(f"http://127.0.0.1:{port}") as c:
            assert c.get("/health").json() == {"status": "ok"}
            assert c.get("/v1/batches", params={"provider": "azure"}).status_code == 401
            listed = c.get("/v1/batches", params={"provider": "azure"}, headers={"x-bf-vk": VK})
            assert listed.status_code == 200
            assert listed.json()["data"]
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize(("flavor", "maximum"), [("openai", 100), ("azure", 100), ("anthropic", 1000)])
def test_a_provider_refuses_a_limit_above_its_own_maximum_by_default(flavor: Flavor, maximum: int) -> None:
    """Realistic is the default: OpenAI and Azure answer 400 above 100, Anthropic above 1000 (the gateway passes
    `limit` on), so an exporter whose clamp regressed fails in every suite, not only in those that opt in."""
    with Simulator(providers=[ProviderSpec("p", flavor=flavor)], lifecycle=False) as sim, http(sim.url) as c:
        ok = c.get("/v1/batches", params={"provider": "p", "limit": str(maximum)}, headers=NO_RAW)
        refused = c.get("/v1/batches", params={"provider": "p", "limit": str(maximum + 1)}, headers=NO_RAW)
    assert ok.status_code == 200
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "integer_above_max_value"

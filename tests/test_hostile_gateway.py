"""Gateways that misbehave in ways the simulator's switchable faults do not: raw asyncio servers written here.

Each case checks the four things an unattended exporter owes its operator: the poll ends in bounded time (the
request timeout), in bounded memory (max_response_bytes), with one warning line (not a traceback or a flood), and
with the right reason in `bifrost_batch_exporter_poll_errors_total`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import json
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from exporter.client import BifrostClient
from exporter.logs import configure
from exporter.models import parse_batch, parse_page
from exporter.poller import Poller
from exporter.settings import Settings

VIRTUAL_KEY = "sk-bf-hostile-test-virtual-key-0001"
CAP = 256 * 1024
TIMEOUT = 0.5
# The request timeout of a case whose reason is not a timeout: a loaded CI machine (and tracemalloc, on during every
# case) can take longer than TIMEOUT to send or refuse a hostile answer, and the deadline must not win that race.
GENEROUS = 5.0

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def head(status: str = "200 OK", *headers: str) -> bytes:
    return ("\r\n".join([f"HTTP/1.1 {status}", *headers]) + "\r\n\r\n").encode()


VALID_PAGE = json.dumps({"object": "list", "data": [], "has_more": False}).encode()


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    """A loopback TCP server running `handler` per connection; yields its base URL."""
    tasks: set[asyncio.Task[None]] = set()

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            tasks.discard(task)

    server = await asyncio.start_server(run, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await server.wait_closed()


# --- the hostile gateways -----------------------------------------------------------------------------------------


async def huge_declared(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    writer.write(head("200 OK", "Content-Type: application/json", f"Content-Length: {50 * 1024 * 1024}"))
    chunk = b" " * 65536
    for _ in range(800):  # 50 MB, if anyone were still reading
        writer.write(chunk)
        await writer.drain()


async def huge_undeclared(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """50 MB with no Content-Length (read until close): only counting bytes as they arrive catches it."""
    await read_head(reader)
    writer.write(head("200 OK", "Content-Type: application/json", "Connection: close"))
    writer.write(b'{"object":"list","data":[')
    item = b'{"id":"batch_x","status":"completed"},' * 1000
    for _ in range(50 * 1024 * 1024 // len(item)):
        writer.write(item)
        await writer.drain()


async def huge_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    writer.write(head("200 OK", "Content-Type: application/json", "Transfer-Encoding: chunked"))
    chunk = b"x" * 65536
    for _ in range(800):
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()


GZIP_BOMB = gzip.compress(b" " * (64 * 1024 * 1024), compresslevel=9)  # ~64 KB on the wire, 64 MB inflated


async def gzip_bomb(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    writer.write(
        head(
            "200 OK",
            "Content-Type: application/json",
            "Content-Encoding: gzip",
            f"Content-Length: {len(GZIP_BOMB)}",
        )
    )
    writer.write(GZIP_BOMB)
    await writer.drain()
    await asyncio.sleep(30)


async def slow_drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A byte every 50 ms: no single read ever times out, so only a deadline on the whole request ends it."""
    await read_head(reader)
    writer.write(head("200 OK", "Content-Type: application/json", "Content-Length: 100000"))
    for _ in range(100000):
        writer.write(b" ")
        await writer.drain()
        await asyncio.sleep(0.05)


async def slow_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\n")
    for i in range(100000):
        writer.write(f"X-Drip-{i}: y\r\n".encode())
        await writer.drain()
        await asyncio.sleep(0.05)


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    await asyncio.sleep(60)


async def close_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    writer.write(head("200 OK", "Content-Type: application/json", "Content-Length: 5000"))
    writer.write(VALID_PAGE[:20])
    await writer.drain()
    writer.transport.abort()


async def close_before_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    writer.transport.abort()


async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    writer.write(b"\x16\x03\x01 this is not HTTP at all\r\n\r\n")
    await writer.drain()


async def redirect_loop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        await read_head(reader)
        writer.write(head("302 Found", "Location: /v1/batches?provider=openai&again=1", "Content-Length: 0"))
        await writer.drain()


async def html_200(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    body = b"<html><body>Login to the corporate proxy</body></html>"
    writer.write(head("200 OK", "Content-Type: text/html", f"Content-Length: {len(body)}") + body)
    await writer.drain()


async def html_labelled_json(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    body = b"<html>" * 1000
    writer.write(head("200 OK", "Content-Type: application/json", f"Content-Length: {len(body)}") + body)
    await writer.drain()


async def deep_nesting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    body = b'{"object":"list","data":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    writer.write(head("200 OK", "Content-Type: application/json", f"Content-Length: {len(body)}") + body)
    await writer.drain()


async def many_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(20000)))
    writer.write(f"Content-Length: {len(VALID_PAGE)}\r\n\r\n".encode() + VALID_PAGE)
    await writer.drain()


@dataclass(frozen=True)
class Case:
    handler: Handler
    reason: str
    seconds: float = 3 * TIMEOUT


CASES = {
    "50MB_declared": Case(huge_declared, "invalid_response"),
    "50MB_until_close": Case(huge_undeclared, "invalid_response"),
    "50MB_chunked": Case(huge_chunked, "invalid_response"),
    "gzip_bomb": Case(gzip_bomb, "invalid_response"),
    "slow_drip_body": Case(slow_drip, "timeout"),
    "slow_drip_headers": Case(slow_headers, "timeout"),
    "never_answers": Case(silent, "timeout"),
    "close_mid_body": Case(close_mid_body, "connection"),
    "close_before_answer": Case(close_before_answer, "connection"),
    "not_http": Case(garbage, "connection"),
    "redirect_loop": Case(redirect_loop, "invalid_response"),
    "200_text_html": Case(html_200, "invalid_response"),
    "200_html_labelled_json": Case(html_labelled_json, "invalid_response"),
    "deeply_nested_json": Case(deep_nesting, "invalid_response"),
    "20000_response_headers": Case(many_headers, "connection"),
}


def make_settings(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "bifrost_url": url,
        "providers": ["openai"],
        "virtual_key": VIRTUAL_KEY,
        "request_timeout_seconds": TIMEOUT,
        "max_response_bytes": CAP,
        "max_retries": 2,
        "log_level": "debug",
    }
    values.update(overrides)
    return Settings(**values)


async def no_sleep(_: float) -> None:
    return None


async def poll_once(url: str, **overrides: Any) -> tuple[Any, float, int]:
    """(provider state, seconds, peak traced bytes) of one poll against `url`."""
    settings = make_settings(url, **overrides)
    client = BifrostClient(settings, sleep=no_sleep)
    poller = Poller(settings, client)
    tracemalloc.start()
    started = time.monotonic()
    try:
        state = await poller.poll("openai")
    finally:
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        await client.aclose()
    return state, elapsed, peak


@pytest.fixture
def log_lines() -> list[dict[str, Any]] | Any:
    stream = io.StringIO()
    configure("debug", "json", [VIRTUAL_KEY], stream=stream)

    class Lines:
        def __call__(self) -> list[dict[str, Any]]:
            return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]

        def text(self) -> str:
            return stream.getvalue()

    return Lines()


def _timeout(case: Case) -> float:
    return TIMEOUT if case.reason == "timeout" else GENEROUS


def _bound(case: Case) -> float:
    """A hang guard: a stalled gateway without the timeout enforced would never return; twice the headroom a quiet
    host needs (these run under tracemalloc, on a loaded CI host too)."""
    return case.seconds * 6 if case.reason == "timeout" else 2 * GENEROUS


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_gateway(name: str, log_lines: Any) -> None:
    case = CASES[name]

    async def scenario() -> tuple[Any, float, int]:
        async with raw_server(case.handler) as url:
            return await poll_once(url, request_timeout_seconds=_timeout(case))

    state, elapsed, peak = asyncio.run(scenario())
    health, ledger = state.health, state.ledger
    assert health.up is False
    assert ledger.errors[case.reason] == 1, dict(ledger.errors)
    assert sum(ledger.errors.values()) == 1
    # Bounded time: retries of a timeout each get the request timeout, no more; anything else is found before
    # any deadline.
    assert elapsed < _bound(case), elapsed
    # Bounded memory: a few times the cap, never the 50 MB (or, gzip-inflated, 64 MB) the gateway offered. The
    # figure is the whole process's traced peak, so it includes the hostile server's own buffers.
    assert peak < 4 * CAP + 8 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
    lines = log_lines()
    warnings = [line for line in lines if line["level"] in ("warn", "error")]
    assert [w["msg"] for w in warnings] == ["poll_failed"], lines
    assert warnings[0]["reason"] == case.reason
    assert "Traceback" not in log_lines.text()
    assert VIRTUAL_KEY not in log_lines.text()
    assert len(warnings[0]["detail"]) < 300


def test_cross_origin_redirect_never_carries_the_virtual_key(log_lines: Any) -> None:
    """httpx strips Authorization on a cross-origin redirect but not x-bf-vk: the client must refuse to follow."""
    seen: list[bytes] = []

    async def collector(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_head(reader))
        writer.write(head("200 OK", "Content-Type: application/json", f"Content-Length: {len(VALID_PAGE)}"))
        writer.write(VALID_PAGE)
        await writer.drain()

    async def scenario() -> Any:
        async with raw_server(collector) as elsewhere:

            async def redirector(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                await read_head(reader)
                writer.write(
                    head("307 Temporary Redirect", f"Location: {elsewhere}/v1/batches", "Content-Length: 0")
                )
                await writer.drain()

            async with raw_server(redirector) as url:
                state, _, _ = await poll_once(url, extra_headers={"X-Team-Token": "team-secret-123"})
                return state

    state = asyncio.run(scenario())
    assert seen == []  # the other origin never received a request, let alone the key
    assert state.ledger.errors["invalid_response"] == 1
    text = log_lines.text()
    assert "redirect to another origin" in text
    assert VIRTUAL_KEY not in text


def test_same_origin_redirect_is_followed(log_lines: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await read_head(reader)
            if b"/moved/" in request.split(b"\r\n", 1)[0]:
                writer.write(
                    head("200 OK", "Content-Type: application/json", f"Content-Length: {len(VALID_PAGE)}")
                )
                writer.write(VALID_PAGE)
            else:
                writer.write(
                    head(
                        "308 Permanent Redirect",
                        "Location: /moved/v1/batches?provider=openai",
                        "Content-Length: 0",
                    )
                )
            await writer.drain()

    async def scenario() -> Any:
        async with raw_server(handler) as url:
            state, _, _ = await poll_once(url)
            return state

    state = asyncio.run(scenario())
    assert state.health.up is True
    assert sum(state.ledger.errors.values()) == 0


def _deflate(data: bytes, wbits: int) -> bytes:
    compressor = zlib.compressobj(wbits=wbits)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzip.compress),
        ("deflate", lambda b: _deflate(b, zlib.MAX_WBITS)),
        ("deflate", lambda b: _deflate(b, -zlib.MAX_WBITS)),  # raw deflate, as many servers send it
        ("identity", lambda b: b),
    ],
)
def test_compressed_pages_still_decode(
    encoding: str, encode: Callable[[bytes], bytes], log_lines: Any
) -> None:
    page = json.dumps(
        {"object": "list", "data": [{"id": f"b{i}", "status": "in_progress"} for i in range(500)]}
    ).encode()
    body = encode(page)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_head(reader)
        assert b"accept-encoding: gzip, deflate" in request.lower()
        writer.write(
            head(
                "200 OK",
                "Content-Type: application/json",
                f"Content-Encoding: {encoding}",
                f"Content-Length: {len(body)}",
            )
        )
        writer.write(body)
        await writer.drain()

    async def scenario() -> Any:
        async with raw_server(handler) as url:
            state, _, _ = await poll_once(url)
            return state

    state = asyncio.run(scenario())
    assert state.health.up is True
    assert state.snapshot.batches == 500


@pytest.mark.parametrize("status", [200, 503])
def test_unknown_content_encoding(status: int, log_lines: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(
            head(f"{status} X", "Content-Type: application/json", "Content-Encoding: br", "Content-Length: 4")
        )
        writer.write(b"\x0b\x02\x80\x00")
        await writer.drain()

    async def scenario() -> Any:
        async with raw_server(handler) as url:
            state, _, _ = await poll_once(url, max_retries=0)
            return state

    errors = asyncio.run(scenario()).ledger.errors
    assert errors["invalid_response" if status == 200 else "server_error"] == 1


@pytest.mark.parametrize("cut", [8, 4, 1])
def test_a_compressed_page_cut_before_its_end_is_refused(cut: int, log_lines: Any) -> None:
    """A gzip page without the last bytes of its trailer (CRC, length): the JSON inside may be whole, but the page
    is not what the gateway sent (a proxy or a gateway cut it): invalid_response, not a silent success."""
    page = gzip.compress(VALID_PAGE)[:-cut]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        fields = ["Content-Type: application/json", "Content-Encoding: gzip", f"Content-Length: {len(page)}"]
        writer.write(head("200 OK", *fields) + page)
        await writer.drain()

    async def scenario() -> Any:
        async with raw_server(handler) as url:
            state, _, _ = await poll_once(url, max_retries=0)
            return state

    state = asyncio.run(scenario())
    assert state.health.up is False and state.ledger.errors["invalid_response"] == 1


@pytest.mark.parametrize(
    ("status", "reason", "attempts"),
    [(503, "server_error", 2), (429, "rate_limited", 2), (401, "auth", 1), (200, "invalid_response", 1)],
)
@pytest.mark.parametrize("body", ["not_gzip", "too_big"])
def test_an_error_body_that_cannot_be_read_is_classified_by_its_status(
    status: int, reason: str, attempts: int, body: str, log_lines: Any
) -> None:
    """A proxy's error page labelled gzip that is not, or bigger than max_response_bytes: the status still says
    what happened (its reason, and whether to retry). Only a 2xx whose body cannot be read is invalid_response."""
    asked = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal asked
        while True:
            try:
                await read_head(reader)
            except asyncio.IncompleteReadError:
                return  # the client closed the connection
            asked += 1
            if body == "not_gzip":
                data = b"<html>Service Unavailable</html>"
                fields = ["Content-Type: text/html", "Content-Encoding: gzip"]
            else:
                data = b"x" * 5000
                fields = ["Content-Type: text/html"]
            writer.write(head(f"{status} X", *fields, f"Content-Length: {len(data)}") + data)
            await writer.drain()

    async def scenario() -> Any:
        async with raw_server(handler) as url:
            state, _, _ = await poll_once(url, max_retries=1, max_response_bytes=2048)
            return state

    state = asyncio.run(scenario())
    assert state.health.up is False
    assert {k: v for k, v in state.ledger.errors.items() if v} == {reason: 1}
    assert asked == attempts


# --- retrieve meets the same gateways ------------------------------------------------------------------------------

RETRIEVE_CASES = [
    "50MB_declared",
    "50MB_until_close",
    "gzip_bomb",
    "slow_drip_body",
    "never_answers",
    "close_mid_body",
    "redirect_loop",
    "200_text_html",
    "deeply_nested_json",
]


@pytest.mark.parametrize("name", RETRIEVE_CASES)
def test_hostile_gateway_on_retrieve(name: str) -> None:
    """A retrieve is bounded like a list page: same deadline, same byte cap, same reasons, never an exception."""
    case = CASES[name]

    async def scenario() -> tuple[Any, float, int]:
        async with raw_server(case.handler) as url:
            client = BifrostClient(make_settings(url, request_timeout_seconds=_timeout(case)), sleep=no_sleep)
            tracemalloc.start()
            started = time.monotonic()
            try:
                result = await client.retrieve("openai", "batch_1")
            finally:
                elapsed = time.monotonic() - started
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                await client.aclose()
            return result, elapsed, peak

    result, elapsed, peak = asyncio.run(scenario())
    assert result.batch is None and not result.gone
    assert result.failure is not None and result.failure.reason == case.reason
    assert elapsed < _bound(case), elapsed
    assert peak < 4 * CAP + 8 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
    assert VIRTUAL_KEY not in result.failure.detail
    assert len(result.failure.detail) < 300


# --- raw-response echo -------------------------------------------------------------------------------------------


def echoing_gateway(honours_header: bool) -> Handler:
    """Bifrost with send-back-raw-response on: each OpenAI/Azure item carries the whole raw page, unless the
    request says `x-bf-send-back-raw-response: false` (and the gateway honours it)."""
    items = [{"id": f"batch_{i:04d}", "object": "batch", "status": "in_progress"} for i in range(100)]
    raw_page = {"object": "list", "data": items, "padding": "p" * 4000}
    # Encoded once, not per request: the ~50 MB echo took longer than the request timeout on a loaded machine.
    bodies = {
        echo: json.dumps(
            {
                "object": "list",
                "data": [
                    dict(item, extra_fields={"raw_response": raw_page}) if echo else item for item in items
                ],
                "has_more": False,
            }
        ).encode()
        for echo in (False, True)
    }

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = (await read_head(reader)).lower()
        body = bodies[not (honours_header and b"x-bf-send-back-raw-response: false" in request)]
        writer.write(head("200 OK", "Content-Type: application/json", f"Content-Length: {len(body)}") + body)
        await writer.drain()

    return handler


def test_raw_response_echo_is_asked_off_and_the_cap_still_holds(log_lines: Any) -> None:
    async def scenario(honours: bool) -> Any:
        async with raw_server(echoing_gateway(honours)) as url:
            state, _, _ = await poll_once(url, request_timeout_seconds=GENEROUS)
            return state

    polite = asyncio.run(scenario(True))
    assert polite.health.up is True
    assert polite.snapshot.batches == 100
    # 100 items × a 100-item raw page is ~50 MB: a gateway that ignores the header hits the cap, not our memory
    rude = asyncio.run(scenario(False))
    assert rude.health.up is False
    assert rude.ledger.errors["invalid_response"] == 1


# Go's decoders (encoding/json, sonic: Bifrost) read invalid UTF-8 and lone surrogate escapes as U+FFFD; a provider's
# metadata passed through unchanged can carry them. One such batch used to fail its whole page, every poll.
ODD_TEXT = {"latin1_byte": b"caf\xe9 quota", "lone_surrogate": b"a\\ud800b", "lone_low_surrogate": b"\\udc00"}


def _odd_page(odd: bytes) -> bytes:
    return (
        b'{"object":"list","has_more":false,"data":['
        b'{"id":"batch_ok1","status":"completed","created_at":1700000000,'
        b'"request_counts":{"total":2,"completed":2,"failed":0}},'
        b'{"id":"batch_odd","status":"in_progress","created_at":1700000001,"metadata":{"team":"'
        + odd
        + b'"}},'
        b'{"id":"batch_ok2","status":"failed","created_at":1700000002}]}'
    )


@pytest.mark.parametrize("name", list(ODD_TEXT))
def test_text_go_reads_as_replacement_characters_keeps_the_page(name: str, log_lines: Any) -> None:
    body = _odd_page(ODD_TEXT[name])

    async def odd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(head("200 OK", "Content-Type: application/json", f"Content-Length: {len(body)}") + body)
        await writer.drain()

    async def scenario() -> tuple[Any, float, int]:
        async with raw_server(odd) as url:
            return await poll_once(url, metadata_labels=["team"])

    state, _, _ = asyncio.run(scenario())
    assert state.health.up is True
    assert state.snapshot.status_counts() == {"completed": 1, "in_progress": 1, "failed": 1}
    assert sum(state.ledger.errors.values()) == 0
    assert "poll_failed" not in log_lines.text()
    page = parse_page(body)
    (team,) = [b.metadata["team"] for b in page.batches if b.metadata]
    assert "\ufffd" in team and team.encode("utf-8")  # what Go would show: sendable, printable as a label
    retrieve = body[body.index(b'{"id":"batch_odd"') : body.index(b',{"id":"batch_ok2"')]
    assert parse_batch(retrieve).metadata == {"team": team}

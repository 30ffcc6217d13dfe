"""HTTP/1.1 framing per RFC 9112, table-driven, against the real server on loopback.

Every row is a request head a client (or a proxy in front of us) could send; anything whose boundaries two parsers
could read differently is answered 400 (or 414/431/505 where RFC 9112 names a better code) and the connection is
closed, so nothing after it is ever read as a second request. `ServerThread` here is the server alone, with fixed
pre-rendered bytes, for every test about the HTTP layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.http1 import Request, framing_error, parse_head
from exporter.render import Rendered
from exporter.server import Guard, HttpServer, Routes, TlsSource

T = TypeVar("T")
HEADER_TIMEOUT = 30.0  # far above the test's own socket timeout: any answer we get came at once


def rendered(body: bytes = b"# a small exposition\nup 1\n") -> Rendered:
    return Rendered(
        text=body,
        text_gzip=gzip.compress(body, 1),
        openmetrics=body + b"# EOF\n",
        openmetrics_gzip=gzip.compress(body + b"# EOF\n", 1),
        landing=b"<html></html>",
        ready=True,
        rendered_at=0.0,
    )


class ServerThread:
    """Our HttpServer on a loopback port in its own event loop thread, serving fixed bytes."""

    def __init__(
        self,
        body: bytes = b"# a small exposition\nup 1\n",
        *,
        guard: Guard | None = None,
        tls: TlsSource | None = None,
        **options: Any,
    ) -> None:
        self.rendered = rendered(body)
        self.routes = Routes(lambda: self.rendered, lambda: True, guard)
        options.setdefault("header_timeout", HEADER_TIMEOUT)
        self.server = HttpServer(self.routes, "127.0.0.1", 0, ssl_context=tls, **options)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self.call(self.server.start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()

    @property
    def port(self) -> int:
        return self.server.port

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def connections(self) -> int:
        async def count() -> int:
            return len(self.server.connections)

        return self.call(count())


def exchange(port: int, data: bytes, *, responses: int = 1, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send `data`; read until the server closes or `responses` complete responses are in.

    Returns (everything read, whether the server closed the connection).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        out = b""
        while True:
            try:
                chunk = sock.recv(1 << 20)
            except TimeoutError:
                return out, False
            except ConnectionResetError:
                return out, True
            if not chunk:
                return out, True
            out += chunk
            if complete_responses(out) >= responses and b"Connection: close" not in out:
                return out, False


def complete_responses(data: bytes) -> int:
    """How many whole responses (head and Content-Length body) `data` holds."""
    count, pos = 0, 0
    while True:
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            return count
        length = 0
        for line in data[pos:end].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        if len(data) < end + 4 + length:
            return count
        count += 1
        pos = end + 4 + length


def statuses(data: bytes) -> list[int]:
    """The status of each response in `data`, walking heads and Content-Length bodies in order."""
    found, pos = [], 0
    while (end := data.find(b"\r\n\r\n", pos)) >= 0:
        lines = data[pos:end].split(b"\r\n")
        found.append(int(lines[0].split(b" ")[1]))
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        pos = end + 4 + length
    return found


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread() as running:
        yield running


OK = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
CLIENT_HELLO = bytes.fromhex("16030100f8010000f40303") + bytes(32) + b"\x00" * 64

# (name, request bytes, expected status): every refusal must also close the connection.
FRAMING: list[tuple[str, bytes, int]] = [
    ("valid", OK, 200),
    ("HTTP/1.0 without Host", b"GET /metrics HTTP/1.0\r\n\r\n", 200),
    ("bare LF ends a header line", b"GET /metrics HTTP/1.1\r\nHost: x\nX: y\r\n\r\n", 400),
    ("bare LF ends the request line", b"GET /metrics HTTP/1.1\nHost: x\r\n\r\n", 400),
    ("bare LFs only", b"GET /metrics HTTP/1.1\nHost: x\n\n", 400),
    ("bare LF, no end of head yet", b"GET /metrics HTTP/1.1\r\nHost: x\n", 400),
    ("bare CR in a header value", b"GET /metrics HTTP/1.1\r\nHost: x\rX: y\r\n\r\n", 400),
    ("bare CR ends a line", b"GET /metrics HTTP/1.1\r\nHost: x\r\rX: y\r\n\r\n", 400),
    ("obs-fold with SP", b"GET /metrics HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n", 400),
    ("obs-fold with HTAB", b"GET /metrics HTTP/1.1\r\nHost: x\r\nX: a\r\n\tb\r\n\r\n", 400),
    ("space before the colon", b"GET /metrics HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    ("empty field name", b"GET /metrics HTTP/1.1\r\nHost: x\r\n: y\r\n\r\n", 400),
    ("NUL in a field value", b"GET /metrics HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400),
    (
        "conflicting Content-Length",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\n",
        400,
    ),
    (
        "repeated Content-Length",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
        400,
    ),
    ("Content-Length list", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0, 0\r\n\r\n", 400),
    ("Content-Length with a body", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd", 400),
    ("Content-Length not a number", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: +0\r\n\r\n", 400),
    ("Content-Length 0 is fine", b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 200),
    (
        "Content-Length with Transfer-Encoding",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
    ),
    (
        "Transfer-Encoding chunked",
        b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("Transfer-Encoding identity", b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n", 400),
    ("Transfer-Encoding, odd case", b"GET / HTTP/1.1\r\nHost: x\r\ntRANSFER-eNCODING: chunked\r\n\r\n", 400),
    ("HTTP/1.1 without Host", b"GET /metrics HTTP/1.1\r\n\r\n", 400),
    ("two Host fields", b"GET /metrics HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
    ("two spaces in the request line", b"GET  /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("tab in the request line", b"GET\t/metrics HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("lower-case version", b"GET /metrics http/1.1\r\nHost: x\r\n\r\n", 400),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    ("non-ASCII target", "GET /mé HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 400),
    ("method not a token", b"G(T /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("leading empty line", b"\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("TLS ClientHello on the plain port", CLIENT_HELLO, 400),
    ("request line over the limit", b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (
        "header block over the limit",
        b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: yyyyyyyy\r\n" * 2_000 + b"\r\n",
        431,
    ),
    ("one header over the limit", b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"v" * 20_000 + b"\r\n\r\n", 431),
    # RFC 9112 §3.2.2: a server MUST accept the absolute-form, and serves it as its path; a malformed one is 400.
    ("absolute-form", b"GET http://x/metrics HTTP/1.1\r\nHost: x\r\n\r\n", 200),
    ("absolute-form, https, upper case", b"GET HTTPS://X:9100/metrics HTTP/1.1\r\nHost: x\r\n\r\n", 200),
    ("absolute-form, IPv6 literal", b"GET http://[::1]:9100/metrics?a=b HTTP/1.1\r\nHost: x\r\n\r\n", 200),
    ("absolute-form, empty path is /", b"GET http://127.0.0.1:9100 HTTP/1.1\r\nHost: x\r\n\r\n", 200),
    ("absolute-form, unknown path", b"GET http://x/nope HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    ("absolute-form, HTTP/1.0 without Host", b"GET http://x/metrics HTTP/1.0\r\n\r\n", 200),
    ("absolute-form, HTTP/1.1 without Host", b"GET http://x/metrics HTTP/1.1\r\n\r\n", 400),
    ("absolute-form, another scheme", b"GET ftp://x/metrics HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("absolute-form, no authority", b"GET http:///metrics HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("absolute-form, user information", b"GET http://u:p@x/metrics HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("absolute-form, port not a number", b"GET http://x:9a/metrics HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("absolute-form, open IPv6 literal", b"GET http://[::1/metrics HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("absolute-form, fragment", b"GET http://x/metrics#f HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("authority-form on GET", b"GET x:9100 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("relative target", b"GET metrics HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("asterisk-form on GET", b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("asterisk-form on OPTIONS", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    ("authority-form on CONNECT", b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n", 405),
]


@pytest.mark.parametrize(("name", "request_bytes", "status"), FRAMING, ids=[row[0] for row in FRAMING])
def test_framing(server: ServerThread, name: str, request_bytes: bytes, status: int) -> None:
    out, closed = exchange(server.port, request_bytes)
    assert statuses(out) == [status], out[:300]
    if status in (400, 414, 431, 505):  # refused as a request (404 and 405 are answers to a valid one)
        assert closed, "a refused request must end the connection"
        assert b"Connection: close" in out
    assert b"Traceback" not in out


def test_bare_lf_smuggling_gets_exactly_one_response(server: ServerThread) -> None:
    """Issue 15, reproduction 4: a second request hidden behind a bare LF must never be answered."""
    hidden = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    smuggle = b"GET /healthz HTTP/1.1\r\nHost: x\nContent-Length: %d\r\n\r\n" % len(hidden) + hidden
    out, closed = exchange(server.port, smuggle)
    assert statuses(out) == [400]
    assert closed


def test_pipelined_requests_are_answered_in_order(server: ServerThread) -> None:
    out, _ = exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 50 + OK, responses=51)
    assert statuses(out) == [200] * 51
    # 2,000 pipelined requests on one connection: answered one at a time, no recursion, no buffering of all.
    out, _ = exchange(
        server.port,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 2000 + b"GET / HTTP/1.1\r\n\r\n",
        responses=2001,
    )
    assert statuses(out) == [200] * 2000 + [400]


def test_refusal_is_immediate_for_a_trickled_bare_lf(server: ServerThread) -> None:
    """A bare LF is refused when it arrives, not when the head would be complete (or the deadline passes)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\n")
        sock.sendall(b"Host: x\n")
        data = sock.recv(4096)
    assert statuses(data) == [400]


@pytest.mark.parametrize("head", [row[1].partition(b"\r\n\r\n")[0] for row in FRAMING])
def test_parse_head_agrees_with_the_wire(head: bytes) -> None:
    """The pure parser gives a Request or a status for every row, never an exception."""
    result = parse_head(head)
    assert result is not None
    assert framing_error(head) is None or not hasattr(result, "method")


def test_connection_close_is_honoured(server: ServerThread) -> None:
    out, closed = exchange(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert statuses(out) == [200] and closed


def test_keep_alive_idle_and_header_deadlines() -> None:
    with ServerThread(idle_timeout=0.5, header_timeout=0.5) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
            sock.sendall(OK)
            data = b""
            while complete_responses(data) < 1:
                data += sock.recv(65536)
            assert statuses(data) == [200]
            assert sock.recv(1) == b""  # dropped once idle (the socket's own 5 s timeout would raise)
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHo")  # never finishes its head
            assert sock.recv(1) == b""


def test_metrics_path_is_configurable() -> None:
    """--web.telemetry-path: the exposition moves, /metrics is then just another unknown path."""
    routes = Routes(lambda: rendered(b"up 1\n"), lambda: True, metrics_path="/exporter/metrics")
    moved = routes.serve("/exporter/metrics", {})
    assert moved.status == 200 and moved.body == b"up 1\n"
    assert routes.serve("/metrics", {}).status == 404


def test_absolute_form_is_served_as_its_path(server: ServerThread) -> None:
    """The same bytes as origin-form, not a 404 (the issue-19 suspicion): RFC 9112 §3.2.2."""
    origin, _ = exchange(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    absolute, _ = exchange(
        server.port, b"GET http://localhost:9100/metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert statuses(absolute) == [200]
    assert absolute.partition(b"\r\n\r\n")[2] == origin.partition(b"\r\n\r\n")[2]


_PATH_CHARS = st.sampled_from(sorted(set(range(0x21, 0x7F)) - {ord("#")}))
_HOST_CHARS = st.sampled_from(sorted(b"abcdefghijklmnopqrstuvwxyz0123456789-._~"))


@given(
    path=st.lists(_PATH_CHARS, max_size=40).map(lambda cs: b"/" + bytes(cs)),
    host=st.lists(_HOST_CHARS, min_size=1, max_size=20).map(bytes),
    port=st.one_of(st.just(b""), st.integers(0, 65535).map(lambda p: b":%d" % p)),
    scheme=st.sampled_from([b"http", b"https", b"HTTP", b"Https"]),
)
def test_absolute_form_means_its_origin_form(path: bytes, host: bytes, port: bytes, scheme: bytes) -> None:
    """Any origin-form target, put into absolute-form with any host and port, parses to that origin-form."""
    origin = parse_head(b"GET " + path + b" HTTP/1.1\r\nHost: x")
    absolute = parse_head(b"GET " + scheme + b"://" + host + port + path + b" HTTP/1.1\r\nHost: x")
    assert isinstance(origin, Request) and isinstance(absolute, Request)
    assert absolute.target == origin.target == path.decode()

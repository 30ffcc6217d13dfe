"""A small HTTP/1.1 server on asyncio for /metrics, /healthz, /readyz and the landing page.

It only ever serves bytes that were rendered before the request arrived, so a scrape costs a header parse, a
lookup and one socket write. It is deliberately strict — GET and HEAD only, bounded request heads, timeouts for
clients that stall while sending or never read — because an exporter is reachable by anything on the network.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Protocol

from .render import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, Rendered

MAX_HEAD_BYTES = 16 * 1024
HEADER_TIMEOUT = 10.0
IDLE_TIMEOUT = 75.0
WRITE_TIMEOUT = 30.0
MAX_CONNECTIONS = 1024


class Guard(Protocol):
    """Access control for our own endpoints (basic auth from a web config, say); None means open."""

    def allows(self, path: str, headers: Mapping[str, str]) -> bool: ...

    def challenge(self) -> Sequence[tuple[str, str]]: ...

    def response_headers(self) -> Sequence[tuple[str, str]]: ...


def _q_values(header: str) -> dict[str, float]:
    """media-range/coding → q, lower-cased; the first occurrence of each wins."""
    out: dict[str, float] = {}
    for part in header.split(","):
        pieces = [p.strip() for p in part.split(";")]
        name = pieces[0].lower()
        if not name:
            continue
        q = 1.0
        for param in pieces[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        out.setdefault(name, q)
    return out


def negotiate(accept: str | None, accept_encoding: str | None) -> tuple[bool, bool]:
    """(OpenMetrics?, gzip?) for a scrape; OpenMetrics only when asked for at least as strongly as text."""
    openmetrics = False
    if accept and "openmetrics" in accept.lower():
        q = _q_values(accept)
        om = q.get("application/openmetrics-text", 0.0)
        text = max(q.get("text/plain", 0.0), q.get("*/*", 0.0))
        openmetrics = om > 0 and om >= text
    use_gzip = False
    if accept_encoding:
        enc = _q_values(accept_encoding)
        use_gzip = enc.get("gzip", enc.get("*", 0.0)) > 0
    return openmetrics, use_gzip


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = field(default=())


def _plain(status: HTTPStatus, extra: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status.value, f"{status.value} {status.phrase}\n".encode(), headers=extra)


class Routes:
    """Maps a request onto pre-rendered bytes. Pure apart from reading the current Rendered reference."""

    def __init__(
        self,
        current: Callable[[], Rendered],
        healthy: Callable[[], bool],
        guard: Guard | None = None,
    ) -> None:
        self._current = current
        self._healthy = healthy
        self.guard = guard

    def handle(self, method: str, target: str, headers: Mapping[str, str]) -> Response:
        if method not in ("GET", "HEAD"):
            return _plain(HTTPStatus.METHOD_NOT_ALLOWED, (("Allow", "GET, HEAD"),))
        path = target.split("?", 1)[0]
        if path == "/healthz":
            return Response(200, b"ok\n") if self._healthy() else _plain(HTTPStatus.SERVICE_UNAVAILABLE)
        guard = self.guard
        if guard is not None and not guard.allows(path, headers):
            return _plain(HTTPStatus.UNAUTHORIZED, tuple(guard.challenge()))
        rendered = self._current()
        if path == "/metrics":
            openmetrics, use_gzip = negotiate(headers.get("accept"), headers.get("accept-encoding"))
            if openmetrics:
                body = rendered.openmetrics_gzip if use_gzip else rendered.openmetrics
                ctype = OPENMETRICS_CONTENT_TYPE
            else:
                body = rendered.text_gzip if use_gzip else rendered.text
                ctype = TEXT_CONTENT_TYPE
            extra: tuple[tuple[str, str], ...] = (("Vary", "Accept, Accept-Encoding"),)
            if use_gzip:
                extra += (("Content-Encoding", "gzip"),)
            return Response(200, body, ctype, extra)
        if path == "/readyz":
            return (
                Response(200, b"ready\n")
                if rendered.ready
                else Response(503, b"not ready: first polls running\n")
            )
        if path == "/":
            return Response(200, rendered.landing, "text/html; charset=utf-8")
        return _plain(HTTPStatus.NOT_FOUND)


_REASONS = {s.value: s.phrase for s in HTTPStatus}


class _Connection(asyncio.Protocol):
    __slots__ = (
        "_buffer",
        "_closing",
        "_in_head",
        "_paused",
        "_server",
        "_timer",
        "_transport",
        "_write_timer",
    )

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._paused = False
        self._in_head = True  # the header deadline runs from the connect until the first head is complete

    # --- asyncio callbacks ---------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        server = self._server
        if len(server.connections) >= server.max_connections:
            transport.abort()
            return
        server.connections.add(self)
        transport.set_write_buffer_limits(high=256 * 1024)
        self._arm(server.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._cancel_timers()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if not self._in_head:
            # A head's first byte starts its deadline; later bytes never extend it (a slowloris trickle would).
            self._in_head = True
            self._arm(self._server.header_timeout)
        self._buffer += data
        self._process()

    def _process(self) -> None:
        # While the client is not reading our responses, answer nothing more: pipelined requests would
        # otherwise buffer one exposition each, unbounded.
        while self._buffer and not self._closing and not self._paused:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > self._server.max_head:
                    self._fail(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
                return
            if end > self._server.max_head:
                self._fail(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
                return
            head = bytes(self._buffer[:end])
            del self._buffer[: end + 4]
            self._in_head = False
            self._handle_head(head)
            if self._buffer and not self._closing:
                self._in_head = True  # a pipelined request: its deadline starts now
                self._arm(self._server.header_timeout)

    def pause_writing(self) -> None:
        # A client that does not read its responses gets WRITE_TIMEOUT seconds, then the connection is dropped;
        # meanwhile we stop reading from it, so TCP pushes back on a client that keeps sending.
        self._paused = True
        if self._transport is not None:
            self._transport.pause_reading()
        if self._write_timer is None:
            self._write_timer = asyncio.get_running_loop().call_later(self._server.write_timeout, self._abort)

    def resume_writing(self) -> None:
        self._paused = False
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        if self._transport is not None and not self._closing:
            self._transport.resume_reading()
            self._process()

    # --- request handling ----------------------------------------------------------------------------------------

    def _handle_head(self, head: bytes) -> None:
        try:
            text = head.decode("latin-1")
            request_line, _, header_block = text.partition("\r\n")
            method, target, version = request_line.split(" ")
        except ValueError:
            self._fail(HTTPStatus.BAD_REQUEST)
            return
        if not version.startswith("HTTP/1."):
            self._fail(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED)
            return
        headers: dict[str, str] = {}
        for line in header_block.split("\r\n") if header_block else ():  # HTTP/1.0 may send no headers
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                self._fail(HTTPStatus.BAD_REQUEST)
                return
            key = name.lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
            # We take no request bodies; rather than parse one, answer and close.
            self._fail(HTTPStatus.BAD_REQUEST)
            return
        connection = headers.get("connection", "").lower()
        keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        try:
            response = self._server.routes.handle(method, target, headers)
        except Exception:  # a bug must cost one request, not the server
            self._server.on_error()
            response = _plain(HTTPStatus.INTERNAL_SERVER_ERROR)
            keep_alive = False
        self._respond(response, head_only=method == "HEAD", keep_alive=keep_alive)

    def _respond(self, response: Response, *, head_only: bool, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None:
            return
        lines = [
            f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Unknown')}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
            "Cache-Control: no-store",
        ]
        lines.extend(f"{k}: {v}" for k, v in response.headers)
        guard = self._server.routes.guard
        if guard is not None:
            lines.extend(f"{k}: {v}" for k, v in guard.response_headers())
        lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if head_only:
            transport.write(head)
        else:
            transport.writelines((head, response.body))
        if keep_alive:
            self._arm(self._server.idle_timeout)
        else:
            self._closing = True
            self._cancel_timers()
            transport.close()

    def _fail(self, status: HTTPStatus) -> None:
        self._respond(_plain(status), head_only=False, keep_alive=False)

    def _arm(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(seconds, self._abort)

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _cancel_timers(self) -> None:
        for timer in (self._timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._write_timer = None


class HttpServer:
    """Owns the listening socket and the set of live connections (bounded, so a flood cannot exhaust fds)."""

    def __init__(
        self,
        routes: Routes,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        header_timeout: float = HEADER_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        max_head: int = MAX_HEAD_BYTES,
        max_connections: int = MAX_CONNECTIONS,
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        self.routes = routes
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self.max_head = max_head
        self.max_connections = max_connections
        self.on_error = on_error
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self),
            host=self.host or None,
            port=self.port,
            ssl=self.ssl_context,
            reuse_address=True,
            backlog=512,
            ssl_handshake_timeout=self.header_timeout if self.ssl_context else None,
        )
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for conn in list(self.connections):
            conn._abort()
        await self._server.wait_closed()
        self._server = None

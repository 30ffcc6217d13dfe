"""A small HTTP/1.1 server on asyncio for /metrics, /healthz, /readyz and the landing page.

It only ever serves bytes that were rendered before the request arrived, so a scrape costs a header parse, a
lookup and a few socket writes. It is deliberately strict, because an exporter is reachable by anything on the
network:

- request heads are parsed per RFC 9112 (`http1.py`) and anything ambiguous (a bare CR or LF, obs-fold, any Content-Length but
  one "0", any Transfer-Encoding, a missing or repeated Host) is answered 400 and the connection closed, so no
  proxy in front can read a request boundary differently from us (request smuggling);
- a response is handed to the socket in chunks as the client reads it, never copied whole into a buffer: a client
  that does not read holds at most one chunk of our memory, and is dropped when its response is not delivered
  within the write timeout, whatever its Connection header says; the bytes waiting in all send buffers together are
  capped;
- TLS runs on memory BIOs inside the connection, so each connection takes the TLS context that is current when its
  ClientHello arrives (a reload applies whole to the next handshake), a refused handshake still sends its alert,
  and plain HTTP to the TLS port gets a 400 answer rather than silence;
- file descriptors are budgeted: the connection cap is derived from RLIMIT_NOFILE less a reserve for the gateway
  pools, state writes and logs; at the cap the longest-idle connection makes room for a new one (a crowd of idle
  sockets cannot lock a scraper out); and when accept() still finds no descriptor (EMFILE) the server backs off
  accepting as Go's net/http does (5 ms doubling to 1 s), lowers its cap, and logs the episode once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import resource
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Protocol

import structlog

from .http1 import Request, framing_error, parse_head
from .render import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, Rendered
from .runtime import RuntimeMetrics

__all__ = [
    "FixedTls",
    "Guard",
    "HttpServer",
    "Request",
    "Response",
    "Routes",
    "TlsSource",
    "framing_error",
    "negotiate",
    "parse_head",
]

MAX_HEAD_BYTES = 16 * 1024
HEADER_TIMEOUT = 10.0
IDLE_TIMEOUT = 75.0
WRITE_TIMEOUT = 30.0
# The most connections served at once; the cap actually used is lower when RLIMIT_NOFILE leaves less room.
MAX_CONNECTIONS = 1024
# Descriptors kept out of the connection budget: stdio, the event loop (epoll, self-pipe), listening sockets, the
# bcrypt and render worker threads, log files, a state write (temporary file, directory fsync, lock), DNS lookups.
FD_RESERVE_BASE = 64
# ...and per provider: its gateway pool (requests of one provider run one after the other; a redirect or a
# connection being replaced can hold a second socket for a while).
FD_RESERVE_PER_PROVIDER = 4
# Never derive a cap below this: a process with so few descriptors is misconfigured, and says so at start.
MIN_CONNECTIONS = 8
# Backoff after accept() fails for want of a descriptor, as Go's net/http Server.Serve: 5 ms doubling to 1 s.
ACCEPT_BACKOFF_MIN = 0.005
ACCEPT_BACKOFF_MAX = 1.0
# On EMFILE the cap drops to the connections open less this many, so the rest of the process gets descriptors back.
EMFILE_RELEASE = 32
# Connections accepted per wake-up of the listening socket before other work gets a turn.
ACCEPT_BATCH = 64
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# What socket() or bind() on `::` says where the kernel or the network namespace has no IPv6.
_NO_IPV6 = frozenset({errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT, errno.EADDRNOTAVAIL})
# Bytes handed to the transport at a time; a client that stops reading holds at most this much of our memory.
WRITE_CHUNK = 128 * 1024
# The cap on bytes waiting in all connections' send buffers together (above it, writers wait their turn).
MAX_BUFFERED_BYTES = 64 * 1024 * 1024
TLS_RECORD_TYPE_HANDSHAKE = 0x16

_HTTP_TO_HTTPS = b"Client sent an HTTP request to an HTTPS server.\n"
# The record-layer version of an alert sent in the clear, per negotiated protocol (TLS 1.3 is never in the clear).
_RECORD_VERSIONS = {"TLSv1.2": b"\x03\x03", "TLSv1.1": b"\x03\x02", "TLSv1": b"\x03\x01"}


# --- file descriptors ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FdBudget:
    """How the process's descriptors are shared out: RLIMIT_NOFILE (before and after raising it), the reserve kept
    for everything but client connections, and the connection cap that leaves."""

    soft_before: int
    soft: int
    hard: int
    reserve: int
    connections: int


def fd_reserve(providers: int) -> int:
    """Descriptors kept for everything but client connections, for an exporter polling `providers` providers."""
    return FD_RESERVE_BASE + FD_RESERVE_PER_PROVIDER * max(0, providers)


def _nr_open() -> int | None:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def raise_nofile_limit() -> tuple[int, int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one, as Go does for every program it starts: (before, now, hard).

    The soft limit of 1024 is a relic of select(); an asyncio process has no use for it. An unlimited hard limit
    is read as the kernel's own ceiling (fs.nr_open). Where the limit cannot be raised, it is left as it is.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        target = _nr_open() or soft
    if soft != resource.RLIM_INFINITY and target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            target = soft
        return soft, target, hard
    return soft, soft, hard


def fd_budget(reserve: int, ceiling: int = MAX_CONNECTIONS) -> FdBudget:
    """Raise the soft limit, then cap connections at what the limit leaves after `reserve` (at most `ceiling`)."""
    before, soft, hard = raise_nofile_limit()
    usable = ceiling if soft == resource.RLIM_INFINITY else soft - reserve
    return FdBudget(before, soft, hard, reserve, max(MIN_CONNECTIONS, min(ceiling, usable)))


class Guard(Protocol):
    """Access control for our own endpoints (rate limit, basic auth from a web config); None means open.

    `admit` answers 0 to let a request through, or the status to refuse it with (401, 429); when it needs slow work
    (a bcrypt check) it answers a future of that number, and the connection waits for it without blocking others.
    """

    def admit(self, path: str, headers: Mapping[str, str], peer: str) -> int | asyncio.Future[int]: ...

    def challenge(self) -> Sequence[tuple[str, str]]: ...

    def response_headers(self) -> Sequence[tuple[str, str]]: ...


class TlsSource(Protocol):
    """Where a new TLS connection gets its context (the current one, whole) and whether its peer may stay."""

    def tls_context(self) -> ssl.SSLContext: ...

    def peer_allowed(self, tls: ssl.SSLObject) -> bool: ...


class FixedTls:
    """A TlsSource for a context that never changes."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context

    def tls_context(self) -> ssl.SSLContext:
        return self._context

    def peer_allowed(self, tls: ssl.SSLObject) -> bool:
        return True


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
    # More body after `body`, written as is (the pre-rendered exposition and the runtime series appended to it).
    chunks: tuple[bytes, ...] = field(default=())


def _plain(status: HTTPStatus, extra: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status.value, f"{status.value} {status.phrase}\n".encode(), headers=extra)


# --- routes --------------------------------------------------------------------------------------------------------


class Routes:
    """Maps a request onto pre-rendered bytes. Pure apart from reading the current Rendered reference."""

    def __init__(
        self,
        current: Callable[[], Rendered],
        healthy: Callable[[], bool],
        guard: Guard | None = None,
        *,
        metrics_path: str = "/metrics",
        runtime: RuntimeMetrics | None = None,
        on_scrape: Callable[[Rendered], None] | None = None,
    ) -> None:
        self._current = current
        self._healthy = healthy
        self.guard = guard
        self.metrics_path = metrics_path  # --web.telemetry-path
        self._runtime = runtime  # process_* and python_* series, appended to every exposition
        self._on_scrape = on_scrape  # told which render each scrape was served

    def handle(
        self, method: str, target: str, headers: Mapping[str, str], peer: str = ""
    ) -> Response | asyncio.Future[Response]:
        if method not in ("GET", "HEAD"):
            return _plain(HTTPStatus.METHOD_NOT_ALLOWED, (("Allow", "GET, HEAD"),))
        path = target.split("?", 1)[0]
        guard = self.guard
        if guard is None:
            return self.serve(path, headers, method)
        verdict = guard.admit(path, headers, peer)
        if isinstance(verdict, int):
            return self._after(verdict, path, headers, method)
        answer: asyncio.Future[Response] = asyncio.get_running_loop().create_future()

        def decided(done: asyncio.Future[int]) -> None:
            if answer.cancelled():
                return
            try:
                answer.set_result(self._after(done.result(), path, headers, method))
            except Exception as exc:  # handed on to the connection, which answers 500
                answer.set_exception(exc)

        verdict.add_done_callback(decided)
        return answer

    def _after(self, verdict: int, path: str, headers: Mapping[str, str], method: str = "GET") -> Response:
        if verdict == 0:
            return self.serve(path, headers, method)
        status = HTTPStatus(verdict)
        extra = tuple(self.guard.challenge()) if status == HTTPStatus.UNAUTHORIZED and self.guard else ()
        return _plain(status, extra)

    def serve(self, path: str, headers: Mapping[str, str], method: str = "GET") -> Response:
        if path == "/healthz":
            return Response(200, b"ok\n") if self._healthy() else _plain(HTTPStatus.SERVICE_UNAVAILABLE)
        rendered = self._current()
        if path == self.metrics_path:
            if self._on_scrape is not None and method == "GET":  # a HEAD saw no values
                self._on_scrape(rendered)
            openmetrics, use_gzip = negotiate(headers.get("accept"), headers.get("accept-encoding"))
            extra: tuple[tuple[str, str], ...] = (("Vary", "Accept, Accept-Encoding"),)
            if use_gzip:
                extra += (("Content-Encoding", "gzip"),)
            ctype = OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE
            pre = rendered.openmetrics_pre if openmetrics else rendered.text_pre
            if pre is not None and self._runtime is not None:
                runtime = self._runtime.openmetrics() if openmetrics else self._runtime.text()
                return Response(200, b"", ctype, extra, pre.chunks(runtime, gzip=use_gzip))
            if openmetrics:
                body = rendered.openmetrics_gzip if use_gzip else rendered.openmetrics
            else:
                body = rendered.text_gzip if use_gzip else rendered.text
            return Response(200, body, ctype, extra)
        if path == "/readyz":
            # Ready = every provider's first poll has ended: the exporter serves what it has. Whether the first
            # full lists are complete is bifrost_batch_exporter_first_sync_complete's to say (named here too).
            if not rendered.ready:
                return Response(503, b"not ready: first polls running\n")
            running = rendered.first_sync_running
            if running:
                return Response(200, f"ready; first full list still running: {', '.join(running)}\n".encode())
            return Response(200, b"ready\n")
        if path == "/":
            return Response(200, rendered.landing, "text/html; charset=utf-8")
        return _plain(HTTPStatus.NOT_FOUND)


_REASONS = {s.value: s.phrase for s in HTTPStatus}
_FORBIDDEN_CERTIFICATE = Response(
    403, b"403 Forbidden: client certificate not allowed (client_allowed_sans)\n"
)


# --- one connection ------------------------------------------------------------------------------------------------


def _is_closing(transport: asyncio.Transport) -> bool:
    try:
        return transport.is_closing()
    except NotImplementedError:  # a minimal transport (tests drive the protocol without a socket)
        return False


class _Tls:
    """TLS on memory BIOs: we feed it the socket's bytes and send what it produces."""

    __slots__ = ("incoming", "obj", "outgoing", "ready")

    def __init__(self, context: ssl.SSLContext) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.ready = False


class _Connection(asyncio.Protocol):
    __slots__ = (
        "_buffer",
        "_busy",
        "_closing",
        "_forbidden",
        "_held",
        "_in_head",
        "_out",
        "_paused",
        "_peer",
        "_processing",
        "_reading_paused",
        "_server",
        "_sniffed",
        "_timer",
        "_tls",
        "_transport",
        "_write_timer",
        "admitted",
    )

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._closing = False  # no more requests are read; the connection ends once the last response is out
        self._paused = False  # the transport has unsent bytes (the client is not keeping up)
        self._held = 0  # bytes this connection holds in its transport's buffer (counted in server.buffered)
        self._busy = False  # a response is being produced or sent; pipelined requests wait
        self._reading_paused = False
        self._in_head = True  # the header deadline runs from the connect until the first head is complete
        self._out: deque[memoryview] = deque()
        self._peer = ""
        self._tls: _Tls | None = None
        self._sniffed = False
        self._processing = False
        self._forbidden = False  # TLS 1.3 peer refused after the handshake: every request gets 403
        self.admitted = False  # in server.connections (no longer counted among the connections being set up)

    # --- asyncio callbacks ---------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        server = self._server
        server.connections[self] = None  # admitted by the accept loop, which keeps the count under the cap
        # From here it counts as a connection, not as one being set up: counted twice until _connect returned,
        # a burst of connections looked like more than there were and evicted an idle one below the cap.
        server._admitting -= 1
        self.admitted = True
        # High water 0: any byte the socket did not take pauses us, and we resume when the buffer is empty, so the
        # transport never holds more than one chunk of ours.
        transport.set_write_buffer_limits(high=0)
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self._arm(server.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.pop(self, None)
        self._server.release(self, self._held)
        self._held = 0
        self._out.clear()
        self._cancel_timers()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._closing or self._transport is None:
            return
        connections = self._server.connections
        if connections.pop(self, 0) is None:  # to the back of the eviction order: this one is active
            connections[self] = None
        if not self._sniffed:
            self._sniffed = True
            if self._server.tls is not None:
                if data[:1] != bytes((TLS_RECORD_TYPE_HANDSHAKE,)):
                    # Go answers plain HTTP on a TLS port with a 400 its clients can read; so do we.
                    self._respond(Response(400, _HTTP_TO_HTTPS), head_only=False, keep_alive=False)
                    return
                try:
                    self._tls = _Tls(self._server.tls.tls_context())
                except Exception:  # a broken context must cost this connection, not the server
                    self._server.on_error()
                    self._abort()
                    return
        if self._tls is not None:
            self._tls_received(self._tls, data)
        else:
            self._plain_received(data)

    def eof_received(self) -> bool | None:
        # A half-closed client may still read what we send; close once its responses are out.
        self._closing = True
        if not self._busy:
            self._finish()
        return True

    def _plain_received(self, data: bytes) -> None:
        if not self._in_head and not self._buffer:
            # A head's first byte starts its deadline; later bytes never extend it (a slowloris trickle would).
            self._in_head = True
            self._arm(self._server.header_timeout)
        self._buffer += data
        self._process()

    def _process(self) -> None:
        self._processing = True
        try:
            self._process_heads()
        finally:
            self._processing = False

    def _process_heads(self) -> None:
        server = self._server
        while self._buffer and not self._closing and not self._busy:
            end = self._buffer.find(b"\r\n\r\n", 0, server.max_head + 4)
            problem = framing_error(self._buffer if end < 0 else self._buffer[: end + 4])
            if problem is not None:
                self._fail(problem)
                return
            if end < 0:
                if len(self._buffer) > server.max_head:
                    line_done = self._buffer.find(b"\r\n", 0, server.max_head) >= 0
                    self._fail(
                        HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
                        if line_done
                        else HTTPStatus.REQUEST_URI_TOO_LONG
                    )
                return
            head = bytes(self._buffer[:end])
            del self._buffer[: end + 4]
            self._in_head = False
            self._disarm()  # the head is in: from here the write deadline governs, then the idle one
            self._handle_head(head)
            if self._buffer and not self._closing and not self._busy:
                self._in_head = True  # a pipelined request: its deadline starts now
                self._arm(server.header_timeout)

    def pause_writing(self) -> None:
        self._paused = True
        transport = self._transport
        if transport is not None:
            held = transport.get_write_buffer_size()
            self._server.hold(held - self._held)
            self._held = held

    def resume_writing(self) -> None:
        self._paused = False
        self._server.release(self, self._held)
        self._held = 0
        self._pump()

    # --- TLS -----------------------------------------------------------------------------------------------------

    def _tls_received(self, tls: _Tls, data: bytes) -> None:
        tls.incoming.write(data)
        if not tls.ready:
            try:
                tls.obj.do_handshake()
            except ssl.SSLWantReadError:
                self._flush_tls(tls)
                return
            except (ssl.SSLError, OSError, ValueError):
                # The alert OpenSSL wrote (protocol_version, handshake_failure, certificate_required...) goes out
                # before the close, so the client learns why.
                self._server.handshake_failures += 1
                self._flush_tls(tls)
                self._closing = True
                self._close_transport()
                return
            tls.ready = True
            source = self._server.tls
            if source is not None and not source.peer_allowed(tls.obj):
                self._server.handshake_failures += 1
                if self._refuse_peer(tls):
                    return
            self._flush_tls(tls)
        plain = bytearray()
        while True:
            try:
                chunk = tls.obj.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify: the client is done sending
                self._closing = True
                break
            except (ssl.SSLError, OSError):
                self._abort()
                return
            if not chunk:
                break
            plain += chunk
        self._flush_tls(tls)  # tickets, key updates
        if plain:
            self._plain_received(bytes(plain))
        if self._closing and not self._busy:
            self._finish()

    def _refuse_peer(self, tls: _Tls) -> bool:
        """Refuse a client certificate the TLS source does not allow (client_allowed_sans) after the handshake.

        Go refuses it inside the handshake with a bad_certificate alert; Python's ssl has no hook there. Up to
        TLS 1.2 the server's Finished is still in our outgoing buffer, unsent, so its write side is still plaintext:
        we drop that flight and send the very alert OpenSSL would have sent (fatal, bad_certificate) instead.
        In TLS 1.3 the server's keys changed before the client's certificate arrived, and Python gives no way to
        send an encrypted alert, so the connection answers its request with 403 and closes. True when the
        connection is done with.
        """
        version = _RECORD_VERSIONS.get(tls.obj.version() or "")
        if version is not None and not tls.obj.session_reused:
            tls.outgoing.read()  # the server's ChangeCipherSpec and Finished: never sent
            if self._transport is not None:
                self._transport.write(
                    b"\x15" + version + b"\x00\x02\x02\x2a"
                )  # alert: fatal, bad_certificate
            self._closing = True
            self._close_transport()
            return True
        self._forbidden = True
        return False

    def _flush_tls(self, tls: _Tls) -> None:
        if tls.outgoing.pending and self._transport is not None:
            self._transport.write(tls.outgoing.read())

    # --- request handling ----------------------------------------------------------------------------------------

    def _handle_head(self, head: bytes) -> None:
        parsed = parse_head(head)
        if isinstance(parsed, HTTPStatus):
            self._fail(parsed)
            return
        if self._forbidden:
            self._respond(_FORBIDDEN_CERTIFICATE, head_only=parsed.method == "HEAD", keep_alive=False)
            return
        request = parsed
        keep_alive = request.keep_alive
        head_only = request.method == "HEAD"
        try:
            result = self._server.routes.handle(request.method, request.target, request.headers, self._peer)
        except Exception:  # a bug must cost one request, not the server
            self._server.on_error()
            self._respond(_plain(HTTPStatus.INTERNAL_SERVER_ERROR), head_only=head_only, keep_alive=False)
            return
        if isinstance(result, Response):
            self._respond(result, head_only=head_only, keep_alive=keep_alive)
            return
        # Slow work (a bcrypt check) runs elsewhere: this connection waits for it, reading nothing more.
        self._busy = True
        self._pause_reading()

        def answered(done: asyncio.Future[Response]) -> None:
            self._busy = False
            if self._transport is None or done.cancelled():
                return
            try:
                response = done.result()
            except Exception:
                self._server.on_error()
                self._respond(_plain(HTTPStatus.INTERNAL_SERVER_ERROR), head_only=head_only, keep_alive=False)
                return
            self._respond(response, head_only=head_only, keep_alive=keep_alive)

        result.add_done_callback(answered)

    def _respond(self, response: Response, *, head_only: bool, keep_alive: bool) -> None:
        if self._transport is None:
            return
        lines = [
            f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Unknown')}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body) + sum(len(c) for c in response.chunks)}",
            "Cache-Control: no-store",
        ]
        lines.extend(f"{k}: {v}" for k, v in response.headers)
        guard = self._server.routes.guard
        if guard is not None:
            lines.extend(f"{k}: {v}" for k, v in guard.response_headers())
        lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
        self._out.append(memoryview(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")))
        if not head_only:
            for part in (response.body, *response.chunks):
                if part:
                    self._out.append(memoryview(part))
        if not keep_alive:
            self._closing = True
        self._busy = True
        self._pump()
        if self._busy and self._write_timer is None:
            # Not all of it went out at once: the client gets write_timeout to take the rest, then it is dropped.
            self._write_timer = asyncio.get_running_loop().call_later(self._server.write_timeout, self._abort)
            self._pause_reading()

    def _pump(self) -> None:
        """Hand the queued response to the transport a chunk at a time, as fast as the client takes it."""
        server = self._server
        while self._out and not self._paused and self._transport is not None:
            if _is_closing(self._transport):
                self._out.clear()  # the socket failed under us; connection_lost follows
                return
            if not server.may_buffer(self):
                return  # over the cap on buffered bytes: resumed by server.release
            view = self._out[0]
            chunk = view[: server.write_chunk]
            if len(view) > server.write_chunk:
                self._out[0] = view[server.write_chunk :]
            else:
                self._out.popleft()
            if self._tls is not None:
                try:
                    self._tls.obj.write(chunk)
                except (ssl.SSLError, OSError):
                    self._abort()
                    return
                self._flush_tls(self._tls)
            else:
                self._transport.write(chunk)
        if not self._out and not self._paused and self._busy:
            self._sent()

    def _sent(self) -> None:
        """The whole response is in the kernel's hands: close, or wait for the next request."""
        self._busy = False
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        if self._closing:
            self._finish()
            return
        self._arm(self._server.idle_timeout)
        self._in_head = False
        self._resume_reading()
        if self._buffer and not self._processing:  # inside _process, its loop takes the next request
            self._in_head = True
            self._arm(self._server.header_timeout)
            self._process()

    def _finish(self) -> None:
        self._closing = True
        if self._tls is not None and self._tls.ready:
            with contextlib.suppress(ssl.SSLError, OSError, ValueError):
                self._tls.obj.unwrap()
            self._flush_tls(self._tls)
        self._close_transport()

    def _close_transport(self) -> None:
        self._cancel_timers()
        if self._transport is not None:
            self._transport.close()

    def _fail(self, status: HTTPStatus) -> None:
        self._respond(_plain(status), head_only=False, keep_alive=False)

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()

    def _arm(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(seconds, self._abort)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    @property
    def evictable(self) -> bool:
        """Idle: no response being produced or sent, so closing it loses no answer (a client retries a closed
        keep-alive connection; one that never sent a request has nothing to lose)."""
        return not self._busy and not self._out and not self._closing

    def _cancel_timers(self) -> None:
        for timer in (self._timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._write_timer = None


class HttpServer:
    """Owns the listening sockets and their accept loop, the live connections (bounded by the descriptors the
    process has, so a flood cannot exhaust them) and the cap on the bytes their send buffers hold together."""

    def __init__(
        self,
        routes: Routes,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | TlsSource | None = None,
        header_timeout: float = HEADER_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        max_head: int = MAX_HEAD_BYTES,
        max_connections: int | None = None,
        fd_reserve: int = FD_RESERVE_BASE,
        max_buffered: int = MAX_BUFFERED_BYTES,
        write_chunk: int = WRITE_CHUNK,
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        self.routes = routes
        self.host = host
        self.port = port
        self.tls: TlsSource | None = (
            FixedTls(ssl_context) if isinstance(ssl_context, ssl.SSLContext) else ssl_context
        )
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self.max_head = max_head
        # None: derived from RLIMIT_NOFILE at start (see fd_budget); a number is used as given.
        self.max_connections = max_connections if max_connections is not None else MAX_CONNECTIONS
        self._derive_cap = max_connections is None
        self.fd_reserve = fd_reserve
        self.fd_budget: FdBudget | None = None
        self.max_buffered = max_buffered
        self.write_chunk = write_chunk
        self.on_error = on_error
        # Live connections, least recently active first (the order idle ones are evicted in at the cap).
        self.connections: dict[_Connection, None] = {}
        self.buffered = 0  # bytes held in send buffers by clients that are not keeping up
        self.handshake_failures = 0
        self.evicted = 0  # idle connections closed to make room at the cap
        self.refused = 0  # new connections closed at once: at the cap with nothing idle to evict
        self.accept_failures = 0  # accept() calls that failed (mostly: no descriptor, EMFILE or ENFILE)
        self._waiting: deque[_Connection] = deque()
        self._sockets: list[socket.socket] = []
        self._admitting = 0  # accepted sockets whose transport is being set up
        self._setups: set[asyncio.Task[None]] = set()
        self._backoff = 0.0  # the current accept backoff; 0 while accepting normally
        self._retry: asyncio.TimerHandle | None = None
        self._episode_started = 0.0
        self._episode_failures = 0
        self._log = structlog.get_logger("exporter.server")

    # The cap on buffered bytes ------------------------------------------------------------------------------------

    def may_buffer(self, conn: _Connection) -> bool:
        if self.buffered + self.write_chunk <= self.max_buffered:
            return True
        if conn not in self._waiting:
            self._waiting.append(conn)
        return False

    def hold(self, delta: int) -> None:
        self.buffered += delta

    def release(self, conn: _Connection, held: int) -> None:
        self.buffered -= held
        with contextlib.suppress(ValueError):
            self._waiting.remove(conn)
        while self._waiting and self.buffered + self.write_chunk <= self.max_buffered:
            asyncio.get_running_loop().call_soon(self._waiting.popleft()._pump)

    # Accepting ----------------------------------------------------------------------------------------------------

    def _on_readable(self, sock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while queued
            except OSError as exc:
                # Out of descriptors or memory, or anything else the kernel says: back off, as Go does for any
                # accept error, rather than retry at once in a loop.
                self._accept_failed(exc)
                return
            if self._backoff:
                self._resumed()
            self._admit(conn)

    def _admit(self, conn: socket.socket) -> None:
        """Serve `conn`, making room by closing the longest-idle connection when at the cap."""
        if len(self.connections) + self._admitting >= self.max_connections and not self._evict(1):
            self.refused += 1
            conn.close()  # every connection is mid-response: the newcomer waits for a retry
            return
        conn.setblocking(False)
        self._admitting += 1
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._connect(conn))
        self._setups.add(task)
        task.add_done_callback(self._setups.discard)

    async def _connect(self, conn: socket.socket) -> None:
        protocol = _Connection(self)
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: protocol, conn)
        except OSError:
            conn.close()  # reset before its transport was made: nothing to serve
        finally:
            # Never made (reset, failed handshake, cancelled): no longer being set up either.
            if not protocol.admitted:
                self._admitting -= 1

    def _evict(self, count: int) -> bool:
        """Close up to `count` idle connections, least recently active first; True if that many were closed."""
        victims: list[_Connection] = []
        for conn in self.connections:
            if len(victims) == count:
                break
            if conn.evictable:
                victims.append(conn)
        for conn in victims:
            del self.connections[conn]
            conn._abort()
        self.evicted += len(victims)
        return len(victims) == count

    def _accept_failed(self, exc: OSError) -> None:
        """Stop accepting for a while (and on EMFILE free descriptors for the rest of the process); the episode is
        logged once when it starts and once when it ends."""
        self.accept_failures += 1
        self._episode_failures += 1
        first = not self._backoff
        self._backoff = ACCEPT_BACKOFF_MIN if first else min(ACCEPT_BACKOFF_MAX, self._backoff * 2)
        open_now = len(self.connections) + self._admitting
        if exc.errno == errno.EMFILE:
            # Our own limit: the budget was too generous for this process (something else holds descriptors).
            # Lower the cap below what is open and close idle connections, so state writes and the gateway pools
            # get descriptors back.
            self.max_connections = max(MIN_CONNECTIONS, min(self.max_connections, open_now - EMFILE_RELEASE))
            excess = len(self.connections) + self._admitting - self.max_connections
            if excess > 0:
                self._evict(excess)
        if first:
            self._episode_started = time.monotonic()
            self._log.warning(
                "accept_out_of_descriptors" if exc.errno in _OUT_OF_RESOURCES else "accept_failing",
                error=errno.errorcode.get(exc.errno or 0, str(exc.errno)),
                connections=open_now,
                max_connections=self.max_connections,
                nofile_limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                detail="accepting paused with backoff (5 ms doubling to 1 s) until a descriptor is free; "
                "logged once per episode",
            )
        self._pause_accepting()
        if self._retry is not None:
            self._retry.cancel()
        self._retry = asyncio.get_running_loop().call_later(self._backoff, self._resume_accepting)

    def _resumed(self) -> None:
        self._log.info(
            "accept_resumed",
            failed_accepts=self._episode_failures,
            seconds=round(time.monotonic() - self._episode_started, 3),
            max_connections=self.max_connections,
        )
        self._backoff = 0.0
        self._episode_failures = 0

    def _pause_accepting(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            loop.remove_reader(sock.fileno())

    def _resume_accepting(self) -> None:
        self._retry = None
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            loop.add_reader(sock.fileno(), self._on_readable, sock)

    # Lifecycle ----------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._derive_cap:
            self.fd_budget = fd_budget(self.fd_reserve, MAX_CONNECTIONS)
            self.max_connections = self.fd_budget.connections
        self._sockets = await _listen(self.host, self.port, backlog=512)
        self.port = int(self._sockets[0].getsockname()[1])
        self._resume_accepting()

    @property
    def addresses(self) -> list[str]:
        """What is listened on, HOST:PORT each ([ADDR]:PORT for IPv6): `:9877` is two of them, or one without IPv6."""
        shown = []
        for sock in self._sockets:
            host, port = sock.getsockname()[:2]
            shown.append(f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}")
        return shown

    async def close(self) -> None:
        if not self._sockets:
            return
        self._pause_accepting()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        for sock in self._sockets:
            sock.close()
        self._sockets = []
        for task in list(self._setups):
            task.cancel()
        for conn in list(self.connections):
            conn._abort()
        await asyncio.sleep(0)  # let the aborted transports report connection_lost


async def _listen(host: str, port: int, *, backlog: int) -> list[socket.socket]:
    """Listening sockets for `host` (every address it resolves to; all interfaces when empty), all on one port.

    As asyncio's create_server, except that with port 0 every address gets the same port. An empty host binds
    0.0.0.0 and :: side by side, so the IPv6 socket takes IPv6 only, and a kernel without IPv6 leaves just the
    IPv4 one (as Go's listeners do); a host of one family (`[::]`) gets the socket the OS gives it.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    both_families = {info[0] for info in infos} >= {socket.AF_INET, socket.AF_INET6}
    sockets: list[socket.socket] = []
    seen: set[tuple[int, str]] = set()
    try:
        for family, kind, proto, _name, address in infos:
            if (family, str(address[0])) in seen:
                continue
            seen.add((family, str(address[0])))
            try:
                sock = socket.socket(family, kind, proto)
            except OSError as err:
                if not host and family == socket.AF_INET6 and err.errno in _NO_IPV6:
                    continue  # IPv6 off in this kernel or namespace: IPv4 alone
                raise
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and both_families:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if sockets[0] is not sock:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            try:
                sock.bind(address)
            except OSError as err:
                if not host and family == socket.AF_INET6 and err.errno in _NO_IPV6:
                    sockets.pop().close()  # `::` not available (IPv6 disabled on every interface)
                    continue
                raise OSError(
                    err.errno,
                    f"error while attempting to bind on address {address!r}: {os.strerror(err.errno or 0)}",
                ) from None
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    if not sockets:
        raise OSError(errno.EADDRNOTAVAIL, f"no address to listen on for {host!r}")
    return sockets

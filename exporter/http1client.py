"""HTTP/1.1 to the gateway: keep-alive connections, one GET at a time each, responses framed per RFC 9112.

Why our own: the exporter sends one kind of request (a GET without a body, to one origin) many times a second, and
the request layer of a general client cost more CPU than parsing and counting the page it fetched (httpx over
aiohttp: ~0.9 ms of CPU per 100-batch page; aiohttp alone ~0.35 ms; this module ~0.1 ms; see docs/architecture.md,
"Decisions"). What a poll needs from HTTP is here: framing (Content-Length, chunked, until close), keep-alive, TLS,
and bounds on everything a gateway sends. What a status or a header means (redirects, Retry-After, content types,
decoding, the deadline) stays in client.py.

Bounds: a response head of at most 64 KiB and 256 fields; a body of at most `cap` bytes as it arrives on the wire
(Content-Length beyond it is refused before any of the body is read). A failure closes the connection; only a
connection whose last response was complete and framed is used again.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

MAX_HEAD_BYTES: Final = 64 * 1024
MAX_FIELDS: Final = 256
_MAX_CHUNK_LINE: Final = 1024
_MAX_IDLE: Final = 8
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: [\t !-~\x80-\xff]*)?")
_TCHARS: Final = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_HEX: Final = re.compile(rb"[0-9A-Fa-f]{1,15}")

Kind = Literal["connect", "closed", "protocol"]
# Where a response is in its framing.
_IDLE, _HEAD, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(5)
_SIZE, _DATA, _DATA_END, _TRAILER = range(4)


class HttpError(Exception):
    """The exchange failed below HTTP's meaning: no connection (`connect`), the peer closed or reset it before a
    complete answer (`closed`), or what came back is not an HTTP/1.1 response (`protocol`)."""

    def __init__(self, kind: Kind, detail: str, *, answered: bool = True) -> None:
        super().__init__(detail)
        self.kind: Kind = kind
        self.detail = detail
        # False: not one byte of a response arrived (a kept-alive connection the server had already closed).
        self.answered = answered


class TooLarge(Exception):
    """The body is larger than the cap: declared so (`declared`), or counted so as it arrived."""

    def __init__(self, status: int, declared: int | None) -> None:
        super().__init__(f"body larger than the cap (HTTP {status})")
        self.status = status
        self.declared = declared


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; repeated fields joined with ", "
    body: bytes  # as sent: still content-encoded


@dataclass(frozen=True, slots=True)
class Origin:
    """Where requests go: the gateway's scheme, host (an IPv6 address without brackets) and port."""

    scheme: str
    host: str
    port: int

    @property
    def authority(self) -> str:
        """The Host field: the port only when it is not the scheme's default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def tls_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    """The client's TLS: the system's trust store (or `ca_file` alone), host names checked; or no checks at all."""
    if not verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["http/1.1"])
    return context


def parse_head(head: bytes) -> tuple[int, int, dict[str, str]]:
    """(minor version, status, fields) of a response head without its final CRLF CRLF; HttpError if malformed."""
    lines = head.split(b"\r\n")
    match = _STATUS_LINE.fullmatch(lines[0])
    if match is None:
        raise HttpError("protocol", "the answer is not an HTTP/1.x response")
    if len(lines) > MAX_FIELDS + 1:
        raise HttpError("protocol", f"more than {MAX_FIELDS} response header fields")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name.translate(None, _TCHARS):
            # Includes obs-fold (a line starting with whitespace), which RFC 9112 lets a client refuse.
            raise HttpError("protocol", "malformed response header field")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        previous = fields.get(key)
        fields[key] = text if previous is None else f"{previous}, {text}"
    return int(match[1]), int(match[2]), fields


class _Connection(asyncio.Protocol):
    """One connection's read side: frames the response to the request in flight and hands it to `waiter`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = False
        self._waiter: asyncio.Future[Response] | None = None
        self._state = _IDLE
        self._buffer = bytearray()  # a head not yet whole, a chunked body's unread bytes
        self._answered = False
        self._cap = 0
        self._status = 0
        self._fields: dict[str, str] = {}
        self._chunks: list[bytes] = []
        self._size = 0
        self._remaining = 0
        self._chunk_state = _SIZE

    # --- asyncio callbacks --------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state == _LENGTH:
            self._take_length(data)
        elif state == _HEAD:
            self._answered = True
            buffer = self._buffer
            # The head came in pieces: gather them until it is whole, or until _read_head refuses its size.
            if buffer:
                searched = len(buffer) - 3
                buffer += data
                if len(buffer) <= MAX_HEAD_BYTES and buffer.find(b"\r\n\r\n", max(0, searched)) < 0:
                    return
                data = bytes(buffer)
                buffer.clear()
            self._read_head(data)
        elif state == _IDLE:
            # Bytes nobody asked for: the stream is out of step; never reuse it.
            self.close()
        elif state == _CHUNKED:
            self._buffer += data
            self._read_chunks()
        else:
            self._keep(data)

    def eof_received(self) -> bool:
        return False  # close; connection_lost finishes a body read until close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self._waiter is None or self._waiter.done():
            return
        if self._state == _UNTIL_CLOSE and exc is None:
            self._finish()
            return
        reason = f"{type(exc).__name__}: {exc}" if exc is not None else "the connection was closed"
        what = "before a complete answer" if self._answered else "before any answer"
        self._fail(HttpError("closed", f"{reason} {what}", answered=self._answered))

    # --- one exchange -------------------------------------------------------------------------------------------

    def send(self, request: bytes, cap: int) -> asyncio.Future[Response]:
        assert self.transport is not None
        assert self._state == _IDLE
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        self._state = _HEAD
        self._answered = False
        self._cap = cap
        self.reusable = False
        self.transport.write(request)
        return waiter

    def abort(self) -> None:
        self.closed = True
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.closed = True
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: Exception) -> None:
        self._state = _IDLE
        self._buffer.clear()
        self._chunks = []
        waiter = self._waiter
        self._waiter = None
        self.abort()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _finish(self) -> None:
        response = Response(self._status, self._fields, b"".join(self._chunks))
        self._chunks = []
        self._state = _IDLE
        waiter = self._waiter
        self._waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    # --- framing ------------------------------------------------------------------------------------------------

    def _read_head(self, data: bytes) -> None:
        """`data`: what has arrived of the response. The head and the whole body of a page usually arrive in one
        read: taken as it came, not through the buffer, the body is copied once instead of three times."""
        while True:
            end = data.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES + 4)
            if end < 0:
                if len(data) > MAX_HEAD_BYTES:
                    self._fail(HttpError("protocol", "response head larger than 64 KiB"))
                else:
                    self._buffer += data
                return
            try:
                minor, status, fields = parse_head(data[:end])
            except HttpError as exc:
                self._fail(exc)
                return
            data = data[end + 4 :]
            if 100 <= status < 200 and status != 101:
                continue  # an interim answer (100 Continue, 103 Early Hints): the final one follows
            break
        self._status, self._fields = status, fields
        connection = fields.get("connection", "").lower()
        self.reusable = "close" not in connection if minor == 1 else "keep-alive" in connection
        self._chunks = []
        self._size = 0
        rest = data
        coding = fields.get("transfer-encoding")
        length = fields.get("content-length")
        if status in (101, 204, 304):
            self._state = _LENGTH
            self._remaining = 0
        elif coding is not None:
            if coding.strip().lower() != "chunked":
                self._fail(HttpError("protocol", "unsupported transfer-coding"))
                return
            if length is not None:
                self.reusable = False  # RFC 9112 6.3: both framings sent; the connection is not trusted after
            self._state = _CHUNKED
            self._chunk_state = _SIZE
        elif length is not None:
            values = {v.strip() for v in length.split(",")}
            value = values.pop() if len(values) == 1 else ""
            if not value.isascii() or not value.isdigit():
                self._fail(HttpError("protocol", "malformed Content-Length"))
                return
            declared = int(value)
            if declared > self._cap:
                self._fail(TooLarge(status, declared))
                return
            self._state = _LENGTH
            self._remaining = declared
        else:
            self._state = _UNTIL_CLOSE
            self.reusable = False
        if self._state == _CHUNKED:
            self._buffer += rest
            self._read_chunks()
        elif self._state == _LENGTH:
            self._take_length(rest)
        else:
            self._keep(rest)

    def _take_length(self, data: bytes) -> None:
        remaining = self._remaining
        if len(data) > remaining:
            data = data[:remaining]
            self.reusable = False  # more than the response: the stream is out of step
        if data:
            self._chunks.append(data)
            self._remaining = remaining - len(data)
        if self._remaining == 0:
            self._finish()

    def _keep(self, data: bytes) -> None:
        if not data:
            return
        self._size += len(data)
        if self._size > self._cap:
            self._fail(TooLarge(self._status, None))
            return
        self._chunks.append(data)

    def _read_chunks(self) -> None:
        buffer = self._buffer
        while self._state == _CHUNKED:
            state = self._chunk_state
            if state == _DATA:
                if not buffer:
                    return
                take = min(self._remaining, len(buffer))
                self._keep(bytes(buffer[:take]))
                if self._state != _CHUNKED:
                    return
                del buffer[:take]
                self._remaining -= take
                if self._remaining == 0:
                    self._chunk_state = _DATA_END
                continue
            if state == _DATA_END:
                if len(buffer) < 2:
                    return
                if buffer[:2] != b"\r\n":
                    self._fail(HttpError("protocol", "malformed chunked body"))
                    return
                del buffer[:2]
                self._chunk_state = _SIZE
                continue
            end = buffer.find(b"\r\n")
            limit = _MAX_CHUNK_LINE if state == _SIZE else MAX_HEAD_BYTES
            if end < 0:
                if len(buffer) > limit:
                    self._fail(HttpError("protocol", "malformed chunked body"))
                return
            line = bytes(buffer[:end])
            del buffer[: end + 2]
            if state == _TRAILER:
                if not line:
                    if buffer:
                        self.reusable = False
                        buffer.clear()
                    self._finish()
                    return
                continue  # trailer fields are not used
            size = line.split(b";", 1)[0].strip(b" \t")
            if _HEX.fullmatch(size) is None:
                self._fail(HttpError("protocol", "malformed chunk size"))
                return
            self._remaining = int(size, 16)
            self._chunk_state = _DATA if self._remaining else _TRAILER


Resolve = Callable[[str, int], tuple[str, int]]


class Pool:
    """Keep-alive connections to one origin. Requests run concurrently, each on a connection of its own."""

    def __init__(self, origin: Origin, tls: ssl.SSLContext | None, *, resolve: Resolve | None = None) -> None:
        self._origin = origin
        self._tls = tls
        # Where to connect for (host, port): tests route a name that has no DNS entry to a loopback server.
        self._resolve = resolve
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()

    async def get(self, request: bytes, cap: int) -> Response:
        """The response to `request` (a complete request head), body at most `cap` bytes on the wire.

        A kept-alive connection the server closed meanwhile fails before any answer: the request is sent again
        on a new connection (a GET changes nothing), and the other idle connections, likely closed as well, are
        dropped.
        """
        while self._idle:
            conn = self._idle.pop()
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                self._open.discard(conn)
                continue
            try:
                return await self._exchange(conn, request, cap)
            except HttpError as exc:
                if exc.kind != "closed" or exc.answered:
                    raise
                for stale in self._idle:
                    stale.abort()
                self._idle.clear()
                break
        return await self._exchange(await self._connect(), request, cap)

    async def _exchange(self, conn: _Connection, request: bytes, cap: int) -> Response:
        try:
            response = await conn.send(request, cap)
        except BaseException:
            conn.abort()  # a deadline or a failure mid-response: the stream is out of step
            self._open.discard(conn)
            raise
        if conn.reusable and not conn.closed and len(self._idle) < _MAX_IDLE:
            self._idle.append(conn)
        else:
            conn.close()
            self._open.discard(conn)
        return response

    async def _connect(self) -> _Connection:
        origin = self._origin
        host, port = (
            (origin.host, origin.port) if self._resolve is None else self._resolve(origin.host, origin.port)
        )
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                _Connection,
                host,
                port,
                ssl=self._tls,
                server_hostname=origin.host if self._tls is not None else None,
            )
        except ssl.SSLCertVerificationError as exc:
            raise HttpError("connect", f"TLS: {exc.verify_message or exc.reason}", answered=False) from None
        except ssl.SSLError as exc:
            raise HttpError("connect", f"TLS: {exc.reason or type(exc).__name__}", answered=False) from None
        except OSError as exc:
            raise HttpError(
                "connect",
                f"cannot connect to {origin.authority}: {exc.strerror or exc or type(exc).__name__}",
                answered=False,
            ) from None
        self._open.add(conn)
        return conn

    def close(self) -> None:
        for conn in self._open:
            conn.abort()
        self._open.clear()
        self._idle.clear()

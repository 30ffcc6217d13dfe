"""Socket plumbing: a threaded stdlib HTTP/1.1 server that hands every request to the gateway.

Stdlib only, so the simulator runs wherever the exporter runs (no extra dependency for `--demo`).
"""

from __future__ import annotations

import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

from .wire import Response

__all__ = ["HttpServer"]

Dispatch = Callable[[str, str, dict[str, str], bytes], Response]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    dispatch: Dispatch
    clock: Callable[[], float]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that vanished mid-request (a killed exporter, a timed-out poll) is routine for a gateway:
        silent. Anything else is a simulator bug and is printed as before."""
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bifrost-sim/1.0"
    sys_version = ""
    # Buffered writes (flushed by handle_one_request) send headers and body together; with TCP_NODELAY this
    # avoids the Nagle/delayed-ACK stall that otherwise costs ~40 ms per keep-alive request.
    wbufsize = 64 * 1024

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The Date header from the simulated gateway's clock, as Bifrost's Go server sends its own: a test that
        moves the gateway's time moves its Date with it (the exporter judges the cost horizon on it)."""
        return super().date_time_string(
            cast(_Server, self.server).clock() if timestamp is None else timestamp
        )

    def _serve(self, method: str) -> None:
        server = cast(_Server, self.server)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        status, payload, content_type, headers = server.dispatch(
            method, self.path, {k.lower(): v for k, v in self.headers.items()}, body
        )
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(payload)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: tests and benchmarks would drown in access logs."""


class HttpServer:
    """Serves in a daemon thread; with `ssl_context` it speaks HTTPS (handshakes happen lazily in the
    per-connection threads, so one stalled client cannot block accepting others)."""

    def __init__(
        self,
        dispatch: Dispatch,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        server = _Server((host, port), _Handler)
        server.dispatch = dispatch
        server.clock = clock
        if ssl_context is not None:
            server.socket = ssl_context.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._server = server
        bound_port = int(server.server_address[1])
        shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
        scheme = "https" if ssl_context is not None else "http"
        self.url = f"{scheme}://{shown}:{bound_port}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="bifrost-sim", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

"""Issue 15, reproductions 4 and 6, as written, runnable against any checkout (only the Routes, HttpServer and
WebSecurity calls every version has), for the before/after table in docs/security.md:

    PYTHONPATH=CHECKOUT .venv/bin/python tests/repro_issue15_http.py 4   # responses to a bare-LF smuggling attempt
    PYTHONPATH=CHECKOUT .venv/bin/python tests/repro_issue15_http.py 6   # first TLS connection after a policy change

Reproductions 2, 7 and 8 are tests/test_http_slow_readers.py and tests/test_auth_flood.py run as scripts.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import yaml

from exporter.render import Rendered
from exporter.server import HttpServer, Routes
from exporter.webconfig import WebSecurity


def serve(guard: Any = None, ssl_context: Any = None) -> int:
    body = b"up 1\n"
    fixed = Rendered(body, gzip.compress(body), body, gzip.compress(body), b"", True, 0.0)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    server = HttpServer(Routes(lambda: fixed, lambda: True, guard), "127.0.0.1", 0, ssl_context=ssl_context)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    return server.port


def reproduction_4() -> None:
    port = serve()
    hidden = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    smuggle = b"GET /healthz HTTP/1.1\r\nHost: x\nContent-Length: %d\r\n\r\n" % len(hidden) + hidden
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(smuggle)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except TimeoutError:
            pass
    print(
        f"responses: {out.count(b'HTTP/1.1 ')} (status lines: {out.count(b'HTTP/1.1 200')} x 200, "
        f"{out.count(b'HTTP/1.1 400')} x 400)"
    )


def attempt(port: int, ca_file: Path, version: ssl.TLSVersion) -> str:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.minimum_version = ctx.maximum_version = version
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    except (ssl.SSLError, OSError) as exc:
        return f"refused ({type(exc).__name__})"
    return data.split(b"\r\n", 1)[0].decode()


def reproduction_6() -> None:
    from tests.test_webconfig import Pki  # in every checkout's tests

    for name, version in (("TLS 1.2", ssl.TLSVersion.TLSv1_2), ("TLS 1.3", ssl.TLSVersion.TLSv1_3)):
        with tempfile.TemporaryDirectory() as directory:
            pki = Pki(Path(directory) / "pki", "repro")
            cert, key, _ = pki.issue("server")
            path = Path(directory) / "web.yml"
            plain = {"cert_file": str(cert), "key_file": str(key)}
            path.write_text(yaml.safe_dump({"tls_server_config": plain}))
            web = WebSecurity(path, check_interval=0.0)
            port = serve(web, web.ssl_context)
            before = attempt(port, pki.ca_file, version)
            strict = {
                **plain,
                "client_auth_type": "RequireAndVerifyClientCert",
                "client_ca_file": str(pki.ca_file),
            }
            path.write_text(yaml.safe_dump({"tls_server_config": strict}))
            first = attempt(port, pki.ca_file, version)
            second = attempt(port, pki.ca_file, version)
            print(
                f"{name}: before the change {before!r}; first connection after it {first!r}; second {second!r}"
            )


if __name__ == "__main__":
    {"4": reproduction_4, "6": reproduction_6}[sys.argv[1]]()

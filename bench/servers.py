"""The servers the benchmarks start as child processes (``python -m bench.servers <kind> ...``).

- ``account``: the realistic large account of ``bench/account.py`` (weeks of finished batches behind a few active
  ones, on a clock that may run faster than the wall; list by cursor, retrieve by id).
- ``feeder``: a gateway for big stores. Each provider's list is built from one page of realistic batches made by the
  simulator's generator; page k is that page with every id suffixed by k, so a million unique batches cost neither
  a million dicts nor a million json.dumps calls in the feeder (the exporter sees ordinary, realistic pages).
- ``static``: the exposition bytes served by our own HttpServer through a Routes that returns fixed bytes — the
  upper limit of the HTTP stack.
- ``aiohttp``: the same bytes from aiohttp's low-level server (``aiohttp.web.Server``), for the decision whether
  our own HTTP server earns its place (issue 11 item 8);
- ``h11``: the same bytes from an asyncio protocol that lets h11 do all HTTP/1.1 parsing and framing;
- ``naive``: the same series the common way — prometheus_client Gauges with labels in their own registry, set
  from a poll, served by ``prometheus_client.start_http_server``.

Each prints ``READY <port>`` on stdout when it listens and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from exporter.render import TEXT_CONTENT_TYPE
from exporter.server import HttpServer, Response, Routes
from exporter.simulator import generate_batches, list_page_bytes

PAGE_MARK = b"~PAGE~"  # six bytes, replaced by the six-digit page number
NEXT_MARK = b"~NEXT~"
TEMPLATE_SIZE = 1000
_LEGACY_FLAVORS = ("openai", "azure", "vertex")


def _wait_for_term() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass


# --------------------------------------------------------------------------------------------------------------
# feeder


class _Provider:
    def __init__(self, name: str, index: int, total: int, seed: int, now: float) -> None:
        from bench.common import flavor_of

        flavor = flavor_of(index)
        self.total = total
        size = min(TEMPLATE_SIZE, max(1, total))
        batches = generate_batches(
            name,
            size,
            seed=seed,
            now=now,
            flavor=flavor,
            style="legacy" if flavor in _LEGACY_FLAVORS else "cursor",
        )
        mark = PAGE_MARK.decode()
        for batch in batches:
            old = batch["id"]
            batch["id"] = f"{old}-{mark}"
            if batch.get("operation_name") == old:
                batch["operation_name"] = batch["id"]
        self.batches = batches
        self.size = size
        self._bodies: dict[tuple[int, bool], bytes] = {}
        self._lock = threading.Lock()

    def page(self, index: int, limit: int) -> bytes:
        """Page `index` of `limit` batches, as a gateway that honours `limit` (Bifrost passes it on) answers."""
        size = min(self.size, limit)
        start = index * size
        count = max(0, min(size, self.total - start))
        more = start + count < self.total
        key = (count, more)
        with self._lock:
            body = self._bodies.get(key)
            if body is None:
                body = list_page_bytes(
                    self.batches[:count],
                    has_more=more,
                    next_cursor="c" + NEXT_MARK.decode() if more else None,
                    provider="feeder",
                )
                self._bodies[key] = body
        return body.replace(PAGE_MARK, b"%06d" % index).replace(NEXT_MARK, b"%06d" % (index + 1))


class _GatewayServer(ThreadingHTTPServer):
    """A stdlib HTTP server standing in for the gateway: threads per connection, quiet, keep-alive."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


class _JsonHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    NOT_FOUND = b'{"is_bifrost_error":false,"error":{"message":"not found"}}'

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _FeederServer(_GatewayServer):
    providers: Mapping[str, _Provider]


class _FeederHandler(_JsonHandler):
    def do_GET(self) -> None:
        server = cast(_FeederServer, self.server)
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        provider = server.providers.get(query.get("provider", ""))
        if url.path != "/v1/batches" or provider is None:
            self._send(404, self.NOT_FOUND)
            return
        after = query.get("after", "")
        index = int(after[1:]) if after.startswith("c") and after[1:].isdigit() else 0
        limit = query.get("limit", "")
        self._send(
            200, provider.page(index, int(limit) if limit.isdigit() and int(limit) > 0 else TEMPLATE_SIZE)
        )


def feeder(providers: Sequence[str], per_provider: int, seed: int) -> None:
    now = time.time()
    server = _FeederServer(("127.0.0.1", 0), _FeederHandler)
    server.providers = {name: _Provider(name, i, per_provider, seed, now) for i, name in enumerate(providers)}
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    print(f"READY {server.server_address[1]}", flush=True)
    _wait_for_term()
    server.shutdown()


# --------------------------------------------------------------------------------------------------------------
# account: the realistic large account of bench/account.py (list by `after` cursor, retrieve by id)


class _AccountServer(_GatewayServer):
    accounts: Mapping[str, Any]


class _AccountHandler(_JsonHandler):
    def do_GET(self) -> None:
        server = cast(_AccountServer, self.server)
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        account = server.accounts.get(query.get("provider", ""))
        body: bytes | None = None
        if account is not None and url.path == "/v1/batches":
            limit = query.get("limit", "")
            body = account.page(query.get("after"), int(limit) if limit.isdigit() and int(limit) > 0 else 100)
        elif account is not None and url.path.startswith("/v1/batches/"):
            body = account.retrieve(url.path.rsplit("/", 1)[-1])
        if body is None:
            self._send(404, self.NOT_FOUND)
        else:
            self._send(200, body)


def account(providers: Sequence[str], per_provider: int, active: int, speed: float, seed: int) -> None:
    from bench.account import Account
    from bench.common import flavor_of

    server = _AccountServer(("127.0.0.1", 0), _AccountHandler)
    server.accounts = {
        name: Account(name, flavor_of(i), per_provider, active=active, speed=speed, seed=seed)
        for i, name in enumerate(providers)
    }
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    print(f"READY {server.server_address[1]}", flush=True)
    _wait_for_term()
    server.shutdown()


# --------------------------------------------------------------------------------------------------------------
# static


class FixedRoutes(Routes):
    """Every request gets the same pre-encoded bytes: what our HTTP stack can do at best."""

    def __init__(self, body: bytes, gzip: bool = False) -> None:
        super().__init__(lambda: cast(Any, None), lambda: True)
        extra = (("Content-Encoding", "gzip"),) if gzip else ()
        self._response = Response(200, body, TEXT_CONTENT_TYPE, extra)

    def handle(
        self, method: str, target: str, headers: Mapping[str, str], peer: str = ""
    ) -> Response | asyncio.Future[Response]:
        return self._response


async def _static(body: bytes, gzip: bool, write_timeout: float) -> None:
    server = HttpServer(FixedRoutes(body, gzip), "127.0.0.1", 0, write_timeout=write_timeout)
    await server.start()
    print(f"READY {server.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()


# --------------------------------------------------------------------------------------------------------------
# library servers: the same bytes, someone else's HTTP/1.1


def _headers(gzip: bool) -> list[tuple[str, str]]:
    headers = [("Content-Type", TEXT_CONTENT_TYPE), ("Cache-Control", "no-store")]
    return headers + ([("Content-Encoding", "gzip")] if gzip else [])


async def _serve_until_term(server: asyncio.Server) -> None:
    port = server.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


async def _aiohttp(body: bytes, gzip: bool) -> None:
    from aiohttp import web  # type: ignore[import-not-found, unused-ignore]  # bench only: pip install aiohttp

    headers = dict(_headers(gzip))

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=body, headers=headers)

    server = await asyncio.get_running_loop().create_server(web.Server(handler), "127.0.0.1", 0, backlog=512)
    await _serve_until_term(server)


class _H11Connection(asyncio.Protocol):
    """h11 parses and frames; this only moves bytes and answers every request with the fixed body."""

    def __init__(self, body: bytes, gzip: bool) -> None:
        import h11

        self._h11 = h11
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        self._body = body
        self._headers = [*_headers(gzip), ("Content-Length", str(len(body)))]
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        h11 = self._h11
        transport = self._transport
        assert transport is not None
        self._conn.receive_data(data)
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                transport.write(
                    b"HTTP/1.1 %d Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    % exc.error_status_hint
                )
                transport.close()
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                if self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE:
                    self._conn.start_next_cycle()
                    continue
                return
            if isinstance(event, h11.Request):
                transport.write(self._conn.send(h11.Response(status_code=200, headers=self._headers)))
                transport.write(self._conn.send(h11.Data(data=self._body)))
                transport.write(self._conn.send(h11.EndOfMessage()))
            elif isinstance(event, h11.ConnectionClosed):
                transport.close()
                return
            if self._conn.our_state is h11.MUST_CLOSE:
                transport.close()
                return

    def eof_received(self) -> bool | None:
        self._conn.receive_data(b"")
        return None


async def _h11(body: bytes, gzip: bool) -> None:
    server = await asyncio.get_running_loop().create_server(
        lambda: _H11Connection(body, gzip), "127.0.0.1", 0, backlog=512
    )
    await _serve_until_term(server)


# --------------------------------------------------------------------------------------------------------------
# naive


def naive(exposition: str) -> None:
    """The common way: one labelled Gauge per metric in a registry, set on every poll, rendered per scrape."""
    from prometheus_client import CollectorRegistry, Gauge, start_http_server
    from prometheus_client.parser import text_string_to_metric_families

    registry = CollectorRegistry(auto_describe=False)
    gauges: dict[str, Gauge] = {}

    def poll(text: str) -> None:  # what a naive exporter's poll loop does with each result
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                gauge = gauges.get(sample.name)
                labels = sorted(sample.labels)
                if gauge is None:
                    gauge = Gauge(sample.name, family.documentation or sample.name, labels, registry=registry)
                    gauges[sample.name] = gauge
                if labels:
                    gauge.labels(**sample.labels).set(sample.value)
                else:
                    gauge.set(sample.value)

    poll(exposition)
    server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    print(f"READY {server.server_address[1]}", flush=True)
    _wait_for_term()
    server.shutdown()


# --------------------------------------------------------------------------------------------------------------
# simulator


def simulator(
    providers: Sequence[str], per_provider: int, page_delay: float, seed: int, honour_cursor: bool = False
) -> None:
    """The project's own simulator (static store, no lifecycle) with a fixed delay on every list page.
    `honour_cursor`: every provider pages past page 1 (by default Anthropic, Bedrock and Gemini shapes answer as
    the real gateway does, ignoring `after`)."""
    from bench.common import flavor_of
    from exporter.simulator import ProviderSpec, Simulator

    specs = []
    for i, name in enumerate(providers):
        flavor = flavor_of(i)
        style = "legacy" if flavor in _LEGACY_FLAVORS else "cursor"
        after_ignored = False if honour_cursor else None
        specs.append(
            ProviderSpec(
                name,
                style=cast(Any, style),
                flavor=cast(Any, flavor),
                page_delay=page_delay,
                after_ignored=after_ignored,
            )
        )
    sim = Simulator(providers=specs, lifecycle=False, seed=seed)
    for i, name in enumerate(providers):
        sim.load_batches(name, generate_batches(name, per_provider, seed=seed, flavor=flavor_of(i)))
    sim.start()
    print(f"READY {sim.port}", flush=True)
    _wait_for_term()
    sim.stop()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.servers")
    sub = p.add_subparsers(dest="kind", required=True)
    f = sub.add_parser("feeder")
    f.add_argument("--providers", required=True)
    f.add_argument("--per-provider", type=int, required=True)
    f.add_argument("--seed", type=int, default=0)
    a = sub.add_parser("account")
    a.add_argument("--providers", required=True)
    a.add_argument("--per-provider", type=int, required=True)
    a.add_argument("--active", type=int, default=100, help="batches running at any moment, per provider")
    a.add_argument("--speed", type=float, default=1.0, help="account seconds per wall second")
    a.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("static")
    s.add_argument("--file", type=Path, required=True)
    s.add_argument("--gzip", action="store_true", help="the file is gzip-encoded: say so in Content-Encoding")
    s.add_argument(
        "--write-timeout", type=float, default=30.0, help="seconds a client gets to read a response"
    )
    for kind in ("aiohttp", "h11"):
        lib = sub.add_parser(kind)
        lib.add_argument("--file", type=Path, required=True)
        lib.add_argument("--gzip", action="store_true")
    n = sub.add_parser("naive")
    n.add_argument("--file", type=Path, required=True)
    m = sub.add_parser("simulator")
    m.add_argument("--providers", required=True)
    m.add_argument("--per-provider", type=int, required=True)
    m.add_argument("--page-delay", type=float, default=0.05)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--honour-cursor", action="store_true", help="every provider pages past page 1")
    args = p.parse_args(argv)
    if args.kind == "simulator":
        simulator(
            args.providers.split(","), args.per_provider, args.page_delay, args.seed, args.honour_cursor
        )
    elif args.kind == "feeder":
        feeder(args.providers.split(","), args.per_provider, args.seed)
    elif args.kind == "account":
        account(args.providers.split(","), args.per_provider, args.active, args.speed, args.seed)
    elif args.kind == "static":
        asyncio.run(_static(args.file.read_bytes(), args.gzip, args.write_timeout))
    elif args.kind == "aiohttp":
        asyncio.run(_aiohttp(args.file.read_bytes(), args.gzip))
    elif args.kind == "h11":
        asyncio.run(_h11(args.file.read_bytes(), args.gzip))
    else:
        naive(args.file.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

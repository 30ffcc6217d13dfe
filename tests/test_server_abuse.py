"""Our own HTTP server under abuse: concurrent scrapes while snapshots swap, clients that never read, slowloris,
pipelining floods, absurd request lines and headers, connection floods. The server must stay correct for everyone
else, bounded in memory, and reachable afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.app import Exporter
from exporter.render import Rendered
from exporter.simulator import ProviderSpec, Simulator
from exporter.snapshot import ProviderState
from tests.harness import ExporterThread, make_settings, wait_until

OM = "application/openmetrics-text;version=1.0.0"


class RecordingExporter(Exporter):
    """Remembers every exposition it published, so a response can be matched to exactly one of them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.published_text: set[bytes] = set()
        self.published_om: set[bytes] = set()
        self._record_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def _render(self, states: list[ProviderState] | None = None) -> Rendered:
        rendered = super()._render(states)
        with self._record_lock:
            self.published_text.add(rendered.text)
            self.published_om.add(rendered.openmetrics)
        return rendered


@pytest.fixture
def sim() -> Iterator[Simulator]:
    start = time.time()
    # A clock running 600x fast: batches churn through their lifecycle between polls, so snapshots really differ.
    simulator = Simulator(
        providers=[
            ProviderSpec("openai", keys=2),
            ProviderSpec("anthropic"),
            ProviderSpec("azure", style="legacy"),
        ],
        seed=3,
        clock=lambda: start + (time.time() - start) * 600,
        initial_batches=40,
        latency_ms=1,
    )
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.stop()


@pytest.fixture
def exporter(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[ExporterThread]:
    import tests.harness as harness

    monkeypatch.setattr(harness, "Exporter", RecordingExporter)
    settings = make_settings(sim.url, ["openai", "anthropic", "azure"], per_batch_metrics=True, page_size=7)
    with ExporterThread(settings) as running:
        running.poll()
        yield running


def test_200_concurrent_scrapes_while_snapshots_swap(exporter: ExporterThread, sim: Simulator) -> None:
    exp = exporter.exporter
    assert isinstance(exp, RecordingExporter)
    stop = threading.Event()
    polls = 0

    def keep_polling() -> None:
        nonlocal polls
        while not stop.is_set():
            sim.tick()
            exporter.poll()
            polls += 1

    poller = threading.Thread(target=keep_polling, daemon=True)
    poller.start()
    variants = [
        ({"Accept-Encoding": "identity"}, False, False),
        ({"Accept-Encoding": "gzip"}, False, True),
        ({"Accept": OM, "Accept-Encoding": "identity"}, True, False),
        ({"Accept": OM, "Accept-Encoding": "gzip"}, True, True),
    ]

    port = exporter.exporter.port

    async def one(i: int) -> tuple[bool, bool, int, dict[str, str], bytes]:
        """A raw HTTP/1.1 scrape (an httpx pool of 200 connections costs more than the server under test)."""
        headers, om, gz = variants[i % len(variants)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await reader.readexactly(int(fields["content-length"]))
        writer.close()
        return om, gz, int(lines[0].split()[1]), fields, body

    async def scrape_all() -> list[tuple[bool, bool, int, dict[str, str], bytes]]:
        results: list[tuple[bool, bool, int, dict[str, str], bytes]] = []
        waves = 0
        # Waves of 200 at once, until the poller has swapped the snapshot several times (at least 3 waves).
        while waves < 3 or (polls < 5 and waves < 100):
            results += await asyncio.gather(*(one(i) for i in range(200)))
            waves += 1
            await asyncio.sleep(0.02)
        return results

    try:
        results = asyncio.run(scrape_all())
    finally:
        stop.set()
        poller.join(timeout=30)
    assert polls >= 3, "snapshots must really swap during the scrapes"
    distinct: dict[bytes, bool] = {}
    for om, gz, status, fields, raw in results:
        assert status == 200
        assert (fields.get("content-encoding") == "gzip") == gz
        whole = gzip.decompress(raw) if gz else raw
        body = batch_part(whole, om)
        assert len(body) > 1000
        with exp._record_lock:
            published = exp.published_om if om else exp.published_text
            # Byte-for-byte one published exposition: nothing torn, nothing mixed from two snapshots.
            assert body in published, "a response that is not exactly one published snapshot"
        distinct[whole] = om
    for body, om in distinct.items():  # each distinct snapshot parses (parsing 600 copies would be slow)
        families = list(parse_openmetrics(body.decode()) if om else parse_text(body.decode()))  # type: ignore[no-untyped-call]
        assert any(f.name == "bifrost_batch_exporter_up" for f in families)
    assert len(distinct) >= 4, "the scrapes should have seen more than one snapshot"


RUNTIME_LINES = tuple(
    prefix + family
    for prefix in (b"", b"# HELP ", b"# TYPE ", b"# UNIT ")
    for family in (b"process_", b"python_")
)


def batch_part(body: bytes, openmetrics: bool) -> bytes:
    """The published batch exposition inside a scrape body: the runtime series (process_*, python_*) are appended
    at scrape time as one contiguous block at the end (before `# EOF` in OpenMetrics), and must be nowhere else."""
    lines = body.splitlines(keepends=True)
    eof = [lines.pop()] if openmetrics and lines and lines[-1] == b"# EOF\n" else []
    first = next((i for i, line in enumerate(lines) if line.startswith(RUNTIME_LINES)), len(lines))
    assert all(line.startswith(RUNTIME_LINES) for line in lines[first:]), (
        "runtime series not one block at the end"
    )
    return b"".join(lines[:first] + eof)


def _raw_connect(port: int, *, small_window: bool = False) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if small_window:  # a client that reads nothing should not hide megabytes in its own receive buffer
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


def _read_response(sock: socket.socket, limit: int = 1 << 22) -> bytes:
    """One response: up to the close, or to the end of the body its Content-Length announces."""
    data = b""
    sock.settimeout(5)
    while len(data) < limit:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length" and len(body) >= int(value):
                    return data
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk
    return data


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def test_clients_that_never_read_are_dropped_and_others_unaffected(exporter: ExporterThread) -> None:
    server = exporter.exporter.server
    # Long enough that the hogs are surely still connected while the scrapes are measured on a loaded machine (they
    # are dropped write_timeout after their writes stall; tests/test_http_slow_readers.py proves that deadline).
    server.write_timeout = 30.0
    port = exporter.exporter.port
    body_size = len(exporter.get().content)

    def twenty_scrapes() -> float:
        started = time.monotonic()
        for _ in range(20):
            assert exporter.get().status_code == 200
        return time.monotonic() - started

    baseline = twenty_scrapes()
    # Each client pipelines far more requests than it will ever read: without backpressure the server would
    # buffer every response (2,000 x the exposition) for it.
    hogs = []
    for _ in range(10):
        sock = _raw_connect(port, small_window=True)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 2000)
        hogs.append(sock)
    wait_until(lambda: len(server.connections) >= 10, timeout=10)
    buffered = exporter.call(_write_buffers(exporter.exporter))
    assert max(buffered) < 2 * body_size + 512 * 1024, f"server buffered {max(buffered)} bytes for one client"
    assert len(server.connections) >= 10, "the hogs should be connected while we scrape"
    during = twenty_scrapes()
    assert len(server.connections) >= 10, "the hogs should still be connected while we scrape"
    # Backpressure itself is the buffer bound above; this is the scrapes' view of it, with room for a loaded host's
    # stalls (without backpressure the server writes 2,000 expositions per hog and the scrapes take minutes).
    assert during < 3 * baseline + 5.0, (
        f"scrapes slowed down by clients that do not read: {during:.2f}s vs {baseline:.2f}s"
    )
    for sock in hogs:
        sock.close()
    wait_until(lambda: len(server.connections) <= 1, timeout=10)


async def _write_buffers(exp: Exporter) -> list[int]:
    return [
        c._transport.get_write_buffer_size() if c._transport is not None else 0
        for c in exp.server.connections
    ] or [0]


def test_slowloris_is_cut_off_at_the_header_timeout(exporter: ExporterThread) -> None:
    """A head trickling in a byte at a time must still be complete within header_timeout of its first byte."""
    exporter.exporter.server.header_timeout = 1.0
    sock = _raw_connect(exporter.exporter.port)
    sock.settimeout(0.1)
    started = time.monotonic()
    closed_after = None
    head = b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 100
    for i in range(len(head)):
        try:
            sock.sendall(head[i : i + 1])
            if sock.recv(1024) == b"":
                closed_after = time.monotonic() - started
                break
        except TimeoutError:
            pass  # still open, nothing to read: the expected state until the deadline
        except OSError:
            closed_after = time.monotonic() - started
            break
    sock.close()
    assert closed_after is not None and closed_after < 2.0, closed_after
    assert exporter.get().status_code == 200


H = b"Host: x\r\n"
ABSURD: list[tuple[str, bytes, set[int]]] = [
    ("path of 15 KB", b"GET /" + b"a" * 15_000 + b" HTTP/1.1\r\n" + H + b"\r\n", {404}),
    ("path of 1 MB", b"GET /" + b"a" * 1_000_000 + b" HTTP/1.1\r\n" + H + b"\r\n", {414}),
    ("header value of 1 MB", b"GET /metrics HTTP/1.1\r\nX-Big: " + b"v" * 1_000_000 + b"\r\n\r\n", {431}),
    ("10,000 headers", b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 10_000 + b"\r\n", {431}),
    ("NUL bytes", b"GET /metrics\x00 HTTP/1.1\r\nA\x00: b\r\n\r\n", {400}),
    ("latin-1 and UTF-8 path", "GET /mé✓trics HTTP/1.1\r\nHost: x\r\n\r\n".encode(), {400}),
    ("no spaces", b"GET/metricsHTTP/1.1\r\n\r\n", {400}),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", {505}),
    ("header without colon", b"GET /metrics HTTP/1.1\r\n" + H + b"nonsense\r\n\r\n", {400}),
    ("obsolete line folding", b"GET /metrics HTTP/1.1\r\n" + H + b"X: a\r\n  b\r\n\r\n", {400}),
    ("request body", b"GET /metrics HTTP/1.1\r\n" + H + b"Content-Length: 100000000\r\n\r\n", {400}),
    ("chunked body", b"GET /metrics HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n", {400}),
    ("CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n", {405}),
    ("HTTP/1.0 without headers", b"GET /healthz HTTP/1.0\r\n\r\n", {200}),
    ("HTTP/1.1 without Host", b"GET /healthz HTTP/1.1\r\n\r\n", {400}),
    ("absolute URI", b"GET http://evil/metrics HTTP/1.1\r\n" + H + b"\r\n", {200}),  # RFC 9112 §3.2.2
    ("query of 10 KB", b"GET /metrics?" + b"q=" * 5_000 + b" HTTP/1.1\r\n" + H + b"\r\n", {200}),
    (
        "Accept of 10 KB",
        b"GET /metrics HTTP/1.1\r\n" + H + b"Accept: " + b"a/b;q=0.1," * 1_000 + b"\r\n\r\n",
        {200},
    ),
    (
        "Authorization of 12 KB",
        b"GET /metrics HTTP/1.1\r\n" + H + b"Authorization: Basic " + b"QQ==" * 3_000 + b"\r\n\r\n",
        {200},
    ),
]


@pytest.mark.parametrize(("name", "request_bytes", "statuses"), ABSURD, ids=[a[0] for a in ABSURD])
def test_absurd_requests(
    exporter: ExporterThread, name: str, request_bytes: bytes, statuses: set[int]
) -> None:
    sock = _raw_connect(exporter.exporter.port)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(request_bytes)  # the server may close before reading a megabyte it already refused
    response = _read_response(sock) if request_bytes else b""
    sock.close()
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    assert _status(response) in statuses, response[:200]
    assert b"Traceback" not in response
    # The server is fine afterwards.
    assert exporter.get().status_code == 200


def test_connection_flood_is_capped_and_recovers(exporter: ExporterThread) -> None:
    server = exporter.exporter.server
    server.max_connections = 50
    # Long enough that the 50 accepted are surely seen together before the first is dropped, on a loaded host too.
    server.header_timeout = 5.0
    port = exporter.exporter.port
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(80)]
    wait_until(lambda: len(server.connections) == 50, timeout=5)
    # Idle connections that never send a request are dropped at the header timeout, and scrapes work again.
    wait_until(lambda: len(server.connections) == 0, timeout=15)
    assert exporter.get().status_code == 200
    for sock in idle:
        sock.close()

"""Our HTTP surface: content negotiation, lint by promtool, health/readiness, staleness, concurrency."""

from __future__ import annotations

import gzip
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from exporter import __version__
from exporter.server import negotiate
from exporter.simulator import ProviderSpec, Simulator
from tests.conftest import require_tool
from tests.harness import ExporterThread, make_settings, parse_samples, value, wait_until

NOWHERE = "http://127.0.0.1:9"  # a gateway never polled: these tests drive no polls

OM_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


@pytest.mark.parametrize(
    ("accept", "encoding", "expected"),
    [
        (None, None, (False, False)),
        ("text/plain", "gzip", (False, True)),
        (OM_ACCEPT, "gzip, deflate", (True, True)),
        ("application/openmetrics-text; version=1.0.0; q=0.2, text/plain; q=0.9", None, (False, False)),
        ("application/openmetrics-text;q=0", "gzip;q=0", (False, False)),
        ("*/*", "identity", (False, False)),
        ("application/openmetrics-text", "*", (True, True)),
    ],
)
def test_negotiate(accept: str | None, encoding: str | None, expected: tuple[bool, bool]) -> None:
    assert negotiate(accept, encoding) == expected


@pytest.fixture
def running() -> Iterator[tuple[Simulator, ExporterThread]]:
    with Simulator(
        providers=[
            ProviderSpec("openai", keys=2),
            ProviderSpec("azure", style="legacy"),
            ProviderSpec("cohere", supported=False),
        ],
        seed=7,
    ) as sim:
        settings = make_settings(sim.url, ["openai", "azure", "cohere"], per_batch_metrics=True)
        with ExporterThread(settings) as exp:
            yield sim, exp


def test_readiness_follows_first_polls(running: tuple[Simulator, ExporterThread]) -> None:
    _, exp = running
    assert exp.get("/healthz").status_code == 200
    assert exp.get("/readyz").status_code == 503
    exp.poll("openai")
    assert exp.get("/readyz").status_code == 503
    exp.poll()
    assert exp.get("/readyz").status_code == 200


def test_content_negotiation_and_encodings(running: tuple[Simulator, ExporterThread]) -> None:
    _, exp = running
    exp.poll()
    plain = exp.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert plain.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "content-encoding" not in plain.headers
    compressed = httpx.get(exp.url + "/metrics", headers={"Accept-Encoding": "gzip"}, timeout=5)
    assert compressed.headers["content-encoding"] == "gzip"
    assert compressed.text == plain.text  # httpx decodes; the same exposition
    om = exp.get("/metrics", headers={"Accept": OM_ACCEPT, "Accept-Encoding": "identity"})
    assert om.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert om.text.endswith("# EOF\n")
    families = {f.name for f in parse_openmetrics(om.text)}  # type: ignore[no-untyped-call]
    assert {"bifrost_batches", "bifrost_batch_finished", "bifrost_batch_exporter_up"} <= families
    # raw gzip bytes really are gzip of the OpenMetrics body
    with socket.create_connection(("127.0.0.1", exp.exporter.port)) as conn:
        conn.sendall(
            f"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: {OM_ACCEPT}\r\nAccept-Encoding: gzip\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        raw = b""
        while chunk := conn.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Content-Encoding: gzip" in head

    # The process_* series are re-collected once a second, so two scrapes may differ there and only there.
    def batch_data(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.startswith("process_")]

    assert batch_data(gzip.decompress(body).decode()) == batch_data(om.text)


def test_promtool_check_metrics_prints_nothing(running: tuple[Simulator, ExporterThread]) -> None:
    promtool = require_tool("promtool")
    _, exp = running
    exp.poll()
    # promtool lints the Prometheus text format (OpenMetrics is checked by the strict parser above)
    body = exp.get("/metrics").content
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, check=False)
    assert result.returncode == 0
    assert result.stdout == b"" and result.stderr == b"", (result.stdout + result.stderr).decode()


def test_routes_methods_and_landing(running: tuple[Simulator, ExporterThread]) -> None:
    _, exp = running
    exp.poll()
    assert exp.get("/nope").status_code == 404
    assert exp.get("/metrics/extra").status_code == 404
    assert httpx.post(exp.url + "/metrics", timeout=5).status_code in (400, 405)
    assert httpx.request("DELETE", exp.url + "/metrics", timeout=5).status_code == 405
    head = httpx.head(exp.url + "/metrics", timeout=5)
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 1000
    assert exp.get("/metrics?foo=bar").status_code == 200
    landing = exp.get("/")
    assert landing.headers["content-type"].startswith("text/html")
    for needle in (__version__, "href='/metrics'", "openai", "azure", "cohere", "not supported"):
        assert needle in landing.text


def test_keep_alive_reuses_one_connection(running: tuple[Simulator, ExporterThread]) -> None:
    _, exp = running
    exp.poll()
    with httpx.Client(timeout=5) as client:
        for _ in range(20):
            assert client.get(exp.url + "/metrics").status_code == 200
    assert len(exp.exporter.server.connections) <= 1


def test_concurrent_scrapes_while_polling(running: tuple[Simulator, ExporterThread]) -> None:
    _, exp = running
    exp.poll()
    errors: list[str] = []

    def scrape() -> None:
        with httpx.Client(timeout=10) as client:
            for _ in range(15):
                r = client.get(exp.url + "/metrics")
                if (
                    r.status_code != 200
                    or value(parse_samples(r.text), "bifrost_batch_exporter_up", provider="openai") is None
                ):
                    errors.append(f"bad scrape {r.status_code}")

    threads = [threading.Thread(target=scrape) for _ in range(16)]
    for t in threads:
        t.start()
    for _ in range(5):
        exp.poll()
    for t in threads:
        t.join()
    assert errors == []


def test_staleness_drops_the_lists_gauges_but_keeps_counters_and_health() -> None:
    """A stale provider's counters stay as they were: vanishing and coming back with their lifetime totals, they
    would read as that many new events to the alert rules' new-series branch (every failure paged again)."""
    clock = [time.time()]
    with Simulator(providers=[ProviderSpec("openai")], lifecycle=False) as sim:
        sim.add_batch("openai", batch_id="a", status="in_progress")
        settings = make_settings(sim.url, ["openai"], poll_interval_seconds=10, stale_after_seconds=50)
        with ExporterThread(settings, clock=lambda: clock[0]) as exp:
            exp.poll()
            sim.set_fault("server_error")
            clock[0] += 40
            exp.poll()
            s = exp.samples()
            assert value(s, "bifrost_batches", provider="openai", status="in_progress") == 1  # 40 s < 50 s
            assert value(s, "bifrost_batch_exporter_up", provider="openai") == 0
            clock[0] += 11
            exp.poll()
            s = exp.samples()
            assert value(s, "bifrost_batches", provider="openai", status="in_progress") is None
            assert value(s, "bifrost_batch_next_expiry_timestamp_seconds", provider="openai") is None
            assert value(s, "bifrost_batch_at_risk", provider="openai") is None
            assert value(s, "bifrost_batch_finished_total", provider="openai", status="failed") == 0
            assert (
                value(
                    s,
                    "bifrost_batch_failures_total",
                    provider="openai",
                    status="failed",
                    code="none",
                    **{"class": "unknown"},
                )
                == 0
            )
            assert (
                value(s, "bifrost_batch_duration_seconds_count", provider="openai", status="completed") == 0
            )
            assert value(s, "bifrost_batch_exporter_up", provider="openai") == 0
            assert value(s, "bifrost_batch_exporter_polls_total", provider="openai") == 3
            sim.set_fault(None)
            exp.poll()
            assert value(exp.samples(), "bifrost_batches", provider="openai", status="in_progress") == 1


def test_staleness_applies_without_a_poll_finishing() -> None:
    """The render loop wakes at the staleness deadline on its own, even while polls hang."""
    with Simulator(providers=[ProviderSpec("openai")], lifecycle=False) as sim:
        sim.add_batch("openai", batch_id="a", status="in_progress")
        settings = make_settings(
            sim.url, ["openai"], poll_interval_seconds=1, stale_after_seconds=2, request_timeout_seconds=30
        )
        with ExporterThread(settings, auto_poll=True) as exp:
            wait_until(
                lambda: value(exp.samples(), "bifrost_batches", provider="openai", status="in_progress") == 1
            )
            sim.set_fault("slow", delay=20)
            wait_until(
                lambda: (
                    value(exp.samples(), "bifrost_batches", provider="openai", status="in_progress") is None
                ),
                timeout=10,
            )
            sim.set_fault(None)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def _os_dual_stack() -> bool:
    """What a socket bound to `::` does here without being told: take IPv4 too (Linux's default) or not."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        return sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.parametrize(
    ("address", "families"),
    [
        (":0", {"IPv4", "IPv6"}),  # as the exporter-toolkit's :9100: every address of both families
        ("0.0.0.0:0", {"IPv4"}),
        ("[::]:0", None),  # the OS's choice (IPV6_V6ONLY untouched)
    ],
)
def test_an_empty_listen_host_serves_ipv4_and_ipv6(address: str, families: set[str] | None) -> None:
    """An IPv6 (or IPv6-primary) cluster probes and scrapes the pod's IPv6 address; `:PORT` must answer there and
    on IPv4 (what the chart renders), while 0.0.0.0 keeps meaning IPv4 only."""
    if not _ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    if families is None:
        families = {"IPv4", "IPv6"} if _os_dual_stack() else {"IPv6"}
    with ExporterThread(make_settings(NOWHERE, ["openai"], listen_address=address)) as exp:
        port = exp.exporter.port
        answered = {
            family
            for family, url in (("IPv4", f"http://127.0.0.1:{port}"), ("IPv6", f"http://[::1]:{port}"))
            if _answers(url)
        }
        assert answered == families, exp.exporter.server.addresses
        if address.startswith(":"):
            assert sorted(exp.exporter.server.addresses) == sorted([f"0.0.0.0:{port}", f"[::]:{port}"])

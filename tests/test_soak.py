"""Long-running behaviour: a 1,000-cycle soak (bench/soak.py runs the 10,000-cycle one) and clean shutdown."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from tests.conftest import free_port
from tests.harness import wait_until

ROOT = Path(__file__).resolve().parent.parent


def load_bench_soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_soak", ROOT / "bench" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_soak_1000_cycles_memory_and_ledger_stay_bounded() -> None:
    """1,000 poll cycles of 2 simulated minutes with a 6 h ledger retention (so the retention window fills and
    turns over three times within the run); the 10,000-cycle, 48 h version is `python bench/soak.py`."""
    soak = load_bench_soak()
    result = soak.soak(1000, step=120.0, retention=6 * 3600.0, max_batches=60, fault_every=50)
    mib = 1024 * 1024
    print(
        f"soak 1000 cycles: RSS {result.rss_at_baseline / mib:.1f} MiB (cycle {result.baseline_cycle}) -> "
        f"{result.rss_at_end / mib:.1f} MiB ({result.rss_growth:+.1%}); ledger ids {result.tracked_ids_at_retention}"
        f" at retention, max {result.tracked_ids_max_after} after; {result.seconds:.1f}s"
    )
    assert result.polls == 2000
    assert result.finished_total > 1000, "batches must really churn through their lifecycle"
    assert set(result.errors) <= {"server_error", "invalid_response", "cursor_loop"}
    assert sum(result.errors.values()) >= 15, "the injected faults must have been seen"
    assert result.rss_growth < 0.10, result.rss_samples
    assert result.tracked_ids_max_after <= 1.10 * result.tracked_ids_at_retention
    assert result.ok


class HangingGateway:
    """Accepts connections and reads requests, then never answers: a poll stuck on a slow gateway."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests = 0
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            conn.settimeout(5)
            try:
                if conn.recv(65536):
                    self.requests += 1
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()
        for conn in self._conns:
            conn.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_a_slow_poll_exits_0_within_5s(tmp_path: Path, sig: signal.Signals) -> None:
    gateway = HangingGateway()
    port = free_port()
    env = {
        **os.environ,
        "BIFROST_EXPORTER_BIFROST_URL": f"http://127.0.0.1:{gateway.port}",
        "BIFROST_EXPORTER_PROVIDERS": "openai,anthropic",
        "BIFROST_EXPORTER_LISTEN_ADDRESS": f"127.0.0.1:{port}",
        "BIFROST_EXPORTER_REQUEST_TIMEOUT_SECONDS": "120",
        "BIFROST_EXPORTER_LOG_FORMAT": "json",
        "PYTHONPATH": str(ROOT),
    }
    log = tmp_path / "exporter.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:

        def serving() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(serving, timeout=20)
        wait_until(lambda: gateway.requests >= 2, timeout=10)  # both polls are now stuck in flight
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 503
        started = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(timeout=10)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        gateway.close()
    text = log.read_text()
    assert code == 0, text[-2000:]
    assert elapsed < 5.0, elapsed
    assert "exporter_stopped" in text
    assert "Traceback" not in text

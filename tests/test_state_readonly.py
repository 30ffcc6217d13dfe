"""A state volume that turned read-only (ext4's errors=remount-ro, a read-only remount) when the exporter restarts.

The state is still restored, so the counters go on from what they were instead of starting again from 0 (which a
later restart on the repaired volume would undo, counting the old totals a second time in every increase()); each
write fails and says so. Needs root to mount a tmpfs; skipped where that is not allowed.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from exporter.simulator import ProviderSpec, Simulator
from tests.harness import ExporterThread, make_settings, value

P = "openai"


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "vol"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _remount(mnt: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mnt)], check=True)


def _failed(exp: ExporterThread) -> float:
    return value(exp.samples(), "bifrost_batch_finished_total", provider=P, status="failed") or 0.0


def _counted(exp: ExporterThread) -> int:
    """What the ledger counted; after a restart the exposition shows the restored total a minute first
    (exporter/presence.py)."""
    return exp.exporter.poller.states[P].ledger.finished_total("failed")


def test_a_restart_on_a_read_only_state_volume_restores_and_reports_each_write(volume: Path) -> None:
    now = int(time.time())
    with Simulator(providers=[ProviderSpec(P)], lifecycle=False) as sim:
        for i in range(7):
            sim.add_batch(
                P, batch_id=f"b{i}", status="in_progress", created_at=now - 100, expires_at=now + 86400
            )
        settings = make_settings(sim.url, [P], state_dir=volume / "state")
        with ExporterThread(settings) as exp:
            exp.poll()
            for i in range(5):
                sim.set_status(P, f"b{i}", "failed", now - 50 + i, error_code="server_error")
            exp.poll()
            assert _failed(exp) == 5
        _remount(volume, "ro")
        with structlog.testing.capture_logs() as logs, ExporterThread(settings) as exp:
            assert _failed(exp) == 5  # restored, from the first scrape
            for i in (5, 6):
                sim.set_status(P, f"b{i}", "failed", int(time.time()) + 1, error_code="server_error")
            exp.poll()
            # A scrape saw the restored 5 before this poll: its count shows at once, an increase from that.
            assert _counted(exp) == 7 and _failed(exp) == 7
        events = [e["event"] for e in logs]
        assert "state_dir_read_only" in events and "state_restored" in events
        assert "state_write_failed" in events and "state_dir_unusable" not in events
        _remount(volume, "rw")
        with ExporterThread(settings) as exp:  # the lock was a read-only one: the directory is free again
            exp.poll()
            assert _counted(exp) == 7

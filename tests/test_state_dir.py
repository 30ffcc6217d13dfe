"""The state directory on an operator's bad day: a full or read-only volume, descriptors run out mid-write, two
exporters on one volume, a rollback to an older version, a planted symlink, bounds across rolling deploys.

What must hold in every case (docs/state.md): no stray files afterwards, the last good state loads, the exporter
serves throughout, nothing is overwritten that a newer or concurrent exporter owns, and every bound the exporter
keeps survives a restart.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from exporter import statefile
from exporter.client import REASONS
from exporter.ledger import MAX_GROUP_VALUES, Ledger
from exporter.models import Batch
from exporter.settings import DEFAULT_DURATION_BUCKETS, DEFAULT_LATENCY_BUCKETS
from exporter.simulator import ProviderSpec, Simulator
from tests.harness import ExporterThread, make_settings, series, value

P = "openai"
T0 = 1_800_000_000.0
# Every system call of one state write, in order (statefile.FileOps).
STEPS = ("makedirs", "mkstemp", "write", "fsync", "close", "replace", "open_dir", "fsync#2", "close#2")
ERRNOS = (errno.ENOSPC, errno.EACCES, errno.EMFILE)


class FailingOps(statefile.FileOps):
    """Real system calls, except that the `n`-th call of one (`fsync#2`: the second fsync) raises `err`; a failing
    write first writes half of what it was given, as a filling disk does."""

    def __init__(self, step: str, err: int) -> None:
        name, _, nth = step.partition("#")
        self.name, self.nth, self.err = name, int(nth or 1), err
        self.calls: dict[str, int] = {}

    def _maybe_fail(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        if name == self.name and self.calls[name] == self.nth:
            raise OSError(self.err, os.strerror(self.err))

    def makedirs(self, path: Path) -> None:
        self._maybe_fail("makedirs")
        super().makedirs(path)

    def mkstemp(self, directory: Path, prefix: str) -> tuple[int, str]:
        self._maybe_fail("mkstemp")
        return super().mkstemp(directory, prefix)

    def write(self, fd: int, data: memoryview) -> int:
        if self.name == "write":
            super().write(fd, data[: len(data) // 2])
        self._maybe_fail("write")
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self._maybe_fail("fsync")
        super().fsync(fd)

    def close(self, fd: int) -> None:
        super().close(fd)  # the descriptor is released either way, as close(2) does
        self._maybe_fail("close")

    def replace(self, src: Path, dst: Path) -> None:
        self._maybe_fail("replace")
        super().replace(src, dst)

    def open_dir(self, path: Path) -> int:
        self._maybe_fail("open_dir")
        return super().open_dir(path)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(providers=[ProviderSpec(P)], lifecycle=False) as s:
        yield s


def _exporter(sim: Simulator, state_dir: Path, **kw: Any) -> ExporterThread:
    return ExporterThread(make_settings(sim.url, [P], state_dir=state_dir, **kw))


def _files(state_dir: Path) -> list[str]:
    return sorted(p.name for p in state_dir.iterdir())


def _finished(exp: ExporterThread) -> float | None:
    return value(exp.samples(), "bifrost_batch_finished_total", provider=P, status="failed")


@pytest.mark.parametrize("err", ERRNOS, ids=[errno.errorcode[e] for e in ERRNOS])
@pytest.mark.parametrize("step", STEPS)
def test_a_write_failing_at_any_step_leaves_no_stray_file_and_the_last_good_state(
    sim: Simulator, tmp_path: Path, step: str, err: int
) -> None:
    import time

    now = int(time.time())
    sim.add_batch(P, batch_id="a", status="in_progress", created_at=now - 100)
    with _exporter(sim, tmp_path) as exp:
        exp.poll()
        good = (tmp_path / f"ledger-{P}.json").read_bytes()
        sim.set_status(P, "a", "failed")
        poller = exp.exporter.poller
        poller.state_file_ops = FailingOps(step, err)
        with structlog.testing.capture_logs() as logs:
            exp.poll()
            # Served throughout, with the poll's values: a failing disk does not stop the exporter.
            assert exp.get("/metrics").status_code == 200
            assert value(exp.samples(), "bifrost_batch_exporter_up", provider=P) == 1
            assert _finished(exp) == 1
        assert [e["event"] for e in logs if e["event"].startswith("state_write")] == ["state_write_failed"]
        assert _files(tmp_path) == [".lock", f"ledger-{P}.json"]
        on_disk = statefile.read(tmp_path, P)
        assert on_disk is not None
        if step in ("open_dir", "fsync#2", "close#2"):
            assert on_disk["finished"], "the rename happened: the new state is complete in its place"
        else:
            assert (tmp_path / f"ledger-{P}.json").read_bytes() == good
        poller.state_file_ops = statefile.REAL_FILE_OPS
        with structlog.testing.capture_logs() as logs:
            exp.poll()
        assert [e["event"] for e in logs if e["event"].startswith("state_write")] == ["state_write_recovered"]
    # A restart resumes from what is on disk: the failure is counted once, never twice and never lost.
    with _exporter(sim, tmp_path) as exp:
        exp.poll()
        assert _finished(exp) == 1


def test_temporaries_left_by_a_killed_writer_are_removed_at_start(sim: Simulator, tmp_path: Path) -> None:
    stray = tmp_path / f".ledger-{P}.json.k3j2x9.tmp"
    stray.write_bytes(b'{"half": ')
    unrelated = tmp_path / "notes.txt"
    unrelated.write_text("keep me")
    with _exporter(sim, tmp_path) as exp:
        exp.poll()
    assert not stray.exists() and unrelated.read_text() == "keep me"


def test_a_planted_symlink_is_never_followed(sim: Simulator, tmp_path: Path) -> None:
    """A symlink at the name a pid-based temporary used to take (pid 1 in a container), and one at a leftover
    temporary's name: neither target is written or removed; the links themselves are not trusted."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (state_dir / f".ledger-{P}.json.1.tmp").symlink_to(victim)
    (state_dir / f".ledger-{P}.json.abc.tmp").symlink_to(victim)
    with _exporter(sim, state_dir) as exp:
        for _ in range(3):
            exp.poll()
    assert victim.read_text() == "precious"
    assert _files(state_dir) == [".lock", f"ledger-{P}.json"]
    assert not (state_dir / f"ledger-{P}.json").is_symlink()


def test_a_state_file_that_is_a_symlink_is_not_read_and_its_target_not_written(
    sim: Simulator, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    victim = tmp_path / "victim.json"
    victim.write_text("{}")
    (state_dir / f"ledger-{P}.json").symlink_to(victim)
    with structlog.testing.capture_logs() as logs, _exporter(sim, state_dir) as exp:
        exp.poll()
    assert [e["event"] for e in logs if e.get("log_level") == "warning"] == ["state_unusable"]
    assert victim.read_text() == "{}"


def test_a_lock_file_that_is_a_symlink_is_refused(sim: Simulator, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / ".lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(statefile.StateDirError, match="symbolic link"):
        _exporter(sim, state_dir).__enter__()
    assert not (tmp_path / "elsewhere").exists()


def _once(url: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    """`bifrost-batch-exporter --once` as a real process: what a second replica on the same volume runs."""
    return subprocess.run(
        [
            sys.executable, "-m", "exporter", "--once", "--bifrost-url", url, "--providers", P,
            "--state-dir", str(state_dir), "--max-retries", "0",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_a_second_exporter_on_the_same_state_dir_refuses_to_start(sim: Simulator, tmp_path: Path) -> None:
    with _exporter(sim, tmp_path) as exp:
        exp.poll()
        before = (tmp_path / f"ledger-{P}.json").read_bytes()
        second = _once(sim.url, tmp_path)
        assert second.returncode == 2, second.stderr
        assert str(tmp_path) in second.stderr and "in use by another exporter" in second.stderr
        assert f"pid {os.getpid()}" in second.stderr
        assert (tmp_path / f"ledger-{P}.json").read_bytes() == before
    # Released with the first one (and by the kernel if it had been killed): the next one starts.
    third = _once(sim.url, tmp_path)
    assert third.returncode == 0, third.stderr


def test_a_state_file_of_a_newer_version_is_refused_not_overwritten(sim: Simulator, tmp_path: Path) -> None:
    path = tmp_path / f"ledger-{P}.json"
    newer = {"format": statefile.FORMAT, "version": statefile.VERSION + 1, "provider": P, "ledger": {"x": 1}}
    path.write_text(json.dumps(newer))
    done = _once(sim.url, tmp_path)
    assert done.returncode == 2
    assert str(tmp_path) in done.stderr and "newer exporter" in done.stderr
    assert "Traceback" not in done.stderr
    assert json.loads(path.read_text()) == newer


def _b(batch_id: str, team: str, status: str = "in_progress") -> Batch:
    return Batch.model_validate(
        {"id": batch_id, "status": status, "created_at": T0, "failed_at": T0 + 5, "metadata": {"team": team}}
    )


def test_every_bound_survives_a_restart() -> None:
    """Rolling deploys must not each admit a new quota of label values: the metadata-value cap, the unknown
    statuses and the failure codes are restored with the counters."""
    state: dict[str, Any] | None = None
    for deploy in range(4):
        led = Ledger(T0, DEFAULT_DURATION_BUCKETS, DEFAULT_LATENCY_BUCKETS, REASONS, metadata_keys=("team",))
        if state is not None:
            assert led.load_state(json.loads(json.dumps(state))) == []
        for i in range(40):
            led.group_of(_b("x", f"team-{deploy}-{i}"))
            led.admit_status(f"weird-{deploy}-{i}")
        batches = [
            Batch.model_validate(
                {
                    "id": f"f{deploy}-{i}",
                    "status": "failed",
                    "failed_at": T0 + 10,
                    "created_at": T0,
                    "errors": {"data": [{"code": f"code_{deploy}_{i}"}]},
                }
            )
            for i in range(30)
        ]
        led.observe(batches, T0 + 20, complete=True)
        state = led.to_state()
    assert state is not None
    assert len(state["group_values"][0]) == MAX_GROUP_VALUES
    assert len(state["unknown_statuses"]) == 20
    assert len(state["codes"]) == 20


def test_metadata_label_values_stay_bounded_across_restarts(sim: Simulator, tmp_path: Path) -> None:
    """End to end: three deploys, each seeing 40 new team values; /metrics never shows more than the cap."""
    import time

    now = int(time.time())
    for deploy in range(3):
        for i in range(40):
            sim.add_batch(
                P, batch_id=f"d{deploy}-{i}", status="in_progress", created_at=now - 100,
                metadata={"team": f"team-{deploy}-{i}"},
            )  # fmt: skip
        with _exporter(sim, tmp_path, metadata_labels=["team"]) as exp:
            exp.poll()
            teams = {lbl["metadata_team"] for lbl, _ in series(exp.samples(), "bifrost_batches", provider=P)}
    assert len(teams - {"", "other"}) == MAX_GROUP_VALUES
    assert "other" in teams

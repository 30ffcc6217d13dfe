"""The state directory on an operator's bad day: a full or read-only volume, descriptors run out mid-write, two
exporters on one volume, a rollback to an older version, a planted symlink, bounds across rolling deploys.

What must hold in every case (docs/state.md): no stray files afterwards, the last good state loads, the exporter
serves throughout, nothing is overwritten that a newer or concurrent exporter owns, and every bound the exporter
keeps survives a restart.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import subprocess
import sys
import time
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
ERRNOS = (errno.ENOSPC, errno.EACCES, errno.EMFILE)
V1_FILE = Path(__file__).parent / "data" / "ledger-openai-v1.json"
STATE_FILES = [f"ledger-{P}.base", f"ledger-{P}.journal", f"ledger-{P}.json"]


class RecordingOps(statefile.FileOps):
    """Real system calls, each named in `calls` as it happens ("write#2": the second write)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self._seen: dict[str, int] = {}

    def _step(self, name: str) -> None:
        n = self._seen[name] = self._seen.get(name, 0) + 1
        self.calls.append(name if n == 1 else f"{name}#{n}")

    def makedirs(self, path: Path) -> None:
        self._step("makedirs")
        super().makedirs(path)

    def mkstemp(self, directory: Path, prefix: str) -> tuple[int, str]:
        self._step("mkstemp")
        return super().mkstemp(directory, prefix)

    def open_append(self, path: Path) -> int:
        self._step("open_append")
        return super().open_append(path)

    def size(self, fd: int) -> int:
        self._step("size")
        return super().size(fd)

    def write(self, fd: int, data: memoryview) -> int:
        self._step("write")
        return super().write(fd, data)

    def truncate(self, fd: int, length: int) -> None:
        self._step("truncate")
        super().truncate(fd, length)

    def fsync(self, fd: int) -> None:
        self._step("fsync")
        super().fsync(fd)

    def close(self, fd: int) -> None:
        self._step("close")
        super().close(fd)

    def replace(self, src: Path, dst: Path) -> None:
        self._step("replace")
        super().replace(src, dst)

    def open_dir(self, path: Path) -> int:
        self._step("open_dir")
        return super().open_dir(path)


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

    def open_append(self, path: Path) -> int:
        self._maybe_fail("open_append")
        return super().open_append(path)

    def size(self, fd: int) -> int:
        self._maybe_fail("size")
        return super().size(fd)

    def write(self, fd: int, data: memoryview) -> int:
        if self.name == "write" and self.calls.get("write", 0) + 1 == self.nth:
            super().write(fd, data[: len(data) // 2])
        self._maybe_fail("write")
        return super().write(fd, data)

    def truncate(self, fd: int, length: int) -> None:
        self._maybe_fail("truncate")
        super().truncate(fd, length)

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


def _on_disk(state_dir: Path) -> str | None:
    """The ledger state a restart would resume from, in one comparable form (None: nothing on disk)."""
    restored = statefile.read(state_dir, P)
    if restored is None:
        return None
    led = Ledger(T0, DEFAULT_DURATION_BUCKETS, DEFAULT_LATENCY_BUCKETS, REASONS)
    led.load_state(restored.state, restored.settled)
    return _canonical(led.to_state())


def _canonical(state: dict[str, Any]) -> str:
    return json.dumps({**state, "settled": sorted(state["settled"])}, sort_keys=True)


def _in_memory(exp: ExporterThread) -> str:
    return _canonical(exp.exporter.poller._ledgers[P].to_state())


# The kinds of write a state directory sees: the first one at start (a compaction writing the version marker),
# a poll's journal record, a compaction (the journal grew past its base), and the first write after reading a
# version-1 file (a compaction replacing that file with the marker).
KINDS = ("first", "append", "compaction", "migration")


class _Run:
    """One exporter through one failing write of `kind`, from a fresh directory."""

    def __init__(self, sim: Simulator, state_dir: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sim, self.state_dir, self.kind, self.monkeypatch = sim, state_dir, kind, monkeypatch
        self.batch = f"a-{state_dir.name}"
        sim.add_batch(P, batch_id=self.batch, status="in_progress", created_at=int(time.time()) - 100)
        if kind == "migration":
            statefile.write(state_dir, P, V1_FILE.read_bytes())

    def failing_write(self, ops: statefile.FileOps) -> tuple[ExporterThread, str | None, list[Any]]:
        """Start, get to the write of `kind` and run it with `ops`: (the exporter, the state on disk before that
        write, what the write logged)."""
        with self.monkeypatch.context() as patch, structlog.testing.capture_logs() as logs:
            if self.kind == "first":
                patch.setattr(statefile, "REAL_FILE_OPS", ops)
            exp = _exporter(self.sim, self.state_dir).__enter__()
        poller = exp.exporter.poller
        poller.durable.file_ops = statefile.REAL_FILE_OPS
        if self.kind == "first":
            return exp, None, logs
        if self.kind != "migration":
            exp.poll()
        before = _on_disk(self.state_dir)
        self.sim.set_status(P, self.batch, "failed")
        if self.kind == "compaction":
            poller.durable.journals[P].compact_next()
        poller.durable.file_ops = ops
        with structlog.testing.capture_logs() as logs:
            exp.poll()
        poller.durable.file_ops = statefile.REAL_FILE_OPS
        return exp, before, logs


def _steps(sim: Simulator, state_dir: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every system call of one successful write of `kind`, in order."""
    recorder = RecordingOps()
    exp, _, _ = _Run(sim, state_dir, kind, monkeypatch).failing_write(recorder)
    exp.__exit__(None, None, None)
    assert recorder.calls, kind
    return recorder.calls


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("err", ERRNOS, ids=[errno.errorcode[e] for e in ERRNOS])
def test_a_write_failing_at_any_step_leaves_no_stray_file_and_the_last_good_state(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, err: int
) -> None:
    """Each system call of each kind of write fails in turn (ENOSPC, EACCES, EMFILE): the exporter serves the
    poll's values throughout and logs it once, no temporary is left behind, what is on disk is the last good state
    or the new one whole (never a mix), the next write recovers, and a restart counts the transition once."""
    steps = _steps(sim, tmp_path / "record", kind, monkeypatch)
    for n, step in enumerate(steps):
        state_dir = tmp_path / f"step{n}"
        state_dir.mkdir()
        run = _Run(sim, state_dir, kind, monkeypatch)
        exp, before, logs = run.failing_write(FailingOps(step, err))
        try:
            assert [e["event"] for e in logs if e["event"].startswith("state_write")] == [
                "state_write_failed"
            ], step
            assert exp.get("/metrics").status_code == 200
            if kind != "first":  # (before its first poll, an exporter serves up 0)
                assert value(exp.samples(), "bifrost_batch_exporter_up", provider=P) == 1
            assert set(_files(state_dir)) <= {".lock", *STATE_FILES}, (step, _files(state_dir))
            on_disk = _on_disk(state_dir)
            assert on_disk in (before, _in_memory(exp)), step
            if kind == "first":
                exp.poll()
                run.sim.set_status(P, run.batch, "failed")
            with structlog.testing.capture_logs() as logs:
                exp.poll()
            if kind != "first":
                assert [e["event"] for e in logs if e["event"].startswith("state_write")] == [
                    "state_write_recovered"
                ], step
            assert _files(state_dir) == sorted([".lock", *STATE_FILES]), step
            assert _on_disk(state_dir) == _in_memory(exp), step
            finished = _finished(exp)
        finally:
            exp.__exit__(None, None, None)
        # A restart resumes from what is on disk: the failure is counted once, never twice and never lost.
        with _exporter(sim, state_dir) as again:
            again.poll()
            assert _finished(again) == finished, step


def test_temporaries_left_by_a_killed_writer_are_removed_at_start(sim: Simulator, tmp_path: Path) -> None:
    strays = [tmp_path / f".ledger-{P}.{kind}.k3j2x9.tmp" for kind in ("json", "base", "journal")]
    for stray in strays:
        stray.write_bytes(b'{"half": ')
    unrelated = tmp_path / "notes.txt"
    unrelated.write_text("keep me")
    with _exporter(sim, tmp_path) as exp:
        exp.poll()
    assert not any(stray.exists() for stray in strays) and unrelated.read_text() == "keep me"


def test_a_planted_symlink_is_never_followed(sim: Simulator, tmp_path: Path) -> None:
    """A symlink at the name a pid-based temporary used to take (pid 1 in a container), and one at a leftover
    temporary's name: neither target is written or removed; the links themselves are not trusted."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    for name in ("json.1", "json.abc", "base.1", "journal.xyz"):
        (state_dir / f".ledger-{P}.{name}.tmp").symlink_to(victim)
    with _exporter(sim, state_dir) as exp:
        for _ in range(3):
            exp.poll()
        exp.exporter.poller.durable.journals[P].compact_next()  # a compaction too
        exp.poll()
    assert victim.read_text() == "precious"
    assert _files(state_dir) == sorted([".lock", *STATE_FILES])
    assert not any((state_dir / name).is_symlink() for name in STATE_FILES)


@pytest.mark.parametrize("name", STATE_FILES)
def test_a_state_file_that_is_a_symlink_is_not_read_and_its_target_not_written(
    sim: Simulator, tmp_path: Path, name: str
) -> None:
    """Any of the three files replaced by a symlink: it is not read (one state_unusable line), its target is not
    written (writes replace the link itself, appends refuse to follow it), and the state is whole again after."""
    state_dir = tmp_path / "state"
    with _exporter(sim, state_dir) as exp:
        exp.poll()
    victim = tmp_path / "victim"
    victim.write_bytes((state_dir / name).read_bytes())
    (state_dir / name).unlink()
    (state_dir / name).symlink_to(victim)
    before = victim.read_bytes()
    with structlog.testing.capture_logs() as logs, _exporter(sim, state_dir) as exp:
        exp.poll()
        exp.poll()
    # The marker carries no data: without it the state is read from the base (and the link replaced all the same).
    unusable = "state_marker_unusable" if name == f"ledger-{P}.json" else "state_unusable"
    assert [e["event"] for e in logs if e.get("log_level") == "warning"] == [unusable]
    assert victim.read_bytes() == before
    assert not any((state_dir / n).is_symlink() for n in STATE_FILES)
    assert statefile.read(state_dir, P) is not None


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


def _contents(state_dir: Path) -> dict[str, bytes]:
    return {name: (state_dir / name).read_bytes() for name in STATE_FILES if (state_dir / name).exists()}


def test_a_second_exporter_on_the_same_state_dir_refuses_to_start(sim: Simulator, tmp_path: Path) -> None:
    with _exporter(sim, tmp_path) as exp:
        exp.poll()
        before = _contents(tmp_path)
        second = _once(sim.url, tmp_path)
        assert second.returncode == 2, second.stderr
        assert str(tmp_path) in second.stderr and "in use by another exporter" in second.stderr
        assert f"pid {os.getpid()}" in second.stderr
        assert _contents(tmp_path) == before
    # Released with the first one (and by the kernel if it had been killed): the next one starts.
    third = _once(sim.url, tmp_path)
    assert third.returncode == 0, third.stderr


def _newer(header: dict[str, Any]) -> dict[str, Any]:
    """The header one version past the newest of its kind this exporter reads (a base has a head; a journal not)."""
    newest = statefile.LAYOUT_VERSION if "head" in header else statefile.ROWS_VERSION
    return {**header, "version": newest + 1}


def _reframe_first(path: Path, mutate: Any) -> None:
    raw = path.read_bytes()
    first = 8 + int.from_bytes(raw[:4], "little")
    path.write_bytes(statefile.json_record(mutate(json.loads(raw[9:first]))) + raw[first:])


@pytest.mark.parametrize("where", ["marker", "base", "journal"])
def test_a_state_file_of_a_newer_version_is_refused_not_overwritten(
    sim: Simulator, tmp_path: Path, where: str
) -> None:
    """A rollback: whichever file a newer exporter wrote in a newer format, this one exits 2 naming the directory
    and leaves every file as it was. (The version-2 marker is also what makes a version-1 exporter refuse.) Newer is
    per kind of file: a base or marker of version 3 is newer (this exporter writes them as version 2), a journal of
    version 3 is not (audit 7, state F1: a base of version 3 was dropped and overwritten)."""
    if where == "marker":
        path = tmp_path / f"ledger-{P}.json"
        newer = {
            "format": statefile.FORMAT,
            "version": statefile.LAYOUT_VERSION + 1,
            "provider": P,
            "ledger": {"x": 1},
        }
        path.write_text(json.dumps(newer))
    else:
        with _exporter(sim, tmp_path) as exp:
            exp.poll()
            exp.poll()
        _reframe_first(tmp_path / f"ledger-{P}.{where}", _newer)
    before = _contents(tmp_path)
    done = _once(sim.url, tmp_path)
    assert done.returncode == 2
    assert str(tmp_path) in done.stderr and "newer exporter" in done.stderr
    assert "Traceback" not in done.stderr
    assert _contents(tmp_path) == before


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


def test_the_early_warnings_calibration_survives_a_restart(sim: Simulator, tmp_path: Path) -> None:
    """What the calibration learned from finished batches (exporter/risk.py) rides in the state: in a journal
    record, then through a compaction."""
    learned = {"seen": [30] * 20, "expired": [3] * 10 + [27] * 10}
    with _exporter(sim, tmp_path) as exp:
        exp.poll()
        exp.exporter.poller._trackers[P].calibration.load_state(learned)
        exp.poll()  # a journal record carries it
    with _exporter(sim, tmp_path) as exp:
        assert exp.exporter.poller._trackers[P].calibration.to_state() == learned
        exp.exporter.poller.durable.journals[P].compact_next()
        exp.poll()  # now in a base
    with _exporter(sim, tmp_path) as exp:
        assert exp.exporter.poller._trackers[P].calibration.to_state() == learned
    state = json.loads(json.dumps(statefile.read(tmp_path, P).state))  # type: ignore[union-attr]
    assert state["tracker"]["calibration"] == learned


def test_a_hold_row_no_release_wrote_is_dropped_and_the_rest_of_the_state_kept(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The saved holds (`shown`, `cost_shown`) are small extras: a row this release cannot read (a number no float
    holds, an object for a row) is dropped, never the state (the counts, the calibration) with it."""
    from exporter import holds

    learned = {"seen": [30] * 20, "expired": [3] * 10 + [27] * 10}
    rows = {
        "shown": [["failed", [], [0, 10**400]], ["failed", [], [0, 1.0, 10**400]], {"a": 1}],
        "cost_shown": [["dollars", "m", [], [0.5, 10**400]], {"a": 1}],
    }
    sim.add_batch(P, batch_id="f1", status="in_progress", created_at=int(time.time()) - 100)
    with _exporter(sim, tmp_path) as exp:
        exp.poll()
        sim.set_status(P, "f1", "failed")
        exp.exporter.poller._trackers[P].calibration.load_state(learned)
        monkeypatch.setattr(holds, "saved_holds", lambda run, to_wall, *, cost: rows)
        exp.poll()
        counted = exp.exporter.poller._ledgers[P].view().finished_total("failed")
    monkeypatch.undo()
    assert counted == 1
    with structlog.testing.capture_logs() as logs, _exporter(sim, tmp_path) as exp:
        assert exp.exporter.poller._trackers[P].calibration.to_state() == learned
        assert exp.exporter.poller._ledgers[P].view().finished_total("failed") == 1
    assert not [e for e in logs if e["event"] == "state_unusable"], logs


def test_a_lock_that_cannot_be_taken_leaves_the_directory_alone(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """flock failing for another reason than a holder (ENOLCK: NFS without locks) is "serving on without durable
    state": the directory is then neither read nor written, so a second exporter there cannot write over the first
    one's ledger (before, both restored and appended to the same journal)."""

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    now = int(time.time())
    sim.add_batch(P, batch_id="a", status="in_progress", created_at=now - 100)
    with _exporter(sim, tmp_path) as first:  # a working lock: the state is written
        first.poll()
    written = {name: (tmp_path / name).read_bytes() for name in _files(tmp_path)}
    monkeypatch.setattr(fcntl, "flock", no_locks)
    sim.set_status(P, "a", "failed")
    with structlog.testing.capture_logs() as logs, _exporter(sim, tmp_path) as second:
        second.poll()
        assert _finished(second) == 0  # nothing restored: "a" was never seen active by this ledger
    unusable = [e for e in logs if e["event"] == "state_dir_unusable"]
    assert unusable and unusable[0]["consequence"] == "serving on without durable state"
    assert not any(e["event"] in ("state_restored", "state_not_found") for e in logs)
    assert {name: (tmp_path / name).read_bytes() for name in _files(tmp_path) if name != ".lock"} == {
        name: data for name, data in written.items() if name != ".lock"
    }


def test_restored_counters_are_served_while_the_gateway_is_down_after_a_restart(
    sim: Simulator, tmp_path: Path
) -> None:
    """A restart during a gateway outage (a rollout, an OOM kill): the restored counters are served from the first
    scrape, not held back until the gateway answers. Held back, they came back with their lifetime totals as new
    series, and BifrostBatchFailed (`X unless X offset 15m`) paged every failure ever counted."""
    now = int(time.time())
    sim.add_batch(P, batch_id="b1", status="in_progress", created_at=now - 600, expires_at=now + 86400)
    settings = make_settings(sim.url, [P], state_dir=tmp_path)
    with ExporterThread(settings) as exp:
        exp.poll()
        sim.set_status(P, "b1", "failed", now + 1, error_code="server_error")
        exp.poll()
        before = exp.samples()
    assert value(before, "bifrost_batch_finished_total", provider=P, status="failed") == 1
    failures = {labels: v for (name, labels), v in before.items() if name == "bifrost_batch_failures_total"}
    sim.set_fault("server_error")
    with ExporterThread(settings) as exp:
        first = exp.samples()  # before any poll of this process
        exp.poll()
        during = exp.samples()
    for samples in (first, during):
        assert value(samples, "bifrost_batch_finished_total", provider=P, status="failed") == 1
        shown = {labels: v for (name, labels), v in samples.items() if name == "bifrost_batch_failures_total"}
        assert shown == failures
        assert value(samples, "bifrost_batches", provider=P, status="failed") is None  # no list: no gauges
    assert value(during, "bifrost_batch_exporter_up", provider=P) == 0


def test_a_number_too_large_for_a_float_in_the_state_is_unusable_state_not_a_crash(
    sim: Simulator, tmp_path: Path
) -> None:
    """A hand edit or a writer's bug: an integer beyond any float (10**400) where the head keeps a time. Taken as an
    unusable state (one warning, a fresh start), never a traceback and a crash loop."""
    with ExporterThread(make_settings(sim.url, [P], state_dir=tmp_path)) as exp:
        exp.poll()
    path = statefile.base_path(tmp_path, P)
    raw = path.read_bytes()
    first = 8 + int.from_bytes(raw[:4], "little")
    doc = json.loads(raw[9:first])
    doc["head"]["gateway_now"] = 10**400
    path.write_bytes(statefile.json_record(doc) + raw[first:])
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "--once", "--bifrost-url", sim.url, "--providers", P,
         "--state-dir", str(tmp_path), "--max-retries", "0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "state_unusable" in done.stderr + done.stdout
    assert done.returncode == 0


def _record_offsets(raw: bytes) -> list[int]:
    out, at = [], 0
    while at + 8 <= len(raw):
        out.append(at)
        at += 8 + int.from_bytes(raw[at : at + 4], "little")
    return out


@pytest.mark.parametrize("damage", ["header", "first-poll-record", "torn-tail", "zeroed-tail"])
def test_a_journal_damaged_before_its_end_is_a_warning_a_torn_tail_is_not(
    sim: Simulator, tmp_path: Path, damage: str
) -> None:
    """A stop can only cut the journal's last record short (or leave allocated blocks unwritten): that is an info
    line. A bit flipped in its header (written whole, by rename) or in a record with more after it is damage to
    what was saved, and the polls after it are lost: a warning that says so, never "a write cut short by a stop"."""
    now = int(time.time())
    for i in range(4):
        sim.add_batch(P, batch_id=f"b{i}", status="in_progress", created_at=now - 100, expires_at=now + 86400)
    with _exporter(sim, tmp_path) as exp:
        exp.poll()
        for i in range(4):
            sim.set_status(P, f"b{i}", "failed", now + i, error_code="server_error")
            exp.poll()
    journal = statefile.journal_path(tmp_path, P)
    raw = bytearray(journal.read_bytes())
    offsets = _record_offsets(bytes(raw))
    assert len(offsets) >= 6, offsets  # the header and a record per poll
    if damage in ("header", "first-poll-record"):
        raw[offsets[0 if damage == "header" else 1] + 12] ^= 0x01
    elif damage == "torn-tail":
        del raw[len(raw) - 3 :]
    else:
        raw[offsets[-1] + 8 :] = bytes(len(raw) - offsets[-1] - 8)
    journal.write_bytes(bytes(raw))
    with structlog.testing.capture_logs() as logs, _exporter(sim, tmp_path) as exp:
        exp.poll()
    levels = {e["event"]: e["log_level"] for e in logs if e["event"].startswith("state_journal")}
    if damage.endswith("tail"):
        assert levels == {"state_journal_tail_dropped": "info"}
    else:
        assert levels == {"state_journal_damaged": "warning"}


def test_a_state_of_another_gateway_lends_it_no_watermark(sim: Simulator, tmp_path: Path) -> None:
    """bifrost_url changed with the state dir kept (a reused volume, a copied values file). The other account was
    quiet for 20 h, so its watermark was 20 h old, and every batch of this account that ended since counted as a
    transition: five failures from 10 h ago paged as new (found by audit 11). Counting starts at this start, as
    without state, with one warning naming the setting; the counters continue (a renamed URL keeps increase()
    right)."""
    now = int(time.time())
    sim.add_batch(P, batch_id="a1", status="in_progress", created_at=now - 72_000)
    with _exporter(sim, tmp_path) as exp:
        exp.poll()
        sim.set_status(P, "a1", "failed", now - 71_000, error_code="server_error")
        exp.poll()
        exp.poll()  # a complete list whose gateway clock is the quiet account's: 20 h old
        assert value(exp.samples(), "bifrost_batch_finished_total", provider=P, status="failed") == 1
    with Simulator(providers=[ProviderSpec(P)], lifecycle=False) as other:
        for i in range(5):
            other.add_batch(
                P, batch_id=f"b{i}", status="failed", created_at=now - 40_000, failed_at=now - 36_000,
                error_code="invalid_request",
            )  # fmt: skip
        other.add_batch(P, batch_id="b-run", status="in_progress", created_at=now - 3_600)
        other_url = other.url
        with structlog.testing.capture_logs() as logs, _exporter(other, tmp_path) as exp:
            exp.poll()
            other.set_status(P, "b-run", "completed", int(time.time()))
            exp.poll()
            # The ledger's counts: /metrics holds what a restart's first polls count for a minute.
            view = exp.exporter.poller._ledgers[P].view()
            counted = {s: view.finished_total(s) for s in ("failed", "completed")}
        with structlog.testing.capture_logs() as again, _exporter(other, tmp_path) as exp:
            exp.poll()
            restarted = exp.samples()
    assert counted == {"failed": 1, "completed": 1}, counted
    changed = [e for e in logs if e["event"] == "state_gateway_changed"]
    assert len(changed) == 1 and changed[0]["setting"] == "bifrost_url", changed
    assert changed[0]["saved"] == sim.url and changed[0]["configured"] == other_url
    # The state now belongs to this gateway: a restart resumes it without a word.
    assert not [e for e in again if e["event"] == "state_gateway_changed"]
    assert value(restarted, "bifrost_batch_finished_total", provider=P, status="completed") == 1


def test_a_note_every_journal_record_repeats_is_logged_once(tmp_path: Path) -> None:
    """metadata_labels changed with cost_metrics on: each journal record's cost part says "cost counters start
    again from 0", and state_restored carried one copy per record (115 after two minutes of polls: a line that
    grows toward megabytes with the journal; found by audit 11)."""
    token = "admin-session-token"
    with Simulator(providers=[ProviderSpec(P)], lifecycle=False, admin_token=token) as s:
        s.add_batch(P, batch_id="r1", status="in_progress", created_at=int(time.time()) - 60)

        def settings(labels: list[str]) -> Any:
            return make_settings(
                s.url, [P], state_dir=tmp_path, cost_metrics=True, bearer_token=token, metadata_labels=labels
            )

        with ExporterThread(settings(["team"])) as exp:
            for _ in range(4):
                exp.poll()
        assert statefile.read(tmp_path, P).records >= 4  # type: ignore[union-attr]
        with structlog.testing.capture_logs() as logs, ExporterThread(settings(["team", "env"])):
            pass
    (restored,) = [e for e in logs if e["event"] == "state_restored"]
    assert restored["notes"] == sorted(set(restored["notes"])), restored["notes"]
    assert "metadata_labels changed: cost counters start again from 0" in restored["notes"]


def test_ledgers_of_providers_not_polled_are_named_at_start(tmp_path: Path) -> None:
    """A provider moved to another shard leaves its ledger here; moved back, that ledger counted again what the
    other shard had counted meanwhile (7 transitions for 4 across the release; audit 11). The start says so."""
    with Simulator(providers=[ProviderSpec(P), ProviderSpec("azure")], lifecycle=False) as s:
        with ExporterThread(make_settings(s.url, [P, "azure"], state_dir=tmp_path)) as exp:
            exp.poll()
        with (
            structlog.testing.capture_logs() as alone,
            ExporterThread(make_settings(s.url, [P], state_dir=tmp_path)),
        ):
            pass
        with (
            structlog.testing.capture_logs() as both,
            ExporterThread(make_settings(s.url, [P, "azure"], state_dir=tmp_path)),
        ):
            pass
    (warned,) = [e for e in alone if e["event"] == "state_other_providers"]
    assert warned["providers"] == ["azure"] and warned["log_level"] == "warning"
    assert not [e for e in both if e["event"] == "state_other_providers"]


def test_cost_metrics_turned_on_over_a_state_without_costs_is_said(tmp_path: Path) -> None:
    """A state written with cost_metrics off holds no cost ledger: the counters start from 0 and the batches that
    finished meanwhile were never awaited. state_restored says so (it was silent; audit 11)."""
    token = "admin-session-token"
    with Simulator(providers=[ProviderSpec(P)], lifecycle=False, admin_token=token) as s:
        with ExporterThread(make_settings(s.url, [P], state_dir=tmp_path)) as exp:
            exp.poll()
        settings = make_settings(s.url, [P], state_dir=tmp_path, cost_metrics=True, bearer_token=token)
        with structlog.testing.capture_logs() as logs, ExporterThread(settings):
            pass
    (restored,) = [e for e in logs if e["event"] == "state_restored"]
    assert any("cost_metrics was off" in note for note in restored["notes"]), restored

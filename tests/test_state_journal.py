"""The state journal against the ledger it writes: after any sequence of polls (batches starting, finishing, seen
or not, ids forgotten by retention, the cap and full lists), writes (journal records, compactions, failed writes)
and restarts, what is read back is exactly the ledger as it was at its last successful write."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.common import child_env
from exporter import statefile
from exporter.client import REASONS, Failure
from exporter.cost import CostLedger, Row
from exporter.failure_classes import TABLE as KNOWN_CODES
from exporter.ledger import Ledger
from exporter.models import Batch
from exporter.settings import DEFAULT_DURATION_BUCKETS, DEFAULT_LATENCY_BUCKETS
from exporter.tracked import MAX_TRACKED_CHANGES

P = "openai"
T0 = 1_800_000_000.0
STATUSES = ("validating", "in_progress", "completed", "failed", "expired", "cancelled")


def _ledger(started: float = T0, keys: tuple[str, ...] = ()) -> Ledger:
    return Ledger(
        started,
        DEFAULT_DURATION_BUCKETS,
        DEFAULT_LATENCY_BUCKETS,
        REASONS,
        3600.0,
        max_tracked_ids=40,
        metadata_keys=keys,
    )


def _batch(n: int, status: str, created: float, at: float, team: int | None = None) -> Batch:
    doc: dict[str, Any] = {"id": f"b{n}", "status": status, "created_at": created, f"{status}_at": at}
    if team is not None:
        doc["metadata"] = {"team": f"team-{team}", "project": f"p{team % 3}"}
    return Batch.model_validate(doc)


def _canonical(led: Ledger) -> str:
    state = led.to_state()
    return json.dumps({**state, "settled": sorted(state["settled"])}, sort_keys=True)


def _read(state_dir: Path, keys: tuple[str, ...] = ()) -> tuple[Ledger, statefile.Restored]:
    restored = statefile.read(state_dir, P)
    assert restored is not None
    led = _ledger(T0 + 10**6, keys)
    led.load_state(restored.state, restored.settled)
    return led, restored


class FailOnce(statefile.FileOps):
    def write(self, fd: int, data: memoryview) -> int:
        super().write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "no space left on device")


# Steps of any sequence: a compaction asked for, a write that fails half-way, a restart reading the directory.
_WRITES = (
    st.tuples(st.just("compact"), st.none()),
    st.tuples(st.just("fail"), st.none()),
    st.tuples(st.just("restart"), st.none()),
)
# One poll: batches (id number, status, timestamp offset) seen; whether the list was complete.
_poll = st.tuples(
    st.lists(st.tuples(st.integers(0, 60), st.sampled_from(STATUSES), st.integers(-5000, 5000)), max_size=12),
    st.booleans(),
)
_step = st.one_of(
    st.tuples(st.just("poll"), _poll),
    st.tuples(st.just("hours"), st.integers(1, 3)),
    *_WRITES,
)


class _Saves:
    """The poller's save of one provider's ledger (a journal write; `failed` on an error), and what a read of the
    directory must give back after it: the ledger at its last successful write."""

    def __init__(self, state_dir: Path, led: Ledger, compact_min_bytes: int) -> None:
        self.state_dir = state_dir
        self.compact_min_bytes = compact_min_bytes
        self.led = led
        self.journal = self._journal()
        self.written: str | None = None

    def _journal(self) -> statefile.Journal:
        journal = statefile.Journal(self.state_dir, P)
        journal.compact_min_bytes = self.compact_min_bytes
        return journal

    def save(self, now: float, ops: statefile.FileOps = statefile.REAL_FILE_OPS) -> None:
        write = self.journal.prepare(self.led, now)
        try:
            write.run(ops)
        except OSError:
            self.journal.failed()
            return
        self.journal.done(write)
        self.written = _canonical(self.led)

    def restart(self, keys: tuple[str, ...] = ()) -> None:
        self.led, restored = _read(self.state_dir, keys)
        self.journal = self._journal()
        self.journal.attach(restored)

    def poll(self, batches: list[Batch], now: float, complete: bool) -> None:
        self.led.poll_started()
        self.led.observe(batches, now, complete)
        self.save(now)

    def write_step(self, kind: str, now: float, keys: tuple[str, ...] = ()) -> None:
        """One of _WRITES: a compaction asked for, a write failing half-way, a restart."""
        if kind == "compact":
            self.journal.compact_next()
            self.save(now)
        elif kind == "fail":
            self.led.poll_started()
            self.save(now, FailOnce())
        else:
            self.restart(keys)

    def check(self, keys: tuple[str, ...] = ()) -> None:
        back, _ = _read(self.state_dir, keys)
        assert _canonical(back) == self.written


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(_step, max_size=30))
def test_what_is_read_back_is_the_ledger_at_its_last_write(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, Any]]
) -> None:
    saves = _Saves(tmp_path_factory.mktemp("state"), _ledger(), 2048)  # compactions within a few dozen polls
    now = T0
    saves.save(now)
    for kind, arg in steps:
        if kind == "poll":
            batches, complete = arg
            now += 30
            saves.poll(
                [_batch(n, status, now - 6000, now + off) for n, status, off in batches], now, complete
            )
        elif kind == "hours":
            now += arg * 3600  # past the 1-hour retention: settled ids expire in the next poll
        else:
            saves.write_step(kind, now)
        saves.check()


# With an owner group per batch: the counter tables grow wide (a journal of version 3 then carries their changed
# rows), and a restart may change the metadata keys (the tables restored are then not the ones the ledger keeps).
_wide_poll = st.tuples(
    st.lists(
        st.tuples(st.integers(0, 200), st.sampled_from(STATUSES), st.integers(-60, 5000), st.integers(0, 40)),
        max_size=12,
    ),
    st.booleans(),
)
_wide_step = st.one_of(
    st.tuples(st.just("poll"), _wide_poll),
    *_WRITES,
    st.tuples(st.just("rekey"), st.none()),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(_wide_step, max_size=30))
def test_wide_counter_tables_read_back_as_written(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, steps: list[tuple[str, Any]]
) -> None:
    """The per-status-and-group counters as rows: through the switch to a version-3 journal, row records,
    compactions, failed writes, restarts and a change of metadata keys at a restart, what is read back is exactly
    the ledger at its last write, and a journal carries rows only when it is of version 3."""
    monkeypatch.setattr(statefile, "ROWS_MIN", 4)  # wide within a poll or two
    keys: tuple[str, ...] = ("team",)
    # Compactions only when the steps ask or the journal must change version.
    saves = _Saves(tmp_path_factory.mktemp("state"), _ledger(keys=keys), 1 << 30)
    now = T0
    saves.save(now)
    for kind, arg in steps:
        if kind == "poll":
            batches, complete = arg
            now += 30
            saves.poll(
                [_batch(n, status, now - 6000, now + off, team) for n, status, off, team in batches],
                now,
                complete,
            )
        elif kind == "rekey":
            keys = ("team", "project") if keys == ("team",) else ("team",)
            saves.restart(keys)
            saves.save(now)  # the counters of the old keys are gone, on disk too
        else:
            saves.write_step(kind, now, keys)
        saves.check(keys)
        records = list(statefile.iter_records(statefile.journal_path(saves.state_dir, P)))
        header = records[0]
        assert isinstance(header, dict)
        if header["version"] == statefile.LAYOUT_VERSION:
            assert not any(isinstance(r, dict) and "rows" in r for r in records)


def test_a_poll_that_changes_more_than_can_be_tracked_writes_everything(tmp_path: Path) -> None:
    """Past MAX_TRACKED_CHANGES in one poll, the write is a whole new base, and reads back the same."""
    led = Ledger(T0, DEFAULT_DURATION_BUCKETS, DEFAULT_LATENCY_BUCKETS, REASONS)
    journal = statefile.Journal(tmp_path, P)
    assert journal.prepare(led, T0).compaction  # the first write of a directory
    led.observe([Batch(id="a", status="in_progress")], T0, True)
    write = journal.prepare(led, T0)
    write.run(statefile.REAL_FILE_OPS)
    journal.done(write)
    many = [
        Batch(id=f"x{i}", status="completed", completed_at=T0 + 1) for i in range(MAX_TRACKED_CHANGES + 1)
    ]
    led.observe(many, T0 + 2, True)
    write = journal.prepare(led, T0 + 3)
    assert write.compaction
    write.run(statefile.REAL_FILE_OPS)
    journal.done(write)
    back = _ledger()
    restored = statefile.read(tmp_path, P)
    assert restored is not None
    back.load_state(restored.state, restored.settled)
    assert back.view().tracked_ids == led.view().tracked_ids == MAX_TRACKED_CHANGES + 1


def test_a_poll_writes_a_small_record_and_leaves_the_base_alone(tmp_path: Path) -> None:
    """The point of the journal: a poll that changes little writes little, whatever the ledger holds."""
    led = Ledger(T0, DEFAULT_DURATION_BUCKETS, DEFAULT_LATENCY_BUCKETS, REASONS)
    led.observe(
        [Batch(id=f"old{i}", status="completed", completed_at=T0 + 1) for i in range(20_000)], T0 + 2, True
    )
    journal = statefile.Journal(tmp_path, P)
    write = journal.prepare(led, T0 + 3)
    write.run(statefile.REAL_FILE_OPS)
    journal.done(write)
    base = statefile.base_path(tmp_path, P).stat()
    for n in range(20):
        led.poll_started()
        led.observe([Batch(id=f"new{n}", status="completed", completed_at=T0 + 10 + n)], T0 + 10 + n, False)
        write = journal.prepare(led, T0 + 10 + n)
        write.run(statefile.REAL_FILE_OPS)
        journal.done(write)
        assert not write.compaction and write.size < 1024, write.size
    assert statefile.base_path(tmp_path, P).stat().st_mtime_ns == base.st_mtime_ns
    records = list(statefile.iter_records(statefile.journal_path(tmp_path, P)))
    assert len(records) == 21  # its header and one per poll


def test_with_a_thousand_owner_groups_a_poll_writes_the_rows_it_changed(tmp_path: Path) -> None:
    """`metadata_labels` grow the per-group counter tables to thousands of rows; a record carrying every table that
    changed made a poll that counted one batch write ~92 KiB at 1,000 groups. It writes that batch's rows now, in a
    journal of version 3 (which a release reading version 2 refuses instead of misreading), and reads back the
    same."""
    led = _ledger(keys=("team", "project"))
    statuses = ("completed", "failed", "expired")
    led.observe(
        [
            Batch.model_validate(
                {"id": f"old{i}", "status": statuses[i % 3], "created_at": T0 - 600, f"{statuses[i % 3]}_at": T0 + 5,
                 "metadata": {"team": f"t{i % 50}", "project": f"p{i // 50}"}}
            )
            for i in range(1000)
        ],
        T0 + 10,
        True,
    )  # fmt: skip
    assert len(led.to_state()["finished"]) == 1000
    journal = statefile.Journal(tmp_path, P)
    sizes = []
    for n in range(5):
        now = T0 + 30 * (n + 1)
        led.poll_started()
        led.observe(
            [Batch.model_validate({"id": f"new{n}", "status": "failed", "created_at": now - 60, "failed_at": now,
                                   "metadata": {"team": f"t{n}", "project": "p3"}})],
            now,
            False,
        )  # fmt: skip
        write = journal.prepare(led, now)
        write.run(statefile.REAL_FILE_OPS)
        journal.done(write)
        sizes.append(write.size)
    assert sizes[0] > 50_000  # the first write is a base: every row
    assert max(sizes[1:]) < 3 * 1024, sizes
    header, *records = statefile.iter_records(statefile.journal_path(tmp_path, P))
    assert isinstance(header, dict) and header["version"] == statefile.ROWS_VERSION
    assert all(isinstance(r, dict) and {"finished", "failures"} <= set(r["rows"]) for r in records)
    assert all(isinstance(r, dict) and not set(r["head"]) & set(statefile.COUNT_TABLES) for r in records)
    back, _ = _read(tmp_path, ("team", "project"))
    assert _canonical(back) == _canonical(led)


def test_a_ledger_without_wide_tables_keeps_a_journal_a_version_2_reader_takes(tmp_path: Path) -> None:
    """Rows only where they pay: without owner groups the journal stays version 2, so a rollback to a release that
    reads version 2 resumes from it; a version-2 journal carrying rows is damaged at that record (the state is
    that of the record before it)."""
    led = _ledger()
    journal = statefile.Journal(tmp_path, P)
    for n in range(3):
        now = T0 + 30 * (n + 1)
        led.poll_started()
        led.observe([_batch(n, STATUSES[2 + n], now - 60, now)], now, False)
        write = journal.prepare(led, now)
        write.run(statefile.REAL_FILE_OPS)
        journal.done(write)
    path = statefile.journal_path(tmp_path, P)
    header, *records = statefile.iter_records(path)
    assert isinstance(header, dict) and header["version"] == statefile.LAYOUT_VERSION
    assert records and all(
        isinstance(r, dict) and "rows" not in r and "finished" in r["head"] for r in records
    )
    good = statefile.read(tmp_path, P)
    with path.open("ab") as f:
        f.write(statefile.json_record({"rows": {"finished": [["completed", [], 99]]}}))
    restored = statefile.read(tmp_path, P)
    assert good is not None and restored is not None
    assert restored.damage is not None and "malformed" in restored.damage
    assert restored.records == good.records == len(records)
    assert restored.state["finished"] == good.state["finished"]


def test_a_journal_carries_rows_only_with_owner_groups(tmp_path: Path) -> None:
    """Version 3 (rows) is for owner groups: failure codes alone can widen the tables past the bound without any
    (a release reading version 2 would then refuse a directory it reads well), and a ledger whose metadata_labels
    were removed at a restart goes back to a version-2 journal at its next write, not at a compaction days later
    (audit 7, state F2)."""
    led = Ledger(T0, DEFAULT_DURATION_BUCKETS, DEFAULT_LATENCY_BUCKETS, REASONS, 3600.0)
    statuses = ("failed", "expired")
    codes = [*KNOWN_CODES, *(f"code_{i}" for i in range(30))]
    led.observe(
        [
            Batch.model_validate(
                {"id": f"x{i}-{s}", "status": s, "created_at": T0 - 600, f"{s}_at": T0 + 5,
                 "errors": {"data": [{"code": code}]}}
            )
            for i, code in enumerate(codes)
            for s in statuses
        ],
        T0 + 10,
        True,
    )  # fmt: skip
    assert sum(len(t) for t in led.count_tables().values()) >= statefile.ROWS_MIN
    journal = statefile.Journal(tmp_path, P)
    for n in range(2):
        led.poll_started()
        write = journal.prepare(led, T0 + 30 * (n + 1))
        write.run(statefile.REAL_FILE_OPS)
        journal.done(write)
    header, *_ = statefile.iter_records(statefile.journal_path(tmp_path, P))
    assert isinstance(header, dict) and header["version"] == statefile.LAYOUT_VERSION

    grouped = tmp_path / "grouped"
    led = _ledger(keys=("team",))
    led.observe([_batch(i, "completed", T0 - 600, T0 + 5, team=i) for i in range(40)], T0 + 10, True)
    journal = statefile.Journal(grouped, P)
    write = journal.prepare(led, T0 + 30)
    write.run(statefile.REAL_FILE_OPS)
    journal.done(write)
    header, *_ = statefile.iter_records(statefile.journal_path(grouped, P))
    assert isinstance(header, dict) and header["version"] == statefile.ROWS_VERSION
    led, restored = _read(grouped, keys=())  # restarted without metadata_labels
    journal = statefile.Journal(grouped, P)
    journal.attach(restored)
    led.poll_started()
    write = journal.prepare(led, T0 + 60)
    write.run(statefile.REAL_FILE_OPS)
    journal.done(write)
    assert write.compaction
    header, *_ = statefile.iter_records(statefile.journal_path(grouped, P))
    assert isinstance(header, dict) and header["version"] == statefile.LAYOUT_VERSION
    back, _ = _read(grouped)
    assert _canonical(back) == _canonical(led)


# ---- the cost ledger (cost_metrics), whose changes ride in the same records -----------------------------------------

MODELS = ("gpt-4o-mini", "gpt-4o", "model-x")


def _costs(clock: list[float]) -> CostLedger:
    return CostLedger(
        P, clock=lambda: clock[0], horizon_seconds=3600.0, metadata_keys=("team",), hold_seconds=60.0
    )


def _cost_read(state_dir: Path, clock: list[float]) -> tuple[CostLedger, statefile.Restored]:
    restored = statefile.read(state_dir, P)
    assert restored is not None
    costs = _costs(clock)
    costs.load_state(restored.cost)
    for delta in restored.cost_deltas:
        costs.apply_delta(delta)
    return costs, restored


def _cost_canonical(costs: CostLedger) -> str:
    return json.dumps(costs.to_state(), sort_keys=True)


# One step: batches finishing (id number, team), or a round answering each due id with a row kind, or nothing.
_answer = st.sampled_from(("priced", "unpriced", "absent", "unreadable"))
_cost_step = st.one_of(
    st.tuples(st.just("finish"), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 4)), max_size=6)),
    st.tuples(st.just("settle"), st.lists(st.tuples(_answer, st.integers(0, 2)), max_size=8)),
    st.tuples(st.just("idle"), st.integers(30, 3000)),
    *_WRITES,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(_cost_step, max_size=30))
def test_the_cost_ledger_read_back_is_the_one_of_the_last_write(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, Any]]
) -> None:
    """Settlements counted, held for a new series and released, awaited ids added, rescheduled and dropped, through
    journal records, compactions, failed writes and restarts: what is read back is exactly the cost ledger at its
    last successful write. A record holds only the counters that changed: one after a step that counted nothing
    holds none."""
    state_dir = tmp_path_factory.mktemp("state")
    clock = [T0]
    led = _ledger()
    costs = _costs(clock)
    journal = statefile.Journal(state_dir, P)
    journal.compact_min_bytes = 4096
    written = ""

    def save(ops: statefile.FileOps = statefile.REAL_FILE_OPS) -> bool:
        nonlocal written
        led.poll_started()
        write = journal.prepare(led, clock[0], cost=costs)
        try:
            write.run(ops)
        except OSError:
            journal.failed()
            return False
        journal.done(write)
        costs.mark_saved()
        written = _cost_canonical(costs)
        return not write.compaction

    save()
    for kind, arg in steps:
        counted = True
        if kind == "finish":
            for n, team in arg:
                batch = Batch.model_validate(
                    {"id": f"c{n}", "status": "completed", "created_at": clock[0] - 600}
                )
                costs.finished(batch, "completed", clock[0], (f"team-{team}",))
        elif kind == "settle":
            clock[0] += 600
            costs.release()
            answers = iter(arg)
            while (bid := costs.next_due(clock[0])) is not None:
                answer, model = next(answers, ("absent", 0))
                if answer == "unreadable":
                    costs.failed(
                        bid, Failure("invalid_response", "garbage", 200, 1), clock[0], row_fault=True
                    )
                    continue
                row = Row(1.25 if answer == "priced" else None, MODELS[model], 100, 10, 3)
                costs.answered(bid, None if answer == "absent" else row, clock[0])
            costs.round_done(len(arg), True)
        elif kind == "idle":
            clock[0] += arg
            counted = False
        if kind == "compact":
            journal.compact_next()
            save()
        elif kind == "fail":
            save(FailOnce())
        elif kind == "restart":
            costs, restored = _cost_read(state_dir, clock)
            led, _ = _read(state_dir)
            journal = statefile.Journal(state_dir, P)
            journal.compact_min_bytes = 4096
            journal.attach(restored)
        elif save() and not counted:
            _, restored = _cost_read(state_dir, clock)
            record = restored.cost_deltas[-1]
            assert record["dollars"] == record["tokens"] == record["requests"] == record["settlements"] == []
        back, _ = _cost_read(state_dir, clock)
        assert _cost_canonical(back) == written


def test_a_poll_that_counted_no_settlement_writes_no_cost_counters(tmp_path: Path) -> None:
    """With metadata groups the cost counters run to thousands of numbers (models x teams x 4): a record carrying
    them whole made every poll write 32-158 KB. A poll that counted nothing writes a few hundred bytes, and one
    that counted a settlement adds only that series."""
    clock = [T0]
    led = _ledger()
    costs = _costs(clock)
    for m in range(10):
        for t in range(20):
            bid = f"b{m}_{t}"
            costs.finished(
                Batch.model_validate({"id": bid, "status": "completed"}), "completed", T0, (f"t{t}",)
            )
            costs.answered(bid, Row(0.5, f"model-{m}", 1000, 100, 10), T0 + 600)
    clock[0] = T0 + 3600
    costs.release()
    journal = statefile.Journal(tmp_path, P)
    sizes = []
    for n in range(4):
        if n == 3:
            costs.finished(
                Batch.model_validate({"id": "new", "status": "completed"}), "completed", T0, ("t0",)
            )
            costs.answered("new", Row(0.5, "model-0", 1000, 100, 10), clock[0])
        led.poll_started()
        write = journal.prepare(led, clock[0], cost=costs)
        write.run(statefile.REAL_FILE_OPS)
        journal.done(write)
        costs.mark_saved()
        sizes.append(write.size)
        clock[0] += 30
    assert sizes[0] > 10_000  # the first write is a base: the whole ledger
    assert sizes[1] < 1024 and sizes[2] < 1024, sizes
    assert sizes[3] < 2048, sizes
    back, _ = _cost_read(tmp_path, clock)
    assert back.to_state() == costs.to_state()


def test_state_writes_benchmark_runs_in_smoke_mode(tmp_path: Path) -> None:
    """bench/state_writes.py in smoke mode, as tests/test_bench_smoke.py runs the other benchmarks."""
    out = tmp_path / "state_writes.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.state_writes", "--smoke", "--json", str(out)],
        cwd=Path(__file__).resolve().parent.parent, env=child_env(), capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["smoke"] is True and report["tables"]
    assert "format version 1" in report["tables"][0]

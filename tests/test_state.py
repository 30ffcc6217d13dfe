"""The durable ledger: counters resume across restarts, transitions while down count once, and a damaged state
(a journal cut at any byte, a base cut or flipped at any byte, garbage, another version, unwritable) is the last
complete record or one log line and a v1 start, never a crash. Format version 1's file is read and migrated."""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter import statefile
from exporter.client import REASONS, BifrostClient
from exporter.ledger import Ledger
from exporter.models import Batch
from exporter.outcomes import OUTCOMES
from exporter.poller import Poller
from exporter.render import render
from exporter.settings import DEFAULT_DURATION_BUCKETS, DEFAULT_LATENCY_BUCKETS
from exporter.simulator import ProviderSpec, Simulator
from tests.harness import ExporterThread, make_settings, value

P = "openai"
T0 = 1_800_000_000.0
V1_FILE = Path(__file__).parent / "data" / "ledger-openai-v1.json"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(providers=[ProviderSpec(P)], lifecycle=False) as s:
        yield s


def _exporter(sim: Simulator, state_dir: Path | None, **kw: object) -> ExporterThread:
    return ExporterThread(make_settings(sim.url, [P], state_dir=state_dir, **kw))


def _fail(sim: Simulator, batch_id: str, code: str, at: float) -> None:
    sim.add_batch(
        P,
        batch_id=batch_id,
        status="failed",
        created_at=int(at) - 600,
        failed_at=int(at),
        request_counts={"total": 10, "completed": 4, "failed": 6},
        error_code=code,
    )


def _ledger(started: float = T0) -> Ledger:
    return Ledger(started, DEFAULT_DURATION_BUCKETS, DEFAULT_LATENCY_BUCKETS, REASONS)


def _b(batch_id: str, status: str, **kw: Any) -> Batch:
    return Batch.model_validate({"id": batch_id, "status": status, **kw})


def _canonical(state: dict[str, Any]) -> str:
    """A ledger state in one comparable form (settled ids in key order, whichever tier they are in)."""
    return json.dumps({**state, "settled": sorted(state["settled"])}, sort_keys=True)


def test_counters_resume_and_a_transition_while_down_counts_once(sim: Simulator, tmp_path: Path) -> None:
    now = time.time()
    sim.add_batch(P, batch_id="a", status="in_progress", created_at=int(now) - 100)
    with _exporter(sim, tmp_path) as exp:
        exp.poll()
        # fails while we run: after the start, which a `now` read before it and truncated need not be
        _fail(sim, "b", "token_limit_exceeded", math.ceil(time.time()) + 1)
        exp.poll()
        before = exp.samples()
    assert value(before, "bifrost_batch_finished_total", provider=P, status="failed") == 1
    assert statefile.base_path(tmp_path, P).is_file() and statefile.journal_path(tmp_path, P).is_file()
    # Down: "a" fails (seen active before) and "c" is created and fails (never seen), both after the last poll.
    sim.set_status(P, "a", "failed")
    _fail(sim, "c", "invalid_json_line", time.time() + 2)
    with _exporter(sim, tmp_path) as exp:
        exp.poll()
        exp.poll()
        after = exp.samples()
        led = exp.exporter.poller.states[P].ledger
    # Counted: what the ledger holds. Shown: the restored total for a minute first (on a new pod every series is new
    # to Prometheus: the two failures while down are an increase from it; exporter/presence.py).
    assert led.finished_total("failed") == 3
    assert value(after, "bifrost_batch_finished_total", provider=P, status="failed") == 1
    codes = {code: n for (status, code, _), n in led.failures.items() if status == "failed"}
    assert codes["token_limit_exceeded"] == 1  # counted before the stop, resumed, not counted again
    assert codes["invalid_json_line"] >= 1  # "c" (and "a" when the simulator gives it that code)
    assert sum(codes.values()) == 3  # one code each
    # requests of the counted transitions resume too: "b" and "c" each 4 succeeded + 6 failed
    outcome = dict(zip(OUTCOMES, led.finished_requests[("failed", ())], strict=True))
    assert outcome["succeeded"] >= 8 and outcome["failed"] >= 12 and outcome["pending"] == 0
    assert value(after, "bifrost_batch_exporter_polls_total", provider=P) == 4


def test_without_state_dir_a_restart_loses_the_transitions_while_down(sim: Simulator) -> None:
    now = time.time()
    with _exporter(sim, None) as exp:
        exp.poll()
    _fail(sim, "late", "invalid_json_line", now + 0.5)  # before the next process starts
    time.sleep(1.0)
    with _exporter(sim, None) as exp:
        exp.poll()
        s = exp.samples()
    assert value(s, "bifrost_batch_finished_total", provider=P, status="failed") == 0


# ---- the files, written and read back ------------------------------------------------------------------------


def _save(journal: statefile.Journal, led: Ledger, at: float) -> statefile._Write:
    write = journal.prepare(led, at)
    write.run(statefile.REAL_FILE_OPS)
    journal.done(write)
    return write


def _history(state_dir: Path) -> list[tuple[int, str]]:
    """A base, then a journal of polls that change every kind of thing (new active ids, transitions counted,
    old ones settled uncounted, ids forgotten, counters): (journal length, the ledger's state) after each write."""
    led = _ledger()
    journal = statefile.Journal(state_dir, P)
    led.observe([_b("x", "in_progress", created_at=T0 - 1000)], T0 + 10, complete=True)
    _save(journal, led, T0 + 11)  # the base
    out = [(statefile.journal_path(state_dir, P).stat().st_size, _canonical(led.to_state()))]
    polls = [
        [_b("x", "in_progress", created_at=T0 - 1000), _b("y", "validating", created_at=T0 + 15)],
        [
            _b("x", "failed", created_at=T0 - 1000, failed_at=T0 + 25, errors={"data": [{"code": "e1"}]}),
            _b("y", "in_progress", created_at=T0 + 15),
            _b("old", "completed", completed_at=T0 - 50),
        ],
        [_b("y", "completed", created_at=T0 + 15, completed_at=T0 + 38, request_counts={"total": 3})],
        [_b(f"n{i}", "in_progress", created_at=T0 + 40) for i in range(4)],
        [_b("n0", "in_progress", created_at=T0 + 40)],  # n1..n3 unseen by a complete poll: forgotten
    ]
    for n, batches in enumerate(polls, start=2):
        led.poll_started()
        led.requests_sent("list", n)
        led.observe(batches, T0 + 10 * n, complete=True)
        write = _save(journal, led, T0 + 10 * n + 1)
        assert not write.compaction
        out.append((statefile.journal_path(state_dir, P).stat().st_size, _canonical(led.to_state())))
    return out


def _load(state_dir: Path) -> tuple[Ledger, statefile.Restored]:
    restored = statefile.read(state_dir, P)
    assert restored is not None
    led = _ledger(T0 + 500)
    assert led.load_state(restored.state, restored.settled) == []
    return led, restored


def test_an_outage_that_outlives_a_restart_keeps_its_age(sim: Simulator, tmp_path: Path) -> None:
    """last_success_timestamp_seconds is the last successful poll of any process of this state_dir: a pod
    restarted mid-outage must not reset it to 0, which BifrostBatchExporterDataStale reads as "no data yet"
    (the critical alert resolved on every restart)."""
    sim.add_batch(P, batch_id="a", status="in_progress", created_at=int(time.time()) - 100)
    clock = [time.time()]
    cfg = make_settings(sim.url, [P], state_dir=tmp_path)
    with ExporterThread(cfg, clock=lambda: clock[0]) as exp:
        exp.poll()
        succeeded = value(exp.samples(), "bifrost_batch_exporter_last_success_timestamp_seconds", provider=P)
    assert succeeded == clock[0]
    sim.set_fault("server_error")
    clock[0] += 900
    with ExporterThread(cfg, clock=lambda: clock[0]) as exp:
        before_any_poll = exp.samples()
        exp.poll()
        after_a_failed_poll = exp.samples()
    for samples in (before_any_poll, after_a_failed_poll):
        assert (
            value(samples, "bifrost_batch_exporter_last_success_timestamp_seconds", provider=P) == succeeded
        )
        assert (
            value(samples, "bifrost_batches", provider=P, status="in_progress") is None
        )  # no data, only its age
    assert value(after_a_failed_poll, "bifrost_batch_exporter_up", provider=P) == 0
    sim.set_fault(None)
    with ExporterThread(cfg, clock=lambda: clock[0] + 30) as exp:
        exp.poll()
        assert value(exp.samples(), "bifrost_batch_exporter_last_success_timestamp_seconds", provider=P) == (
            clock[0] + 30
        )
    # Without a state_dir there is nothing to carry: 0 until this process's first success (as before).
    with ExporterThread(make_settings(sim.url, [P])) as exp:
        assert value(exp.samples(), "bifrost_batch_exporter_last_success_timestamp_seconds", provider=P) == 0


def test_round_trip_restores_every_figure(tmp_path: Path) -> None:
    history = _history(tmp_path)
    led, restored = _load(tmp_path)
    assert restored.records == len(history) - 1 and restored.dropped_bytes == 0
    assert _canonical(led.to_state()) == history[-1][1]
    v = led.view()
    assert v.finished_total("failed") == 1 and v.failures[("failed", "e1", ())] == 1
    assert v.finished_total("completed") == 1 and v.last_failure["failed"].batch_id == "x"
    assert v.polls == 5 and v.requests["list"] == 2 + 3 + 4 + 5 + 6
    # The watermark: the last complete poll (T0 + 60), bounded by the gateway's newest timestamp (T0 + 40).
    assert led.started_at == T0 + 40
    # A restored process continues the same files: an append, and the state read back is the same again.
    journal = statefile.Journal(tmp_path, P)
    journal.attach(restored)
    led.poll_started()
    assert not _save(journal, led, T0 + 600).compaction
    again, _ = _load(tmp_path)
    assert _canonical(again.to_state()) == _canonical(led.to_state())


def test_a_journal_cut_at_every_byte_gives_the_last_complete_record(tmp_path: Path) -> None:
    """A kill -9 during an append leaves the journal cut anywhere: what is read back is exactly the state of the
    last record written whole (the last poll whose values were published), never a mix, never an error."""
    source = tmp_path / "source"
    history = _history(source)
    full = statefile.journal_path(source, P).read_bytes()
    target = tmp_path / "cut"
    shutil.copytree(source, target)
    for cut in range(len(full) + 1):
        statefile.journal_path(target, P).write_bytes(full[:cut])
        led, restored = _load(target)
        expected = [state for length, state in history if length <= cut]
        assert _canonical(led.to_state()) == (expected[-1] if expected else history[0][1]), cut
        assert restored.dropped_bytes == (cut - restored.journal_end if restored.journal_end else cut)


def test_a_journal_of_another_generation_is_not_applied(tmp_path: Path) -> None:
    """A compaction killed between its new base and its new journal: the old journal is already in the base."""
    history = _history(tmp_path)
    journal = statefile.journal_path(tmp_path, P)
    stale = journal.read_bytes()
    led, restored = _load(tmp_path)
    writer = statefile.Journal(tmp_path, P)
    writer.attach(restored)
    writer.compact_next()
    assert _save(writer, led, T0 + 700).compaction
    journal.write_bytes(stale)  # as if the rename of the new journal had not happened
    again, restored = _load(tmp_path)
    assert restored.records == 0
    assert _canonical(again.to_state()) == history[-1][1]


def _starts(state_dir: Path) -> Callable[[], tuple[Poller, list[MutableMapping[str, Any]]]]:
    """Starts of a poller on `state_dir` (the restore path of a real start), each giving what it logged; one
    client for all of them (building one is most of a start's cost, and none of the restore path)."""
    cfg = make_settings("http://127.0.0.1:9", [P], state_dir=state_dir)
    client = BifrostClient(cfg)

    def start() -> tuple[Poller, list[MutableMapping[str, Any]]]:
        with structlog.testing.capture_logs() as logs:
            poller = Poller(cfg, client)
        poller.close()
        return poller, logs

    return start


def _assert_fresh_start(poller: Poller, logs: list[MutableMapping[str, Any]], what: object) -> None:
    assert [e["event"] for e in logs if e["log_level"] != "info"] == ["state_unusable"], what
    state = poller.states[P]
    assert state.ledger.tracked_ids == 0 and state.ledger.polls == 0
    render([state], now=time.time(), stale_after=150, reasons=REASONS, per_batch=False)


def test_a_base_cut_or_flipped_at_every_byte_is_one_line_and_a_fresh_start(tmp_path: Path) -> None:
    """A base is written atomically, so only the disk can damage it: cut short or a byte changed anywhere, it is
    one `state_unusable` line and a ledger that polls and renders (the journal is not applied to nothing)."""
    _history(tmp_path / "source")
    good = statefile.base_path(tmp_path / "source", P).read_bytes()
    base = statefile.base_path(tmp_path, P)
    shutil.copy(statefile.journal_path(tmp_path / "source", P), statefile.journal_path(tmp_path, P))
    start = _starts(tmp_path)
    for cut in range(len(good)):
        base.write_bytes(good[:cut])
        _assert_fresh_start(*start(), cut)
    for at in range(len(good)):
        flipped = bytearray(good)
        flipped[at] ^= 0x20
        base.write_bytes(bytes(flipped))
        _assert_fresh_start(*start(), at)


def test_a_version_1_file_cut_at_every_byte_is_one_line_and_a_fresh_start(tmp_path: Path) -> None:
    data = V1_FILE.read_bytes()
    start = _starts(tmp_path)
    for cut in range(len(data.rstrip())):
        statefile.write(tmp_path, P, data[:cut])
        _assert_fresh_start(*start(), cut)


def _start_and_serve(sim: Simulator, state_dir: Path) -> list[MutableMapping[str, Any]]:
    with structlog.testing.capture_logs() as logs, _exporter(sim, state_dir) as exp:
        exp.poll()
        s = exp.samples()
        assert value(s, "bifrost_batch_exporter_up", provider=P) == 1
        assert exp.get("/healthz").status_code == 200
    return [e for e in logs if e.get("log_level") in ("warning", "error")]


def test_a_damaged_marker_beside_a_readable_base_keeps_the_state(sim: Simulator, tmp_path: Path) -> None:
    """ledger-P.json carries no data in version 2 (the base has its own header): a marker cut short or overwritten
    used to throw an intact base and journal away (a fresh start: transitions while down lost). Now one
    state_marker_unusable warning, the state as saved, and the marker written again by the next write."""
    source = tmp_path / "source"
    _history(source)
    intact, _ = _starts(source)()
    want = intact.states[P].ledger
    marker = statefile.state_path(source, P).read_bytes()
    for cut in (0, 1, len(marker) // 2, len(marker) - 1):
        state_dir = tmp_path / f"cut{cut}"
        shutil.copytree(source, state_dir)
        statefile.state_path(state_dir, P).write_bytes(marker[:cut])
        poller, logs = _starts(state_dir)()
        assert [e["event"] for e in logs if e["log_level"] != "info"] == ["state_marker_unusable"], (
            cut,
            logs,
        )
        got = poller.states[P].ledger
        assert (got.tracked_ids, got.polls, dict(got.finished)) == (
            want.tracked_ids,
            want.polls,
            dict(want.finished),
        )
    assert [e["event"] for e in _start_and_serve(sim, state_dir)] == ["state_marker_unusable"]
    assert (
        json.loads(statefile.state_path(state_dir, P).read_bytes())["version"] == statefile.LAYOUT_VERSION
    )  # rewritten
    assert _start_and_serve(sim, state_dir) == []


def test_damaged_state_then_serves_and_is_rewritten(sim: Simulator, tmp_path: Path) -> None:
    _history(tmp_path / "source")
    good = statefile.base_path(tmp_path / "source", P).read_bytes()
    for cut in (0, 1, len(good) // 2, len(good) - 1):
        statefile.base_path(tmp_path, P).write_bytes(good[:cut])
        problems = _start_and_serve(sim, tmp_path)
        unusable = [e for e in problems if e["event"] == "state_unusable"]
        assert len(unusable) == 1, (cut, problems)
        assert unusable[0]["setting"] == "state_dir"
        assert statefile.read(tmp_path, P) is not None  # the first poll wrote a whole new state


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    garbage=st.one_of(st.binary(max_size=300), st.from_type(dict).map(lambda d: json.dumps(d).encode())),
    where=st.sampled_from(["marker", "base"]),
)
def test_garbage_state_never_crashes(sim: Simulator, tmp_path: Path, garbage: bytes, where: str) -> None:
    for leftover in (statefile.base_path(tmp_path, P), statefile.journal_path(tmp_path, P)):
        leftover.unlink(missing_ok=True)
    if where == "marker":
        statefile.write(tmp_path, P, garbage)
    else:
        statefile.state_path(tmp_path, P).unlink(missing_ok=True)
        statefile.base_path(tmp_path, P).write_bytes(garbage)
    problems = _start_and_serve(sim, tmp_path)
    assert [e["event"] for e in problems] == ["state_unusable"]


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda d: {**d, "version": 0}, id="older-version"),
        pytest.param(lambda d: {**d, "version": "1"}, id="odd-version"),
        pytest.param(lambda d: {**d, "format": "something-else"}, id="foreign-format"),
        pytest.param(lambda d: {**d, "provider": "azure"}, id="other-provider"),
        pytest.param(lambda d: {**d, "ledger": {**d["ledger"], "ids": {"x": "NaN"}}}, id="nan-id"),
        pytest.param(lambda d: {**d, "ledger": {**d["ledger"], "polls": -1}}, id="negative-counter"),
        pytest.param(lambda d: {**d, "ledger": {**d["ledger"], "finished": [["failed"]]}}, id="short-row"),
    ],
)
def test_foreign_or_inconsistent_version_1_state_is_refused(
    sim: Simulator, tmp_path: Path, mutate: object
) -> None:
    doc = json.loads(V1_FILE.read_bytes())
    assert callable(mutate)
    statefile.write(tmp_path, P, json.dumps(mutate(doc)).encode())
    problems = _start_and_serve(sim, tmp_path)
    assert [e["event"] for e in problems] == ["state_unusable"]


def _rewrite_base_header(state_dir: Path, mutate: Any) -> None:
    base = statefile.base_path(state_dir, P)
    raw = base.read_bytes()
    first = 8 + int.from_bytes(raw[:4], "little")
    header = json.loads(raw[9:first])
    base.write_bytes(statefile.json_record(mutate(header)) + raw[first:])


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda h: {**h, "version": 1}, id="older-version"),
        pytest.param(lambda h: {**h, "format": "something-else"}, id="foreign-format"),
        pytest.param(lambda h: {**h, "provider": "azure"}, id="other-provider"),
        pytest.param(lambda h: {**h, "active": {"x": -3}}, id="negative-poll"),
        pytest.param(lambda h: {**h, "head": {**h["head"], "polls": -1}}, id="negative-counter"),
        pytest.param(lambda h: {**h, "head": {**h["head"], "finished": [["failed"]]}}, id="short-row"),
        pytest.param(lambda h: {**h, "generation": "1"}, id="odd-generation"),
    ],
)
def test_foreign_or_inconsistent_base_is_refused(sim: Simulator, tmp_path: Path, mutate: object) -> None:
    _history(tmp_path)
    statefile.journal_path(
        tmp_path, P
    ).unlink()  # the base alone (the journal's records rewrite ids and counters)
    _rewrite_base_header(tmp_path, mutate)
    problems = _start_and_serve(sim, tmp_path)
    assert [e["event"] for e in problems] == ["state_unusable"]


def test_a_settled_time_that_is_not_a_time_is_refused(sim: Simulator, tmp_path: Path) -> None:
    _history(tmp_path)
    journal = statefile.journal_path(tmp_path, P)
    with journal.open("ab") as f:
        f.write(statefile.json_record({"settled": [[12345, -1.0]]}))
    problems = _start_and_serve(sim, tmp_path)
    assert [e["event"] for e in problems] == ["state_unusable"]


def test_state_dir_that_is_a_file_cannot_be_written_and_says_so(sim: Simulator, tmp_path: Path) -> None:
    """Works as root too: a path below a regular file is not a directory for anyone."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with structlog.testing.capture_logs() as logs, _exporter(sim, blocker / "state") as exp:
        exp.poll()
        exp.poll()
        assert value(exp.samples(), "bifrost_batch_exporter_up", provider=P) == 1
    # Said once at start; without its lock the directory is not used at all, so no write is tried per poll.
    said = [e for e in logs if e["event"].startswith("state_")]
    assert [e["event"] for e in said] == ["state_dir_unusable"]
    assert said[0]["setting"] == "state_dir" and said[0]["consequence"] == "serving on without durable state"


# ---- format version 1 ------------------------------------------------------------------------------------------


def test_a_version_1_file_is_read_migrated_and_counts_stay_once(tmp_path: Path) -> None:
    """The file a version-1 exporter wrote (tests/data, written by that release): its counters resume, its
    counted batches are not counted again, its active ones count when they finish, and the first write turns the
    directory into version 2, leaving a marker a version-1 exporter refuses as newer."""
    statefile.write(tmp_path, P, V1_FILE.read_bytes())
    with Simulator(providers=[ProviderSpec(P)], lifecycle=False) as sim:
        # As the gateway shows them now: counted before (failed_1, done_1), active before and now finished
        # (active_1), and never seen, finished after the version-1 watermark (fresh).
        sim.add_batch(
            P, batch_id="batch_failed_1", status="failed", created_at=int(T0) - 900, failed_at=int(T0) + 60,
            error_code="token_limit_exceeded",
        )  # fmt: skip
        sim.add_batch(
            P,
            batch_id="batch_done_1",
            status="completed",
            created_at=int(T0) - 900,
            completed_at=int(T0) + 70,
        )
        sim.add_batch(
            P, batch_id="batch_active_1", status="completed", created_at=int(T0) - 600,
            completed_at=int(T0) - 5000,  # a gateway clock that disagrees: seen active, so counted anyway
        )  # fmt: skip
        sim.add_batch(P, batch_id="fresh", status="expired", created_at=int(T0), expired_at=int(T0) + 90)
        cfg = make_settings(sim.url, [P], state_dir=tmp_path, stale_after_seconds=10**9)
        with structlog.testing.capture_logs() as logs, ExporterThread(cfg, clock=lambda: T0 + 200) as exp:
            exp.poll()
            after = exp.samples()
        restored = [e for e in logs if e["event"] == "state_restored"]
        assert restored and restored[0]["migrated_from_version_1"] is True
        assert value(after, "bifrost_batch_exporter_requests_total", provider=P, endpoint="list") == 3 + 1
        assert value(after, "bifrost_batch_finished_total", provider=P, status="failed") == 1
        # A version-1 file has no success time, so nothing was shown before this first poll; what it counts above
        # the restored totals is shown at them for a minute first (a status first counted now at 0), as after any
        # restart: active_1's end is counted, shown at the restored 1 first.
        assert value(after, "bifrost_batch_finished_total", provider=P, status="completed") == 1
        assert value(after, "bifrost_batch_finished_total", provider=P, status="expired") == 0
        counted = exp.exporter.poller.states[P].ledger.finished
        assert (counted[("completed", ())], counted[("expired", ())]) == (2, 1)
        assert value(after, "bifrost_batch_exporter_polls_total", provider=P) == 1
        marker = json.loads(statefile.state_path(tmp_path, P).read_bytes())
        assert marker["version"] == 2 and "ledger" not in marker
        # Restarted: version 2 read back, nothing counted again.
        with ExporterThread(cfg, clock=lambda: T0 + 300) as exp:
            exp.poll()
            again = exp.samples()
            counted = exp.exporter.poller.states[P].ledger.finished
        for status, n in (("failed", 1), ("completed", 2), ("expired", 1)):
            assert counted[(status, ())] == n
        # Restarted within the hold: still shown at what the first process showed (the restored state says so).
        for status, n in (("failed", 1), ("completed", 1), ("expired", 0)):
            assert value(again, "bifrost_batch_finished_total", provider=P, status=status) == n

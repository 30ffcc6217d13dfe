"""The durable ledger: counters resume across restarts, transitions while down count once, and a damaged state
file (truncated at any byte, garbage, another version, unwritable) is one log line and a v1 start, never a crash."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, MutableMapping
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
from exporter.poller import Poller
from exporter.render import render
from exporter.settings import DEFAULT_DURATION_BUCKETS, DEFAULT_LATENCY_BUCKETS
from exporter.simulator import ProviderSpec, Simulator
from tests.harness import ExporterThread, make_settings, series, value

P = "openai"


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


def test_counters_resume_and_a_transition_while_down_counts_once(sim: Simulator, tmp_path: Path) -> None:
    now = time.time()
    sim.add_batch(P, batch_id="a", status="in_progress", created_at=int(now) - 100)
    with _exporter(sim, tmp_path) as exp:
        exp.poll()
        _fail(sim, "b", "token_limit_exceeded", now + 1)  # fails while we run
        exp.poll()
        before = exp.samples()
    assert value(before, "bifrost_batch_finished_total", provider=P, status="failed") == 1
    assert statefile.state_path(tmp_path, P).is_file()
    # Down: "a" fails (seen active before) and "c" is created and fails (never seen), both after the last poll.
    sim.set_status(P, "a", "failed")
    _fail(sim, "c", "invalid_json_line", time.time() + 2)
    with _exporter(sim, tmp_path) as exp:
        exp.poll()
        exp.poll()
        after = exp.samples()
    assert value(after, "bifrost_batch_finished_total", provider=P, status="failed") == 3
    codes = {
        lbl["code"]: v
        for lbl, v in series(after, "bifrost_batch_failures_total", provider=P, status="failed")
    }
    assert codes["token_limit_exceeded"] == 1  # counted before the stop, resumed, not counted again
    assert codes["invalid_json_line"] >= 1  # "c" (and "a" when the simulator gives it that code)
    assert sum(codes.values()) == 3  # one code each
    # requests of the counted transitions resume too: "b" and "c" each 4 succeeded + 6 failed
    outcome = {
        lbl["outcome"]: v
        for lbl, v in series(after, "bifrost_batch_finished_requests_total", provider=P, status="failed")
    }
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


def _valid_state_bytes(tmp_path: Path) -> bytes:
    led = Ledger(1_800_000_000.0, DEFAULT_DURATION_BUCKETS, DEFAULT_LATENCY_BUCKETS, REASONS)
    led.observe(
        [
            Batch.model_validate({"id": "x", "status": "in_progress", "created_at": 1_799_999_000}),
            Batch.model_validate(
                {
                    "id": "y",
                    "status": "failed",
                    "failed_at": 1_800_000_100,
                    "errors": {"data": [{"code": "e1"}]},
                }
            ),
        ],
        1_800_000_200.0,
        complete=True,
    )
    return statefile.encode(P, led.to_state(), 1_800_000_300.0)


def test_round_trip_restores_every_figure(tmp_path: Path) -> None:
    data = _valid_state_bytes(tmp_path)
    statefile.write(tmp_path, P, data)
    loaded = statefile.read(tmp_path, P)
    assert loaded is not None
    led = Ledger(1_800_000_500.0, DEFAULT_DURATION_BUCKETS, DEFAULT_LATENCY_BUCKETS, REASONS)
    assert led.load_state(loaded) == []
    v = led.view()
    assert v.finished_total("failed") == 1 and v.failures[("failed", "e1", ())] == 1
    assert v.last_failure["failed"].batch_id == "y" and v.tracked_ids == 2
    # The last complete poll before the stop, or the gateway's newest timestamp when that is earlier (a host clock
    # stepped ahead cannot move the watermark past what the gateway had shown).
    assert led.started_at == 1_800_000_100.0
    # the restored process writes the same state back
    assert json.loads(statefile.encode(P, led.to_state(), 1_800_000_300.0)) == json.loads(data)


def _start_and_serve(sim: Simulator, state_dir: Path) -> list[MutableMapping[str, Any]]:
    with structlog.testing.capture_logs() as logs, _exporter(sim, state_dir) as exp:
        exp.poll()
        s = exp.samples()
        assert value(s, "bifrost_batch_exporter_up", provider=P) == 1
        assert exp.get("/healthz").status_code == 200
    return [e for e in logs if e.get("log_level") in ("warning", "error")]


def test_truncated_at_every_byte_is_one_line_and_a_fresh_start(tmp_path: Path) -> None:
    """Every prefix of a valid file (a kill -9 mid-write without the atomic rename would leave one): the restore
    path logs exactly one line and leaves a ledger that polls and renders."""
    data = _valid_state_bytes(tmp_path)
    cfg = make_settings("http://127.0.0.1:9", [P], state_dir=tmp_path)
    for cut in range(len(data)):
        statefile.write(tmp_path, P, data[:cut])
        with structlog.testing.capture_logs() as logs:
            poller = Poller(cfg, BifrostClient(cfg))
        poller.close()
        assert [e["event"] for e in logs if e["log_level"] != "info"] == ["state_unusable"], cut
        state = poller.states[P]
        assert state.ledger.tracked_ids == 0 and state.ledger.polls == 0
        render([state], now=time.time(), stale_after=150, reasons=REASONS, per_batch=False)


def test_truncated_state_then_serves(sim: Simulator, tmp_path: Path) -> None:
    data = _valid_state_bytes(tmp_path)
    for cut in (0, 1, len(data) // 2, len(data) - 1):
        statefile.write(tmp_path, P, data[:cut])
        problems = _start_and_serve(sim, tmp_path)
        unusable = [e for e in problems if e["event"] == "state_unusable"]
        assert len(unusable) == 1, (cut, problems)
        assert unusable[0]["setting"] == "state_dir"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.one_of(st.binary(max_size=300), st.from_type(dict).map(lambda d: json.dumps(d).encode())))
def test_garbage_state_never_crashes(sim: Simulator, tmp_path: Path, garbage: bytes) -> None:
    statefile.write(tmp_path, P, garbage)
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
def test_foreign_or_inconsistent_state_is_refused(sim: Simulator, tmp_path: Path, mutate: object) -> None:
    doc = json.loads(_valid_state_bytes(tmp_path))
    assert callable(mutate)
    statefile.write(tmp_path, P, json.dumps(mutate(doc)).encode())
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
    writes = [e for e in logs if e["event"].startswith("state_write")]
    assert [e["event"] for e in writes] == ["state_write_failed"]
    assert writes[0]["setting"] == "state_dir"

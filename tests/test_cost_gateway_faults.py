"""The cost ledger against a logs API that misbehaves: over real HTTP, a scripted gateway, the real exporter.

One batch finishes; its settlement row is whatever the test says, or the logs route is not there at all. What must
hold: a row no UTF-8 encoder takes (a lone surrogate in the model) or a number no float holds never breaks a poll
or a scrape; a route that is missing (a bare 404, a proxy's login page) is a failing look-up, never a settlement
counted `missing`; one unreadable row is that row's fault, not a failing logs API (`cost_up` stays 1), and is counted
`unpriced` (a row, no cost read) at the horizon.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.cost import settlement_id
from tests.harness import ExporterThread, make_settings
from tests.test_client import Gateway, Seen

T0 = 1_700_000_000.0
BID = "batch_cost_fault_1"
HORIZON = 3600


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Scene:
    """One openai batch that finishes at T0+600; its settlement row is `row` (LOGID stands for the row's id), or
    `logs` answers every look-up when set (a route that is not the gateway's)."""

    def __init__(self, clock: Clock, row: bytes = b"", logs: Any = None) -> None:
        self.clock = clock
        self.row = row
        self.logs = logs
        self.looked = 0

    def route(self, seen: Seen) -> Any:
        if seen.path.startswith("/api/logs/"):
            self.looked += 1
            if self.logs is not None:
                return self.logs
            if seen.path.endswith(settlement_id("openai", BID)):
                return (200, self.row.replace(b"LOGID", settlement_id("openai", BID).encode()))
            return (404, {"is_bifrost_error": False, "status_code": 404, "error": {"message": "not found"}})
        done = self.clock.now >= T0 + 600
        item: dict[str, Any] = {
            "id": BID,
            "object": "batch",
            "status": "completed" if done else "in_progress",
            "created_at": int(T0),
            "request_counts": {"total": 10, "completed": 10 if done else 0, "failed": 0},
        }
        if done:
            item["completed_at"] = int(T0 + 600)
        return (200, {"object": "list", "data": [item], "has_more": False})


@pytest.fixture
def clock() -> Clock:
    return Clock()


def exporter(scene: Scene, **kw: Any) -> Iterator[ExporterThread]:
    serving = Gateway(scene.route).serve()
    url = next(serving)
    settings = make_settings(
        url, ["openai"], cost_metrics=True, bearer_token="admin", poll_mode="full",
        cost_horizon_seconds=HORIZON, **kw,
    )  # fmt: skip
    with ExporterThread(settings, clock=scene.clock) as exp:
        yield exp
    for _ in serving:
        pass


def until(scene: Scene, exp: ExporterThread, end: float) -> list[float]:
    """Polls a minute apart up to `end`; cost_up after each."""
    ups = []
    while scene.clock.now < end:
        scene.clock.now += 60
        exp.poll()
        ups.append(next(v for k, v in exp.samples().items() if k[0] == "bifrost_batch_exporter_cost_up"))
    return ups


def settlements(exp: ExporterThread) -> dict[str, float]:
    return {
        dict(labels)["result"]: v
        for (name, labels), v in exp.samples().items()
        if name == "bifrost_batch_settlements_total"
    }


def test_a_model_no_encoder_takes_is_cleaned_and_the_scrape_renders_also_after_a_restart(
    clock: Clock, tmp_path: Path
) -> None:
    """JSON lets a lone surrogate through (`\\ud800`): as a label it failed every render of /metrics, and the state
    brought it back after a restart."""
    scene = Scene(clock, b'{"id": "LOGID", "cost": 1.5, "model": "gpt-\\ud800-x"}')
    for exp in exporter(scene, state_dir=tmp_path):
        exp.poll()
        until(scene, exp, T0 + 1800)
        response = exp.get()
        assert response.status_code == 200
        assert 'bifrost_batch_cost_dollars_total{model="gpt-?-x",provider="openai"} 1.5' in response.text
    for exp in exporter(scene, state_dir=tmp_path):  # restarted: the counters come back from the state
        exp.poll()
        response = exp.get()
        assert response.status_code == 200
        assert 'bifrost_batch_cost_dollars_total{model="gpt-?-x",provider="openai"} 1.5' in response.text


def test_a_number_no_float_holds_is_an_unreadable_row_not_a_crashed_poll(clock: Clock) -> None:
    """A 400-digit cost: float() overflowed, the poll raised, and the batch, already off the schedule, was never
    looked up again. Now it is an unreadable row: looked up again after a gap, `unpriced` at the horizon."""
    scene = Scene(clock, b'{"id": "LOGID", "cost": 1' + b"0" * 400 + b', "model": "gpt-4o-mini"}')
    for exp in exporter(scene):
        exp.poll()
        ups = until(scene, exp, T0 + 600 + HORIZON + 3600)
        assert set(ups) == {1.0}
        assert scene.looked >= 2
        assert settlements(exp) == {"priced": 0, "unpriced": 1, "missing": 0}


@pytest.mark.parametrize(
    "reply",
    [
        (404, b"404 page not found", {"Content-Type": "text/plain"}),
        (200, b"<html>sign in</html>", {"Content-Type": "text/html"}),
    ],
    ids=["bare-404", "html-login-page"],
)
def test_no_settlement_is_counted_missing_while_the_logs_route_is_not_there(clock: Clock, reply: Any) -> None:
    """A route the ingress does not pass (a bare 404) or a proxy's login page says nothing about any row: look-ups
    fail (cost_up 0) and stay due, however long it lasts; a day of costs is not written off as `missing`."""
    scene = Scene(clock, logs=reply)
    for exp in exporter(scene):
        exp.poll()
        ups = until(scene, exp, T0 + 600 + 3 * HORIZON)
        assert ups[-1] == 0.0
        assert settlements(exp) == {"priced": 0, "unpriced": 0, "missing": 0}
        scene.logs = None
        scene.row = b'{"id": "LOGID", "cost": 0.25, "model": "gpt-4o-mini"}'
        until(scene, exp, scene.clock.now + 120)
        assert settlements(exp) == {"priced": 1, "unpriced": 0, "missing": 0}


def test_one_unreadable_row_is_not_a_failing_logs_api(clock: Clock) -> None:
    """cost_up is 0 on auth, connection or server errors (metrics contract): a row whose cost is a string is that
    row's fault; it exists, so at the horizon it is `unpriced`, not `missing` (which says no row was written)."""
    scene = Scene(clock, b'{"id": "LOGID", "cost": "1.5", "model": "gpt-4o-mini"}')
    for exp in exporter(scene):
        exp.poll()
        ups = until(scene, exp, T0 + 600 + HORIZON + 3600)
        assert set(ups) == {1.0}
        assert settlements(exp) == {"priced": 0, "unpriced": 1, "missing": 0}

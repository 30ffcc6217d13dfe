"""The settlement ledger (exporter/cost.py) on its own: when it looks, what a row means, what it counts, what it saves.

The gateway's side is the project's simulator (exporter/simulator/accounting.py, itself checked against Bifrost's
source in tests/test_simulator_accounting.py): the sweeper timing, which batches get a row and the row shapes are
read from it over real HTTP, not restated here.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest

from exporter.client import BifrostClient, Failure, LogResult
from exporter.cost import (
    ABSENT_GAPS,
    MAX_MODELS,
    OTHER_MODEL,
    UNPRICED_GAPS,
    CostLedger,
    Row,
    expectation,
    lookup_allowance,
    parse_row,
    settle,
    settled_by,
    settlement_id,
)
from exporter.models import Batch, InvalidResponseError, parse_page
from exporter.settings import Settings
from exporter.simulator import Accounting, Simulator
from tests.harness import ExporterThread, make_settings, series, value
from tests.test_client import FakeClock, Gateway, Reply, Route
from tests.test_simulator_accounting import LOGIN, MINI, PROVIDERS, T0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Lines:
    """Log lines a ledger emitted, by event name."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def _add(self, level: str, event: str, kw: dict[str, Any]) -> None:
        self.events.append((level, event, kw))

    def debug(self, event: str, **kw: Any) -> None:
        self._add("debug", event, kw)

    def info(self, event: str, **kw: Any) -> None:
        self._add("info", event, kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._add("warning", event, kw)

    def named(self, event: str) -> list[dict[str, Any]]:
        return [kw for _, e, kw in self.events if e == event]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sim(clock: Clock) -> Iterator[Simulator]:
    with Simulator(
        providers=PROVIDERS, lifecycle=False, clock=clock, accounting=Accounting(), basic_auth=LOGIN
    ) as s:
        yield s


def listed(sim: Simulator, provider: str, batch_id: str) -> Batch:
    """The batch as the gateway's list shows it, parsed by the exporter's own model."""
    params = {"provider": provider} if provider == "gigachat" else {"provider": provider, "limit": "100"}
    body = httpx.get(f"{sim.url}/v1/batches", params=params, auth=LOGIN).content
    return next(b for b in parse_page(body).batches if b.id == batch_id)


def row_body(sim: Simulator, provider: str, batch_id: str) -> bytes | None:
    r = httpx.get(f"{sim.url}/api/logs/{settlement_id(provider, batch_id)}", auth=LOGIN)
    return None if r.status_code == 404 else r.content


def batch(bid: str = "b1", status: str = "completed", created: float | None = T0, **counts: int) -> Batch:
    doc: dict[str, Any] = {"id": bid, "status": status, "created_at": created}
    if counts:
        doc["request_counts"] = counts
    return Batch.model_validate(doc)


def row(dollars: float | None = 1.5, model: str = MINI, prompt: int = 100, completion: int = 10) -> Row:
    return Row(dollars, model, prompt, completion, 3)


def ledger(clock: Clock, **kw: Any) -> CostLedger:
    kw.setdefault("hold_seconds", 0.0)
    return CostLedger("openai", clock=clock, log=kw.pop("log", Lines()), **kw)


def drain(costs: CostLedger, now: float) -> list[str]:
    out = []
    while (bid := costs.next_due(now)) is not None:
        out.append(bid)
    return out


# ---- when the sweeper settles, and which batches it settles -------------------------------------------------------


def test_the_row_id_is_the_gateways() -> None:
    assert settlement_id("openai", "batch_abc") == Simulator.settlement_id("openai", "batch_abc")


@pytest.mark.parametrize("age", [10, 59, 61, 100, 290, 600, 3000, 3 * 3600, 12 * 3600, 23 * 3600])
def test_the_first_look_up_comes_after_the_sweeper_settled_and_within_one_of_its_gaps(
    sim: Simulator, clock: Clock, age: int
) -> None:
    """settled_by() is an upper bound of when Bifrost's sweeper (backoff and jitter as in its source) writes the
    row, and not a loose one: within the sweeper's current gap, its jitter and one sweep tick of it."""
    bid = sim.add_batch(
        "openai", status="in_progress", created_at=int(T0), request_counts={"total": 4, "completed": 4}
    )["id"]
    sim.set_status("openai", bid, "completed", at=int(T0 + age))
    bound = settled_by(T0, T0 + age)
    assert bound is not None
    clock.now = bound
    sim.tick()
    settled = sim.accounting_truth().settlement("openai", bid)
    assert settled is not None, f"not settled by {bound - T0 - age:.0f} s after the end"
    assert settled.timestamp <= bound
    gap = 900.0 if age > 6 * 3600 else 300.0 if age > 1800 else 120.0
    assert bound - max(settled.timestamp, T0 + age) <= gap + 60 + 60


def test_a_batch_older_than_the_sweepers_patience_is_only_maybe_settled(sim: Simulator, clock: Clock) -> None:
    bid = sim.add_batch(
        "openai", status="in_progress", created_at=int(T0), request_counts={"total": 4, "completed": 4}
    )["id"]
    sim.set_status("openai", bid, "completed", at=int(T0 + 27 * 3600))
    assert settled_by(T0, T0 + 27 * 3600) is None
    clock.now = T0 + 30 * 3600
    sim.tick()
    assert sim.accounting_truth().settlement("openai", bid) is None  # the sweeper gave up after 120 checks


def test_without_a_creation_time_the_oldest_gap_is_assumed() -> None:
    bound = settled_by(None, T0)
    assert bound is not None and bound - T0 >= 900 + 60


@pytest.mark.parametrize(
    ("provider", "status", "counts", "expected"),
    [
        ("openai", "completed", {"total": 10, "completed": 9, "failed": 1}, "settles"),
        ("anthropic", "ended", None, "settles"),
        ("openai", "expired", {"total": 10, "completed": 6, "failed": 0}, "settles"),
        ("openai", "expired", {"total": 10, "completed": 0, "failed": 0}, None),
        ("openai", "cancelled", {"total": 10, "completed": 5, "failed": 0}, "settles"),
        ("openai", "failed", {"total": 10, "completed": 2, "failed": 8}, "maybe"),
        ("bedrock", "failed", {"total": 10, "completed": 2, "failed": 8}, "maybe"),  # list items: counts of 0
        ("gemini", "failed", {"total": 10, "completed": 2, "failed": 8}, "maybe"),
        ("azure", "completed", {"total": 10, "completed": 10, "failed": 0}, "settles"),
        ("azure", "canceled", {"total": 10, "completed": 5, "failed": 0}, None),
        ("gigachat", "completed", {"total": 10, "completed": 10, "failed": 0}, None),
        ("openrouter", "completed", {"total": 10, "completed": 10, "failed": 0}, None),
        ("openai", "completed", {"total": 10, "completed": 0, "failed": 10}, None),
    ],
)
def test_which_batches_are_awaited_matches_which_the_gateway_settles(
    sim: Simulator,
    clock: Clock,
    provider: str,
    status: str,
    counts: dict[str, int] | None,
    expected: str | None,
) -> None:
    """Awaited ("settles") only where the gateway writes a row, never awaited where it never does; "maybe" is one
    look-up where the batch object cannot tell (a failed batch's output file)."""
    bid = sim.add_batch(provider, status=status, created_at=int(T0) - 600, request_counts=counts)["id"]
    seen = listed(sim, provider, bid)
    got = expectation(provider, seen, seen.normalized_status)
    assert got == expected
    clock.now = T0 + 6 * 3600
    sim.tick()
    settles = sim.accounting_truth().settlement(provider, bid) is not None
    if got == "settles":
        assert settles
    if got is None:
        assert not settles


def test_a_measured_failed_bedrock_batch_is_awaited() -> None:
    """Bedrock keeps the output of a failed job; with counts measured (its retrieve object) the row is certain."""
    failed = batch(status="failed", total=10, completed=2, failed=8)
    assert expectation("bedrock", failed, "failed") == "settles"
    assert expectation("openai", failed, "failed") == "maybe"
    assert expectation("bedrock", batch(status="failed", total=10, completed=0, failed=10), "failed") is None


def test_a_poll_always_leaves_room_for_some_look_ups() -> None:
    assert lookup_allowance(150, 40) == 110
    assert lookup_allowance(150, 1000) == 15  # a full list beyond the budget still leaves a tenth
    assert lookup_allowance(1, 5) == 1


# ---- what a row says ----------------------------------------------------------------------------------------------


def test_a_priced_row(sim: Simulator, clock: Clock) -> None:
    bid = sim.add_batch(
        "openai", status="completed", request_counts={"total": 5, "completed": 4}, models=(MINI,)
    )["id"]
    clock.now = T0 + 600
    body = row_body(sim, "openai", bid)
    assert body is not None
    got = parse_row(settlement_id("openai", bid))(body)
    truth = sim.accounting_truth().settlement("openai", bid)
    assert truth is not None
    assert got == Row(truth.cost, MINI, truth.prompt_tokens, truth.completion_tokens, 4)


@pytest.mark.parametrize("null_cost", ["omitted", "null"])
def test_an_unknown_cost_then_a_filled_one(clock: Clock, null_cost: Any) -> None:
    """Absent (logstore's omitempty) or null: not priced. A backfill fills the cost; `incomplete` stays true."""
    with Simulator(
        providers=PROVIDERS[:1],
        lifecycle=False,
        clock=clock,
        accounting=Accounting(null_cost=null_cost),
        basic_auth=LOGIN,
    ) as s:
        bid = s.add_batch("openai", status="completed", models=("model-x",))["id"]
        clock.now = T0 + 600
        parse = parse_row(settlement_id("openai", bid))
        body = row_body(s, "openai", bid)
        assert body is not None
        first = parse(body)
        assert first.dollars is None and first.model == "model-x" and first.prompt > 0
        s.set_price("model-x", 1e-6, 2e-6)
        assert s.recalculate() == 1
        body = row_body(s, "openai", bid)
        assert body is not None and json.loads(body)["batch_debug"]["accounting"]["incomplete"] is True
        filled = parse(body)
        assert filled.dollars == pytest.approx(first.prompt * 1e-6 + first.completion * 2e-6)


def test_a_partly_priced_row_of_gateways_that_write_the_known_part(clock: Clock) -> None:
    """`incomplete` with a number: the number is the priced models' part only, so not priced while a model's
    breakdown has no cost."""
    with Simulator(
        providers=PROVIDERS[:1],
        lifecycle=False,
        clock=clock,
        accounting=Accounting(incomplete_cost="number"),
        basic_auth=LOGIN,
    ) as s:
        bid = s.add_batch("openai", status="completed", models=(MINI, "model-x"))["id"]
        clock.now = T0 + 600
        body = row_body(s, "openai", bid)
        assert body is not None and json.loads(body)["cost"] > 0
        got = parse_row(settlement_id("openai", bid))(body)
        assert got.dollars is None and got.model == "mixed"


def test_an_echo_row_or_another_row_is_never_a_settlement(sim: Simulator, clock: Clock) -> None:
    bid = sim.add_batch("anthropic", status="ended", created_at=int(T0))["id"]
    httpx.get(f"{sim.url}/v1/batches/{bid}/results", params={"provider": "anthropic"}, auth=LOGIN)
    (echo_id,) = sim.accounting_truth().echo_ids
    echo = httpx.get(f"{sim.url}/api/logs/{echo_id}", auth=LOGIN).content
    with pytest.raises(InvalidResponseError, match="echo"):
        parse_row(echo_id)(echo)
    settled = row_body(sim, "anthropic", bid)
    assert settled is not None
    with pytest.raises(InvalidResponseError, match="another log row"):
        parse_row(settlement_id("anthropic", "some-other-batch"))(settled)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"id": "X", "cost": "12"}',
        b'{"id": "X", "cost": -1}',
        b'{"id": "X", "cost": 1e12}',
        b'{"id": "X", "cost": true}',
        b'{"id": "X", "cost": 1, "token_usage": {"prompt_tokens": -5}}',
        b'{"id": "X", "cost": 1, "token_usage": {"prompt_tokens": 1e16}}',
    ],
)
def test_garbage_rows_are_invalid_responses(body: bytes) -> None:
    with pytest.raises(InvalidResponseError):
        parse_row("X")(body)


def test_a_row_without_usage_or_model_still_counts_its_cost() -> None:
    got = parse_row("X")(b'{"id": "X", "cost": 0.25, "model": ""}')
    assert got == Row(0.25, "unknown", 0, 0, 0)


# ---- what the ledger counts ----------------------------------------------------------------------------------------


def test_a_settled_batch_is_looked_up_once_and_counted_once(clock: Clock) -> None:
    costs = ledger(clock)
    costs.finished(batch(status="completed", total=5, completed=5), "completed", T0, ("",) * 0)
    due_at = settled_by(T0, T0)
    assert due_at is not None
    assert drain(costs, due_at) == []  # nothing before the sweeper can have settled it
    (bid,) = drain(costs, due_at + 60)
    costs.answered(bid, row(2.5), due_at + 60)
    view = costs.view()
    assert view.settlements_total("priced") == 1
    assert view.dollars_total(MINI) == 2.5
    assert view.tokens[(MINI, "prompt", ())] == 100 and view.tokens[(MINI, "completion", ())] == 10
    assert view.requests[(MINI, ())] == 3
    assert costs.awaiting() == []
    costs.answered(bid, row(9.0), due_at + 120)  # a second answer (a re-priced row) for a counted id
    assert costs.view().dollars_total() == 2.5
    costs.finished(batch(status="completed", total=5, completed=5), "completed", T0, ())
    assert costs.awaiting() == ["b1"]  # the batch ledger counts each id once; a repeat would be awaited anew


def test_another_gateways_awaited_settlements_are_dropped_with_no_result(clock: Clock) -> None:
    """A state restored for another bifrost_url (durable.restore): its batches are not in this gateway's logs, so
    they are no longer looked up nor counted missing at their horizon (a false BifrostBatchCostSettlementsMissing),
    and the journal records them removed."""
    costs = ledger(clock, horizon_seconds=3600.0)
    costs.finished(batch(bid="b1"), "completed", T0, ())
    costs.finished(batch(bid="b2"), "completed", T0, ())
    costs.mark_saved()
    assert costs.forget_awaited() == 2
    assert costs.awaiting() == [] and costs.next_at() is None
    assert costs.delta()["removed"] == ["b1", "b2"]
    assert drain(costs, T0 + 7200) == []
    assert all(n == 0 for n in costs.view().settlements.values())


def test_not_settled_yet_is_looked_for_at_widening_gaps_then_missing_at_the_horizon(clock: Clock) -> None:
    horizon = 86400.0
    costs = ledger(clock, horizon_seconds=horizon)
    costs.finished(batch(), "completed", T0, ())
    now = T0
    looks = []
    while (at := costs.next_at()) is not None:
        now = at
        (bid,) = drain(costs, now)
        looks.append(now)
        costs.answered(bid, None, now)
    gaps = [b - a for a, b in itertools.pairwise(looks)]
    assert gaps[: len(ABSENT_GAPS)] == list(ABSENT_GAPS)
    assert max(gaps) == ABSENT_GAPS[-1]
    assert looks[-1] == T0 + horizon
    assert len(looks) <= 14
    view = costs.view()
    assert view.settlements_total("missing") == 1 and view.settlements_total("priced") == 0
    assert view.dollars == {}


def test_a_cost_that_appears_within_the_horizon_counts_once_as_priced(clock: Clock) -> None:
    costs = ledger(clock)
    costs.finished(batch(), "completed", T0, ())
    (bid,) = drain(costs, T0 + 600)
    costs.answered(bid, row(None), T0 + 600)
    assert costs.view().awaited == {"row": 0, "cost": 1}
    assert costs.view().settlements_total("unpriced") == 0  # not yet a result: the cost may still come
    assert drain(costs, T0 + 600 + UNPRICED_GAPS[0] - 1) == []
    (bid,) = drain(costs, T0 + 600 + UNPRICED_GAPS[0])
    costs.answered(bid, row(4.0), T0 + 600 + UNPRICED_GAPS[0])
    view = costs.view()
    assert (view.settlements_total("priced"), view.settlements_total("unpriced")) == (1, 0)
    assert view.dollars_total() == 4.0


def test_no_cost_by_the_horizon_counts_unpriced_with_tokens_and_no_dollars(clock: Clock) -> None:
    costs = ledger(clock, horizon_seconds=3600)
    costs.finished(batch(), "completed", T0, ())
    for _ in range(10):
        at = costs.next_at()
        if at is None:
            break
        (bid,) = drain(costs, at)
        costs.answered(bid, row(None), at)
    view = costs.view()
    assert view.settlements_total("unpriced") == 1
    assert view.dollars_total() == 0.0
    assert view.tokens[(MINI, "prompt", ())] == 100


def test_requests_count_with_their_dollars_so_a_cost_per_request_is_the_priced_ones(clock: Clock) -> None:
    """settled_requests_total is the divisor of a cost per request (README, dashboard): an `unpriced` settlement
    adds its tokens but no dollars, so its requests are not added either — else a model's unit price reads low, and
    $0 for a model the catalog never priced."""
    costs = ledger(clock, horizon_seconds=3600.0)
    for bid in ("priced", "unpriced", "never_priced"):
        costs.finished(batch(bid), "completed", T0, ())
    costs.answered("priced", Row(1.0, MINI, 1000, 100, 100), T0 + 600)
    costs.answered("unpriced", Row(None, MINI, 1000, 100, 100), T0 + 3601)
    costs.answered("never_priced", Row(None, "model-x", 500, 50, 40), T0 + 3601)
    view = costs.view()
    assert (view.settlements_total("priced"), view.settlements_total("unpriced")) == (1, 2)
    assert 1000 * view.dollars[(MINI, ())] / view.requests[(MINI, ())] == 10.0
    assert view.requests[("model-x", ())] == 0 and view.dollars[("model-x", ())] == 0.0
    assert view.tokens[(MINI, "prompt", ())] == 2000 and view.tokens[("model-x", "prompt", ())] == 500


def _until_the_horizon(costs: CostLedger, rows: dict[str, tuple[float, Row]]) -> dict[str, int]:
    """Every look-up of `costs` answered, up to the last one: `rows[id]` is (written at, row), else a 404.
    Returns the look-ups per batch id."""
    looks: dict[str, int] = {}
    while (at := costs.next_at()) is not None:
        for bid in drain(costs, at):
            looks[bid] = looks.get(bid, 0) + 1
            written = rows.get(bid)
            costs.answered(bid, written[1] if written is not None and written[0] <= at else None, at)
    return looks


def test_a_kind_settled_only_sometimes_counts_when_its_row_comes_and_gets_no_result_without_one(
    clock: Clock,
) -> None:
    """A failed batch outside Bedrock is settled when its output was kept, or by a /results call hours later: it is
    looked for up to the horizon, as any other. No row by then is no result (not `missing`: most never get one)."""
    costs = ledger(clock, horizon_seconds=86400.0)
    for bid in ("fetched", "never"):
        costs.finished(batch(bid, status="failed", total=10, completed=2, failed=8), "failed", T0, ())
    looks = _until_the_horizon(costs, {"fetched": (T0 + 5 * 3600, row(1.0))})
    view = costs.view()
    assert costs.awaiting() == []
    assert (view.settlements_total("priced"), view.settlements_total("missing")) == (1, 0)
    assert view.settlements_total("unpriced") == 0 and view.dollars_total() == 1.0
    assert looks["never"] <= 13  # the bound the module docstring and the README state


def test_past_the_sweepers_patience_a_row_written_later_counts_and_none_by_the_horizon_is_missing(
    clock: Clock,
) -> None:
    """After 120 checks (about a day) the sweeper gives up; only a /results call settles the batch, often long
    after its end. The row it writes counts; a batch nobody fetches is an honest `missing` at the horizon."""
    costs = ledger(clock, horizon_seconds=86400.0)
    end = clock.now = T0 + 30 * 3600
    assert settled_by(T0, end) is None
    for bid in ("fetched", "never"):
        costs.finished(batch(bid, total=10, completed=10), "completed", end, ())
    looks = _until_the_horizon(costs, {"fetched": (end + 3 * 3600, row(12.5))})
    view = costs.view()
    assert (view.settlements_total("priced"), view.settlements_total("missing")) == (1, 1)
    assert view.dollars_total() == 12.5
    assert looks["never"] <= 13


def test_past_the_sweepers_patience_and_settled_only_sometimes_stay_apart_across_a_restart(
    clock: Clock,
) -> None:
    """The state says which awaited batch is `missing` without a row and which gets no result."""
    costs = ledger(clock, horizon_seconds=86400.0)
    end = clock.now = T0 + 30 * 3600
    costs.finished(batch("long", total=10, completed=10), "completed", end, ())
    costs.finished(batch("failed", status="failed", total=10, completed=2, failed=8), "failed", end, ())
    again = ledger(clock, horizon_seconds=86400.0)
    again.load_state(json.loads(json.dumps(costs.to_state())))
    _until_the_horizon(again, {})
    view = again.view()
    assert view.settlements_total("missing") == 1 and again.awaiting() == []
    assert view.settlements_total("priced") == view.settlements_total("unpriced") == 0


def test_a_state_of_the_previous_release_reads_its_maybe_batches_as_settled_only_sometimes(
    clock: Clock,
) -> None:
    """That release saved every batch it gave one look-up as flags 1 (it could not tell a batch past the sweeper's
    patience from a kind settled only sometimes): such a batch is now looked for up to the horizon and, without a
    row, gets no result, as it would have then."""
    state = {
        "version": 1, "metadata_keys": [], "lookups": 3, "models": [], "dollars": [], "tokens": [],
        "requests": [], "settlements": [], "held": [],
        "awaited": {"old_maybe": [T0, T0 + 135, 0, [], 1], "old_late": [T0, T0 + 135, 0, [], 1]},
    }  # fmt: skip
    costs = ledger(clock, horizon_seconds=86400.0)
    assert costs.load_state(state) == []
    looks = _until_the_horizon(costs, {"old_late": (T0 + 7200, row(2.0))})
    view = costs.view()
    assert looks["old_late"] > 1 and view.dollars_total() == 2.0
    assert (view.settlements_total("priced"), view.settlements_total("missing")) == (1, 0)


def test_rows_written_by_a_later_results_call_are_read_over_http(sim: Simulator, clock: Clock) -> None:
    """The real exporter against the simulator's sweeper (it gives up after 120 checks, about a day) and its /results
    route (it settles inline, as AccountBatchResults does). Past the sweeper's patience only a user's /results call,
    an hour after the end, writes a row: an OpenAI batch so fetched counts with the gateway's cost, one nobody
    fetches is `missing`. Gemini's expired batches (its list items carry no counts: settled only sometimes) count
    when fetched and get no result otherwise."""
    end = T0 + 30 * 3600
    horizon = 4 * 3600
    batches = {
        ("openai", "long"): "completed",
        ("openai", "long_unfetched"): "completed",
        ("gemini", "expired"): "expired",
        ("gemini", "expired_unfetched"): "expired",
    }
    for (provider, bid), _ in batches.items():
        counts = {"total": 10, "completed": 10 if provider == "openai" else 6, "failed": 0}
        sim.add_batch(provider, batch_id=bid, status="in_progress", created_at=int(T0), request_counts=counts)
    settings = make_settings(
        sim.url, ["openai", "gemini"], cost_metrics=True, basic_auth_username=LOGIN[0],
        basic_auth_password=LOGIN[1], cost_horizon_seconds=horizon, poll_mode="full",
    )  # fmt: skip
    clock.now = end - 120
    with ExporterThread(settings, clock=clock) as exp:
        exp.poll()
        for (provider, bid), status in batches.items():
            sim.set_status(provider, bid, status, at=int(end))
        while clock.now < end + horizon + 600:
            clock.now += 120
            sim.tick()
            if end + 3600 <= clock.now < end + 3600 + 120:
                for provider, bid in (("openai", "long"), ("gemini", "expired")):
                    r = httpx.get(
                        f"{sim.url}/v1/batches/{bid}/results", params={"provider": provider}, auth=LOGIN
                    )
                    assert r.status_code == 200
            exp.poll()
        samples = exp.samples()
    truth = sim.accounting_truth()
    # The sweeper wrote none of them: the results calls did.
    settled = {key for key in batches if truth.settlement(*key) is not None}
    assert settled == {("openai", "long"), ("gemini", "expired")}
    for provider, missing in (("openai", 1), ("gemini", 0)):
        dollars = [v for _, v in series(samples, "bifrost_batch_cost_dollars_total", provider=provider)]
        assert truth.cost(provider) > 0
        assert math.isclose(sum(dollars), truth.cost(provider), rel_tol=1e-12)
        results = {
            r["result"]: v for r, v in series(samples, "bifrost_batch_settlements_total", provider=provider)
        }
        assert results == {"priced": 1, "unpriced": 0, "missing": missing}
        awaited = value(
            samples, "bifrost_batch_exporter_settlements_awaited", provider=provider, awaiting="row"
        )
        assert awaited == 0


def test_a_gateway_failure_keeps_the_look_up_due_and_a_bad_row_backs_off(clock: Clock) -> None:
    costs = ledger(clock)
    costs.finished(batch("a"), "completed", T0, ())
    costs.finished(batch("b"), "completed", T0, ())
    now = T0 + 600
    a, b = sorted(drain(costs, now))
    costs.failed(a, Failure("auth", "HTTP 401", 401, 1), now, row_fault=False)
    costs.failed(b, Failure("invalid_response", "garbage", 200, 1), now, row_fault=True)
    assert drain(costs, now) == ["a"]  # due again at once (the next poll)
    costs.failed("a", Failure("connection", "refused", None, 1), now, row_fault=False)
    assert drain(costs, now + ABSENT_GAPS[0] - 1) == ["a"]
    assert drain(costs, now + ABSENT_GAPS[0]) == ["b"]


def test_a_new_series_is_shown_at_zero_before_its_first_amount(clock: Clock) -> None:
    costs = ledger(clock, hold_seconds=60.0)
    costs.finished(batch("a"), "completed", T0, ())
    costs.finished(batch("b"), "completed", T0, ())
    a, b = sorted(drain(costs, T0 + 600))
    clock.now = T0 + 600
    costs.answered(a, row(1.0), clock.now)
    costs.answered(b, row(2.0), clock.now)
    held = costs.view()
    assert held.dollars == {(MINI, ()): 0.0} and held.tokens[(MINI, "prompt", ())] == 0
    assert held.settlements_total("priced") == 2  # the results count at once: their series existed at 0
    clock.now = T0 + 659
    costs.release()
    assert costs.view().dollars_total() == 0.0
    clock.now = T0 + 660
    costs.release()
    assert costs.view().dollars_total() == 3.0
    costs.finished(batch("c"), "completed", T0 + 700, ())
    (c,) = drain(costs, T0 + 2000)
    costs.answered(c, row(0.5), T0 + 2000)
    assert costs.view().dollars_total() == 3.5  # a series already shown takes amounts at once


def test_models_are_capped_per_provider_mixed_aside(clock: Clock) -> None:
    log = Lines()
    costs = ledger(clock, log=log)
    for i in range(MAX_MODELS + 3):
        costs.finished(batch(f"b{i}"), "completed", T0, ())
    due = sorted(drain(costs, T0 + 600), key=lambda i: int(i[1:]))
    for i, bid in enumerate(due):
        costs.answered(bid, row(1.0, model="mixed" if i == 0 else f"m{i:02d}"), T0 + 600)
    models = {m for m, _ in costs.view().dollars}
    assert "mixed" in models and OTHER_MODEL in models
    assert len(models - {"mixed", OTHER_MODEL}) == MAX_MODELS
    assert costs.view().dollars[(OTHER_MODEL, ())] == 2.0
    assert len(log.named("models_capped")) == 1


def test_past_the_cap_the_batch_that_finished_first_is_given_up_as_missing(clock: Clock) -> None:
    log = Lines()
    costs = ledger(clock, max_awaited=3, log=log)
    for i in range(5):
        costs.finished(batch(f"b{i}"), "completed", T0 + i, ())
    assert costs.awaiting() == ["b2", "b3", "b4"]
    assert costs.view().settlements_total("missing") == 2
    assert len(log.named("settlements_given_up")) == 1


def test_groups_come_from_the_finish_and_every_result_is_shown_for_them(clock: Clock) -> None:
    costs = CostLedger("openai", clock=clock, metadata_keys=("team",), hold_seconds=0.0, log=Lines())
    costs.finished(batch("a"), "completed", T0, ("search",))
    costs.finished(batch("b"), "completed", T0, ("ads",))
    for bid in drain(costs, T0 + 600):
        costs.answered(bid, row(1.0 if bid == "a" else 2.0), T0 + 600)
    view = costs.view()
    assert view.dollars == {(MINI, ("search",)): 1.0, (MINI, ("ads",)): 2.0}
    assert view.settlements[("missing", ("search",))] == 0 and view.settlements[("priced", ("",))] == 0


def test_providers_the_gateway_never_settles_await_nothing(clock: Clock) -> None:
    costs = CostLedger("gigachat", clock=clock, log=Lines())
    costs.finished(batch(), "completed", T0, ())
    assert not costs.settles and costs.awaiting() == [] and not costs.probe_wanted()


# ---- durable state ------------------------------------------------------------------------------------------------


def _busy(clock: Clock, **kw: Any) -> CostLedger:
    """A ledger with something of everything: counted, held, awaiting a row, awaiting a cost, a maybe."""
    costs = CostLedger("openai", clock=clock, metadata_keys=("team",), hold_seconds=60.0, log=Lines(), **kw)
    costs.finished(batch("priced"), "completed", T0, ("ads",))
    costs.finished(batch("unpriced"), "completed", T0, ("ads",))
    costs.finished(batch("late"), "completed", T0 + 3000, ("search",))
    costs.finished(batch("maybe", status="failed", total=4, completed=1, failed=3), "failed", T0, ("",))
    clock.now = T0 + 600
    costs.answered("priced", row(1.25), clock.now)
    costs.answered("unpriced", row(None, model="model-x"), clock.now)
    costs.round_done(7, True)
    return costs


def test_a_state_with_model_names_no_encoder_takes_is_cleaned_and_summed(clock: Clock) -> None:
    """A state written before model names were cleaned may hold lone surrogates, which fail every render of
    /metrics: restored, they become "?", and two that are now one name are summed (a counter never steps back)."""
    costs = ledger(clock)
    for name, model in (("a", "gpt-\ud800"), ("b", "gpt-\ud801")):
        costs.finished(batch(name), "completed", T0, ())
        costs.answered(name, row(1.25, model=model), T0 + 600)
    state = costs.to_state()
    again = ledger(clock)
    again.load_state(state)
    view = again.view()
    assert view.dollars == {("gpt-?", ()): 2.5}
    assert sum(view.requests.values()) == sum(costs.view().requests.values())
    for (model, *_), _n in view.tokens.items():
        model.encode("utf-8")


@pytest.mark.parametrize("step", [-3600.0, 3600.0])
def test_a_new_series_hold_lasts_its_time_whichever_way_the_host_clock_steps(
    clock: Clock, step: float
) -> None:
    """The hold runs on the monotonic clock (audit 9, lying F5): a step back of the host's clock kept a new series
    at 0 for the size of the step, a step forward released it before a scrape could see its 0. Saved as wall time,
    it is restored with what was left of it."""
    elapsed = Clock(0.0)
    costs = ledger(clock, hold_seconds=60.0, monotonic=elapsed)
    costs.finished(batch("a"), "completed", T0, ())
    (a,) = drain(costs, T0 + 600)
    clock.now = T0 + 600
    costs.answered(a, row(1.0), clock.now)
    clock.now += step
    elapsed.now += 59
    costs.release()
    assert costs.view().dollars_total() == 0.0
    again = ledger(clock, hold_seconds=60.0, monotonic=Clock(1000.0))
    again.load_state(json.loads(json.dumps(costs.to_state())))
    again.release()
    assert again.view().dollars_total() == 0.0  # 1 s of its hold left when saved
    elapsed.now += 1
    costs.release()
    assert costs.view().dollars_total() == 1.0


def test_state_round_trips_through_json(clock: Clock) -> None:
    costs = _busy(clock)
    state = json.loads(json.dumps(costs.to_state(), allow_nan=False))
    again = CostLedger("openai", clock=clock, metadata_keys=("team",), hold_seconds=60.0, log=Lines())
    assert again.load_state(state) == []
    assert again.to_state() == costs.to_state()
    assert replace(again.view(), up=True) == costs.view()  # up is this process's own look-ups: not saved
    for now in (T0 + 700, T0 + 5000, T0 + 90000):
        assert drain(again, now) == drain(costs, now)
    clock.now = T0 + 700
    again.release()
    assert again.view().dollars_total() == 1.25  # the held amount survived


def test_a_delta_on_the_last_saved_state_gives_the_whole_state(clock: Clock) -> None:
    costs = _busy(clock)
    saved = json.loads(json.dumps(costs.to_state()))
    costs.mark_saved()
    assert costs.delta()["awaited"] == {} and costs.delta()["removed"] == []
    # The look-ups' gaps run from the clock (restored, a look-up is at most its gap away from it).
    now = clock.now = T0 + 3000 + 3600
    assert sorted(drain(costs, now)) == ["late", "maybe", "unpriced"]
    costs.answered("late", row(3.0), now)
    costs.answered("maybe", row(0.5), now)
    costs.answered("unpriced", row(None, model="model-x"), now)
    costs.finished(batch("new"), "completed", T0 + 7000, ("",))
    delta = json.loads(json.dumps(costs.delta()))
    assert set(delta["awaited"]) == {"new", "unpriced"} and delta["removed"] == ["late", "maybe"]
    replay = CostLedger("openai", clock=clock, metadata_keys=("team",), hold_seconds=60.0, log=Lines())
    replay.load_state(saved)
    replay.apply_delta(delta)
    assert replay.to_state() == costs.to_state()


def test_a_record_of_the_previous_release_with_the_counters_whole_still_replays(clock: Clock) -> None:
    """Journal records written before records held only the changed counters carry them whole (delta version 1):
    an upgraded exporter replays them as they were meant. A version-2 record with a bad value is refused whole."""
    costs = _busy(clock)
    saved = json.loads(json.dumps(costs.to_state()))
    costs.mark_saved()
    now = T0 + 3000 + 3600
    for bid in drain(costs, now):
        costs.answered(bid, row(3.0), now)
    whole = {
        **costs.to_state(),
        "delta": True,
        "awaited": {},
        "removed": sorted(set(saved["awaited"]) - set(costs.awaiting())),
    }
    replay = CostLedger("openai", clock=clock, metadata_keys=("team",), hold_seconds=60.0, log=Lines())
    replay.load_state(saved)
    replay.apply_delta(json.loads(json.dumps(whole)))
    assert replay.to_state() == costs.to_state()
    bad = json.loads(json.dumps(costs.delta()))
    bad["dollars"][0][2] = -1.0
    before = replay.to_state()
    with pytest.raises(ValueError):
        replay.apply_delta(bad)
    assert replay.to_state() == before


@pytest.mark.parametrize(
    "damage",
    [
        lambda s: s.update(version=2),
        lambda s: s.update(awaited=[]),
        lambda s: s["settlements"].append(["free", [""], 1]),
        lambda s: s["dollars"].append(["m", ["x"], -1.0]),
        lambda s: s["dollars"].append(["m", ["x", "y"], 1.0]),
        lambda s: s["tokens"].append(["m", "prompt", ["x"], 1.5]),
        lambda s: s.update(models=[f"m{i}" for i in range(MAX_MODELS + 1)]),
        lambda s: s["awaited"].update(x=[math.inf, 0, 0, [""], 0]),
        lambda s: s.pop("held"),
    ],
)
def test_a_damaged_state_raises_and_leaves_the_ledger_untouched(clock: Clock, damage: Any) -> None:
    state = json.loads(json.dumps(_busy(clock).to_state()))
    damage(state)
    costs = CostLedger("openai", clock=clock, metadata_keys=("team",), log=Lines())
    costs.finished(batch("mine"), "completed", T0, ("",))
    before = costs.to_state()
    with pytest.raises((KeyError, TypeError, ValueError)):
        costs.load_state(state)
    assert costs.to_state() == before


def test_changed_metadata_labels_restart_the_counters_but_keep_awaiting(clock: Clock) -> None:
    state = json.loads(json.dumps(_busy(clock).to_state()))
    costs = CostLedger("openai", clock=clock, metadata_keys=("team", "env"), log=Lines())
    notes = costs.load_state(state)
    assert notes == ["metadata_labels changed: cost counters start again from 0"]
    assert costs.view().dollars == {}
    assert set(costs.awaiting()) == {"unpriced", "late", "maybe"}
    assert costs.view().settlements == {(r, ("", "")): 0 for r in ("priced", "unpriced", "missing")}


# ---- the look-up on the wire ---------------------------------------------------------------------------------------


@pytest.fixture
def scripted() -> Iterator[Callable[[Route], tuple[Gateway, str]]]:
    running: list[Iterator[str]] = []

    def start(route: Route) -> tuple[Gateway, str]:
        gw = Gateway(route)
        serving = gw.serve()
        running.append(serving)
        return gw, next(serving)

    yield start
    for serving in running:
        for _ in serving:
            pass


def look_up(settings: Settings, log_id: str, **client_kw: Any) -> LogResult[Row]:
    async def run() -> LogResult[Row]:
        client = BifrostClient(settings, **client_kw)
        try:
            return await client.settlement("openai", log_id, parse_row(log_id))
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_the_look_up_sends_the_admin_login_to_the_rows_path(
    scripted: Callable[[Route], tuple[Gateway, str]],
) -> None:
    log_id = settlement_id("openai", "batch_1")
    gw, url = scripted(lambda seen: (200, {"id": log_id, "cost": 0.5, "model": MINI}))
    got = look_up(make_settings(url, ["openai"], cost_metrics=True, bearer_token="admin-session"), log_id)
    assert got.row == Row(0.5, MINI, 0, 0, 0) and got.requests == 1
    (seen,) = gw.seen
    assert seen.path == f"/api/logs/{log_id}"
    assert seen.headers["authorization"] == "Bearer admin-session"


@pytest.mark.parametrize(
    ("reply", "absent", "reason", "hint"),
    [
        (
            (404, {"is_bifrost_error": False, "status_code": 404, "error": {"message": "log not found"}}),
            True,
            None,
            "",
        ),
        ((404, b"404 page not found", {"Content-Type": "text/plain"}), False, "client_error", "logs API"),
        ((401, {"error": {"message": "Unauthorized"}}), False, "auth", "admin login"),
        (
            (200, b"<html>login</html>", {"Content-Type": "text/html"}),
            False,
            "invalid_response",
            "content-type",
        ),
    ],
)
def test_what_an_answer_means(
    scripted: Callable[[Route], tuple[Gateway, str]],
    reply: Reply,
    absent: bool,
    reason: str | None,
    hint: str,
) -> None:
    """A 404 in the gateway's own shape is "not settled yet"; a bare 404 is no logs API (a failure, so nothing is
    ever counted missing because of a route); 401 names the admin login."""
    _, url = scripted(lambda seen: reply)
    got = look_up(
        make_settings(url, ["openai"], cost_metrics=True, bearer_token="t"), settlement_id("openai", "b")
    )
    assert got.absent is absent and got.row is None
    if reason is None:
        assert got.failure is None
    else:
        assert got.failure is not None and got.failure.reason == reason and hint in got.failure.detail
        assert "Bearer t" not in got.failure.detail


def test_server_errors_are_retried_and_paced_with_the_lists(
    scripted: Callable[[Route], tuple[Gateway, str]],
) -> None:
    log_id = settlement_id("openai", "b")
    answers = iter([(503, {"error": {"message": "busy"}}), (200, {"id": log_id, "cost": 1.0})])
    _, url = scripted(lambda seen: next(answers))
    fake = FakeClock()
    settings = make_settings(
        url, ["openai"], cost_metrics=True, bearer_token="t", max_retries=2, max_requests_per_second=10
    )
    got = look_up(
        settings, log_id, sleep=fake.sleep, monotonic=fake.monotonic, backoff_base=0.01, rng=lambda: 0.0
    )
    assert got.row is not None and got.requests == 2
    assert fake.sleeps and sum(fake.sleeps) >= 0.1  # the retry waited for its pacing slot (10 requests/s)


def test_a_failing_gateway_ends_the_round_and_shows_cost_up_0(
    scripted: Callable[[Route], tuple[Gateway, str]], clock: Clock
) -> None:
    gw, url = scripted(lambda seen: (500, {"is_bifrost_error": True, "error": {"message": "db down"}}))
    costs = ledger(clock)
    for bid in ("a", "b"):
        costs.finished(batch(bid), "completed", T0, ())
    clock.now = T0 + 3600
    log = Lines()
    costs.log = log

    async def run() -> int:
        client = BifrostClient(
            make_settings(url, ["openai"], cost_metrics=True, bearer_token="t", max_retries=1)
        )
        try:
            return await settle(costs, client, 10)
        finally:
            await client.aclose()

    assert asyncio.run(run()) == 2  # one look-up and its retry; "b" is not asked while the gateway fails
    assert costs.up is False and len(gw.seen) == 2
    assert sorted(drain(costs, clock.now)) == ["a", "b"]  # both still due
    (line,) = log.named("settlement_lookup_failed")
    assert line["reason"] == "server_error" and line["http_status"] == 500


def test_the_cost_series_are_served_from_the_first_scrape(sim: Simulator, clock: Clock) -> None:
    """Before the first poll: the settlement look-ups (`requests_total{endpoint="settlement"}`) and the awaited
    gauges at 0, so that the first look-ups are an increase from 0 rather than a series born at its value."""
    settings = make_settings(
        sim.url, ["openai"], cost_metrics=True, basic_auth_username=LOGIN[0], basic_auth_password=LOGIN[1]
    )
    with ExporterThread(settings, clock=clock) as exp:
        first = exp.samples()
    requests = "bifrost_batch_exporter_requests_total"
    assert value(first, requests, provider="openai", endpoint="settlement") == 0
    assert value(first, "bifrost_batch_exporter_settlements_awaited", provider="openai", awaiting="row") == 0

"""The counter holds: counts a render shows below what the ledger counted, for a while.

Prometheus sees an increase only between two samples of a series. A series born with its count (a first failure in
an exporter's first minutes, the transitions counted while a pod was down, the first dollars of a new model) has no
sample before the count, so increase() and every failure alert miss it. So a series no render could foresee is shown
at 0 for a while first, and a count that rose above what the process started with is shown at its start value
until a scrape has seen that; a restart within a hold, on a new pod, must hold again at what was shown, so the holds
are saved beside the ledger (`shown`, `cost_shown`) and restored from it.

Holds run on the monotonic clock (a host clock stepped back would hide a count for the size of the step, one stepped
forward would end a hold before a scrape saw it); they are saved as wall times.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any, TypeVar

from . import presence
from .ledger import LedgerView, count_rows, row_key
from .outcomes import OUTCOMES
from .pollrun import Hold, Run
from .snapshot import ProviderState

# Held counter keys a state file may bring back (each a (status[, code], group) key of the counter tables, which the
# ledger caps far below this): a damaged or hostile field cannot make the start slow.
MAX_RESTORED_HOLDS = 100_000

# Counter key → its hold (until when, the count shown, the requests by outcome shown) in a saved process.
RestoredHolds = dict[tuple[Any, ...], Hold]
# (cost figure, its key) → (until when, the value shown) in a saved process.
RestoredCostHolds = dict[tuple[str, tuple[Any, ...]], tuple[float, float]]


def hold_new_counters(
    run: Run,
    previous: ProviderState | None,
    state: ProviderState,
    now: float,
    hold: float,
    empty: tuple[str, ...],
) -> ProviderState:
    """Counter series the last render (`previous`) did not show are shown at 0 for `hold` seconds (one poll
    interval, at least a minute: a scrape sees the 0), their counts after that: a first count is then an increase,
    also in an exporter's first minutes, when the mixin's alerts cannot tell a series born above 0 from a restart.

    The same goes for counts that rise above what this process started with (restored, or none) before a
    scrape has been served its counters: on a new pod (the chart's Recreate strategy: every upgrade, eviction
    or drain) every series is new to Prometheus, whose first scrape comes after readiness, discovery and the
    scrape offset, often after the second poll. A series whose first sample already held the batches that ended
    while the exporter was down, or in its first poll intervals, hides them from increase() and every failure
    alert. Until such a scrape no hold ends (one that ended first would let the series be born with the count
    after all), and after it none begins at the start's value: a counter is never shown lower than it was."""
    for key in presence.newly_held(previous, state.ledger, empty):
        run.held.setdefault(key, Hold(now + hold))
    if run.baseline_seen:
        run.baseline = run.cost_baseline = None
    if run.baseline is not None:
        _hold_risen(run, run.baseline, state.ledger, now + hold)
    if previous is None or previous.health.last_success is None:
        # No counter has been rendered yet (render.py shows them from a first success on): a hold runs from the
        # first render, or failed polls that outlast it would let their counts be born above 0 after all.
        run.held = {key: h._replace(until=now + hold) for key, h in run.held.items()}
    if run.baseline is None:
        run.held = {key: h for key, h in run.held.items() if h.until > now}
    return _shown(run, hold_cost(run, state, now, hold))


def _hold_risen(run: Run, baseline: LedgerView, ledger: LedgerView, until: float) -> None:
    """A count above the baseline is shown at its baseline value until `until` (a restart in the same pod keeps
    its series and sees the step either way)."""
    for key, before in risen(ledger.finished, baseline.finished):
        run.held.setdefault(key, Hold(until, before, tuple(baseline.finished_requests.get(key, ()))))
    for key, before in risen(ledger.failures, baseline.failures):
        run.held.setdefault(key, Hold(until, before))


def held_again(
    run: Run,
    state: ProviderState,
    entries: RestoredHolds,
    cost_entries: RestoredCostHolds,
    held_until: Callable[[float], float],
) -> ProviderState:
    """A restored process's holds: each key the saved process showed below its count, at the value it showed,
    until when it was held (`held_until` turns that saved wall time into this process's monotonic clock), not a new
    hold from this start: restarts in a row must not stretch it (and no hold ends before this process has been
    scraped anyway)."""
    cost = state.cost
    if cost is not None:
        for (figure, key), (until, value) in cost_entries.items():
            if value < getattr(cost, figure).get(key, 0):
                run.cost_held[(figure, key)] = (held_until(until), value)
    if not entries:
        return state
    view = state.ledger
    for key, saved in entries.items():
        counted = view.finished.get(key, 0) if len(key) == 2 else view.failures.get(key, 0)
        if saved.shown < counted:
            run.held[key] = saved._replace(until=held_until(saved.until))
    return _shown(run, state)


def saved_holds(run: Run, to_wall: float, *, cost: bool) -> dict[str, Any]:
    """The holds as the state file keeps them (restore_shown, restore_cost_shown read them back): as the counter
    tables are written (count_rows), each value the count shown, until when (a wall time: `to_wall` is the wall
    clock minus the monotonic one), then the requests shown; the cost counters' with the figure first."""
    saved: dict[str, Any] = {
        "shown": count_rows({key: (h.shown, h.until + to_wall, *h.requests) for key, h in run.held.items()})
    }
    if cost:
        saved["cost_shown"] = count_rows(
            {
                (figure, *key): (value, until + to_wall)
                for (figure, key), (until, value) in run.cost_held.items()
            }
        )
    return saved


def restore_shown(rows: Any) -> RestoredHolds:
    """The held keys a previous process showed below their counts (saved_holds), to be held again at
    those values from this start; anything malformed is dropped (the counts themselves are restored either way)."""
    held: RestoredHolds = {}
    if not isinstance(rows, list):
        return held
    for row in rows[:MAX_RESTORED_HOLDS]:
        try:
            key, (value, until, *requests) = row_key(row), row[-1]
            if (
                len(key) not in (2, 3)
                or not isinstance(key[-1], tuple)
                or not isinstance(value, int)
                or value < 0
            ):
                continue
            if not all(isinstance(part, str) for part in (*key[:-1], *key[-1])):
                continue
            shown = tuple(requests) if len(key) == 2 else ()
            # The requests shown are one count per outcome, or none (zeros): the render pairs them with OUTCOMES.
            if len(shown) not in (0, len(OUTCOMES)) or not all(_count(n) for n in shown):
                continue
            held[key] = Hold(float(until), value, shown)
        except (TypeError, ValueError, IndexError, KeyError, OverflowError):
            continue
    return held


def _count(n: Any) -> bool:
    """A count a render can show exactly (a float holds every integer below 2**53)."""
    return isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**53


COST_COUNTERS = ("settlements", "dollars", "requests", "tokens")  # CostView's counter figures


def restore_cost_shown(rows: Any) -> RestoredCostHolds:
    """The cost counters' holds a previous process saved (saved_holds); anything malformed is dropped."""
    held: RestoredCostHolds = {}
    if not isinstance(rows, list):
        return held
    for row in rows[:MAX_RESTORED_HOLDS]:
        try:
            (figure, *parts), (value, until) = row_key(row), row[-1]
            if figure not in COST_COUNTERS or len(parts) < 2 or not isinstance(parts[-1], tuple):
                continue
            if not all(isinstance(part, str) for part in (*parts[:-1], *parts[-1])):
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
                continue
            held[(figure, tuple(parts))] = (float(until), value)
        except (TypeError, ValueError, IndexError, KeyError, OverflowError):
            continue
    return held


Count = TypeVar("Count", int, float)


def risen(counts: Mapping[Any, Count], start: Mapping[Any, Count]) -> Iterator[tuple[Any, Count]]:
    """(key, its start value) of each count above what it started at (a key absent at the start started at 0)."""
    for key, value in counts.items():
        before = start.get(key, 0)
        if value > before:
            yield key, before


def hold_cost(run: Run, state: ProviderState, now: float, hold: float) -> ProviderState:
    """The cost counters' start-up hold, as the batch counters' (hold_new_counters): a settlement counted
    `missing` by a restarted process's first poll (its horizon passed while the exporter was down) in the first
    sample of a new pod's series is no increase to BifrostBatchSettlementsMissing."""
    cost, base = state.cost, run.cost_baseline
    if cost is None:
        return state
    if base is not None:
        for figure in COST_COUNTERS:
            for key, before in risen(getattr(cost, figure), getattr(base, figure)):
                run.cost_held.setdefault((figure, key), (now + hold, before))
    else:
        run.cost_held = {k: h for k, h in run.cost_held.items() if h[0] > now}
    if not run.cost_held and not cost.held:
        return state
    held = MappingProxyType({k: value for k, (_, value) in run.cost_held.items()})
    return replace(state, cost=replace(cost, held=held))


def _shown(run: Run, state: ProviderState) -> ProviderState:
    """`state` with the run's held keys at the values they are shown at."""
    if not run.held and not state.ledger.held:
        return state
    held = MappingProxyType({key: h.shown for key, h in run.held.items()})
    held_requests = MappingProxyType({key: h.requests for key, h in run.held.items() if h.requests})
    return replace(state, ledger=replace(state.ledger, held=held, held_requests=held_requests))

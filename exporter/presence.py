"""Which counter series a render shows before anything is counted in them, and which are held at 0 a while.

Prometheus' increase() cannot see a series' first sample as an increase: a counter series born at 1 (a team's first
failure, a code never seen) is invisible to rate alerts in an exporter's first minutes, where the mixin cannot tell
it from a restart. The renderer therefore shows at 0, ahead of any count, the series it can foresee: every terminal
status of every group the last poll listed, the `none` code of every failure status, the failure table's codes in
the "" group. A series it could not foresee is held at 0 for a while when it first appears (`hold`), as the cost
counters are (exporter/cost.py): its counts show from the next render after the hold, a scrape having seen the 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from .failure_classes import TABLE as KNOWN_CODES
from .ledger import FAILURE_STATUSES, NO_CODE, Group, LedgerView
from .models import TERMINAL_STATUSES
from .snapshot import ProviderState

# A finished_total / finished_requests_total key (status, group), or a failures_total key (status, code, group).
CounterKey = tuple[str, Group] | tuple[str, str, Group]


def listed_groups(state: ProviderState, empty: Group) -> list[Group]:
    """The groups whose counters are shown from 0: those the last successful poll listed (before this process's
    first one, those its restored ledger knows), and the "" group."""
    snap = state.snapshot
    shown = (g for _, g in snap.counts) if snap is not None else state.ledger.groups_seen
    return sorted({empty, *shown})


def seeded_failures(groups: Iterable[Group], empty: Group) -> Iterator[tuple[str, str, Group]]:
    """The failures_total keys shown from 0: `none` for each failure status of each listed group, and the failure
    table's codes in the "" group only (so metadata groups do not multiply them)."""
    for group in groups:
        for status in FAILURE_STATUSES:
            yield (status, NO_CODE, group)
    for code in KNOWN_CODES:
        yield ("failed", code, empty)


def foreseen(state: ProviderState, empty: Group) -> set[CounterKey]:
    """Every counter key a render of `state` shows, at 0 or counted."""
    led = state.ledger
    groups = listed_groups(state, empty)
    keys: set[CounterKey] = {*led.finished, *led.failures}
    keys.update((s, g) for s in TERMINAL_STATUSES for g in groups)
    keys.update(seeded_failures(groups, empty))
    return keys


def newly_held(previous: ProviderState | None, ledger: LedgerView, empty: Group) -> Iterable[CounterKey]:
    """Keys counted in `ledger` that the render of `previous` did not show: series that would be born above 0.

    Before a provider's first success no counter series is rendered (exporter/render.py); what the polls count
    until then rises above the counts the process started with, which the poller holds at those (its baseline)."""
    if previous is None or previous.health.last_success is None:
        return ()
    before = foreseen(previous, empty)
    counted: list[tuple[CounterKey, int]] = [*ledger.finished.items(), *ledger.failures.items()]
    return [k for k, n in counted if n > 0 and k not in before]

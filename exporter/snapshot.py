"""The frozen per-provider aggregate of one poll, and the builder that folds batches into it.

Aggregating here, once per poll, is what keeps a scrape cheap: a hundred thousand batches become a few hundred
numbers, and the renderer never touches a batch object. The builder takes whole batches (active ones, and every
batch of a full list) and the store's running totals of its finished batches into the same sums, so a provider
polled incrementally aggregates exactly as one listed in full.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .firstsync import NOT_STARTED, FirstSync
from .ledger import Group, LedgerView
from .models import ACTIVE_SET, Batch, id_label, normalize_status
from .outcomes import Outcomes, outcomes
from .risk import ProgressTracker, assess

if TYPE_CHECKING:
    from .cost import CostView


@dataclass(frozen=True, slots=True)
class JobRow:
    """One active batch, for the opt-in per-batch series."""

    batch_id: str
    status: str
    endpoint: str
    completion_window: str
    requests: tuple[int, ...]  # OUTCOMES order; () when the batch has no request_counts
    created: float | None
    expires: float | None
    progress: float | None
    projected_completion: float | None
    risk_reason: str | None = (
        None  # why the early warning flags it (exporter/risk.py REASONS); None when it does not
    )


@dataclass(frozen=True, slots=True)
class BatchSnapshot:
    provider: str
    taken_at: float
    counts: Mapping[tuple[str, Group], int]
    requests: Mapping[tuple[str, Group], tuple[int, ...]]
    oldest_created: Mapping[tuple[str, Group], float]
    next_expiry: float | None
    at_risk: Mapping[Group, int]
    at_risk_requests: Mapping[Group, int]
    jobs: tuple[JobRow, ...]
    jobs_dropped: int
    batches: int
    clamped: int = 0  # batches with a count clamped (negative or absurd): logged by the poller
    overflowed: int = 0  # batches whose outcome parts exceed their total: counted by the parts

    def status_counts(self) -> dict[str, int]:
        """Batches per status over every group (the landing page, tests)."""
        out: dict[str, int] = {}
        for (status, _), n in self.counts.items():
            out[status] = out.get(status, 0) + n
        return out


def _progress(batch: Batch, done: int, total: int) -> float | None:
    """Gemini reports percent; everyone else lets us derive it from the outcomes."""
    if batch.progress is not None and 0 <= batch.progress <= 100:
        return batch.progress / 100.0
    if total <= 0:
        return None
    return min(1.0, done / total)


class SnapshotBuilder:
    """Folds batches into the aggregate as they arrive, so no poll ever holds its whole list.

    Only the aggregates survive: counts and request outcomes per status and group, the oldest/next timestamps, the
    at-risk projection and, when per-batch series are on, at most `per_batch_limit` rows of active batches (a
    bounded heap): the batches at risk first, then the newest. At-risk batches are mostly old ones (past half their
    window, or overdue), exactly the rows "newest first" would drop, and they are the rows the alert's description
    and the runbook read.
    """

    def __init__(
        self,
        provider: str,
        *,
        label_for: Callable[[str], str],
        group_for: Callable[[Batch], Group] | None = None,
        per_batch: bool = False,
        per_batch_limit: int = 500,
        now: float = 0.0,
        no_progress_fraction: float = 0.5,
        tracker: ProgressTracker | None = None,
        ended: Callable[[], Mapping[str, bool]] | None = None,
    ) -> None:
        """`tracker` is the provider's ProgressTracker, kept by the poller from poll to poll: the early warning's
        recent rates and calibration. Without one, each batch is judged by its average rate since it started.
        Without `group_for` every batch is in the group () (no metadata labels), and no call per batch asks."""
        self._provider = provider
        self._tracker = tracker
        self._ended = ended  # the ledger's take_ended: how the batches the tracker forgets really ended
        self._label_for = label_for
        self._group_for = group_for
        self._per_batch = per_batch
        self._limit = per_batch_limit
        self._now = now
        self._fraction = no_progress_fraction
        # Per (status, group): the five outcomes' requests in OUTCOMES order, then the number of batches (one
        # lookup per batch instead of two).
        self._acc: dict[tuple[str, Group], list[int]] = {}
        self._oldest: dict[tuple[str, Group], float] = {}
        self._next_expiry: float | None = None
        self._at_risk: dict[Group, int] = {}
        self._at_risk_requests: dict[Group, int] = {}
        # Min-heap on (at risk, created, arrival): the row dropped first (not at risk, then the oldest) on top.
        self._jobs: list[tuple[bool, float, int, JobRow]] = []
        self._active = 0
        self._total = 0
        self._clamped = 0
        self._overflowed = 0
        self._groups: set[Group] = set()
        # Raw status string → label. label_for is called once per distinct status, in first-seen order, which
        # admits unknown statuses exactly as calling it for every batch would; the hot loop only does lookups.
        self._labels: dict[str | None, str] = {}

    def label(self, batch: Batch) -> str:
        raw = batch.status
        status = self._labels.get(raw)
        if status is None:
            status = self._labels[raw] = self._label_for(normalize_status(raw))
        return status

    def add(self, batches: Iterable[Batch]) -> None:
        # The poll's hot loop (every batch of every list), so _fold is written out here: each batch's outcomes
        # are computed once and handed to the fold, the risk projection and the per-batch row.
        labels = self._labels
        group_for = self._group_for
        accs = self._acc
        added = 0
        group: Group = ()
        for batch in batches:
            status = labels.get(batch.status)
            if status is None:
                status = self.label(batch)
            if group_for is not None:
                group = group_for(batch)
            o = outcomes(batch.request_counts, status)
            succeeded, failed, expired, canceled, pending, overflow, clamped = o
            if clamped:
                self._clamped += 1
            if overflow:
                self._overflowed += 1
            added += 1
            key = (status, group)
            acc = accs.get(key)
            if acc is None:
                accs[key] = [succeeded, failed, expired, canceled, pending, 1]
                self._groups.add(group)
            else:
                acc[0] += succeeded
                acc[1] += failed
                acc[2] += expired
                acc[3] += canceled
                acc[4] += pending
                acc[5] += 1
            if status in ACTIVE_SET:
                self._fold_active(batch, status, group, o)
        self._total += added

    def add_totals(self, totals: Mapping[tuple[str, Group], Sequence[int]]) -> None:
        """Batches already summed per (status, group): the five outcomes' requests, then how many batches (the
        store keeps its finished batches summed like this, so a poll does not fold its history again)."""
        accs = self._acc
        for key, values in totals.items():
            acc = accs.get(key)
            if acc is None:
                accs[key] = list(values[:6])
                self._groups.add(key[1])
            else:
                for i in range(6):
                    acc[i] += values[i]
            self._total += values[5]

    def _fold_active(self, batch: Batch, status: str, group: Group, o: Outcomes) -> None:
        created = batch.created
        if created is not None:
            key = (status, group)
            current = self._oldest.get(key)
            if current is None or created < current:
                self._oldest[key] = created
        expires = batch.expires
        if expires is not None and (self._next_expiry is None or expires < self._next_expiry):
            self._next_expiry = expires
        risk = assess(batch, status, self._now, self._fraction, o.done, self._tracker)
        if risk.at_risk:
            self._at_risk[group] = self._at_risk.get(group, 0) + 1
            self._at_risk_requests[group] = self._at_risk_requests.get(group, 0) + risk.pending
        if self._per_batch:
            self._active += 1
            row = JobRow(
                batch_id=id_label(batch.id),
                status=status,
                endpoint=(batch.endpoint or "")[:128],
                completion_window=(batch.completion_window or "")[:32],
                requests=(o.succeeded, o.failed, o.expired, o.cancelled, o.pending)
                if batch.request_counts is not None
                else (),
                created=created,
                expires=expires,
                progress=_progress(batch, o.done, o.total),
                projected_completion=risk.projected_completion,
                risk_reason=risk.reason,
            )
            item = (risk.at_risk, created or 0.0, self._active, row)
            if len(self._jobs) < self._limit:
                heapq.heappush(self._jobs, item)
            elif item[:3] > self._jobs[0][:3]:
                heapq.heapreplace(self._jobs, item)

    def build(self, now: float) -> BatchSnapshot:
        if self._tracker is not None:
            # Forget the batches no longer active, learning from those seen to end.
            self._tracker.finish_poll(self._ended() if self._ended is not None else None)
        newest_first = sorted(self._jobs, key=lambda item: item[1:3], reverse=True)
        return BatchSnapshot(
            provider=self._provider,
            taken_at=now,
            counts=MappingProxyType({k: v[5] for k, v in self._acc.items()}),
            requests=MappingProxyType({k: tuple(v[:5]) for k, v in self._acc.items()}),
            oldest_created=MappingProxyType(dict(self._oldest)),
            next_expiry=self._next_expiry,
            at_risk=MappingProxyType(dict(self._at_risk)),
            at_risk_requests=MappingProxyType(dict(self._at_risk_requests)),
            jobs=tuple(row for _, _, _, row in newest_first),
            jobs_dropped=max(0, self._active - self._limit) if self._per_batch else 0,
            batches=self._total,
            clamped=self._clamped,
            overflowed=self._overflowed,
        )


def build_snapshot(
    provider: str,
    batches: Iterable[Batch],
    *,
    now: float,
    label_for: Callable[[str], str],
    group_for: Callable[[Batch], Group] | None = None,
    per_batch: bool = False,
    per_batch_limit: int = 500,
    no_progress_fraction: float = 0.5,
) -> BatchSnapshot:
    """Aggregate one list of batches at once. `label_for` maps a normalised status to its (capped) label."""
    builder = SnapshotBuilder(
        provider,
        label_for=label_for,
        group_for=group_for,
        per_batch=per_batch,
        per_batch_limit=per_batch_limit,
        now=now,
        no_progress_fraction=no_progress_fraction,
    )
    builder.add(batches)
    return builder.build(now)


# How the last full list of a provider ended (bifrost_batch_exporter_coverage{reason}): `complete` reached the end;
# `cursor_ignored` is the gateway's known limitation for providers whose cursor it does not forward (only the first
# page can be listed: a state to show, not a fault to page on); `cursor_loop` and `max_pages` are unexpected early
# stops; `pending` while no full list has finished yet.
COVERAGE_REASONS = ("complete", "pending", "cursor_ignored", "cursor_loop", "cursor_refused", "max_pages")


@dataclass(frozen=True, slots=True)
class Health:
    """The exporter's own view of a provider's last poll."""

    attempted: bool = False
    up: bool = False
    supported: bool = True
    truncated: bool = False
    last_success: float | None = None
    poll_duration: float = 0.0
    view_keys: int = 0  # virtual keys the provider is listed with (0: none sent)
    coverage: str = "pending"  # one of COVERAGE_REASONS
    first_sync: FirstSync = NOT_STARTED  # the first full list's progress (poller.py)


@dataclass(frozen=True, slots=True)
class ProviderState:
    """Everything the renderer may know about one provider, replaced whole after each poll."""

    provider: str
    health: Health
    snapshot: BatchSnapshot | None
    ledger: LedgerView
    cost: CostView | None = None  # with cost_metrics, for providers the gateway settles

    def unheld(self) -> ProviderState:
        """The counts as counted, no key held at an earlier value (exporter/presence.py, the poller's holds)."""
        empty: Mapping[Any, Any] = MappingProxyType({})
        state = self
        if self.ledger.held:
            state = replace(state, ledger=replace(self.ledger, held=empty, held_requests=empty))
        if self.cost is not None and self.cost.held:
            state = replace(state, cost=replace(self.cost, held=empty))
        return state

"""The frozen per-provider aggregate of one poll, and the pure function that builds it.

Aggregating here, once per poll, is what keeps a scrape cheap: a hundred thousand batches become a few hundred
numbers, and the renderer never touches a batch object.
"""

from __future__ import annotations

import heapq
import math
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .ledger import LedgerView
from .models import ACTIVE_STATUSES, KNOWN_STATUSES, REQUEST_COUNT_KINDS, Batch, normalize_status

_ACTIVE = frozenset(ACTIVE_STATUSES)
_INF = math.inf
_ZERO_COUNTS = (0,) * len(REQUEST_COUNT_KINDS)
# One C call returns a batch's seven request_counts fields, in REQUEST_COUNT_KINDS order.
_counts_of = operator.attrgetter(*REQUEST_COUNT_KINDS)


@dataclass(frozen=True, slots=True)
class JobRow:
    """One active batch, for the opt-in per-batch series."""

    batch_id: str
    status: str
    endpoint: str
    completion_window: str
    request_counts: tuple[tuple[str, int], ...]
    created: float | None
    expires: float | None
    progress: float | None


@dataclass(frozen=True, slots=True)
class BatchSnapshot:
    provider: str
    taken_at: float
    counts: Mapping[str, int]
    request_counts: Mapping[tuple[str, str], int]
    oldest_created: Mapping[str, float]
    next_expiry: float | None
    jobs: tuple[JobRow, ...]
    jobs_dropped: int
    batches: int


def _progress(batch: Batch) -> float | None:
    """Gemini reports percent; everyone else lets us derive it from request_counts."""
    if batch.progress is not None and 0 <= batch.progress <= 100:
        return batch.progress / 100.0
    rc = batch.request_counts
    if rc is None:
        return None
    total = rc.get("total")
    if total <= 0:
        return None
    return min(1.0, (rc.get("completed") + rc.get("failed")) / total)


def _job_row(batch: Batch, status: str) -> JobRow:
    rc = batch.request_counts
    counts = tuple((k, rc.get(k)) for k in REQUEST_COUNT_KINDS) if rc is not None else ()
    return JobRow(
        batch_id=batch.id[:256],
        status=status,
        endpoint=(batch.endpoint or "")[:128],
        completion_window=(batch.completion_window or "")[:32],
        request_counts=counts,
        created=batch.created,
        expires=batch.expires,
        progress=_progress(batch),
    )


class SnapshotBuilder:
    """Folds a poll's pages into the aggregate as they arrive, so no poll ever holds its whole list.

    Only the aggregates survive a page: counts and sums per status, the oldest/next timestamps and, when per-batch
    series are on, at most `per_batch_limit` rows of the newest active batches (a bounded heap).
    """

    def __init__(
        self,
        provider: str,
        *,
        label_for: Callable[[str], str],
        per_batch: bool = False,
        per_batch_limit: int = 500,
    ) -> None:
        self._provider = provider
        self._label_for = label_for
        self._per_batch = per_batch
        self._limit = per_batch_limit
        self._counts = dict.fromkeys(KNOWN_STATUSES, 0)
        self._per_status: dict[str, list[int]] = {}
        self._oldest: dict[str, float] = {}
        self._next_expiry: float | None = None
        self._jobs: list[tuple[float, int, JobRow]] = []  # min-heap on created: the oldest kept row on top
        self._active = 0
        self._total = 0
        # Raw status string → label. label_for is called once per distinct status, in first-seen order, which
        # admits unknown statuses exactly as calling it for every batch would; the hot loop only does lookups.
        self._labels: dict[str | None, str] = {}

    def add(self, batches: Iterable[Batch]) -> None:
        counts, per_status, oldest, labels = self._counts, self._per_status, self._oldest, self._labels
        next_expiry = self._next_expiry
        for batch in batches:
            self._total += 1
            raw = batch.status
            status = labels.get(raw)
            if status is None:
                status = labels[raw] = self._label_for(normalize_status(raw))
            counts[status] = counts.get(status, 0) + 1
            rc = batch.request_counts
            if rc is not None:
                acc = per_status.get(status)
                if acc is None:
                    acc = per_status[status] = [0] * len(REQUEST_COUNT_KINDS)
                for i, value in enumerate(_counts_of(rc)):
                    if value:
                        acc[i] += value
            if status in _ACTIVE:
                # Inlined Batch.created / Batch.expires (valid_timestamp): NaN fails both comparisons.
                created = batch.created_at
                if (
                    created is not None
                    and 0 < created < _INF
                    and (status not in oldest or created < oldest[status])
                ):
                    oldest[status] = created
                expires = batch.expires_at
                if (
                    expires is not None
                    and 0 < expires < _INF
                    and (next_expiry is None or expires < next_expiry)
                ):
                    next_expiry = expires
                if self._per_batch:
                    self._keep_job(batch, status)
        self._next_expiry = next_expiry

    def _keep_job(self, batch: Batch, status: str) -> None:
        self._active += 1
        item = (batch.created or 0.0, self._active, _job_row(batch, status))
        if len(self._jobs) < self._limit:
            heapq.heappush(self._jobs, item)
        elif item[:2] > self._jobs[0][:2]:
            heapq.heapreplace(self._jobs, item)

    def build(self, now: float) -> BatchSnapshot:
        counts = self._counts
        sums = {
            (status, kind): value
            for status in counts
            for kind, value in zip(
                REQUEST_COUNT_KINDS, self._per_status.get(status, _ZERO_COUNTS), strict=True
            )
        }
        newest_first = sorted(self._jobs, key=lambda item: item[:2], reverse=True)
        return BatchSnapshot(
            provider=self._provider,
            taken_at=now,
            counts=MappingProxyType(dict(counts)),
            request_counts=MappingProxyType(sums),
            oldest_created=MappingProxyType(dict(self._oldest)),
            next_expiry=self._next_expiry,
            jobs=tuple(row for _, _, row in newest_first),
            jobs_dropped=max(0, self._active - self._limit) if self._per_batch else 0,
            batches=self._total,
        )


def build_snapshot(
    provider: str,
    batches: Iterable[Batch],
    *,
    now: float,
    label_for: Callable[[str], str],
    per_batch: bool = False,
    per_batch_limit: int = 500,
) -> BatchSnapshot:
    """Aggregate one list of batches at once. `label_for` maps a normalised status to its (capped) label."""
    builder = SnapshotBuilder(
        provider, label_for=label_for, per_batch=per_batch, per_batch_limit=per_batch_limit
    )
    builder.add(batches)
    return builder.build(now)


@dataclass(frozen=True, slots=True)
class Health:
    """The exporter's own view of a provider's last poll."""

    attempted: bool = False
    up: bool = False
    supported: bool = True
    truncated: bool = False
    last_success: float | None = None
    poll_duration: float = 0.0


@dataclass(frozen=True, slots=True)
class ProviderState:
    """Everything the renderer may know about one provider, replaced whole after each poll."""

    provider: str
    health: Health
    snapshot: BatchSnapshot | None
    ledger: LedgerView

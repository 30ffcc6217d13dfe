"""The frozen per-provider aggregate of one poll, and the pure function that builds it.

Aggregating here, once per poll, is what keeps a scrape cheap: a hundred thousand batches become a few hundred
numbers, and the renderer never touches a batch object.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .ledger import LedgerView
from .models import ACTIVE_STATUSES, KNOWN_STATUSES, REQUEST_COUNT_KINDS, Batch


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


def build_snapshot(
    provider: str,
    batches: Iterable[Batch],
    *,
    now: float,
    label_for: Callable[[str], str],
    per_batch: bool = False,
    per_batch_limit: int = 500,
) -> BatchSnapshot:
    """Aggregate one poll's batches. `label_for` maps a normalised status to its (cardinality-capped) label."""
    counts = dict.fromkeys(KNOWN_STATUSES, 0)
    sums: dict[tuple[str, str], int] = {}
    oldest: dict[str, float] = {}
    next_expiry: float | None = None
    active: list[tuple[Batch, str]] = []
    total = 0
    active_set = frozenset(ACTIVE_STATUSES)
    for batch in batches:
        total += 1
        status = label_for(batch.normalized_status)
        counts[status] = counts.get(status, 0) + 1
        rc = batch.request_counts
        if rc is not None:
            for kind in REQUEST_COUNT_KINDS:
                value = getattr(rc, kind)
                if value:
                    key = (status, kind)
                    sums[key] = sums.get(key, 0) + int(value)
        if status in active_set:
            created = batch.created
            if created is not None and (status not in oldest or created < oldest[status]):
                oldest[status] = created
            expires = batch.expires
            if expires is not None and (next_expiry is None or expires < next_expiry):
                next_expiry = expires
            if per_batch:
                active.append((batch, status))
    for status in counts:
        for kind in REQUEST_COUNT_KINDS:
            sums.setdefault((status, kind), 0)
    jobs: tuple[JobRow, ...] = ()
    dropped = 0
    if per_batch:
        active.sort(key=lambda item: item[0].created or 0.0, reverse=True)
        jobs = tuple(_job_row(b, s) for b, s in active[:per_batch_limit])
        dropped = max(0, len(active) - per_batch_limit)
    return BatchSnapshot(
        provider=provider,
        taken_at=now,
        counts=MappingProxyType(counts),
        request_counts=MappingProxyType(sums),
        oldest_created=MappingProxyType(oldest),
        next_expiry=next_expiry,
        jobs=jobs,
        jobs_dropped=dropped,
        batches=total,
    )


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

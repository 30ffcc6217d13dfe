"""What must outlive a single poll of one provider: counters, histograms and the ids already counted.

A list poll only shows the present; "a batch reached `failed`" is an event, so we remember which ids we have seen
and count each terminal transition once. The memory is bounded: an id is forgotten once its terminal timestamp is
older than the retention (48 h), and a batch whose terminal timestamp is older than the retention or than our own
start is never counted — so neither a restart nor forgetting can count a batch twice.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from .models import KNOWN_STATUSES, TERMINAL_STATUSES, Batch, CacheDebug

RETENTION_SECONDS: Final = 48 * 3600.0
MAX_UNKNOWN_STATUSES: Final = 20
OVERFLOW_STATUS: Final = "other"
HIT_TYPES: Final = ("direct", "semantic", "unknown")
SIMILARITY_BUCKETS: Final = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 1.0)


@dataclass(frozen=True, slots=True)
class HistogramView:
    buckets: tuple[float, ...]
    cumulative: tuple[int, ...]  # one per bucket, then +Inf
    sum: float

    @property
    def count(self) -> int:
        return self.cumulative[-1]


class Histogram:
    """A plain accumulator; the exposition gets a frozen copy, never this object."""

    __slots__ = ("_buckets", "_counts", "_sum")

    def __init__(self, buckets: Iterable[float]) -> None:
        self._buckets = tuple(buckets)
        self._counts = [0] * (len(self._buckets) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self._buckets, value)] += 1
        self._sum += value

    def view(self) -> HistogramView:
        running = 0
        cumulative = []
        for c in self._counts:
            running += c
            cumulative.append(running)
        return HistogramView(self._buckets, tuple(cumulative), self._sum)


@dataclass(frozen=True, slots=True)
class LedgerView:
    """An immutable copy of a provider's cumulative figures, taken after a poll."""

    finished: Mapping[str, int]
    last_finished: Mapping[str, float]
    durations: Mapping[str, HistogramView]
    latency: HistogramView
    cache_lookups: int
    cache_hits: Mapping[str, int]
    similarity: HistogramView
    polls: int
    pages: int
    errors: Mapping[str, int]
    tracked_ids: int


class Ledger:
    """Per-provider cumulative state. Only the provider's poller task writes it."""

    def __init__(
        self,
        started_at: float,
        duration_buckets: Iterable[float],
        latency_buckets: Iterable[float],
        reasons: Iterable[str],
        retention_seconds: float = RETENTION_SECONDS,
    ) -> None:
        self.started_at = started_at
        self.retention = retention_seconds
        # id → one float: -t when last seen active by the poll that started at t; +t once settled (terminal), t being
        # its terminal timestamp (or when we saw it), after which it is forgotten at t + retention. One float per id
        # rather than a tuple keeps a 100k-batch gateway's ledger near 150 bytes per batch.
        self._ids: dict[str, float] = {}
        self._cache_counted: set[str] = set()
        self._finished = dict.fromkeys(TERMINAL_STATUSES, 0)
        self._last_finished: dict[str, float] = {}
        duration_buckets = tuple(duration_buckets)
        self._durations = {s: Histogram(duration_buckets) for s in TERMINAL_STATUSES}
        self._latency = Histogram(latency_buckets)
        self._cache_lookups = 0
        self._cache_hits = dict.fromkeys(HIT_TYPES, 0)
        self._similarity = Histogram(SIMILARITY_BUCKETS)
        self._polls = 0
        self._pages = 0
        self._errors = dict.fromkeys(reasons, 0)
        self._unknown_statuses: set[str] = set()
        self._overflowed = False
        self.status_overflow_pending = False

    # --- events -------------------------------------------------------------------------------------------------

    def poll_started(self) -> None:
        self._polls += 1

    def error(self, reason: str) -> None:
        self._errors[reason] = self._errors.get(reason, 0) + 1

    def pages_fetched(
        self, pages: int, latencies: Iterable[float], cache_debugs: Iterable[CacheDebug]
    ) -> None:
        self._pages += pages
        for latency in latencies:
            self._latency.observe(latency)
        for debug in cache_debugs:
            self._count_cache(debug)

    def admit_status(self, status: str) -> str:
        """The label value for `status`: known ones as they are, up to 20 unknown ones, then `other`."""
        if status in KNOWN_STATUSES or status in self._unknown_statuses:
            return status
        if len(self._unknown_statuses) < MAX_UNKNOWN_STATUSES:
            self._unknown_statuses.add(status)
            return status
        if not self._overflowed:
            self._overflowed = True
            self.status_overflow_pending = True
        return OVERFLOW_STATUS

    def observe(self, batches: Iterable[Batch], now: float, complete: bool) -> int:
        """observe_page then finish_poll, for a list seen in one piece."""
        finished = self.observe_page(batches, now)
        self.finish_poll(now, complete)
        return finished

    def observe_page(self, batches: Iterable[Batch], now: float) -> int:
        """Count terminal transitions and item cache lookups once per id; returns how many batches finished now.

        `now` is the poll's start time, the same for every page of a poll: finish_poll uses it to tell which
        active ids this poll saw.
        """
        ids = self._ids
        horizon = now - self.retention
        newly_finished = 0
        for batch in batches:
            status = batch.normalized_status
            entry = ids.get(batch.id)
            if status not in TERMINAL_STATUSES:
                ids[batch.id] = -now
                self._count_item_cache(batch)
                continue
            ts = batch.terminal_timestamp(status)
            if ts is not None and ts > self._last_finished.get(status, 0.0):
                self._last_finished[status] = ts
            if entry is not None and entry > 0:
                continue  # already settled
            if ts is None:
                # No timestamp (Gemini `deleted`): only a transition we watched happen is an event.
                if entry is not None:
                    self._finish(status, None, batch)
                    newly_finished += 1
                    self._count_item_cache(batch)
                ids[batch.id] = now
                continue
            if ts < horizon:
                continue  # older than we remember: never counted, never stored
            if ts >= self.started_at or entry is not None:
                self._finish(status, ts, batch)
                newly_finished += 1
                self._count_item_cache(batch)
            ids[batch.id] = ts
        return newly_finished

    def finish_poll(self, now: float, complete: bool) -> None:
        """Forget what may be forgotten; vanished active ids only after a poll that saw the whole list."""
        horizon = now - self.retention
        seen_marker = -now
        stale = [
            batch_id
            for batch_id, value in self._ids.items()
            if (0 < value < horizon) or (complete and value < 0 and value != seen_marker)
        ]
        for batch_id in stale:
            del self._ids[batch_id]
            self._cache_counted.discard(batch_id)

    # --- internals ----------------------------------------------------------------------------------------------

    def _finish(self, status: str, ts: float | None, batch: Batch) -> None:
        self._finished[status] += 1
        created = batch.created
        if ts is not None and created is not None and ts >= created:
            self._durations[status].observe(ts - created)

    def _count_item_cache(self, batch: Batch) -> None:
        extra = batch.extra_fields
        if extra is None or extra.cache_debug is None or batch.id in self._cache_counted:
            return
        self._cache_counted.add(batch.id)
        self._count_cache(extra.cache_debug)

    def _count_cache(self, debug: CacheDebug) -> None:
        self._cache_lookups += 1
        if debug.cache_hit:
            hit_type = debug.hit_type if debug.hit_type in ("direct", "semantic") else "unknown"
            self._cache_hits[hit_type] += 1
            if hit_type == "semantic" and debug.similarity is not None and 0.0 <= debug.similarity <= 1.0:
                self._similarity.observe(debug.similarity)

    def view(self) -> LedgerView:
        return LedgerView(
            finished=MappingProxyType(dict(self._finished)),
            last_finished=MappingProxyType(dict(self._last_finished)),
            durations=MappingProxyType({s: h.view() for s, h in self._durations.items()}),
            latency=self._latency.view(),
            cache_lookups=self._cache_lookups,
            cache_hits=MappingProxyType(dict(self._cache_hits)),
            similarity=self._similarity.view(),
            polls=self._polls,
            pages=self._pages,
            errors=MappingProxyType(dict(self._errors)),
            tracked_ids=len(self._ids),
        )

"""What must outlive a single poll of one provider: counters, histograms and the ids already counted.

A list poll only shows the present; "a batch reached `failed`" is an event, so we remember which ids we have seen
and count each terminal transition once. The memory is bounded: an id is forgotten once its terminal timestamp is
older than the retention (48 h), an active id not seen for `ACTIVE_FORGET_POLLS` polls is forgotten, and past
`MAX_TRACKED_IDS` the oldest ids go first. A batch whose terminal timestamp is older than the retention, than our
start (or, restored from a state file, than the watermark of the process before), or than the newest settled id
we had to forget, is never counted — so neither a restart nor forgetting can count a batch twice. The ids
themselves are kept compact (exporter/tracked.py): a settled id is a 64-bit key and a time, not a string.

Nothing here trusts the host's wall clock to move forward: retention is measured against the gateway's own
timestamps (the newest one seen, which never goes back), and "seen by this poll" is a poll sequence number. A host
clock stepped two days ahead and back again would otherwise forget every counted id and then count them again.

The ledger is the only per-provider state that must survive a restart. `head_state` is its small part (the
counters, histograms and label-value bounds: a bound that restarts from zero admits new values on every rolling
deploy), `count_tables` its counters by status and owner group (`count_rows` as a state holds them),
`active_ids`/`settled_columns` its ids, `take_changes` what changed in them since the last write;
exporter/statefile.py writes them and `load_state` takes them back.
"""

from __future__ import annotations

import bisect
import math
import re
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from .failure_classes import TABLE as KNOWN_CODES
from .idtable import TimedKeys, stable_key
from .models import (
    KNOWN_STATUSES,
    MAX_TIMESTAMP,
    TERMINAL_SET,
    TERMINAL_STATUSES,
    Batch,
    CacheDebug,
    id_label,
    normalize_status,
)
from .outcomes import OUTCOMES, outcomes
from .tracked import IdChanges, TrackedIds

RETENTION_SECONDS: Final = 48 * 3600.0
MAX_UNKNOWN_STATUSES: Final = 20
MAX_CODES: Final = 20
MAX_GROUP_VALUES: Final = 50
MAX_TRACKED_IDS: Final = 1_000_000
ACTIVE_FORGET_POLLS: Final = 20
# How far ahead of the host's clock a gateway timestamp may move the retention clock: a lying gateway (a year-3000
# `completed_at`) must not make the ledger forget every id at once.
MAX_FUTURE_SECONDS: Final = 86_400.0
# An end time this far beyond both our clock and the newest time the gateway showed is not believed (_read).
BELIEVABLE_AHEAD_SECONDS: Final = 2 * 86_400.0
OVERFLOW_STATUS: Final = "other"
OVERFLOW_CODE: Final = "other"
INVALID_CODE: Final = "invalid"
NO_CODE: Final = "none"
FAILURE_STATUSES: Final = ("failed", "expired")
HIT_TYPES: Final = ("direct", "semantic", "unknown")
STAGES: Final = ("queued", "processing", "finalizing")
ENDPOINTS: Final = ("list", "retrieve")
SIMILARITY_BUCKETS: Final = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 1.0)
_CODE_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_MAX_LABEL_VALUE: Final = 128

Group = tuple[str, ...]  # the batch's metadata label values, in settings.metadata_labels order; () when unset


@dataclass(frozen=True, slots=True)
class HistogramView:
    buckets: tuple[float, ...]
    cumulative: tuple[int, ...]  # one per bucket, then +Inf
    sum: float

    @property
    def count(self) -> int:
        return self.cumulative[-1]


class Histogram:
    """A plain accumulator; the exposition gets a frozen copy, never this object.

    Only finite, non-negative values are observed: one infinite value would make `_sum` +Inf for the life of the
    process (and of its state file).
    """

    __slots__ = ("_buckets", "_counts", "_sum")

    def __init__(self, buckets: Iterable[float]) -> None:
        self._buckets = tuple(buckets)
        self._counts = [0] * (len(self._buckets) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        if not (0.0 <= value < math.inf):
            return
        self._counts[bisect.bisect_left(self._buckets, value)] += 1
        self._sum += value

    def view(self) -> HistogramView:
        running = 0
        cumulative = []
        for c in self._counts:
            running += c
            cumulative.append(running)
        return HistogramView(self._buckets, tuple(cumulative), self._sum)

    def to_state(self) -> dict[str, Any]:
        return {"buckets": list(self._buckets), "counts": list(self._counts), "sum": self._sum}

    def load(self, state: Mapping[str, Any]) -> bool:
        """Take counts from a state file when its buckets are ours; False (kept empty) when they differ."""
        if tuple(float(b) for b in state["buckets"]) != self._buckets:
            return False
        counts = [int(c) for c in state["counts"]]
        total = float(state["sum"])
        if len(counts) != len(self._counts) or any(c < 0 for c in counts) or not (0.0 <= total < math.inf):
            raise ValueError("histogram counts do not fit its buckets")
        self._counts = counts
        self._sum = total
        return True


@dataclass(frozen=True, slots=True)
class LastFailure:
    batch_id: str
    code: str
    at: float


@dataclass(frozen=True, slots=True)
class LedgerView:
    """An immutable copy of a provider's cumulative figures, taken after a poll."""

    finished: Mapping[tuple[str, Group], int]
    finished_requests: Mapping[tuple[str, Group], tuple[int, ...]]  # OUTCOMES order
    failures: Mapping[tuple[str, str, Group], int]
    last_failure: Mapping[str, LastFailure]
    last_finished: Mapping[str, float]
    durations: Mapping[str, HistogramView]
    stages: Mapping[str, HistogramView]
    latency: HistogramView
    cache_lookups: int
    cache_hits: Mapping[str, int]
    similarity: HistogramView
    polls: int
    requests: Mapping[str, int]
    errors: Mapping[str, int]
    tracked_ids: int
    last_resync: float | None = None
    groups_seen: tuple[Group, ...] = field(default=())
    # finished/failures keys shown at an earlier value for now (set by the poller when it publishes): series a render
    # could not foresee, at 0 (exporter/presence.py), and those that rose above what the process started with
    # before a scrape had seen that start, at their start value, so that the count is an increase a scrape can see;
    # with the finished_requests values shown meanwhile for held (status, group) keys (zeros when absent).
    held: Mapping[tuple[Any, ...], int] = field(default_factory=lambda: MappingProxyType({}))
    held_requests: Mapping[tuple[str, Group], tuple[int, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )

    def finished_total(self, status: str) -> int:
        """All groups of one status together (what v1 exposed, and what most tests want)."""
        return sum(n for (s, _), n in self.finished.items() if s == status)


def count_rows(table: Mapping[tuple[Any, ...], Any]) -> list[list[Any]]:
    """A counter table of `Ledger.count_tables` as a state holds it (and `Ledger.load_state` reads it): per entry
    the key's parts, a group as a list, then the value, a finished_requests entry's as a list."""
    return [
        [
            *(list(part) if isinstance(part, tuple) else part for part in key),
            list(v) if isinstance(v, tuple) else v,
        ]
        for key, v in table.items()
    ]


def row_key(row: list[Any]) -> tuple[Any, ...]:
    """A `count_rows` row's key (every part but the value, the group as a tuple), as the ledger keys its counters."""
    return tuple(tuple(part) if isinstance(part, list) else part for part in row[:-1])


def failure_codes(batch: Batch) -> list[str]:
    """Distinct error codes of a failed batch, in the order given; invalid ones as `invalid`."""
    errors = batch.errors
    data = errors.data if errors is not None else None
    codes: list[str] = []
    for item in data or ():
        code = item.code
        if not code:
            continue
        code = code if _CODE_RE.match(code) else INVALID_CODE
        if code not in codes:
            codes.append(code)
    return codes


def _label_value(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    return text[:_MAX_LABEL_VALUE]


class Ledger:
    """Per-provider cumulative state. Only the provider's poller task writes it."""

    def __init__(
        self,
        started_at: float,
        duration_buckets: Iterable[float],
        latency_buckets: Iterable[float],
        reasons: Iterable[str],
        retention_seconds: float = RETENTION_SECONDS,
        *,
        metadata_keys: Sequence[str] = (),
        max_tracked_ids: int = MAX_TRACKED_IDS,
        poll_interval: float = 30.0,
    ) -> None:
        # Terminal timestamps at or after this are transitions we may count on first sight: our start, or the last
        # complete poll before the stop of the process whose state we restored.
        self.started_at = started_at
        self.retention = retention_seconds
        self.metadata_keys = tuple(metadata_keys)
        self.max_tracked_ids = max_tracked_ids
        self.poll_interval = poll_interval
        # Active ids by the poll that last saw them; settled ids (terminal) by their terminal timestamp (or the
        # gateway time when we saw them), forgotten once the gateway's clock passes it + retention.
        self._ids = TrackedIds(retention_seconds)
        # Settled ids forgotten (by retention or the cap): nothing at or before this is counted again.
        self._floor = 0.0
        # The gateway's clock as its timestamps show it: the newest created/terminal timestamp seen (never more
        # than MAX_FUTURE_SECONDS ahead of ours). It only moves forward, so retention cannot run backwards.
        self.gateway_now = 0.0
        # Polls finished so far: "seen by poll n" marks active ids without reading any clock.
        self._seq = 0
        self._cache_counted: set[str] = set()  # active ids whose item cache debug was counted
        self._finished: dict[tuple[str, Group], int] = {}
        self._finished_requests: dict[tuple[str, Group], list[int]] = {}
        self._failures: dict[tuple[str, str, Group], int] = {}
        self._codes: set[str] = set()
        self._last_failure: dict[str, LastFailure] = {}
        self._last_finished: dict[str, float] = {}
        duration_buckets = tuple(duration_buckets)
        self._durations = {s: Histogram(duration_buckets) for s in TERMINAL_STATUSES}
        self._stages = {s: Histogram(duration_buckets) for s in STAGES}
        self._latency = Histogram(latency_buckets)
        self._cache_lookups = 0
        self._cache_hits = dict.fromkeys(HIT_TYPES, 0)
        self._similarity = Histogram(SIMILARITY_BUCKETS)
        self._polls = 0
        self._requests = dict.fromkeys(ENDPOINTS, 0)
        self._errors = dict.fromkeys(reasons, 0)
        self._unknown_statuses: set[str] = set()
        self._group_values: list[set[str]] = [set() for _ in self.metadata_keys]
        self._groups_seen: set[Group] = set()
        self.last_complete_poll: float | None = None
        # The gateway's newest time when the running full list began (list_began); 0.0 while it had shown none,
        # taken from the list's first page then.
        self._list_gateway_at: float | None = None
        # The watermark read from a state file, kept as it was (started_at may be lower, see load_state).
        self.restored_watermark: float | None = None
        self.last_resync: float | None = None
        # When the last successful poll ended, kept across restarts: an outage that outlives a restart is still
        # as old as it is (BifrostBatchExporterDataStale must not resolve because the pod was restarted).
        self.last_success: float | None = None
        # One-shot warnings the poller logs (and clears) after the poll that raised them.
        self.status_overflow_pending = False
        self.code_overflow_pending = False
        self.group_overflow_pending = False
        self.forgotten_pending = 0
        self._status_overflowed = False
        self._code_overflowed = False
        self._group_overflowed = False
        # Told of every batch counted as finished, once per id, with its group (the cost ledger awaits its settlement).
        self.finish_hook: Callable[[Batch, str, float | None, Group], None] | None = None
        # Watched batches (held as running) counted as finished since take_ended, and whether they ran out their
        # window: the early warning's calibration learns from how a batch really ended, never from our clock
        # (risk.py).
        self._ended: dict[str, bool] = {}

    # --- events -------------------------------------------------------------------------------------------------

    def poll_started(self) -> None:
        self._polls += 1

    def error(self, reason: str) -> None:
        self._errors[reason] = self._errors.get(reason, 0) + 1

    def requests_sent(self, endpoint: str, n: int) -> None:
        self._requests[endpoint] = self._requests.get(endpoint, 0) + n

    def resynced(self, at: float) -> None:
        self.last_resync = at

    def poll_succeeded(self, at: float) -> None:
        self.last_success = at

    def pages_fetched(
        self, pages: int, latencies: Iterable[float], cache_debugs: Iterable[CacheDebug]
    ) -> None:
        """Latencies and cache debug of list responses; `pages` is kept for callers, requests count the cost."""
        del pages
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
        if not self._status_overflowed:
            self._status_overflowed = True
            self.status_overflow_pending = True
        return OVERFLOW_STATUS

    def group_of(self, batch: Batch) -> Group:
        """The batch's metadata label values: "" for a missing key, up to 50 values per key, then `other`."""
        if not self.metadata_keys:
            return ()
        metadata = batch.metadata or {}
        values = []
        for i, key in enumerate(self.metadata_keys):
            raw = metadata.get(key)
            value = "" if raw is None else _label_value(raw)
            seen = self._group_values[i]
            if value and value not in seen:
                if len(seen) >= MAX_GROUP_VALUES:
                    if not self._group_overflowed:
                        self._group_overflowed = True
                        self.group_overflow_pending = True
                    value = OVERFLOW_STATUS
                else:
                    seen.add(value)
            values.append(value)
        return tuple(values)

    def observe(self, batches: Iterable[Batch], now: float, complete: bool) -> int:
        """observe_page then finish_poll, for a list seen in one piece."""
        finished = self.observe_page(batches, now)
        self.finish_poll(now, complete)
        return finished

    def observe_page(self, batches: Iterable[Batch], now: float, floor: float = 0.0) -> int:
        """Count terminal transitions and item cache lookups once per id; returns how many batches finished now.

        `floor`: batches never seen before count only from there (and from the watermark): those a key added to
        the view lists, whose tenant's past is history.

        `now` is the poll's start time, the same for every page of a poll: finish_poll uses it to tell which
        active ids this poll saw.

        Every batch of every full list passes here, so each batch's status and terminal time are read once (the
        first pass, which also moves the gateway's clock before the horizon is taken) and handed to the second.
        """
        ids = self._ids
        active = ids.active
        seen = self._read(batches, now)
        horizon = self.horizon()
        start = max(self.started_at, floor)
        poll = self._seq
        last_finished = self._last_finished
        newly_finished = 0
        for batch, status, ts in seen:
            batch_id = batch.id
            if status not in TERMINAL_SET:
                # A settled id stays settled: a batch that flips terminal → active → terminal counts once.
                if batch_id in active or ids.settled_at(batch_id) is None:
                    ids.mark_active(batch_id, poll)
                    self._count_item_cache(batch)
                continue
            seen_active = batch_id in active
            if seen_active and ts is not None and ts <= horizon:
                # A batch we watched run, shown ended before anything we remember: a zero or default time a provider
                # conversion left (corrected later, as a rule), not its end. Taken as no end time: counted now (it
                # was watched), kept from the gateway time it was seen, and no bogus time reaches the duration, the
                # last-finished gauge or the cost ledger's horizon (which would call its settlement missing at once).
                ts = None
            if ts is not None and ts > last_finished.get(status, 0.0):
                last_finished[status] = ts
            if not seen_active:
                if ts is not None and ts <= horizon:
                    continue  # older than we remember (or than an id we had to forget): never counted or stored
                settled_at = ids.settled_at(batch_id)
                if settled_at is not None:
                    if ts is not None and ts > settled_at:
                        # Counted already, now shown with a later end time (a corrected time, or a flip-flop
                        # that ended again): its id is kept from the later time, or it would be forgotten 48 h
                        # after the first while the list still shows it above the horizon, and counted again.
                        ids.forget(batch_id)
                        self._settle(batch_id, ts)
                    continue  # already settled
            if ts is None:
                # No timestamp (Gemini, Bedrock's list items, `deleted`): a transition we watched happen is an event,
                # and so is one of a batch created after our watermark (it cannot have finished before it) — unless
                # it was created at or before the horizon: it may be one we counted and have since forgotten (settled
                # ids are kept 48 h of gateway time), and created_at is all that bounds when it ended.
                created = batch.created
                if seen_active or (created is not None and created >= start and created > horizon):
                    self._finish(status, None, batch)
                    newly_finished += 1
                    self._count_item_cache(batch)
                # Retained from the gateway time we saw it (our own clock could be anywhere).
                self._settle(batch_id, max(self.gateway_now, horizon + 1.0, 1.0))
                continue
            if ts >= start or seen_active:
                self._finish(status, ts, batch)
                newly_finished += 1
                self._count_item_cache(batch)
            self._settle(batch_id, ts)
        return newly_finished

    def _read(self, batches: Iterable[Batch], wall_now: float) -> list[tuple[Batch, str, float | None]]:
        """Each batch with its status and terminal time (None for a batch still running), and the gateway's clock
        moved to the newest time the page shows (creation or end), bounded by ours plus MAX_FUTURE_SECONDS."""
        newest = self.gateway_now
        read: list[tuple[Batch, str, float | None]] = []
        append = read.append
        for batch in batches:
            status = normalize_status(batch.status)
            # Batch.created written out (every batch of every list; newest is never negative, so 0 < created holds)
            created = batch.created_at
            if created is not None and newest < created <= MAX_TIMESTAMP:
                newest = created
            ts = batch.terminal_timestamp(status) if status in TERMINAL_SET else None
            if ts is not None:
                # An end time days ahead of our clock and of every time the gateway showed (its creation times
                # included: a batch ends within a day or so of its creation) is no time at all (a gateway's clock
                # days ahead for end times, a unit mix-up): trusted, it would count history as new transitions.
                # Taken as no end time (counted when watched, or when created after the watermark). Our clock alone
                # is no bound: it may be days behind.
                if ts > max(wall_now, newest) + BELIEVABLE_AHEAD_SECONDS:
                    ts = None
                elif ts > newest:
                    newest = ts
            append((batch, status, ts))
        self.gateway_now = max(self.gateway_now, min(newest, wall_now + MAX_FUTURE_SECONDS))
        if self._list_gateway_at == 0.0:
            self._list_gateway_at = self.gateway_now
        return read

    def _settle(self, batch_id: str, at: float) -> None:
        self._ids.settle(batch_id, at)
        self._cache_counted.discard(batch_id)

    def horizon(self) -> float:
        """Terminal timestamps at or before this are never counted (nor remembered) on first sight."""
        return max(self.gateway_now - self.retention, self._floor)

    def finish_poll(self, now: float, complete: bool, *, whole_view: bool = True) -> None:
        """Forget what may be forgotten, then remember `now` as the last complete poll when it was one.

        Vanished active ids go after a poll that saw the whole list, or once unseen for ACTIVE_FORGET_POLLS polls
        of any outcome (a provider whose polls always stop early would otherwise grow the ledger for ever).
        Settled ids go once the gateway's clock is past their retention; the newest of them raises the floor.
        A list without `whole_view` (a key of the view refused on the provider) moves no watermark: it saw
        none of that key's batches, and a watermark past their ends would take them for history after a restart
        or a view change, though they count when the key is allowed again in this process.
        """
        ids = self._ids
        self._floor = max(self._floor, ids.expire(self.horizon()))
        ids.forget_stale_active(self._seq, complete, ACTIVE_FORGET_POLLS)
        excess, newest = ids.enforce_cap(self.max_tracked_ids)
        if excess:
            self._floor = max(self._floor, newest)
            self.forgotten_pending += excess
        if self._cache_counted:
            self._cache_counted.intersection_update(ids.active)
        self._seq += 1
        if complete and whole_view:
            self.list_completed(now)

    def rebase(self, start: float) -> None:
        """The restored state was another gateway's (durable.restore): count from `start`, this process's start, as
        a ledger without state would; the restored ids stay (an id both accounts show is the same batch)."""
        self.started_at = max(self.started_at, start)
        self.restored_watermark = self.started_at

    def view_changed(self) -> None:
        """The poll now lists with other keys: batches a new key shows were never ours to watch, so one of them
        that ended before the old view's last complete list began is history, not a transition (as it would be
        for a process started now with the new keys). That list saw every batch of the old view ended before it
        began, so raising the counting floor there loses none of the old view's transitions. Before any complete
        list the floor stays: the old view's batches that ended since the start may not have been listed yet; so it
        does after a restart before this process's first complete list (the restored watermark may be one a host
        clock ahead wrote, which the restore deliberately did not take as the floor)."""
        mark = self.last_complete_poll
        if mark is not None and mark > self.started_at:
            self.started_at = mark

    def list_began(self) -> None:
        """A full list begins: what the gateway had shown by now bounds the watermark list_completed sets."""
        self._list_gateway_at = self.gateway_now

    def list_completed(self, started: float) -> None:
        """A list that saw every batch started at `started`: the restart watermark moves there.

        Bounded by the gateway's newest timestamp when the list began, so a host clock stepped ahead cannot put
        the watermark past what the gateway had shown by then. Not its newest at the end: a list spread over polls
        passes a key, a batch ends there, and a later page moves the gateway's clock past that end; a watermark
        above it would take the batch, which this list never saw finished, for history after a restart. A
        watermark lower than the list's real start is still exact: that list saw every batch that finished before
        it (they are among the ids kept), so only batches never seen can count.
        """
        at_start, self._list_gateway_at = self._list_gateway_at, None
        # Without list_began (a list observed in one call, as tests do): the gateway's clock now, as before.
        bound = at_start if at_start else self.gateway_now
        self.last_complete_poll = min(started, bound) if bound > 0 else started

    def mark_seen(self, batch_ids: Iterable[str]) -> None:
        """A list showed these ids without handing them to observe_page (a summary item left for the retrieve that
        brings its counts, store.defer_sparse): one held as running is seen by this poll, so it is not forgotten
        as stale while its retrieves fail, and its end, when a retrieve shows it, counts as one watched. An id not
        held is left alone: a sighting that was never folded must not start tracking it."""
        ids = self._ids
        for batch_id in batch_ids:
            if batch_id in ids.active:
                ids.mark_active(batch_id, self._seq)

    def forget(self, batch_ids: Iterable[str]) -> None:
        """Drop ids the caller knows are gone (404, absent from a full list) or stale."""
        for batch_id in batch_ids:
            self._ids.forget(batch_id)
            self._cache_counted.discard(batch_id)

    def take_ended(self) -> dict[str, bool]:
        """The watched batches counted as finished since the last call, and whether each ran out its window
        (whatever status it ended with); cleared. Kept until taken, so the ends of a poll whose snapshot was
        discarded (a failed page) still reach the tracker."""
        ended, self._ended = self._ended, {}
        return ended

    def is_settled(self, batch_id: str) -> bool:
        return batch_id not in self._ids.active and self._ids.settled_at(batch_id) is not None

    # --- internals ----------------------------------------------------------------------------------------------

    def _finish(self, status: str, ts: float | None, batch: Batch) -> None:
        group = self.group_of(batch)
        self._groups_seen.add(group)
        key = (status, group)
        self._finished[key] = self._finished.get(key, 0) + 1
        result = outcomes(batch.request_counts, status)
        acc = self._finished_requests.get(key)
        if acc is None:
            acc = self._finished_requests[key] = [0] * len(OUTCOMES)
        for i, value in enumerate(result[: len(OUTCOMES)]):
            acc[i] += value
        if status in FAILURE_STATUSES:
            codes = [self._admit_code(c) for c in failure_codes(batch)] or [NO_CODE]
            for code in dict.fromkeys(codes):
                fkey = (status, code, group)
                self._failures[fkey] = self._failures.get(fkey, 0) + 1
            at = ts if ts is not None else 0.0
            previous = self._last_failure.get(status)
            if previous is None or at >= previous.at:
                self._last_failure[status] = LastFailure(id_label(batch.id), codes[0], at)
        created = batch.created
        if ts is not None and created is not None and ts >= created:
            self._durations[status].observe(ts - created)
        self._observe_stages(batch, status, ts)
        ended = self._ended
        if batch.id in self._ids.active and (len(ended) < self.max_tracked_ids or batch.id in ended):
            # Ran out its window: `expired`, or (Anthropic's `ended`, which it shows for every outcome) requests
            # expired, or an end at or past its expiry (both the gateway's times).
            expires = batch.expires
            ended[batch.id] = (
                status == "expired"
                or result.expired > 0
                or (ts is not None and expires is not None and ts >= expires)
            )
        if self.finish_hook is not None:
            self.finish_hook(batch, status, ts, group)

    def _observe_stages(self, batch: Batch, status: str, ts: float | None) -> None:
        created, started, finalizing = batch.created, batch.started, batch.finalizing
        if created is not None and started is not None and started >= created:
            self._stages["queued"].observe(started - created)
        if started is not None:
            end = finalizing if finalizing is not None else ts
            if end is not None and end >= started:
                self._stages["processing"].observe(end - started)
        if (
            finalizing is not None
            and status in ("completed", "ended")
            and ts is not None
            and ts >= finalizing
        ):
            self._stages["finalizing"].observe(ts - finalizing)

    def _admit_code(self, code: str) -> str:
        # The failure table's codes are a fixed set, exposed from 0 and routed by class: past the cap they must
        # keep their own series (an input failure counted as `other`, class unknown, would page the platform team).
        if code in self._codes or code in (INVALID_CODE, NO_CODE) or code in KNOWN_CODES:
            return code
        if len(self._codes) < MAX_CODES:
            self._codes.add(code)
            return code
        if not self._code_overflowed:
            self._code_overflowed = True
            self.code_overflow_pending = True
        return OVERFLOW_CODE

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
            finished_requests=MappingProxyType({k: tuple(v) for k, v in self._finished_requests.items()}),
            failures=MappingProxyType(dict(self._failures)),
            last_failure=MappingProxyType(dict(self._last_failure)),
            last_finished=MappingProxyType(dict(self._last_finished)),
            durations=MappingProxyType({s: h.view() for s, h in self._durations.items()}),
            stages=MappingProxyType({s: h.view() for s, h in self._stages.items()}),
            latency=self._latency.view(),
            cache_lookups=self._cache_lookups,
            cache_hits=MappingProxyType(dict(self._cache_hits)),
            similarity=self._similarity.view(),
            polls=self._polls,
            requests=MappingProxyType(dict(self._requests)),
            errors=MappingProxyType(dict(self._errors)),
            tracked_ids=len(self._ids),
            last_resync=self.last_resync,
            groups_seen=tuple(sorted(self._groups_seen)),
        )

    # --- durable state ------------------------------------------------------------------------------------------

    def head_state(self) -> dict[str, Any]:
        """Everything a restarted process needs to resume but the ids and the counter tables (`count_tables`):
        plain JSON types, a few kilobytes."""
        return {
            "watermark": self.last_complete_poll
            if self.last_complete_poll is not None
            else self.restored_watermark
            if self.restored_watermark is not None
            else self.started_at,
            "gateway_now": self.gateway_now,
            "seq": self._seq,
            "floor": self._floor,
            "metadata_keys": list(self.metadata_keys),
            "group_values": [sorted(values) for values in self._group_values],
            "unknown_statuses": sorted(self._unknown_statuses),
            "codes": sorted(self._codes),
            "last_failure": {s: [f.batch_id, f.code, f.at] for s, f in self._last_failure.items()},
            "last_finished": self._last_finished,
            "durations": {s: h.to_state() for s, h in self._durations.items()},
            "stages": {s: h.to_state() for s, h in self._stages.items()},
            "latency": self._latency.to_state(),
            "similarity": self._similarity.to_state(),
            "cache_lookups": self._cache_lookups,
            "cache_hits": self._cache_hits,
            "polls": self._polls,
            "requests": self._requests,
            "errors": self._errors,
            "last_resync": self.last_resync,
            "last_success": self.last_success,
        }

    def count_tables(self) -> dict[str, dict[tuple[Any, ...], Any]]:
        """The per-status-and-group counter tables as copies keyed by row (a state writes them as `count_rows`):
        apart from the head, since the state journal writes the rows that changed, not the tables, which
        `metadata_labels` can grow to thousands of rows."""
        return {
            "finished": dict(self._finished),
            "finished_requests": {k: tuple(v) for k, v in self._finished_requests.items()},
            "failures": dict(self._failures),
        }

    def holds_active(self, batch_id: str) -> bool:
        """The id is one this ledger saw running and has not seen end (restored across a restart too)."""
        return batch_id in self._ids.active

    def active_ids(self) -> dict[str, int]:
        """Active ids by the poll number that last saw them (a copy)."""
        return dict(self._ids.active)

    def settled_columns(self) -> tuple[tuple[array[int], array[float]], ...]:
        """Stable keys and terminal times of the settled ids, as the columns they live in (see TrackedIds)."""
        return self._ids.settled_columns()

    def take_changes(self) -> IdChanges | None:
        """The ids' changes since the last call (None: too many were tracked, write everything)."""
        return self._ids.take_changes()

    def discard_changes(self) -> None:
        """The caller is writing every id as it is now."""
        self._ids.discard_changes()

    def to_state(self) -> dict[str, Any]:
        """The whole state in plain JSON types (ids included, settled ones as [stable key, time] pairs): for tests
        and tools; the state directory writes the ids as binary columns and journal records instead."""
        return {
            **self.head_state(),
            **{name: count_rows(table) for name, table in self.count_tables().items()},
            "active": self.active_ids(),
            "settled": [[key, at] for key, at in self._ids.settled_items()],
        }

    def load_state(self, state: Mapping[str, Any], settled: TimedKeys | None = None) -> list[str]:
        """Resume from `head_state` fields, the `count_rows` of `count_tables` and the ids: `active` and `settled` (pairs, or the table read from a
        state file), or the single `ids` mapping of format version 1. Raises (KeyError, TypeError, ValueError) on
        a malformed state, leaving this ledger untouched, and returns notes on parts deliberately not restored
        (changed buckets or keys)."""
        notes: list[str] = []
        fresh = Ledger(
            self.started_at,
            self._durations["completed"]._buckets,
            self._latency._buckets,
            self._errors,
            self.retention,
            metadata_keys=self.metadata_keys,
            max_tracked_ids=self.max_tracked_ids,
            poll_interval=self.poll_interval,
        )
        watermark = _finite(state["watermark"])
        fresh.gateway_now = _finite(state.get("gateway_now", 0.0))
        # The saved watermark, unless it is ahead of both this start and the gateway's clock (a watermark taken
        # from a host clock that was ahead, before the gateway showed any time): a host clock now behind must not
        # lower it, or the batches that finished between the two clocks (history by the file's own record) count.
        fresh.started_at = min(watermark, max(self.started_at, fresh.gateway_now))
        fresh.last_complete_poll = None
        fresh.restored_watermark = watermark
        fresh._floor = _finite(state["floor"])
        fresh._seq = _count(state.get("seq", 0))
        active, table = _restored_ids(state, settled, fresh._seq)
        fresh._ids.restore(active, table)
        same_keys = list(state["metadata_keys"]) == list(self.metadata_keys)
        if not same_keys:
            notes.append("metadata_labels changed: per-owner counters start again from 0")
        else:
            for i, values in enumerate(state.get("group_values", [])[: len(self.metadata_keys)]):
                admitted = {_label_value(v) for v in values}
                if len(admitted) > MAX_GROUP_VALUES:
                    raise ValueError("more metadata values than the cap admits")
                fresh._group_values[i] = admitted
        unknown = {str(v) for v in state.get("unknown_statuses", [])}
        if len(unknown) > MAX_UNKNOWN_STATUSES:
            raise ValueError("more unknown statuses than the cap admits")
        fresh._unknown_statuses = unknown
        for s, g, n in state["finished"]:
            if same_keys:
                fresh._finished[(str(s), tuple(g))] = _count(n)
        for s, g, v in state["finished_requests"]:
            if same_keys:
                values = [_count(x) for x in v]
                if len(values) != len(OUTCOMES):
                    raise ValueError("finished_requests has the wrong width")
                fresh._finished_requests[(str(s), tuple(g))] = values
        for s, c, g, n in state["failures"]:
            if same_keys:
                fresh._failures[(str(s), str(c), tuple(g))] = _count(n)
        fresh._groups_seen = {g for _, g in fresh._finished} | {g for _, _, g in fresh._failures}
        if same_keys and "group_values" not in state:
            # Files of earlier releases did not keep the cap's values: the counters' groups are what was admitted.
            for group in fresh._groups_seen:
                for i, v in enumerate(group[: len(self.metadata_keys)]):
                    if v and v != OVERFLOW_STATUS and len(fresh._group_values[i]) < MAX_GROUP_VALUES:
                        fresh._group_values[i].add(v)
        fresh._codes = {str(c) for c in state["codes"]}
        if len(fresh._codes) > MAX_CODES:
            raise ValueError("more failure codes than the cap admits")
        fresh._last_failure = {
            str(s): LastFailure(str(v[0]), str(v[1]), _finite(v[2])) for s, v in state["last_failure"].items()
        }
        fresh._last_finished = {str(s): _finite(v) for s, v in state["last_finished"].items()}
        for name, hists in (("durations", fresh._durations), ("stages", fresh._stages)):
            for key, hist in hists.items():
                if key in state[name] and not hist.load(state[name][key]):
                    notes.append(f"{name} buckets changed: that histogram starts again from 0")
        if not fresh._latency.load(state["latency"]):
            notes.append("latency buckets changed: that histogram starts again from 0")
        fresh._similarity.load(state["similarity"])
        fresh._polls = _count(state["polls"])
        fresh._cache_lookups = _count(state["cache_lookups"])
        fresh._cache_hits.update({str(k): _count(v) for k, v in state["cache_hits"].items()})
        fresh._requests.update({str(k): _count(v) for k, v in state["requests"].items()})
        fresh._errors.update({str(k): _count(v) for k, v in state["errors"].items() if k in self._errors})
        last_resync = state.get("last_resync")
        fresh.last_resync = _finite(last_resync) if last_resync is not None else None
        last_success = state.get("last_success")
        fresh.last_success = _finite(last_success) if last_success is not None else None
        fresh.finish_hook = self.finish_hook
        self.__dict__.update(fresh.__dict__)
        return sorted(set(notes))


def _finite(value: Any) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    return number


def _count(value: Any) -> int:
    # Above 2**63 a hand edit or a writer bug, not a count: it would not even render as a float.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 63:
        raise ValueError("not a counter value")
    return value


def _restored_ids(
    state: Mapping[str, Any], settled: TimedKeys | None, seq: int
) -> tuple[dict[str, int], TimedKeys]:
    """The active and settled ids of a state: version 2's `active` and `settled` (or the table read alongside),
    or version 1's single `ids` mapping (id → -(poll + 1) when active, its time when settled)."""
    active: dict[str, int] = {}
    if "ids" in state:
        ids = state["ids"]
        if not isinstance(ids, dict):
            raise TypeError("ids is not a mapping")
        table = TimedKeys()
        for key, raw in ids.items():
            entry = _finite(raw)
            if entry == 0:
                raise ValueError("an id entry of 0")
            if entry > 0:
                table.set(stable_key(str(key)), entry)
            else:
                # Files of earlier releases marked active ids with -time: they become "seen by the last poll".
                active[str(key)] = seq if entry < -1e7 else max(0, int(-entry) - 1)
        return active, table
    raw_active = state["active"]
    if not isinstance(raw_active, dict):
        raise TypeError("active is not a mapping")
    for key, poll in raw_active.items():
        active[str(key)] = _count(poll)
    if settled is None:
        settled = TimedKeys()
        for key, at in state["settled"]:
            settled.set(_key(key), _settled_time(at))
    else:
        for _, at in settled.items():
            _settled_time(at)
    return active, settled


def _key(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**64:
        raise ValueError("not a 64-bit key")
    return value


def _settled_time(value: Any) -> float:
    at = _finite(value)
    if at <= 0:
        raise ValueError("a settled id without a time")
    return at

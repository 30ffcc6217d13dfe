"""Will an active batch miss its `expires_at`? One explainable rule, its per-batch memory, and a learned threshold.

An expired batch loses every request still pending, and the last hour is too late to act; a warning that is wrong
half the time is silenced in a week. So a batch is flagged only on evidence (docs/early-warning.md has the rule with
a worked example and the benchmark it was chosen on):

- **progress visible** (at least `MIN_PROGRESS` of its requests done): at risk once `MIN_ELAPSED` of its window has
  gone by, its *recent* rate (an exponentially weighted rate over the polls, as progress bars compute one) misses the
  expiry, *and* even at the best rate it has shown it would not finish with `SPARE` of its window to spare. The gates
  are Hadoop/Spark speculative execution's (enough time and progress before a projection counts); the second
  condition is node_exporter's `FilesystemSpaceFillingUp` pairing a projection with a hard limit: a batch that stalls
  for an hour with half its window left is not flagged, one that stalls with too little time left is.
- **nothing visible** (nothing done yet, or a provider that reports its counts only at the end: Anthropic, Bedrock;
  or OpenAI's `validating` with a total of 0): at risk once its window has gone by to the provider's *calibrated*
  fraction: the first point of the window at which at least `CALIBRATION_TARGET` of this provider's batches that
  still showed nothing there went on to expire, learned from the batches this exporter saw end, by whether they
  ran out their window (`Calibration`, persisted with the state); until it has seen enough,
  `risk_no_progress_fraction`.

- **confirmed**: a verdict counts (in `bifrost_batch_at_risk`, and as the per-batch `reason`) only once every poll
  has found the batch at risk for `CONFIRM` of its window (20 min of 24 h); an overdue batch counts at once, and so
  does one already at risk the first time the tracker sees it (after a start: no earlier poll said otherwise). The
  alert's `for:` cannot do this: it is on the provider's sum, which one flagged batch holds above 0 while others
  come and go (bench/alert_quality.py measures the alert that way).

The per-batch memory (`ProgressTracker`) holds the recent rate of each active batch between polls (and since when
its verdict has held); the snapshot builder feeds it and it forgets batches no longer active, learning from each how
the provider's blind batches end. Without a tracker (a one-off assessment) the recent and best rates are the average
rate since the batch started, and a verdict counts at once.

Every number comes from the gateway and is untrusted: counts may be negative or absurd, `progress` NaN, timestamps
far in the future. Nothing here raises on such input, and every number returned is finite or None.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple

from .models import Batch
from .outcomes import outcomes

# Beyond 2**53 a float no longer holds every integer, and no gateway means a batch that large: such a count is
# garbage, and the batch is left out rather than turned into a number that overflows the projection.
_MAX_COUNT: Final = 2**53
_PROJECTED_STATUSES: Final = frozenset({"validating", "in_progress"})

# The rule's constants, each chosen on bench/alert_quality.py (docs/early-warning.md shows the trade-offs).
MIN_ELAPSED: Final = 0.5  # fraction of the window before a projection may flag a batch
MIN_PROGRESS: Final = 0.01  # fraction of the requests done before a projection counts at all
SPARE: Final = (
    0.25  # fraction of the window a batch must still be able to spare, at its best rate, to be left alone
)
STALLED: Final = 0.25  # a recent rate below this share of the best rate reads as "stalled"
RATE_WINDOW: Final = 1 / 24  # the recent rate's time constant, as a fraction of the window (1 h of 24 h)
# A tracked batch's projection may flag it only after its progress has been watched for this share of RATE_WINDOW
# (15 min of a 24 h batch): a first rate is one poll's worth, or (a batch first seen with progress, as after an
# exporter restart) the average since the start, which a batch that queued for hours and now runs fast would fail.
WARMUP: Final = 0.25
# Calibration of the "nothing visible" threshold: 20 steps of 5 % of the window; a step counts once at least
# CALIBRATION_MIN_SAMPLES blind batches passed it, and is the threshold once CALIBRATION_TARGET of them expired.
CALIBRATION_STEPS: Final = 20
CALIBRATION_MIN_SAMPLES: Final = 20
CALIBRATION_TARGET: Final = 0.9
# Counts are halved when the first step passes this many batches: old behaviour fades, the ratios stay.
_CALIBRATION_HALVE_AT: Final = 10_000
# Batches a tracker remembers; beyond it new batches are judged without history (average rate since start).
MAX_TRACKED: Final = 200_000
# A tracked batch is at risk only once every poll has found it so for this share of its window (20 min of 24 h):
# a projection that holds for one poll and is gone the next (a count refreshed late, a short burst after a pause)
# is not evidence. Per batch, because the alert's own `for:` is on the provider's sum, which another flagged batch
# can already hold above 0: there a brief verdict would show in the firing alert at once. A batch at risk when the
# tracker first sees it counts at once (no history to confirm against; a projection warms up first anyway).
CONFIRM: Final = 1 / 72
# How far ahead of the gateway's time (its Dates and timestamps, or without a Date our own clock at the first poll,
# run on by the monotonic clock) the host's clock is believed when judging (ProgressTracker.clock): a larger step
# ahead is a host clock that jumped, not time that passed. One hour of a 24 h window shifts a projection by 4 %.
CLOCK_AHEAD_SECONDS: Final = 3600.0

Reason = Literal["overdue", "not_started", "no_progress", "slow", "stalled"]
# Label values of `reason` on bifrost_batch_job_at_risk_info, in the order the docs list them.
REASONS: Final[tuple[Reason, ...]] = ("overdue", "not_started", "no_progress", "slow", "stalled")


class Risk(NamedTuple):
    """The verdict on one batch.

    `pending` is what the batch still has to run (summed into `bifrost_batch_at_risk_requests` over the batches at
    risk); 0 when the rule leaves the batch out. `projected_completion` is the Unix time the batch's recent rate
    points to, None when there is none (nothing visible, stalled to zero, left out, or beyond any representable
    time). `reason` says why a batch is at risk (None when it is not).
    """

    at_risk: bool
    pending: int
    projected_completion: float | None
    reason: Reason | None = None


NOT_ASSESSED: Final = Risk(False, 0, None, None)
# tuple.__new__ is what Risk(...) runs, without the generated __new__'s Python frame (this runs per active batch).
_new: Final = tuple.__new__


class Calibration:
    """Per provider: of the batches that still showed nothing done at each 5 % step of their window, how many expired.

    Learned from the batches the exporter saw leave the active statuses (`learn`), so it follows how the provider
    really behaves: for Anthropic, whose counts move only when a batch ends, "still running at 30 % of the window" may
    already mean "will expire"; for a provider with long queues, only 90 % may. `to_state`/`load_state` carry it
    across restarts (the poller stores it with the ledger's state).
    """

    __slots__ = ("_expired", "_seen")

    def __init__(self) -> None:
        self._seen = [0] * CALIBRATION_STEPS
        self._expired = [0] * CALIBRATION_STEPS

    def learn(self, blind_step: int, expired: bool) -> None:
        """One batch that showed nothing done up to step `blind_step` (−1: it always showed progress) and ended."""
        if blind_step < 0:
            return
        for step in range(min(blind_step, CALIBRATION_STEPS - 1) + 1):
            self._seen[step] += 1
            if expired:
                self._expired[step] += 1
        if self._seen[0] >= _CALIBRATION_HALVE_AT:
            self._seen = [n // 2 for n in self._seen]
            self._expired = [n // 2 for n in self._expired]

    def threshold(self, fallback: float) -> float:
        """The fraction of the window from which a batch with nothing done is at risk.

        The first step with enough evidence where at least CALIBRATION_TARGET of the blind batches expired; where the
        evidence runs out before that, no earlier than the first step it does not cover, nor than `fallback` (the
        configured risk_no_progress_fraction); when no step reaches the target, the last step (a blind batch is
        still flagged before it expires, with the least lead).
        """
        last = (CALIBRATION_STEPS - 1) / CALIBRATION_STEPS
        for step in range(CALIBRATION_STEPS):
            seen = self._seen[step]
            if seen < CALIBRATION_MIN_SAMPLES:
                return min(last, max(fallback, step / CALIBRATION_STEPS)) if step else fallback
            if self._expired[step] >= CALIBRATION_TARGET * seen:
                return step / CALIBRATION_STEPS
        return last

    def evidence(self, step: int) -> tuple[int, int]:
        """(blind batches that passed `step`, of which expired): what an operator reads to check a threshold."""
        return self._seen[step], self._expired[step]

    def to_state(self) -> dict[str, Any]:
        return {"seen": list(self._seen), "expired": list(self._expired)}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restores `to_state()`'s output; raises ValueError on anything else (the caller logs and starts afresh)."""
        seen, expired = state.get("seen"), state.get("expired")
        if not (isinstance(seen, list) and isinstance(expired, list)):
            raise ValueError("calibration: seen and expired must be lists")
        if len(seen) != CALIBRATION_STEPS or len(expired) != CALIBRATION_STEPS:
            raise ValueError(f"calibration: {CALIBRATION_STEPS} steps expected")
        for s, e in zip(seen, expired, strict=True):
            if type(s) is not int or type(e) is not int or not 0 <= e <= s:
                raise ValueError("calibration: counts must be integers with 0 <= expired <= seen")
        self._seen, self._expired = list(seen), list(expired)


@dataclass(slots=True)
class _Track:
    """What one active batch's earlier polls left behind."""

    t: float  # when it was last observed
    done: float  # its done fraction then
    first: float  # when the tracker first saw it
    since: float | None  # when its progress first showed (the recent rate's age), None while nothing shows
    done_since: float  # its done fraction then
    rate: float | None  # recent rate (done fraction per second), None until progress is visible
    best: float  # the highest recent rate seen once warmed up (a first estimate can be far off)
    expires: float
    tau: float  # the recent rate's time constant: RATE_WINDOW of the batch's window (a 24 h batch: one hour)
    blind_step: int  # the last calibration step at which it showed nothing done (−1: none)
    poll: int  # the poll that last observed it
    flagged_since: float | None = (
        None  # since when every poll has found it at risk (None: the last one did not)
    )


@dataclass(slots=True)
class ProgressTracker:
    """Per provider, the recent rate of every active batch across polls, and the provider's calibration.

    Owned by the poller (one per provider, kept from poll to poll), fed by the snapshot builder through `assess`, and
    pruned by `finish_poll`: a batch not observed in the poll just folded has left the active statuses (finished,
    deleted); whether it was seen to run out its window is what the calibration learns from it. Bounded by
    `max_tracked`. Not thread-safe: one poll of a provider at a time uses it, as the poller guarantees.
    """

    max_tracked: int = MAX_TRACKED
    calibration: Calibration = field(default_factory=Calibration)
    _tracks: dict[str, _Track] = field(default_factory=dict)
    _poll: int = 0
    _offset: float | None = None  # clock(): the host's clock less the monotonic one at the first poll
    # clock(): the latest gateway time seen (Date, timestamps) less the monotonic clock then
    _evidence: float | None = None

    def __len__(self) -> int:
        return len(self._tracks)

    def observe(
        self,
        batch_id: str,
        now: float,
        done: float,
        average: float | None,
        expires: float,
        window: float,
        blind_step: int,
    ) -> _Track | None:
        """Record one observation and return the batch's updated history (None when the tracker is full).

        `done` is the batch's done fraction (0 while nothing is visible), `average` its rate since it started."""
        track = self._tracks.get(batch_id)
        if track is None:
            if len(self._tracks) >= self.max_tracked:
                return None
            rate = average if done > 0 else None
            tau = max(60.0, RATE_WINDOW * window)
            track = self._tracks[batch_id] = _Track(
                now,
                done,
                now,
                now if rate is not None else None,
                done,
                rate,
                rate or 0.0,
                expires,
                tau,
                blind_step,
                self._poll,
            )
            return track
        track.poll = self._poll
        track.expires = expires
        if blind_step > track.blind_step:
            track.blind_step = blind_step
        dt = now - track.t
        if dt <= 0:
            return track  # the same poll again, or a clock step back: nothing new to learn
        if track.rate is None:
            if done > 0:
                # Progress shows for the first time while the tracker watched: what showed, over the time watched
                # but at most the rate window (a batch that queued for hours and now runs fast is not judged by its
                # average; counts a provider refreshes every few minutes are not read as a burst).
                track.rate = done / min(now - track.first, track.tau)
                track.since, track.done_since = now, done
        elif track.since is not None and now - track.since < WARMUP * track.tau:
            # Warming up: the slope since progress first showed, which a burst or a provider's refresh interval
            # cannot skew for long; the weighted rate carries on from it.
            if done > track.done_since:
                track.rate = (done - track.done_since) / (now - track.since)
        else:
            # An exponentially weighted rate with a time constant of RATE_WINDOW of the window: each poll weighs in by
            # how long it covers, so the estimate does not depend on the poll interval, and counts a provider
            # updates only every few minutes still average out.
            step = (done - track.done) / dt if done > track.done else 0.0
            track.rate += (1.0 - math.exp(-dt / track.tau)) * (step - track.rate)
        if (
            track.rate is not None
            and track.rate > track.best
            and now - (track.since or now) >= WARMUP * track.tau
        ):
            track.best = track.rate
        track.t, track.done = now, done
        return track

    def finish_poll(self, ended: Mapping[str, bool] | None = None) -> int:
        """Forget the batches the poll just folded did not observe, learning how each ended; returns how many.

        `ended` says, of each batch seen to end (the ledger's counted transitions since the last poll folded),
        whether it ran out its window. Only such an end teaches the calibration: a batch that merely left the list
        (deleted, forgotten, its end not shown) is no evidence, and `expires <= now` on our own clock is none either:
        a host clock stepped ahead would teach, and persist, that batches which completed had expired."""
        gone = [batch_id for batch_id, track in self._tracks.items() if track.poll != self._poll]
        learn = self.calibration.learn
        for batch_id in gone:
            track = self._tracks.pop(batch_id)
            ran_out = ended.get(batch_id) if ended else None
            if ran_out is not None:
                learn(track.blind_step, ran_out)
        self._poll += 1
        return len(gone)

    def clock(self, host: float, monotonic: float, gateway: float, date: float | None = None) -> float:
        """The time to judge a poll at: the host's clock, but never more than CLOCK_AHEAD_SECONDS ahead of the
        gateway's time. Where its answers carry a `Date` (Bifrost's Go server sends one with every answer), that
        time is the latest evidence of it, run on by the monotonic clock: the Dates and the newest provider
        timestamp the lists showed (`gateway`, the ledger's gateway_now; 0 before any). Without a Date, the host's
        clock as it read at the first poll, run on, raised by those timestamps.

        A host clock stepped ahead, or ahead from the start (a pod on a node whose clock is off), would otherwise
        find every active batch past its expiry at once ("overdue", which needs no confirmation) and page on all of
        them. A step back is believed (it only delays a warning). The latest evidence wins, so one stale Date (a
        cached answer) holds nothing back; a gateway whose own clock is more than the bound behind, on an account
        whose lists show no newer time, delays warnings by the difference (docs/early-warning.md)."""
        if not (math.isfinite(host) and math.isfinite(monotonic)):
            return host
        if date is not None and math.isfinite(date):
            for seen in (date, gateway):
                if math.isfinite(seen) and seen > 0:
                    offset = seen - monotonic
                    if self._evidence is None or offset > self._evidence:
                        self._evidence = offset
        if self._evidence is not None:
            return min(host, monotonic + self._evidence + CLOCK_AHEAD_SECONDS)
        if self._offset is None:
            self._offset = host - monotonic  # the first poll: our clock is all there is to go by
        if math.isfinite(gateway) and gateway - monotonic > self._offset:
            # The gateway shows a later time than we ran on to: time passed (a suspend stopped the monotonic clock).
            self._offset = gateway - monotonic
        return min(host, monotonic + self._offset + CLOCK_AHEAD_SECONDS)

    def threshold(self, fallback: float) -> float:
        return self.calibration.threshold(fallback)

    def to_state(self) -> dict[str, Any]:
        """What survives a restart: the calibration (the recent rates are rebuilt within an hour)."""
        return {"calibration": self.calibration.to_state()}

    def load_state(self, state: Mapping[str, Any]) -> None:
        calibration = state.get("calibration")
        if not isinstance(calibration, Mapping):
            raise ValueError("progress tracker: no calibration in the state")
        self.calibration.load_state(calibration)


def assess(
    batch: Batch,
    status: str,
    now: float,
    no_progress_fraction: float,
    finished: int | None = None,
    tracker: ProgressTracker | None = None,
    confirm: float = CONFIRM,
) -> Risk:
    """The early-warning rule for `batch` in (normalised) `status` at Unix time `now` (module docstring).

    `finished` is `outcomes(batch.request_counts, status).done` when the caller has already computed it (the
    snapshot fold does, for every batch). `tracker` is the provider's ProgressTracker: given, the batch's recent
    rate comes from its earlier polls, this observation is recorded, and a verdict counts only once it has held for
    `confirm` of the window (CONFIRM; at once for an overdue batch, a fact rather than a projection, and for a batch
    first seen at risk); omitted (or the tracker full), the average rate since the start stands in for the recent
    rate and a verdict counts at once.
    """
    if status not in _PROJECTED_STATUSES:
        return (
            NOT_ASSESSED  # finalizing: every request has run; cancelling and the rest are not ours to judge
        )
    expires = batch.expires
    created = batch.created
    if expires is None or created is None or not math.isfinite(now) or expires <= created:
        return NOT_ASSESSED
    counts = batch.request_counts
    total = 0 if counts is None or counts.total is None else counts.total
    if total < 0 or total > _MAX_COUNT:
        return NOT_ASSESSED
    # The done fraction: Gemini's progress percent when it is given, else the outcomes that are not pending.
    done: float = 0.0
    progress = batch.progress
    if progress is not None and 0.0 <= progress <= 100.0 and total > 0:  # False for NaN: the counts then
        done = progress / 100.0
    elif total > 0 and counts is not None:
        if finished is None:
            finished = outcomes(counts, status).done
        done = 0.0 if finished <= 0 else min(finished, total) / total
    pending = total - int(total * done) if total > 0 else 0  # a request part-way done is still pending
    window = expires - created
    elapsed = now - created if now > created else 0.0
    fraction = elapsed / window
    left = expires - now
    visible = done >= MIN_PROGRESS
    rate: float | None = None
    best = 0.0
    warm = True
    track: _Track | None = None
    if visible:
        start = batch.started or created
        ran = now - start if now > start else 0.0
        rate = best = done / ran if ran > 0 else 0.0
    if tracker is not None:
        blind_step = -1 if visible else min(CALIBRATION_STEPS - 1, int(fraction * CALIBRATION_STEPS))
        track = tracker.observe(batch.id, now, done if visible else 0.0, rate, expires, window, blind_step)
        if track is not None and visible and track.rate is not None:
            rate, best = track.rate, max(track.best, track.rate)
            warm = track.since is not None and now - track.since >= WARMUP * track.tau
    if left <= 0:
        return _new(Risk, (True, pending, None, "overdue"))
    shown: float | None = None
    reason: Reason | None = None
    if not visible:
        threshold = tracker.threshold(no_progress_fraction) if tracker is not None else no_progress_fraction
        # NaN or out-of-range fractions make the comparison False (never at risk) rather than raise.
        if fraction >= threshold:
            reason = "not_started" if status == "validating" else "no_progress"
    else:
        assert rate is not None
        remaining = 1.0 - done
        if now <= (batch.started or created):
            # Progress reported before the batch says it started (counts and timestamps lag differently): no time
            # has run to measure a rate over, so no projection yet.
            pass
        elif remaining <= 0:
            # Every request has run (the counts can say so before the status does): nothing is left to lose.
            shown = now
        else:
            projected = now + remaining / rate if rate > 0 else math.inf
            shown = projected if math.isfinite(projected) else None
            late = projected > expires
            # At the best rate it has shown, would it finish with SPARE of the window left over? Then it may yet
            # make it.
            hopeless = best <= 0 or now + remaining / best > expires - SPARE * window
            if late and hopeless and warm and fraction >= MIN_ELAPSED:
                reason = "stalled" if rate < STALLED * best else "slow"
    if track is not None:
        if reason is None:
            track.flagged_since = None
        else:
            if track.flagged_since is None:
                # Confirmation needs history: a batch at risk the first time this exporter sees it (after a start,
                # or with --once; a projection is never, it warms up first) has no poll that said otherwise.
                track.flagged_since = now if now > track.first else -math.inf
            if now - track.flagged_since < confirm * window:
                reason = None  # not yet confirmed: shown (its projection) but not counted
    if reason is None:
        return _new(Risk, (False, pending, shown, None))
    return _new(Risk, (True, pending, shown, reason))

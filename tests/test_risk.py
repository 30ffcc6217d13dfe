"""The early-warning rule (exporter/risk.py), case by case as docs/early-warning.md writes it, its per-batch memory
(ProgressTracker), its calibration, and its properties under hostile input.

Batches are built from the gateway's JSON through the real models (so string numbers, Go zero timestamps and
spellings go through the same parsing the exporter uses); expected values are recomputed from the rule as written,
never copied from a run.
"""

from __future__ import annotations

import math
import os
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from exporter import risk as risk_module
from exporter.client import BifrostClient
from exporter.models import TERMINAL_STATUSES, Batch, normalize_status
from exporter.risk import (
    CALIBRATION_MIN_SAMPLES,
    CALIBRATION_STEPS,
    CALIBRATION_TARGET,
    CONFIRM,
    MIN_ELAPSED,
    MIN_PROGRESS,
    NOT_ASSESSED,
    RATE_WINDOW,
    REASONS,
    SPARE,
    WARMUP,
    Calibration,
    ProgressTracker,
    Risk,
    assess,
)
from exporter.simulator import ProviderSpec, Simulator
from tests.harness import ExporterThread, make_settings, series
from tests.test_counted_once import SteppedClock
from tests.test_incremental import INTERVAL, gateway

HOUR = 3600.0
CREATED = 1_750_000_000.0
WINDOW = 24 * HOUR
EXPIRES = CREATED + WINDOW
FRACTION = 0.5
TAU = RATE_WINDOW * WINDOW
CONFIRMED = CONFIRM * WINDOW  # how long a tracked verdict holds before it counts (20 min)

EXAMPLES = int(os.environ.get("HYPOTHESIS_EXAMPLES", "1000"))
PROFILE = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    derandomize=os.environ.get("CI", "").lower() in {"1", "true", "yes"},
)


def batch(
    status: str | None = "in_progress",
    *,
    total: object = 1000,
    completed: object = 0,
    failed: object = 0,
    started: object = CREATED,
    **fields: Any,
) -> Batch:
    """An OpenAI-shaped batch created at CREATED with a 24 h window; any field can be overridden or dropped (None)."""
    doc: dict[str, Any] = {
        "id": "batch_1",
        "status": status,
        "created_at": CREATED,
        "expires_at": EXPIRES,
        "in_progress_at": started,
        "request_counts": {"total": total, "completed": completed, "failed": failed},
    }
    doc.update(fields)
    return Batch.model_validate({k: v for k, v in doc.items() if v is not None})


def judge(b: Batch, now: float, fraction: float = FRACTION) -> Risk:
    """A one-off assessment (no tracker): the recent and best rates are the average since the start."""
    return assess(b, normalize_status(b.status), now, fraction)


def restated(b: Batch, now: float, fraction: float) -> tuple[bool, str | None, float | None]:
    """docs/early-warning.md's rule without a tracker, written out with no branch shared with the code:
    (at risk, reason, projected completion) for a consistent OpenAI-shaped batch."""
    created, expires, counts = b.created, b.expires, b.request_counts
    assert created is not None and expires is not None and counts is not None and counts.total
    window = expires - created
    done = ((counts.completed or 0) + (counts.failed or 0)) / counts.total
    if done < MIN_PROGRESS:
        if now >= expires:
            return True, "overdue", None
        reason = "not_started" if b.status == "validating" else "no_progress"
        flagged = now - created >= fraction * window
        return flagged, reason if flagged else None, None
    start = b.started or created
    if now < expires and now <= start:
        return False, None, None  # progress before the batch says it started: no time to measure a rate over
    if now < expires and done >= 1:
        return False, None, now  # every request has run: nothing left to lose
    rate = done / (now - start) if now > start else 0.0
    projected = now + (1 - done) / rate if rate > 0 else math.inf
    if now >= expires:
        return True, "overdue", None
    hopeless = rate <= 0 or projected > expires - SPARE * window  # the best rate is the average here
    flagged = projected > expires and hopeless and (now - created) / window >= MIN_ELAPSED
    return flagged, "slow" if flagged else None, projected if math.isfinite(projected) else None


# ---------------------------------------------------------------------------------------------------------------
# The rule, case by case (one-off assessments: average rate since the start)


def test_the_issues_example_is_at_risk_once_half_the_window_has_gone() -> None:
    """10 % done after 19 h of a 24 h window cannot make it: 171 h more at its rate."""
    now = CREATED + 19 * HOUR
    r = judge(batch(completed=90, failed=10), now)
    assert r.at_risk and r.reason == "slow" and r.pending == 900
    assert r.projected_completion == pytest.approx(now + 0.9 / (0.1 / (19 * HOUR)))


def test_no_projection_flags_a_batch_before_the_minimum_elapsed_window() -> None:
    """One request in forty minutes projects days: before MIN_ELAPSED of the window it only shows the projection."""
    early = CREATED + (MIN_ELAPSED * WINDOW - 60)
    r = judge(batch(total=45, completed=1), early)
    assert not r.at_risk and r.reason is None
    assert r.projected_completion is not None and r.projected_completion > EXPIRES
    assert judge(batch(total=45, completed=1), CREATED + MIN_ELAPSED * WINDOW).at_risk


def test_a_batch_with_time_to_spare_at_its_rate_is_left_alone() -> None:
    """Half done at 13 h of 24 (rate since start: 0.5 / 13 h): 13 h of work left, 11 h of window: late. Half done at
    12 h started at 6 h: 6 h left, finishing at 18 h, exactly SPARE before expiry: on time."""
    assert judge(batch(completed=500), CREATED + 13 * HOUR).at_risk
    on_time = judge(batch(completed=500, started=CREATED + 6 * HOUR), CREATED + 12 * HOUR)
    assert not on_time.at_risk and on_time.projected_completion == pytest.approx(CREATED + 18 * HOUR)


def test_nearly_done_batch_an_hour_before_expiry_is_not_at_risk() -> None:
    now = EXPIRES - HOUR
    r = judge(batch(completed=985, failed=5), now)
    assert not r.at_risk and r.pending == 10 and r.reason is None


def test_start_is_in_progress_at_when_present() -> None:
    """A batch that queued 12 h and then did half its work in 2 h runs at its processing rate, not the queue's."""
    now = CREATED + 14 * HOUR
    r = judge(batch(completed=500, started=CREATED + 12 * HOUR), now)
    assert r.projected_completion == pytest.approx(now + 2 * HOUR) and not r.at_risk
    assert judge(batch(completed=500, started=None), now).at_risk  # measured from created_at


def test_in_progress_at_in_the_future_counts_as_no_time_elapsed() -> None:
    """Clock skew between gateway and exporter must not project a batch into the past, nor flag a batch whose
    progress is visible: with no time to measure a rate over there is no projection yet (flagging it would make
    the flag go away once time has run, a verdict that flips for no reason)."""
    now = CREATED + 13 * HOUR
    r = judge(batch(completed=100, started=now + HOUR), now)
    assert r.projected_completion is None and not r.at_risk and r.reason is None


def test_finalizing_is_never_at_risk() -> None:
    """Every request has run; only the output file is being written, even past a slow start."""
    assert judge(batch("finalizing", completed=10), EXPIRES - 1) == NOT_ASSESSED


@pytest.mark.parametrize("status", ["cancelling", "canceling", "paused", "", None, "queued"])
def test_cancelling_and_unknown_statuses_are_left_out(status: str | None) -> None:
    assert judge(batch(status, completed=1), EXPIRES - 1) == NOT_ASSESSED


@pytest.mark.parametrize("status", TERMINAL_STATUSES)
def test_terminal_statuses_are_left_out(status: str) -> None:
    assert judge(batch(status, completed=1), EXPIRES + HOUR) == NOT_ASSESSED


@pytest.mark.parametrize("expires_at", [None, 0, -1, "inf"])
def test_no_expires_at_is_left_out(expires_at: object) -> None:
    assert judge(batch(completed=1, expires_at=expires_at), CREATED + 30 * HOUR) == NOT_ASSESSED


def test_no_created_at_is_left_out() -> None:
    assert judge(batch(created_at=None), EXPIRES + HOUR) == NOT_ASSESSED


@pytest.mark.parametrize(
    "counts",
    [{"total": 0}, {"total": 0, "completed": 0, "failed": 0}, {"completed": 5}, None, {"total": None}],
)
def test_a_total_of_zero_is_judged_as_nothing_visible(counts: dict[str, object] | None) -> None:
    """OpenAI, Azure and Bedrock report total 0 while validating: v2 never judged such a batch, v3 does by time."""
    doc: dict[str, Any] = {"id": "b", "status": "validating", "created_at": CREATED, "expires_at": EXPIRES}
    if counts is not None:
        doc["request_counts"] = counts
    b = Batch.model_validate(doc)
    assert judge(b, CREATED + FRACTION * WINDOW - 1) == Risk(False, 0, None, None)
    assert judge(b, CREATED + FRACTION * WINDOW) == Risk(True, 0, None, "not_started")


def test_nothing_visible_in_progress_is_no_progress() -> None:
    """Anthropic's counts move only when a batch ends: in progress with nothing done is judged by time alone."""
    counts = {"total": 100, "completed": 0, "failed": 0, "pending": 100}
    b = batch(request_counts=counts, started=None)
    assert not judge(b, CREATED + FRACTION * WINDOW - 1).at_risk
    assert judge(b, CREATED + FRACTION * WINDOW) == Risk(True, 100, None, "no_progress")


def test_a_sliver_below_the_minimum_progress_is_nothing_visible() -> None:
    below = math.ceil(MIN_PROGRESS * 1000) - 1
    r = judge(batch(completed=below), CREATED + 0.6 * WINDOW)
    assert r.at_risk and r.reason == "no_progress" and r.projected_completion is None


@pytest.mark.parametrize("fraction", [0.1, 0.25, 1.0])
def test_the_fraction_is_the_setting_until_calibrated(fraction: float) -> None:
    b = batch("validating", started=None)
    cutoff = CREATED + fraction * WINDOW
    assert not judge(b, cutoff - 1, fraction).at_risk
    assert judge(b, cutoff, fraction).at_risk or cutoff >= EXPIRES


def test_gemini_progress_is_the_done_fraction() -> None:
    now = CREATED + 13 * HOUR
    r = judge(batch(completed=0, progress=25), now)
    assert r.pending == 750 and r.at_risk
    assert r.projected_completion == pytest.approx(now + 0.75 / (0.25 / (13 * HOUR)))
    assert not judge(batch(completed=0, progress=80), now).at_risk


@pytest.mark.parametrize("progress", ["NaN", "inf", -1, 101])
def test_gemini_progress_out_of_range_falls_back_to_the_counts(progress: object) -> None:
    r = judge(batch(completed=600, progress=progress), CREATED + 12 * HOUR)
    assert r.pending == 400 and not r.at_risk


def test_anthropic_counts_use_the_v2_outcomes() -> None:
    """Every outcome but pending (`processing`) is done, errors and expiries included."""
    now = CREATED + 13 * HOUR
    counts = {"total": 100, "succeeded": 20, "failed": 10, "expired": 5, "canceled": 5, "pending": 60}
    r = judge(batch(request_counts=counts), now)
    assert r.pending == 60 and r.at_risk
    assert r.projected_completion == pytest.approx(now + 0.6 / (0.4 / (13 * HOUR)))


def test_an_active_batch_past_its_expiry_is_overdue() -> None:
    now = EXPIRES + 60
    assert judge(batch(completed=999), now).reason == "overdue"
    assert judge(batch(completed=0), now) == Risk(True, 1000, None, "overdue")


def test_counts_beyond_total_are_clamped() -> None:
    r = judge(batch(total=10, completed=50, failed=-7), EXPIRES - HOUR)
    assert r.pending == 0 and not r.at_risk and r.projected_completion == EXPIRES - HOUR


def test_negative_counts_are_nothing_done() -> None:
    assert judge(batch(completed=-50), CREATED + HOUR) == Risk(False, 1000, None, None)


def test_absurd_totals_are_left_out() -> None:
    assert judge(batch(total=10**400, completed=1), CREATED + HOUR) == NOT_ASSESSED
    assert judge(batch(total=2**53 + 1, completed=1), CREATED + HOUR) == NOT_ASSESSED


@pytest.mark.parametrize("now", [math.nan, math.inf, -math.inf])
def test_a_broken_clock_is_never_an_alarm(now: float) -> None:
    assert judge(batch(completed=1), now) == NOT_ASSESSED


# ---------------------------------------------------------------------------------------------------------------
# The tracker: the recent rate across polls


def poll(
    tracker: ProgressTracker, b: Batch, now: float, fraction: float = FRACTION
) -> Risk:  # one poll of one batch
    risk = assess(b, normalize_status(b.status), now, fraction, tracker=tracker)
    tracker.finish_poll()
    return risk


def at(done: int, **fields: Any) -> Batch:
    return batch(completed=done, **fields)


def test_the_recent_rate_does_not_depend_on_the_poll_interval() -> None:
    """A batch running at 5 % an hour, counts refreshed every 5 minutes, polled every 30 s or every 90 s: after three
    hours both recent rates are 5 % an hour within 8 % (counts that jump every 5 minutes make the estimate a sawtooth
    of about 5 min / RATE_WINDOW = 8 % peak to peak), and within 3 % of each other."""
    rate = 0.05 / HOUR
    rates = []
    for interval in (30.0, 90.0):
        tracker = ProgressTracker()
        t = CREATED
        while t <= CREATED + 3 * HOUR:
            shown = CREATED + (t - CREATED) // 300 * 300  # the provider's counts lag
            poll(tracker, at(int(10_000 * rate * (shown - CREATED)), total=10_000), t)
            t += interval
        track = tracker._tracks["batch_1"]
        assert track.rate == pytest.approx(rate, rel=0.08), interval
        rates.append(track.rate)
    assert rates[0] == pytest.approx(rates[1], rel=0.03)


def test_a_stall_with_time_to_spare_is_not_flagged_until_the_spare_time_is_gone() -> None:
    """12.5 % an hour from the start (an 8 h batch), stalled at 50 % after 4 h. At its best rate the other half
    takes 4 h: from 14 h on (24 − SPARE × 24 − 4) it could no longer finish with SPARE to spare. Until then it may
    yet resume and make it, so it is not flagged, even though its recent rate is nothing; it counts once that
    verdict has held for CONFIRM of the window."""
    tracker = ProgressTracker()
    flagged: list[tuple[float, str | None]] = []
    for minute in range(0, 17 * 60):
        t = CREATED + 60.0 * minute
        done = min(500, int(1000 * 0.125 * minute / 60))
        r = poll(tracker, at(done), t)
        if r.at_risk:
            flagged.append(((t - CREATED) / HOUR, r.reason))
    spare_gone = 24 - SPARE * 24 - 4
    assert flagged[0][0] == pytest.approx(spare_gone + CONFIRMED / HOUR, abs=2 / 60)
    assert {reason for _, reason in flagged} == {"stalled"}


def test_a_batch_that_queued_then_runs_fast_is_judged_by_its_recent_rate() -> None:
    """In progress from creation (so in_progress_at is the creation), nothing done for 13 h, then 20 % an hour. At
    13 h 30 the rate since the start (10 % in 13.5 h) flags it; watched from the start, the recent rate does not
    (while nothing showed, past half the window, it was flagged as no_progress)."""
    now = CREATED + 13.5 * HOUR
    assert judge(at(100), now).at_risk  # one-off: the average since the start
    tracker = ProgressTracker()
    reasons = []
    for minute in range(0, int(13.5 * 60) + 1):
        t = CREATED + 60.0 * minute
        done = max(0, int(1000 * 0.2 * (minute - 13 * 60) / 60))
        r = poll(tracker, at(done), t)
        reasons.append((done >= MIN_PROGRESS * 1000, r.reason))
    assert {reason for visible, reason in reasons if not visible} == {None, "no_progress"}
    assert {reason for visible, reason in reasons if visible} == {None}


def test_a_batch_first_seen_with_progress_is_not_flagged_before_the_warmup() -> None:
    """After an exporter restart a batch's only rate is its average since the start: no verdict until its progress
    has been watched for WARMUP of the rate window, and it counts once that verdict has held for CONFIRM."""
    tracker = ProgressTracker()
    first = CREATED + 19 * HOUR
    warmup = WARMUP * TAU
    t = first
    while t < first + warmup + CONFIRMED:
        assert not poll(tracker, at(100), t).at_risk
        t += 60.0
    assert poll(tracker, at(100), first + warmup + CONFIRMED).at_risk


def test_a_verdict_counts_only_once_it_has_held_for_the_confirmation_time() -> None:
    """A batch with nothing done, polled every minute from 11 h 50 m, crosses the no-progress threshold (half the
    window) at 12 h: not at risk until the verdict has held for CONFIRM of the window; one poll without the verdict
    (here the threshold moved past it) starts the confirmation again."""
    tracker = ProgressTracker()
    blind = batch("validating", total=0)
    t = CREATED + 11 * HOUR + 50 * 60
    start = CREATED + 12 * HOUR  # from here the verdict holds with risk_no_progress_fraction 0.5
    while t < start + CONFIRMED:
        assert poll(tracker, blind, t) == Risk(False, 0, None, None)
        t += 60.0
    assert poll(tracker, blind, t) == Risk(True, 0, None, "not_started")
    t += 60.0
    assert not poll(tracker, blind, t, fraction=0.9).at_risk  # one poll without the verdict
    t += 60.0
    again = t
    while t < again + CONFIRMED:
        assert not poll(tracker, blind, t).at_risk
        t += 60.0
    assert poll(tracker, blind, t).at_risk


def test_an_overdue_a_first_seen_and_an_untracked_batch_count_at_once() -> None:
    """Past its expires_at a still active batch will not make it: a fact, not a projection, so no confirmation. A
    batch at risk the first time the tracker sees it (after an exporter start) has no earlier poll to confirm
    against. A batch the full tracker cannot remember is judged without history, the one-off way: at once."""
    tracker = ProgressTracker()
    t = CREATED + 11 * HOUR
    assert not poll(tracker, batch("in_progress", total=1000, id="old"), t).at_risk
    assert poll(tracker, at(100, id="late"), EXPIRES + 60).reason == "overdue"
    first_seen = poll(tracker, batch("validating", total=0, id="blind"), CREATED + 13 * HOUR)
    assert first_seen.reason == "not_started"
    full = ProgressTracker(max_tracked=1)
    assess(at(10, id="other"), "in_progress", CREATED + HOUR, FRACTION, tracker=full)
    untracked = assess(
        batch("validating", total=0, id="new"), "validating", CREATED + 13 * HOUR, FRACTION, tracker=full
    )
    assert untracked.reason == "not_started"


def test_finish_poll_forgets_batches_no_longer_active_and_is_bounded() -> None:
    tracker = ProgressTracker(max_tracked=2)
    for name in ("a", "b", "c"):
        assess(at(10, id=name), "in_progress", CREATED + HOUR, FRACTION, tracker=tracker)
    assert len(tracker) == 2  # "c" judged without history
    tracker.finish_poll()
    assess(at(10, id="a"), "in_progress", CREATED + HOUR + 60, FRACTION, tracker=tracker)
    assert tracker.finish_poll() == 1  # "b" left the active statuses
    assert len(tracker) == 1


def test_a_repeated_observation_changes_nothing() -> None:
    tracker = ProgressTracker()
    now = CREATED + 13 * HOUR
    first = assess(at(300), "in_progress", now, FRACTION, tracker=tracker)
    again = assess(at(300), "in_progress", now, FRACTION, tracker=tracker)
    assert first == again


# ---------------------------------------------------------------------------------------------------------------
# Calibration


def test_calibration_falls_back_to_the_setting_without_evidence() -> None:
    assert Calibration().threshold(0.5) == 0.5


def test_calibration_finds_the_first_step_where_blind_batches_expired() -> None:
    """Per step of 5 %: 40 blind batches pass it; those still blind past 60 % expire, the others finish at 40 %
    (seen up to step 7). Steps 0-7 see 40 batches of which 30 expired (75 %); from step 8 on, 30 of 30."""
    c = Calibration()
    for _ in range(30):
        c.learn(CALIBRATION_STEPS - 1, expired=True)
    for _ in range(10):
        c.learn(7, expired=False)
    assert c.evidence(7) == (40, 30) and c.evidence(8) == (30, 30)
    assert 30 / 40 < CALIBRATION_TARGET <= 30 / 30
    assert c.threshold(0.5) == 8 / CALIBRATION_STEPS


def test_calibration_never_flags_earlier_than_its_evidence_covers() -> None:
    """Evidence up to step 5 says "mostly made it"; nothing beyond: no earlier than step 6, nor the setting."""
    c = Calibration()
    for _ in range(CALIBRATION_MIN_SAMPLES):
        c.learn(5, expired=False)
    assert c.threshold(0.2) == 6 / CALIBRATION_STEPS
    assert c.threshold(0.5) == 0.5


def test_calibration_that_never_reaches_its_target_flags_at_the_last_step() -> None:
    c = Calibration()
    for i in range(CALIBRATION_MIN_SAMPLES * 2):
        c.learn(CALIBRATION_STEPS - 1, expired=i % 2 == 0)
    assert c.threshold(0.5) == (CALIBRATION_STEPS - 1) / CALIBRATION_STEPS


def test_the_tracker_teaches_the_calibration_how_blind_batches_ended() -> None:
    """A batch that showed nothing until it expired counts as expired at every step it passed; one that finished
    before its expiry (here: left at 30 %) counts as made it up to step 5."""
    tracker = ProgressTracker()
    blind = batch("validating", id="late", request_counts={"total": 0})
    for hour in range(25):
        t = CREATED + hour * HOUR
        if t < EXPIRES:
            assess(blind, "validating", t, FRACTION, tracker=tracker)
        if hour <= 7:
            assess(batch("validating", id="quick"), "validating", t, FRACTION, tracker=tracker)
        tracker.finish_poll({"late": True, "quick": False})
    c = tracker.calibration
    assert c.evidence(0) == (2, 1)
    assert c.evidence(5) == (2, 1)  # "quick" was last seen at 7 h = 29 %: step 5
    assert c.evidence(6) == (1, 1)
    assert c.evidence(CALIBRATION_STEPS - 1) == (1, 1)


def test_the_calibration_learns_how_a_batch_was_seen_to_end_never_from_our_clock() -> None:
    """Audit 9 F1: blind batches that completed while the host clock was days ahead (past their expiry on our
    clock) are learned as made it, not as expired; one that left the list without an end seen teaches nothing."""
    tracker = ProgressTracker()
    for i in range(CALIBRATION_MIN_SAMPLES + 5):
        assess(batch("in_progress", id=f"done{i}"), "in_progress", CREATED + 600, FRACTION, tracker=tracker)
        assess(batch("in_progress", id=f"gone{i}"), "in_progress", CREATED + 600, FRACTION, tracker=tracker)
    tracker.finish_poll()
    # The host clock stepped two days ahead, past their expiry: the ledger saw them complete in their window.
    assert tracker.finish_poll({f"done{i}": False for i in range(CALIBRATION_MIN_SAMPLES + 5)}) == 50
    assert tracker.calibration.evidence(0) == (CALIBRATION_MIN_SAMPLES + 5, 0)
    assert tracker.calibration.evidence(1) == (0, 0)
    assert tracker.threshold(FRACTION) == FRACTION  # a young blind batch is not at risk


def test_the_judging_clock_does_not_run_ahead_of_the_gateway_with_a_host_clock_step() -> None:
    """Audit 9 F2: the host clock a day ahead of the gateway's timestamps and of its own monotonic run is judged at
    most CLOCK_AHEAD_SECONDS ahead; a step back is believed; time the gateway shows passing moves it on."""
    tracker = ProgressTracker()
    host, mono = CREATED + HOUR, 100.0
    assert tracker.clock(host, mono, CREATED) == host  # the first poll: our clock
    assert (
        tracker.clock(host + 60 + 86_400, mono + 60, CREATED) == host + 60 + risk_module.CLOCK_AHEAD_SECONDS
    )
    assert tracker.clock(host + 120 - 3 * HOUR, mono + 120, CREATED) == host + 120 - 3 * HOUR  # step back
    assert tracker.clock(host + 180, mono + 180, CREATED) == host + 180  # corrected
    # suspended for 5 h (the monotonic clock stopped): the gateway's timestamps show the time that passed
    assert tracker.clock(host + 5 * HOUR, mono + 240, host + 5 * HOUR - 60) == host + 5 * HOUR
    assert tracker.clock(math.nan, mono, CREATED) != tracker.clock(math.nan, mono, CREATED)  # NaN stays NaN


def test_calibration_state_round_trips_and_refuses_garbage() -> None:
    tracker = ProgressTracker()
    for _ in range(3):
        tracker.calibration.learn(10, expired=True)
    state = tracker.to_state()
    restored = ProgressTracker()
    restored.load_state(state)
    assert restored.calibration.evidence(10) == (3, 3)
    for bad in (
        {},
        {"calibration": {"seen": [1], "expired": [1]}},
        {"calibration": {"seen": [0] * CALIBRATION_STEPS, "expired": [1] * CALIBRATION_STEPS}},
        {"calibration": {"seen": ["x"] * CALIBRATION_STEPS, "expired": [0] * CALIBRATION_STEPS}},
    ):
        with pytest.raises(ValueError):
            ProgressTracker().load_state(bad)


def test_old_evidence_fades() -> None:
    c = Calibration()
    for _ in range(10_001):
        c.learn(0, expired=False)
    seen, expired = c.evidence(0)
    assert seen < 10_000 and expired == 0


# ---------------------------------------------------------------------------------------------------------------
# Properties

# Plausible values are drawn more often than hostile ones, so most examples reach the projection itself.
_STATUSES = st.sampled_from(
    ["in_progress"] * 4
    + ["validating"] * 2
    + ["finalizing", "cancelling", "completed", "expired", "Paused", "ended"]
)
_COUNT = st.one_of(
    st.integers(0, 5000),
    st.integers(0, 5000),
    st.none(),
    st.integers(-10, 10),
    st.integers(-(2**70), 2**70),
)
_TIMESTAMP = st.one_of(
    st.floats(CREATED - WINDOW, CREATED + 3 * WINDOW),
    st.floats(CREATED - WINDOW, CREATED + 3 * WINDOW),
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
)


@st.composite
def hostile_batches(draw: st.DrawFn) -> Batch:
    """Any batch the gateway could send: sane most of the time, with NaN, infinities and huge ints mixed in."""
    counts = {
        k: draw(_COUNT)
        for k in ("total", "completed", "failed", "succeeded", "expired", "canceled", "pending")
    }
    doc = {
        "id": draw(st.sampled_from(["a", "b"])),
        "status": draw(_STATUSES),
        "request_counts": {k: v for k, v in counts.items() if v is not None},
        "created_at": draw(_TIMESTAMP),
        "expires_at": draw(_TIMESTAMP),
        "in_progress_at": draw(_TIMESTAMP),
        "progress": draw(st.one_of(st.none(), st.none(), st.floats(-10, 110), st.floats())),
    }
    return Batch.model_validate({k: v for k, v in doc.items() if v is not None})


@st.composite
def sane_batches(draw: st.DrawFn) -> Batch:
    """Consistent OpenAI-shaped batches: the ones the restatement and the monotonicity promise are about."""
    total = draw(st.integers(1, 100_000))
    completed = draw(st.integers(0, total))
    failed = draw(st.integers(0, total - completed))
    created = draw(st.floats(CREATED - WINDOW, CREATED))
    window = draw(st.floats(60.0, 7 * WINDOW))
    started = draw(st.one_of(st.none(), st.floats(created, created + window)))
    return batch(
        draw(st.sampled_from(["validating", "in_progress"])),
        total=total,
        completed=completed,
        failed=failed,
        started=started,
        created_at=created,
        expires_at=created + window,
    )


_NOW = st.one_of(st.floats(CREATED - WINDOW, CREATED + 8 * WINDOW), st.floats())
_FRACTION = st.floats(0.0, 1.0, exclude_min=True)


@PROFILE
@given(st.lists(st.tuples(hostile_batches(), _NOW), min_size=1, max_size=6), _FRACTION)
def test_results_are_always_finite_and_explained(
    observations: list[tuple[Batch, float]], fraction: float
) -> None:
    """Hostile batches, observed through one tracker in any order (clock steps back included): never raises, only
    finite numbers, and every flag has one of the documented reasons."""
    tracker = ProgressTracker()
    for b, now in observations:
        for r in (
            judge(b, now, fraction),
            assess(b, normalize_status(b.status), now, fraction, tracker=tracker),
        ):
            assert isinstance(r.at_risk, bool) and isinstance(r.pending, int)
            assert r.projected_completion is None or math.isfinite(r.projected_completion)
            total = b.request_counts.total if b.request_counts is not None else None
            assert 0 <= r.pending <= max(0, total or 0)
            assert (r.reason in REASONS) if r.at_risk else r.reason is None
            if r.at_risk:
                assert normalize_status(b.status) in ("validating", "in_progress") and b.expires is not None
        tracker.finish_poll()


@PROFILE
@given(sane_batches(), st.floats(0.0, 8 * WINDOW), st.floats(0.0, 8 * WINDOW), _FRACTION)
def test_risk_never_goes_away_as_time_passes(b: Batch, t1: float, t2: float, fraction: float) -> None:
    """With the same counts, a batch flagged now is flagged later (one-off assessments)."""
    earlier, later = sorted((t1, t2))
    assume(earlier < later)
    created = b.created
    assert created is not None
    if judge(b, created + earlier, fraction).at_risk:
        assert judge(b, created + later, fraction).at_risk


@PROFILE
@given(sane_batches(), st.floats(0.0, 8 * WINDOW), _FRACTION)
def test_the_verdict_is_the_documented_rule(b: Batch, offset: float, fraction: float) -> None:
    created = b.created
    assert created is not None
    now = created + offset
    r = judge(b, now, fraction)
    flagged, reason, projected = restated(b, now, fraction)
    if projected is None:
        assert r.projected_completion is None
    else:
        assert r.projected_completion == pytest.approx(projected, rel=1e-9)
    expires = b.expires
    assert expires is not None
    boundary = projected is not None and (
        math.isclose(projected, expires, rel_tol=1e-9)
        or math.isclose(projected, expires - SPARE * (expires - created), rel_tol=1e-9)
    )
    if not boundary:
        assert (r.at_risk, r.reason) == (flagged, reason)


# ---------------------------------------------------------------------------------------------------------------
# Through the exporter: the poller keeps a tracker per provider and the snapshot feeds it


def _running(sim: Simulator, batch_id: str, started: float, total: int, completed: int) -> None:
    """An OpenAI batch in progress since `started`, with a 24 h window, at the simulator."""
    sim.add_batch(
        "openai",
        batch_id=batch_id,
        status="in_progress",
        created_at=int(started),
        expires_at=int(started + WINDOW),
        in_progress_at=int(started),
        request_counts={"total": total, "completed": completed, "failed": 0},
    )


def test_the_exporter_remembers_rates_between_polls_and_says_why_a_batch_is_flagged() -> None:
    """Simulator and exporter on one injected clock, a poll a minute. A batch validating with a total of 0 past half
    its window is flagged at once (`not_started`: at risk when first seen, nothing to confirm against); a batch 10 %
    done after 13 h, first seen by this exporter, is flagged only once its progress has been watched for the warm-up
    and its verdict has then held for CONFIRM (a one-off assessment flags it at once)."""
    now = [CREATED + 13 * HOUR]

    def clock() -> float:
        return now[0]

    with Simulator(providers=[ProviderSpec("openai")], lifecycle=False, clock=clock) as sim:
        _running(sim, "slow", CREATED, 1000, 100)
        sim.add_batch(
            "openai",
            batch_id="blind",
            status="validating",
            created_at=int(CREATED - HOUR),
            expires_at=int(EXPIRES - HOUR),
            request_counts={"total": 0, "completed": 0, "failed": 0},
        )
        one_off = Batch.model_validate(sim.batch("openai", "slow", view="retrieve"))
        assert judge(one_off, now[0]).at_risk
        settings = make_settings(sim.url, ["openai"], per_batch_metrics=True, poll_mode="full")
        with ExporterThread(settings, clock=clock) as exp:
            flags: list[dict[str, str]] = []
            for _ in range(int((WARMUP * TAU + CONFIRMED) / 60) + 2):
                exp.poll()
                flags.append(
                    {
                        lbl["batch_id"]: lbl["reason"]
                        for lbl, _ in series(exp.samples(), "bifrost_batch_job_at_risk_info")
                    }
                )
                now[0] += 60.0
    confirm = int(CONFIRMED / 60)
    assert flags[0] == {"blind": "not_started"}
    warm = int(WARMUP * TAU / 60)
    assert all("slow" not in f for f in flags[: warm + confirm])
    assert flags[-1]["blind"] == "not_started" and flags[-1]["slow"] in ("slow", "stalled")


def test_per_batch_rows_keep_the_batches_at_risk_past_the_limit() -> None:
    """Batches at risk are mostly old ones (overdue, or past half their window), which "the newest rows" would drop
    first. With per_batch_limit 2, one overdue batch and three newer healthy ones: the rows are the overdue batch
    (with its reason) and the newest healthy one; the two others are counted as dropped."""
    now = [CREATED + 25 * HOUR]

    def clock() -> float:
        return now[0]

    with Simulator(providers=[ProviderSpec("openai")], lifecycle=False, clock=clock) as sim:
        _running(sim, "old_overdue", CREATED, 1000, 600)  # expired an hour ago: still active past its window
        for i in range(3):
            _running(sim, f"new_{i}", now[0] - 600 + 60 * i, 100, 10)
        settings = make_settings(
            sim.url, ["openai"], per_batch_metrics=True, per_batch_limit=2, poll_mode="full"
        )
        with ExporterThread(settings, clock=clock) as exp:
            exp.poll()
            s = exp.samples()
    rows = {lbl["batch_id"] for lbl, _ in series(s, "bifrost_batch_job_info", provider="openai")}
    assert rows == {"old_overdue", "new_2"}
    reasons = {lbl["batch_id"]: lbl["reason"] for lbl, _ in series(s, "bifrost_batch_job_at_risk_info")}
    assert reasons == {"old_overdue": "overdue"}
    assert [v for _, v in series(s, "bifrost_batch_at_risk", provider="openai")] == [1.0]
    assert [v for _, v in series(s, "bifrost_batch_exporter_per_batch_dropped", provider="openai")] == [2.0]


def _stepped(url: str, step: list[float], clock: list[float]) -> ExporterThread:
    """An exporter whose host clock is the gateway's (`clock`) plus `step`: NTP stepping the host, a VM resumed. Its
    monotonic clock runs with the gateway's: a step does not move it."""
    return ExporterThread(
        make_settings(url, ["openai"], poll_mode="full"),
        clock=lambda: clock[0] + step[0],
        monotonic=lambda: clock[0],
    )


def _at_risk_total(exp: ExporterThread) -> float:
    return sum(v for _, v in series(exp.samples(), "bifrost_batch_at_risk", provider="openai"))


@pytest.mark.parametrize("step", [0.0, 86_400.0])
def test_a_host_clock_stepped_ahead_does_not_flag_healthy_batches(step: float) -> None:
    """Audit 9 F2 through the exporter: a batch 1 h into its window with half its requests done, the host clock
    then stepped a day ahead: not at risk (it was "overdue" at once)."""
    clock, shift = [CREATED + HOUR], [0.0]
    with Simulator(providers=[ProviderSpec("openai")], lifecycle=False, clock=lambda: clock[0]) as sim:
        _running(sim, "fine", CREATED, 1000, 500)
        with _stepped(sim.url, shift, clock) as exp:
            exp.poll()
            shift[0] = step
            clock[0] += 10
            exp.poll()
            assert _at_risk_total(exp) == 0


@pytest.mark.parametrize("step", [0.0, 2 * 86_400.0])
def test_batches_that_completed_under_a_host_clock_ahead_do_not_teach_that_blind_batches_expire(
    step: float,
) -> None:
    """Audit 9 F1 through the exporter: 25 blind batches complete 10 minutes into their window while the host
    clock is two days ahead; after NTP corrects it, a blind batch two minutes old is not at risk, and the
    calibration counts the 25 as made it."""
    clock, shift = [CREATED + 600], [0.0]
    with Simulator(providers=[ProviderSpec("openai")], lifecycle=False, clock=lambda: clock[0]) as sim:
        for i in range(25):
            _running(sim, f"blind{i}", CREATED, 10, 0)
        with _stepped(sim.url, shift, clock) as exp:
            exp.poll()
            shift[0] = step
            clock[0] += 10
            exp.poll()
            for i in range(25):
                sim.set_status("openai", f"blind{i}", "completed", int(clock[0]))
            clock[0] += 10
            exp.poll()
            shift[0] = 0.0
            clock[0] += 10
            _running(sim, "young", clock[0] - 120, 10, 0)
            for _ in range(3):
                clock[0] += 10
                exp.poll()
            assert _at_risk_total(exp) == 0
            assert exp.exporter.poller._trackers["openai"].calibration.evidence(0) == (25, 0)


def _stepped_exporter(sim: Simulator, clock: SteppedClock, provider: str) -> ExporterThread:
    cfg = make_settings(sim.url, [provider], poll_interval_seconds=INTERVAL, resync_interval_seconds=60,
                        page_size=100, stale_after_seconds=10**9)  # fmt: skip
    client = BifrostClient(cfg, sleep=clock.sleep, monotonic=clock.monotonic)
    return ExporterThread(cfg, clock=clock.host, monotonic=clock.monotonic, client=client)


_DAY = 86_400


def _calibration_after_expiries(
    flavor: Literal["openai", "anthropic"],
) -> tuple[tuple[int, int], float | None]:
    """25 blind batches (nothing done) are watched to 99 % of their 24 h window, then run out of it (the gateway
    shows their end: OpenAI `expired`; Anthropic `ended` with every request expired, as Bifrost maps it). Returns
    the calibration's evidence at the last step (seen, expired) and whether a new blind batch 60 % into its window
    is then at risk."""
    clock = SteppedClock()
    spec = ProviderSpec(flavor, style="cursor", flavor=flavor)
    with gateway(clock, spec) as sim, _stepped_exporter(sim, clock, flavor) as exp:
        now = int(clock.now)
        for i in range(25):
            sim.add_batch(flavor, batch_id=f"blind{i}", status="in_progress", created_at=now - _DAY + 600,
                          expires_at=now + 600, in_progress_at=now - _DAY + 700,
                          request_counts={"total": 10, "completed": 0, "failed": 0})  # fmt: skip
        exp.poll(flavor)
        clock.advance(INTERVAL)
        exp.poll(flavor)
        clock.advance(700)
        for i in range(25):
            if (
                flavor == "anthropic"
            ):  # processing_status ended, every request expired (Bifrost: status `ended`)
                sim.delete(flavor, f"blind{i}")
                sim.add_batch(flavor, batch_id=f"blind{i}", status="ended", created_at=now - _DAY + 600,
                              expires_at=now + 600, in_progress_at=now - _DAY + 700,
                              completed_at=int(clock.now) - 60, processing_status="ended",
                              request_counts={"total": 10, "completed": 0, "failed": 0, "expired": 10})  # fmt: skip
            else:
                sim.set_status(flavor, f"blind{i}", "expired", int(clock.now) - 60)
        exp.poll(flavor)
        clock.advance(INTERVAL)
        now = int(clock.now)
        sim.add_batch(flavor, batch_id="young", status="in_progress", created_at=now - int(0.6 * _DAY),
                      expires_at=now + int(0.4 * _DAY), in_progress_at=now - int(0.6 * _DAY) + 100,
                      request_counts={"total": 10, "completed": 0, "failed": 0})  # fmt: skip
        exp.poll(flavor)
        tracker = exp.exporter.poller._trackers[flavor]
        found = [v for _, v in series(exp.samples(), "bifrost_batch_at_risk", provider=flavor)]
        return tracker.calibration.evidence(19), sum(found) if found else None


@pytest.mark.parametrize("flavor", ["openai", "anthropic"])
def test_batches_that_ran_out_their_window_teach_the_calibration_whatever_status_they_end_with(
    flavor: Literal["openai", "anthropic"],
) -> None:
    """Audit 9 (diff F1): learning from the status alone, Anthropic's batches (`ended` for every outcome, the lost
    requests in request_counts.expired) taught that no batch expires; a blind batch 60 % into its window is at risk
    after 25 that ran out theirs, for either provider."""
    evidence, at_risk = _calibration_after_expiries(flavor)
    assert evidence == (25, 25)
    assert at_risk == 1


@pytest.mark.parametrize("step", [0.0, 86_400.0])
def test_a_host_clock_ahead_from_the_start_does_not_flag_healthy_batches(step: float) -> None:
    """Audit 9 (diff F2): the judging clock was bounded by the host's own clock at the first poll, so a host clock
    ahead from the start (a pod on a node whose clock is off, a restart while a step lasts) still found a healthy
    batch overdue. It is bounded by the gateway's Date (the simulator sends its clock's, as Bifrost's Go server
    sends its own)."""
    clock = SteppedClock()
    clock.step = step
    spec = ProviderSpec("openai", style="cursor", flavor="openai")
    with gateway(clock, spec) as sim, _stepped_exporter(sim, clock, "openai") as exp:
        now = int(clock.now)
        sim.add_batch("openai", batch_id="fine", status="in_progress", created_at=now - 3600,
                      expires_at=now + 23 * 3600, in_progress_at=now - 3500,
                      request_counts={"total": 1000, "completed": 500, "failed": 0})  # fmt: skip
        for _ in range(3):
            exp.poll("openai")
            clock.advance(INTERVAL)
        assert sum(v for _, v in series(exp.samples(), "bifrost_batch_at_risk", provider="openai")) == 0


@pytest.mark.parametrize("date_lag", [0.0, 3 * 3600.0], ids=["date-right", "date-3h-behind"])
def test_a_gateway_date_behind_holds_nothing_back_where_the_lists_show_a_later_time(date_lag: float) -> None:
    """The judging clock follows the latest evidence of the gateway's time: its Dates and the newest provider
    timestamp its lists show. A Date behind (Bifrost's host clock off, a cached answer) beside a batch created a
    minute ago leaves a batch 30 min past its expires_at overdue (audit 9, diff2 F-B). Where nothing in the lists is
    newer than a Date that is behind, the warning waits for it (docs/early-warning.md, "Which clock")."""
    clock = SteppedClock()
    spec = ProviderSpec("openai", style="cursor", flavor="openai")
    with gateway(clock, spec) as sim, _stepped_exporter(sim, clock, "openai") as exp:
        server = sim._server._server  # type: ignore[union-attr]
        server.clock = lambda: clock.now - date_lag
        now = int(clock.now)
        sim.add_batch("openai", batch_id="stuck", status="in_progress", created_at=now - 86_400 - 1800,
                      expires_at=now - 1800, in_progress_at=now - 86_000,
                      request_counts={"total": 1000, "completed": 500, "failed": 0})  # fmt: skip
        sim.add_batch("openai", batch_id="new", status="validating", created_at=now - 60,
                      expires_at=now + 86_400 - 60)  # fmt: skip
        for _ in range(3):
            exp.poll("openai")
            clock.advance(INTERVAL)
        found = [v for labels, v in series(exp.samples(), "bifrost_batch_at_risk", provider="openai")]
        assert sum(found) == 1

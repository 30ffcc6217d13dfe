"""The at-risk projection, case by case as the metrics contract writes it, and its properties under hostile input.

Batches are built from the gateway's JSON through the real models (so string numbers, Go zero timestamps and
spellings go through the same parsing the exporter uses); expected values are recomputed from the contract's
formula, never copied from a run.
"""

from __future__ import annotations

import math
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from exporter.models import TERMINAL_STATUSES, Batch, normalize_status
from exporter.risk import NOT_ASSESSED, Risk, assess

HOUR = 3600.0
CREATED = 1_750_000_000.0
WINDOW = 24 * HOUR
EXPIRES = CREATED + WINDOW
FRACTION = 0.5

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
    return assess(b, normalize_status(b.status), now, fraction)


def projection(now: float, start: float, done: float, pending: float) -> float:
    """The contract's formula, written out independently of the implementation."""
    return now + pending * (now - start) / done


# ---------------------------------------------------------------------------------------------------------------
# The rule, case by case


def test_slow_batch_is_at_risk_hours_before_expiry() -> None:
    """The issue's example: 10 % done after 19 h of a 24 h window cannot make it."""
    now = CREATED + 19 * HOUR
    r = judge(batch(completed=90, failed=10), now)
    assert r.at_risk and r.pending == 900
    assert r.projected_completion == pytest.approx(projection(now, CREATED, 100, 900))
    assert r.projected_completion is not None and r.projected_completion > EXPIRES


def test_nearly_done_batch_an_hour_before_expiry_is_not_at_risk() -> None:
    now = EXPIRES - HOUR
    r = judge(batch(completed=985, failed=5), now)
    assert not r.at_risk and r.pending == 10
    assert r.projected_completion == pytest.approx(projection(now, CREATED, 990, 10))
    assert r.projected_completion is not None and r.projected_completion <= EXPIRES


def test_projection_exactly_at_expiry_is_not_late() -> None:
    """'Later than expires_at': a batch whose rate lands it on the deadline is on time (half done at half time)."""
    r = judge(batch(completed=500), CREATED + WINDOW / 2)
    assert r.projected_completion == EXPIRES and not r.at_risk


def test_start_is_in_progress_at_when_present() -> None:
    """A batch that queued 12 h and then did half its work in 2 h runs at its processing rate, not the queue's."""
    now = CREATED + 14 * HOUR
    r = judge(batch(completed=500, started=CREATED + 12 * HOUR), now)
    assert r.projected_completion == pytest.approx(now + 2 * HOUR) and not r.at_risk
    without = judge(batch(completed=500, started=None), now)
    assert without.projected_completion == pytest.approx(projection(now, CREATED, 500, 500))
    assert without.at_risk  # measured from created_at, the same counts project 14 h further: past expiry


@pytest.mark.parametrize("started", [None, 0, -5, "NaN"])
def test_no_in_progress_at_falls_back_to_created_at(started: object) -> None:
    now = CREATED + 10 * HOUR
    r = judge(batch(completed=200, started=started), now)
    assert r.projected_completion == pytest.approx(projection(now, CREATED, 200, 800))


def test_in_progress_at_in_the_future_counts_as_no_time_elapsed() -> None:
    """Clock skew between gateway and exporter must not project a batch into the past."""
    now = CREATED + HOUR
    r = judge(batch(completed=10, started=now + HOUR), now)
    assert r.projected_completion == now and not r.at_risk


def test_finalizing_is_never_at_risk() -> None:
    """Every request has run; only the output file is being written, even past a slow start."""
    assert judge(batch("finalizing", completed=10), EXPIRES - 1) == NOT_ASSESSED


@pytest.mark.parametrize("status", ["cancelling", "canceling", "paused", "", None, "queued"])
def test_cancelling_and_unknown_statuses_are_left_out(status: str | None) -> None:
    assert judge(batch(status, completed=1), EXPIRES - 1) == NOT_ASSESSED


@pytest.mark.parametrize("status", TERMINAL_STATUSES)
def test_terminal_statuses_are_left_out(status: str) -> None:
    assert judge(batch(status, completed=1), EXPIRES + HOUR) == NOT_ASSESSED


@pytest.mark.parametrize(
    "counts",
    [{"total": 0}, {"total": -3, "completed": 0}, {"completed": 5}, None, {"total": None, "pending": 4}],
)
def test_no_positive_total_is_left_out(counts: dict[str, object] | None) -> None:
    doc = {"id": "b", "status": "in_progress", "created_at": CREATED, "expires_at": EXPIRES}
    if counts is not None:
        doc["request_counts"] = counts
    assert judge(Batch.model_validate(doc), EXPIRES - 1) == NOT_ASSESSED


@pytest.mark.parametrize("expires_at", [None, 0, -1, "inf"])
def test_no_expires_at_is_left_out(expires_at: object) -> None:
    assert judge(batch(completed=1, expires_at=expires_at), CREATED + 30 * HOUR) == NOT_ASSESSED


def test_nothing_done_before_and_after_the_fraction() -> None:
    b = batch(completed=0)
    cutoff = CREATED + FRACTION * WINDOW
    before = judge(b, cutoff - 1)
    assert not before.at_risk and before.pending == 1000 and before.projected_completion is None
    at = judge(b, cutoff)
    assert at.at_risk and at.pending == 1000 and at.projected_completion is None
    assert judge(b, cutoff + 1).at_risk


@pytest.mark.parametrize("fraction", [0.1, 0.25, 1.0])
def test_the_fraction_is_the_setting(fraction: float) -> None:
    b = batch("validating", started=None)  # a batch that never left validation
    cutoff = CREATED + fraction * WINDOW
    assert not judge(b, cutoff - 1, fraction).at_risk
    assert judge(b, cutoff, fraction).at_risk


def test_nothing_done_counts_from_created_even_after_a_late_start() -> None:
    """The fraction is of the whole window: a batch that started late has simply used more of it."""
    b = batch(started=CREATED + 11 * HOUR)
    assert judge(b, CREATED + 12 * HOUR).at_risk


def test_nothing_done_without_created_at_is_never_flagged() -> None:
    r = judge(batch(created_at=None), EXPIRES + HOUR)
    assert r == Risk(False, 1000, None)


def test_progress_without_a_start_has_no_projection() -> None:
    r = judge(batch(completed=5, started=None, created_at=None), EXPIRES - HOUR)
    assert r == Risk(False, 995, None)


def test_gemini_progress_is_the_done_fraction() -> None:
    """Gemini reports percent; it wins over request_counts when given."""
    now = CREATED + 12 * HOUR
    r = judge(batch(completed=0, progress=25), now)
    assert r.pending == 750 and r.at_risk
    assert r.projected_completion == pytest.approx(projection(now, CREATED, 250, 750))
    on_time = judge(batch(completed=0, progress=60), now)
    assert not on_time.at_risk and on_time.pending == 400


def test_gemini_progress_rounds_pending_up() -> None:
    r = judge(batch(total=3, progress=50), CREATED + HOUR)
    assert r.pending == 2  # 1.5 done: the request half-way through is still pending
    assert r.projected_completion == pytest.approx(projection(CREATED + HOUR, CREATED, 1.5, 1.5))


@pytest.mark.parametrize("progress", ["NaN", "inf", -1, 101])
def test_gemini_progress_out_of_range_falls_back_to_the_counts(progress: object) -> None:
    now = CREATED + 12 * HOUR
    r = judge(batch(completed=600, progress=progress), now)
    assert r.pending == 400 and not r.at_risk


def test_gemini_progress_zero_is_nothing_done() -> None:
    b = batch(completed=0, progress=0)
    assert judge(b, CREATED + FRACTION * WINDOW).at_risk
    assert judge(b, CREATED + FRACTION * WINDOW).projected_completion is None


def test_anthropic_counts_use_the_v2_outcomes() -> None:
    """Anthropic's finer counts: every outcome but pending (`processing`) is done, errors and expiries included."""
    now = CREATED + 12 * HOUR
    counts = {"total": 100, "succeeded": 20, "failed": 10, "expired": 5, "canceled": 5, "pending": 60}
    r = judge(batch(request_counts=counts), now)
    assert r.pending == 60 and r.at_risk
    assert r.projected_completion == pytest.approx(projection(now, CREATED, 40, 60))


def test_an_active_batch_past_its_expiry_is_at_risk() -> None:
    now = EXPIRES + 60
    assert judge(batch(completed=999), now).at_risk
    assert judge(batch(completed=0), now).at_risk


def test_counts_beyond_total_are_clamped() -> None:
    r = judge(batch(total=10, completed=50, failed=-7), EXPIRES - HOUR)
    assert r.pending == 0 and not r.at_risk and r.projected_completion == EXPIRES - HOUR


def test_negative_counts_are_nothing_done() -> None:
    r = judge(batch(completed=-50), CREATED + HOUR)
    assert r == Risk(False, 1000, None)


def test_absurd_totals_are_left_out() -> None:
    assert judge(batch(total=10**400, completed=1), CREATED + HOUR) == NOT_ASSESSED
    assert judge(batch(total=2**53 + 1, completed=1), CREATED + HOUR) == NOT_ASSESSED


def test_a_sliver_of_progress_past_any_time_is_at_risk_without_a_number() -> None:
    r = judge(batch(progress=5e-324), CREATED + HOUR)
    assert r.at_risk and r.projected_completion is None


@pytest.mark.parametrize("now", [math.nan, math.inf, -math.inf])
def test_a_broken_clock_is_never_an_alarm(now: float) -> None:
    assert judge(batch(completed=1), now) == NOT_ASSESSED


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
        "id": "b",
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
    """Consistent OpenAI-shaped in-progress batches: the ones the monotonicity promise is about."""
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
@given(st.one_of(hostile_batches(), sane_batches()), _NOW, _FRACTION)
def test_results_are_always_finite_and_bounded(b: Batch, now: float, fraction: float) -> None:
    r = judge(b, now, fraction)
    assert isinstance(r.at_risk, bool) and isinstance(r.pending, int)
    assert r.projected_completion is None or math.isfinite(r.projected_completion)
    total = b.request_counts.total if b.request_counts is not None else None
    assert 0 <= r.pending <= max(0, total or 0)
    if r.at_risk:
        assert normalize_status(b.status) in ("validating", "in_progress") and b.expires is not None


@PROFILE
@given(st.one_of(hostile_batches(), sane_batches()), _NOW, _FRACTION)
def test_a_projection_before_expiry_is_never_counted(b: Batch, now: float, fraction: float) -> None:
    r = judge(b, now, fraction)
    if r.projected_completion is not None:
        expires = b.expires
        assert expires is not None
        assert r.at_risk == (r.projected_completion > expires)


@PROFILE
@given(sane_batches(), st.floats(0.0, 8 * WINDOW), st.floats(0.0, 8 * WINDOW), _FRACTION)
def test_risk_never_goes_away_as_time_passes(b: Batch, t1: float, t2: float, fraction: float) -> None:
    earlier, later = sorted((t1, t2))
    assume(earlier < later)
    created = b.created
    assert created is not None
    first = judge(b, created + earlier, fraction)
    if first.at_risk:
        assert judge(b, created + later, fraction).at_risk


@PROFILE
@given(sane_batches(), st.floats(0.0, 8 * WINDOW), _FRACTION)
def test_the_verdict_is_the_contract_formula(b: Batch, offset: float, fraction: float) -> None:
    """An independent restatement of the rule for consistent batches, with no branch shared with the code."""
    created, expires, counts = b.created, b.expires, b.request_counts
    assert created is not None and expires is not None and counts is not None
    now = created + offset
    done = (counts.completed or 0) + (counts.failed or 0)
    total = counts.total or 0
    r = judge(b, now, fraction)
    assert r.pending == total - done
    if done == 0:
        assert r.projected_completion is None
        assert r.at_risk == (now - created >= fraction * (expires - created))
    else:
        start = b.started or created
        expected = projection(now, start, done, total - done) if now > start else now
        assert r.projected_completion == pytest.approx(expected, rel=1e-12)
        if not math.isclose(expected, expires, rel_tol=1e-12):
            assert r.at_risk == (expected > expires)

"""The API's overlapping request_counts → the contract's five disjoint request outcomes.

Bifrost's `request_counts` mixes an OpenAI shape (`total`, `completed`, `failed`) with Anthropic's finer one
(`succeeded`, `expired`, `canceled`, `pending`), and `completed` there means "finished", not "succeeded". Summing
those fields double-counts; the disjoint outcomes below always add up to what the batch says it holds, so a
`sum without (outcome)` in PromQL is meaningful (Prometheus' naming guide).
"""

from __future__ import annotations

from typing import Final, NamedTuple

from .models import TERMINAL_SET, RequestCounts

# `cancelled` as Bifrost spells the batch status (the API's `request_counts.canceled` field keeps its one l).
OUTCOMES: Final = ("succeeded", "failed", "expired", "cancelled", "pending")
# No provider runs a billion requests in one batch (OpenAI's cap is 50,000, Anthropic's 100,000): a count beyond
# this is garbage from the gateway, clamped so that sums stay exact in a float and every exposed value finite.
MAX_COUNT: Final = 10**9


class Outcomes(NamedTuple):
    succeeded: int
    failed: int
    expired: int
    cancelled: int
    pending: int
    overflow: bool  # the parts exceeded `total`: counted by the parts (the caller logs it once)
    # a count was negative or beyond MAX_COUNT and was clamped (the caller logs it once)
    clamped: bool = False

    @property
    def total(self) -> int:
        return self.succeeded + self.failed + self.expired + self.cancelled + self.pending

    @property
    def done(self) -> int:
        """Requests that will not run any more: everything but pending."""
        return self.succeeded + self.failed + self.expired + self.cancelled


ZERO: Final = Outcomes(0, 0, 0, 0, 0, False)
_new: Final = tuple.__new__


def _clamp(value: int) -> int:
    return 0 if value < 0 else MAX_COUNT if value > MAX_COUNT else value


def outcomes(counts: RequestCounts | None, status: str) -> Outcomes:
    """Disjoint outcomes of one batch in (normalised) `status`, per the metrics contract's mapping.

    A terminal batch has nothing pending: what remains of `total` is what the terminal status lost (expired for
    `expired`, cancelled for `cancelled`, failed for every other terminal status).

    Runs for every batch of every poll, so it is written straight through: one range test of all six counts, and
    the clamping only for the batch that needs it.
    """
    if counts is None:
        return ZERO
    total = counts.total or 0
    failed = counts.failed or 0
    expired = counts.expired or 0
    canceled = counts.canceled or 0
    explicit = counts.pending
    pending = explicit or 0
    succeeded = counts.succeeded
    if succeeded is None:
        # Anthropic and Gemini fill `succeeded` and mean "finished" by `completed`; Go's omitempty drops a zero
        # `succeeded`. Their shape shows by an explicit `pending`, or (a finished Gemini batch, nothing pending)
        # by `completed` = total with finished parts beyond it: then succeeded is what the other parts leave of the
        # total. OpenAI's shape has `completed` = succeeded; parts of it beyond the total are a gateway's error,
        # counted by the parts and logged, not reshaped into another provider's meaning.
        succeeded = counts.completed or 0
        if explicit is not None or (succeeded == total and succeeded + failed > total):
            succeeded = total - (pending + failed + expired + canceled)
            if succeeded < 0:
                succeeded = 0
    # One test of all six: OR-ing non-negative ints never gives less than the largest of them, so in range is the
    # common answer; only a batch past it is checked count by count.
    bits = succeeded | failed | expired | canceled | total | pending
    clamped = (bits < 0 or bits > MAX_COUNT) and not (
        0 <= succeeded <= MAX_COUNT
        and 0 <= failed <= MAX_COUNT
        and 0 <= expired <= MAX_COUNT
        and 0 <= canceled <= MAX_COUNT
        and 0 <= total <= MAX_COUNT
        and 0 <= pending <= MAX_COUNT
    )
    if clamped:
        succeeded, failed, expired, canceled = (
            _clamp(succeeded),
            _clamp(failed),
            _clamp(expired),
            _clamp(canceled),
        )
        total, pending = _clamp(total), _clamp(pending)
    parts = succeeded + failed + expired + canceled
    if explicit is not None:
        overflow = parts + pending > total
    else:
        pending = total - parts
        overflow = pending < 0
        if overflow:
            pending = 0
    if pending and status in TERMINAL_SET:
        # What remains of a finished batch is what its terminal status lost; an explicit `pending` on a finished
        # batch too (Anthropic reports what it never processed as expired or canceled, but be safe): nothing is
        # pending once a batch is terminal.
        if status == "expired":
            expired += pending
        elif status == "cancelled":
            canceled += pending
        else:
            failed += pending
        pending = 0
    # tuple.__new__ is what Outcomes(...) runs, without the generated __new__'s Python frame.
    return _new(Outcomes, (succeeded, failed, expired, canceled, pending, overflow, clamped))

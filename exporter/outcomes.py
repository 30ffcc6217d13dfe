"""The API's overlapping request_counts → the contract's five disjoint request outcomes.

Bifrost's `request_counts` mixes an OpenAI shape (`total`, `completed`, `failed`) with Anthropic's finer one
(`succeeded`, `expired`, `canceled`, `pending`), and `completed` there means "finished", not "succeeded". Summing
those fields double-counts; the disjoint outcomes below always add up to what the batch says it holds, so a
`sum without (outcome)` in PromQL is meaningful (Prometheus' naming guide).
"""

from __future__ import annotations

from typing import Final, NamedTuple

from .models import TERMINAL_STATUSES, RequestCounts

OUTCOMES: Final = ("succeeded", "failed", "expired", "canceled", "pending")
# No provider runs a billion requests in one batch (OpenAI's cap is 50,000, Anthropic's 100,000): a count beyond
# this is garbage from the gateway, clamped so that sums stay exact in a float and every exposed value finite.
MAX_COUNT: Final = 10**9


class Outcomes(NamedTuple):
    succeeded: int
    failed: int
    expired: int
    canceled: int
    pending: int
    overflow: bool  # the parts exceeded `total`: counted by the parts (the caller logs it once)
    # a count was negative or beyond MAX_COUNT and was clamped (the caller logs it once)
    clamped: bool = False

    @property
    def total(self) -> int:
        return self.succeeded + self.failed + self.expired + self.canceled + self.pending

    @property
    def done(self) -> int:
        """Requests that will not run any more: everything but pending."""
        return self.succeeded + self.failed + self.expired + self.canceled


ZERO: Final = Outcomes(0, 0, 0, 0, 0, False)


def outcomes(counts: RequestCounts | None, status: str) -> Outcomes:
    """Disjoint outcomes of one batch in (normalised) `status`, per the metrics contract's mapping.

    A terminal batch has nothing pending: what remains of `total` is what the terminal status lost (expired for
    `expired`, canceled for `cancelled`, failed for every other terminal status).
    """
    if counts is None:
        return ZERO
    succeeded_raw = counts.succeeded
    if succeeded_raw is None:
        # Anthropic and Gemini fill `succeeded` and mean "finished" by `completed`; Go's omitempty drops a zero
        # `succeeded`. Their shape shows by an explicit `pending`, or by finished parts beyond the total: then
        # succeeded is what the other parts leave of the total. OpenAI's shape has `completed` = succeeded.
        completed, failed_raw, total_raw = counts.completed or 0, counts.failed or 0, counts.total or 0
        if counts.pending is not None or completed + failed_raw > total_raw:
            others = (counts.pending or 0) + failed_raw + (counts.expired or 0) + (counts.canceled or 0)
            succeeded_raw = max(0, total_raw - others)
        else:
            succeeded_raw = counts.completed
    raw = (
        succeeded_raw,
        counts.failed,
        counts.expired,
        counts.canceled,
        counts.total,
        counts.pending,
    )
    clamped = False
    values = []
    for value in raw:
        if value is None or 0 <= value <= MAX_COUNT:
            values.append(value or 0)
        else:
            clamped = True
            values.append(0 if value < 0 else MAX_COUNT)
    succeeded, failed, expired, canceled, total, explicit_pending = values
    parts = succeeded + failed + expired + canceled
    if counts.pending is not None:
        pending = explicit_pending
        overflow = parts + pending > total
    else:
        pending = total - parts
        overflow = pending < 0
        if overflow:
            pending = 0
        elif pending and status in TERMINAL_STATUSES:
            if status == "expired":
                expired += pending
            elif status == "cancelled":
                canceled += pending
            else:
                failed += pending
            pending = 0
    if pending and status in TERMINAL_STATUSES:
        # An explicit `pending` on a finished batch (Anthropic reports what it never processed as expired or
        # canceled, but be safe): nothing is pending once a batch is terminal.
        if status == "expired":
            expired += pending
        elif status == "cancelled":
            canceled += pending
        else:
            failed += pending
        pending = 0
    return Outcomes(succeeded, failed, expired, canceled, pending, overflow, clamped)

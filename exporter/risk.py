"""Will an active batch miss its `expires_at`? The metrics contract's one linear projection (Early warning).

An expired batch loses every request still pending, and the last hour is too late to act. One rule an operator can
redo by hand from the batch object explains every alert: extrapolate the batch's own rate so far, or, when nothing
has finished yet, give it a fixed fraction of its window (`risk_no_progress_fraction`) before calling it stuck.

Every number comes from the gateway and is untrusted: counts may be negative or absurdly large, `progress` may be
NaN, timestamps may be far in the future. The function never raises and only returns finite numbers or None. It
runs for every active batch on every poll, so the common "left out" answers are shared constants, not allocations.
"""

from __future__ import annotations

import math
from typing import Final, NamedTuple

from .models import Batch
from .outcomes import outcomes

# Beyond 2**53 a float no longer holds every integer, and no gateway means a batch that large: such a count is
# garbage, and the batch is left out rather than turned into a number that overflows the projection.
_MAX_COUNT: Final = 2**53
_PROJECTED_STATUSES: Final = frozenset({"validating", "in_progress"})


class Risk(NamedTuple):
    """The verdict on one batch.

    `pending` is what the batch still has to run (summed into `bifrost_batch_at_risk_requests` over the batches at
    risk); 0 when the rule leaves the batch out. `projected_completion` is the Unix time the batch's rate so far
    points to, None when there is no projection (nothing done yet, left out, or beyond any representable time).
    """

    at_risk: bool
    pending: int
    projected_completion: float | None


NOT_ASSESSED: Final = Risk(False, 0, None)
# tuple.__new__ is what Risk(...) runs, without the generated __new__'s Python frame (this runs per active batch).
_new: Final = tuple.__new__


def assess(
    batch: Batch, status: str, now: float, no_progress_fraction: float, finished: int | None = None
) -> Risk:
    """The contract's projection for `batch` in (normalised) `status` at Unix time `now`.

    - only `validating`/`in_progress`/`finalizing` with `expires_at` and `request_counts.total` > 0 are assessed;
      `finalizing` is never at risk (every request has run), `cancelling`, terminal and unknown statuses are left out;
    - done = the v2 outcomes that are not pending (Gemini: total × progress / 100 when `progress` is given);
    - done > 0: projected completion = now + pending × (now − start) / done, start = `in_progress_at` else
      `created_at`; at risk when it is later than `expires_at`;
    - done = 0: no projection; at risk once now − `created_at` ≥ fraction × (`expires_at` − `created_at`).

    `finished` is `outcomes(batch.request_counts, status).done` when the caller has already computed it (the
    snapshot fold does, for every batch), so that it is not computed twice.
    """
    if status not in _PROJECTED_STATUSES:
        return NOT_ASSESSED  # finalizing: every request has run; the rest are not ours to judge
    expires = batch.expires
    counts = batch.request_counts
    if expires is None or counts is None or not math.isfinite(now):
        return NOT_ASSESSED
    total = counts.total
    if total is None or total <= 0 or total > _MAX_COUNT:
        return NOT_ASSESSED
    done: float
    progress = batch.progress
    if progress is not None and 0.0 <= progress <= 100.0:  # False for NaN, so NaN falls back to the counts
        done = total * progress / 100.0
        pending = total - int(done)  # a request part-way done is still pending
    else:
        if finished is None:
            finished = outcomes(counts, status).done
        done = 0 if finished <= 0 else min(finished, total)  # negatives and overflowing parts are clamped
        pending = total - int(done)
    if done > 0:
        start = batch.started or batch.created
        if start is None:
            return _new(Risk, (False, pending, None))
        elapsed = now - start if now > start else 0.0
        projected = now + pending * elapsed / done
        if not math.isfinite(projected):  # a sliver of progress over a long time: later than any expiry
            return _new(Risk, (True, pending, None))
        return _new(Risk, (projected > expires, pending, projected))
    created = batch.created
    if created is None:
        return _new(Risk, (False, pending, None))
    # NaN or out-of-range fractions make the comparison False (never at risk) rather than raise; Settings refuses them.
    return _new(Risk, (now - created >= no_progress_fraction * (expires - created), pending, None))

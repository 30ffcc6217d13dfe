"""How far a provider's first full list has come, and when it should end.

Until a provider's first full list completes, its batch gauges show only the part of the account listed so far;
`/readyz` is already 200 (the exporter serves what it has), so this progress is what tells a dashboard, an alert or
an operator that the picture is not complete yet. A large account takes pages ÷ max_requests_per_second to list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class FirstSync:
    """One provider's first full list: done or not, what it has listed so far, and the estimated end.

    `estimated_completion` is a Unix timestamp, present only while the list runs and its length can be told:
    Bifrost does not say how long a list is, so the estimate needs the number of batches the exporter knew before
    the list started (the view's keys changed, and the store kept what the old view had shown) and the pace so far.
    """

    complete: bool = False
    batches: int = 0
    pages: int = 0
    started_at: float | None = None
    completed_at: float | None = None
    estimated_completion: float | None = None

    def pace(self, now: float) -> float | None:
        """Pages per second so far (None before a page, or when no time has passed)."""
        if self.started_at is None or self.pages <= 0:
            return None
        end = self.completed_at if self.completed_at is not None else now
        return self.pages / (end - self.started_at) if end > self.started_at else None


NOT_STARTED: Final = FirstSync()


def expected_pages(known_batches: int, page_size: int | None, keys: int) -> int | None:
    """How many pages a full list of `known_batches` takes over the view's `keys` keys, or None when it cannot be
    told. Each key walks every page: governance narrows a page to the key's batches after the gateway cut it, and
    leaves the cursors alone (README, "Sizing")."""
    if known_batches <= 0 or not page_size:
        return None
    return math.ceil(known_batches / page_size) * max(1, keys)


def estimate_completion(
    pages: int, expected: int | None, started_at: float | None, now: float
) -> float | None:
    """When the list should end at the pace so far, or None without a length or a pace."""
    if expected is None or started_at is None or pages <= 0 or now <= started_at:
        return None
    pace = pages / (now - started_at)
    return now + max(1, expected - pages) / pace

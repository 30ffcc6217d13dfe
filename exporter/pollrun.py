"""What one provider's poll loop carries from poll to poll besides its ledger, and what one poll did.

Its own module so that the parts of a poll kept apart from the poller (the counter holds, exporter/holds.py) read
and write the same record the poller does, without importing the poller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from .client import Failure
from .cost import CostView
from .ledger import LedgerView
from .models import Batch
from .store import Store


@dataclass(slots=True)
class Summary:
    """What the polls since the last summary line did."""

    logged_at: float | None = None
    polls: int = 0
    failed: int = 0
    list_requests: int = 0
    retrieve_requests: int = 0
    retries: int = 0  # requests sent again (5xx, 429, timeouts): a gateway retries absorb is not healthy


@dataclass(slots=True)
class FirstList:
    """The first full list's progress (also after a change of the view's keys, which starts it over)."""

    started_at: float | None = None  # wall clock of its first poll
    pages: int = 0
    expected_pages: int | None = (
        None  # from what the store knew when it started (a changed view), if anything
    )
    completed_at: float | None = None
    batches: int = 0  # at completion


class Hold(NamedTuple):
    """A counter key shown at an earlier value until a moment: the count `shown`, and for a (status, group) key the
    requests by outcome (empty: zeros)."""

    until: float
    shown: int = 0
    requests: tuple[int, ...] = ()


@dataclass(slots=True)
class Run:
    """What one provider's poll loop carries from poll to poll besides the ledger."""

    store: Store
    synced: bool = False  # a full list has completed at least once
    resync_truncated: str | None = None  # reason the last full list stopped early
    next_resync: float = 0.0
    resync_interval: float = 0.0  # the adaptive interval after the last full list (0: not set yet)
    resync_found: int = 0  # what the running full list found beyond the newest pages, so far
    first: FirstList = field(default_factory=FirstList)
    last_start: float = (
        0.0  # wall-clock start of the previous poll: a clock that went back makes a resync due
    )
    crashes: int = 0
    clamped: int = 0  # batches with clamped numbers in the last snapshot (logged when it changes)
    overflowed: int = 0
    cursor_refusals: int = 0  # refused cursors since the last complete full list (logged on the first)
    resync_refusals: int = 0  # of those, the full list's own (each restarted it from the head)
    walk_pages: int = 0  # pages of the longest key's walk in the last complete full list (0: none yet)
    cursor_ignored_said: bool = False  # the gateway ignoring this provider's cursor was logged as a warning
    keys: tuple[str | None, ...] = ()  # the view's keys the last poll listed with (() before the first poll)
    # Keys the gateway does not allow on this provider (403 provider_blocked) as their last list found: left out of
    # head scans and retrieves, asked again by every full list.
    not_allowed: set[str] = field(default_factory=set)
    view_version: int = -1  # the client's view_version() the keys above were read at
    key_generations: dict[str, int] = field(default_factory=dict)  # the client's key_generations() then
    # Per key of the view ("" for none): the wall time from which a batch first seen through it counts (0: from the
    # ledger's watermark). A key added later (SIGHUP, or while the exporter was down) brings its tenant's history as
    # history: the old view's watermark, bounded by the old view's gateway clock, can lie as far back as its tenants'
    # last activity, and every batch of the new tenant that ended since would page as a transition.
    key_floors: dict[str, float] = field(default_factory=dict)
    key_prints: dict[str, str] = field(default_factory=dict)  # their fingerprints (client.key_fingerprints)
    # The view saved beside the ledger (name → [fingerprint, floor]); None: no state, or one from an earlier release.
    saved_view: dict[str, Any] | None = None
    polls: int = 0  # polls started: "listed by this poll or the last one" without reading any clock
    # Saved pages (key, cursor) the last poll read again: what the next full list finds new there, polls find too.
    read_again: set[tuple[int, str]] = field(default_factory=set)
    # Running batch → the poll whose retrieve was answered 404 first. Bifrost's retrieve asks the provider's keys in
    # turn and answers with the last one's error, so a 429 or 5xx of the key that owns the batch can reach us as
    # another key's 404: one 404 is not proof of a deletion, a second one in a later poll is.
    missing: dict[str, int] = field(default_factory=dict)
    # Running batch no allowed key's list showed → how many keys of the view, in order, governance answered 404
    # `access_blocked` (another key's batch) in the current round: the next one is asked (key_of).
    blocked: dict[str, int] = field(default_factory=dict)
    # Counter keys held a while (exporter/holds.py, exporter/presence.py): series the last render could not foresee, at 0; and those
    # that rose above the baseline in this process's first moments, at their baseline value.
    held: dict[tuple[Any, ...], Hold] = field(default_factory=dict)
    # The counts this process started with (restored from the state directory, or none), until a scrape has been
    # served them: see holds.hold_new_counters.
    baseline: LedgerView | None = None
    baseline_seen: bool = False  # a scrape has been served this provider's counters (Poller.counters_scraped)
    # The cost counters likewise (cost_metrics): what they started with, and (figure, key) → (until, value shown).
    cost_baseline: CostView | None = None
    cost_held: dict[tuple[str, Any], tuple[float, float]] = field(default_factory=dict)
    summary: Summary = field(default_factory=Summary)


@dataclass(slots=True)
class PollOutcome:
    """One poll's requests, as the fold and the log line see them."""

    failure: Failure | None = None
    truncated: str | None = None
    truncated_detail: str | None = None
    unsupported: bool = False
    list_requests: int = 0
    retrieve_requests: int = 0
    pages: int = 0
    retries: int = 0
    batches: int = 0
    retrieve_failures: int = 0
    retrieves_answered: int = 0  # retrieves that returned the batch, or said it is gone
    first_retrieve_failure: Failure | None = None
    gone: int = 0
    skipped_items: int = 0
    first_skip_error: str | None = None
    resync_done: bool = False
    resync_found: int = 0  # batches the running full list found that the polls in between had missed
    refresh_deferred: int = 0  # known running batches this poll did not refresh (budget, failed retrieves)
    # The known running batches a list showed this poll, folded or not: one whose list item carries no counts
    # (Bedrock, Gemini) is shown without being refreshed, and listing down to it or reading its page again would
    # only show it so again (a retrieve brings its counts).
    shown: set[str] = field(default_factory=set)


class Observe(Protocol):
    """A poll's pages into the ledger; `k`, the view's key that listed them (None: a retrieve of a known batch)."""

    def __call__(self, batches: list[Batch], k: int | None = None) -> int: ...

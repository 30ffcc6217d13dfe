"""One asyncio task per provider: poll on schedule, fold the result into the ledger and store, publish a new state.

The poller is the only writer of provider state. Each poll ends by replacing the provider's ProviderState with a new
immutable one (a single reference swap), so a reader sees either the old or the new state, never a mix, and a
scrape never waits for a poll.

Two modes (settings.poll_mode):
- `full` lists every batch every poll (v1): the gateway's cost grows with history.
- `incremental` keeps a store of known batches and, each poll, lists the newest pages until a page holds nothing
  new, refreshes the known active batches the list did not show (by retrieve), and lists in full every
  `resync_interval_seconds`, spread over polls within a request budget, to find batches on later keys and to drop
  deleted ones. After each complete full list the store holds exactly what a full list shows, so the gauges equal
  those of `full` mode; in between, status changes of known batches and new batches on the newest pages are seen
  within one poll.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import structlog

from . import statefile
from .client import REASONS, BifrostClient, Failure, ListResult, page_size_for
from .ledger import Ledger
from .models import Batch
from .risk import ProgressTracker
from .settings import Settings
from .snapshot import Health, ProviderState, SnapshotBuilder
from .store import Store

UNSUPPORTED_BACKOFF_INTERVALS = 10
# Share of a poll interval's request budget (interval × max_requests_per_second) a poll may spend: the rest is
# headroom for retries and for the other work of the gateway's keys.
BUDGET_SHARE = 0.5
# A full list longer than this many times max_pages is treated as a loop that spans polls.
RESYNC_MAX_PAGES_FACTOR = 100
CRASH_BACKOFF_MAX_SECONDS = 60.0
UNHEALTHY_AFTER_CRASHES = 3


# Label-value caps reached for the first time (the ledger raises the flag; the poller logs once and lowers it).
_CAP_WARNINGS = (
    (
        "status_overflow_pending",
        "status_values_capped",
        'more than 20 unknown status values; further ones are reported as status="other"',
    ),
    (
        "code_overflow_pending",
        "failure_codes_capped",
        'more than 20 distinct failure codes; further ones are reported as code="other"',
    ),
    (
        "group_overflow_pending",
        "metadata_values_capped",
        'more than 50 distinct values of a metadata label; further ones are reported as "other"',
    ),
)


@dataclass(slots=True)
class _Run:
    """What one provider's poll loop carries from poll to poll besides the ledger."""

    store: Store
    synced: bool = False  # a full list has completed at least once
    resync_truncated: str | None = None  # reason the last full list stopped early
    next_resync: float = 0.0
    crashes: int = 0
    state_write_failing: bool = False
    clamped: int = 0  # batches with clamped numbers in the last snapshot (logged when it changes)
    overflowed: int = 0


@dataclass(slots=True)
class _PollOutcome:
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
    first_retrieve_failure: Failure | None = None
    gone: int = 0
    skipped_items: int = 0
    first_skip_error: str | None = None
    resync_done: bool = False


class Poller:
    def __init__(
        self,
        settings: Settings,
        client: BifrostClient,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        on_change: Callable[[], None] = lambda: None,
        started_at: float | None = None,
    ) -> None:
        self._settings = settings
        self._client = client
        self._clock = clock
        self._monotonic = monotonic
        self._on_change = on_change
        self.started_at = clock() if started_at is None else started_at
        self._log = structlog.get_logger("exporter.poller")
        self._ledgers = {
            p: Ledger(
                self.started_at,
                settings.duration_buckets,
                settings.latency_buckets,
                REASONS,
                metadata_keys=settings.metadata_labels,
                poll_interval=settings.poll_interval_seconds,
            )
            for p in settings.providers
        }
        for provider, ledger in self._ledgers.items():
            self._restore(provider, ledger)
        self._runs = {p: _Run(self._new_store(led)) for p, led in self._ledgers.items()}
        self._trackers = {
            p: ProgressTracker() for p in settings.providers
        }  # early warning: rates, calibration
        self._states: Mapping[str, ProviderState] = MappingProxyType(
            {p: ProviderState(p, Health(), None, led.view()) for p, led in self._ledgers.items()}
        )

    @staticmethod
    def _new_store(ledger: Ledger) -> Store:
        return Store(ledger.admit_status, ledger.group_of, keep_metadata=bool(ledger.metadata_keys))

    @property
    def states(self) -> Mapping[str, ProviderState]:
        """The current state of every provider; the mapping itself is replaced, never mutated."""
        return self._states

    def failing_tasks(self) -> list[str]:
        """Providers whose poll task keeps crashing (a bug, not a gateway fault): /healthz reports them."""
        return [p for p, run in self._runs.items() if run.crashes >= UNHEALTHY_AFTER_CRASHES]

    # --- durable state ------------------------------------------------------------------------------------------

    def _restore(self, provider: str, ledger: Ledger) -> None:
        state_dir = self._settings.state_dir
        if state_dir is None:
            return
        path = str(statefile.state_path(state_dir, provider))
        try:
            state = statefile.read(state_dir, provider)
            if state is None:
                self._log.info(
                    "state_not_found", provider=provider, path=path, detail="starting without history"
                )
                return
            notes = ledger.load_state(state)
        except statefile.StateError as exc:
            self._log.warning(
                "state_unusable",
                provider=provider,
                setting="state_dir",
                detail=str(exc)[:300],
                consequence="counting starts afresh; transitions before this start are not counted",
            )
            return
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            self._log.warning(
                "state_unusable",
                provider=provider,
                setting="state_dir",
                path=path,
                detail=f"malformed ledger ({type(exc).__name__})",
                consequence="counting starts afresh; transitions before this start are not counted",
            )
            return
        self._log.info(
            "state_restored",
            provider=provider,
            path=path,
            watermark=ledger.started_at,
            tracked_ids=ledger.view().tracked_ids,
            notes=notes or None,
        )

    async def _save(self, provider: str, ledger: Ledger, run: _Run, now: float) -> None:
        state_dir = self._settings.state_dir
        if state_dir is None:
            return
        try:
            data = statefile.encode(provider, ledger.to_state(), now)
            await asyncio.to_thread(statefile.write, state_dir, provider, data)
        except (OSError, ValueError) as exc:
            if not run.state_write_failing:
                self._log.warning(
                    "state_write_failed",
                    provider=provider,
                    setting="state_dir",
                    detail=f"{type(exc).__name__}: {exc}"[:300],
                    consequence="serving on; a restart will not resume from this poll",
                )
            run.state_write_failing = True
            return
        if run.state_write_failing:
            self._log.info("state_write_recovered", provider=provider)
        run.state_write_failing = False

    # --- scheduling ---------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Poll every provider concurrently until cancelled."""
        async with asyncio.TaskGroup() as group:
            for provider in self._settings.providers:
                group.create_task(self._run_provider(provider), name=f"poll-{provider}")

    async def poll_all_once(self) -> Mapping[str, ProviderState]:
        await asyncio.gather(*(self.poll(p) for p in self._settings.providers))
        return self._states

    async def _run_provider(self, provider: str) -> None:
        """The provider's loop, supervised: a bug in one poll is logged and retried with backoff, never fatal."""
        interval = self._settings.poll_interval_seconds
        run = self._runs[provider]
        next_start = self._monotonic()
        while True:
            try:
                state = await self.poll(provider)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                run.crashes += 1
                delay = min(CRASH_BACKOFF_MAX_SECONDS, interval * 2 ** min(run.crashes - 1, 6))
                self._log.error(
                    "poll_task_failed",
                    provider=provider,
                    error=f"{type(exc).__name__}: {exc}"[:300],
                    consecutive=run.crashes,
                    retry_in_seconds=round(delay, 1),
                    exc_info=True,
                )
                await asyncio.sleep(delay)
                next_start = self._monotonic()
                continue
            run.crashes = 0
            next_start += interval * (1 if state.health.supported else UNSUPPORTED_BACKOFF_INTERVALS)
            now = self._monotonic()
            if next_start < now:
                next_start = now  # a poll overran its interval: start again at once, never in a burst
            await asyncio.sleep(next_start - now)

    # --- one poll -----------------------------------------------------------------------------------------------

    async def poll(self, provider: str) -> ProviderState:
        """One poll of one provider. Gateway faults are folded into the state; only a bug raises."""
        ledger = self._ledgers[provider]
        run = self._runs[provider]
        ledger.poll_started()
        t0 = self._monotonic()
        started = self._clock()
        if self._settings.poll_mode == "full":
            outcome, store = await self._poll_full(provider, ledger, run, started)
        else:
            outcome = await self._poll_incremental(provider, ledger, run, started)
            store = run.store
        ledger.requests_sent("list", outcome.list_requests)
        ledger.requests_sent("retrieve", outcome.retrieve_requests)
        duration = self._monotonic() - t0
        now = self._clock()
        state = self._fold(provider, ledger, run, store, outcome, now, duration, started)
        await self._save(provider, ledger, run, now)
        self._publish(provider, state)
        return state

    def _observe(self, ledger: Ledger, started: float) -> Callable[[list[Batch]], int]:
        def observe(batches: list[Batch]) -> int:
            return ledger.observe_page(batches, started)

        return observe

    async def _poll_full(
        self, provider: str, ledger: Ledger, run: _Run, started: float
    ) -> tuple[_PollOutcome, Store]:
        store = self._new_store(ledger)
        store.start_resync(started)
        observe = self._observe(ledger, started)

        def fold_page(batches: list[Batch]) -> None:
            # The ledger counts transitions as pages arrive (real even if a later page fails); the store is
            # discarded if a later page fails, so the last good snapshot stays.
            observe(batches)
            store.upsert(batches)

        result = await self._client.list_batches(provider, fold_page)
        outcome = _PollOutcome()
        self._take_list(outcome, result, ledger)
        if result.failure is None and not result.unsupported:
            store.finish_resync()
            ledger.finish_poll(started, complete=result.truncated is None)
            if result.truncated is None:
                ledger.resynced(self._clock())
            outcome.resync_done = True
            run.store = store
            run.synced = True
            run.resync_truncated = result.truncated
        return outcome, run.store

    def _budget(self) -> int:
        s = self._settings
        return max(1, math.floor(s.poll_interval_seconds * s.max_requests_per_second * BUDGET_SHARE))

    async def _poll_incremental(
        self, provider: str, ledger: Ledger, run: _Run, started: float
    ) -> _PollOutcome:
        store = run.store
        outcome = _PollOutcome()
        budget = self._budget()
        observe = self._observe(ledger, started)
        refreshed: set[str] = set()
        resync_due = store.resync is not None or not run.synced or started >= run.next_resync
        starting_from_head = resync_due and (store.resync is None or store.resync.cursor is None)

        head_cursor: str | None = None
        head_pages = 0
        # 1. The newest pages, until one holds nothing new (skipped when this poll's full list starts at the head).
        if run.synced and not starting_from_head:
            wanted_more = [True]

            def head_page(batches: list[Batch]) -> bool:
                batches = store.defer_sparse(batches)
                observe(batches)
                refreshed.update(b.id for b in batches)
                wanted_more[0] = store.upsert(batches, listing=False) > 0
                return wanted_more[0]

            result = await self._client.list_batches(
                provider, head_page, max_pages=min(budget, self._settings.max_pages), budget_truncates=False
            )
            # A cursor defect matters here only while the newest pages were still showing new batches.
            self._take_list(outcome, result, ledger, head=not wanted_more[0])
            if outcome.failure is not None or outcome.unsupported:
                return outcome
            head_cursor, head_pages = result.next_cursor, result.pages

        # 2. Known active batches the list did not show: list on down to them when that costs fewer requests
        #    than one retrieve each (by their places in the last full list), then retrieve what is left.
        remaining = [i for i in store.active if i not in refreshed]
        depth = store.list_depth(remaining) if remaining and head_cursor is not None else None
        if depth is not None:
            size = page_size_for(provider, self._settings.page_size)
            more_pages = -(-depth // size) - head_pages
            if 0 < more_pages < len(remaining):
                wanted = set(remaining)

                def deeper_page(batches: list[Batch]) -> bool:
                    batches = store.defer_sparse(batches)
                    observe(batches)
                    refreshed.update(b.id for b in batches)
                    store.upsert(batches, listing=False)
                    wanted.difference_update(refreshed)
                    return bool(wanted)

                result = await self._client.list_batches(
                    provider, deeper_page, after=head_cursor, max_pages=more_pages + 1, budget_truncates=False
                )
                self._take_list(outcome, result, ledger, head=True)
                if outcome.failure is not None or outcome.unsupported:
                    return outcome
        for batch_id in [i for i in store.active if i not in refreshed]:
            got = await self._client.retrieve(provider, batch_id)
            outcome.retrieve_requests += got.requests
            outcome.retries += max(0, got.requests - 1)
            if got.batch is not None:
                observe([got.batch])
                store.refresh(got.batch)
                refreshed.add(batch_id)
                if got.latency_seconds is not None:
                    ledger.pages_fetched(0, [got.latency_seconds], ())
            elif got.gone:
                store.remove(batch_id)
                ledger.forget([batch_id])
                outcome.gone += 1
            elif got.failure is not None:
                outcome.retrieve_failures += 1
                outcome.first_retrieve_failure = outcome.first_retrieve_failure or got.failure

        # 3. The full list, continued within what is left of the budget.
        if resync_due:
            resync = store.resync or store.start_resync(started)
            spent = outcome.list_requests + outcome.retrieve_requests
            pages = max(1, budget - spent)

            def resync_page(batches: list[Batch]) -> None:
                batches = store.defer_sparse(batches)
                observe(batches)
                store.upsert(batches)
                refreshed.update(b.id for b in batches)

            result = await self._client.list_batches(
                provider, resync_page, after=resync.cursor, max_pages=pages, budget_truncates=False
            )
            self._take_list(outcome, result, ledger)
            resync.pages += result.pages
            if outcome.failure is not None or outcome.unsupported:
                return outcome  # the full list resumes from its cursor next poll
            too_long = resync.pages >= RESYNC_MAX_PAGES_FACTOR * self._settings.max_pages
            if result.stopped == "budget" and not too_long:
                resync.cursor = result.next_cursor
            else:
                if too_long and result.truncated is None:
                    outcome.truncated = "max_pages"
                    outcome.truncated_detail = f"a full list passed {resync.pages} pages; stopped as a loop"
                truncated = outcome.truncated
                # A list cut short cannot prove a batch gone: keep those a retrieve just confirmed.
                gone = store.finish_resync(keep=refreshed if truncated else ())
                # Counted ids stay until their retention ends: a batch back in a later list is not counted again.
                ledger.forget(i for i in gone if not ledger.is_settled(i))
                outcome.gone += len(gone)
                outcome.resync_done = True
                run.synced = True
                run.resync_truncated = truncated
                run.next_resync = started + self._settings.resync_interval_seconds
                if truncated is None:
                    ledger.resynced(self._clock())
        ledger.finish_poll(started, complete=False)
        if outcome.failure is None and not outcome.unsupported:
            ledger.last_complete_poll = started
        return outcome

    @staticmethod
    def _take_list(outcome: _PollOutcome, result: ListResult, ledger: Ledger, *, head: bool = False) -> None:
        outcome.list_requests += result.requests
        outcome.pages += result.pages
        outcome.retries += result.retries
        outcome.batches += result.batch_count
        outcome.skipped_items += result.skipped_items
        outcome.first_skip_error = outcome.first_skip_error or result.first_skip_error
        ledger.pages_fetched(result.pages, result.latencies, result.cache_debugs)
        if result.unsupported:
            outcome.unsupported = True
        if result.failure is not None:
            outcome.failure = result.failure
        if result.truncated is not None and not head:
            # The head scan only looks for new batches: an early stop there is the full list's job to report.
            outcome.truncated = result.truncated
            outcome.truncated_detail = result.truncated_detail

    def _fold(
        self,
        provider: str,
        ledger: Ledger,
        run: _Run,
        store: Store,
        outcome: _PollOutcome,
        now: float,
        duration: float,
        started: float,
    ) -> ProviderState:
        previous = self._states[provider]
        fields: dict[str, Any] = {
            "provider": provider,
            "mode": self._settings.poll_mode,
            "list_requests": outcome.list_requests,
            "retrieve_requests": outcome.retrieve_requests,
            "pages": outcome.pages,
            "duration_seconds": round(duration, 4),
            "retries": outcome.retries,
        }
        if outcome.unsupported:
            if previous.health.supported:
                self._log.warning(
                    "provider_unsupported",
                    provider=provider,
                    detail="gateway answered unsupported_operation; polling again every "
                    f"{UNSUPPORTED_BACKOFF_INTERVALS} intervals",
                )
            health = Health(
                attempted=True, up=True, supported=False, last_success=now, poll_duration=duration
            )
            self._log.info("poll_finished", outcome="unsupported", batches=0, **fields)
            return ProviderState(provider, health, None, ledger.view())
        if outcome.failure is not None:
            failure = outcome.failure
            ledger.error(failure.reason)
            self._log.warning(
                "poll_failed",
                reason=failure.reason,
                detail=failure.detail,
                http_status=failure.status,
                attempts=failure.attempts,
                **fields,
            )
            health = replace(
                previous.health, attempted=True, up=False, supported=True, poll_duration=duration
            )
            return ProviderState(provider, health, previous.snapshot, ledger.view())
        if outcome.truncated is not None:
            ledger.error(outcome.truncated)
            self._log.warning(
                "poll_truncated",
                reason=outcome.truncated,
                detail=outcome.truncated_detail
                or "stopped paging early; metrics cover only the batches seen",
                **fields,
            )
        if outcome.retrieve_failures:
            first = outcome.first_retrieve_failure
            self._log.warning(
                "retrieve_failed",
                provider=provider,
                count=outcome.retrieve_failures,
                reason=first.reason if first else None,
                detail=first.detail if first else None,
                consequence="those batches keep their last known state until the next poll",
            )
        if outcome.skipped_items:
            self._log.warning(
                "batch_items_skipped",
                provider=provider,
                count=outcome.skipped_items,
                first_error=outcome.first_skip_error,
            )
        builder = SnapshotBuilder(
            provider,
            label_for=ledger.admit_status,
            group_for=ledger.group_of,
            per_batch=self._settings.per_batch_metrics,
            per_batch_limit=self._settings.per_batch_limit,
            now=now,
            no_progress_fraction=self._settings.risk_no_progress_fraction,
            tracker=self._trackers[provider],
        )
        store.fold_into(builder)
        snapshot = builder.build(now)
        self._warn_once(provider, ledger, run, snapshot.clamped, snapshot.overflowed)
        partial = run.resync_truncated is not None or not run.synced
        health = Health(
            attempted=True,
            up=True,
            supported=True,
            truncated=partial,
            last_success=now,
            poll_duration=duration,
            coverage=run.resync_truncated or ("complete" if run.synced else "pending"),
        )
        self._log.info(
            "poll_finished",
            outcome="truncated" if outcome.truncated else "ok",
            batches=len(store),
            seen=outcome.batches,
            gone=outcome.gone,
            resync="done" if outcome.resync_done else ("running" if store.resync is not None else None),
            **fields,
        )
        return ProviderState(provider, health, snapshot, ledger.view())

    def _warn_once(self, provider: str, ledger: Ledger, run: _Run, clamped: int, overflowed: int) -> None:
        """The one-line warnings of a poll: bounded label values, clamped numbers, forgotten ids. A batch with odd
        numbers stays listed for hours: it is logged when the number of such batches changes, not every poll."""
        for flag, event, detail in _CAP_WARNINGS:
            if getattr(ledger, flag):
                setattr(ledger, flag, False)
                self._log.warning(event, provider=provider, detail=detail)
        if ledger.forgotten_pending:
            self._log.warning(
                "ledger_ids_forgotten",
                provider=provider,
                count=ledger.forgotten_pending,
                detail=f"more than {ledger.max_tracked_ids} batch ids tracked; the oldest were forgotten "
                "(never counted twice: older terminal timestamps are no longer counted)",
            )
            ledger.forgotten_pending = 0
        if clamped and clamped != run.clamped:
            self._log.warning(
                "batch_values_clamped",
                provider=provider,
                count=clamped,
                detail="request_counts outside 0..1e9 from the gateway were clamped",
            )
        if overflowed and overflowed != run.overflowed:
            self._log.info(
                "batch_counts_exceed_total",
                provider=provider,
                count=overflowed,
                detail="request_counts parts exceed total; counted by the parts",
            )
        run.clamped, run.overflowed = clamped, overflowed

    def _publish(self, provider: str, state: ProviderState) -> None:
        self._states = MappingProxyType({**self._states, provider: state})
        self._on_change()

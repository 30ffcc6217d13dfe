"""One asyncio task per provider: poll on schedule, fold the result into the ledger and store, publish a new state.

The poller is the only writer of provider state. Each poll ends by replacing the provider's ProviderState with a new
immutable one (a single reference swap), so a reader sees either the old or the new state, never a mix, and a
scrape never waits for a poll.

Two modes (settings.poll_mode):
- `full` lists every batch every poll (v1): the gateway's cost grows with history.
- `incremental` keeps a store of known batches and, each poll, within one request budget for lists and retrieves:
  lists the newest pages until a page shows a batch it knew (or nothing new); continues the full list when one is
  due (spread over polls, to find batches on later keys and to drop deleted ones) with a share of the budget; and
  refreshes the known active batches no list showed (listing down to them where cheaper, else by retrieve).
  After each complete full list the store holds exactly what a full list shows, so the gauges equal those of `full`
  mode; in between, status changes of known batches and new batches on the newest pages are seen within one poll.

How often the full list runs adapts to what it finds: `resync_interval_seconds` after the first one, doubled after
each full list that found nothing the polls in between had missed (no batch beyond the newest page that they had not
seen, none deleted), up to RESYNC_STRETCH × `resync_interval_seconds`; back to `resync_interval_seconds` after one
that did. A quiet account (history that only grows at the head) then costs a full list an hour instead of every ten
minutes at the defaults, and a gateway where batches appear on later keys is listed as often as before.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import structlog

from . import holds
from .client import REASONS, BifrostClient, ListResult, PagePlace
from .cost import CostLedger, lookup_allowance, never_settled, settle
from .durable import DurableState, Resumed
from .firstsync import FirstSync, estimate_completion, expected_pages
from .ledger import Ledger
from .models import Batch, normalize_status
from .pollrun import FirstList, Observe, PollOutcome, Run, Summary
from .providers import page_size_for
from .risk import ProgressTracker
from .settings import Settings
from .snapshot import Health, ProviderState, SnapshotBuilder
from .store import Store, is_sparse

UNSUPPORTED_BACKOFF_INTERVALS = 10

# Share of a poll interval's request budget (interval × max_requests_per_second) a poll may spend: the rest is
# headroom for retries and for the other work of the gateway's keys.
BUDGET_SHARE = 0.5
# A full list longer than this many times max_pages is treated as a loop that spans polls.
RESYNC_MAX_PAGES_FACTOR = 100
# The adaptive full-list interval's upper bound, in multiples of resync_interval_seconds (the floor).
RESYNC_STRETCH = 6
# A full list whose continuation cursor was refused this many times in a row (each time restarted from the head)
# is reported as stopped early (coverage reason `cursor_refused`): a proxy that mangles every cursor would
# otherwise leave the last complete list ever older while every health gauge said "complete".
RESYNC_REFUSALS_REPORTED = 3
# A known active batch whose list item carries no counts (Bedrock, Gemini: `store.is_sparse`) and was shown by this
# poll's newest pages in the status it had: its counts are refreshed by retrieve at most every this many polls
# (a status change is retrieved at once).
SPARSE_REFRESH_POLLS = 10
# A page read again by its saved cursor is followed by at most this many more pages, for the batches that arrivals
# pushed down (a key's first page moves; its later pages, anchored at an id, do not): beyond, they are retrieved.
MAX_PAGE_DEPTH = 2
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


SUMMARY_EVERY_SECONDS = 60.0


class Poller:
    def __init__(
        self,
        settings: Settings,
        client: BifrostClient,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_change: Callable[[], None] = lambda: None,
        started_at: float | None = None,
    ) -> None:
        self._settings = settings
        self._client = client
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep  # the schedule's waits (tests run the loop on an injected clock)
        self._on_change = on_change
        self.started_at = clock() if started_at is None else started_at
        self._log = structlog.get_logger("exporter.poller")
        # How long a counter is held (exporter/holds.py; the cost counters' too): one poll interval, at least a
        # minute, so that a scrape sees the held value.
        self._hold_seconds = max(60.0, settings.poll_interval_seconds)
        # The state directory (its lock taken before anything is read from it) and each provider's saved state.
        self.durable = DurableState(settings.state_dir, clock, settings.gateway.identity)
        self.durable.others(settings.providers)
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
        self._costs = self._cost_ledgers()
        # The early warning's recent rates and calibration (the calibration rides in the state: _resume).
        self._trackers = {p: ProgressTracker() for p in settings.providers}
        resumed = {provider: self._resume(provider, ledger) for provider, ledger in self._ledgers.items()}
        # Holds run on the monotonic clock (a host clock stepped back would hide a count for the size of the step,
        # one stepped forward would end a hold before a scrape saw it); they are saved and restored as wall times.
        self._wall_at_start, self._monotonic_at_start = clock(), monotonic()
        self._states: Mapping[str, ProviderState] = MappingProxyType(
            {
                p: ProviderState(
                    p,
                    Health(last_success=led.last_success),
                    None,
                    led.view(),
                    # From the first scrape, so that the first look-ups are an increase from 0.
                    self._costs[p].view() if p in self._costs else None,
                )
                for p, led in self._ledgers.items()
            }
        )
        # What the counters start from: a restored ledger's counts, or none.
        self._runs = {
            p: Run(
                self._new_store(led),
                baseline=self._states[p].ledger,
                cost_baseline=self._states[p].cost,
                saved_view=resumed[p].view,
            )
            for p, led in self._ledgers.items()
        }
        self._states = MappingProxyType(
            {
                p: holds.hold_cost(
                    self._runs[p],
                    holds.held_again(
                        self._runs[p], state, resumed[p].holds, resumed[p].cost_holds, self._held_until
                    ),
                    self._monotonic_at_start,
                    self._hold_seconds,
                )
                for p, state in self._states.items()
            }
        )

    def _held_until(self, saved_until: float) -> float:
        """A saved hold's end (wall time) on this process's monotonic clock, never later than a hold begun at this
        start: a saved end beyond that is a host clock that was ahead when it was written."""
        return self._monotonic_at_start + min(saved_until - self._wall_at_start, self._hold_seconds)

    @staticmethod
    def _new_store(ledger: Ledger) -> Store:
        return Store(
            ledger.admit_status,
            ledger.group_of,
            keep_metadata=bool(ledger.metadata_keys),
            held=ledger.holds_active,
            seen=ledger.mark_seen,
        )

    @property
    def states(self) -> Mapping[str, ProviderState]:
        """The current state of every provider; the mapping itself is replaced, never mutated."""
        return self._states

    def failing_tasks(self) -> list[str]:
        """Providers whose poll task keeps crashing (a bug, not a gateway fault): /healthz reports them."""
        return [p for p, run in self._runs.items() if run.crashes >= UNHEALTHY_AFTER_CRASHES]

    # --- durable state ------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the state directory (a restarted exporter in the same process can take it again)."""
        self.durable.close()

    def _resume(self, provider: str, ledger: Ledger) -> Resumed:
        """The provider's saved state into its ledgers and early-warning tracker (exporter/durable.py)."""
        resumed = self.durable.restore(
            provider, ledger, self._costs.get(provider), lambda: self._durable_extras(provider)
        )
        self._restore_tracker(provider, resumed.tracker)
        return resumed

    def _durable_extras(self, provider: str, run: Run | None = None) -> dict[str, Any]:
        """Small state kept beside the ledger's head: the early warning's calibration, learned from every batch
        seen finish (weeks of evidence a restart must not throw away); and the counter keys a render shows below
        their count (held), at what it shows and until when: a restart within a hold, on a new pod, must not bring
        the series back born with the count, which increase() and every failure alert would never see. A release
        that does not know the field ignores it (the ledger reads its own fields by name). The cost counters' holds
        likewise (`cost_shown`, the same rows with the figure first: the value shown, until when)."""
        extras: dict[str, Any] = {"tracker": self._trackers[provider].to_state()}
        if run is not None:
            extras |= holds.saved_holds(run, self._clock() - self._monotonic(), cost=provider in self._costs)
            if run.keys:
                extras["view"] = self._saved_view(run)
        elif self._client.key_names():
            # A first start's record names the view it starts with (each key counting from this start, as the
            # first poll's _view has it): a process killed before its first poll is saved must not leave the next
            # one a state without a view, which takes no key for new and counts an added tenant's past.
            extras["view"] = {name: [fp, 0.0] for name, fp in self._client.key_fingerprints().items()}
        return extras

    def _restore_tracker(self, provider: str, state: Any) -> None:
        if state is None:
            return
        try:
            self._trackers[provider].load_state(state)
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            self._trackers[provider] = ProgressTracker()
            self._log.warning(
                "calibration_state_unusable",
                provider=provider,
                detail=str(exc)[:200],
                consequence="the early warning's calibration is learned afresh",
            )

    # --- cost_metrics (exporter/cost.py) ------------------------------------------------------------------------

    def _cost_ledgers(self) -> dict[str, CostLedger]:
        """One cost ledger per provider the gateway settles, told of each finished batch by the batch ledger."""
        s = self._settings
        if not s.cost_metrics:
            return {}
        never = never_settled(s.providers)
        if never:
            self._log.info(
                "cost_not_settled",
                providers=never,
                detail="the gateway's batch accounting never settles these providers' batches (no usage "
                "extractor): no cost metrics for them",
            )
        costs = {}
        for provider in s.providers:
            if provider in never:
                continue
            costs[provider] = CostLedger(
                provider,
                clock=self._clock,
                monotonic=self._monotonic,
                horizon_seconds=s.cost_horizon_seconds,
                metadata_keys=s.metadata_labels,
                hold_seconds=self._hold_seconds,
            )
            self._ledgers[provider].finish_hook = costs[provider].finished
        return costs

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
                await self._sleep(delay)
                next_start = self._monotonic()
                continue
            run.crashes = 0
            next_start += interval * (1 if state.health.supported else UNSUPPORTED_BACKOFF_INTERVALS)
            now = self._monotonic()
            if next_start < now:
                next_start = now  # a poll overran its interval: start again at once, never in a burst
            await self._sleep(next_start - now)

    # --- one poll -----------------------------------------------------------------------------------------------

    async def poll(self, provider: str) -> ProviderState:
        """One poll of one provider. Gateway faults are folded into the state; only a bug raises."""
        ledger = self._ledgers[provider]
        run = self._runs[provider]
        ledger.poll_started()
        run.polls += 1
        t0 = self._monotonic()
        started = self._clock()
        if not run.synced and run.first.started_at is None:
            run.first.started_at = started
        builder: SnapshotBuilder | None = None
        if self._settings.poll_mode == "full":
            outcome, builder = await self._poll_full(provider, ledger, run, started)
        else:
            outcome = await self._poll_incremental(provider, ledger, run, started)
        ledger.requests_sent("list", outcome.list_requests)
        ledger.requests_sent("retrieve", outcome.retrieve_requests)
        cost = self._costs.get(provider)
        if cost is not None:
            spent = outcome.list_requests + outcome.retrieve_requests
            await settle(cost, self._client, lookup_allowance(self._budget(False), spent))
        duration = self._monotonic() - t0
        now = self._clock()
        state = self._fold(provider, ledger, run, builder, outcome, now, duration, started)
        if cost is not None:
            state = replace(state, cost=cost.view())
        # Held first: what a render will show is saved with the counts, so a restart within a hold shows it too.
        state = self._hold_new_counters(provider, state)
        await self.durable.save(
            provider, ledger, now, lambda: self._durable_extras(provider, run), self._costs.get(provider)
        )
        self._publish(provider, state)
        self._summarize(provider, run, state, outcome)
        return state

    def _summarize(self, provider: str, run: Run, state: ProviderState, outcome: PollOutcome) -> None:
        """One info line per provider at most once a minute (the first poll's at once): every poll's own line
        is at debug, since 23 providers polled every 30 s would otherwise write 46 lines a minute. Until the first
        full list is complete the line says how far it has come (the same figures as the first_sync gauges)."""
        summary = run.summary
        summary.polls += 1
        summary.failed += outcome.failure is not None
        summary.list_requests += outcome.list_requests
        summary.retrieve_requests += outcome.retrieve_requests
        summary.retries += outcome.retries
        now = self._monotonic()
        if summary.logged_at is not None and now - summary.logged_at < SUMMARY_EVERY_SECONDS:
            return
        snapshot = state.snapshot
        first = state.health.first_sync
        figures: dict[str, Any] = {}
        if not first.complete:
            wall = self._clock()
            pace = first.pace(wall)
            eta = first.estimated_completion
            figures = {
                "first_sync_batches": first.batches,
                "first_sync_pages": first.pages,
                "first_sync_pages_per_second": round(pace, 2) if pace is not None else None,
                "first_sync_estimated_completion": _iso(eta) if eta is not None else "unknown",
            }
        elif self._settings.poll_mode == "incremental" and run.resync_interval:
            figures = {
                "full_list_interval_seconds": round(run.resync_interval),
                "next_full_list": _iso(run.next_resync),
            }
        self._log.info(
            "polls_summary",
            provider=provider,
            polls=summary.polls,
            failed=summary.failed,
            up=state.health.up,
            batches=snapshot.batches if snapshot is not None else None,
            list_requests=summary.list_requests,
            retrieve_requests=summary.retrieve_requests,
            retries=summary.retries,
            full_list="complete"
            if run.synced and run.resync_truncated is None
            else (run.resync_truncated or "first one running"),
            **figures,
        )
        run.summary = Summary(logged_at=now)

    def _observe(self, ledger: Ledger, started: float, run: Run) -> Observe:
        def observe(batches: list[Batch], k: int | None = None) -> int:
            floors = run.key_floors
            floor = floors.get(run.keys[k] or "", 0.0) if k is not None and floors else 0.0
            return ledger.observe_page(batches, started, floor)

        return observe

    def _key_floors(self, run: Run, keys: tuple[str | None, ...]) -> dict[str, float]:
        """From when each key's batches count when first seen (Run.key_floors), as an exporter started with the key
        would count them, but never later than the view before could: the same key (its file name, also holding a
        rotated key, or its fingerprint under another file name) keeps its floor; after a view of the whole account (no key), every
        key does (that view saw all they see); a view of the whole account after keys counts as the keys did. Only
        a key no view before had counts from now (SIGHUP) or this start (added while the exporter was down). Before
        the first poll the view before is the saved one; without one (a first start, a state of an earlier
        release) nothing is known new."""
        if run.keys:
            before = {name: (fp, floor) for name, (fp, floor) in self._saved_view(run).items()}
            added_at = self._clock()
        else:
            saved = _saved_floors(run.saved_view)
            if saved is None:
                return {(k or ""): 0.0 for k in keys}
            before = {name: (fp, min(floor, self.started_at)) for name, (fp, floor) in saved.items()}
            added_at = self.started_at
        floors: dict[str, float] = {}
        for key in keys:
            name = key or ""
            # The same key, or the tenant's file given a new key (rotated: a new key has no past of its own).
            if name in before:
                floors[name] = before[name][1]
            elif key and (
                moved := [floor for fp, floor in before.values() if self._client.key_matches(key, fp)]
            ):
                floors[name] = min(moved)
            elif "" in before:
                floors[name] = before[""][1]
            elif not name:
                floors[name] = min((floor for _, floor in before.values()), default=added_at)
            else:
                floors[name] = added_at
        return floors

    def _saved_view(self, run: Run) -> dict[str, list[Any]]:
        return {
            (k or ""): [run.key_prints.get(k or "", ""), run.key_floors.get(k or "", 0.0)] for k in run.keys
        }

    def _view(self, provider: str, run: Run) -> tuple[str | None, ...]:
        """The keys this poll lists with, in order: the configured virtual keys by name, or (None,) for none.

        When the view changes (keys added, removed or given another value on SIGHUP) it is logged, and a full list
        under way starts again: its pages so far were read with another set of keys. A tenant's file that now holds
        another key is another view too, though its name stayed: the old key's batches go with the new first list,
        not one by one as retrieves with the new key answer 404. The keys that stay (the same name holding the same
        key) keep what their lists showed (Store.move_places): a running batch that only retrieves reach (below
        where a list stops) is still retrieved with the key that can see it, never with a newly first one that
        governance answers 404.
        """
        names = self._client.key_names()
        version = self._client.view_version()
        generations = self._client.key_generations()
        configured: tuple[str | None, ...] = names if names else (None,)
        if set(configured) != set(run.keys) or version != run.view_version:
            prints = self._client.key_fingerprints()
            floors = self._key_floors(run, configured)
            # The keys the view had before list first (a stable sort: otherwise in the configured order), so a batch
            # every key sees (an unowned one) is first seen through a key that counts it as the view before would.
            keys = tuple(sorted(configured, key=lambda k: floors[k or ""]))
            kept = _kept_keys(run.keys, run.key_generations, keys, generations)
            run.key_floors, run.key_prints, run.saved_view = floors, prints, None
            if run.keys:
                self._ledgers[provider].view_changed()
                run.store.abandon_resync()
                run.store.move_places(kept)
                run.blocked.clear()
                run.synced = False
                # The new view's first list starts with this poll (its start time: the pace and the estimate).
                run.first = FirstList(started_at=self._clock())
                run.resync_found = 0
            run.keys, run.view_version, run.key_generations = keys, version, generations
            run.not_allowed.intersection_update(names)
            self._log_view(provider, names)
        return run.keys

    def _not_allowed(self, provider: str, run: Run, key: str | None, result: ListResult) -> bool:
        """Whether `key`'s list was refused because governance does not allow that key on this provider; then the
        refusal is taken out of the result's failure unless no key of the view is allowed (nothing is visible).

        Scoping each tenant's key to the providers it uses is ordinary governance, and the gateway refuses such a
        key every request on the others (lists included): that key's view of the provider is empty, not a failed
        poll, and the other keys' union is the whole view. Logged when it starts and when it ends.
        """
        if key is None:
            return False
        if not result.key_not_allowed:
            if key in run.not_allowed and result.failure is None:
                run.not_allowed.discard(key)
                self._log.info(
                    "view_key_allowed",
                    provider=provider,
                    key_name=key,
                    detail="the gateway allows this virtual key on the provider again: its batches are listed",
                )
            return False
        if key not in run.not_allowed:
            run.not_allowed.add(key)
            self._log.warning(
                "view_key_not_allowed",
                provider=provider,
                key_name=key,
                detail=result.failure.detail if result.failure is not None else None,
                consequence="the gateway does not allow this virtual key on the provider: its batches there, if "
                "any, are not visible; the other keys' view is listed, and every full list asks this key again",
            )
        if all(k in run.not_allowed for k in run.keys):
            return False  # no key may list the provider: a failed poll (reason auth), as with one refused key
        result.failure = None
        return True

    def _view_keys(self, run: Run) -> int:
        """The keys the provider is listed with: the configured ones less those the gateway does not allow; all of
        them when it allows none (they are still sent, and refused: a failed poll, never 0, which reads as the
        whole account)."""
        names = self._client.key_names()
        allowed = len(names) - len(run.not_allowed.intersection(names))
        return allowed or len(names)

    def _log_view(self, provider: str, names: tuple[str, ...]) -> None:
        if not names:
            detail = (
                "no virtual key is sent: the gateway shows the whole account, unless it requires a virtual key "
                "(then every poll fails with reason auth)"
            )
        elif len(names) == 1:
            detail = (
                f"one virtual key ({names[0]}): only the batches that key created, and those without an owner, "
                "are visible; give virtual_key_dir one key per tenant to see the whole account"
            )
        else:
            detail = f"{len(names)} virtual keys: the union of their views, each batch counted once"
        self._log.info("view", provider=provider, keys=len(names), key_names=list(names), detail=detail)

    def _builder(self, provider: str, ledger: Ledger, now: float) -> SnapshotBuilder:
        s = self._settings
        return SnapshotBuilder(
            provider,
            label_for=ledger.admit_status,
            group_for=ledger.group_of if ledger.metadata_keys else None,
            per_batch=s.per_batch_metrics,
            per_batch_limit=s.per_batch_limit,
            # Judged on the host's clock bounded by the gateway's: a step ahead is not time passed (risk.py: clock).
            now=self._trackers[provider].clock(
                now, self._monotonic(), ledger.gateway_now, self._client.gateway_time(provider)
            ),
            no_progress_fraction=s.risk_no_progress_fraction,
            tracker=self._trackers[provider],
            # The calibration is taught only by the ends the ledger saw (risk.py: finish_poll).
            ended=ledger.take_ended,
        )

    async def _poll_full(
        self, provider: str, ledger: Ledger, run: Run, started: float
    ) -> tuple[PollOutcome, SnapshotBuilder | None]:
        """Every batch of every key, folded straight into the snapshot as pages arrive: a full list holds all
        there is, so nothing is kept between polls (no store) and each batch is counted once across keys."""
        builder = self._builder(provider, ledger, started)
        observe = self._observe(ledger, started, run)
        outcome = PollOutcome()
        truncated: ListResult | None = None
        seen: set[int] = set()
        ledger.list_began()

        listing = [0]  # the view's key whose list is folding

        def fold_page(batches: list[Batch]) -> None:
            # The ledger counts transitions as pages arrive (real even if a later page fails); the builder is
            # discarded if a later page fails, so the last good snapshot stays.
            observe(batches, listing[0])
            builder.add(batches)

        for listing[0], key in enumerate(self._view(provider, run)):
            result = await self._client.list_batches(provider, fold_page, key=key, seen=seen)
            self._not_allowed(provider, run, key, result)
            self._take_list(outcome, result, ledger)
            if result.failure is not None or result.unsupported:
                return outcome, None
            truncated = truncated or (result if result.truncated is not None else None)
        reason = truncated.truncated if truncated is not None else None
        ledger.finish_poll(started, complete=reason is None, whole_view=not run.not_allowed)
        if reason is None:
            ledger.resynced(self._clock())
        outcome.resync_done = True
        if not run.synced:
            run.first.pages = outcome.pages
            self._first_list_done(provider, run, outcome.batches)
        run.synced = True
        run.resync_truncated = reason
        return outcome, builder

    def _budget(self, first_sync: bool) -> int:
        """Requests one poll may send, lists and retrieves together.

        While the first full list runs nothing else competes for the gateway (no head scan, no retrieves), so it
        takes the whole rate: a large account is pictured in about pages ÷ rate. Afterwards a poll spends half an
        interval's worth, the rest being headroom for retries and the gateway's other work.
        """
        s = self._settings
        share = 1.0 if first_sync else BUDGET_SHARE
        return max(1, math.floor(s.poll_interval_seconds * s.max_requests_per_second * share))

    async def _poll_incremental(self, provider: str, ledger: Ledger, run: Run, started: float) -> PollOutcome:
        store = run.store
        keys = self._view(provider, run)
        outcome = PollOutcome()
        first_sync = not run.synced
        budget = self._budget(first_sync)
        observe = self._observe(ledger, started, run)
        refreshed: set[str] = set()

        def spent() -> int:
            return outcome.list_requests + outcome.retrieve_requests

        # A host clock stepped back would otherwise postpone the next full list by the size of the step, and a
        # batch only a full list can find (a later key) could then age past the ledger's retention unseen.
        stepped_back = started < run.last_start
        run.last_start = started
        resync_due = store.resync is not None or first_sync or started >= run.next_resync or stepped_back
        starting_from_head = resync_due and (
            store.resync is None or (store.resync.key == 0 and store.resync.cursor is None)
        )
        if first_sync and run.first.pages == 0:
            # A changed view's first list: each key walks every page of the account, which the last complete full
            # list measured (the store only knows the old view's batches: fewer pages than each walk has).
            run.first.expected_pages = (
                run.walk_pages * len(keys)
                if run.walk_pages
                else expected_pages(len(store), page_size_for(provider, self._settings.page_size), len(keys))
            )

        # 1. Each key's newest pages, until one shows a batch known before this poll (lists are newest first:
        #    nothing newer lies beyond it) or nothing at all (skipped while the first full list runs, and, with one
        #    key, when this poll's full list starts at its head anyway). A batch another key's scan found
        #    first this poll (unowned: every key sees it) is no such proof.
        heads: dict[int, tuple[str, int, int]] = {}  # key → (cursor after its head pages, pages, items read)
        if not first_sync:
            scans = _HeadScans(self, provider, ledger, run, keys, outcome, refreshed, budget, observe)
            # With several keys the first one's head is scanned even then: a burst it finds is what sends the
            # others' scans, stopped at pages governance narrowed to nothing, down to their own new batches.
            if not await scans.run(skip_first=starting_from_head and len(keys) == 1):
                return outcome
            heads = scans.heads

        # 2. The full list, key after key, continued: the whole budget while the first one runs (nothing else
        #    competes); afterwards half of what is left while known active batches still wait for this poll's
        #    refresh, so neither starves the other (a due list crawling at one page a poll left batches on later
        #    keys uncounted for hours). It runs before the refresh, so what its pages show is not retrieved again.
        if resync_due:
            left = budget - spent()
            waiting = not first_sync and any(i not in refreshed for i in store.active)
            share = max(1, left // 2) if waiting else max(1, left)
            await self._continue_resync(
                provider, ledger, run, keys, refreshed, outcome, spent() + share, started
            )
            if outcome.failure is not None or outcome.unsupported:
                return outcome

        # 3. Known active batches no list showed this poll: read again the pages that hold two or more of them (by
        #    the cursors they were listed with), list on down to the rest where that costs fewer requests than one
        #    retrieve each (by their places in the lists), then retrieve what is left, least recently seen first,
        #    within the budget. After a first full list completes, what it listed this poll or the last is
        #    not retrieved again (no retrieve ran while it did; older pages may have changed since).
        if not first_sync or outcome.resync_done:
            await self._refresh_known(
                provider, ledger, run, keys, heads, refreshed, outcome, budget, started, recent_ok=first_sync
            )
        # The ledger forgets a running id no poll showed for ACTIVE_FORGET_POLLS polls. One the store still holds
        # running (reached by retrieves alone, which fail or wait for the budget) is still watched, and so is, until
        # this process's first full list is done, one restored from the state directory that the list has not
        # reached yet: its end must count when it comes, also without an end time (Gemini).
        ledger.mark_seen(store.active if run.synced else ledger.active_ids())
        ledger.finish_poll(started, complete=False)
        return outcome

    @staticmethod
    def _take_page(
        store: Store,
        batches: list[Batch],
        k: int,
        after: str | None,
        walked: list[int] | None,
        observe: Observe,
        refreshed: set[str],
        shown: set[str],
        poll: int,
        depth: int = 0,
    ) -> int:
        """A page of `k`'s list (`depth` pages after the one cursor `after` reads) that a head scan, a walk down to
        known batches or a page read again read, outside the full list: folded and seen this poll, and its running
        batches placed (`walked`: items of the walk before it; None: a page read by its cursor alone, whose place
        from the top is not known). Returns how many batches were new."""
        listed = batches
        # Only known running ones can wait for a refresh (a first full list would otherwise hold every id it lists).
        shown.update(b.id for b in listed if b.id in store.active)
        batches = store.defer_sparse(batches, k)
        observe(batches, k)
        refreshed.update(b.id for b in batches)
        new = store.upsert(batches, listing=False, key=k, poll=poll, after=after, depth=depth)
        if walked is not None:
            walked[0] = store.place(listed, k, walked[0])
        return new

    @staticmethod
    def _counts_still_fresh(store: Store, batches: list[Batch], poll: int, refreshed: set[str]) -> None:
        """Known active batches whose list items carry no counts (Bedrock, Gemini) and show the status the store
        holds, with counts a retrieve brought less than SPARSE_REFRESH_POLLS polls ago: seen, not retrieved again
        this poll. A changed status, or counts the store never had, is retrieved as before."""
        for batch in batches:
            if not is_sparse(batch):
                continue
            held = store.active.get(batch.id)
            if (
                held is not None
                and not is_sparse(held)
                and normalize_status(held.status) == normalize_status(batch.status)
                and poll - store.checked_poll.get(batch.id, -SPARSE_REFRESH_POLLS) < SPARSE_REFRESH_POLLS
            ):
                refreshed.add(batch.id)

    async def _refresh_known(
        self,
        provider: str,
        ledger: Ledger,
        run: Run,
        keys: tuple[str | None, ...],
        heads: dict[int, tuple[str, int, int]],
        refreshed: set[str],
        outcome: PollOutcome,
        budget: int,
        started: float,
        *,
        recent_ok: bool = False,
    ) -> None:
        store = run.store
        poll = run.polls
        observe = self._observe(ledger, started, run)

        def spent() -> int:
            return outcome.list_requests + outcome.retrieve_requests

        # The refresh gets one request a poll even when the lists took the whole budget (a budget of one, a view
        # with more keys than the budget, each scanning its head page, or a burst of new batches): else a running
        # batch below the head pages waited for the next full list, an hour at the defaults, with its end
        # uncounted. A poll then goes beyond its budget by that one request (and a due full list's own minimum of
        # one), which pacing keeps within the rate: the poll takes longer, the gateway sees no more per second.
        allowance = max(budget, spent() + 1)

        # Everything this poll did not see (`recent_ok`: nor the poll before). Skipping what a later full list's
        # previous chunk showed would otherwise hide a change made since for one more poll, and the store would
        # then not equal a full list's picture when that list completes.
        def stale() -> list[str]:
            if recent_ok:
                return [
                    i for i in store.active if i not in refreshed and store.checked_poll.get(i, -1) < poll - 1
                ]
            return [i for i in store.active if i not in refreshed]

        def unshown() -> list[str]:
            # Those no list showed: the ones a list showed and did not refresh are left to a retrieve.
            return [i for i in stale() if i not in outcome.shown]

        size = page_size_for(provider, self._settings.page_size)
        for k, (cursor, head_pages, head_items) in sorted(heads.items()):
            if size is None:
                break
            remaining = [i for i in unshown() if store.listed_by(i) == k]
            groups = self._pages_again(run, keys, remaining).values()
            grouped = {i for _, ids in groups for i in ids}
            singles = [i for i in remaining if i not in grouped]
            # Down to all of them where that costs fewer requests than reading their saved pages again and
            # retrieving the rest; otherwise down to those without a saved page, where that costs fewer than a
            # retrieve each (a provider's later Bifrost keys lie behind the earlier keys' whole history, so the
            # deepest decides). Either only where the walk fits what is left of the budget: lists and retrieves
            # share it.
            more_pages = self._pages_down(store, k, remaining, size, head_pages, head_items)
            if not 0 < more_pages < sum(n for n, _ in groups) + len(singles):
                remaining = singles
                more_pages = self._pages_down(store, k, remaining, size, head_pages, head_items)
                if not 0 < more_pages < len(remaining):
                    continue
            if more_pages + 1 > budget - spent():
                continue
            wanted = set(remaining)
            walked = [head_items]
            deeper_place = PagePlace()

            def deeper_page(
                batches: list[Batch],
                k: int = k,
                wanted: set[str] = wanted,
                walked: list[int] = walked,
                place: PagePlace = deeper_place,
            ) -> bool:
                # Summary items (Bedrock, Gemini) refreshed by a retrieve lately need no other one, as on the head
                # pages: else every running batch below them is retrieved every poll, up to the whole budget.
                self._counts_still_fresh(store, batches, poll, refreshed)
                # New below the head pages: what the head scans missed, as a full list's find (the interval).
                run.resync_found += self._take_page(
                    store, batches, k, place.after, walked, observe, refreshed, outcome.shown, poll
                )
                wanted.difference_update(refreshed)
                return bool(wanted)

            result = await self._client.list_batches(
                provider, deeper_page, after=cursor, max_pages=more_pages + 1, budget_truncates=False,
                key=keys[k], place=deeper_place,
            )  # fmt: skip
            # A refused cursor here leaves the rest to the retrieves below.
            self._refused(provider, run, ledger, result, "deeper")
            self._not_allowed(provider, run, keys[k], result)
            self._take_list(outcome, result, ledger, head=True)
            if outcome.failure is not None or outcome.unsupported:
                return
        # What is left, in one queue, least recently seen first, within the budget, so a provider with more
        # active batches than one poll can refresh cycles through all of them: the saved pages worth reading again
        # (ranked by their least recently seen batch; before a retrieve of the same rank, being cheaper) and a
        # retrieve for each batch on none of them.
        pages = self._pages_again(run, keys, unshown())
        grouped = {i for _, ids in pages.values() for i in ids}
        queue: list[tuple[int, int, str, tuple[int, str] | None]] = [
            (min(store.checked_poll.get(i, -1) for i in ids), 0, "", page) for page, (_, ids) in pages.items()
        ]
        queue += [(store.checked_poll.get(i, -1), 1, i, None) for i in stale() if i not in grouped]
        queue.sort(key=lambda item: item[:3])
        allowed = [k for k, key in enumerate(keys) if key not in run.not_allowed] or list(range(len(keys)))

        def key_of(batch_id: str) -> tuple[int, bool]:
            # A key that can see the batch (True): the one whose list showed it, else whose retrieve answered with
            # it. Without one the gateway allows, the allowed keys in turn (False), as governance answers each that
            # the batch is another key's (run.blocked).
            for k in store.retrieve_keys(batch_id):
                if k is not None and k < len(keys) and keys[k] not in run.not_allowed:
                    return k, True
            return allowed[run.blocked.get(batch_id, 0) % len(allowed)], False

        run.read_again = set()
        for rank, _, batch_id, page in queue:
            if spent() >= allowance:
                break
            if page is not None:
                deepest, ids = pages[page]
                wanted = {i for i in ids if i not in refreshed}  # a page read before may have shown them
                if len(wanted) >= 2:
                    await self._read_again(provider, ledger, run, keys, page, deepest, wanted, refreshed, outcome,
                                           allowance, started)  # fmt: skip
                    if outcome.failure is not None or outcome.unsupported:
                        return
                    # What the page no longer shows (deleted, moved further) is retrieved, this poll if it can.
                    queue += [(rank, 1, i, None) for i in sorted(wanted) if i not in refreshed]
                    continue
                if not wanted:
                    continue
                batch_id = wanted.pop()  # alone now: a retrieve costs what its page would
            if batch_id in refreshed:
                continue
            k, seeing = key_of(batch_id)
            got = await self._client.retrieve(provider, batch_id, key=keys[k])
            outcome.retrieve_requests += got.requests
            outcome.retries += max(0, got.requests - 1)
            if got.batch is not None or got.gone:
                outcome.retrieves_answered += 1
            if got.batch is not None:
                observe([got.batch])
                store.refresh(got.batch, poll=poll)
                refreshed.add(batch_id)
                run.blocked.pop(batch_id, None)
                if not seeing:
                    store.answered(batch_id, k)
                if got.latency_seconds is not None:
                    ledger.pages_fetched(0, [got.latency_seconds], ())
            elif got.gone and not seeing and _another_keys_batch(run, batch_id, got.refusal, len(allowed)):
                queue.append((rank, 1, batch_id, None))  # the next key, this poll if the budget allows
            elif got.gone and run.missing.setdefault(batch_id, poll) < poll:
                del run.missing[batch_id]
                store.remove(batch_id)
                # A counted id stays until its retention ends (a flip-flopped batch answered 404 must not count
                # again when it shows once more).
                if not ledger.is_settled(batch_id):
                    ledger.forget([batch_id])
                outcome.gone += 1
            elif got.failure is not None:
                outcome.retrieve_failures += 1
                outcome.first_retrieve_failure = outcome.first_retrieve_failure or got.failure
        outcome.refresh_deferred = len(stale())
        # A 404 followed by an answer (a list or a retrieve showed it) starts over; one no longer known is done.
        run.missing = {i: p for i, p in run.missing.items() if i in store.active and i not in refreshed}
        run.blocked = {i: n for i, n in run.blocked.items() if i in store.active}

    @staticmethod
    def _pages_down(
        store: Store, k: int, batch_ids: list[str], size: int, head_pages: int, head_items: int
    ) -> int:
        """Pages to list below `k`'s head pages to reach every one of `batch_ids` a list placed (0: none placed).
        One placed within the head pages this poll read, which did not show it, was pushed below them by batches
        that arrived since: its place is at least one further down."""
        depth = store.list_depth(batch_ids).get(k)
        if depth is None:
            return 0
        return -(-max(depth, head_items + 1) // size) - head_pages

    @staticmethod
    def _pages_again(
        run: Run, keys: tuple[str | None, ...], batch_ids: Iterable[str]
    ) -> dict[tuple[int, str], tuple[int, list[str]]]:
        """The saved pages (key, cursor) worth reading again for `batch_ids`, each with how many pages from it hold
        them and those it holds: where that is fewer requests than a retrieve each."""
        pages: dict[tuple[int, str], tuple[int, list[str]]] = {}
        for batch_id in batch_ids:
            page = run.store.listed_on.get(batch_id)
            if page is None:
                continue
            k, cursor, depth = page
            if cursor is None or k >= len(keys) or keys[k] in run.not_allowed:
                continue
            deepest, ids = pages.get((k, cursor), (0, []))
            ids.append(batch_id)
            pages[(k, cursor)] = (max(deepest, depth + 1), ids)
        return {page: (n, ids) for page, (n, ids) in pages.items() if n < len(ids)}

    async def _read_again(
        self,
        provider: str,
        ledger: Ledger,
        run: Run,
        keys: tuple[str | None, ...],
        page: tuple[int, str],
        deepest: int,
        wanted: set[str],
        refreshed: set[str],
        outcome: PollOutcome,
        budget: int,
        started: float,
    ) -> None:
        """A saved page that holds two or more of the running batches still to refresh, read again by the cursor
        they were listed with: one request instead of a retrieve per batch.

        A walk down from the top cannot reach them cheaply when they sit on a provider's later Bifrost keys (the
        gateway walks a provider's keys one after the other, so the earlier keys' whole history lies above them).
        A key's first page moves as batches arrive on it, pushing its oldest items onto the next page: when the page
        misses some of its batches, the pages after it are read too (at most MAX_PAGE_DEPTH), and what they show is
        placed there. A batch none shows, or whose cursor the gateway refuses, loses its saved page and is
        retrieved (this poll if the budget allows); the next full list places it again. Batches new on such a page
        are found by the poll, not missed by it: the next full list finding them first does not shorten its
        interval (`run.read_again`).
        """
        store = run.store
        poll = run.polls
        observe = self._observe(ledger, started, run)
        k, cursor = page
        shown: set[str] = set()
        depth = [0]

        def read_again(batches: list[Batch]) -> bool:
            shown.update(b.id for b in batches)
            self._counts_still_fresh(store, batches, poll, refreshed)
            self._take_page(
                store, batches, k, cursor, None, observe, refreshed, outcome.shown, poll, depth[0]
            )
            depth[0] += 1
            return not wanted <= shown and depth[0] <= MAX_PAGE_DEPTH

        left = budget - (outcome.list_requests + outcome.retrieve_requests)
        result = await self._client.list_batches(
            provider, read_again, after=cursor, max_pages=max(1, min(deepest + 1, MAX_PAGE_DEPTH + 1, left)),
            budget_truncates=False, key=keys[k],
        )  # fmt: skip
        run.read_again.add(page)
        self._refused(provider, run, ledger, result, "page_again")
        self._not_allowed(provider, run, keys[k], result)
        self._take_list(outcome, result, ledger, head=True)
        # Not shown, or shown as a summary item that cannot refresh it (Bedrock, Gemini): its page is no way to it.
        for batch_id in wanted - refreshed:
            if store.listed_on.get(batch_id, (0, None, 0))[:2] == page:
                store.lose_page(batch_id)

    async def _continue_resync(
        self,
        provider: str,
        ledger: Ledger,
        run: Run,
        keys: tuple[str | None, ...],
        refreshed: set[str],
        outcome: PollOutcome,
        budget: int,
        started: float,
    ) -> None:
        store = run.store
        poll = run.polls
        observe = self._observe(ledger, started, run)
        resync = store.resync
        if resync is None:
            resync = store.start_resync(started)
            ledger.list_began()
        at_head = [resync.cursor is None]  # the next page is the first of a key's walk (the head scan's page)
        place = PagePlace()
        # Pages the last poll read again (those of running batches no list showed): what is new on them the polls
        # find, so the list finding it first is no sign that polls miss batches.
        watched = run.read_again

        def resync_page(batches: list[Batch]) -> None:
            # Only the known running ones (those can wait for a refresh): a first full list's poll would otherwise
            # hold every id it listed until it ends.
            outcome.shown.update(b.id for b in batches if b.id in store.active)
            self._counts_still_fresh(store, batches, poll, refreshed)
            batches = store.defer_sparse(batches, resync.key)
            observe(batches, resync.key)
            new = store.upsert(batches, key=resync.key, poll=poll, after=place.after)
            if not at_head[0] and (resync.key, place.after) not in watched:
                run.resync_found += new  # new beyond the newest page: the head scans could not have seen them
            at_head[0] = False
            # Only the active ones: a finished batch this list shows is marked seen by it already, and a first
            # full list's poll would otherwise hold every id it listed (30,000 strings) until it ends.
            refreshed.update(b.id for b in batches if b.id in store.active)

        while True:
            pages = max(1, budget - (outcome.list_requests + outcome.retrieve_requests))
            at_head[0] = resync.cursor is None
            result = await self._client.list_batches(
                provider, resync_page, after=resync.cursor, max_pages=pages, budget_truncates=False,
                key=keys[resync.key], place=place,
            )  # fmt: skip
            if not run.synced:
                run.first.pages += result.pages
            if self._refused(provider, run, ledger, result, "resync"):
                # Sending that cursor again would fail the same way for ever: this key's walk starts again from
                # its head, now, with what is left of the budget (its places so far are not trusted).
                self._take_list(outcome, result, ledger)
                resync.cursor, resync.listed = None, 0
                run.resync_refusals += 1
                if run.resync_refusals >= RESYNC_REFUSALS_REPORTED:
                    run.resync_truncated = "cursor_refused"
                continue
            self._not_allowed(provider, run, keys[resync.key], result)  # then this key's walk is done
            self._take_list(outcome, result, ledger, head=True)
            resync.pages += result.pages
            if outcome.failure is not None or outcome.unsupported:
                # The full list resumes next poll from the page that failed, not from where this poll began: the
                # pages read before it are folded already (sending them again spent a poll's requests twice, and
                # counted its pages twice in the first list's progress).
                if result.failure is not None and result.next_cursor is not None:
                    resync.cursor = result.next_cursor
                return
            too_long = resync.pages >= RESYNC_MAX_PAGES_FACTOR * self._settings.max_pages
            if result.stopped == "budget" and not too_long:
                resync.cursor = result.next_cursor
                return
            if too_long and result.truncated is None:
                resync.truncated = "max_pages"
                resync.truncated_detail = f"a full list's walk passed {resync.pages} pages; stopped as a loop"
            elif result.truncated is not None:
                resync.truncated = result.truncated
                resync.truncated_detail = result.truncated_detail
            if resync.key + 1 < len(keys) and not too_long:
                # This key is done: the next one's walk starts at its head, in this poll if budget is left. The
                # loop guard is per walk: each tenant key of a governance view walks every page of the account.
                resync.longest = max(resync.longest, resync.pages)
                resync.key, resync.cursor, resync.listed, resync.pages = resync.key + 1, None, 0, 0
                if outcome.list_requests + outcome.retrieve_requests >= budget:
                    return
                continue
            break
        truncated = resync.truncated
        if truncated is not None:
            outcome.truncated = truncated
            outcome.truncated_detail = resync.truncated_detail
        # A list cannot prove a running batch gone (one that ends early still says it is complete): those a
        # retrieve or a list answered this poll or the last are kept, and the refresh that follows retrieves them
        # (a 404 there is gone). Only one unseen for longer goes with a complete list; a list known to have
        # stopped early (a cursor the gateway ignores, a loop) takes none away: its unseen running batches are
        # still retrieved, least recently seen first, until a 404 says they are gone.
        if truncated is not None:
            keep: Iterable[str] = list(store.active)
        else:
            keep = refreshed.union(i for i in store.active if store.checked_poll.get(i, -1) >= poll - 1)
        gone = store.finish_resync(keep=keep)
        # Counted ids stay until their retention ends: a batch back in a later list is not counted again.
        ledger.forget(i for i in gone if not ledger.is_settled(i))
        outcome.gone += len(gone)
        outcome.resync_done = True
        # What the polls in between missed: new batches beyond the newest page, running batches gone. Finished
        # batches that left the list (a provider's retention dropping the oldest as new ones come) are not: they
        # would hold every full list at the floor, 5 % of a full list per interval for the full lists alone; they
        # leave the gauges within the stretched interval (README, "Guarantees").
        outcome.resync_found = run.resync_found + len(gone.active)
        run.resync_found = 0
        if not run.synced:
            self._first_list_done(provider, run, len(store))
            self._await_unlisted(provider, ledger, store)
        run.synced = True
        run.resync_truncated = truncated
        run.resync_interval = self._next_interval(run.resync_interval, outcome.resync_found, truncated)
        run.next_resync = started + run.resync_interval
        if truncated is None:
            run.walk_pages = max(resync.longest, resync.pages)
            ledger.resynced(self._clock())
            # The restart watermark: as of the start of this full list every batch has been seen (a head-only
            # poll sees only the newest pages, so it never moves the watermark); not while a key of the view is
            # refused on the provider (Ledger.finish_poll).
            if not run.not_allowed:
                ledger.list_completed(resync.started_at)
            run.cursor_refusals = run.resync_refusals = 0

    def _await_unlisted(self, provider: str, ledger: Ledger, store: Store) -> None:
        """After the first full list (of this process, or of a changed view): the running ids the ledger holds
        (restored from the state directory) that the list did not show are retrieved like the known running
        batches, least recently seen first. A list that stops early (a provider whose cursor the gateway ignores,
        `max_pages`) does not reach a running batch known before the restart by retrieves alone: nothing else
        would ask for it, and its end would go uncounted."""
        added = store.await_retrieve(ledger.active_ids())
        if added:
            self._log.info(
                "running_batches_awaited",
                provider=provider,
                count=added,
                detail="held as running (restored) and not shown by the first full list: retrieved by id",
            )

    def _next_interval(self, interval: float, found: int, truncated: str | None) -> float:
        """The time to the next full list: the floor after one that found something the polls in between had
        missed (or stopped early, or was the first), twice the last interval after one that found nothing, at most
        RESYNC_STRETCH times the floor."""
        floor = self._settings.resync_interval_seconds
        if found or truncated is not None or interval <= 0:
            return floor
        return min(floor * RESYNC_STRETCH, interval * 2)

    def _first_list_done(self, provider: str, run: Run, batches: int) -> None:
        first = run.first
        first.completed_at = self._clock()
        first.batches = batches
        took = first.completed_at - first.started_at if first.started_at is not None else 0.0
        self._log.info(
            "first_sync_complete",
            provider=provider,
            batches=batches,
            pages=first.pages,
            seconds=round(took, 1),
            pages_per_second=round(first.pages / took, 2) if took > 0 else None,
        )

    def _first_sync(self, run: Run, batches: int, now: float) -> FirstSync:
        first = run.first
        if run.synced:
            return FirstSync(True, first.batches, first.pages, first.started_at, first.completed_at)
        return FirstSync(
            False,
            batches,
            first.pages,
            first.started_at,
            estimated_completion=estimate_completion(
                first.pages, first.expected_pages, first.started_at, now
            ),
        )

    def _refused(self, provider: str, run: Run, ledger: Ledger, result: ListResult, walk: str) -> bool:
        """A cursor we sent was refused: counted, logged on the first refusal since the last complete full list,
        and taken out of the result's failure (the caller restarts the walk or falls back to retrieves)."""
        if result.failure is None or not result.cursor_refused:
            return False
        failure, result.failure = result.failure, None
        ledger.error("cursor_refused")
        run.cursor_refusals += 1
        if run.cursor_refusals == 1:
            self._log.warning(
                "cursor_refused",
                provider=provider,
                walk=walk,
                http_status=failure.status,
                detail=failure.detail,
                consequence=(
                    "the full list restarts from the newest page"
                    if walk == "resync"
                    else "this poll goes on without that page: its running batches are retrieved"
                )
                + '; further refusals are counted in bifrost_batch_exporter_poll_errors_total{reason="cursor_refused"}',
            )
        return True

    @staticmethod
    def _take_list(outcome: PollOutcome, result: ListResult, ledger: Ledger, *, head: bool = False) -> None:
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
        run: Run,
        builder: SnapshotBuilder | None,
        outcome: PollOutcome,
        now: float,
        duration: float,
        started: float,
    ) -> ProviderState:
        """The poll's new state. `builder`: the snapshot a full-mode poll folded as it listed; incremental mode
        builds it from the store."""
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
            ledger.poll_succeeded(now)
            health = Health(
                attempted=True,
                up=True,
                supported=False,
                last_success=now,
                poll_duration=duration,
                view_keys=self._view_keys(run),
                first_sync=FirstSync(complete=True),  # nothing to list: nothing to wait for
            )
            self._log.debug("poll_finished", outcome="unsupported", batches=0, **fields)
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
                previous.health,
                attempted=True,
                up=False,
                supported=True,
                poll_duration=duration,
                view_keys=self._view_keys(run),
                first_sync=self._first_sync(run, len(run.store), now),
            )
            return ProviderState(provider, health, previous.snapshot, ledger.view())
        if outcome.truncated is not None:
            ledger.error(outcome.truncated)
            # The gateway not forwarding a provider's cursor is its known limitation, the same at every full list
            # (every poll in full mode): said once as a warning, then at debug; the counter and coverage show it.
            known = outcome.truncated == "cursor_ignored" and run.cursor_ignored_said
            run.cursor_ignored_said = run.cursor_ignored_said or outcome.truncated == "cursor_ignored"
            (self._log.debug if known else self._log.warning)(
                "poll_truncated",
                reason=outcome.truncated,
                detail=outcome.truncated_detail
                or "stopped paging early; metrics cover only the batches seen",
                **fields,
            )
        # Retrieves that all failed (a 429 on every one, a retrieve route a proxy does not pass, an auth refusal) fail
        # the poll: up 0 and the reason counted, though what the list showed is published. One batch whose retrieve
        # keeps failing among others that answer (a provider's fault with that batch) is logged, not a failed poll:
        # it would hold up at 0, and PollFailing firing, for as long as that batch exists.
        retrieves_failed = outcome.retrieve_failures > 0 and outcome.retrieves_answered == 0
        if outcome.retrieve_failures:
            first = outcome.first_retrieve_failure
            if retrieves_failed and first is not None:
                ledger.error(first.reason)
            self._log.warning(
                "retrieve_failed",
                provider=provider,
                count=outcome.retrieve_failures,
                answered=outcome.retrieves_answered,
                reason=first.reason if first else None,
                detail=first.detail if first else None,
                http_status=first.status if first else None,
                consequence="those batches keep their last known state until the next poll"
                + ("; no retrieve answered: the poll counts as failed" if retrieves_failed else ""),
            )
        if outcome.skipped_items:
            self._log.warning(
                "batch_items_skipped",
                provider=provider,
                count=outcome.skipped_items,
                first_error=outcome.first_skip_error,
            )
        if builder is None:
            builder = self._builder(provider, ledger, now)
            run.store.fold_into(builder)
        snapshot = builder.build(now)
        self._warn_once(provider, ledger, run, snapshot.clamped, snapshot.overflowed)
        partial = run.resync_truncated is not None or not run.synced
        ledger.poll_succeeded(now)
        health = Health(
            attempted=True,
            up=not retrieves_failed,
            supported=True,
            truncated=partial,
            last_success=now,
            poll_duration=duration,
            view_keys=self._view_keys(run),
            coverage=run.resync_truncated or ("complete" if run.synced else "pending"),
            first_sync=self._first_sync(run, snapshot.batches, now),
        )
        self._log.debug(
            "poll_finished",
            outcome="truncated" if outcome.truncated else "ok",
            batches=snapshot.batches,
            seen=outcome.batches,
            gone=outcome.gone,
            resync="done" if outcome.resync_done else ("running" if run.store.resync is not None else None),
            # Running batches this poll could not refresh (its budget, or failed retrieves): the next polls
            # take them first. Always above 0 says the budget is short for the running batches.
            refresh_deferred=outcome.refresh_deferred,
            **fields,
        )
        return ProviderState(provider, health, snapshot, ledger.view())

    def _warn_once(self, provider: str, ledger: Ledger, run: Run, clamped: int, overflowed: int) -> None:
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

    def _hold_new_counters(self, provider: str, state: ProviderState) -> ProviderState:
        """Counter series no render could foresee, and counts risen above the start before a scrape saw them, are
        shown held a while (exporter/holds.py)."""
        run = self._runs.get(provider)
        if run is None:
            return state
        return holds.hold_new_counters(
            run,
            self._states.get(provider),
            state,
            self._monotonic(),
            self._hold_seconds,
            ("",) * len(self._settings.metadata_labels),
        )

    def counters_scraped(self, provider: str) -> None:
        """A scrape was served this provider's counter series: from now on a count can show the moment it is made,
        an increase from what that scrape saw."""
        run = self._runs.get(provider)
        if run is not None:
            run.baseline_seen = True


class _HeadScans:
    """One incremental poll's head scans: each key's newest pages, until a page shows a batch known before this poll
    (lists are newest first: nothing newer lies beyond it) or nothing at all.

    Governance narrows a keyed list's pages after they were cut (bifrost-batch-api.md, "Who sees which batches"), so
    a page can be empty for one key while it holds another tenant's burst, and an unowned batch that one key's scan
    found first this poll proves nothing to the next key. A key whose scan stopped that way may have new batches
    further down. Everything created since the last poll, any tenant's, is newer than every batch known before it,
    so once any key's scan reaches one of those `d` pages down, the others need read no deeper than `d` (the keys
    share the provider's pages). Such a second pass runs only when this poll found something new: a tenant with
    nothing recent does not walk its history every poll. Bursts of tenants outside the view leave no trace to go by.
    """

    def __init__(
        self,
        poller: Poller,
        provider: str,
        ledger: Ledger,
        run: Run,
        keys: tuple[str | None, ...],
        outcome: PollOutcome,
        refreshed: set[str],
        budget: int,
        observe: Observe,
    ) -> None:
        self._poller, self._provider, self._ledger, self._run = poller, provider, ledger, run
        self._keys, self._outcome, self._refreshed, self._budget, self._observe = (
            keys, outcome, refreshed, budget, observe,
        )  # fmt: skip
        # key → (cursor after its head pages, pages, items read)
        self.heads: dict[int, tuple[str, int, int]] = {}
        self._reached: dict[int, int] = {}  # key → pages its scans read from the top
        self._settled: dict[int, int] = {}  # key → the page (from the top) showing it a batch known before
        self._unsettled: set[int] = set()  # scans stopped above any such page, with a cursor to go on from
        self._first_seen: set[str] = set()  # first known this poll
        self._found_new = False

    def _left(self) -> int:
        outcome = self._outcome
        return min(
            self._budget - outcome.list_requests - outcome.retrieve_requests, self._poller._settings.max_pages
        )

    async def run(self, *, skip_first: bool) -> bool:
        """False when the poll must end (its outcome failed). `skip_first`: this poll's full list starts at the
        first key's head, so its pages are that key's head scan."""
        for k, key in enumerate(self._keys):
            if (skip_first and k == 0) or key in self._run.not_allowed:
                continue  # a refused key is asked again by the full list
            if not await self._scan(k, None, max(1, self._left()), second=False):
                return False
        if not self._found_new:
            return True
        # No key reached a batch it knew: go on a page at a time, key by key, until one does, at most twice as
        # deep as the first pass went (a view of tenants with no history at all must not walk the account).
        limit = 2 * max(self._reached.values(), default=0)
        while not self._settled and self._unsettled:
            ks = [k for k in sorted(self._unsettled) if self._reached[k] < limit]
            if not ks or self._left() <= 0:
                break
            for k in ks:
                if not await self._scan(k, self.heads[k][0], 1, second=True):
                    return False
                if self._settled:
                    break
        deepest = max(self._settled.values(), default=0)
        for k in sorted(self._unsettled):
            cursor, depth, _ = self.heads[k]
            pages = min(deepest - depth, self._left())
            if pages > 0 and not await self._scan(k, cursor, pages, second=True):
                return False
        return True

    async def _scan(self, k: int, after: str | None, pages: int, *, second: bool) -> bool:
        """Key `k`'s list from `after` (None: its top) for up to `pages` pages; the first pass also stops at a
        page that shows nothing."""
        poller, run, store, outcome = self._poller, self._run, self._run.store, self._outcome
        wanted_more = [True]
        settled = [False]
        walked = [self.heads[k][2] if after is not None else 0]  # items before: a running batch's place
        place = PagePlace()

        def head_page(batches: list[Batch]) -> bool:
            unknown = {b.id for b in batches if b.id not in store}
            settled[0] = any(b.id not in unknown and b.id not in self._first_seen for b in batches)
            poller._counts_still_fresh(store, batches, run.polls, self._refreshed)
            poller._take_page(
                store,
                batches,
                k,
                place.after,
                walked,
                self._observe,
                self._refreshed,
                outcome.shown,
                run.polls,
            )
            self._first_seen.update(unknown)
            self._found_new = self._found_new or bool(unknown)
            wanted_more[0] = not settled[0] and (second or bool(batches))
            return wanted_more[0]

        result = await poller._client.list_batches(
            self._provider, head_page, after=after, max_pages=pages, budget_truncates=False, key=self._keys[k],
            place=place,
        )  # fmt: skip
        refused = poller._refused(self._provider, run, self._ledger, result, "head")
        blocked = poller._not_allowed(self._provider, run, self._keys[k], result)
        # A cursor defect matters here only while the newest pages were still showing new batches.
        poller._take_list(outcome, result, self._ledger, head=not wanted_more[0])
        if outcome.failure is not None or outcome.unsupported:
            return False
        self._reached[k] = self._reached.get(k, 0) + result.pages
        if settled[0]:
            self._settled[k] = self._reached[k]
        self.heads.pop(k, None)
        self._unsettled.discard(k)
        if not refused and not blocked and result.next_cursor is not None:
            self.heads[k] = (result.next_cursor, self._reached[k], walked[0])
            if not settled[0]:
                self._unsettled.add(k)
        return True


def _kept_keys(
    old: tuple[str | None, ...],
    old_generations: Mapping[str, int],
    new: tuple[str | None, ...],
    new_generations: Mapping[str, int],
) -> dict[int, int]:
    """Across a change of the view: old index → new index of each key in both views that is the same key (its
    name, not given another value meanwhile). What such a key's list showed, it still shows."""
    where = {name: k for k, name in enumerate(new) if name is not None}
    return {
        k: where[name]
        for k, name in enumerate(old)
        if name is not None and name in where and old_generations.get(name) == new_generations.get(name)
    }


def _another_keys_batch(run: Run, batch_id: str, refusal: str | None, keys: int) -> bool:
    """A 404 that is governance's `access_blocked`, to a key whose list never showed the batch: the batch is another
    virtual key's, which says nothing of whether it exists, so the view's next key is asked (True). Only a round in
    which every key was refused so counts as a 404 (False: the batch is in no key's view any more)."""
    if refusal != "access_blocked":
        return False
    tried = run.blocked.get(batch_id, 0) + 1
    if tried >= keys:
        run.blocked.pop(batch_id, None)
        return False
    run.blocked[batch_id] = tried
    return True


def _iso(timestamp: float) -> str:
    """A log line's time; one beyond what a date can hold (a poll interval of 10^12 s is a valid setting) is given
    as its number: a summary line that raised would fail every poll."""
    try:
        return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{timestamp:.0f}"


def _saved_floors(saved: Any) -> dict[str, tuple[str, float]] | None:
    """The saved view's keys (name → fingerprint, floor); None without one. An entry no release wrote (a hand edit, a
    number no float holds) is left out: its key counts as new, from this start."""
    if not isinstance(saved, dict):
        return None
    floors: dict[str, tuple[str, float]] = {}
    for name, entry in saved.items():
        if not (isinstance(name, str) and isinstance(entry, list) and len(entry) == 2):
            continue
        fp, floor = entry
        if not isinstance(fp, str) or isinstance(floor, bool) or not isinstance(floor, int | float):
            continue
        try:
            value = float(floor)
        except OverflowError:
            continue
        if math.isfinite(value):
            floors[name] = (fp, value)
    return floors

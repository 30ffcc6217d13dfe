"""One asyncio task per provider: poll on schedule, fold the result into the ledger, publish a new state.

The poller is the only writer of provider state. Each poll ends by replacing the provider's ProviderState with a new
immutable one (a single reference swap), so a reader sees either the old or the new state, never a mix, and a
scrape never waits for a poll.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import structlog

from .client import REASONS, BifrostClient, ListResult
from .ledger import Ledger
from .models import Batch
from .settings import Settings
from .snapshot import Health, ProviderState, SnapshotBuilder

UNSUPPORTED_BACKOFF_INTERVALS = 10


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
            p: Ledger(self.started_at, settings.duration_buckets, settings.latency_buckets, REASONS)
            for p in settings.providers
        }
        self._states: Mapping[str, ProviderState] = MappingProxyType(
            {p: ProviderState(p, Health(), None, led.view()) for p, led in self._ledgers.items()}
        )

    @property
    def states(self) -> Mapping[str, ProviderState]:
        """The current state of every provider; the mapping itself is replaced, never mutated."""
        return self._states

    async def run(self) -> None:
        """Poll every provider concurrently until cancelled."""
        async with asyncio.TaskGroup() as group:
            for provider in self._settings.providers:
                group.create_task(self._run_provider(provider), name=f"poll-{provider}")

    async def poll_all_once(self) -> Mapping[str, ProviderState]:
        await asyncio.gather(*(self.poll(p) for p in self._settings.providers))
        return self._states

    async def _run_provider(self, provider: str) -> None:
        interval = self._settings.poll_interval_seconds
        next_start = self._monotonic()
        while True:
            state = await self.poll(provider)
            next_start += interval * (1 if state.health.supported else UNSUPPORTED_BACKOFF_INTERVALS)
            now = self._monotonic()
            if next_start < now:
                next_start = now  # a poll overran its interval: start again at once, never in a burst
            await asyncio.sleep(next_start - now)

    async def poll(self, provider: str) -> ProviderState:
        """One complete poll of one provider; never raises (a bug is logged and reported as up=0)."""
        ledger = self._ledgers[provider]
        ledger.poll_started()
        t0 = self._monotonic()
        started = self._clock()
        builder = SnapshotBuilder(
            provider,
            label_for=ledger.admit_status,
            per_batch=self._settings.per_batch_metrics,
            per_batch_limit=self._settings.per_batch_limit,
        )
        finished = 0

        def fold_page(batches: list[Batch]) -> None:
            # Pages are folded as they arrive: the ledger counts transitions (real even if a later page fails),
            # the builder aggregates (discarded if a later page fails, so the last good snapshot stays).
            nonlocal finished
            finished += ledger.observe_page(batches, started)
            builder.add(batches)

        try:
            result = await self._client.list_batches(provider, fold_page)
        except asyncio.CancelledError:
            raise
        except Exception:
            self._log.exception("poll_crashed", provider=provider)
            result = None
        duration = self._monotonic() - t0
        now = self._clock()
        previous = self._states[provider]
        if result is None:
            health = replace(previous.health, attempted=True, up=False, poll_duration=duration)
            state = replace(previous, health=health, ledger=ledger.view())
        else:
            state = self._fold(provider, ledger, previous, result, now, duration, started, builder, finished)
        self._publish(provider, state)
        return state

    def _fold(
        self,
        provider: str,
        ledger: Ledger,
        previous: ProviderState,
        result: ListResult,
        now: float,
        duration: float,
        started: float,
        builder: SnapshotBuilder,
        finished: int,
    ) -> ProviderState:
        ledger.pages_fetched(result.pages, result.latencies, result.cache_debugs)
        fields: dict[str, Any] = {
            "provider": provider,
            "pages": result.pages,
            "duration_seconds": round(duration, 4),
            "retries": result.retries,
        }
        if result.unsupported:
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
        if result.failure is not None:
            failure = result.failure
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
            self._log.info("poll_finished", outcome="failed", batches=result.batch_count, **fields)
            return ProviderState(provider, health, previous.snapshot, ledger.view())
        if result.truncated is not None:
            ledger.error(result.truncated)
            self._log.warning(
                "poll_truncated",
                reason=result.truncated,
                detail="stopped paging early; metrics cover only the batches seen",
                **fields,
            )
        if result.skipped_items:
            self._log.warning(
                "batch_items_skipped",
                provider=provider,
                count=result.skipped_items,
                first_error=result.first_skip_error,
            )
        ledger.finish_poll(started, complete=result.truncated is None)
        snapshot = builder.build(now)
        if ledger.status_overflow_pending:
            ledger.status_overflow_pending = False
            self._log.warning(
                "status_values_capped",
                provider=provider,
                detail='more than 20 unknown status values; further ones are reported as status="other"',
            )
        health = Health(
            attempted=True,
            up=True,
            supported=True,
            truncated=result.truncated is not None,
            last_success=now,
            poll_duration=duration,
        )
        self._log.info(
            "poll_finished",
            outcome="truncated" if result.truncated else "ok",
            batches=result.batch_count,
            finished=finished,
            **fields,
        )
        return ProviderState(provider, health, snapshot, ledger.view())

    def _publish(self, provider: str, state: ProviderState) -> None:
        self._states = MappingProxyType({**self._states, provider: state})
        self._on_change()

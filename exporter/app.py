"""Wiring of one running exporter: client → poller → render → server, with a clean start and stop.

Kept apart from the CLI so tests and benchmarks can run a whole exporter in-process on a loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import structlog

from .client import REASONS, BifrostClient
from .poller import Poller
from .render import Rendered, is_fresh, render
from .runtime import RuntimeMetrics
from .server import Guard, HttpServer, Routes, fd_reserve
from .settings import Settings, metadata_label_name
from .snapshot import ProviderState

RENDER_DEBOUNCE_SECONDS = 0.2
RENDER_BACKOFF_MAX_SECONDS = 30.0
UNHEALTHY_AFTER_FAILURES = 3


class Exporter:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        guard: Guard | None = None,
        ssl_context: Any = None,
        client: BifrostClient | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._log = structlog.get_logger("exporter")
        self.client = client or BifrostClient(settings)
        self.poller = Poller(settings, self.client, clock=clock, monotonic=monotonic, on_change=self._changed)
        self._dirty: asyncio.Event | None = None
        self._changes = 0  # state changes so far; a render is tagged with the count it saw
        self._published_changes = 0
        self._render_failures = 0
        self._rendered = self._render()
        self._tasks: list[asyncio.Task[None]] = []
        host, port = settings.listen
        self.runtime = RuntimeMetrics()
        self.routes = Routes(
            lambda: self._rendered,
            self._healthy,
            guard,
            metrics_path=settings.telemetry_path,
            runtime=self.runtime,
            on_scrape=self._scraped,
        )
        self.server = HttpServer(
            self.routes,
            host,
            port,
            ssl_context=ssl_context,
            on_error=self._server_error,
            fd_reserve=fd_reserve(len(settings.providers)),
        )

    @property
    def rendered(self) -> Rendered:
        return self._rendered

    def update_credentials(self, settings: Settings) -> None:
        """Secret files read again (SIGHUP, or a rotated Secret): the client sends them from the next request on."""
        self.client.update_credentials(settings)
        self.settings = settings

    @property
    def port(self) -> int:
        return self.server.port

    def _render(self, states: list[ProviderState] | None = None) -> Rendered:
        return render(
            list(self.poller.states.values()) if states is None else states,
            now=self._clock(),
            stale_after=self.settings.stale_after,
            reasons=REASONS,
            per_batch=self.settings.per_batch_metrics,
            group_labels=[metadata_label_name(k) for k in self.settings.metadata_labels],
            metrics_path=self.settings.telemetry_path,
        )

    def refresh(self) -> Rendered:
        """Render now and publish the result with one reference swap."""
        self._publish(self._changes, self._render())
        return self._rendered

    def _publish(self, seen_changes: int, rendered: Rendered) -> None:
        """Swap in a render unless a newer one (of later state changes) is already out: renders can overlap."""
        if seen_changes >= self._published_changes:
            self._published_changes = seen_changes
            self._rendered = rendered

    def _scraped(self, rendered: Rendered) -> None:
        """A scrape was served `rendered`: the providers whose counters it showed have had their start values seen."""
        for provider in rendered.counting:
            self.poller.counters_scraped(provider)

    def render_counted(self) -> Rendered:
        """What the ledgers counted, without the start-up and new-series holds: for `--once`, read by no
        Prometheus, whose increase() the holds are for."""
        return self._render([s.unheld() for s in self.poller.states.values()])

    def _changed(self) -> None:
        self._changes += 1
        if self._dirty is not None:
            self._dirty.set()
        else:
            self.refresh()

    def _healthy(self) -> bool:
        """Serving, rendering and polling: a task that died, or keeps failing, makes /healthz answer 503."""
        return (
            bool(self._tasks)
            and not any(t.done() for t in self._tasks)
            and self._render_failures < UNHEALTHY_AFTER_FAILURES
            and not self.poller.failing_tasks()
        )

    def _server_error(self) -> None:
        self._log.exception("request_handler_failed")

    def _next_stale_deadline(self) -> float | None:
        now = self._clock()
        deadlines = [
            s.health.last_success + self.settings.stale_after
            for s in self.poller.states.values()
            if s.health.last_success is not None and is_fresh(s, now, self.settings.stale_after)
        ]
        return min(deadlines) - now if deadlines else None

    async def _render_loop(self) -> None:
        """Re-render after state changes, and when a provider's data crosses its staleness deadline.

        Rendering runs in a worker thread on an immutable copy of the states, so the event loop keeps answering
        scrapes and driving polls meanwhile; polls that finish close together (they start together) are folded
        into one render by a short debounce.
        """
        assert self._dirty is not None
        while True:
            self._dirty.clear()
            seen_changes, states = self._changes, list(self.poller.states.values())
            try:
                rendered = await asyncio.to_thread(self._render, states)
            except Exception as exc:
                # Supervised: the last good bytes keep being served; the render is retried with backoff.
                self._render_failures += 1
                delay = min(RENDER_BACKOFF_MAX_SECONDS, 0.5 * 2 ** min(self._render_failures, 8))
                self._log.error(
                    "render_failed",
                    error=f"{type(exc).__name__}: {exc}"[:300],
                    consecutive=self._render_failures,
                    retry_in_seconds=delay,
                    exc_info=True,
                )
                self._dirty.set()
                await asyncio.sleep(delay)
                continue
            if self._render_failures:
                self._log.info("render_recovered", after_failures=self._render_failures)
            self._render_failures = 0
            self._publish(seen_changes, rendered)
            timeout = self._next_stale_deadline()
            # asyncio.timeout, not wait_for: Python 3.11's wait_for returns the wait's result when a cancellation
            # meets a change in the same step, so a stop as a poll ended was swallowed and the loop waited on.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if timeout is None else max(0.05, timeout + 0.01)):
                    await self._dirty.wait()
            if self._dirty.is_set():
                await asyncio.sleep(RENDER_DEBOUNCE_SECONDS)

    async def start(self, *, poll: bool = True) -> None:
        """Serve and render; `poll=False` leaves polling to the caller (tests drive polls one at a time)."""
        self._dirty = asyncio.Event()
        await self.server.start()
        self._tasks = [asyncio.create_task(self._render_loop(), name="render")]
        if poll:
            self._tasks.append(asyncio.create_task(self.poller.run(), name="poller"))
        for task in self._tasks:
            task.add_done_callback(self._task_done)
        self._log.info(
            "exporter_started",
            listen=self.server.addresses,
            bifrost_url=self.settings.bifrost_url,
            providers=list(self.settings.providers),
            poll_interval_seconds=self.settings.poll_interval_seconds,
        )
        budget = self.server.fd_budget
        if budget is not None:
            # RLIMIT_NOFILE's soft limit is raised to the hard one; connections get what the reserve leaves.
            self._log.info(
                "file_descriptors",
                nofile_limit=budget.soft,
                raised_from=budget.soft_before,
                reserve=budget.reserve,
                max_connections=budget.connections,
            )

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._log.error("task_failed", task=task.get_name(), error=repr(task.exception()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.server.close()
        await self.client.aclose()
        self.poller.close()
        self._log.info("exporter_stopped")

    async def serve_until(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

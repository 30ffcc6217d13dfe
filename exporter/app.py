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
from .server import Guard, HttpServer, Routes
from .settings import Settings


class Exporter:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        guard: Guard | None = None,
        ssl_context: Any = None,
        client: BifrostClient | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._log = structlog.get_logger("exporter")
        self.client = client or BifrostClient(settings)
        self.poller = Poller(settings, self.client, clock=clock, on_change=self._changed)
        self._dirty: asyncio.Event | None = None
        self._rendered = self._render()
        self._tasks: list[asyncio.Task[None]] = []
        host, port = settings.listen
        self.routes = Routes(lambda: self._rendered, self._healthy, guard)
        self.server = HttpServer(
            self.routes, host, port, ssl_context=ssl_context, on_error=self._server_error
        )

    @property
    def rendered(self) -> Rendered:
        return self._rendered

    @property
    def port(self) -> int:
        return self.server.port

    def _render(self) -> Rendered:
        return render(
            list(self.poller.states.values()),
            now=self._clock(),
            stale_after=self.settings.stale_after,
            reasons=REASONS,
            per_batch=self.settings.per_batch_metrics,
        )

    def refresh(self) -> Rendered:
        """Render now and publish the result with one reference swap."""
        self._rendered = self._render()
        return self._rendered

    def _changed(self) -> None:
        if self._dirty is not None:
            self._dirty.set()
        else:
            self.refresh()

    def _healthy(self) -> bool:
        return bool(self._tasks) and not any(t.done() for t in self._tasks)

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
        """Re-render after every state change, and when a provider's data crosses its staleness deadline."""
        assert self._dirty is not None
        while True:
            self._dirty.clear()
            self.refresh()
            timeout = self._next_stale_deadline()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._dirty.wait(), None if timeout is None else max(0.05, timeout + 0.01)
                )

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
            listen=f"{self.server.host}:{self.server.port}",
            bifrost_url=self.settings.bifrost_url,
            providers=list(self.settings.providers),
            poll_interval_seconds=self.settings.poll_interval_seconds,
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
        self._log.info("exporter_stopped")

    async def serve_until(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

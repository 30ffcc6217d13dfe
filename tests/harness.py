"""Run a whole exporter in-process (own event loop in a thread) and read its /metrics over real HTTP."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import Exporter
from exporter.settings import Settings

# The batch gauges a full list determines (the contract's "batch data" section, not the cumulative counters).
BATCH_GAUGES = frozenset(
    {
        "bifrost_batches",
        "bifrost_batch_requests",
        "bifrost_batch_oldest_created_timestamp_seconds",
        "bifrost_batch_next_expiry_timestamp_seconds",
        "bifrost_batch_at_risk",
        "bifrost_batch_at_risk_requests",
    }
)

T = TypeVar("T")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def make_settings(url: str, providers: list[str], **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "bifrost_url": url,
        "providers": providers,
        "listen_address": "127.0.0.1:0",
        "log_format": "json",
        "max_retries": 0,
        "request_timeout_seconds": 5,
        # Pacing is tested in the client's own tests with a fake clock; here it would only slow polls down.
        "max_requests_per_second": 1000,
    }
    values.update(overrides)
    return Settings(**values)


class ExporterThread:
    """An Exporter on a loopback port; polls are driven by the test unless auto_poll is set.

    Like a Prometheus scraping a ready exporter, the render after the first poll is scraped once: until a scrape has
    seen a provider's counters, the poller holds every count made above what it started with (exporter/holds.py,
    hold_new_counters), which tests of anything else would otherwise have to wait out. `scrape_start=False` is a
    new pod whose first scrape comes later: the tests of that hold."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] | None = None,
        auto_poll: bool = False,
        scrape_start: bool = True,
        **kw: Any,
    ) -> None:
        self.settings = settings
        self._clock = clock
        # A test's clock drives the poller's elapsed time too (its counter holds) unless a test steps the wall
        # clock apart from it.
        self._monotonic = monotonic or (time.monotonic if clock is time.time else clock)
        self._scrape_start = scrape_start
        self._auto_poll = auto_poll
        self._kw = kw
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.exporter: Exporter

    def __enter__(self) -> ExporterThread:
        self._thread.start()

        async def build() -> Exporter:
            exporter = Exporter(self.settings, clock=self._clock, monotonic=self._monotonic, **self._kw)
            await exporter.start(poll=self._auto_poll)
            return exporter

        self.exporter = self.call(build())
        return self

    def __exit__(self, *exc: object) -> None:
        self.call(self.exporter.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def poll(self, provider: str | None = None) -> None:
        """One complete poll (of one provider or all), then the re-render it triggers."""
        if provider is None:
            self.call(self.exporter.poller.poll_all_once())
        else:
            self.call(self.exporter.poller.poll(provider))

        async def rerender() -> None:
            self.exporter.refresh()

        self.call(rerender())
        if self._scrape_start:
            self._scrape_start = False
            self.get()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.exporter.port}"

    def get(self, path: str = "/metrics", **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kw)

    def samples(self) -> Samples:
        return parse_samples(self.get().text)


def parse_samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def series(samples: Samples, name: str, **labels: str) -> Iterator[tuple[dict[str, str], float]]:
    want = set(labels.items())
    for (n, lbls), v in samples.items():
        if n == name and want <= set(lbls):
            yield dict(lbls), v


def wait_until(predicate: Callable[[], bool], timeout: float = 20, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")

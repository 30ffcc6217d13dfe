"""The first full list of a large account: as fast as the rate limit allows, and visible while it runs.

The figure (issue "A million batches on one small pod", item 1): the first complete picture of any account within
1.1 × (pages ÷ max_requests_per_second) plus one poll interval, at the default rate and at ten times it. Measured
with the poller's own schedule (`Poller.run`) against the simulator over real loopback HTTP, on one injected clock
that only the exporter's waits move (pacing slots, the wait for the next poll): so a poll lasts what its requests
take at the configured rate, and the HTTP round trips themselves take no time.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import pytest
import structlog

from exporter.client import BifrostClient
from exporter.firstsync import FirstSync, estimate_completion, expected_pages
from exporter.poller import Poller
from exporter.settings import Settings
from exporter.simulator import ProviderSpec, Simulator, generate_batches
from exporter.snapshot import ProviderState
from tests.harness import ExporterThread, make_settings, value

P = "openai"
T0 = 1_800_000_000.0


class VirtualTime:
    """One clock for gateway, poller and client; only the exporter's own waits move it."""

    def __init__(self, start: float) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


def account(sim: Simulator, total: int, clock: VirtualTime) -> None:
    """`total` batches of history, one in fifty still running: a large account as the issue describes it."""
    batches = generate_batches(P, total, seed=7, now=clock.now - 3600, flavor="openai", style="cursor")
    for i, batch in enumerate(batches):
        if i % 50 == 0:
            batch["status"] = "in_progress"
    sim.load_batches(P, batches)


async def first_sync(settings: Settings, clock: VirtualTime) -> tuple[FirstSync, list[ProviderState]]:
    """Run the poller's schedule until the first full list is complete; every state it published on the way."""
    client = BifrostClient(settings, sleep=clock.sleep, monotonic=clock.time)
    published: list[ProviderState] = []
    complete = asyncio.Event()
    poller: Poller

    def changed() -> None:
        published.append(poller.states[P])
        if published[-1].health.first_sync.complete:
            complete.set()

    poller = Poller(
        settings, client, clock=clock.time, monotonic=clock.time, sleep=clock.sleep, on_change=changed
    )
    task = asyncio.create_task(poller.run())
    try:
        async with asyncio.timeout(120):  # real seconds: the loop runs as fast as loopback answers
            await complete.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()
        poller.close()
    return published[-1].health.first_sync, published


@pytest.mark.parametrize(
    ("rate", "total"),
    [
        (10.0, 700),  # the default rate: 300 requests per 30 s poll, so the list spans three polls
        (100.0, 3_300),  # ten times it: 3,000 requests per poll, so it spans two
    ],
)
def test_first_complete_picture_within_the_rate_bound(rate: float, total: int) -> None:
    clock = VirtualTime(T0)
    with Simulator(providers=[ProviderSpec(P, style="cursor")], lifecycle=False, clock=clock.time) as sim:
        account(sim, total, clock)
        # page_size 1 so that the pages are many and the gateway small; the figure is in pages.
        settings = make_settings(sim.url, [P], page_size=1, max_requests_per_second=rate)
        assert settings.poll_interval_seconds == 30  # the default schedule
        done, published = asyncio.run(first_sync(settings, clock))
    pages = math.ceil(total / 1)
    assert done.pages == pages and done.batches == total
    assert done.started_at is not None and done.completed_at is not None
    took = done.completed_at - done.started_at
    bound = 1.1 * pages / rate + settings.poll_interval_seconds
    assert took <= bound, f"first complete picture after {took:.1f} s, bound {bound:.1f} s"
    # While it ran, the whole budget went to the list: no retrieve, and each poll said how far it had come.
    running = [s for s in published if not s.health.first_sync.complete]
    assert len(running) >= 1
    assert all(s.ledger.requests.get("retrieve", 0) == 0 for s in running)
    assert [s.health.first_sync.pages for s in running] == sorted(
        {s.health.first_sync.pages for s in running}
    )
    assert all(s.health.up and s.health.truncated for s in running)


def test_progress_is_on_metrics_and_in_the_log_until_the_first_list_is_complete() -> None:
    with Simulator(providers=[ProviderSpec(P, style="cursor")], lifecycle=False) as sim:
        for i in range(12):
            sim.add_batch(P, batch_id=f"b{i:02d}", status="completed" if i % 3 else "in_progress")
        # 1 request per second × 10 s polls: a budget of 10 requests, and 12 pages to list.
        settings = make_settings(
            sim.url, [P], page_size=1, max_requests_per_second=1, poll_interval_seconds=10
        )
        with structlog.testing.capture_logs() as logs, ExporterThread(settings) as exp:
            assert exp.get("/readyz").status_code == 503  # nothing polled yet
            exp.poll(P)
            s = exp.samples()
            assert value(s, "bifrost_batch_exporter_first_sync_complete", provider=P) == 0
            assert value(s, "bifrost_batch_exporter_first_sync_pages", provider=P) == 10
            assert value(s, "bifrost_batch_exporter_first_sync_batches", provider=P) == 10
            # Bifrost does not say how long a list is: no estimate at a first start.
            assert (
                value(
                    s, "bifrost_batch_exporter_first_sync_estimated_completion_timestamp_seconds", provider=P
                )
                is None
            )
            ready = exp.get("/readyz")
            assert ready.status_code == 200  # serving what it has
            assert "first full list still running: openai" in ready.text
            exp.poll(P)
            s = exp.samples()
            assert value(s, "bifrost_batch_exporter_first_sync_complete", provider=P) == 1
            assert value(s, "bifrost_batch_exporter_first_sync_pages", provider=P) == 12
            assert value(s, "bifrost_batch_exporter_first_sync_batches", provider=P) == 12
            assert exp.get("/readyz").text == "ready\n"
    summaries = [e for e in logs if e["event"] == "polls_summary"]
    assert summaries[0]["first_sync_pages"] == 10 and summaries[0]["first_sync_batches"] == 10
    assert summaries[0]["first_sync_estimated_completion"] == "unknown"
    completed = [e for e in logs if e["event"] == "first_sync_complete"]
    assert [(e["batches"], e["pages"]) for e in completed] == [(12, 12)]


def test_full_mode_first_poll_is_the_first_sync() -> None:
    sim = Simulator(providers=[ProviderSpec(P, style="cursor")], lifecycle=False)
    for i in range(3):
        sim.add_batch(P, batch_id=f"b{i}", status="completed")
    with sim, ExporterThread(make_settings(sim.url, [P], poll_mode="full", page_size=1)) as exp:
        exp.poll(P)
        s = exp.samples()
    assert value(s, "bifrost_batch_exporter_first_sync_complete", provider=P) == 1
    assert value(s, "bifrost_batch_exporter_first_sync_batches", provider=P) == 3


def test_an_unsupported_provider_has_nothing_to_wait_for() -> None:
    sim = Simulator(providers=[ProviderSpec("volcengine", supported=False)], lifecycle=False)
    with sim, ExporterThread(make_settings(sim.url, ["volcengine"])) as exp:
        exp.poll("volcengine")
        s = exp.samples()
    assert value(s, "bifrost_batch_exporter_provider_supported", provider="volcengine") == 0
    assert value(s, "bifrost_batch_exporter_first_sync_complete", provider="volcengine") == 1


def test_the_estimate_needs_a_length_and_a_pace() -> None:
    assert expected_pages(0, 100, 1) is None  # nothing known before: the length cannot be told
    assert expected_pages(250, None, 1) is None  # a provider whose page size the gateway decides
    assert expected_pages(250, 100, 1) == 3
    assert expected_pages(250, 100, 2) == 6  # each key of a governance view walks every page of the account
    assert estimate_completion(10, None, T0, T0 + 10) is None
    assert estimate_completion(0, 40, T0, T0 + 10) is None
    # 10 pages in 10 s, 30 to go: 30 s from now.
    assert estimate_completion(10, 40, T0, T0 + 10) == T0 + 40
    # Past the expected length (the account grew): one more page at the pace.
    assert estimate_completion(50, 40, T0, T0 + 50) == T0 + 51
    assert FirstSync(pages=10, started_at=T0).pace(T0 + 5) == 2.0


class _FaultAt(VirtualTime):
    """The injected clock, arming a simulator fault once the exporter's own waits pass each of `at`."""

    def __init__(self, start: float, at: list[float]) -> None:
        super().__init__(start)
        self._at = sorted(at)
        self.arm: Callable[[], None] = lambda: None

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds)
        if self._at and self.now >= self._at[0]:
            self._at.pop(0)
            self.arm()


@pytest.mark.parametrize(
    ("fault", "outages"),
    [("5xx", []), ("5xx", [25.0]), ("5xx", [25.0, 55.0]), ("429", [25.0])],
    ids=["no outage", "one 5xx outage", "two 5xx outages", "a 429 with Retry-After 40"],
)
def test_a_page_that_fails_mid_first_list_does_not_throw_away_the_pages_before_it(
    fault: str, outages: list[float]
) -> None:
    """A gateway outage longer than one page's retries (or a 429 whose Retry-After outlasts backoff_max) 25 s into
    the first full list of 700 pages. The next poll goes on from the page that failed, not from where the failed
    poll began: the gateway is not sent a poll's pages twice, the first list's progress counts each page once, and
    the first complete picture stays within 1.1 × pages ÷ rate + one interval (plus the Retry-After) — with the old
    restart point, two outages missed it (audit 7, scale F1)."""
    total, rate = 700, 10.0
    clock = _FaultAt(T0, [T0 + t for t in outages])
    with Simulator(providers=[ProviderSpec(P, style="cursor")], lifecycle=False, clock=clock.time) as sim:
        if fault == "5xx":
            clock.arm = lambda: sim.set_fault("server_error", provider=P, times=4, cursor_only=True)
        else:
            clock.arm = lambda: sim.set_fault(
                "rate_limit", provider=P, times=1, cursor_only=True, retry_after=40
            )
        account(sim, total, clock)
        settings = make_settings(sim.url, [P], page_size=1, max_requests_per_second=rate, max_retries=3)
        done, _ = asyncio.run(first_sync(settings, clock))
        lists = sim.requests(P, "list")
    assert done.completed_at is not None and done.started_at is not None
    took = done.completed_at - done.started_at
    bound = 1.1 * total / rate + settings.poll_interval_seconds + (40 if fault == "429" else 0)
    failed = (4 if fault == "5xx" else 1) * len(outages)
    # The simulator counts one list request more than the pages for a list without faults (`no outage`).
    assert lists <= total + 1 + failed, (
        f"{lists} list requests for {total} pages and {failed} failed attempts"
    )
    assert done.pages == total
    assert took <= bound, f"first complete picture after {took:.1f} s, bound {bound:.1f} s"

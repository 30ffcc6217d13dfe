"""Benchmark: what polling costs the gateway, and how fresh the metrics stay, `incremental` against `full` mode.

A gateway of 100,000 batches over 23 providers, 100 of them active (the newest: a batch lives a day, the history
months), in steady state: each poll interval some active batches finish and as many new ones start. Every list or
retrieve request the gateway receives it forwards to the provider's API, on the customer's rate limit, so the
figure is requests per poll cycle (all 23 providers), counted at the simulator. Baseline in the same run: `full`
mode polling the same gateway with the same churn.

Time is simulated, and said so in the table: the gateway (the project's simulator, in-process, no lifecycle), the
poller and the client's pacing all read one injected clock. Each provider polls on its own timeline every
`poll_interval_seconds`; a request waits for its pacing slot (1 / `max_requests_per_second` apart per provider) by
moving that clock, so a poll lasts what its requests take at the configured rate; the HTTP round trips themselves
take no simulated time. A transition or creation at the gateway at time t is applied before the first poll of its
provider that starts after t (a change during a poll is left to the next one: the worst case), and its freshness is
the end of the first poll that shows it, minus t. After every poll the bench checks that the provider's exposed
counts equal the gateway's (so "shows it" is verified, not assumed); a poll that does not counts as a miss.

Settings are the defaults (poll 30 s, resync 600 s, 10 requests/s, page_size 100), so a cycle of `full` mode is
about a thousand list requests, the figure the issue starts from. One resync period (20 cycles) is measured for
`incremental`, so its cost per cycle includes one full list; three cycles for `full` (every cycle is alike).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Literal

from bench.common import PROVIDERS_23, Report, flavor_of, parser
from exporter.client import BifrostClient
from exporter.logs import configure
from exporter.poller import Poller
from exporter.settings import Settings
from exporter.simulator import ProviderSpec, Simulator, generate_batches

T0 = 1_750_000_000.0
TARGET_SHARE = 0.05
ACTIVE_TOTAL = 100
CHANGES_PER_CYCLE = 10  # batches finishing per cycle, and as many starting: the active count stays at 100
_LEGACY = ("openai", "azure", "vertex")
Mode = Literal["incremental", "full"]


class SimClock:
    """One simulated clock for gateway, poller and pacing; `sleep` (the client's pacing and retry waits) moves it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


@dataclass(slots=True)
class Event:
    at: float
    provider: str
    kind: Literal["finish", "start"]
    batch_id: str


@dataclass(slots=True)
class Gateway:
    """The simulator and what the bench knows of it: the active batch ids per provider and each provider's total."""

    sim: Simulator
    active: dict[str, list[str]]
    totals: dict[str, int]
    terminal_word: dict[str, str]
    rng: random.Random


@dataclass(slots=True)
class Result:
    mode: Mode
    cycles: int
    lists: list[int] = field(default_factory=list)  # per cycle, all providers
    retrieves: list[int] = field(default_factory=list)
    resync_cycle_requests: int = 0
    freshness: list[float] = field(default_factory=list)
    misses: int = 0
    polls: int = 0
    longest_poll: float = 0.0  # simulated seconds


def build_gateway(providers: tuple[str, ...], total: int, seed: int, clock: SimClock) -> Gateway:
    """History (finished batches) plus the newest ACTIVE_TOTAL in progress, spread over the providers; every
    provider honours the list cursor (one that does not can be listed past page 1 in neither mode)."""
    specs = []
    for i, name in enumerate(providers):
        flavor = flavor_of(i)
        style = "legacy" if flavor in _LEGACY else "cursor"
        specs.append(ProviderSpec(name, style=style, flavor=flavor, after_ignored=False))  # type: ignore[arg-type]
    sim = Simulator(providers=specs, lifecycle=False, clock=clock.time, seed=seed, latency_ms=120)
    active: dict[str, list[str]] = {}
    totals: dict[str, int] = {}
    words: dict[str, str] = {}
    rng = random.Random(seed)
    for i, name in enumerate(providers):
        flavor = flavor_of(i)
        words[name] = "ended" if flavor == "anthropic" else "completed"
        n_active = ACTIVE_TOTAL // len(providers) + (1 if i < ACTIVE_TOTAL % len(providers) else 0)
        n_hist = total // len(providers) + (1 if i < total % len(providers) else 0) - n_active
        style = "legacy" if flavor in _LEGACY else "cursor"
        pool = generate_batches(name, 2 * n_hist + 10, seed=seed, now=T0 - 3600, flavor=flavor, style=style)  # type: ignore[arg-type]
        history = [b for b in pool if b.get("status") in _TERMINAL][:n_hist]
        if len(history) < n_hist:
            raise RuntimeError(f"{name}: generator gave {len(history)} finished batches, need {n_hist}")
        sim.load_batches(name, reversed(history))
        active[name] = []
        for _ in range(n_active):
            active[name].append(_start(sim, name, int(T0 - rng.uniform(0, 3000))))
        totals[name] = n_hist + n_active
    return Gateway(sim, active, totals, words, random.Random(seed + 2))


_TERMINAL = frozenset({"completed", "failed", "expired", "cancelled", "canceled", "ended"})


def _start(sim: Simulator, provider: str, at: int) -> str:
    batch = sim.add_batch(
        provider,
        status="in_progress",
        created_at=at,
        expires_at=at + 86_400,
        request_counts={"total": 1000, "completed": 10, "failed": 0},
    )
    return str(batch["id"])


def schedule(gw: Gateway, cycles: int, interval: float, seed: int) -> list[Event]:
    """The churn of every cycle, drawn up front: CHANGES_PER_CYCLE finishes (of batches active when the cycle
    starts) and as many starts, at uniform times within the cycle. Which batch finishes is drawn when it happens."""
    rng = random.Random(seed + 1)
    providers = list(gw.active)
    planned = {p: len(ids) for p, ids in gw.active.items()}
    events: list[Event] = []
    for k in range(1, cycles + 1):
        lo, hi = T0 + (k - 1) * interval, T0 + k * interval
        started: list[str] = []
        for _ in range(CHANGES_PER_CYCLE):
            p = rng.choice([q for q in providers if planned[q]])
            planned[p] -= 1
            events.append(Event(rng.uniform(lo, hi), p, "finish", ""))
            started.append(rng.choice(providers))
            events.append(Event(rng.uniform(lo, hi), started[-1], "start", ""))
        for q in started:
            planned[q] += 1
    events.sort(key=lambda e: e.at)
    return events


def apply(gw: Gateway, event: Event) -> None:
    p = event.provider
    if event.kind == "finish":
        event.batch_id = gw.active[p].pop(gw.rng.randrange(len(gw.active[p])))
        gw.sim.set_status(p, event.batch_id, gw.terminal_word[p], at=int(event.at))
    else:
        event.batch_id = _start(gw.sim, p, int(event.at))
        gw.active[p].append(event.batch_id)
        gw.totals[p] += 1


async def run(mode: Mode, providers: tuple[str, ...], total: int, cycles: int, seed: int) -> Result:
    clock = SimClock(T0)
    gw = build_gateway(providers, total, seed, clock)
    gw.sim.start()
    settings = Settings(bifrost_url=gw.sim.url, providers=providers, poll_mode=mode, log_level="warning")
    client = BifrostClient(settings, sleep=clock.sleep, monotonic=clock.time)
    poller = Poller(settings, client, clock=clock.time, monotonic=clock.time, started_at=T0)
    interval = settings.poll_interval_seconds
    events = schedule(gw, cycles, interval, seed)
    pending: dict[str, list[Event]] = {p: [] for p in providers}
    for e in events:
        pending[e.provider].append(e)
    result = Result(mode, cycles)
    ends = dict.fromkeys(providers, T0)
    unseen: dict[str, list[Event]] = {p: [] for p in providers}  # applied, not yet shown by a poll
    resynced: dict[str, float | None] = dict.fromkeys(providers)
    try:
        for k in range(cycles + 1):  # cycle 0 is the first poll (the initial full list): not counted
            lists = retrieves = 0
            for p in providers:
                clock.now = start = max(T0 + k * interval, ends[p])
                due = [e for e in pending[p] if e.at <= start]
                pending[p] = pending[p][len(due) :]
                for e in due:
                    apply(gw, e)
                unseen[p].extend(due)
                before = (gw.sim.requests(p, "list"), gw.sim.requests(p, "retrieve"))
                state = await poller.poll(p)
                ends[p] = clock.now
                dl = gw.sim.requests(p, "list") - before[0]
                dr = gw.sim.requests(p, "retrieve") - before[1]
                if k == 0:
                    resynced[p] = state.ledger.last_resync
                    continue
                result.polls += 1
                result.longest_poll = max(result.longest_poll, ends[p] - start)
                lists, retrieves = lists + dl, retrieves + dr
                if mode == "incremental" and state.ledger.last_resync != resynced[p]:
                    result.resync_cycle_requests += dl + dr
                resynced[p] = state.ledger.last_resync
                snap = state.snapshot
                shown = snap.status_counts() if snap is not None else {}
                if (
                    not state.health.up
                    or shown.get("in_progress", 0) != len(gw.active[p])
                    or (snap.batches if snap is not None else 0) != gw.totals[p]
                ):
                    result.misses += 1  # not shown yet: measured at the poll that shows it
                    continue
                result.freshness.extend(ends[p] - e.at for e in unseen[p])
                unseen[p] = []
            if k:
                result.lists.append(lists)
                result.retrieves.append(retrieves)
    finally:
        await client.aclose()
        gw.sim.stop()
    return result


def main() -> int:
    args = parser(__doc__ or "").parse_args()
    started = time.perf_counter()
    report = Report("gateway_cost", args.smoke)
    configure("warning", "json", [])
    providers = PROVIDERS_23[:4] if args.smoke else PROVIDERS_23
    total = 2_000 if args.smoke else 100_000
    defaults = Settings(providers=["openai"])
    per_resync = round(defaults.resync_interval_seconds / defaults.poll_interval_seconds)
    incremental = asyncio.run(run("incremental", providers, total, 3 if args.smoke else per_resync, seed=1))
    full = asyncio.run(run("full", providers, total, 2 if args.smoke else 3, seed=1))
    interval = defaults.poll_interval_seconds
    base = statistics.fmean(a + b for a, b in zip(full.lists, full.retrieves, strict=True))

    def row(label: str, r: Result, requests: float, lists: float, retrieves: float) -> list[object]:
        fresh = sorted(r.freshness)
        median = statistics.median(fresh) if fresh else float("nan")
        worst = fresh[-1] if fresh else float("nan")
        return [
            label,
            requests,
            lists,
            retrieves,
            f"{requests / base:.1%}",
            median,
            worst,
            f"{median / interval:.2f}× / {worst / interval:.2f}×",
            r.misses,
        ]

    inc_per = statistics.fmean(a + b for a, b in zip(incremental.lists, incremental.retrieves, strict=True))
    per_cycle = list(zip(incremental.lists, incremental.retrieves, strict=True))
    heaviest = max(a + b for a, b in per_cycle)
    resynced = incremental.resync_cycle_requests > 0
    steady = [(a, b) for a, b in per_cycle if a + b < heaviest] if resynced else per_cycle
    rows = [
        row(
            f"full (baseline; {full.cycles} cycles)",
            full,
            base,
            statistics.fmean(full.lists),
            statistics.fmean(full.retrieves),
        ),
        row(
            f"incremental ({incremental.cycles} cycles"
            + (", one resync period, its full list included)" if incremental.cycles == per_resync else ")"),
            incremental,
            inc_per,
            statistics.fmean(incremental.lists),
            statistics.fmean(incremental.retrieves),
        ),
    ]
    report.table(
        f"Gateway cost, {total:,} batches / {len(providers)} providers / {ACTIVE_TOTAL} active, "
        f"{CHANGES_PER_CYCLE} finishing and {CHANGES_PER_CYCLE} starting per cycle; defaults (poll "
        f"{interval:g} s, resync {defaults.resync_interval_seconds:g} s, {defaults.max_requests_per_second:g} "
        f"requests/s, page_size {defaults.page_size}); simulated clock",
        [
            "mode",
            "requests per cycle",
            "list",
            "retrieve",
            "vs full",
            "freshness median (s)",
            "freshness worst (s)",
            "median / worst vs poll interval",
            "polls not showing the gateway",
        ],
        rows,
    )
    if steady:
        lists_between = statistics.fmean(a for a, _ in steady)
        retrieves_between = statistics.fmean(b for _, b in steady)
        report.note(
            f"incremental between full lists: {lists_between + retrieves_between:.1f} requests per cycle "
            f"({(lists_between + retrieves_between) / base:.1%} of full): {lists_between:.1f} list (newest pages) "
            f"+ {retrieves_between:.1f} retrieve (known active batches the newest pages did not show, or showed "
            f"only as a summary: Bedrock, Gemini)"
            + (f"; the cycle that ran the full list: {heaviest} requests" if resynced else "")
        )
    report.note(
        "freshness is on the simulated clock: poll start to poll end is the time its paced requests take at "
        "max_requests_per_second; HTTP round trips add their real latency on top"
    )
    share = inc_per / base
    if not args.smoke:
        report.check(
            "incremental requests per cycle vs full",
            share,
            f"≤ {TARGET_SHARE:.0%}",
            share <= TARGET_SHARE,
            f"{inc_per:.0f} vs {base:.0f} ({share:.1%}), one resync period",
        )
        fresh = sorted(incremental.freshness)
        worst = fresh[-1] if fresh else float("inf")
        bound = interval + incremental.longest_poll
        report.check(
            "incremental freshness, worst vs poll interval",
            worst / interval,
            "≤ 1 interval + the longest poll",
            incremental.misses == 0 and worst <= bound,
            f"median {statistics.median(fresh):.1f} s, worst {worst:.1f} s at a {interval:g} s interval "
            f"(longest poll {incremental.longest_poll:.1f} s); {incremental.misses} polls not showing the gateway",
        )
    report.finish(args.json, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: what polling costs the gateway, and how fresh the metrics stay, `incremental` against `full` mode.

Every list or retrieve request the gateway receives it forwards to the provider's API, on the customer's rate limit,
so the figure is requests per poll interval (all providers), counted at the simulator, against the requests of one
full list of the same account (what `full` mode sends every interval: the baseline, measured in the same run).

Workloads, each in steady state (each interval some active batches finish and as many new ones start):
- **present mix**: 100,000 batches over 23 providers (all six batch shapes, so a third list summaries without counts:
  Bedrock, Gemini), 100 of them active (the newest: a batch lives a day, the history months), 10 finishing and 10
  starting per interval;
- **realistic mix** (issue 20): a large account on three providers (OpenAI, Azure, Anthropic shapes), 100 batches
  running on each, the rest finished history; 2 finishing and 2 starting per interval;
- **realistic mix, oldest falling off**: the same account on providers whose retention drops the oldest finished
  batch as each new one starts (the list keeps its length): every full list finds finished batches gone, which
  must not hold full lists at their floor; a poll must show the running batches (a dropped finished one leaves the
  gauges with the next full list);
- **running beyond the head page**: 30,000 batches in one provider (OpenAI's shape), 300 of them running, so they
  fill the three newest pages; 2 finishing and 2 starting per interval;
- **running on later Bifrost keys**: the same 30,000 batches and 300 running, spread over three provider keys of
  one provider (Bifrost lists a provider's keys one after the other: two thirds of the running batches lie behind
  the earlier keys' whole history);
- **the view's keys** (issue 24): the present mix behind a governance gateway, each batch owned by one of 1, 2 or 5
  tenants or by none, the exporter reading the union with one virtual key per tenant (`virtual_key_dir`): every key
  lists each provider itself, and the gateway narrows each page to the key's batches without moving the cursors.

`incremental` is measured over two windows: the first hour after the first picture (full lists every 600, 1,200 and
2,400 s while they find nothing the polls missed) and then one period at the adaptive interval's upper bound (an
hour), the steady state the 5 % goal is about.

Time is simulated, and said so in the table: the gateway (the project's simulator, in-process, no lifecycle), the
poller and the client's pacing all read one injected clock. Each provider polls on its own timeline every
`poll_interval_seconds`; a request waits for its pacing slot (1 / `max_requests_per_second` apart per provider) by
moving that clock, so a poll lasts what its requests take at the configured rate; the HTTP round trips themselves
take no simulated time. A transition or creation at the gateway at time t is applied before the first poll of its
provider that starts after t (a change during a poll is left to the next one: the worst case), and its freshness is
the end of the first poll that shows it, minus t. After every poll the bench checks that the provider's exposed
counts equal the gateway's (so "shows it" is verified, not assumed); a poll that does not counts as a miss.

Settings are the defaults (poll 30 s, resync floor 600 s, 10 requests/s, page_size 100).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bench.common import PROVIDERS_23, Report, flavor_of, parser
from exporter.client import BifrostClient
from exporter.firstsync import FirstSync
from exporter.logs import configure
from exporter.poller import RESYNC_STRETCH, Poller
from exporter.settings import Settings
from exporter.simulator import ProviderSpec, Simulator, generate_batches
from exporter.simulator.governance import Governance, VirtualKey, write_key_dir

T0 = 1_750_000_000.0
TARGET_SHARE = 0.05
_LEGACY = ("openai", "azure", "vertex")
Mode = Literal["incremental", "full"]


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    providers: tuple[str, ...]
    total: int
    active: int
    changes: int  # batches finishing per interval, and as many starting: the active count stays
    keys: int = 0  # tenants with a virtual key each, read as one view (0: no governance, no key sent)
    provider_keys: int = 1  # the provider's own API keys at the gateway, listed one after the other
    retention: bool = False  # the provider drops its oldest finished batch for each one that starts

    def with_keys(self, keys: int) -> Workload:
        return Workload(f"{self.name}, {keys} key{'s' if keys > 1 else ''}", *self._rest(), keys=keys)

    def _rest(self) -> tuple[tuple[str, ...], int, int, int]:
        return self.providers, self.total, self.active, self.changes

    def account(self) -> tuple[tuple[str, ...], int, int, int, int]:
        """What the gateway holds, whoever reads it: workloads that differ only in the view share a baseline."""
        return (*self._rest(), self.provider_keys)


PRESENT = Workload("present mix", PROVIDERS_23, 100_000, 100, 10)
REALISTIC = Workload("realistic mix", PROVIDERS_23[:3], 100_000, 300, 2)
# Running batches on more than the head page (300 in one provider: three pages), the shape the realistic mix never
# reaches: their refresh lists down to them or retrieves each, and batches that arrive between full lists have no
# place from one (an audit found every refresh turned into retrieves there: 33 % of a full list per interval).
DEEP = Workload("running beyond the head page", PROVIDERS_23[:1], 30_000, 300, 2)
# The same account on three provider keys: listing down to the running batches of keys 1 and 2 walks key 0's whole
# history, so they are refreshed by reading their pages again by cursor (a retrieve each cost ~50 % of a full list).
LATER_KEYS = Workload("running on later Bifrost keys", PROVIDERS_23[:1], 30_000, 300, 2, provider_keys=3)
# The realistic mix on a provider whose retention drops the oldest finished batch as each new one starts (the list
# keeps its length, as bench/account.py models an account): full lists find finished batches gone every time, which
# held the adaptive interval at its floor (7.7 % of a full list per interval at 30,000 batches, an audit found).
RETAINED = Workload("realistic mix, oldest falling off", PROVIDERS_23[:3], 100_000, 300, 2, retention=True)
KEYS = (1, 2, 5)


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
    # With retention: per provider the finished batches, oldest first (the next to drop).
    history: dict[str, deque[str]] | None = None


@dataclass(slots=True)
class Result:
    mode: Mode
    cycles: int
    lists: list[int] = field(default_factory=list)  # per cycle, all providers
    retrieves: list[int] = field(default_factory=list)
    freshness: list[float] = field(default_factory=list)
    misses: int = 0
    polls: int = 0
    longest_poll: float = 0.0  # simulated seconds
    full_lists: list[int] = field(
        default_factory=list
    )  # the cycles in which a provider's full list completed

    def per_cycle(self, first: int, last: int) -> tuple[float, float]:
        """Mean (list, retrieve) requests per cycle over cycles first..last (1-based, inclusive)."""
        lists = self.lists[first - 1 : last]
        retrieves = self.retrieves[first - 1 : last]
        return statistics.fmean(lists), statistics.fmean(retrieves)


def tenants(keys: int) -> Governance:
    return Governance(
        keys=tuple(
            VirtualKey(id=f"vk-{i}", value=f"sk-bf-bench-tenant-{i:02d}", name=f"tenant-{i}")
            for i in range(keys)
        )
    )


def build_gateway(w: Workload, seed: int, clock: SimClock) -> Gateway:
    """History (finished batches) plus the newest `active` in progress, spread over the providers; every provider
    honours the list cursor (one that does not can be listed past page 1 in neither mode). With keys, each batch's
    owner is drawn: one of the tenants or nobody, in equal shares."""
    specs = []
    for i, name in enumerate(w.providers):
        flavor = flavor_of(i)
        # Several provider keys are paged by newer gateways only (the serial cursor).
        style = "legacy" if flavor in _LEGACY and w.provider_keys == 1 else "cursor"
        specs.append(
            ProviderSpec(name, style=style, flavor=flavor, after_ignored=False, keys=w.provider_keys)  # type: ignore[arg-type]
        )
    governance = tenants(w.keys) if w.keys else None
    sim = Simulator(
        providers=specs, lifecycle=False, clock=clock.time, seed=seed, latency_ms=120, governance=governance
    )
    active: dict[str, list[str]] = {}
    totals: dict[str, int] = {}
    words: dict[str, str] = {}
    oldest: dict[str, deque[str]] = {}
    rng = random.Random(seed)
    n = len(w.providers)
    for i, name in enumerate(w.providers):
        flavor = flavor_of(i)
        words[name] = "ended" if flavor == "anthropic" else "completed"
        n_active = w.active // n + (1 if i < w.active % n else 0)
        n_hist = w.total // n + (1 if i < w.total % n else 0) - n_active
        # Several provider keys are paged by newer gateways only (the serial cursor).
        style = "legacy" if flavor in _LEGACY and w.provider_keys == 1 else "cursor"
        pool = generate_batches(name, 2 * n_hist + 10, seed=seed, now=T0 - 3600, flavor=flavor, style=style)  # type: ignore[arg-type]
        history = [b for b in pool if b.get("status") in _TERMINAL][:n_hist]
        if len(history) < n_hist:
            raise RuntimeError(f"{name}: generator gave {len(history)} finished batches, need {n_hist}")
        sim.load_batches(name, reversed(history))
        active[name] = []
        for _ in range(n_active):
            active[name].append(_start(sim, name, int(T0 - rng.uniform(0, 3000))))
        totals[name] = n_hist + n_active
        if w.retention:
            oldest[name] = deque(
                str(b["id"]) for b in sorted(history, key=lambda b: b.get("created_at") or 0)
            )
    return Gateway(sim, active, totals, words, random.Random(seed + 2), oldest if w.retention else None)


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


def schedule(gw: Gateway, changes: int, cycles: int, interval: float, seed: int, t0: float) -> list[Event]:
    """The churn of every cycle from `t0`, drawn up front: `changes` finishes (of batches active when the cycle
    starts) and as many starts, at uniform times within the cycle. Which batch finishes is drawn when it happens."""
    rng = random.Random(seed + 1)
    providers = list(gw.active)
    planned = {p: len(ids) for p, ids in gw.active.items()}
    events: list[Event] = []
    for k in range(1, cycles + 1):
        lo, hi = t0 + (k - 1) * interval, t0 + k * interval
        started: list[str] = []
        for _ in range(changes):
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
        if gw.history is not None:
            gw.history[p].append(event.batch_id)
    else:
        event.batch_id = _start(gw.sim, p, int(event.at))
        gw.active[p].append(event.batch_id)
        gw.totals[p] += 1
        if gw.history is not None and gw.history[p]:
            gw.sim.delete(p, gw.history[p].popleft())
            gw.totals[p] -= 1


async def run(w: Workload, mode: Mode, cycles: int, seed: int) -> Result:
    clock = SimClock(T0)
    gw = build_gateway(w, seed, clock)
    gw.sim.start()
    with tempfile.TemporaryDirectory() as tmp:
        key_dir: Path | None = None
        if w.keys:
            governance = gw.sim.governance
            assert governance is not None
            key_dir = Path(tmp) / "keys"
            write_key_dir(governance.keys, key_dir)
        settings = Settings(
            bifrost_url=gw.sim.url,
            providers=w.providers,
            poll_mode=mode,
            log_level="warning",
            virtual_key_dir=key_dir,
            # The baseline is one whole full list, however long; incremental mode never truncates a healthy one.
            max_pages=100_000 if mode == "full" else Settings.model_fields["max_pages"].default,
        )
        client = BifrostClient(settings, sleep=clock.sleep, monotonic=clock.time)
        poller = Poller(settings, client, clock=clock.time, monotonic=clock.time, started_at=T0)
        try:
            return await _cycles(w, mode, cycles, seed, gw, clock, poller, settings.poll_interval_seconds)
        finally:
            await client.aclose()
            poller.close()
            gw.sim.stop()


async def _cycles(
    w: Workload,
    mode: Mode,
    cycles: int,
    seed: int,
    gw: Gateway,
    clock: SimClock,
    poller: Poller,
    interval: float,
) -> Result:
    providers = w.providers
    ends = dict.fromkeys(providers, T0)
    resynced: dict[str, float | None] = dict.fromkeys(providers)
    # The first full list of each provider, back to back as the schedule runs it when a poll overruns; not
    # counted. The measured intervals start at the next interval boundary after the last of them.
    for p in providers:
        while True:
            clock.now = ends[p]
            state = await poller.poll(p)
            ends[p] = max(clock.now, ends[p] + interval)
            if state.health.first_sync.complete:
                resynced[p] = state.ledger.last_resync
                break
    t0 = T0 + interval * -(-(max(ends.values()) - T0) // interval)
    events = schedule(gw, w.changes, cycles, interval, seed, t0)
    pending: dict[str, list[Event]] = {p: [] for p in providers}
    for e in events:
        pending[e.provider].append(e)
    result = Result(mode, cycles)
    unseen: dict[str, list[Event]] = {p: [] for p in providers}  # applied, not yet shown by a poll
    for k in range(1, cycles + 1):
        lists = retrieves = 0
        for p in providers:
            clock.now = start = max(t0 + (k - 1) * interval, ends[p])
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
            result.polls += 1
            result.longest_poll = max(result.longest_poll, ends[p] - start)
            lists, retrieves = lists + dl, retrieves + dr
            if state.ledger.last_resync != resynced[p]:
                result.full_lists.append(k)
            resynced[p] = state.ledger.last_resync
            snap = state.snapshot
            shown = snap.status_counts() if snap is not None else {}
            # A finished batch dropped by the provider leaves the gauges with the next full list (README,
            # "Guarantees"): with retention, what a poll must show is the running ones.
            total_shown = (snap.batches if snap is not None else 0) == gw.totals[p] or gw.history is not None
            if not state.health.up or shown.get("in_progress", 0) != len(gw.active[p]) or not total_shown:
                result.misses += 1  # not shown yet: measured at the poll that shows it
                continue
            result.freshness.extend(ends[p] - e.at for e in unseen[p])
            unseen[p] = []
        result.lists.append(lists)
        result.retrieves.append(retrieves)
    return result


async def first_picture(w: Workload, rate: float, seed: int) -> tuple[int, float]:
    """(pages, seconds) of the slowest provider's first full list with the poller's own schedule (`Poller.run`),
    each provider on its own simulated clock (they list in parallel, each paced on its own)."""
    slowest = (0, 0.0)
    for provider in w.providers:
        first = await _first_list(
            Workload(w.name, (provider,), w.total // len(w.providers), 1, 0), rate, seed
        )
        if first.started_at is None or first.completed_at is None:
            raise RuntimeError(f"{provider}: no first full list")
        took = first.completed_at - first.started_at
        if took >= slowest[1]:
            slowest = (first.pages, took)
    return slowest


async def _first_list(w: Workload, rate: float, seed: int) -> FirstSync:
    (provider,) = w.providers
    clock = SimClock(T0)
    gw = build_gateway(w, seed, clock)
    gw.sim.start()
    settings = Settings(
        bifrost_url=gw.sim.url, providers=[provider], log_level="warning", max_requests_per_second=rate
    )
    client = BifrostClient(settings, sleep=clock.sleep, monotonic=clock.time)
    done = asyncio.Event()
    poller: Poller

    def changed() -> None:
        if poller.states[provider].health.first_sync.complete:
            done.set()

    poller = Poller(
        settings, client, clock=clock.time, monotonic=clock.time, sleep=clock.sleep, on_change=changed
    )
    task = asyncio.create_task(poller.run())
    try:
        await asyncio.wait_for(done.wait(), 600)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()
        poller.close()
        gw.sim.stop()
    return poller.states[provider].health.first_sync


@dataclass(frozen=True, slots=True)
class Windows:
    """Cycle windows of an incremental run: the first hour, then one period at the adaptive interval's bound."""

    first_hour: tuple[int, int]
    steady: tuple[int, int]

    @property
    def cycles(self) -> int:
        return self.steady[1]


def windows(interval: float, floor: float, smoke: bool) -> Windows:
    if smoke:
        return Windows((1, 2), (3, 4))
    hour = round(3600 / interval)
    # Full lists at floor × (1, 1+2, 1+2+4, …) until the interval reaches its bound; the steady window is the
    # period after the last stretch: from one full list at the bound to the next.
    at, step = floor, floor
    while step * 2 < floor * RESYNC_STRETCH:
        step *= 2
        at += step
    first = round(at / interval) + 1
    return Windows((1, hour), (first, first + round(floor * RESYNC_STRETCH / interval) - 1))


def main() -> int:
    args = parser(__doc__ or "").parse_args()
    started = time.perf_counter()
    report = Report("gateway_cost", args.smoke)
    configure("warning", "json", [])
    defaults = Settings(providers=["openai"])
    interval = defaults.poll_interval_seconds
    win = windows(interval, defaults.resync_interval_seconds, args.smoke)
    present, realistic, retained, deep, later = PRESENT, REALISTIC, RETAINED, DEEP, LATER_KEYS
    if args.smoke:
        present = Workload("present mix", PROVIDERS_23[:4], 2_000, 20, 2)
        realistic = Workload("realistic mix", PROVIDERS_23[:3], 1_500, 30, 1)
        retained = Workload(retained.name, PROVIDERS_23[:3], 1_500, 30, 1, retention=True)
        deep = Workload("running beyond the head page", PROVIDERS_23[:1], 2_000, 250, 1)
        later = Workload("running on later Bifrost keys", PROVIDERS_23[:1], 2_000, 250, 1, provider_keys=3)
    keyed = [present.with_keys(k) for k in (KEYS[:1] if args.smoke else KEYS)]
    rows: list[list[object]] = []
    checks: list[tuple[Workload, float, float, Result]] = []
    bases: dict[tuple[tuple[str, ...], int, int, int, int], float] = {}
    for w in (present, realistic, retained, deep, later, *keyed):
        if (
            w.account() not in bases
        ):  # the keyed workloads' account is the present mix's: one baseline for all
            unkeyed = Workload(w.name, *w._rest(), provider_keys=w.provider_keys)
            base_run = asyncio.run(run(unkeyed, "full", 1, seed=1))
            bases[w.account()] = statistics.fmean(
                a + b for a, b in zip(base_run.lists, base_run.retrieves, strict=True)
            )
        base = bases[w.account()]
        inc = asyncio.run(run(w, "incremental", win.cycles, seed=1))
        first_l, first_r = inc.per_cycle(*win.first_hour)
        steady_l, steady_r = inc.per_cycle(*win.steady)
        fresh = sorted(inc.freshness)
        median = statistics.median(fresh) if fresh else float("nan")
        worst = fresh[-1] if fresh else float("nan")
        keys = f", {w.provider_keys} provider keys" if w.provider_keys > 1 else ""
        label = f"{w.name} ({w.total:,} batches, {len(w.providers)} providers{keys}, {w.active} active)"
        rows.append([label, "full: one full list (baseline)", base, base, 0, "100.0%", "", "", ""])
        rows.append(
            ["", "incremental, first hour", first_l + first_r, first_l, first_r, f"{(first_l + first_r) / base:.1%}",
             median, worst, inc.misses]
        )  # fmt: skip
        rows.append(
            ["", "incremental, steady (one period at the bound)", steady_l + steady_r, steady_l, steady_r,
             f"{(steady_l + steady_r) / base:.1%}", "", "", ""]
        )  # fmt: skip
        checks.append((w, base, steady_l + steady_r, inc))
    picture_rows: list[list[object]] = []
    for rate in (defaults.max_requests_per_second, 10 * defaults.max_requests_per_second):
        pages, took = asyncio.run(first_picture(realistic, rate, seed=1))
        bound = 1.1 * pages / rate + interval
        picture_rows.append([f"{rate:g}", pages, took, pages / rate, bound])
        if not args.smoke:
            report.check(
                f"first complete picture, realistic mix, {rate:g} requests/s",
                took / bound,
                "≤ 1.1 × pages ÷ rate + one poll interval",
                took <= bound,
                f"{took:.1f} s for {pages:,} pages (pages ÷ rate {pages / rate:.1f} s; bound {bound:.1f} s)",
            )
    report.table(
        f"First complete picture, {realistic.name} ({realistic.total:,} batches, {len(realistic.providers)} "
        "providers listed in parallel; the slowest provider): Poller.run on a simulated clock",
        [
            "max_requests_per_second",
            "pages",
            "seconds",
            "pages ÷ rate (s)",
            "bound: 1.1 × pages ÷ rate + 30 s",
        ],
        picture_rows,
    )
    report.table(
        f"Gateway cost per {interval:g} s interval against one full list of the same account; defaults (poll "
        f"{interval:g} s, resync floor {defaults.resync_interval_seconds:g} s and bound ×{RESYNC_STRETCH}, "
        f"{defaults.max_requests_per_second:g} requests/s, page_size {defaults.page_size}); simulated clock",
        [
            "workload",
            "what",
            "requests per interval",
            "list",
            "retrieve",
            "vs one full list",
            "freshness median (s)",
            "freshness worst (s)",
            "polls not showing the gateway",
        ],
        rows,
    )
    report.note(
        f"windows: first hour = intervals {win.first_hour[0]}-{win.first_hour[1]} after the first picture (full "
        f"lists while the interval stretches); steady = intervals {win.steady[0]}-{win.steady[1]}, one period of "
        f"{defaults.resync_interval_seconds * RESYNC_STRETCH:g} s with one full list per provider and key"
    )
    report.note(
        "freshness is on the simulated clock: poll start to poll end is the time its paced requests take at "
        "max_requests_per_second; HTTP round trips add their real latency on top"
    )
    nokey = next(c for c in checks if c[0].keys == 0)
    per_provider = {
        c[0].keys: c[2] / len(c[0].providers) for c in checks if c[0].providers == nokey[0].providers
    }
    if len(per_provider) > 1:
        report.note(
            "per provider and interval, steady: "
            + ", ".join(
                f"{k or 'no'} key{'s' if k != 1 else ''} {v:.2f}" for k, v in sorted(per_provider.items())
            )
            + f" requests; one full list of the present mix is {nokey[1] / len(nokey[0].providers):.1f} per provider"
        )
    if not args.smoke:
        for w, base, steady, inc in checks:
            if w.keys:
                continue
            share = steady / base
            report.check(
                f"incremental requests per interval vs one full list, {w.name}",
                share,
                f"≤ {TARGET_SHARE:.0%}",
                share <= TARGET_SHARE,
                f"{steady:.1f} vs {base:.0f} ({share:.1%}), steady: one period at the adaptive bound",
            )
            fresh = sorted(inc.freshness)
            worst = fresh[-1] if fresh else float("inf")
            bound = interval + inc.longest_poll
            report.check(
                f"incremental freshness, worst vs poll interval, {w.name}",
                worst / interval,
                "≤ 1 interval + the longest poll",
                inc.misses == 0 and worst <= bound,
                f"median {statistics.median(fresh):.1f} s, worst {worst:.1f} s at a {interval:g} s interval "
                f"(longest poll {inc.longest_poll:.1f} s); {inc.misses} polls not showing the gateway",
            )
    report.finish(args.json, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

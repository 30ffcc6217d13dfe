"""Benchmark: what `cost_metrics` adds to the gateway's load — settlement look-ups per finished batch, and the
steady-state requests per poll cycle with the cost families on against the same run without them.

The gateway and its churn are bench/gateway_cost.py's (100,000 batches over 23 providers, 100 active, 10 finishing
and 10 starting per cycle, defaults, simulated clock), with Bifrost's batch accounting on in the simulator: its
sweeper settles each finished batch on its own schedule (a minute after creation, then backing off) and the exporter
reads each settlement with `GET /api/logs/{id}`. Only the six providers Bifrost settles (openai, azure, anthropic,
bedrock, gemini, vertex) are looked up; the other 17 of the fleet are not, as with a real gateway. History batches
(finished before the measurement) were settled long before it: their accounting jobs are taken out, so the sweeper
has no backlog the exporter would wait on.

Baselines measured in the same run: the same incremental run without cost_metrics, and one cycle of `full` mode
(one full list of every provider): the performance goal is at most 5 % of that per poll interval. After the churn,
the run goes on polling without new finishes until every awaited settlement is resolved, so that look-ups per
finished batch count every look-up each batch needed.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import dataclass, field

from bench import gateway_cost as gc
from bench.common import PROVIDERS_23, Report, flavor_of, parser
from exporter.client import BifrostClient
from exporter.cost import SETTLING_PROVIDERS
from exporter.logs import configure
from exporter.poller import Poller
from exporter.settings import Settings
from exporter.simulator import Accounting, ProviderSpec, Simulator, generate_batches

T0 = gc.T0
TOKEN = "bench-admin-session"


@dataclass(slots=True)
class Result:
    cost: bool
    cycles: int
    per_cycle: list[int] = field(default_factory=list)  # list + retrieve + settlement, all providers
    lookups_per_cycle: list[int] = field(default_factory=list)
    finished_settling: int = 0  # finishes on providers the gateway settles
    lookups: int = 0  # every settlement request of the run, the drain included
    priced: int = 0
    unresolved: int = 0
    gateway_lookups: int = 0  # /api/logs requests the simulator received


def build_gateway(
    providers: tuple[str, ...], total: int, seed: int, clock: gc.SimClock, cost: bool
) -> gc.Gateway:
    """bench.gateway_cost.build_gateway, with Bifrost's accounting and the admin login when `cost`."""
    specs = []
    for i, name in enumerate(providers):
        flavor = flavor_of(i)
        style = "legacy" if flavor in gc._LEGACY else "cursor"
        specs.append(ProviderSpec(name, style=style, flavor=flavor, after_ignored=False))  # type: ignore[arg-type]
    sim = Simulator(
        providers=specs,
        lifecycle=False,
        clock=clock.time,
        seed=seed,
        latency_ms=120,
        accounting=Accounting() if cost else None,
        admin_token=TOKEN if cost else None,
    )
    active: dict[str, list[str]] = {}
    totals: dict[str, int] = {}
    words: dict[str, str] = {}
    rng = random.Random(seed)
    for i, name in enumerate(providers):
        flavor = flavor_of(i)
        words[name] = "ended" if flavor == "anthropic" else "completed"
        n_active = gc.PRESENT.active // len(providers) + (1 if i < gc.PRESENT.active % len(providers) else 0)
        n_hist = total // len(providers) + (1 if i < total % len(providers) else 0) - n_active
        style = "legacy" if flavor in gc._LEGACY else "cursor"
        pool = generate_batches(name, 2 * n_hist + 10, seed=seed, now=T0 - 3600, flavor=flavor, style=style)  # type: ignore[arg-type]
        history = [b for b in pool if b.get("status") in gc._TERMINAL][:n_hist]
        sim.load_batches(name, reversed(history))
        ledger = sim._world.ledger
        if ledger is not None:
            for batch in history:  # settled long ago: no job left for the sweeper
                ledger.drop_job(name, str(batch["id"]))
        active[name] = [gc._start(sim, name, int(T0 - rng.uniform(0, 3000))) for _ in range(n_active)]
        totals[name] = n_hist + n_active
    return gc.Gateway(sim, active, totals, words, random.Random(seed + 2))


async def run(
    cost: bool, providers: tuple[str, ...], total: int, warmup: int, cycles: int, drain: int, seed: int
) -> Result:
    """`warmup` cycles of churn, then `cycles` measured (look-ups trail their batches by minutes: the first ones
    come only after a warm-up), then `drain` cycles without new finishes."""
    clock = gc.SimClock(T0)
    gw = build_gateway(providers, total, seed, clock, cost)
    gw.sim.start()
    extra: dict[str, object] = {"cost_metrics": True, "bearer_token": TOKEN} if cost else {}
    settings = Settings(bifrost_url=gw.sim.url, providers=providers, log_level="warning", **extra)  # type: ignore[arg-type]
    client = BifrostClient(settings, sleep=clock.sleep, monotonic=clock.time)
    poller = Poller(settings, client, clock=clock.time, monotonic=clock.time, started_at=T0)
    interval = settings.poll_interval_seconds
    events = gc.schedule(gw, gc.PRESENT.changes, warmup + cycles, interval, seed, T0)
    pending: dict[str, list[gc.Event]] = {p: [] for p in providers}
    for e in events:
        pending[e.provider].append(e)
    result = Result(cost, cycles)
    ends = dict.fromkeys(providers, T0)
    lookups = dict.fromkeys(providers, 0)

    def looked_up(p: str) -> int:
        view = poller.states[p].cost
        return view.lookups if view is not None else 0

    try:
        for k in range(warmup + cycles + drain + 1):  # cycle 0 is the first poll (the initial full list)
            spent = settlement = 0
            for p in providers:
                clock.now = max(T0 + k * interval, ends[p])
                due = [e for e in pending[p] if e.at <= clock.now]
                pending[p] = pending[p][len(due) :]
                for e in due:
                    gc.apply(gw, e)
                    if e.kind == "finish" and p in SETTLING_PROVIDERS:
                        result.finished_settling += 1
                before = gw.sim.requests(p, "list") + gw.sim.requests(p, "retrieve")
                await poller.poll(p)
                ends[p] = clock.now
                now_lookups = looked_up(p)
                spent += gw.sim.requests(p, "list") + gw.sim.requests(p, "retrieve") - before
                settlement += now_lookups - lookups[p]
                lookups[p] = now_lookups
            if warmup < k <= warmup + cycles:
                result.per_cycle.append(spent + settlement)
                result.lookups_per_cycle.append(settlement)
        result.lookups = sum(lookups.values())
        for p in providers:
            view = poller.states[p].cost
            if view is not None:
                result.priced += view.settlements_total("priced")
                result.unresolved += sum(view.awaited.values())
        result.gateway_lookups = sum(
            1 for entry in gw.sim.request_log() if str(entry["path"]).startswith("/api/logs/")
        )
    finally:
        await client.aclose()
        gw.sim.stop()
    return result


def main() -> int:
    args = parser(__doc__ or "").parse_args()
    started = time.perf_counter()
    report = Report("cost", args.smoke)
    configure("warning", "json", [])
    providers = PROVIDERS_23[:6] if args.smoke else PROVIDERS_23
    total = 2_000 if args.smoke else 100_000
    warmup, cycles = (10, 4) if args.smoke else (20, 20)
    drain = 30  # a quarter of an hour, simulated: every settlement due by then is looked up
    off = asyncio.run(run(False, providers, total, warmup, cycles, 0, seed=1))
    on = asyncio.run(run(True, providers, total, warmup, cycles, drain, seed=1))
    workload = gc.Workload("cost", providers, total, gc.PRESENT.active, gc.PRESENT.changes)
    full = asyncio.run(gc.run(workload, "full", 1, seed=1))
    base = statistics.fmean(a + b for a, b in zip(full.lists, full.retrieves, strict=True))
    per_off = statistics.fmean(off.per_cycle)
    per_on = statistics.fmean(on.per_cycle)
    lookups_steady = statistics.fmean(on.lookups_per_cycle)
    probes = sum(1 for p in providers if p in SETTLING_PROVIDERS)  # one login check per provider at start
    per_batch = (on.lookups - probes) / on.finished_settling if on.finished_settling else float("nan")
    report.table(
        f"cost_metrics on the gateway: {total:,} batches / {len(providers)} providers "
        f"({sum(p in SETTLING_PROVIDERS for p in providers)} settled by Bifrost) / {gc.PRESENT.active} active, "
        f"{gc.PRESENT.changes} finishing per cycle; {cycles} cycles measured after {warmup} of warm-up; defaults; "
        "simulated clock",
        ["run", "requests per cycle", "of which settlement look-ups", "vs one full list"],
        [
            ["full list (baseline, one cycle)", base, 0, "100%"],
            ["incremental, cost_metrics off", per_off, 0, f"{per_off / base:.1%}"],
            ["incremental, cost_metrics on", per_on, lookups_steady, f"{per_on / base:.1%}"],
        ],
    )
    report.table(
        "Settlement look-ups per finished batch (providers Bifrost settles)",
        [
            "finished batches",
            "look-ups (login checks aside)",
            "per batch",
            "priced",
            "left awaited",
            "at the gateway",
        ],
        [
            [
                on.finished_settling,
                on.lookups - probes,
                per_batch,
                on.priced,
                on.unresolved,
                on.gateway_lookups,
            ]
        ],
    )
    report.note(
        f"cost_metrics adds {per_on - per_off:.1f} requests per cycle ({(per_on - per_off) / base:.2%} of one full "
        f"list); the look-up count at the gateway equals the exporter's bifrost_batch_exporter_requests_total"
        f'{{endpoint="settlement"}}: {on.gateway_lookups == on.lookups}'
    )
    if not args.smoke:
        report.check(
            "settlement look-ups per finished batch",
            per_batch,
            "≤ 1.5",
            per_batch <= 1.5,
            f"{on.lookups - probes} look-ups for {on.finished_settling} finished batches",
        )
        report.check(
            "requests added per cycle by cost_metrics vs one full list",
            (per_on - per_off) / base,
            "≤ 1 % (the 5 % goal of the whole poll is bench.gateway_cost's)",
            (per_on - per_off) / base <= 0.01,
            f"{per_on - per_off:.1f} of {base:.0f}",
        )
    report.finish(args.json, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

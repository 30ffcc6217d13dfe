"""Benchmark 4: one poll cycle of 23 providers whose list pages each take 50 ms at the gateway.

The project's simulator runs in its own process (a static store, 500 batches per provider, so 5 pages at the
default page_size of 100, every page delayed 50 ms). The exporter's own client and poller run here with default
settings, i.e. the default connection pool. Baseline in the same run: each provider's paging alone, one after
the other; the slowest of them is what a fully concurrent cycle should cost.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from bench.common import PROVIDERS_23, Child, Report, children, parser, python_module
from exporter.client import BifrostClient
from exporter.logs import configure
from exporter.poller import Poller
from exporter.settings import Settings

TARGET = 1.2


async def measure(
    url: str, providers: tuple[str, ...], cycles: int, page_size: int = 100
) -> tuple[dict[str, float], list[float], float]:
    """(each provider alone, each concurrent cycle, exporter CPU seconds per concurrent cycle)."""
    settings = Settings(bifrost_url=url, providers=providers, log_level="warning", page_size=page_size)
    configure("warning", "json", [])
    client = BifrostClient(settings)
    try:
        poller = Poller(settings, client)
        await poller.poll_all_once()  # warm-up: connections, first parse
        alone: dict[str, float] = {}
        for provider in providers:
            t0 = time.perf_counter()
            result = await client.list_batches(provider)
            alone[provider] = time.perf_counter() - t0
            if result.failure is not None or not result.batches:
                raise RuntimeError(f"{provider}: poll failed: {result.failure}")
        cycle: list[float] = []
        cpu0 = time.process_time()
        for _ in range(cycles):
            t0 = time.perf_counter()
            states = await poller.poll_all_once()
            cycle.append(time.perf_counter() - t0)
            bad = [p for p, s in states.items() if not s.health.up]
            if bad:
                raise RuntimeError(f"poll failed for {bad}")
        return alone, cycle, (time.process_time() - cpu0) / cycles
    finally:
        await client.aclose()


def main() -> int:
    args = parser(__doc__ or "").parse_args()
    started = time.perf_counter()
    report = Report("concurrency", args.smoke)
    providers = PROVIDERS_23[:4] if args.smoke else PROVIDERS_23
    per_provider, delay, cycles = (150, 0.01, 2) if args.smoke else (500, 0.05, 5)
    # Two page weights, both 5 pages per provider at 50 ms: the default page (100 realistic batches, which the
    # exporter must parse: CPU-bound on a 2-core machine shared with the simulator) and a light page (10 batches),
    # which isolates the scheduling question the target asks: do the providers' polls overlap?
    runs = [
        ("default pages (100 batches)", per_provider, 100),
        ("light pages (10 batches)", per_provider // 10, 10),
    ]
    results = []
    for label, count, page_size in runs:
        with children() as procs:
            sim = Child(
                python_module(
                    "bench.servers",
                    "simulator",
                    "--providers",
                    ",".join(providers),
                    "--per-provider",
                    str(count),
                    "--page-delay",
                    str(delay),
                ),
                name="simulator",
            )
            procs.append(sim)
            url = f"http://127.0.0.1:{sim.ready_port()}"
            results.append(
                (label, page_size, count, *asyncio.run(measure(url, providers, cycles, page_size)))
            )
    for label, page_size, count, alone, cycle, cpu in results:
        slowest_name = max(alone, key=lambda p: alone[p])
        slowest = alone[slowest_name]
        pages = -(-count // page_size)
        median = statistics.median(cycle)
        report.table(
            f"Poll concurrency, {label}: {len(providers)} providers × {pages} pages, {delay * 1e3:.0f} ms per page "
            f"at the gateway, default connection pool; {cycles} cycles",
            ["what", "seconds", "vs slowest provider alone"],
            [
                [f"slowest provider alone ({slowest_name}; baseline)", slowest, "1.00×"],
                ["median provider alone", statistics.median(alone.values()), ""],
                [
                    "all providers one after the other (sum)",
                    sum(alone.values()),
                    f"{sum(alone.values()) / slowest:.2f}×",
                ],
                ["one poll cycle of all, concurrent (median)", median, f"{median / slowest:.2f}×"],
                ["one poll cycle of all, concurrent (worst)", max(cycle), f"{max(cycle) / slowest:.2f}×"],
                ["exporter CPU per concurrent cycle", cpu, f"{cpu / slowest:.2f}×"],
            ],
        )
        if not args.smoke:
            report.check(
                f"poll cycle vs slowest provider alone, {label}",
                median / slowest,
                f"≤ {TARGET}×",
                median / slowest <= TARGET,
                f"{median / slowest:.2f}× (median of {cycles}; worst {max(cycle) / slowest:.2f}×; "
                f"exporter CPU {cpu:.2f} s per cycle)",
            )
    report.finish(args.json, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

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


async def measure(url: str, providers: tuple[str, ...], cycles: int) -> tuple[dict[str, float], list[float]]:
    settings = Settings(bifrost_url=url, providers=providers, log_level="warning")
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
        for _ in range(cycles):
            t0 = time.perf_counter()
            states = await poller.poll_all_once()
            cycle.append(time.perf_counter() - t0)
            bad = [p for p, s in states.items() if not s.health.up]
            if bad:
                raise RuntimeError(f"poll failed for {bad}")
        return alone, cycle
    finally:
        await client.aclose()


def main() -> int:
    args = parser(__doc__ or "").parse_args()
    started = time.perf_counter()
    report = Report("concurrency", args.smoke)
    providers = PROVIDERS_23[:4] if args.smoke else PROVIDERS_23
    per_provider, delay, cycles = (150, 0.01, 2) if args.smoke else (500, 0.05, 5)
    with children() as procs:
        sim = Child(
            python_module(
                "bench.servers",
                "simulator",
                "--providers",
                ",".join(providers),
                "--per-provider",
                str(per_provider),
                "--page-delay",
                str(delay),
            ),
            name="simulator",
        )
        procs.append(sim)
        url = f"http://127.0.0.1:{sim.ready_port()}"
        alone, cycle = asyncio.run(measure(url, providers, cycles))
    slowest_name = max(alone, key=lambda p: alone[p])
    slowest = alone[slowest_name]
    pages = -(-per_provider // 100)
    median = statistics.median(cycle)
    report.table(
        f"Poll concurrency: {len(providers)} providers × {pages} pages, {delay * 1e3:.0f} ms per page at the "
        f"gateway, default connection pool; {cycles} cycles",
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
        ],
    )
    if not args.smoke:
        report.check(
            "poll cycle vs slowest provider alone",
            median / slowest,
            f"≤ {TARGET}×",
            median / slowest <= TARGET,
            f"{median / slowest:.2f}× (median of {cycles}; worst {max(cycle) / slowest:.2f}×)",
        )
    report.finish(args.json, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

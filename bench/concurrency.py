"""Benchmark 4: one poll cycle of 23 providers whose list pages each take 50 ms at the gateway, and the exporter's CPU
per batch polled.

The project's simulator runs in its own process (a static store, 500 batches per provider, so 5 pages at the
default page_size of 100, every page delayed 50 ms; every provider honours the list cursor). The exporter's own
client and poller run here in `full` mode (a cycle lists every batch: the cost the target is about; an incremental
cycle lists a page or two). Baseline in the same run: each provider's poll alone, one after the other; the slowest
of them is what a fully concurrent cycle should cost. Runs with request pacing off (max_requests_per_second 1000:
the CPU and scheduling question alone) and at the default 10 requests/s per provider (what a deployment does).

CPU per batch polled: process CPU time of this process (the exporter: HTTP client, parse, ledger, snapshot; the
simulator is another process) per concurrent cycle, divided by the batches it polled; baseline: `json.loads` of the
very bytes the gateway sent for those pages (fetched once, best of 15 rounds: a round disturbed by the shared
machine would flatter the ratio). A middle row splits the figure: the same bytes parsed and folded as a full-mode
poll folds them (`parse_page`, the ledger's `observe_page`, the snapshot builder), in-process, without HTTP, best of
15 rounds; what the cycle costs beyond it is the request path (HTTP, pacing, scheduling, the list walk). A
floor row fetches the same pages in the same concurrent pattern through the exporter's own connection pool and does
nothing else (no parse, no fold, no pacing): what receiving a page costs this process at the gateway's pace (the
kernel's TCP work and, on a VM, waking an idle vCPU for each page), which no parser or fold can lower.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from bench.common import PROVIDERS_23, Child, Report, children, parser, python_module
from exporter import allocator
from exporter.client import BifrostClient, build_headers
from exporter.logs import configure
from exporter.models import parse_page
from exporter.poller import Poller
from exporter.providers import page_size_for
from exporter.settings import Settings

TARGET = 1.2
CPU_TARGET = 1.5
UNPACED = 1000.0


@dataclass(slots=True)
class Measured:
    alone: dict[str, float]
    cycles: list[float]
    cpu_per_cycle: float
    batches_per_cycle: int
    loads_per_batch: float  # seconds of json.loads per batch, same bytes
    fold_per_batch: float  # seconds of parse + fold per batch, same bytes, no HTTP
    fetch_per_batch: float  # CPU seconds per batch to fetch the same pages through the pool alone (the floor)
    gateway_cpu_per_cycle: float  # the simulator process's CPU seconds per concurrent cycle


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of another process, from /proc (the simulator serving the pages)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def page_bodies(url: str, settings: Settings, provider: str) -> list[tuple[str, bytes]]:
    """Every list page of `provider` as the gateway sends it to the exporter (same headers, limit and cursors),
    each with its request target."""
    pages: list[tuple[str, bytes]] = []
    after: str | None = None
    headers = build_headers(settings)
    while True:
        params = {"provider": provider, "limit": str(page_size_for(provider, settings.page_size) or "")}
        if after is not None:
            params["after"] = after
        target = f"/v1/batches?{urlencode(params)}"
        request = urllib.request.Request(f"{url}{target}", headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        pages.append((target, body))
        page = json.loads(body)
        if not page.get("has_more"):
            return pages
        after = page.get("next_cursor") or page.get("last_id")


async def fetch_seconds(client: BifrostClient, targets: dict[str, list[str]], cycles: int) -> float:
    """CPU seconds per cycle of fetching every provider's pages, providers concurrently and each provider's pages
    one after the other (as a list walk must), through the exporter's connection pool and nothing else."""

    async def walk(provider: str) -> None:
        pool = client._pool_for(provider)
        for target in targets[provider]:
            await pool.get(client.request_head(target), 1 << 30)

    async def cycle() -> None:
        await asyncio.gather(*(walk(p) for p in targets))

    await cycle()  # the connections open
    cpu0 = time.process_time()
    for _ in range(cycles):
        await cycle()
    return (time.process_time() - cpu0) / cycles


def fold_seconds(poller: Poller, bodies: dict[str, list[bytes]], rounds: int) -> float:
    """CPU seconds of the full-mode fold of `bodies` without HTTP: what each page costs once it has arrived. The
    poller's own ledgers (already warm: these batches are known, as in the measured cycles) and snapshot builder."""
    best = float("inf")
    now = time.time()
    for _ in range(rounds):
        t0 = time.process_time()
        for provider, pages in bodies.items():
            ledger = poller._ledgers[provider]
            builder = poller._builder(provider, ledger, now)
            for body in pages:
                batches = list(parse_page(body).batches)
                ledger.observe_page(batches, now)
                builder.add(batches)
            builder.build(now)
        best = min(best, time.process_time() - t0)
    return best


def loads_seconds(bodies: list[bytes], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        for body in bodies:
            json.loads(body)
        best = min(best, time.process_time() - t0)
    return best


async def measure(
    url: str, providers: tuple[str, ...], cycles: int, page_size: int, rate: float, gateway_pid: int
) -> Measured:
    settings = Settings(
        bifrost_url=url,
        providers=providers,
        log_level="warning",
        page_size=page_size,
        poll_mode="full",
        max_requests_per_second=rate,
    )
    configure("warning", "json", [])
    allocator.tune()  # the daemon's malloc settings (exporter/cli.py): they change the CPU of every page
    client = BifrostClient(settings)
    poller = Poller(settings, client)
    try:
        await poller.poll_all_once()  # warm-up: connections, first parse
        alone: dict[str, float] = {}
        for provider in providers:
            t0 = time.perf_counter()
            state = await poller.poll(provider)
            alone[provider] = time.perf_counter() - t0
            if not state.health.up or state.health.truncated or state.snapshot is None:
                raise RuntimeError(f"{provider}: poll failed or partial")
        cycle: list[float] = []
        batches = 0
        cpu0 = time.process_time()
        gateway0 = process_cpu(gateway_pid)
        for _ in range(cycles):
            t0 = time.perf_counter()
            states = await poller.poll_all_once()
            cycle.append(time.perf_counter() - t0)
            bad = [p for p, s in states.items() if not s.health.up or s.health.truncated]
            if bad:
                raise RuntimeError(f"poll failed or partial for {bad}")
            batches = sum(s.snapshot.batches for s in states.values() if s.snapshot is not None)
        cpu = (time.process_time() - cpu0) / cycles
        gateway_cpu = (process_cpu(gateway_pid) - gateway0) / cycles
        fetched = {p: page_bodies(url, settings, p) for p in providers}
        by_provider = {p: [body for _, body in pages] for p, pages in fetched.items()}
        targets = {p: [target for target, _ in pages] for p, pages in fetched.items()}
        fetch = await fetch_seconds(client, targets, cycles) / max(1, batches)
    finally:
        await client.aclose()
    loads = loads_seconds([b for pages in by_provider.values() for b in pages], 15) / max(1, batches)
    fold = fold_seconds(poller, by_provider, 15) / max(1, batches)
    return Measured(alone, cycle, cpu, batches, loads, fold, fetch, gateway_cpu)


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
        ("default pages (100 batches), pacing off", per_provider, 100, UNPACED),
        ("default pages (100 batches), default pacing (10 requests/s)", per_provider, 100, 10.0),
        ("light pages (10 batches), pacing off", per_provider // 10, 10, UNPACED),
    ]
    results: list[tuple[str, int, int, float, Measured]] = []
    for label, count, page_size, rate in runs:
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
                    "--honour-cursor",
                ),
                name="simulator",
            )
            procs.append(sim)
            url = f"http://127.0.0.1:{sim.ready_port()}"
            results.append(
                (
                    label,
                    page_size,
                    count,
                    rate,
                    asyncio.run(measure(url, providers, cycles, page_size, rate, sim.pid)),
                )
            )
    for label, page_size, count, rate, m in results:
        slowest_name = max(m.alone, key=lambda p: m.alone[p])
        slowest = m.alone[slowest_name]
        pages = -(-count // page_size)
        median = statistics.median(m.cycles)
        per_batch = m.cpu_per_cycle / max(1, m.batches_per_cycle)
        report.table(
            f"Poll concurrency, {label}: {len(providers)} providers × {pages} pages, {delay * 1e3:.0f} ms per page "
            f"at the gateway, full mode, default connection pool; {cycles} cycles",
            ["what", "seconds", "vs slowest provider alone"],
            [
                [f"slowest provider alone ({slowest_name}; baseline)", slowest, "1.00×"],
                ["median provider alone", statistics.median(m.alone.values()), ""],
                [
                    "all providers one after the other (sum)",
                    sum(m.alone.values()),
                    f"{sum(m.alone.values()) / slowest:.2f}×",
                ],
                ["one poll cycle of all, concurrent (median)", median, f"{median / slowest:.2f}×"],
                [
                    "one poll cycle of all, concurrent (worst)",
                    max(m.cycles),
                    f"{max(m.cycles) / slowest:.2f}×",
                ],
                ["exporter CPU per concurrent cycle", m.cpu_per_cycle, f"{m.cpu_per_cycle / slowest:.2f}×"],
                [
                    "gateway (simulator process) CPU per concurrent cycle",
                    m.gateway_cpu_per_cycle,
                    f"{m.gateway_cpu_per_cycle / slowest:.2f}×",
                ],
            ],
        )
        report.table(
            f"Exporter CPU per batch polled, {label}",
            ["what", "µs per batch", "vs json.loads"],
            [
                ["json.loads of the same bytes (baseline)", m.loads_per_batch * 1e6, "1.00×"],
                [
                    "fetching the same pages through the exporter's pool alone, nothing parsed (the floor)",
                    m.fetch_per_batch * 1e6,
                    f"{m.fetch_per_batch / m.loads_per_batch:.2f}×",
                ],
                [
                    "parse + fold of the same bytes, no HTTP (parse_page, ledger, snapshot)",
                    m.fold_per_batch * 1e6,
                    f"{m.fold_per_batch / m.loads_per_batch:.2f}×",
                ],
                [
                    f"exporter, HTTP included ({m.batches_per_cycle:,} batches per cycle)",
                    per_batch * 1e6,
                    f"{per_batch / m.loads_per_batch:.2f}×",
                ],
            ],
        )
        if args.smoke:
            continue
        if rate == UNPACED or page_size == 100:
            report.check(
                f"poll cycle vs slowest provider alone, {label}",
                median / slowest,
                f"≤ {TARGET}×",
                median / slowest <= TARGET,
                f"{median / slowest:.2f}× (median of {cycles}; worst {max(m.cycles) / slowest:.2f}×; "
                f"exporter CPU {m.cpu_per_cycle:.2f} s per cycle)",
            )
        if page_size == 100 and rate == UNPACED:
            ratio = per_batch / m.loads_per_batch
            report.check(
                "exporter CPU per batch polled (HTTP included) vs json.loads",
                ratio,
                f"≤ {CPU_TARGET}×",
                ratio <= CPU_TARGET,
                f"{per_batch * 1e6:.1f} µs vs {m.loads_per_batch * 1e6:.1f} µs per batch ({ratio:.2f}×; "
                f"parse + fold alone {m.fold_per_batch / m.loads_per_batch:.2f}×, the request path "
                f"{(per_batch - m.fold_per_batch) / m.loads_per_batch:.2f}×, of which receiving the pages alone "
                f"{m.fetch_per_batch / m.loads_per_batch:.2f}×)",
            )
    report.finish(args.json, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

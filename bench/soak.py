"""Soak: thousands of poll cycles against the simulator in one process, watching memory and the ledger.

Time is simulated (each cycle advances both clocks by --step seconds), so 10,000 cycles cover weeks of batch churn:
batches are created, run, finish and are trimmed by the simulator; the ledger must count each finish once and forget
ids after its 48 h retention. Every --fault-every cycles one request fails (5xx, HTML, malformed JSON, timeout-free
faults), so the error paths soak too. Each cycle ends with a render and a /metrics request through the routes.

    python bench/soak.py --cycles 10000            # the issue's figure: RSS after 1,000 vs after 10,000 cycles
    python bench/soak.py --cycles 1000 --json out.json

Pass criteria (exit 1 otherwise): RSS growth between the baseline (after 10 % of the cycles, and after the ledger's
48 h retention window has filled once) and the end < 10 %, and the ledger's tracked ids bounded (no more than 10 %
above their highest level during the first resync period after the retention window was first reached: incremental
polling tracks new batches between resyncs and forgets the gone ones at the next full list).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import math
import multiprocessing
import os
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.app import Exporter
from exporter.ledger import RETENTION_SECONDS
from exporter.logs import configure
from exporter.settings import Settings
from exporter.simulator import ProviderSpec, Simulator

FAULT_ROTATION = ("server_error", "html", "malformed_json", "not_list", "repeat_page", "bad_gateway")
START = 1_800_000_000.0


class SimulatorProcess:
    """The simulator in a child process sharing our simulated clock, so the RSS we measure is the exporter's alone
    (the simulator keeps a request log and its own batches) and the two do not contend for one GIL."""

    def __init__(self, max_batches: int) -> None:
        ctx: Any = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        self.clock = ctx.Value("d", START, lock=False)
        self._stop = ctx.Event()
        urls: Any = ctx.Queue()
        self._proc = ctx.Process(
            target=_run_simulator, args=(self.clock, max_batches, urls, self._stop), daemon=True
        )
        self._proc.start()
        self.url: str = urls.get(timeout=30)

    def set_fault(self, name: str) -> None:
        request = urllib.request.Request(
            self.url + "/_sim/fault", data=json.dumps({"fault": name, "times": 1}).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def stop(self) -> None:
        self._stop.set()
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()


def _run_simulator(clock: Any, max_batches: int, urls: Any, stop: Any) -> None:
    sim = Simulator(
        providers=[ProviderSpec("openai", keys=2), ProviderSpec("anthropic", style="legacy")],
        seed=11,
        clock=lambda: float(clock.value),
        initial_batches=50,
        latency_ms=5,
        max_batches=max_batches,
    ).start()
    urls.put(sim.url)
    stop.wait()
    sim.stop()


def rss_bytes() -> int:
    """Resident set size now (not the peak), from /proc; 0 where there is no /proc."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


@dataclass
class SoakResult:
    cycles: int
    step_seconds: float
    seconds: float
    rss_at_baseline: int
    baseline_cycle: int
    rss_at_end: int
    rss_growth: float
    tracked_ids_at_retention: int
    tracked_ids_max_after: int
    tracked_ids_end: int
    retention_cycle: int
    polls: int
    pages: int
    finished_total: int
    errors: dict[str, int]
    rss_samples: list[tuple[int, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.rss_growth < 0.10 and self.tracked_ids_max_after <= 1.10 * max(
            1, self.tracked_ids_at_retention
        )


async def _soak(
    cycles: int,
    step: float,
    fault_every: int,
    baseline_cycle: int,
    render_every: int,
    max_batches: int,
    retention: float,
) -> SoakResult:
    now = [START]
    clock = lambda: now[0]  # noqa: E731
    sim = SimulatorProcess(max_batches)
    settings = Settings(
        bifrost_url=sim.url,
        providers=["openai", "anthropic"],
        listen_address="127.0.0.1:0",
        max_retries=0,
        page_size=100,
        per_batch_metrics=False,  # the default; the per-batch series are capped by per_batch_limit anyway
        poll_interval_seconds=step,
        log_level="warning",
        log_format="json",
    )
    exporter = Exporter(settings, clock=clock, monotonic=clock)
    # The running app re-renders on a dirty flag; here rendering every few cycles keeps the soak affordable while
    # still churning render output (and a /metrics request) through memory.
    exporter.poller._on_change = lambda: None
    for ledger in exporter.poller._ledgers.values():
        ledger.retention = retention
    retention_cycle = int(retention / step) + 1
    resync_cycles = math.ceil(settings.resync_interval_seconds / step) + 1
    tracked_at_retention = 0
    tracked_max_after = 0
    rss_baseline = 0
    samples: list[tuple[int, int]] = []
    started = time.perf_counter()
    try:
        for cycle in range(1, cycles + 1):
            now[0] += step
            sim.clock.value = now[0]
            if fault_every and cycle % fault_every == 0:
                sim.set_fault(FAULT_ROTATION[(cycle // fault_every) % len(FAULT_ROTATION)])
            await exporter.poller.poll_all_once()
            if cycle % render_every == 0:
                exporter.refresh()
                answer = exporter.routes.handle("GET", "/metrics", {"accept-encoding": "gzip"})
                response = await answer if isinstance(answer, asyncio.Future) else answer
                assert response.status == 200
            tracked = sum(s.ledger.tracked_ids for s in exporter.poller.states.values())
            # Incremental polling tracks new batches between resyncs and forgets the gone ones at the next full
            # list: a sawtooth with the resync period. The level at retention is the top of one period of it.
            if retention_cycle <= cycle < retention_cycle + resync_cycles:
                tracked_at_retention = max(tracked_at_retention, tracked)
            elif cycle >= retention_cycle + resync_cycles:
                tracked_max_after = max(tracked_max_after, tracked)
            if cycle in (baseline_cycle, cycles) or cycle % max(1, cycles // 20) == 0:
                gc.collect()
                samples.append((cycle, rss_bytes()))
                if cycle == baseline_cycle:
                    rss_baseline = samples[-1][1]
        seconds = time.perf_counter() - started
        gc.collect()
        rss_end = rss_bytes()
        states = exporter.poller.states.values()
        errors: dict[str, int] = {}
        for state in states:
            for reason, count in state.ledger.errors.items():
                errors[reason] = errors.get(reason, 0) + count
        return SoakResult(
            cycles=cycles,
            step_seconds=step,
            seconds=round(seconds, 2),
            rss_at_baseline=rss_baseline,
            baseline_cycle=baseline_cycle,
            rss_at_end=rss_end,
            rss_growth=round((rss_end - rss_baseline) / rss_baseline, 4) if rss_baseline else 0.0,
            tracked_ids_at_retention=tracked_at_retention,
            tracked_ids_max_after=tracked_max_after,
            tracked_ids_end=tracked,
            retention_cycle=retention_cycle,
            polls=sum(s.ledger.polls for s in states),
            pages=sum(s.ledger.requests.get("list", 0) for s in states),
            finished_total=sum(sum(s.ledger.finished.values()) for s in states),
            errors={k: v for k, v in errors.items() if v},
            rss_samples=samples,
        )
    finally:
        await exporter.client.aclose()
        sim.stop()


def soak(
    cycles: int = 10_000,
    *,
    step: float = 600.0,
    fault_every: int = 50,
    baseline_cycle: int | None = None,
    render_every: int = 10,
    max_batches: int = 120,
    retention: float = RETENTION_SECONDS,
) -> SoakResult:
    """Run the soak; the baseline RSS is taken after `baseline_cycle` cycles (default: 10 % of them, but never
    before the ledger's retention window has filled, i.e. before it can reach its steady size)."""
    configure("warning", "json", [], stream=io.StringIO())
    if baseline_cycle is None:
        baseline_cycle = max(int(retention / step) + 100, cycles // 10)
    return asyncio.run(_soak(cycles, step, fault_every, baseline_cycle, render_every, max_batches, retention))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=10_000)
    parser.add_argument("--step", type=float, default=600.0, help="simulated seconds per cycle")
    parser.add_argument("--fault-every", type=int, default=50)
    parser.add_argument("--render-every", type=int, default=10)
    parser.add_argument(
        "--max-batches", type=int, default=120, help="batches the simulator keeps per provider"
    )
    parser.add_argument(
        "--retention-hours", type=float, default=RETENTION_SECONDS / 3600, help="ledger retention"
    )
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    result = soak(
        args.cycles,
        step=args.step,
        fault_every=args.fault_every,
        render_every=args.render_every,
        max_batches=args.max_batches,
        retention=args.retention_hours * 3600,
    )
    data: dict[str, Any] = asdict(result)
    data["ok"] = result.ok
    mib = 1024 * 1024
    print(
        f"soak: {result.cycles} cycles ({result.cycles * result.step_seconds / 86400:.0f} simulated days) "
        f"in {result.seconds:.1f}s; RSS {result.rss_at_baseline / mib:.1f} MiB after {result.baseline_cycle} cycles "
        f"-> {result.rss_at_end / mib:.1f} MiB at the end ({result.rss_growth:+.1%}); ledger ids "
        f"{result.tracked_ids_at_retention} at retention (cycle {result.retention_cycle}), max "
        f"{result.tracked_ids_max_after} after, {result.tracked_ids_end} at the end; {result.pages} pages, "
        f"{result.finished_total} batches finished, errors {result.errors}; {'OK' if result.ok else 'FAIL'}"
    )
    if args.json:
        args.json.write_text(json.dumps(data, indent=2))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark 3: resident memory of the exporter process by batches held (per-batch series off), on two workloads.

The exporter runs as deployed (``python -m exporter``) in its own process; only its /proc/<pid>/status is read, so
the gateway's memory is never counted. RSS is VmRSS; "peak" is VmHWM, the most the process ever held, startup and
every poll before the reading included.

- **Realistic mix** (issue 20): three providers, 100 batches running on each at any moment, the rest finished over
  the last three weeks (bench/account.py). Read twice: after the first full list of every provider, and after an
  hour of steady state (120 polls, full lists every 600 s, about 17 transitions and arrivals per poll, the oldest
  batches falling off the end), with time compressed 30 times: the account's clock, the poll and resync intervals
  and the request rate all scaled alike, so the hour's polls, full lists and transitions happen in minutes. The
  baseline is the same exporter with three empty lists.
- **Present mix** (the v2 benchmark, kept for comparison): 23 providers, each list pages of one template of
  generated batches; at page_size 100 every page is the template's newest 100, which are all running, so this is
  the cost of an active batch; at page_size 1000 (a third running) of a mixed list. Baseline: 23 empty lists.

Per-batch bytes are (RSS − baseline) / batches: per finished batch on the realistic mix (300 of a million are
active), per active batch on the present mix at page_size 100.
"""

from __future__ import annotations

import time

from bench.common import (
    PROVIDERS_23,
    REALISTIC_ACTIVE,
    REALISTIC_PROVIDERS,
    Report,
    batches_listed,
    children,
    compressed_env,
    gauge_values,
    http_get,
    memory_of,
    parser,
    start_account,
    start_exporter,
    start_feeder,
    wait_until,
)

MB = 1024 * 1024
DEFAULT_PAGE_SIZE = 100
SPEED = 30.0  # account seconds per wall second in the realistic runs
STEADY_POLLS = 120  # an hour at the default 30 s interval
TARGET_1M_MIB = 160.0
TARGET_100K_MIB = 64.0
TARGET_FINISHED_BYTES = 250.0
TARGET_ACTIVE_BYTES = 1024.0


def measure_present(total: int, page_size: int = DEFAULT_PAGE_SIZE) -> tuple[int, int, float]:
    """(RSS, peak RSS, seconds of the first poll) of an exporter holding `total` batches over 23 providers."""
    per_provider = -(-total // len(PROVIDERS_23))
    with children() as procs:
        feeder, url = start_feeder(PROVIDERS_23, per_provider)
        procs.append(feeder)
        exporter, port, took = start_exporter(url, PROVIDERS_23, timeout=900, page_size=page_size)
        procs.append(exporter)
        http_get(f"http://127.0.0.1:{port}/metrics")  # one scrape, as Prometheus would do at once
        time.sleep(0.5)
        rss, hwm = memory_of(exporter.pid)
    return rss, hwm, took


class Realistic:
    """One realistic-mix run: (RSS, peak) after the first full list and after the steady hour."""

    def __init__(self, total: int, steady_polls: int) -> None:
        self.total = total
        self.steady_polls = steady_polls
        self.first: tuple[int, int] = (0, 0)
        self.steady: tuple[int, int] = (0, 0)
        self.first_seconds = 0.0
        self.steady_seconds = 0.0
        self.full_lists = 0  # full lists completed per provider during the steady phase (the fewest)

    def run(self) -> Realistic:
        providers = REALISTIC_PROVIDERS
        per_provider = self.total // len(providers)
        with children() as procs:
            account, url = start_account(providers, per_provider, active=REALISTIC_ACTIVE, speed=SPEED)
            procs.append(account)
            exporter, port, _ = start_exporter(
                url, providers, timeout=900, page_size=DEFAULT_PAGE_SIZE, extra_env=compressed_env(SPEED)
            )
            procs.append(exporter)
            started = time.perf_counter()

            def listed_in_full() -> bool:
                partial = gauge_values(port, "bifrost_batch_exporter_truncated")
                held = batches_listed(port)
                return (
                    len(partial) == len(providers)
                    and not any(partial.values())
                    and all(held.get(p, 0) >= per_provider for p in providers)
                )

            wait_until(listed_in_full, 1800, "the first full list of every provider", interval=0.2)
            self.first_seconds = time.perf_counter() - started
            self.first = memory_of(exporter.pid)
            polls0 = gauge_values(port, "bifrost_batch_exporter_polls_total")
            resyncs0 = gauge_values(port, "bifrost_batch_exporter_last_resync_timestamp_seconds")
            seen: dict[str, set[float]] = {p: set() for p in providers}
            started = time.perf_counter()

            def steady_done() -> bool:
                polls = gauge_values(port, "bifrost_batch_exporter_polls_total")
                for p, at in gauge_values(
                    port, "bifrost_batch_exporter_last_resync_timestamp_seconds"
                ).items():
                    if at != resyncs0.get(p):
                        seen[p].add(at)
                return all(polls.get(p, 0) - polls0.get(p, 0) >= self.steady_polls for p in providers)

            wait_until(steady_done, 3600, "the steady polls", interval=0.5)
            self.steady_seconds = time.perf_counter() - started
            http_get(f"http://127.0.0.1:{port}/metrics")
            self.steady = memory_of(exporter.pid)
            self.full_lists = min(len(v) for v in seen.values())
        return self


def realistic_baseline() -> tuple[int, int]:
    with children() as procs:
        account, url = start_account(REALISTIC_PROVIDERS, 0, speed=SPEED)
        procs.append(account)
        exporter, port, _ = start_exporter(
            url,
            REALISTIC_PROVIDERS,
            timeout=300,
            page_size=DEFAULT_PAGE_SIZE,
            extra_env=compressed_env(SPEED),
        )
        procs.append(exporter)
        time.sleep(2.0)  # a few polls
        http_get(f"http://127.0.0.1:{port}/metrics")
        return memory_of(exporter.pid)


def main() -> int:
    args = parser(__doc__ or "").parse_args()
    started = time.perf_counter()
    report = Report("memory", args.smoke)

    # Realistic mix.
    sizes = (3_000, 30_000) if args.smoke else (10_000, 100_000, 1_000_000)
    steady_polls = 5 if args.smoke else STEADY_POLLS
    base_rss, base_hwm = realistic_baseline()
    rows: list[list[object]] = [["0 (baseline)", base_rss / MB, base_hwm / MB, "", "", "", ""]]
    runs: dict[int, Realistic] = {}
    for n in sizes:
        run = runs[n] = Realistic(n, steady_polls).run()
        for phase, (rss, hwm), seconds in (
            ("first full list", run.first, run.first_seconds),
            (f"+ {steady_polls} polls, {run.full_lists} full lists", run.steady, run.steady_seconds),
        ):
            rows.append([f"{n:,}", rss / MB, hwm / MB, phase, round((rss - base_rss) / n),
                         round((hwm - base_rss) / n), f"{seconds:.0f} s"])  # fmt: skip
    report.table(
        "Realistic mix: 3 providers, 100 running each, the rest finished over 3 weeks "
        f"(page_size 100; time compressed {SPEED:g}×; baseline: 3 empty lists)",
        ["batches", "RSS MiB", "peak MiB", "after", "B/batch over baseline", "peak B/batch", "took"],
        rows,
    )

    # Present mix.
    present_sizes = (1_000, 5_000) if args.smoke else (10_000, 100_000, 1_000_000)
    base23, base23_hwm, _ = measure_present(0)
    present: list[list[object]] = [["0 (baseline)", base23 / MB, base23_hwm / MB, "", "", ""]]
    per_active: dict[int, float] = {}
    for n in present_sizes:
        rss, hwm, took = measure_present(n)
        per_active[n] = (rss - base23) / n
        present.append(
            [f"{n:,}", rss / MB, hwm / MB, f"{rss / base23:.2f}×", round(per_active[n]), f"{took:.1f} s"]
        )
    mixed = 10_000 if args.smoke else 100_000
    rss, hwm, took = measure_present(mixed, page_size=1000)
    per_mixed = (rss - base23) / mixed
    present.append([f"{mixed:,} (page_size 1000)", rss / MB, hwm / MB, f"{rss / base23:.2f}×", round(per_mixed),
                    f"{took:.1f} s"])  # fmt: skip
    report.table(
        "Present mix: 23 providers (page_size 100: every batch active; page_size 1000: a third active; "
        "baseline: 23 empty lists)",
        ["batches", "RSS MiB", "peak MiB", "RSS vs baseline", "B/batch over baseline", "first poll"],
        present,
    )
    if args.smoke:
        report.finish(args.json, started)
        return 0

    big, mid = runs[1_000_000], runs[100_000]
    for name, run, target in (("1M batches", big, TARGET_1M_MIB), ("100k batches", mid, TARGET_100K_MIB)):
        peak_mib = max(run.first[1], run.steady[1]) / MB
        rss_mib = max(run.first[0], run.steady[0]) / MB
        report.check(
            f"RSS at {name}, realistic mix (peak included)",
            peak_mib,
            f"≤ {target:.0f} MiB",
            peak_mib <= target,
            f"RSS {rss_mib:.1f} MiB, peak {peak_mib:.1f} MiB",
        )
    finished = (big.steady[0] - base_rss) / (1_000_000 - len(REALISTIC_PROVIDERS) * REALISTIC_ACTIVE)
    report.check(
        "bytes per finished batch (realistic mix, 1M, after the steady hour)",
        finished,
        f"≤ {TARGET_FINISHED_BYTES:.0f} B",
        finished <= TARGET_FINISHED_BYTES,
        f"{finished:.0f} B",
    )
    active = per_active[100_000]
    report.check(
        "bytes per active batch (present mix, page_size 100: all active, 100k)",
        active,
        f"≤ {TARGET_ACTIVE_BYTES:.0f} B",
        active <= TARGET_ACTIVE_BYTES,
        f"{active:.0f} B",
    )
    # The present mix at page_size 1000 holds the template's whole mix: 38 % active (openai's template), the rest
    # finished; with the active cost above, what a finished batch of that mix costs.
    share = 0.38
    report.note(
        f"present mix at page_size 1000: {per_mixed:.0f} B/batch; with {active:.0f} B per active batch and a "
        f"{share:.0%} active share, {(per_mixed - share * active) / (1 - share):.0f} B per finished batch"
    )
    report.finish(args.json, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark 3: resident memory of the exporter process holding 10k, 100k and 1M batches (per-batch series off).

The exporter runs as deployed (``python -m exporter``, default page_size 100) in its own process and polls a feeder
process once; only the
exporter's /proc/<pid>/status is read, so the feeder's memory is never counted. The baseline is the same exporter
with the same 23 providers and an empty list. RSS is read after the first complete poll of every provider; VmHWM
(the peak during that poll) is shown too.
"""

from __future__ import annotations

import time

from bench.common import (
    PROVIDERS_23,
    Report,
    children,
    http_get,
    memory_of,
    parser,
    start_exporter,
    start_feeder,
)

MB = 1024 * 1024
TARGET_100K_MB = 80.0


DEFAULT_PAGE_SIZE = 100


def measure(total: int, page_size: int = DEFAULT_PAGE_SIZE) -> tuple[int, int, float]:
    """(RSS, peak RSS, seconds of the first poll) of an exporter holding `total` batches over 23 providers."""
    per_provider = -(-total // len(PROVIDERS_23))
    with children() as procs:
        feeder, url = start_feeder(PROVIDERS_23, per_provider)
        procs.append(feeder)
        exporter, port, took = start_exporter(url, PROVIDERS_23, timeout=600, page_size=page_size)
        procs.append(exporter)
        http_get(f"http://127.0.0.1:{port}/metrics")  # one scrape, as Prometheus would do at once
        time.sleep(0.5)
        rss, hwm = memory_of(exporter.pid)
    return rss, hwm, took


def main() -> int:
    args = parser(__doc__ or "").parse_args()
    started = time.perf_counter()
    report = Report("memory", args.smoke)
    sizes = (1_000, 5_000) if args.smoke else (10_000, 100_000, 1_000_000)
    base_rss, base_hwm, _ = measure(0)
    rows: list[list[object]] = [["0 (baseline)", base_rss / MB, base_hwm / MB, "", "", ""]]
    per_batch: dict[int, float] = {}
    for n in sizes:
        rss, hwm, took = measure(n)
        per = (rss - base_rss) / n
        per_batch[n] = per
        rows.append(
            [
                f"{n:,}",
                rss / MB,
                hwm / MB,
                f"{rss / base_rss:.2f}×",
                round(per),
                f"{took:.1f} s",
            ]
        )
    if not args.smoke:
        # Bigger pages mean fewer requests but more batches parsed at once: 23 providers × page_size in memory.
        rss, hwm, took = measure(100_000, page_size=1000)
        rows.append(
            [
                "100,000 (page_size 1000)",
                rss / MB,
                hwm / MB,
                f"{rss / base_rss:.2f}×",
                round((rss - base_rss) / 100_000),
                f"{took:.1f} s",
            ]
        )
    report.table(
        "Exporter RSS by batches held (23 providers, page_size 100 unless noted, per-batch off; "
        "baseline: same exporter, empty lists)",
        ["batches", "RSS MB", "peak RSS MB", "RSS vs baseline", "bytes/batch over baseline", "first poll"],
        rows,
    )
    if not args.smoke:
        rss_100k = base_rss + per_batch[100_000] * 100_000
        report.check(
            "RSS at 100k batches",
            rss_100k / MB,
            f"≤ {TARGET_100K_MB:.0f} MB",
            rss_100k / MB <= TARGET_100K_MB,
            f"{rss_100k / MB:.1f} MB",
        )
        growth = per_batch[1_000_000] / per_batch[100_000]
        report.check(
            "growth 100k → 1M (bytes/batch ratio)",
            growth,
            "≤ 1.1 (linear or better)",
            growth <= 1.1,
            f"{per_batch[100_000]:.0f} → {per_batch[1_000_000]:.0f} B/batch ({growth:.2f}×)",
        )
    report.finish(args.json, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

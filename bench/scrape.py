"""Benchmark 2: the cost of a scrape with 100,000 batches tracked across 23 providers.

Three servers, each in its own process, answer GET /metrics with the same series while ``wrk`` (one thread, 16
keep-alive connections, on the other core) loads them:

- ours: the real exporter (``python -m exporter``) after its first poll of a feeder process holding the batches;
- static: the very bytes ours serves, returned by our own HttpServer through a Routes that always answers them —
  the limit of the HTTP stack, with no exporter logic at all;
- naive: the same series the common way — labelled prometheus_client Gauges in their own registry, set from the
  poll, served by ``prometheus_client.start_http_server`` (which renders the registry on every scrape).

Done twice: per-batch series off (the default), and on (at most 500 active batches per provider). Each server is
loaded in rounds that alternate between the servers; the round with the most requests/s counts.

``--server-decision`` runs only the comparison of issue 11 item 8 instead: the same pre-rendered bytes served by our
HttpServer, by aiohttp's low-level server and by h11 driving an asyncio protocol (``pip install aiohttp`` first),
under the same wrk load, plus how each answers the framing table of tests/test_http_framing.py.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.common import (
    PROVIDERS_23,
    Child,
    Report,
    WrkResult,
    children,
    have_wrk,
    http_get,
    load,
    parser,
    python_module,
    ratio,
    start_exporter,
    start_feeder,
)

TARGET_VS_NAIVE = 20.0
TARGET_VS_STATIC = 1 / 3
TARGET_P99_MS = 10.0


def _series(body: bytes) -> int:
    return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))


# What Prometheus sends (scrape_protocols default, with compression): OpenMetrics preferred, gzip accepted.
PROMETHEUS_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1",
    "Accept-Encoding": "gzip",
}
VARIANTS: tuple[tuple[str, dict[str, str]], ...] = (
    ("plain", {}),
    ("prometheus", PROMETHEUS_HEADERS),
)
SERVERS = (
    ("ours", "exporter (pre-rendered bytes)"),
    ("static", "limit: same bytes, same HttpServer, fixed Routes"),
    ("naive", "naive: prometheus_client Gauges + start_http_server"),
)


def scenario(
    report: Report, url: str, per_batch: bool, seconds: float, rounds: int, tmp: Path, total: int
) -> tuple[dict[tuple[str, str], WrkResult], float]:
    """Best result per (variant, server): most requests/s and lowest p99 over the rounds (each a best-of, as
    timeit does, because other work on a shared machine only ever makes a round worse); and the seconds one
    plain scrape of the naive server takes on an idle server."""
    best: dict[tuple[str, str], WrkResult] = {}
    sizes: dict[str, int] = {}
    with children() as procs:
        exporter, port, _ = start_exporter(url, PROVIDERS_23, per_batch=per_batch)
        procs.append(exporter)
        ours = f"http://127.0.0.1:{port}/metrics"
        status, body = http_get(ours)
        assert status == 200
        exposition = tmp / f"metrics-{per_batch}.txt"
        exposition.write_bytes(body)
        naive = Child(python_module("bench.servers", "naive", "--file", str(exposition)), name="naive")
        procs.append(naive)
        naive_url = f"http://127.0.0.1:{naive.ready_port()}/metrics"
        t0 = time.perf_counter()
        _, naive_body = http_get(naive_url, timeout=300)
        naive_alone = time.perf_counter() - t0
        targets: dict[tuple[str, str], str] = {}
        for variant, headers in VARIANTS:
            _, variant_body = http_get(ours, headers=headers)
            sizes[variant] = len(variant_body)
            static_file = tmp / f"static-{per_batch}-{variant}"
            static_file.write_bytes(variant_body)
            gzip_flag = ["--gzip"] if "gzip" in headers.get("Accept-Encoding", "") else []
            static = Child(
                python_module("bench.servers", "static", "--file", str(static_file), *gzip_flag),
                name="static",
            )
            procs.append(static)
            targets[(variant, "ours")] = ours
            targets[(variant, "static")] = f"http://127.0.0.1:{static.ready_port()}/metrics"
            targets[(variant, "naive")] = naive_url
        for _ in range(rounds):
            for (variant, name), target in targets.items():
                result = load(
                    target,
                    seconds=seconds,
                    timeout=30.0 if name == "naive" else 10.0,
                    headers=dict(VARIANTS)[variant],
                )
                key = (variant, name)
                if key in best:
                    old = best[key]
                    result = WrkResult(
                        max(old.requests_per_second, result.requests_per_second),
                        min(old.p50_ms, result.p50_ms),
                        min(old.p99_ms, result.p99_ms),
                        old.requests + result.requests,
                        old.errors + result.errors,
                        max(old.mb_per_second, result.mb_per_second),
                    )
                best[key] = result
    label = "on (≤ 500 active batches per provider)" if per_batch else "off"
    rows: list[list[object]] = []
    for variant, _ in VARIANTS:
        encoding = (
            f"plain text ({sizes[variant] / 1e6:.2f} MB)"
            if variant == "plain"
            else f"as Prometheus asks: OpenMetrics + gzip ({sizes[variant] / 1e3:.0f} kB)"
        )
        mine = best[(variant, "ours")]
        for name, what in SERVERS:
            r = best[(variant, name)]
            rows.append(
                [
                    encoding if name == "ours" else "",
                    what,
                    r.requests_per_second,
                    r.p50_ms,
                    r.p99_ms,
                    r.errors,
                    ratio(mine.requests_per_second, r.requests_per_second) if name != "ours" else "",
                ]
            )
    report.table(
        f"Scrape cost, {total:,} batches / 23 providers, per-batch series {label}: {_series(body):,} series "
        f"(naive: {_series(naive_body):,}); wrk, 16 connections",
        ["request", "server", "requests/s", "p50 ms", "p99 ms", "errors", "ours ÷ this"],
        rows,
    )
    report.note(
        f"per-batch {'on' if per_batch else 'off'}: one scrape of the naive server alone takes "
        f"{naive_alone * 1e3:,.0f} ms (ours: {1e3 / best[('plain', 'ours')].requests_per_second * 16:.1f} ms "
        "per request at 16 in flight)"
    )
    return best, naive_alone


DECISION_SERVERS = (
    ("static", "ours: exporter.server.HttpServer"),
    ("aiohttp", "aiohttp low-level server (aiohttp.web.Server)"),
    ("h11", "h11 driving an asyncio protocol"),
)


def _framing_agreement(port: int) -> tuple[int, int]:
    """(rows of the framing table handled safely, rows) by a server on `port`: a valid request answered 200, and
    every other one refused (any 4xx/5xx) with a single response and the connection closed. Exact codes (414 vs
    400, say) do not count against a server."""
    import socket

    from tests.test_http_framing import FRAMING, statuses

    agree = 0
    for _, request, status in FRAMING:
        out, closed = b"", False
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            try:
                sock.sendall(request)
                sock.settimeout(0.5 if status < 400 else 3.0)
                while chunk := sock.recv(1 << 16):
                    out += chunk
                closed = True
            except (TimeoutError, ConnectionResetError, BrokenPipeError):
                closed = not out or closed
        got = statuses(out)
        if status < 400:
            agree += got[:1] == [200]
        else:
            agree += len(got) == 1 and got[0] >= 400 and closed
    return agree, len(FRAMING)


def server_decision(report: Report, seconds: float, rounds: int, tmp: Path) -> None:
    import gzip

    from tests.test_http_slow_readers import exposition

    text = exposition(11 * 1024 * 1024)
    bodies = (
        ("OpenMetrics + gzip, as Prometheus asks", gzip.compress(text[: 2 * 1024 * 1024], 6), True),
        ("plain text, 2 MB", text[: 2 * 1024 * 1024], False),
        ("plain text, 11 MB", text, False),
    )
    rows: list[list[object]] = []
    framing: dict[str, tuple[int, int]] = {}
    for label, body, gzipped in bodies:
        best: dict[str, WrkResult] = {}
        with children() as procs:
            path = tmp / "body"
            path.write_bytes(body)
            urls = {}
            for kind, _ in DECISION_SERVERS:
                args = ["--file", str(path)] + (["--gzip"] if gzipped else [])
                child = Child(python_module("bench.servers", kind, *args), name=kind)
                procs.append(child)
                port = child.ready_port()
                urls[kind] = f"http://127.0.0.1:{port}/metrics"
                if kind not in framing:
                    framing[kind] = _framing_agreement(port)
            for _ in range(rounds):
                for kind, url in urls.items():
                    result = load(url, seconds=seconds, timeout=30.0)
                    old = best.get(kind)
                    if old is not None:
                        result = WrkResult(
                            max(old.requests_per_second, result.requests_per_second),
                            min(old.p50_ms, result.p50_ms),
                            min(old.p99_ms, result.p99_ms),
                            old.requests + result.requests,
                            old.errors + result.errors,
                            max(old.mb_per_second, result.mb_per_second),
                        )
                    best[kind] = result
        ours = best["static"]
        for kind, what in DECISION_SERVERS:
            r = best[kind]
            rows.append(
                [
                    f"{label} ({len(body) / 1e3:,.0f} kB)" if kind == "static" else "",
                    what,
                    r.requests_per_second,
                    r.p50_ms,
                    r.p99_ms,
                    r.errors,
                    ratio(ours.requests_per_second, r.requests_per_second) if kind != "static" else "",
                ]
            )
    report.table(
        "Serving the same pre-rendered bytes: our HttpServer against library servers; wrk, 1 thread, 16 connections",
        ["body", "server", "requests/s", "p50 ms", "p99 ms", "errors", "ours ÷ this"],
        rows,
    )
    for kind, what in DECISION_SERVERS:
        agree, total = framing[kind]
        report.note(
            f"framing table (tests/test_http_framing.py): {what} answers {agree} of {total} rows as expected"
        )


def main() -> int:
    p = parser(__doc__ or "")
    p.add_argument(
        "--server-decision", action="store_true", help="only the HTTP-server comparison (issue 11)"
    )
    args = p.parse_args()
    started = time.perf_counter()
    if args.server_decision:
        report = Report("server-decision", args.smoke)
        seconds, rounds = (1.0, 1) if args.smoke else (4.0, 3)
        with tempfile.TemporaryDirectory() as tmp:
            server_decision(report, seconds, rounds, Path(tmp))
        report.finish(args.json, started)
        return 0
    report = Report("scrape", args.smoke)
    total = 2_300 if args.smoke else 100_000
    seconds, rounds = (1.0, 1) if args.smoke else (4.0, 3)
    if not have_wrk():
        report.note("wrk not installed: using the asyncio fallback load generator (lower ceilings)")
    with children() as procs, tempfile.TemporaryDirectory() as tmp:
        feeder, url = start_feeder(PROVIDERS_23, -(-total // len(PROVIDERS_23)))
        procs.append(feeder)
        for per_batch in (False, True):
            best, naive_alone = scenario(
                report,
                url,
                per_batch,
                seconds if not per_batch else min(seconds, 3.0),
                rounds if not per_batch else 1,
                Path(tmp),
                total,
            )
            if args.smoke:
                continue
            mode = "per-batch on" if per_batch else "per-batch off"
            for variant, _ in VARIANTS:
                ours, static, naive = (best[(variant, n)] for n, _ in SERVERS)
                # With the GIL, the naive server's throughput is at most one render at a time.
                naive_rps = max(naive.requests_per_second, 1 / naive_alone)
                vs_naive = ours.requests_per_second / naive_rps
                vs_static = ours.requests_per_second / static.requests_per_second
                report.check(
                    f"{mode}, {variant}: ours vs naive",
                    vs_naive,
                    f"≥ {TARGET_VS_NAIVE:.0f}×",
                    vs_naive >= TARGET_VS_NAIVE,
                    f"{vs_naive:,.0f}×" + ("" if naive.requests else " (naive: 1 ÷ one scrape's time)"),
                )
                report.check(
                    f"{mode}, {variant}: ours vs static limit",
                    vs_static,
                    "≥ 0.33×",
                    vs_static >= TARGET_VS_STATIC,
                    f"{vs_static:.2f}×",
                )
                if not per_batch:
                    report.check(
                        f"{mode}, {variant}: p99",
                        ours.p99_ms,
                        f"< {TARGET_P99_MS:.0f} ms",
                        ours.p99_ms < TARGET_P99_MS,
                        f"{ours.p99_ms:.2f} ms (static limit {static.p99_ms:.2f} ms)",
                    )
    report.finish(args.json, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

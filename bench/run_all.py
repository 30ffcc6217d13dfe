"""Run every benchmark in sequence (what `make bench` runs), then print every target with its verdict.

Each benchmark runs in its own interpreter (``python -m bench.<name>``) so one benchmark's heap cannot colour the
next one's figures. ``--smoke`` runs the tiny versions (seconds; no verdicts). ``--markdown FILE`` also writes all
tables and the verdicts as Markdown (the source of docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import child_env, format_table, machine  # noqa: E402

BENCHMARKS = (
    "parse",
    "scrape",
    "memory",
    "state_writes",
    "concurrency",
    "gateway_cost",
    "cost",
    "alert_quality",
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--only", action="append", choices=BENCHMARKS, help="run just these (repeatable)")
    p.add_argument("--markdown", type=Path, metavar="FILE")
    args = p.parse_args(argv)
    started = time.perf_counter()
    print(f"Machine: {machine()}", flush=True)
    reports: list[dict[str, object]] = []
    failed: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or BENCHMARKS:
            print(f"\n## {name}", flush=True)
            out = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, "-m", f"bench.{name}", "--json", str(out)]
            if args.smoke:
                cmd.append("--smoke")
            rc = subprocess.run(cmd, cwd=ROOT, env=child_env(), check=False).returncode
            if rc != 0 or not out.exists():
                failed.append(name)
                continue
            reports.append(json.loads(out.read_text()))
    wall = time.perf_counter() - started
    rows: list[list[object]] = []
    for report in reports:
        for check in report["checks"]:  # type: ignore[attr-defined]
            rows.append(
                [
                    report["benchmark"],
                    check["name"],
                    check["detail"] or check["value"],
                    check["target"],
                    "MET" if check["met"] else "MISSED",
                ]
            )
    summary = format_table(
        f"Targets ({'smoke run: no verdicts' if args.smoke else 'all benchmarks'}; total wall time {wall:.0f} s)",
        ["benchmark", "figure", "measured", "target", "verdict"],
        rows,
    )
    print(summary, flush=True)
    if failed:
        print(f"\nbenchmarks that failed to run: {', '.join(failed)}", flush=True)
    if args.markdown:
        parts = [f"Machine: {machine()}. `make bench` wall time: {wall:.0f} s.\n"]
        for report in reports:
            parts.append(f"\n## {report['benchmark']}\n")
            parts.extend(str(t) for t in report["tables"])  # type: ignore[attr-defined]
            parts.extend(f"\n- {n}" for n in report["notes"])  # type: ignore[attr-defined]
        parts.append("\n" + summary)
        args.markdown.write_text("".join(parts) + "\n")
    print(f"\nbench: {wall:.0f} s in all", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

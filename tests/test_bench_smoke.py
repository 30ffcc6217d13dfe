"""Every benchmark in smoke mode (tiny sizes, seconds, no verdicts), so `make bench` cannot rot unnoticed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import child_env, parse_wrk

from .conftest import require_tool

ROOT = Path(__file__).resolve().parent.parent


def _smoke(name: str, tmp_path: Path) -> dict[str, object]:
    out = tmp_path / f"{name}.json"
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--smoke", "--json", str(out)],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report: dict[str, object] = json.loads(out.read_text())
    assert report["smoke"] is True
    assert report["tables"], "a benchmark must print at least one table"
    return report


@pytest.mark.parametrize("name", ["parse", "memory", "concurrency", "gateway_cost", "cost", "alert_quality"])
def test_benchmark_runs_in_smoke_mode(name: str, tmp_path: Path) -> None:
    _smoke(name, tmp_path)


def test_scrape_benchmark_runs_in_smoke_mode(tmp_path: Path) -> None:
    require_tool("wrk")
    report = _smoke("scrape", tmp_path)
    tables = "\n".join(str(t) for t in report["tables"])  # type: ignore[attr-defined]
    assert "naive" in tables and "limit" in tables


def test_run_all_smoke_prints_the_summary(tmp_path: Path) -> None:
    md = tmp_path / "bench.md"
    proc = subprocess.run(
        [sys.executable, "bench/run_all.py", "--smoke", "--only", "parse", "--markdown", str(md)],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Targets" in proc.stdout and "Machine:" in md.read_text()


WRK_OUTPUT = (
    """Running 4s test @ http://127.0.0.1:34915/metrics
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.05s   441.63ms   2.01s    65.00%
    Req/Sec    13.40     10.71    40.00     80.00%
  Latency Distribution
     50%  812.00us
     75%    1.37s{sp}
     90%    1.63s{sp}
     99%    2.01s{sp}
  40 requests in 4.02s, 16.78MB read
  Non-2xx or 3xx responses: 2
Requests/sec:      9.96
Transfer/sec:      4.18MB
"""
).format(sp=" ")  # wrk pads percentiles with a trailing space


def test_wrk_output_is_parsed_with_units_and_trailing_spaces() -> None:
    r = parse_wrk(WRK_OUTPUT)
    assert r.requests_per_second == 9.96
    assert r.p50_ms == pytest.approx(0.812)
    assert r.p99_ms == pytest.approx(2010.0)
    assert r.requests == 40 and r.errors == 2

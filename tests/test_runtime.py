"""The exporter's own process_* and python_* series: real collectors, real promtool, real gzip decoders."""

from __future__ import annotations

import gc
import gzip
import json
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.models import Batch, parse_batch
from exporter.runtime import OPENMETRICS_EOF, Prerendered, RuntimeMetrics
from exporter.simulator import ProviderSpec, Simulator
from tests.conftest import require_tool
from tests.harness import ExporterThread, make_settings

ROOT = Path(__file__).resolve().parent.parent

RUNTIME_FAMILIES = {
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_start_time_seconds",
    "process_cpu_seconds",
    "process_open_fds",
    "process_max_fds",
    "python_info",
    "python_gc_objects_collected",
    "python_gc_collections",
}


class Clock:
    """A clock the test moves, so the once-per-second cache is exercised without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rss(runtime: RuntimeMetrics) -> float:
    (family,) = [f for f in runtime.families() if f.name == "process_resident_memory_bytes"]
    return float(family.samples[0].value)


def batch_json(i: int) -> bytes:
    return json.dumps(
        {
            "id": f"batch_{i:09d}",
            "object": "batch",
            "status": "in_progress",
            "created_at": 1_760_000_000 + i,
            "request_counts": {"total": 1000, "completed": i % 1000, "failed": 0},
            "metadata": {"team": f"team-{i % 50}", "purpose": "nightly embeddings " * 4},
        }
    ).encode()


def _hold_batches_and_measure() -> tuple[float, float, int]:
    """(RSS before, RSS after, bytes traced) of holding 40,000 parsed batches, as the runtime series report it."""
    clock = Clock()
    runtime = RuntimeMetrics(clock=clock)
    gc.collect()
    before = rss(runtime)
    tracemalloc.start()
    try:
        held: list[Batch] = [parse_batch(batch_json(i)) for i in range(40_000)]
        traced, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rss(runtime) == before, "collected again within the same second"
    clock.now += 1.0
    after = rss(runtime)
    assert len(held) == 40_000
    return before, after, traced


def test_resident_memory_rises_with_batches_held() -> None:
    """In a fresh interpreter: in the test process, memory freed by earlier tests would be reused without a rise."""
    code = "from tests.test_runtime import _hold_batches_and_measure as m; print(*m())"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    before, after, traced = (float(x) for x in done.stdout.split())
    # The process holds `traced` more bytes of batches; at least half of them must show up as resident memory.
    assert after - before >= traced / 2, (before, after, traced)


def test_collected_at_most_once_per_second() -> None:
    clock = Clock()
    runtime = RuntimeMetrics(clock=clock)
    first = runtime.text()
    assert runtime.text() is first and runtime.openmetrics() is runtime.openmetrics()
    clock.now += 0.999
    assert runtime.text() is first
    clock.now += 0.001
    assert runtime.text() is not first
    assert {f.name for f in runtime.families()} >= RUNTIME_FAMILIES


@pytest.fixture(scope="module")
def exposition() -> Iterator[tuple[bytes, bytes]]:
    """A real exporter's batch exposition (both formats) after polling the simulator."""
    with Simulator(providers=[ProviderSpec("openai"), ProviderSpec("anthropic")], seed=5) as sim:
        settings = make_settings(sim.url, ["openai", "anthropic"], per_batch_metrics=True)
        with ExporterThread(settings) as running:
            running.poll()
            rendered = running.exporter.rendered
            yield rendered.text, rendered.openmetrics


def body(prerendered: Prerendered, runtime: bytes, *, gzip: bool) -> bytes:
    return b"".join(prerendered.chunks(runtime, gzip=gzip))


def test_combined_text_is_promtool_clean(exposition: tuple[bytes, bytes]) -> None:
    promtool = require_tool("promtool")
    runtime = RuntimeMetrics()
    combined = body(Prerendered(exposition[0], openmetrics=False), runtime.text(), gzip=False)
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=combined, capture_output=True, timeout=60, check=False
    )
    assert proc.returncode == 0 and proc.stdout == b"" and proc.stderr == b"", proc.stdout + proc.stderr
    names = {f.name for f in parse_text(combined.decode())}
    assert names >= RUNTIME_FAMILIES
    assert "bifrost_batch_exporter_up" in names


def test_combined_openmetrics_parses_and_ends_once(exposition: tuple[bytes, bytes]) -> None:
    runtime = RuntimeMetrics()
    combined = body(Prerendered(exposition[1], openmetrics=True), runtime.openmetrics(), gzip=False)
    assert combined.endswith(OPENMETRICS_EOF) and combined.count(OPENMETRICS_EOF) == 1
    names = {f.name for f in parse_openmetrics(combined.decode())}  # type: ignore[no-untyped-call]
    assert names >= RUNTIME_FAMILIES and "bifrost_batch_exporter_up" in names


@pytest.mark.parametrize("openmetrics", [False, True])
def test_gzip_body_is_one_stream_every_client_reads(
    exposition: tuple[bytes, bytes], openmetrics: bool
) -> None:
    clock = Clock()
    runtime = RuntimeMetrics(clock=clock)
    prerendered = Prerendered(exposition[int(openmetrics)], openmetrics=openmetrics)
    part = runtime.openmetrics() if openmetrics else runtime.text()
    plain = body(prerendered, part, gzip=False)
    compressed = body(prerendered, part, gzip=True)
    # httpx reads only the first member of a multi-member gzip body: the body must be a single member.
    decoder = httpx._decoders.GZipDecoder()
    assert decoder.decode(compressed) + decoder.flush() == plain
    assert gzip.decompress(compressed) == plain
    assert prerendered.chunks(part, gzip=True)[1] is prerendered.chunks(part, gzip=True)[1]  # tail cached
    clock.now += 1
    newer = runtime.openmetrics() if openmetrics else runtime.text()
    assert gzip.decompress(body(prerendered, newer, gzip=True)) == body(prerendered, newer, gzip=False)

"""kill -9 chaos against a real Prometheus: with `state_dir` nothing is lost or counted twice; without it, it is.

The simulator plays a scripted scenario whose terminal transitions are known in advance (a ground truth by
provider, status and failure code). Two exporters run as real processes (`python -m exporter`) against it, one
with a state directory and one without, both scraped by one Prometheus. Both are SIGKILLed at least ten times
during the scenario and restarted; some kills of the stateful one are aimed at its state writes (the moment a
poll's journal record lands or a compaction's temp file appears, i.e. mid-write, or right after). At the end
Prometheus' own answer `sum by (provider, status) (increase(bifrost_batch_finished_total[…]))` must equal the
ground truth for the stateful exporter, and so must the failures by code; the stateless one must show the loss,
which the test also proves was caused: at least one transition fell while it was down.
"""

from __future__ import annotations

import math
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from exporter.simulator import ProviderSpec, Script, Simulator, build_script
from tests.conftest import free_port, require_tool
from tests.harness import parse_samples
from tests.promstack import ManagedProcess, Prometheus, http_get, static_scrape, wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
# One provider of each paging generation: OpenAI keys of one org listed twice (serial cursors), Azure's
# first_id/last_id, Anthropic whose `ended` is its only terminal status (and whose list never pages: the script
# keeps it to one page).
PROVIDERS = (
    ProviderSpec("openai", flavor="openai", keys=3, empty_keys=(0,), shared_account=True),
    ProviderSpec("azure", style="legacy", flavor="azure"),
    ProviderSpec("anthropic", flavor="anthropic"),
)
# Incremental polling over deep lists: a provider with three keys of its own (a batch on key 2 is listed only
# after every page of keys 0 and 1) and a legacy one, three batches a page, so a full list spans several polls
# of the request budget and transitions fall on deep pages and later keys, also while the exporter is down.
DEEP_PROVIDERS = (
    ProviderSpec("openai", flavor="openai", keys=3),
    ProviderSpec("azure", style="legacy", flavor="azure"),
)
SCENARIOS = {
    "wide": (PROVIDERS, {}),
    "deep": (
        DEEP_PROVIDERS,
        {"BIFROST_EXPORTER_PAGE_SIZE": "3", "BIFROST_EXPORTER_POLL_MODE": "incremental"},
    ),
}
SCRIPT_SECONDS = 70.0
BATCHES = 60
KILLS = 11
SEED = 20261130
WINDOW = "10m"  # longer than the whole test: increase() sees every sample


@dataclass
class ExporterProcess:
    """`python -m exporter` on a fixed port, SIGKILLed and restarted by the test."""

    name: str
    port: int
    log: Path
    env: dict[str, str]
    state_dir: Path | None = None
    proc: ManagedProcess | None = None
    down: list[tuple[float, float]] = field(default_factory=list)  # (killed at, serving again at)
    kills: int = 0

    def start(self) -> None:
        self.proc = ManagedProcess(
            self.name, [sys.executable, "-m", "exporter"], self.log, env=self.env
        ).start()

    def serving(self) -> bool:
        assert self.proc is not None
        self.proc.ensure_alive()
        return http_get(f"http://127.0.0.1:{self.port}/healthz", timeout=1)[0] == 200

    def wait_serving(self, timeout: float = 30) -> None:
        wait_until(self.serving, timeout=timeout, what=f"{self.name} serving", diagnostics=self.diagnostics)

    def kill(self) -> float:
        """SIGKILL now; returns the moment."""
        assert self.proc is not None and self.proc.proc is not None
        at = time.time()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.proc.wait(timeout=10)
        self.kills += 1
        return at

    def restart_after(self, killed_at: float) -> None:
        self.start()
        self.wait_serving()
        self.down.append((killed_at, time.time()))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def diagnostics(self) -> str:
        return self.proc.log_tail() if self.proc is not None else f"[{self.name} not started]"


def exporter_env(
    url: str, port: int, state_dir: Path | None, providers: tuple[ProviderSpec, ...] = PROVIDERS
) -> dict[str, str]:
    env = {
        "BIFROST_EXPORTER_BIFROST_URL": url,
        "BIFROST_EXPORTER_PROVIDERS": ",".join(spec.name for spec in providers),
        "BIFROST_EXPORTER_LISTEN_ADDRESS": f"127.0.0.1:{port}",
        "BIFROST_EXPORTER_POLL_INTERVAL_SECONDS": "1",
        "BIFROST_EXPORTER_RESYNC_INTERVAL_SECONDS": "4",
        "BIFROST_EXPORTER_REQUEST_TIMEOUT_SECONDS": "3",
        "BIFROST_EXPORTER_LOG_FORMAT": "json",
        "PYTHONPATH": str(ROOT),
    }
    if state_dir is not None:
        env["BIFROST_EXPORTER_STATE_DIR"] = str(state_dir)
    return env


def _temp_files(state_dir: Path) -> set[str]:
    try:
        return {e.name for e in os.scandir(state_dir) if e.name.endswith(".tmp")}
    except FileNotFoundError:
        return set()


def _files(state_dir: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of the state files: a journal that grew is a poll's record landing, a base replaced is a
    compaction."""
    try:
        return {
            e.name: (e.stat().st_size, e.stat().st_mtime_ns)
            for e in os.scandir(state_dir)
            if e.name.endswith((".journal", ".base", ".json"))
        }
    except FileNotFoundError:
        return {}


def aimed_kill(exporter: ExporterProcess, how: str, deadline: float) -> tuple[float, bool]:
    """Kill while the state directory shows a write in flight ("mid_write": a temp file exists, or a journal has
    just grown: its fsync may not have returned yet) or just after one ("after_write": a moment after a journal
    grew or a file was replaced), or at `deadline` if neither is seen. Returns (moment, hit)."""
    assert exporter.state_dir is not None
    before = _files(exporter.state_dir)
    stale = _temp_files(
        exporter.state_dir
    )  # temp files a previous kill left behind are not a write in flight
    while time.time() < deadline:
        if how == "mid_write" and (
            _temp_files(exporter.state_dir) - stale or _files(exporter.state_dir) != before
        ):
            return exporter.kill(), True
        if how == "after_write" and _files(exporter.state_dir) != before:
            time.sleep(0.002)
            return exporter.kill(), True
        time.sleep(0.0002)
    return exporter.kill(), False


def prom_vector(prom: Prometheus, expr: str, labels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    return {tuple(s["metric"].get(k, "") for k in labels): float(s["value"][1]) for s in prom.query(expr)}


def exporter_counter(port: int, name: str, labels: tuple[str, ...]) -> Counter[tuple[str, ...]]:
    """A counter family straight from the exporter's /metrics, summed over the other labels."""
    status, body = http_get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert status == 200
    out: Counter[tuple[str, ...]] = Counter()
    for (sample, lbls), v in parse_samples(body.decode()).items():
        if sample == name:
            got = dict(lbls)
            out[tuple(got.get(k, "") for k in labels)] += int(v)
    return out


def lost_while_down(script: Script, start: float, down: list[tuple[float, float]]) -> list[str]:
    """Transitions that happened while the exporter was down: one without state can never count them."""
    return [bid for offset, _, bid in script.finish_times() if any(a < start + offset < b for a, b in down)]


Stack = tuple[Simulator, ExporterProcess, ExporterProcess, Prometheus, tuple[ProviderSpec, ...]]


@pytest.fixture(params=sorted(SCENARIOS))
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    prom_bin = require_tool("prometheus")
    providers, extra_env = SCENARIOS[request.param]
    sim = Simulator(providers=providers, initial_batches=0, troubled=False, arrivals=False).start()
    durable = ExporterProcess("with-state", free_port(), tmp_path / "with-state.log", {}, tmp_path / "state")
    durable.env = exporter_env(sim.url, durable.port, durable.state_dir, providers) | extra_env
    volatile = ExporterProcess("without-state", free_port(), tmp_path / "without-state.log", {})
    volatile.env = exporter_env(sim.url, volatile.port, None, providers) | extra_env
    prom = Prometheus(
        prom_bin,
        tmp_path / "prometheus",
        scrape_configs=[
            static_scrape("with_state", f"127.0.0.1:{durable.port}"),
            static_scrape("without_state", f"127.0.0.1:{volatile.port}"),
        ],
    )
    try:
        prom.start()
        durable.start()
        volatile.start()
        durable.wait_serving()
        volatile.wait_serving()
        yield sim, durable, volatile, prom, providers
    finally:
        for exporter in (durable, volatile):
            exporter.stop()
        prom.stop()
        sim.stop()


def test_kill_9_loses_nothing_with_state_dir_and_loses_without(stack: Stack) -> None:
    sim, durable, volatile, prom, providers = stack
    started = time.monotonic()
    # Both exporters scraped with their zeros before anything finishes: the counters' series start at 0.
    zeros = 'count by (job) (bifrost_batch_finished_total{provider="openai",status="completed"} == 0)'
    wait_until(
        lambda: len(prom.query(zeros)) == 2,
        timeout=30,
        what="both exporters scraped",
        diagnostics=prom.diagnostics,
    )
    script = build_script(providers, seed=SEED, batches=BATCHES, duration=SCRIPT_SECONDS, first_finish=6.0)
    start = sim.play(script)
    end = start + SCRIPT_SECONDS

    rng = random.Random(SEED)
    aims = ["mid_write", "after_write", "random"] * 4
    hits: Counter[str] = Counter()
    gap = (SCRIPT_SECONDS - 8.0) / KILLS
    for n in range(KILLS):
        at = start + 4.0 + n * gap + rng.uniform(0, gap / 3)
        while time.time() < at:
            time.sleep(0.05)
        how = aims[n]
        if how == "random":
            killed_at = durable.kill()
        else:
            killed_at, hit = aimed_kill(durable, how, time.time() + 3.0)
            hits[how] += hit
        if n == 0:
            # The control half's premise, made true rather than hoped for: the stateless exporter has counted a
            # transition and Prometheus has scraped it before it is first killed (so a reset is there to be seen).
            wait_until(
                lambda: prom.query('sum(bifrost_batch_finished_total{job="without_state"}) > 0'),
                timeout=60,
                what="the stateless exporter counted a transition and was scraped",
                diagnostics=volatile.diagnostics,
            )
        volatile_killed_at = volatile.kill()
        time.sleep(rng.uniform(0.5, 2.0))  # down for a while: transitions keep happening at the gateway
        durable.restart_after(killed_at)
        volatile.restart_after(volatile_killed_at)
    assert durable.kills >= 10 and volatile.kills >= 10
    while time.time() < end + 1:
        time.sleep(0.1)

    truth = script.finished()
    failures_truth = script.failures()
    keys = ("provider", "status")
    # The stateful exporter catches up (a resync lists every batch); then Prometheus scrapes what it shows. What the
    # last restart's first polls counted (and a code a hold showed at 0 when it was killed) shows after a hold of
    # max(60 s, the interval) at the restored value
    # (exporter/presence.py: on a new pod the series are new, and the step must be an increase a scrape sees).
    code_keys = ("provider", "status", "code")

    def shown(name: str, labels: tuple[str, ...]) -> dict[tuple[str, ...], int]:
        return {k: v for k, v in exporter_counter(durable.port, name, labels).items() if v}

    wait_until(
        lambda: (
            shown("bifrost_batch_finished_total", keys) == dict(truth)
            and shown("bifrost_batch_failures_total", code_keys) == dict(script.failures())
        ),
        timeout=100,
        what="the stateful exporter counted the ground truth",
        diagnostics=lambda: (
            f"exporter: {exporter_counter(durable.port, 'bifrost_batch_finished_total', keys)}\n"
            f"truth: {truth}\n{durable.diagnostics()}"
        ),
    )
    scraped_at = time.time()
    up_after = f'count(timestamp(up{{job="with_state"}}) > {scraped_at + 1}) == 1'
    wait_until(lambda: prom.query(up_after), timeout=15, what="a scrape after the catch-up")

    finished = prom_vector(
        prom,
        f'sum by (provider, status) (increase(bifrost_batch_finished_total{{job="with_state"}}[{WINDOW}]))',
        keys,
    )
    failures = prom_vector(
        prom,
        # Counters of the stateful exporter never reset, so the maximum is the total. increase() cannot count the
        # first increment of a series born at 1 (a code seen for the first time), so it is not used for codes.
        'sum by (provider, status, code) (max_over_time(bifrost_batch_failures_total{job="with_state"}'
        f"[{WINDOW}]))",
        ("provider", "status", "code"),
    )
    lost_volatile = prom_vector(
        prom, f'sum(increase(bifrost_batch_finished_total{{job="without_state"}}[{WINDOW}]))', ()
    )
    volatile_total = lost_volatile.get((), 0.0)
    resets = prom_vector(prom, f"sum by (job) (resets(bifrost_batch_finished_total[{WINDOW}]))", ("job",))

    statuses = sorted(set(truth) | {k for k, v in finished.items() if v})
    rows = [f"{'provider':10} {'status':10} {'truth':>5} {'prometheus':>10}"]
    rows += [f"{p:10} {s:10} {truth[(p, s)]:5d} {finished.get((p, s), 0.0):10.3f}" for p, s in statuses]
    codes = sorted(set(failures_truth) | {k for k, v in failures.items() if v})
    rows += [f"{'provider':10} {'status':10} {'code':22} {'truth':>5} {'prometheus':>10}"]
    rows += [
        f"{p:10} {s:10} {c:22} {failures_truth[(p, s, c)]:5d} {failures.get((p, s, c), 0.0):10.3f}"
        for p, s, c in codes
    ]
    lost = lost_while_down(script, start, volatile.down)
    rows.append(
        f"without state_dir: {volatile_total:.3f} of {sum(truth.values())} counted; "
        f"{len(lost)} transitions fell while it was down; aimed kills hit: {dict(hits)}; "
        f"{durable.kills} kills; counter resets seen by Prometheus: {resets}; {time.monotonic() - started:.0f}s"
    )
    print("\n" + "\n".join(rows))

    assert {k: round(v) for k, v in finished.items() if round(v)} == dict(truth)
    assert all(math.isclose(v, round(v), abs_tol=0.25) for v in finished.values())
    assert {k: round(v) for k, v in failures.items() if round(v)} == dict(failures_truth)
    # A restarted stateful exporter never exposed a value lower than one already scraped; the stateless one did.
    assert resets.get(("with_state",), 0.0) == 0
    assert resets.get(("without_state",), 0.0) > 0
    # Without state the loss is real and visible: transitions fell while it was down, and it counted fewer.
    assert lost, "no transition fell while the stateless exporter was down: the run proves nothing about loss"
    assert round(volatile_total) < sum(truth.values())

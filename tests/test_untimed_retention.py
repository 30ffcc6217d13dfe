"""A finished batch whose list item has no terminal timestamp (Gemini, Bedrock summaries, any `deleted`, GigaChat's
failed) is counted once, also after its settled id has passed the 48 h retention while the gateway still lists it.

On first sight such a batch counts when it was created after the exporter's watermark; its settled id is kept from
the gateway time it was seen and forgotten 48 h later. Its created_at is then at or before the horizon, which is what
keeps the next list from counting it again (found in a review; each of these counted 2 before).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from exporter.client import BifrostClient
from exporter.simulator import Simulator
from exporter.simulator.flavors import ProviderSpec
from tests.harness import ExporterThread, make_settings, value
from tests.test_incremental import INTERVAL, SimTime, gateway

HOUR = 3600
# A full list every minute of a 3-hour step, pages of 100: every poll below may end a full list.
SETTINGS: dict[str, Any] = {
    "resync_interval_seconds": 60,
    "page_size": 100,
    "stale_after_seconds": 10_000_000,
}


@contextmanager
def exporter(sim: Simulator, clock: SimTime, provider: str, **overrides: Any) -> Iterator[ExporterThread]:
    """tests/test_incremental.py's exporter on the simulated clock, for one provider of the test's choosing."""
    config = make_settings(sim.url, [provider], poll_interval_seconds=INTERVAL, **{**SETTINGS, **overrides})
    client = BifrostClient(config, sleep=clock.sleep, monotonic=clock.monotonic)
    with ExporterThread(config, clock=clock.time, client=client) as exp:
        yield exp


def finished(exp: ExporterThread, provider: str, status: str) -> float:
    return value(exp.samples(), "bifrost_batch_finished_total", provider=provider, status=status) or 0.0


def finish_one(sim: Simulator, exp: ExporterThread, clock: SimTime, provider: str, final: str) -> None:
    """g1 seen running, then seen finished in `final`: counted once, now."""
    exp.poll(provider)
    exp.samples()  # a scrape saw the counters start: a count shows at once from here (exporter/holds.py)
    clock.advance(INTERVAL)
    sim.add_batch(provider, batch_id="g1", status="in_progress", created_at=int(clock.now))
    exp.poll(provider)
    clock.advance(INTERVAL)
    sim.set_status(provider, "g1", final)
    exp.poll(provider)
    assert finished(exp, provider, final) == 1


def run(provider: str, spec: ProviderSpec, mode: str, final: str = "completed") -> float:
    """g1 finishes, then the gateway goes on for 2.5 days (a new batch every 3 h moves its clock) while it keeps
    listing g1: past the 48 h retention g1's id is forgotten, and the lists after that must not count it again."""
    clock = SimTime()
    with gateway(clock, spec) as sim, exporter(sim, clock, provider, poll_mode=mode) as exp:
        finish_one(sim, exp, clock, provider, final)
        for i in range(20):
            clock.advance(3 * HOUR)
            sim.add_batch(provider, batch_id=f"n{i:02d}", status="in_progress", created_at=int(clock.now))
            exp.poll(provider)
            clock.advance(INTERVAL)
            exp.poll(provider)
        return finished(exp, provider, final)


def test_gemini_full_mode_counts_once() -> None:
    assert run("gemini", ProviderSpec("gemini", style="cursor", flavor="gemini"), "full") == 1


def test_gemini_incremental_counts_once() -> None:
    assert run("gemini", ProviderSpec("gemini", style="cursor", flavor="gemini"), "incremental") == 1


def test_bedrock_full_mode_counts_once() -> None:
    assert run("bedrock", ProviderSpec("bedrock", style="cursor", flavor="bedrock"), "full") == 1


def test_openai_with_its_timestamps_counts_once() -> None:
    assert run("openai", ProviderSpec("openai", style="cursor", flavor="openai"), "full") == 1


def test_openai_deleted_incremental_counts_once() -> None:
    spec = ProviderSpec("openai", style="cursor", flavor="openai")
    assert run("openai", spec, "incremental", "deleted") == 1


def test_gigachat_failed_incremental_counts_once() -> None:
    spec = ProviderSpec("gigachat", style="cursor", flavor="gigachat")
    assert run("gigachat", spec, "incremental", "failed") == 1


def test_gemini_incremental_restart_counts_once(tmp_path: Path) -> None:
    """Incremental mode hides known summary items in-process (store.defer_sparse), but the store is not kept across
    a restart: Gemini's list never gets past page 1 (cursor ignored, so no full list ever completes and the
    watermark stays at the first start), and every batch on page 1 whose settled id aged out was counted again."""
    provider = "gemini"
    clock = SimTime()
    common = {"poll_mode": "incremental", "state_dir": tmp_path, "page_size": 10}
    with gateway(clock, ProviderSpec("gemini", style="cursor", flavor="gemini")) as sim:
        for i in range(15):  # history: more than one page, so the ignored cursor truncates every full list
            sim.add_batch(
                provider, batch_id=f"h{i}", status="completed", created_at=int(clock.now) - 90_000 + i
            )
        with exporter(sim, clock, provider, **common) as exp:
            finish_one(sim, exp, clock, provider, "completed")
            for i in range(17):  # 51 h of gateway time, a new batch every 3 h (g1 stays on page 1)
                clock.advance(3 * HOUR)
                if i % 4 == 0:
                    sim.add_batch(
                        provider, batch_id=f"n{i:02d}", status="in_progress", created_at=int(clock.now)
                    )
                exp.poll(provider)
            assert finished(exp, provider, "completed") == 1
        clock.advance(INTERVAL)
        with exporter(sim, clock, provider, **common) as again:  # restart
            for _ in range(3):
                again.poll(provider)
                clock.advance(INTERVAL)
            assert finished(again, provider, "completed") == 1

"""Background tasks are supervised: a bug in a poll or a render is logged, retried with backoff, the last good
bytes keep being served, and /healthz turns 503 only while a task keeps failing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from exporter import app as app_module
from exporter.simulator import ProviderSpec, Simulator
from tests.harness import ExporterThread, make_settings, value, wait_until

P = "openai"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(providers=[ProviderSpec(P)], lifecycle=False) as s:
        s.add_batch(P, batch_id="a", status="in_progress", created_at=int(time.time()) - 60)
        yield s


def test_a_poll_that_raises_is_retried_and_health_reflects_it(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from exporter import poller as poller_module

    # /healthz is 503 from the 3rd consecutive crash until the next good poll: two backoffs of 1 s keep that window
    # wide enough to observe on a busy machine (at 0.05 s it closed before a parallel run's first check).
    monkeypatch.setattr(poller_module, "CRASH_BACKOFF_MAX_SECONDS", 1.0)
    settings = make_settings(sim.url, [P], poll_interval_seconds=1)
    failures = {"left": 4}
    real_fold = poller_module.Poller._fold

    def flaky_fold(self: Any, *args: Any, **kwargs: Any) -> Any:
        # A bug in the fold (e.g. a logging call raising), outside any try: the task must survive it.
        if failures["left"] > 0:
            failures["left"] -= 1
            raise RuntimeError("boom in fold")
        return real_fold(self, *args, **kwargs)

    monkeypatch.setattr(poller_module.Poller, "_fold", flaky_fold)
    with structlog.testing.capture_logs() as logs, ExporterThread(settings, auto_poll=True) as exp:
        wait_until(lambda: exp.get("/healthz").status_code == 503, timeout=20)
        wait_until(lambda: value(exp.samples(), "bifrost_batch_exporter_up", provider=P) == 1, timeout=30)
        wait_until(lambda: exp.get("/healthz").status_code == 200, timeout=10)
    crashes = [e for e in logs if e["event"] == "poll_task_failed"]
    assert len(crashes) == 4 and crashes[-1]["consecutive"] == 4


def test_a_render_that_raises_keeps_the_last_bytes_and_recovers(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app_module, "RENDER_BACKOFF_MAX_SECONDS", 0.05)
    settings = make_settings(sim.url, [P])
    real_render = app_module.render  # type: ignore[attr-defined]
    state = {"fail": False, "failed": 0}

    def flaky_render(*args: Any, **kwargs: Any) -> Any:
        if state["fail"]:
            state["failed"] += 1
            raise OverflowError("one extreme number")
        return real_render(*args, **kwargs)

    monkeypatch.setattr(app_module, "render", flaky_render)
    with structlog.testing.capture_logs() as logs, ExporterThread(settings) as exp:
        exp.call(exp.exporter.poller.poll(P))
        wait_until(lambda: value(exp.samples(), "bifrost_batches", provider=P, status="in_progress") == 1)
        good = _batch_lines(exp.get().text)
        state["fail"] = True
        sim.add_batch(P, batch_id="b", status="in_progress", created_at=int(time.time()) - 30)
        exp.call(exp.exporter.poller.poll(P))
        wait_until(lambda: exp.get("/healthz").status_code == 503, timeout=20)
        assert _batch_lines(exp.get().text) == good  # the last good exposition is still served
        state["fail"] = False
        wait_until(lambda: value(exp.samples(), "bifrost_batches", provider=P, status="in_progress") == 2)
        wait_until(lambda: exp.get("/healthz").status_code == 200, timeout=10)
    # Recovery is shown above by what is served (the new data, /healthz 200). Log lines are process-wide and an
    # earlier test may have configured the level above info (render_recovered is info), so only the failures are
    # checked here: each was logged as one error line.
    failed = [e for e in logs if e["event"] == "render_failed"]
    assert len(failed) >= 3 and all(e["log_level"] == "error" and e["error"] for e in failed), failed
    assert state["failed"] >= 3


def _batch_lines(text: str) -> list[str]:
    """The exposition without the runtime series, which change from one scrape to the next."""
    return [line for line in text.splitlines() if "bifrost_" in line]


def test_truncated_describes_the_data_served_after_a_failed_poll(sim: Simulator) -> None:
    """A failed poll keeps serving the last good snapshot, so `truncated` keeps describing that snapshot."""
    settings = make_settings(sim.url, [P], poll_mode="full", page_size=1, max_pages=1)
    sim.add_batch(P, batch_id="c", status="in_progress", created_at=int(time.time()) - 10)
    with ExporterThread(settings) as exp:
        exp.poll()
        assert value(exp.samples(), "bifrost_batch_exporter_truncated", provider=P) == 1
        sim.set_fault("server_error", provider=P, times=10)
        exp.poll()
        s = exp.samples()
    assert value(s, "bifrost_batch_exporter_up", provider=P) == 0
    assert value(s, "bifrost_batch_exporter_truncated", provider=P) == 1
    assert value(s, "bifrost_batches", provider=P, status="in_progress") == 1


def test_a_stop_that_meets_a_state_change_still_stops(sim: Simulator) -> None:
    """A poll's completion wakes the render loop in the same step as a stop cancels it (a SIGTERM as a poll ends):
    the loop must end, not swallow the cancellation and wait for the next change for ever. Python 3.11's
    asyncio.wait_for returned the finished wait's result instead of raising, and the stop hung."""
    with ExporterThread(make_settings(sim.url, [P])) as exp:
        # A poll, and the render loop's own render of it (the harness's poll() would render itself): once that is
        # served, the loop waits for the next change or the data's staleness deadline (nothing awaits in between).
        exp.call(exp.exporter.poller.poll(P))
        wait_until(lambda: value(exp.samples(), "bifrost_batches", provider=P, status="in_progress") == 1)

        async def change_then_stop() -> None:
            exp.exporter._changed()  # what the poller calls when a poll ends
            await exp.exporter.stop()

        exp.call(change_then_stop(), timeout=10)


def test_intervals_beyond_what_a_date_holds_do_not_fail_the_poll(sim: Simulator) -> None:
    """Intervals are unbounded settings; 10^12 s puts the next full list past year 9999. The poll's summary line
    gives that time as a number instead of raising (which failed every poll and turned /healthz 503)."""
    settings = make_settings(
        sim.url, [P], poll_interval_seconds=1e12, resync_interval_seconds=1e12, stale_after_seconds=1e12
    )
    with structlog.testing.capture_logs() as logs, ExporterThread(settings) as exp:
        for _ in range(3):
            exp.poll()
        assert exp.get("/healthz").status_code == 200
        assert value(exp.samples(), "bifrost_batch_exporter_up", provider=P) == 1
    assert not [e for e in logs if e["event"] == "poll_task_failed"]
    summaries = [e for e in logs if e["event"] == "polls_summary"]
    assert summaries and summaries[0]["next_full_list"].isdigit()

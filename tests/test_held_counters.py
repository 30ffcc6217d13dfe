"""A counter series no render could foresee is shown at 0 first, its count after a hold (exporter/presence.py).

increase() cannot see a series' first sample as an increase, and in an exporter's first minutes the mixin cannot
tell a series born above 0 from a restart: a team's first failure (its group never listed running), or a code no
table seeds, would never page. The renderer shows every series it can foresee from 0; one it could not is held at
0 for max(60 s, one poll interval), then counts. Against the simulator on the injected clock of
tests/test_incremental.py.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from exporter.simulator import ProviderSpec
from tests.harness import Samples, parse_samples, value
from tests.test_incremental import INTERVAL, P, SimTime, exporter, gateway

LABELS = {"provider": P, "status": "failed", "code": "server_error", "class": "provider"}


def test_a_teams_first_failure_shows_at_0_first_then_counts() -> None:
    clock = SimTime()
    spec = ProviderSpec(P, style="cursor", flavor="openai")
    with gateway(clock, spec) as sim, exporter(sim, clock, metadata_labels=["team"], page_size=10) as exp:
        sim.add_batch(P, batch_id="ml-run", status="in_progress", created_at=int(clock.now) - 100,
                      metadata={"team": "ml"})  # fmt: skip
        exp.poll(P)
        exp.samples()  # a scrape has seen the counters from 0 (until one has, every count is held: see below)
        clock.advance(INTERVAL)
        # ml was listed running: its series are shown from 0 already, so its failure counts at once. ads was never
        # listed: its batch is first seen failed.
        sim.set_status(P, "ml-run", "failed", int(clock.now) - 5, error_code="server_error")
        sim.add_batch(P, batch_id="ads-run", status="failed", created_at=int(clock.now) - 5,
                      failed_at=int(clock.now) - 2, error_code="server_error", metadata={"team": "ads"})  # fmt: skip
        exp.poll(P)
        first = exp.samples()
        for _ in range(6):  # 60 s: the hold (max(60 s, the 10 s interval))
            clock.advance(INTERVAL)
            exp.poll(P)
        later = exp.samples()

    def failed(samples: dict, team: str) -> float | None:  # type: ignore[type-arg]
        return value(samples, "bifrost_batch_finished_total", provider=P, status="failed", metadata_team=team)

    def code(samples: dict, team: str) -> float | None:  # type: ignore[type-arg]
        labels = {"provider": P, "status": "failed", "code": "server_error", "class": "provider"}
        return value(samples, "bifrost_batch_failures_total", **labels, metadata_team=team)

    assert (failed(first, "ml"), failed(first, "ads")) == (1, 0)
    # ml's code series was not seeded (the table seeds the "" group only): held too, as ads' are.
    assert (code(first, "ml"), code(first, "ads")) == (0, 0)
    assert (failed(later, "ml"), failed(later, "ads")) == (1, 1)
    assert (code(later, "ml"), code(later, "ads")) == (1, 1)


def test_what_the_first_successful_poll_counts_shows_at_0_first() -> None:
    """No counter series are rendered before a provider's first successful poll: a batch that failed while the
    gateway refused the exporter's first polls (a rollout beside the gateway, a key fixed later) is counted by the
    first poll that succeeds, and was born at 1, invisible to increase() (audit 7, surface F1)."""
    clock = SimTime()
    spec = ProviderSpec(P, style="cursor", flavor="openai")
    with gateway(clock, spec) as sim, exporter(sim, clock, page_size=10) as exp:
        sim.set_fault("auth")
        exp.poll(P)
        before = exp.samples()
        clock.advance(INTERVAL)
        sim.add_batch(P, batch_id="b1", status="failed", created_at=int(clock.now) - 5,
                      failed_at=int(clock.now) - 2, error_code="server_error")  # fmt: skip
        sim.set_fault(None)
        exp.poll(P)
        first = exp.samples()
        for _ in range(6):  # the hold: max(60 s, the 10 s interval)
            clock.advance(INTERVAL)
            exp.poll(P)
        later = exp.samples()
    labels = {"provider": P, "status": "failed", "code": "server_error", "class": "provider"}
    assert value(before, "bifrost_batch_exporter_up", provider=P) == 0
    assert value(before, "bifrost_batch_finished_total", provider=P, status="failed") is None
    assert value(first, "bifrost_batch_exporter_up", provider=P) == 1
    assert value(first, "bifrost_batch_finished_total", provider=P, status="failed") == 0
    assert value(first, "bifrost_batch_failures_total", **labels) == 0
    assert value(later, "bifrost_batch_finished_total", provider=P, status="failed") == 1
    assert value(later, "bifrost_batch_failures_total", **labels) == 1


def test_what_a_failed_first_poll_counted_shows_at_0_when_a_poll_first_succeeds() -> None:
    """A first poll counts a failure on its first page and then fails on a continuation page, and the gateway goes
    on failing those pages for longer than the hold. Nothing is rendered before a first success, so the hold runs
    from there: the series shows 0 first, its count after (audit 7, diff F1)."""
    clock = SimTime()
    spec = ProviderSpec(P, style="cursor", flavor="openai")
    with gateway(clock, spec) as sim, exporter(sim, clock, page_size=2) as exp:
        for i in range(4):
            sim.add_batch(P, batch_id=f"old{i}", status="completed", created_at=int(clock.now) - 5000 + i,
                          completed_at=int(clock.now) - 4000)  # fmt: skip
        sim.add_batch(P, batch_id="b1", status="failed", created_at=int(clock.now) - 5,
                      failed_at=int(clock.now) + 1, error_code="server_error")  # fmt: skip
        clock.advance(2)
        sim.set_fault("server_error", cursor_only=True)  # the first page answers, the continuation pages fail
        for _ in range(8):  # 80 s: past the hold of max(60 s, the 10 s interval)
            exp.poll(P)
            clock.advance(INTERVAL)
        still = exp.samples()
        counted = dict(exp.exporter.poller.states[P].ledger.failures)
        sim.set_fault(None)
        exp.poll(P)
        first = exp.samples()
        for _ in range(6):
            clock.advance(INTERVAL)
            exp.poll(P)
        later = exp.samples()
    labels = {"provider": P, "status": "failed", "code": "server_error", "class": "provider"}
    assert counted.get(("failed", "server_error", ())) == 1  # counted by the failed polls, never rendered
    assert value(still, "bifrost_batch_exporter_up", provider=P) == 0
    assert value(still, "bifrost_batch_failures_total", **labels) is None
    assert value(first, "bifrost_batch_exporter_up", provider=P) == 1
    assert value(first, "bifrost_batch_failures_total", **labels) == 0
    assert value(first, "bifrost_batch_finished_total", provider=P, status="failed") == 0
    assert value(later, "bifrost_batch_failures_total", **labels) == 1
    assert value(later, "bifrost_batch_finished_total", provider=P, status="failed") == 1


def test_what_ended_while_the_exporter_was_down_shows_as_an_increase_after_a_restart(tmp_path: Path) -> None:
    """With state_dir, a restart's first poll counts the batches that ended while the exporter was down. On a new
    pod (the chart's Recreate strategy: every upgrade, eviction or drain) every series is new to Prometheus, so a
    first sample already holding them hides them from increase() and every failure alert. Each count that rose
    before this process's first success shows its restored value a while first (0 for a failure code first seen,
    the old total for a status counted before), then the new one (audit 7, alerts F1)."""
    clock = SimTime()
    spec = ProviderSpec(P, style="cursor", flavor="openai")
    labels = {"provider": P, "status": "failed", "code": "server_error", "class": "provider"}
    with gateway(clock, spec) as sim:
        sim.add_batch(P, batch_id="run", status="in_progress", created_at=int(clock.now) - 50)
        sim.add_batch(P, batch_id="run2", status="in_progress", created_at=int(clock.now) - 40,
                      request_counts={"total": 10, "completed": 2, "failed": 0})  # fmt: skip
        sim.add_batch(P, batch_id="ok", status="in_progress", created_at=int(clock.now) - 100,
                      request_counts={"total": 4, "completed": 1, "failed": 0})  # fmt: skip
        with exporter(sim, clock, page_size=10, state_dir=tmp_path) as exp:
            exp.poll(P)
            clock.advance(INTERVAL)
            sim.set_status(P, "ok", "completed", int(clock.now) - 1)
            for _ in range(8):
                clock.advance(INTERVAL)
                exp.poll(P)
            before = exp.samples()
        clock.advance(60)  # down: one batch fails, another completes
        sim.set_status(P, "run", "failed", int(clock.now) - 5, error_code="server_error")
        sim.set_status(P, "run2", "completed", int(clock.now) - 4)
        clock.advance(60)
        with exporter(sim, clock, page_size=10, state_dir=tmp_path) as exp:
            exp.poll(P)  # readiness waits for the first poll: a new pod's first scrape comes after it
            first = exp.samples()
            for _ in range(7):
                clock.advance(INTERVAL)
                exp.poll(P)
            later = exp.samples()

    def completed_requests(s: Samples) -> float | None:
        return value(
            s, "bifrost_batch_finished_requests_total", provider=P, status="completed", outcome="succeeded"
        )

    assert value(before, "bifrost_batch_failures_total", **labels) == 0
    assert value(before, "bifrost_batch_finished_total", provider=P, status="completed") == 1
    assert value(first, "bifrost_batch_failures_total", **labels) == 0
    assert value(first, "bifrost_batch_finished_total", provider=P, status="failed") == 0
    assert value(first, "bifrost_batch_finished_total", provider=P, status="completed") == 1
    assert completed_requests(first) == completed_requests(before)
    assert value(later, "bifrost_batch_failures_total", **labels) == 1  # counted once
    assert value(later, "bifrost_batch_finished_total", provider=P, status="completed") == 2
    assert (completed_requests(later) or 0) > (completed_requests(before) or 0)


@pytest.mark.parametrize(
    ("restart", "scraped_first"),
    [(False, False), (True, False), (False, True), (True, True)],
    ids=["new-pod", "new-pod-with-state", "scraped-first", "scraped-first-with-state"],
)
def test_what_the_second_poll_counts_is_held_until_a_scrape_has_seen_the_start(
    tmp_path: Path, restart: bool, scraped_first: bool
) -> None:
    """Prometheus' first scrape of a new pod comes after readiness, discovery and the scrape offset: with the
    chart's 30 s poll, often after the second poll. A count made then on a series the first render showed (seeded
    or restored) was shown at once, born above 0 in that first scrape and invisible to every failure alert (audit 8,
    alerts F1). Until a scrape has been served the provider's counters, every count above what the process started
    with is held, for a hold from when it rose; once one has, a count shows at once (an increase from what that
    scrape saw)."""
    clock = SimTime()
    spec = ProviderSpec(P, style="cursor", flavor="openai")
    poll = 30
    settings: dict[str, object] = {
        "page_size": 10,
        "poll_interval_seconds": poll,
        "resync_interval_seconds": 300,
    }
    if restart:
        settings["state_dir"] = tmp_path
    with gateway(clock, spec) as sim:
        sim.add_batch(P, batch_id="run", status="in_progress", created_at=int(clock.now) - 50)
        if restart:  # an earlier process ran and saved its ledger
            with exporter(sim, clock, **settings) as old:
                for _ in range(5):
                    old.poll(P)
                    clock.advance(poll)
            clock.advance(120)
        with exporter(sim, clock, scrape_start=False, **settings) as exp:
            exp.poll(P)  # the new process' first render
            shown = [exp.samples()] if scraped_first else []
            clock.advance(poll)
            sim.set_status(P, "run", "failed", int(clock.now) - 2, error_code="server_error")
            for _ in range(4):
                exp.poll(P)
                shown.append(exp.samples())
                clock.advance(poll)

    def failures(s: Samples) -> float | None:
        return value(s, "bifrost_batch_failures_total", **LABELS)

    def failed(s: Samples) -> float | None:
        return value(s, "bifrost_batch_finished_total", provider=P, status="failed")

    if scraped_first:
        assert [failures(s) for s in shown] == [0, 1, 1, 1, 1]
        assert [failed(s) for s in shown] == [0, 1, 1, 1, 1]
    else:
        # the second poll (counted, held: the first scrape), the third (within the hold from the rise), then counted
        assert [failures(s) for s in shown] == [0, 0, 1, 1]
        assert [failed(s) for s in shown] == [0, 0, 1, 1]


COUNTERS = (
    "bifrost_batch_finished_total",
    "bifrost_batch_finished_requests_total",
    "bifrost_batch_failures_total",
)


class Watch:
    """Every scrape's counter samples; records each series that is shown lower than before."""

    def __init__(self, status: str = "failed") -> None:
        self.status = status
        self.last: dict[tuple[str, frozenset], float] = {}  # type: ignore[type-arg]
        self.drops: list[str] = []
        self.trace: list[float | None] = []

    def see(self, step: str, samples: Samples) -> None:
        for key, v in samples.items():
            if key[0] not in COUNTERS:
                continue
            before = self.last.get(key)
            if before is not None and v < before:
                self.drops.append(f"{step}: {key[0]}{dict(key[1])} {before} -> {v}")
            self.last[key] = v
        self.trace.append(
            samples.get(
                ("bifrost_batch_finished_total", frozenset({"provider": P, "status": self.status}.items()))
            )
        )


@pytest.mark.parametrize("scraped", [True, False], ids=["scraped", "render-only"])
def test_a_count_made_by_failing_polls_after_a_restart_is_not_dropped_back_to_its_restored_value(
    tmp_path: Path, scraped: bool
) -> None:
    """Restart; the first poll's first page counts a batch that failed while the exporter was down, its
    continuation pages fail (5xx) for longer than the hold. The count is held at the restored value for 60 s, then
    shown; at the next publish _hold_restored holds it again at the restored value: the series goes down, and so
    on every hold until a poll is up (audit 8, counts F1). `render-only` reads the exposition without a scrape
    being served, so the start-up hold is not ended by one."""
    clock = SimTime()
    spec = ProviderSpec(P, style="cursor", flavor="openai")
    watch = Watch()
    with gateway(clock, spec) as sim:
        for i in range(4):
            sim.add_batch(P, batch_id=f"old{i}", status="completed", created_at=int(clock.now) - 5000 + i,
                          completed_at=int(clock.now) - 4000)  # fmt: skip
        sim.add_batch(P, batch_id="run", status="in_progress", created_at=int(clock.now) - 50)
        with exporter(sim, clock, page_size=2, state_dir=tmp_path) as exp:
            for _ in range(3):
                exp.poll(P)
                watch.see("A", exp.samples())
                clock.advance(INTERVAL)
        clock.advance(60)  # down: the running batch fails
        sim.set_status(P, "run", "failed", int(clock.now) - 5, error_code="server_error")
        clock.advance(60)
        sim.set_fault("server_error", cursor_only=True)  # first page answers, continuation pages fail
        with exporter(sim, clock, page_size=2, state_dir=tmp_path, scrape_start=scraped) as exp:

            def look() -> Samples:
                return exp.samples() if scraped else parse_samples(exp.exporter.rendered.text.decode())

            watch.see("B restored", look())
            for i in range(20):  # 200 s of failing continuation pages: past the hold
                exp.poll(P)
                watch.see(f"B failing poll {i}", look())
                clock.advance(INTERVAL)
            sim.set_fault(None)
            for i in range(8):
                exp.poll(P)
                watch.see(f"B ok poll {i}", look())
                clock.advance(INTERVAL)
            if not scraped:
                # Never scraped: still held at the restored 0 (no hold ends before a scrape saw the start) ...
                assert watch.trace[-1] == 0
                exp.samples()  # ... until one has; the poll after it shows the count
                exp.poll(P)
                watch.see("B after a scrape", look())
    assert watch.drops == [], "\n".join(watch.drops)
    assert watch.trace[-1] == 1


def test_while_retrieves_fail_after_a_restart_a_count_is_not_dropped_back_to_its_restored_value(
    tmp_path: Path,
) -> None:
    """Bedrock through /v1/batches (the gateway ignores its cursor: a list is its first page; running batches
    below it are known by retrieves alone). Restart; every retrieve fails (a proxy that does not pass the retrieve
    route, 429s on retrieves) while every list answers: up 0 with last_success moving. A batch that expired while
    the exporter was down is counted from the list and held at its restored value for the hold, then shown; a
    hold later it is shown at the restored value again, and so on: the series goes down, repeatedly (audit 8,
    counts F1)."""
    clock = SimTime()
    spec = ProviderSpec(P, style="cursor", flavor="bedrock")
    watch = Watch("expired")
    with gateway(clock, spec) as sim:
        sim.add_batch(P, batch_id="run", status="in_progress", created_at=int(clock.now) - 50)
        with exporter(sim, clock, page_size=2, state_dir=tmp_path) as exp:
            exp.poll(P)
            clock.advance(INTERVAL)
            for i in range(2):  # two newer running batches push `run` below the only page a list reads
                sim.add_batch(P, batch_id=f"n{i}", status="in_progress", created_at=int(clock.now) - 5 + i)
            for _ in range(3):
                exp.poll(P)
                watch.see("A", exp.samples())
                clock.advance(INTERVAL)
        clock.advance(30)  # down: a new batch runs and expires
        sim.add_batch(P, batch_id="x", status="in_progress", created_at=int(clock.now) - 20)
        sim.set_status(P, "x", "expired", int(clock.now) - 1)
        clock.advance(30)
        sim.set_fault("server_error", provider=P, endpoint="retrieve")
        with exporter(sim, clock, page_size=2, state_dir=tmp_path) as exp:
            ups = []
            for i in range(20):
                exp.poll(P)
                s = exp.samples()
                ups.append(s.get(("bifrost_batch_exporter_up", frozenset({"provider": P}.items()))))
                watch.see(f"B poll {i}", s)
                clock.advance(INTERVAL)
    assert watch.drops == [], "\n".join(watch.drops)
    assert set(ups) == {0} and watch.trace[-1] == 1


def test_a_restart_during_a_hold_keeps_the_series_at_what_it_showed(tmp_path: Path) -> None:
    """A code no render foresaw (expired/server_error: the table seeds `failed` codes only) is held at 0 for a
    minute; the exporter restarts within it (a rollout: with the chart's Recreate strategy a new pod, every series
    new to Prometheus). The restored process showed the series at its count from its first scrape, born at 1 and
    invisible to increase() (audit 8, counts F2). What a render shows is saved with the counts: the series comes
    back at 0, and counts after a scrape has seen that and the hold has passed."""
    clock = SimTime()
    spec = ProviderSpec(P, style="cursor", flavor="openai")
    labels = {"provider": P, "status": "expired", "code": "server_error", "class": "provider"}
    with gateway(clock, spec) as sim:
        sim.add_batch(P, batch_id="x", status="in_progress", created_at=int(clock.now) - 50)
        with exporter(sim, clock, page_size=10, state_dir=tmp_path) as exp:
            exp.poll(P)
            clock.advance(INTERVAL)
            sim.set_status(P, "x", "expired", int(clock.now) - 1, error_code="server_error")
            exp.poll(P)
            held = value(exp.samples(), "bifrost_batch_failures_total", **labels)
        clock.advance(15)
        with exporter(sim, clock, page_size=10, state_dir=tmp_path) as exp:
            restored = value(exp.samples(), "bifrost_batch_failures_total", **labels)
            exp.poll(P)
            first = value(exp.samples(), "bifrost_batch_failures_total", **labels)
            for _ in range(6):  # the hold: max(60 s, the 10 s interval)
                clock.advance(INTERVAL)
                exp.poll(P)
            later = value(exp.samples(), "bifrost_batch_failures_total", **labels)
            counted = exp.exporter.poller.states[P].ledger.failures[("expired", "server_error", ())]
    assert (held, restored, first, later) == (0, 0, 0, 1)
    assert counted == 1


def test_a_head_request_is_not_the_scrape_that_ends_the_start_up_hold() -> None:
    """A HEAD of /metrics (a load balancer's check, a curl -I) is served no values: the start stays held."""
    clock = SimTime()
    spec = ProviderSpec(P, style="cursor", flavor="openai")
    with gateway(clock, spec) as sim, exporter(sim, clock, page_size=10, scrape_start=False) as exp:
        sim.add_batch(P, batch_id="run", status="in_progress", created_at=int(clock.now) - 50)
        exp.poll(P)
        assert httpx.head(exp.url + "/metrics", timeout=10).status_code == 200
        clock.advance(INTERVAL)
        sim.set_status(P, "run", "failed", int(clock.now) - 2, error_code="server_error")
        exp.poll(P)
        shown = value(exp.samples(), "bifrost_batch_failures_total", **LABELS)
    assert shown == 0


def _new_code_shown_while_the_host_clock_steps(step: float) -> list[float | None]:
    """A code no table seeds (a new series, held at 0 for max(60 s, interval)), counted after a scrape has seen the
    start; right after the poll that counts it, the host clock is stepped by `step` (NTP), then 12 polls: 2 minutes.
    The elapsed time the poller is given (SteppedClock.monotonic) runs on with the gateway's."""
    from exporter.client import BifrostClient
    from tests.harness import ExporterThread, make_settings, series
    from tests.test_counted_once import SteppedClock

    clock = SteppedClock()
    spec = ProviderSpec(P, style="cursor", flavor="openai")
    labels = {"provider": P, "status": "failed", "code": "weird_new_code"}
    shown: list[float | None] = []

    def failures(samples: Samples) -> float | None:
        found = [v for _, v in series(samples, "bifrost_batch_failures_total", **labels)]
        return found[0] if found else None

    with gateway(clock, spec) as sim:
        cfg = make_settings(sim.url, [P], poll_interval_seconds=INTERVAL, resync_interval_seconds=60, page_size=10,
                            stale_after_seconds=10**9)  # fmt: skip
        client = BifrostClient(cfg, sleep=clock.sleep, monotonic=clock.monotonic)
        with ExporterThread(cfg, clock=clock.host, monotonic=clock.monotonic, client=client) as exp:
            exp.poll(P)
            exp.samples()
            clock.advance(INTERVAL)
            sim.add_batch(P, batch_id="b1", status="failed", created_at=int(clock.now) - 50,
                          failed_at=int(clock.now) - 2, error_code="weird_new_code")  # fmt: skip
            exp.poll(P)
            shown.append(failures(exp.samples()))
            clock.step = step
            for _ in range(12):
                clock.advance(INTERVAL)
                exp.poll(P)
                shown.append(failures(exp.samples()))
    return shown


@pytest.mark.parametrize("step", [0.0, -3600.0, 3600.0])
def test_a_hold_lasts_its_time_whichever_way_the_host_clock_steps(step: float) -> None:
    """Audit 9 (lying F5): holds ended by the wall clock hid a new count for the size of a step back, and a step
    forward ended one at the next poll (a 30 s scrape could miss the 0, and the series was born at its count)."""
    shown = _new_code_shown_while_the_host_clock_steps(step)
    assert shown[:6] == [0, 0, 0, 0, 0, 0], shown  # 60 s of 0: the hold
    assert shown[-1] == 1, shown

"""A running batch leaves the picture only when the gateway says it is gone, and then its id is not counted twice.

Against the simulator on the injected clock of tests/test_incremental.py. A full list that stops early (a cursor the
gateway ignores) cannot take a running batch away: the ones it did not reach are retrieved until a 404 says they are
gone. One 404 is not enough: Bifrost's retrieve asks the provider's keys in turn and answers with the last key's
error, so the owning key's 429 reaches us as another key's 404; the second 404, a poll later, is. And a counted batch
that a 404 removed (after a flip-flop) is not counted again when it shows once more.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.ledger import ACTIVE_FORGET_POLLS
from exporter.simulator import ProviderSpec
from tests.harness import ExporterThread, series, value
from tests.test_incremental import INTERVAL, START, SimTime, exporter, gateway


def _polls(exp: ExporterThread, clock: SimTime, provider: str, n: int) -> None:
    for _ in range(n):
        exp.poll(provider)
        clock.advance(INTERVAL)


def test_a_list_that_stops_early_does_not_take_a_running_batch_away() -> None:
    """Gemini through /v1/batches: the gateway ignores `after`, so every full list is the first page
    (`cursor_ignored`). Four running batches lie beyond it and the budget retrieves about one a poll. They stay in
    the gauges while they run, and each one's finish is counted."""
    p = "gemini"
    clock = SimTime()
    with gateway(clock, ProviderSpec(p, style="cursor", flavor="gemini")) as sim:
        running = [f"batches/run-{i}" for i in range(4)]
        for i, bid in enumerate(running):
            counts = {"total": 10, "completed": 1, "failed": 0}
            sim.add_batch(
                p, batch_id=bid, status="in_progress", created_at=START - 5000 + i, request_counts=counts
            )
        with exporter(sim, clock, provider=p, page_size=4, max_requests_per_second=0.4) as exp:
            _polls(exp, clock, p, 3)
            assert value(exp.samples(), "bifrost_batches", provider=p, status="in_progress") == 4
            for i in range(4):  # four newer finished batches push the running ones off the only page listed
                created = int(clock.now) - 50 + i
                sim.add_batch(
                    p,
                    batch_id=f"batches/new-{i}",
                    status="completed",
                    created_at=created,
                    completed_at=created + 5,
                )
            _polls(exp, clock, p, 30)  # 300 s: several full lists, each stopped after its first page
            s = exp.samples()
            assert value(s, "bifrost_batch_exporter_coverage", provider=p, reason="cursor_ignored") == 1
            assert value(s, "bifrost_batches", provider=p, status="in_progress") == 4
            before = value(s, "bifrost_batch_finished_total", provider=p, status="completed") or 0
            for bid in running:
                sim.set_status(p, bid, "completed")
            _polls(exp, clock, p, 30)
            s = exp.samples()
            assert (
                value(s, "bifrost_batch_finished_total", provider=p, status="completed") or 0
            ) - before == 4
            assert value(s, "bifrost_batches", provider=p, status="in_progress") == 0


def test_one_404_does_not_lose_a_running_batch_two_in_a_row_do() -> None:
    """Anthropic: its list cannot page, so a running batch off the first page is known by retrieves alone. One
    retrieve answered 404 (the owning key rate-limited, another key's 404 passed on) keeps it; when it ends, its
    finish is counted. A batch really deleted is answered 404 twice, a poll apart, and leaves."""
    p = "anthropic"
    clock = SimTime()
    with gateway(clock, ProviderSpec(p, style="cursor", flavor="anthropic")) as sim:
        for bid, created in (("old", START - 5000), ("doomed", START - 4999)):
            sim.add_batch(p, batch_id=bid, status="in_progress", created_at=created)
        with exporter(sim, clock, provider=p, page_size=2) as exp:
            _polls(exp, clock, p, 2)
            for i in range(2):  # the two newer ones fill the only page listed
                sim.add_batch(p, batch_id=f"new{i}", status="in_progress", created_at=int(clock.now) - 5 + i)
            _polls(exp, clock, p, 2)
            assert value(exp.samples(), "bifrost_batches", provider=p, status="in_progress") == 4
            sim.set_fault("not_found", provider=p, endpoint="retrieve", batch_id="old", times=1)
            sim.delete(p, "doomed")
            exp.poll(p)  # one 404 each: both kept
            assert value(exp.samples(), "bifrost_batches", provider=p, status="in_progress") == 4
            clock.advance(INTERVAL)
            exp.poll(p)  # the second 404: doomed is gone; old answers again
            assert value(exp.samples(), "bifrost_batches", provider=p, status="in_progress") == 3
            clock.advance(INTERVAL)
            sim.set_status(p, "old", "ended")
            _polls(exp, clock, p, 3)
            s = exp.samples()
            assert value(s, "bifrost_batch_finished_total", provider=p, status="ended") == 1


def test_a_counted_batch_that_flipped_back_and_was_answered_404_is_not_counted_again() -> None:
    """x completes (counted), the gateway shows it running again (a flip-flop), its retrieves are answered 404 and
    it leaves, then it shows completed again as before: still counted once."""
    p = "openai"
    clock = SimTime()
    with gateway(clock, ProviderSpec(p, style="cursor", flavor="openai")) as sim:
        sim.add_batch(p, batch_id="x", status="in_progress", created_at=START - 1000)
        with exporter(sim, clock, provider=p, page_size=2, resync_interval_seconds=86_400) as exp:
            store = exp.exporter.poller._runs[p].store
            _polls(exp, clock, p, 3)
            sim.set_status(p, "x", "completed")
            done_at = sim.batch(p, "x")["completed_at"]
            _polls(exp, clock, p, 1)
            assert value(exp.samples(), "bifrost_batch_finished_total", provider=p, status="completed") == 1
            sim.set_status(p, "x", "in_progress")  # the flip, shown on the newest page
            _polls(exp, clock, p, 1)
            assert "x" in store.active
            # Two newer batches hold the newest page from now on: x is refreshed by retrieve.
            sim.add_batch(p, batch_id="n1", status="in_progress", created_at=int(clock.now) - 5)
            sim.add_batch(p, batch_id="n2", status="in_progress", created_at=int(clock.now) - 4)
            _polls(exp, clock, p, 1)
            stored = sim.batch(p, "x")
            sim.delete(p, "x")
            _polls(exp, clock, p, 2)  # two 404s a poll apart: gone
            assert "x" not in store
            stored.update(status="completed", completed_at=done_at)
            sim.load_batches(p, [stored])  # and there again, finished as before
            clock.now -= 15  # a small step back of the host clock makes a full list due at once
            _polls(exp, clock, p, 3)
            assert "x" in store
            assert value(exp.samples(), "bifrost_batch_finished_total", provider=p, status="completed") == 1


def _gemini_finish(tmp_path: Path, restart: bool) -> tuple[float | None, float]:
    """A running Gemini batch (10 requests) finishes, watched or while the exporter is down; its finish and the
    requests counted with it."""
    p = "gemini"
    clock = SimTime()
    with gateway(clock, ProviderSpec(p, style="cursor", flavor="gemini")) as sim:
        counts = {"total": 10, "completed": 7, "failed": 3}
        sim.add_batch(
            p, batch_id="job-1", status="in_progress", created_at=START - 600, request_counts=counts
        )
        with exporter(sim, clock, provider=p, state_dir=tmp_path) as exp:
            _polls(exp, clock, p, 4)
            if not restart:
                sim.set_status(p, "job-1", "completed")
                _polls(exp, clock, p, 3)
                s = exp.samples()
        if restart:
            sim.set_status(p, "job-1", "completed")  # while the exporter is down (a rolling deploy)
            clock.advance(INTERVAL)
            with exporter(sim, clock, provider=p, state_dir=tmp_path) as exp:
                # Past the hold of what a restart's first poll counts (max(60 s, the interval): presence.py).
                _polls(exp, clock, p, 8)
                s = exp.samples()
    requests = sum(v for _, v in series(s, "bifrost_batch_finished_requests_total", provider=p))
    return value(s, "bifrost_batch_finished_total", provider=p, status="completed"), requests


@pytest.mark.parametrize("restart", [False, True])
def test_a_summary_listed_batch_that_finished_across_a_restart_is_counted_with_its_requests(
    tmp_path: Path, restart: bool
) -> None:
    """Gemini's list items are summaries (no counts): a known batch's finish is counted from its retrieve object.
    After a restart the store is empty but the ledger still holds the id as running: its finished summary item is
    kept aside for a retrieve as well, not counted with the summary's zero requests."""
    assert _gemini_finish(tmp_path, restart) == (1, 10)


@pytest.mark.parametrize("deep", [False, True], ids=["summary-listed", "retrieves-alone"])
def test_a_running_batch_whose_retrieves_fail_longer_than_the_ledger_waits_is_still_counted(
    deep: bool,
) -> None:
    """Gemini: a known running batch's retrieves fail (the provider's 5xx for that job) for longer than the ledger
    keeps a running id it hears nothing of (ACTIVE_FORGET_POLLS). On the newest page it is shown by its summary item,
    which the poller leaves aside for a retrieve (store.defer_sparse): the list still showed it running every poll.
    Below the only page a list reads (`deep`: the gateway ignores the cursor) it is known by retrieves alone, and
    the store still holds it running. Either way the ledger keeps it: when it completes (Gemini gives no end time),
    its finish is counted, as the gauges show it."""
    p = "gemini"
    clock = SimTime()
    with gateway(clock, ProviderSpec(p, style="cursor", flavor="gemini")) as sim:
        counts = {"total": 10, "completed": 4, "failed": 0}
        sim.add_batch(
            p, batch_id="batches/g1", status="in_progress", created_at=START - 5000, request_counts=counts
        )
        with exporter(sim, clock, provider=p, page_size=2) as exp:
            _polls(exp, clock, p, 3)
            if deep:
                for i in range(2):  # two newer finished batches fill the only page a list reads
                    created = int(clock.now) - 50 + i
                    sim.add_batch(
                        p, batch_id=f"batches/new-{i}", status="completed", created_at=created,
                        completed_at=created + 5,
                    )  # fmt: skip
                _polls(exp, clock, p, 3)
            sim.set_fault("server_error", provider=p, endpoint="retrieve", batch_id="batches/g1")
            _polls(exp, clock, p, ACTIVE_FORGET_POLLS + 5)
            assert value(exp.samples(), "bifrost_batches", provider=p, status="in_progress") == 1
            sim.set_fault(None, provider=p)
            sim.set_status(p, "batches/g1", "completed")
            _polls(exp, clock, p, 3)
            s = exp.samples()
            assert value(s, "bifrost_batches", provider=p, status="in_progress") == 0
            # The newer ones were first seen finished, without an end time (Gemini's list): history, not counted.
            assert value(s, "bifrost_batch_finished_total", provider=p, status="completed") == 1


def test_a_running_batch_known_by_retrieves_alone_is_retrieved_again_after_a_restart(tmp_path: Path) -> None:
    """Anthropic (cursor ignored: a full list is the first page): two running batches below that page are known by
    retrieves alone. The exporter restarts with its state directory (a rolling deploy); the store starts empty, the
    restored ledger holds both as running. One was deleted meanwhile: two 404s a poll apart remove it and the
    ledger lets it go. The other is retrieved again after the first full list, shown running, and its end counted."""
    p = "anthropic"
    clock = SimTime()
    with gateway(clock, ProviderSpec(p, style="cursor", flavor="anthropic")) as sim:
        sim.add_batch(p, batch_id="bx", status="in_progress", created_at=START - 5000)
        sim.add_batch(p, batch_id="doomed", status="in_progress", created_at=START - 4999)
        settings = {"provider": p, "page_size": 2, "state_dir": tmp_path}
        with exporter(sim, clock, **settings) as exp:
            _polls(exp, clock, p, 3)
            for i in range(2):  # two newer batches fill the only page a list reads
                sim.add_batch(p, batch_id=f"new{i}", status="in_progress", created_at=int(clock.now) - 5 + i)
            _polls(exp, clock, p, 3)
            assert value(exp.samples(), "bifrost_batches", provider=p, status="in_progress") == 4
        sim.delete(p, "doomed")  # while the exporter is down
        clock.advance(INTERVAL)
        with exporter(sim, clock, **settings) as exp:
            _polls(exp, clock, p, 6)
            assert value(exp.samples(), "bifrost_batches", provider=p, status="in_progress") == 3
            assert not exp.exporter.poller._ledgers[p].holds_active("doomed")
            sim.set_status(p, "bx", "ended")
            _polls(exp, clock, p, 3)
            s = exp.samples()
            assert value(s, "bifrost_batch_finished_total", provider=p, status="ended") == 1
            assert value(s, "bifrost_batches", provider=p, status="in_progress") == 2

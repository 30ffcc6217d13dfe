"""The request budget in every phase of incremental polling, and what a short list may not take away.

Against the simulator on injected time (tests/test_incremental.py's harness). A poll's lists and retrieves share one
budget (poll_interval_seconds × max_requests_per_second × its share); running batches are refreshed by listing
down to them where that is cheaper than a retrieve each, also when some arrived after the last full list; a due
full list progresses at a steady share of each poll, not one page; the poll that completes a first full list does
not retrieve what that list showed this poll or the last; and a full list that ends early (has_more false) never
takes a running batch away that a retrieve still shows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from exporter.simulator import ProviderSpec, Simulator, demo_governance, write_key_dir
from tests.harness import ExporterThread, value
from tests.test_incremental import (
    INTERVAL,
    RESYNC,
    START,
    SimTime,
    count,
    exporter,
    finished_counts,
    gateway,
    poll_until_resynced,
)

P = "openai"


def _account(sim: Simulator, finished: int, active: int) -> None:
    """Finished history, then `active` running batches as the newest (the realistic mix's shape)."""
    for i in range(finished):
        c = START - 50_000 + i
        sim.add_batch(P, batch_id=f"f{i:04d}", status="completed", created_at=c, completed_at=c + 60)
    for i in range(active):
        sim.add_batch(P, batch_id=f"a{i:04d}", status="in_progress", created_at=START - 1_000 + i)


def _requests(sim: Simulator) -> int:
    return sim.requests(P, "list") + sim.requests(P, "retrieve")


def test_a_batch_no_full_list_placed_does_not_turn_every_refresh_into_a_retrieve() -> None:
    """30 running batches on pages 1-3 are refreshed by listing down to them. Batches that arrive after the last
    full list used to leave every running batch to a retrieve once one of them slipped off the head page (more than
    a whole list each poll: 33 % of a full list per interval on a realistic account, 49 % with three keys)."""
    clock = SimTime()
    with gateway(clock, ProviderSpec(P, style="cursor")) as sim:
        _account(sim, finished=50, active=30)  # 80 batches: 8 pages of 10
        with exporter(sim, clock, page_size=10, resync_interval_seconds=3600) as exp:
            poll_until_resynced(exp, clock)
            clock.advance(INTERVAL)
            exp.poll(P)
            before = _requests(sim)
            clock.advance(INTERVAL)
            exp.poll(P)
            steady = _requests(sim) - before
            for i in range(12):  # new batches at the head: a page and two more
                sim.add_batch(
                    P, batch_id=f"n{i:03d}", status="in_progress", created_at=int(clock.now) - 5 + i
                )
            clock.advance(INTERVAL)
            exp.poll(P)  # the head scan reads them (2 pages)
            clock.advance(INTERVAL)
            before = _requests(sim)
            exp.poll(P)  # nothing new: two of the new ones are now off the head page
            after_arrivals = _requests(sim) - before
    assert steady <= 4, steady  # the head page and the two below it
    assert after_arrivals <= 5, after_arrivals  # the head page and four below it (42 running on pages 1-5)


def _later_keys_account(sim: Simulator) -> None:
    """Three Bifrost keys listed one after the other: 100 finished batches on key 0 (10 pages of 10), then 10
    running batches above 15 finished ones on key 1, and 10 running ones on key 2."""
    for i in range(100):
        c = START - 50_000 + i
        sim.add_batch(
            P, batch_id=f"f{i:04d}", status="completed", created_at=c, completed_at=c + 60, api_key=0
        )
    for i in range(15):
        c = START - 40_000 + i
        sim.add_batch(
            P, batch_id=f"g{i:04d}", status="completed", created_at=c, completed_at=c + 60, api_key=1
        )
    for key in (1, 2):
        for i in range(10):
            c = START - 1_000 + i
            sim.add_batch(P, batch_id=f"k{key}-{i:02d}", status="in_progress", created_at=c, api_key=key)


@contextmanager
def _later_keys_exporter(clock: SimTime) -> Iterator[tuple[Simulator, ExporterThread]]:
    """The later keys' account, listed in full once (budget 50 a poll)."""
    with gateway(clock, ProviderSpec(P, style="cursor", keys=3)) as sim:
        _later_keys_account(sim)
        with exporter(
            sim, clock, page_size=10, max_requests_per_second=10, resync_interval_seconds=3600
        ) as exp:
            poll_until_resynced(exp, clock)
            yield sim, exp


def test_running_batches_on_a_providers_later_keys_are_refreshed_by_reading_their_pages_again() -> None:
    """Listing down to running batches on later Bifrost keys walks the earlier keys' whole history first (14 pages
    here), and a retrieve each costs 20 requests a poll: ~50 % of a full list per interval on a realistic account.
    The pages that hold them, read again by the cursors they were listed with, cost one request each: the head page
    and two pages a poll. A status change on such a page shows after one poll."""
    clock = SimTime()
    with _later_keys_exporter(clock) as (sim, exp):
        spent = _requests_per_poll(exp, clock, sim, 3)
        sim.set_status(P, "k2-03", "completed")
        sim.set_status(P, "k1-07", "failed")
        clock.advance(INTERVAL)
        before = _requests(sim)
        exp.poll(P)
        changed = _requests(sim) - before
        s = exp.samples()
    assert max(spent) <= 3, f"steady polls sent {spent} requests (the head page and two pages again is 3)"
    assert changed <= 3, changed
    assert count(s, "in_progress") == 18
    assert value(s, "bifrost_batch_finished_total", provider=P, status="completed") == 1
    assert value(s, "bifrost_batch_finished_total", provider=P, status="failed") == 1


def test_a_page_read_again_that_lost_a_batch_or_whose_cursor_is_refused_falls_back_to_retrieves() -> None:
    """A running batch its saved page no longer shows (deleted at the gateway) is retrieved in the same poll (a
    404: gone once the next poll's retrieve says so again); a saved cursor the gateway refuses is counted, and the
    batches of its page are retrieved instead."""
    clock = SimTime()
    with _later_keys_exporter(clock) as (sim, exp):
        sim.delete(P, "k2-05")
        clock.advance(INTERVAL)
        exp.poll(P)
        after_delete = count(exp.samples(), "in_progress")
        sim.set_fault("cursor_refused", provider=P, times=1)
        sim.set_status(P, "k1-02", "completed")
        sim.set_status(P, "k2-02", "completed")
        clock.advance(INTERVAL)
        before = sim.requests(P, "retrieve")
        exp.poll(P)
        retrieved = sim.requests(P, "retrieve") - before
        s = exp.samples()
    assert (
        after_delete == 20
    )  # one 404 may be another provider key's (Bifrost answers with the last key's error)
    assert value(s, "bifrost_batch_exporter_poll_errors_total", provider=P, reason="cursor_refused") == 1
    assert value(s, "bifrost_batch_exporter_up", provider=P) == 1
    assert 0 < retrieved <= 11, (
        retrieved
    )  # one page's running batches, not both pages', and the deleted one's
    assert count(s, "in_progress") == 17
    assert value(s, "bifrost_batch_finished_total", provider=P, status="completed") == 2


# Bedrock's list items are summaries (no counts); every page past the first is read by its cursor.
BEDROCK = ProviderSpec(P, style="cursor", flavor="bedrock", after_ignored=False)


def _summaries(sim: Simulator, running: int) -> None:
    """30 finished batches of history, then `running` running ones as the newest."""
    for i in range(30):
        c = START - 50_000 + i
        sim.add_batch(P, batch_id=f"f{i:04d}", status="completed", created_at=c, completed_at=c + 60)
    for i in range(running):
        sim.add_batch(P, batch_id=f"job{i:02d}", status="in_progress", created_at=START - 100 + i)


def test_running_batches_a_page_showed_without_counts_are_retrieved_not_listed_down_to() -> None:
    """Bedrock lists summaries (no counts): its running batches on the newest page, shown there each poll, are
    retrieved for their counts when due. Listing down below the head page or reading their pages again would only
    show them so again: each poll lists its head page once (an earlier version of the page reading listed one page
    more whenever their counts were due)."""
    clock = SimTime()
    with gateway(clock, BEDROCK) as sim:
        _summaries(sim, running=4)
        with exporter(sim, clock, page_size=10, resync_interval_seconds=100 * INTERVAL) as exp:
            poll_until_resynced(exp, clock)
            lists, retrieves = [], []
            for _ in range(12):
                clock.advance(INTERVAL)
                before = sim.requests(P, "list"), sim.requests(P, "retrieve")
                exp.poll(P)
                lists.append(sim.requests(P, "list") - before[0])
                retrieves.append(sim.requests(P, "retrieve") - before[1])
            s = exp.samples()
    assert lists == [1] * 12, lists
    assert sum(retrieves) >= 4, retrieves  # each one's counts, when due
    assert count(s, "in_progress") == 4


def test_running_summary_items_below_the_head_page_are_retrieved_when_due_not_every_poll() -> None:
    """Three pages of Bedrock's running batches (summaries, no counts): the walk down to them shows them each poll,
    and a batch whose counts a retrieve brought less than 10 polls ago is not retrieved again (as on the head
    page). Else every one of them was retrieved every poll, up to the whole budget (50 % of a full list per
    interval at the defaults with 300 running)."""
    clock = SimTime()
    with gateway(clock, BEDROCK) as sim:
        _summaries(sim, running=30)
        with exporter(sim, clock, page_size=10, resync_interval_seconds=100 * INTERVAL) as exp:
            poll_until_resynced(exp, clock)
            before = sim.requests(P, "retrieve")
            _requests_per_poll(exp, clock, sim, 12)
            retrieves = sim.requests(P, "retrieve") - before
            s = exp.samples()
    assert count(s, "in_progress") == 30
    assert 30 <= retrieves <= 2 * 30 * 12 / 10, (
        retrieves
    )  # each one's counts when due, about once in 10 polls


def _requests_per_poll(exp: ExporterThread, clock: SimTime, sim: Simulator, polls: int) -> list[int]:
    """Polls, one interval apart: the lists and retrieves the gateway received in each."""
    spent = []
    for _ in range(polls):
        clock.advance(INTERVAL)
        before = _requests(sim)
        exp.poll(P)
        spent.append(_requests(sim) - before)
    return spent


def _polls_to_count_a_completion(
    exp: ExporterThread, clock: SimTime, sim: Simulator, batch_id: str, *, settle: int, limit: int = 15
) -> int | None:
    """After a first full list and `settle` polls, `batch_id` completes at the gateway: how many polls, one interval
    apart, until its transition is counted (None: not within `limit`)."""
    poll_until_resynced(exp, clock)
    _requests_per_poll(exp, clock, sim, settle)
    sim.set_status(P, batch_id, "completed", int(clock.now))
    for n in range(1, limit + 1):
        clock.advance(INTERVAL)
        exp.poll(P)
        if value(exp.samples(), "bifrost_batch_finished_total", provider=P, status="completed") == 1:
            return n
    return None


def _two_per_page(sim: Simulator, pages: int, running_per_page: int, size: int = 10) -> list[str]:
    """Page 1 (the newest) all finished; each later page holds `running_per_page` running batches on top."""
    running = []
    for j in range(pages * size):  # j = 0: the newest
        created = START - 1_000 - j
        page, slot = divmod(j, size)
        if page >= 1 and slot < running_per_page:
            running.append(f"a{j:04d}")
            sim.add_batch(P, batch_id=running[-1], status="in_progress", created_at=created)
        else:
            sim.add_batch(
                P, batch_id=f"f{j:04d}", status="completed", created_at=created, completed_at=created + 60
            )
    return running


def test_with_a_short_budget_pages_read_again_and_retrieves_take_turns_least_recently_seen_first() -> None:
    """Budget 5 (10 s × 1/s × 0.5): 20 running batches, two on each of pages 2-11, more than one poll can
    refresh. Pages read again and retrieves share one queue, least recently seen first, so every batch is refreshed
    within a few polls. (The first version read the fullest pages first every poll: the same four, and a change on
    the deepest page waited for the next full list, an hour at the defaults; found by an audit.)"""
    clock = SimTime()
    with gateway(clock, ProviderSpec(P, style="cursor")) as sim:
        running = _two_per_page(sim, pages=11, running_per_page=2)
        with exporter(
            sim, clock, page_size=10, max_requests_per_second=1, resync_interval_seconds=3600
        ) as exp:
            deepest = running[-1]
            seen_after = _polls_to_count_a_completion(exp, clock, sim, deepest, settle=2)
    assert seen_after is not None and seen_after <= 6, f"the completion of {deepest} took {seen_after} polls"


def test_new_batches_on_a_later_key_show_within_two_full_list_floors_with_a_short_budget() -> None:
    """Budget 5 (a poll reads its head page and four more). Key 0: ten pages with three running batches each; key 1:
    two running batches on its first page, and a new one there every interval. The polls read key 1's page when
    its turn comes (every three polls or so, longer while a full list takes half of each budget), and the full list
    finds what they have not yet: no new batch waits more than two floors (12 polls). (The first version counted
    key 1's page as read by the polls because it could have been, never read it, and let the interval stretch to
    6 × 60 s: new batches there waited up to 45 polls; found by an audit.)"""
    clock = SimTime()
    with gateway(clock, ProviderSpec(P, style="cursor", keys=2)) as sim:
        for j in range(110):
            created = START - 10_000 - j
            page, slot = divmod(j, 10)
            if page >= 1 and slot < 3:
                sim.add_batch(P, batch_id=f"a{j:04d}", status="in_progress", created_at=created, api_key=0)
            else:
                sim.add_batch(
                    P, batch_id=f"f{j:04d}", status="completed", created_at=created, completed_at=created + 60,
                    api_key=0,
                )  # fmt: skip
        for j in range(10):
            created = START - 5_000 - j
            status = "in_progress" if j < 2 else "completed"
            sim.add_batch(P, batch_id=f"k1-{j:02d}", status=status, created_at=created, api_key=1)
        with exporter(sim, clock, page_size=10, max_requests_per_second=1, resync_interval_seconds=60) as exp:
            poll_until_resynced(exp, clock)
            unseen = []
            for n in range(120):
                clock.advance(INTERVAL)
                sim.add_batch(
                    P, batch_id=f"new{n:03d}", status="in_progress", created_at=int(clock.now) - 1, api_key=1
                )
                exp.poll(P)
                unseen.append(30 + 2 + n + 1 - (count(exp.samples(), "in_progress") or 0))
    # One arrives each poll, so n unseen means the oldest of them has waited n polls.
    assert max(unseen) <= 2 * 60 // INTERVAL, f"new batches waited up to {max(unseen)} polls"


def test_summary_list_items_on_later_keys_are_retrieved_not_read_again() -> None:
    """Bedrock lists summaries, and its running batches here sit two to a page on key 1 (behind key 0's history);
    budget 5. A summary item cannot refresh its batch, so its page is no way to it: they are retrieved, in turn, and
    a batch's completion shows within a few polls. (Reading their pages again took the whole budget every poll and
    refreshed nothing: the completion waited for the next full list; found by a randomized audit script.)"""
    clock = SimTime()
    spec = ProviderSpec(P, style="cursor", flavor="bedrock", keys=2, after_ignored=False)
    with gateway(clock, spec) as sim:
        for j in range(30):
            c = START - 50_000 + j
            sim.add_batch(
                P, batch_id=f"f{j:04d}", status="completed", created_at=c, completed_at=c + 60, api_key=0
            )
        for j in range(40):  # key 1: pages of 10, two running on each
            c = START - 1_000 - j
            if j % 10 < 2:
                sim.add_batch(P, batch_id=f"a{j:04d}", status="in_progress", created_at=c, api_key=1)
            else:
                sim.add_batch(
                    P, batch_id=f"g{j:04d}", status="completed", created_at=c, completed_at=c + 60, api_key=1
                )
        with exporter(
            sim, clock, page_size=10, max_requests_per_second=1, resync_interval_seconds=3600
        ) as exp:
            seen_after = _polls_to_count_a_completion(exp, clock, sim, "a0031", settle=3)
    assert seen_after is not None and seen_after <= 3, f"the completion took {seen_after} polls"


def test_listing_down_to_the_running_batches_keeps_to_the_polls_budget() -> None:
    """Budget: 10 s × 1 request/s × 0.5 = 5 requests a poll. 40 running batches spread over 8 pages: listing down
    to them would take 8 requests; the poll sends no more than its budget (the rest waits for the next poll)."""
    clock = SimTime()
    with gateway(clock, ProviderSpec(P, style="cursor")) as sim:
        for i in range(80):
            c = START - 50_000 + i
            if i % 2:
                sim.add_batch(P, batch_id=f"a{i:04d}", status="in_progress", created_at=c)
            else:
                sim.add_batch(P, batch_id=f"f{i:04d}", status="completed", created_at=c, completed_at=c + 60)
        with exporter(
            sim, clock, page_size=10, max_requests_per_second=1, resync_interval_seconds=3600
        ) as exp:
            poll_until_resynced(exp, clock)
            spent = _requests_per_poll(exp, clock, sim, 3)
    budget = int(INTERVAL * 1 * 0.5)
    assert max(spent) <= budget, f"steady polls sent {spent} requests; the budget is {budget}"


def test_a_due_full_list_progresses_at_a_share_of_every_poll() -> None:
    """Two serial keys; 8 running batches at the top of key 1, behind key 0's 10 pages: retrieving them is cheaper
    than listing down, and the budget is 5 (10 s × 1/s × 0.5). A due full list used to get what the retrieves left
    (one page a poll: 11 polls for 11 pages, 220 polls for a realistic three-key account at the defaults)."""
    clock = SimTime()
    with gateway(clock, ProviderSpec(P, style="cursor", keys=2)) as sim:
        for i in range(100):
            c = START - 50_000 + i
            sim.add_batch(
                P, batch_id=f"f{i:04d}", status="completed", created_at=c, completed_at=c + 60, api_key=0
            )
        for i in range(8):
            sim.add_batch(
                P, batch_id=f"a{i:04d}", status="in_progress", created_at=START - 1_000 + i, api_key=1
            )
        with exporter(sim, clock, page_size=10, max_requests_per_second=1, resync_interval_seconds=60) as exp:
            poll_until_resynced(exp, clock)
            clock.advance(60)  # the next full list is due
            polls = poll_until_resynced(exp, clock)
    pages = 11  # 100 / 10 on key 0, 8 on key 1
    assert polls <= -(-pages // 2), f"a due full list of {pages} pages took {polls} polls at a budget of 5"


def test_the_poll_that_ends_a_first_list_does_not_retrieve_what_it_listed_last_poll() -> None:
    """A first full list over two polls (budget 10 while it runs: the whole rate). The 30 running batches are on
    its first pages, listed by poll 1; poll 2 lists the last page and retrieves none of them (issue 20, item 1)."""
    clock = SimTime()
    with gateway(clock, ProviderSpec(P, style="cursor")) as sim:
        _account(sim, finished=75, active=30)  # 105 batches: 11 pages of 10, the running ones on pages 1-3
        with exporter(sim, clock, page_size=10, max_requests_per_second=1) as exp:
            exp.poll(P)
            assert sim.requests(P, "list") == 10
            assert not exp.exporter.poller.states[P].health.first_sync.complete
            clock.advance(INTERVAL)
            exp.poll(P)
            assert exp.exporter.poller.states[P].health.first_sync.complete
            assert sim.requests(P, "retrieve") == 0
            snapshot = exp.exporter.poller.states[P].snapshot
            assert snapshot is not None and snapshot.batches == 105


@pytest.mark.parametrize("restart", [False, True])
def test_a_list_that_ends_early_never_takes_a_running_batch_away(tmp_path: Path, restart: bool) -> None:
    """The gateway ends its lists after the first page for a while, saying they are complete. A running batch deep
    in the list, which retrieves still return, stays (an active batch goes on a 404, README "Polling"); it fails
    while the lists hide it, and that failure is counted once, also across a restart with a state_dir (it used to
    be dropped, its id forgotten, and the restart watermark moved past its end: never counted)."""
    clock = SimTime()
    with gateway(clock, ProviderSpec(P, style="cursor")) as sim:
        sim.add_batch(P, batch_id="x-long", status="in_progress", created_at=START - 60_000)
        for i in range(50):
            c = START - 50_000 + i
            sim.add_batch(P, batch_id=f"f{i:04d}", status="completed", created_at=c, completed_at=c + 60)
        with exporter(sim, clock, page_size=10, state_dir=tmp_path) as exp:
            poll_until_resynced(exp, clock)
            snapshot = exp.exporter.poller.states[P].snapshot
            assert snapshot is not None and snapshot.batches == 51
            sim.set_fault("ends_early", provider=P)
            clock.advance(RESYNC)
            poll_until_resynced(exp, clock)
            assert "x-long" in exp.exporter.poller._runs[P].store.active
            clock.advance(INTERVAL)
            sim.set_status(P, "x-long", "failed", int(clock.now))
            clock.advance(RESYNC)
            sim.add_batch(P, batch_id="new-1", status="in_progress", created_at=int(clock.now))
            poll_until_resynced(exp, clock)
            if not restart:
                sim.set_fault(None)
                clock.advance(RESYNC)
                poll_until_resynced(exp, clock)
                counts = finished_counts(exp.samples())
        if restart:
            clock.advance(INTERVAL)
            sim.set_fault(None)
            with exporter(sim, clock, page_size=10, state_dir=tmp_path) as exp:
                poll_until_resynced(exp, clock)
                counts = finished_counts(exp.samples())
    assert counts == {"failed": 1}, counts


def test_end_times_days_ahead_of_every_clock_are_not_history_counted_as_new() -> None:
    """A gateway whose end times run 30 days ahead (a bad clock, a unit mix-up): trusted, every finished batch of
    the history counted as a new transition at the first start (failure alerts for old failures). Such an end time
    is taken as none: the history is not counted, a batch watched while running still is."""
    clock = SimTime()
    ahead = 30 * 86_400
    with gateway(clock, ProviderSpec(P, style="cursor")) as sim:
        for i in range(20):
            c = START - 50_000 + i
            status = "failed" if i % 2 else "completed"
            end: dict[str, Any] = {f"{status}_at": c + 60 + ahead}
            sim.add_batch(P, batch_id=f"h{i:03d}", status=status, created_at=c, **end)
        sim.add_batch(P, batch_id="watched", status="in_progress", created_at=START - 100)
        with exporter(sim, clock, page_size=10) as exp:
            poll_until_resynced(exp, clock)
            assert finished_counts(exp.samples()) == {}
            clock.advance(INTERVAL)
            sim.set_status(P, "watched", "failed", int(clock.now) + ahead)
            exp.poll(P)
            assert finished_counts(exp.samples()) == {"failed": 1}


def test_the_full_list_loop_guard_counts_each_keys_walk_not_their_sum(tmp_path: Path) -> None:
    """The guard against a cursor loop spanning polls (100 × max_pages pages) applies to one walk. Each tenant key
    of a governance view walks every page of the account (60 here, under the guard's 100): summed over the keys,
    every full list stopped as max_pages and the second tenant's history was never listed."""
    gov = demo_governance(mandatory=True)
    a, b = gov.keys
    keys = tmp_path / "keys"
    write_key_dir([a, b], keys)
    clock = SimTime()
    with Simulator(
        providers=[ProviderSpec(P, style="cursor", flavor="openai")],
        lifecycle=False,
        clock=clock.time,
        governance=gov,
    ) as sim:
        clock.sim = sim
        clock.marks.append((clock.pace, clock.received()))
        for i in range(120):
            c = START - 50_000 + i
            owner = (a.id, b.id)[i % 2]
            sim.add_batch(
                P, batch_id=f"x{i:03d}", status="completed", created_at=c, completed_at=c + 60, owner=owner
            )
        settings: dict[str, Any] = {"virtual_key_dir": keys, "page_size": 2, "max_pages": 1}
        with exporter(
            sim, clock, max_requests_per_second=10, resync_interval_seconds=10**5, **settings
        ) as exp:
            for _ in range(3):
                exp.poll(P)
                clock.advance(INTERVAL)
            s = exp.samples()
            coverage = exp.exporter.poller.states[P].health.coverage
    assert (coverage, count(s, "completed")) == ("complete", 120)


def test_a_changed_views_first_list_is_estimated_from_the_last_walks_length(tmp_path: Path) -> None:
    """After a reload from one tenant key to two, each key walks every page of the account (30 pages here), which
    the store's batches (one tenant's third) would put at 10: the estimate comes from the last complete full list's
    walk, times the keys, and is never early by more than a poll or two."""
    gov = demo_governance(mandatory=True)
    a, b = gov.keys
    keys = tmp_path / "keys"
    write_key_dir([a], keys)
    clock = SimTime()
    spec = ProviderSpec(P, style="cursor", flavor="openai")
    with Simulator(providers=[spec], lifecycle=False, clock=clock.time, governance=gov) as sim:
        clock.sim = sim
        clock.marks.append((clock.pace, clock.received()))
        for i in range(60):
            c = START - 50_000 + i
            owner = (a.id, b.id, None)[i % 3]
            sim.add_batch(
                P, batch_id=f"x{i:03d}", status="completed", created_at=c, completed_at=c + 60, owner=owner
            )
        settings: dict[str, Any] = {"virtual_key_dir": keys, "page_size": 2}
        with exporter(
            sim, clock, max_requests_per_second=1, resync_interval_seconds=10**5, **settings
        ) as exp:
            poll_until_resynced(exp, clock)
            write_key_dir([a, b], keys)
            exp.exporter.client.update_credentials(exp.settings.reread_secret_files())
            estimates = []
            for _ in range(20):
                clock.advance(INTERVAL)
                exp.poll(P)
                first = exp.exporter.poller.states[P].health.first_sync
                if first.complete:
                    break
                if first.estimated_completion is not None:
                    estimates.append(first.estimated_completion)
            done_at = clock.now
    assert estimates
    assert max(done_at - e for e in estimates) <= 2 * INTERVAL, [done_at - e for e in estimates]


def test_a_budget_of_one_request_still_refreshes_a_running_batch_each_poll() -> None:
    """Budget 1 (10 s × 0.2/s × 0.5): the head scan takes it every poll. A running batch below the head page was
    then never refreshed until the next full list (an hour here, `refresh_deferred` 1 every poll): its completion
    went uncounted that long. The refresh gets one request a poll while running batches wait, as the cost
    look-ups do: one more than the budget, which pacing keeps within the rate."""
    clock = SimTime()
    with gateway(clock, ProviderSpec(P, style="cursor")) as sim:
        running = _two_per_page(sim, pages=3, running_per_page=1)  # two, on pages 2 and 3
        with exporter(
            sim, clock, page_size=10, max_requests_per_second=0.2, resync_interval_seconds=3600
        ) as exp:
            seen_after = _polls_to_count_a_completion(exp, clock, sim, running[0], settle=2)
            spent = _requests_per_poll(exp, clock, sim, 3)
    assert seen_after is not None and seen_after <= 2, f"the completion took {seen_after} polls"
    assert max(spent) <= 2, f"polls sent {spent} requests with a budget of one"


def test_a_budget_of_one_with_full_lists_due_goes_beyond_it_by_the_minimums_alone() -> None:
    """Budget 1 with a full list due every other poll: the head page, the full list's minimum of one and the
    refresh's (a view's running batch must not wait for the next full list) are all a poll sends."""
    clock = SimTime()
    with gateway(clock, ProviderSpec(P, style="cursor")) as sim:
        _two_per_page(sim, pages=3, running_per_page=1)
        with exporter(
            sim, clock, page_size=10, max_requests_per_second=0.2, resync_interval_seconds=20
        ) as exp:
            poll_until_resynced(exp, clock)
            spent = _requests_per_poll(exp, clock, sim, 8)
    assert max(spent) <= 3, f"polls sent {spent} requests with a budget of one"

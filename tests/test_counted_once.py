"""Every terminal transition counted exactly once, whatever happens around it (issue: counts you can trust).

Each test here is about a class of ways to lose or double a count, not one example:
- restarts in incremental mode, at any point of the poll cycle (head-only polls, a full list spread over polls),
  with transitions on later keys and deep pages while the exporter is down: the restored counts equal the truth;
- a cursor the exporter chose to send (a full list's continuation, a deeper listing) refused by the gateway: the
  walk restarts from the head instead of failing for ever;
- the host clock stepped forward and back by days while the gateway's clock runs on: nothing counted twice or
  dropped;
- a retrieve answered with another batch (a gateway, proxy or cache that lies): never folded.

Real parts: the simulator over loopback HTTP and whole in-process exporters (state written to a real directory);
time is injected (tests/test_incremental.py's SimTime), so no test sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from exporter.client import BifrostClient
from exporter.simulator import Simulator
from tests.harness import ExporterThread, make_settings, value
from tests.test_incremental import (
    INTERVAL,
    RESYNC,
    START,
    SimTime,
    counted_finished,
    exporter,
    finished_counts,
    gateway,
    multi_key,
    poll_until_resynced,
)

P = "openai"
KEYS = 3
ACTIVE = ("validating", "in_progress", "finalizing")
TERMINAL = ("completed", "failed", "expired", "cancelled")
HYPO = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def assert_counted(exp: ExporterThread, want: Counter[str]) -> None:
    """The ledger counted `want`, and the exposition never shows more: a series first counted by a provider's
    first successful poll, or one no render foresaw, shows 0 for a minute before its count (exporter/presence.py)."""
    counted = counted_finished(exp)
    shown = finished_counts(exp.samples())
    assert counted == want
    assert all(n <= counted[s] for s, n in shown.items()), (shown, counted)


class Truth:
    """What the test did at the gateway: every batch that reached a terminal status, once."""

    def __init__(self, sim: Simulator, clock: SimTime) -> None:
        self.sim = sim
        self.clock = clock
        self.seq = 0
        self.finished: dict[str, str] = {}

    def create(self, key: int, status: str, age: int = 100) -> str:
        self.seq += 1
        bid = f"t{self.seq:04d}"
        now = int(self.clock.now)
        self.sim.add_batch(
            P,
            batch_id=bid,
            status=status,
            created_at=now - age,
            expires_at=now - age + 86_400,
            api_key=key,
            request_counts={"total": 10, "completed": 3, "failed": 0},
        )
        if status in TERMINAL:
            self.finished[bid] = status
        return bid

    def move(self, pick: int, status: str) -> None:
        active = [str(b["id"]) for b in self.sim.batches(P) if b["status"] in ACTIVE]
        if not active:
            return
        bid = active[pick % len(active)]
        self.sim.set_status(P, bid, status)
        if status in TERMINAL:
            self.finished[bid] = status

    def counts(self) -> Counter[str]:
        return Counter(self.finished.values())


def fill_history(sim: Simulator, per_key: int = 6) -> None:
    """Finished history on every key (before the exporter starts: never counted), so keys span several pages."""
    for key in range(KEYS):
        for i in range(per_key):
            created = START - 50_000 + i
            sim.add_batch(
                P,
                batch_id=f"h{key}-{i:02d}",
                status="completed",
                created_at=created,
                completed_at=created + 60,
                api_key=key,
            )


# ---- restarts in incremental mode ------------------------------------------------------------------------------


def test_a_batch_that_fails_on_a_later_key_while_down_counts_once(tmp_path: Path) -> None:
    """The reproduction: a full list completes; a batch on the last key fails, where only the next full list can
    see it; head-only polls follow (they used to move the restart watermark past that failure); the exporter
    stops before the next full list and another batch there fails while it is down. After the restart both are
    counted once, as `full` mode counts them."""
    clock = SimTime()
    with gateway(clock, multi_key(KEYS)) as sim:
        fill_history(sim)
        truth = Truth(sim, clock)
        with exporter(sim, clock, state_dir=tmp_path) as exp:
            poll_until_resynced(exp, clock)
            clock.advance(INTERVAL)
            truth.create(key=KEYS - 1, status="failed")
            for _ in range(3):  # head-only polls: nothing new on the newest page
                clock.advance(INTERVAL)
                exp.poll(P)
            assert not finished_counts(exp.samples()), "seen by a head poll: this test lost its point"
        clock.advance(INTERVAL)
        truth.create(key=KEYS - 1, status="expired")  # while down
        clock.advance(INTERVAL)
        with exporter(sim, clock, state_dir=tmp_path) as exp:
            poll_until_resynced(exp, clock)
            assert truth.counts() == Counter({"failed": 1, "expired": 1})
            assert_counted(exp, truth.counts())


# One operation: ("create", key, status) | ("move", pick, status) | ("poll",) | ("wait",) | ("restart",)
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("create"), st.integers(0, KEYS - 1), st.sampled_from(ACTIVE + TERMINAL)),
        st.tuples(st.just("move"), st.integers(0, 1000), st.sampled_from(ACTIVE + TERMINAL)),
        st.tuples(st.just("poll")),
        st.tuples(st.just("poll")),
        st.tuples(st.just("wait")),
        st.tuples(st.just("restart")),
    ),
    max_size=25,
)


@HYPO
@given(ops=_ops, rate=st.sampled_from([0.2, 1.0, 50.0]), page_size=st.integers(1, 3))
def test_any_interleaving_of_polls_restarts_and_transitions_counts_each_batch_once(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[Any, ...]], rate: float, page_size: int
) -> None:
    """Creations and transitions on any key, head polls, full lists spread over polls (a low request rate) and
    restarts at any point between polls: once a full list has completed after the last operation, every batch
    that finished after the first start is counted exactly once, the same as a `full`-mode exporter that never
    restarted."""
    state_dir = tmp_path_factory.mktemp("state")
    clock = SimTime()
    common = {"page_size": page_size, "max_requests_per_second": rate}
    with gateway(clock, multi_key(KEYS)) as sim:
        fill_history(sim, per_key=4)
        truth = Truth(sim, clock)
        with exporter(sim, clock, poll_mode="full", max_pages=10_000, **common) as full:
            inc_cm = exporter(sim, clock, state_dir=state_dir, **common)
            inc = inc_cm.__enter__()
            try:
                for op in ops:
                    kind = op[0]
                    if kind == "create":
                        truth.create(op[1], op[2])
                    elif kind == "move":
                        truth.move(op[1], op[2])
                    elif kind == "poll":
                        inc.poll(P)
                        full.poll(P)
                        clock.advance(INTERVAL)
                    elif kind == "wait":
                        clock.advance(RESYNC)
                    else:
                        inc_cm.__exit__(None, None, None)
                        clock.advance(INTERVAL)
                        inc_cm = exporter(sim, clock, state_dir=state_dir, **common)
                        inc = inc_cm.__enter__()
                # A full list that started after the last operation: the one under way may have passed the page
                # a new batch went to (while the first full list runs there is no head scan).
                clock.advance(RESYNC)
                poll_until_resynced(inc, clock, limit=200)
                clock.advance(RESYNC)
                poll_until_resynced(inc, clock, limit=200)
                full.poll(P)
                want = truth.counts()
                assert_counted(inc, want)
                assert_counted(full, want)
            finally:
                inc_cm.__exit__(None, None, None)


# ---- a refused cursor restarts its walk ------------------------------------------------------------------------


@contextmanager
def _a_full_list_due() -> Iterator[tuple[Simulator, ExporterThread, SimTime]]:
    """Three Bifrost keys of history (15 pages of 2), the first full list done, the next one due; two requests a
    poll, so a full list spans several polls and keeps a cursor between them."""
    clock = SimTime()
    with gateway(clock, multi_key(KEYS)) as sim:
        fill_history(sim, per_key=10)
        with exporter(sim, clock, page_size=2, max_requests_per_second=0.4) as exp:
            poll_until_resynced(exp, clock)
            clock.advance(RESYNC)
            yield sim, exp, clock


@pytest.mark.parametrize("undecodable", [False, True])
def test_a_refused_continuation_cursor_restarts_the_full_list_from_the_head(undecodable: bool) -> None:
    """A full list spread over polls keeps its cursor between them; the gateway then refuses that cursor (400
    "invalid 'after'": the upstream no longer knows it; or, `undecodable`, Bifrost's own 500 "invalid pagination
    cursor"). The walk starts again from the head in the same poll: `up` stays 1, the provider's series stay, the
    refusal is counted and logged once, and the full list completes."""
    with _a_full_list_due() as (sim, exp, clock):
        with structlog.testing.capture_logs() as logs:
            exp.poll(P)  # the full list starts and stops at its budget, keeping a cursor
            resync = exp.exporter.poller._runs[P].store.resync
            assert resync is not None and resync.cursor is not None, "the full list did not span polls"
            sim.set_fault("cursor_refused", provider=P, times=1, undecodable=undecodable)
            clock.advance(INTERVAL)
            refused_before = sim.requests(P, "list")
            polls = poll_until_resynced(exp, clock, limit=60)
        s = exp.samples()
        assert sim.requests(P, "list") > refused_before
        assert value(s, "bifrost_batch_exporter_up", provider=P) == 1
        assert value(s, "bifrost_batch_exporter_truncated", provider=P) == 0
        refusals = value(s, "bifrost_batch_exporter_poll_errors_total", provider=P, reason="cursor_refused")
        assert refusals is not None and refusals >= 1
        assert value(s, "bifrost_batch_exporter_poll_errors_total", provider=P, reason="client_error") == 0
        assert value(s, "bifrost_batches", provider=P, status="completed") == KEYS * 10
        assert [e["event"] for e in logs if e["event"] == "cursor_refused"] == ["cursor_refused"]
        assert not [e for e in logs if e["event"] == "poll_failed"]
        assert polls < 60


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_an_outage_on_a_continuation_page_fails_the_poll_and_is_no_refused_cursor(status: int) -> None:
    """The gateway failing on a page after the first, every retry: a provider's 503 as Bifrost passes it on, Bifrost's
    own 504 (upstream timeout) and 502 (upstream unreachable), an internal 500. Every 5xx Bifrost sends is in its
    error shape, but only its "invalid pagination cursor" says the cursor was bad: this is a failed poll (`up` 0,
    `server_error`), never `cursor_refused` (which would restart the list from the head, poll after poll, and send
    the on-call engineer after cursors). The list keeps its cursor and completes once the gateway recovers."""
    with _a_full_list_due() as (sim, exp, clock):
        exp.poll(P)
        resync = exp.exporter.poller._runs[P].store.resync
        assert resync is not None and resync.cursor is not None, "the full list did not span polls"
        cursor = resync.cursor
        sim.set_fault("server_error", provider=P, cursor_only=True, status=status)
        clock.advance(INTERVAL)
        exp.poll(P)
        s = exp.samples()
        assert value(s, "bifrost_batch_exporter_up", provider=P) == 0
        assert (
            value(s, "bifrost_batch_exporter_poll_errors_total", provider=P, reason="server_error") or 0
        ) >= 1
        assert value(s, "bifrost_batch_exporter_poll_errors_total", provider=P, reason="cursor_refused") == 0
        resync = exp.exporter.poller._runs[P].store.resync
        assert resync is not None and resync.cursor == cursor  # kept, to go on from once the gateway answers
        sim.set_fault(None)
        clock.advance(INTERVAL)
        poll_until_resynced(exp, clock, limit=60)
        s = exp.samples()
    assert value(s, "bifrost_batch_exporter_up", provider=P) == 1
    assert value(s, "bifrost_batch_exporter_poll_errors_total", provider=P, reason="cursor_refused") == 0
    assert value(s, "bifrost_batches", provider=P, status="completed") == KEYS * 10


def test_a_refused_cursor_every_poll_never_stops_the_provider() -> None:
    """However often the gateway refuses continuation cursors, every poll still ends with data (`up` 1), and
    each refusal is counted; the log says it once."""
    with _a_full_list_due() as (sim, exp, clock):
        with structlog.testing.capture_logs() as logs:
            for _ in range(6):
                exp.poll(P)
                resync = exp.exporter.poller._runs[P].store.resync
                if resync is not None and resync.cursor is not None:
                    sim.set_fault("cursor_refused", provider=P, times=1)
                clock.advance(INTERVAL)
                assert value(exp.samples(), "bifrost_batch_exporter_up", provider=P) == 1
        refusals = value(
            exp.samples(), "bifrost_batch_exporter_poll_errors_total", provider=P, reason="cursor_refused"
        )
        assert refusals is not None and refusals >= 2
        assert len([e for e in logs if e["event"] == "cursor_refused"]) == 1


def test_a_full_list_whose_cursors_are_always_refused_says_it_stopped_early() -> None:
    """A proxy that mangles every continuation cursor: each full list restarts from the head and never ends. The
    newest pages keep the data current (`up` 1), but once the list's cursor is refused three times in a row the
    coverage says `cursor_refused` and `truncated` 1 (BifrostBatchProviderTruncated), instead of "complete" for a
    list that completed for the last time long ago; the next list that ends says complete again."""
    with _a_full_list_due() as (sim, exp, clock):
        sim.set_fault("cursor_refused", provider=P)  # every cursor, for good
        covered = []
        for _ in range(8):
            exp.poll(P)
            s = exp.samples()
            assert value(s, "bifrost_batch_exporter_up", provider=P) == 1
            covered.append(value(s, "bifrost_batch_exporter_coverage", provider=P, reason="cursor_refused"))
            clock.advance(INTERVAL)
        assert covered[0] == 0 and covered[-1] == 1
        assert value(s, "bifrost_batch_exporter_truncated", provider=P) == 1
        assert value(s, "bifrost_batch_exporter_coverage", provider=P, reason="complete") == 0
        sim.set_fault(None)
        poll_until_resynced(exp, clock, limit=60)
        s = exp.samples()
    assert value(s, "bifrost_batch_exporter_truncated", provider=P) == 0
    assert value(s, "bifrost_batch_exporter_coverage", provider=P, reason="complete") == 1
    assert value(s, "bifrost_batch_exporter_coverage", provider=P, reason="cursor_refused") == 0


# ---- clock steps -----------------------------------------------------------------------------------------------


class SteppedClock(SimTime):
    """The exporter's wall clock = the gateway's + a step the test moves (NTP stepping the host, a VM resumed)."""

    def __init__(self) -> None:
        super().__init__()
        self.step = 0.0

    def host(self) -> float:
        return self.now + self.step


@HYPO
@given(
    plan=st.lists(
        st.one_of(
            st.tuples(st.just("step"), st.sampled_from([-4, -3, -2, -1, 0, 1, 2, 3, 4])),  # days
            st.tuples(st.just("create"), st.integers(0, KEYS - 1), st.sampled_from(ACTIVE + TERMINAL)),
            st.tuples(st.just("move"), st.integers(0, 1000), st.sampled_from(TERMINAL)),
            st.tuples(st.just("poll")),
            st.tuples(st.just("hours"), st.integers(1, 30)),
        ),
        max_size=25,
    ),
    mode=st.sampled_from(["incremental", "full"]),
)
# Found by hypothesis: the host clock 4 days behind at the first poll, a batch that just finished at the gateway.
@example(plan=[("step", -4), ("create", 0, "completed"), ("poll",)], mode="incremental")
@example(plan=[("step", -4), ("create", 0, "completed"), ("poll",)], mode="full")
def test_clock_steps_never_count_a_batch_twice_or_drop_one(plan: list[tuple[Any, ...]], mode: str) -> None:
    """The host clock jumps days forward and back while the gateway's runs on (and the gateway's own clock moves
    on by hours): at no point is a batch counted twice, and once the steps are undone and a full list completes,
    every batch that finished is counted."""
    clock = SteppedClock()
    with gateway(clock, multi_key(KEYS)) as sim:
        fill_history(sim, per_key=3)
        truth = Truth(sim, clock)
        cfg = make_settings(
            sim.url, [P], poll_interval_seconds=INTERVAL, resync_interval_seconds=RESYNC, page_size=2,
            stale_after_seconds=10**9, poll_mode=mode, max_pages=10_000,
        )  # fmt: skip
        client = BifrostClient(cfg, sleep=clock.sleep, monotonic=clock.monotonic)
        with ExporterThread(cfg, clock=clock.host, client=client) as exp:

            def poll() -> None:
                exp.poll(P)
                clock.advance(INTERVAL)
                counted = finished_counts(exp.samples())
                assert all(counted[s] <= n for s, n in truth.counts().items()), (counted, truth.counts())
                assert sum(counted.values()) <= len(truth.finished)

            unpolled = 0.0  # gateway hours since the last poll
            for op in plan:
                if op[0] == "step":
                    clock.step = op[1] * 86_400.0
                elif op[0] == "create":
                    truth.create(op[1], op[2])
                elif op[0] == "move":
                    truth.move(op[1], op[2])
                elif op[0] == "hours":
                    # A batch first seen more than the ledger's retention (48 h) after it ended is history by the
                    # contract, not a transition: the truth counts every batch, so the exporter polls at least
                    # once a day of gateway time (a pod down longer than the retention is docs/state.md's case).
                    if unpolled + op[1] > 24:
                        poll()
                        unpolled = 0.0
                    unpolled += op[1]
                    clock.advance(op[1] * 3600.0)
                else:
                    poll()
                    unpolled = 0.0
            clock.step = 0.0
            clock.advance(RESYNC)
            poll_until_resynced(exp, clock, limit=100)
            assert_counted(exp, truth.counts())


# ---- a retrieve answered with another batch --------------------------------------------------------------------


class LyingGateway:
    """A loopback gateway whose retrieve answers are chosen by the test (a proxy or cache that mixes up ids)."""

    def __init__(self) -> None:
        self.answers: dict[str, dict[str, Any]] = {}
        self.listing: list[dict[str, Any]] = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/v1/batches":
                    body = {"object": "list", "data": gateway.listing, "has_more": False}
                else:
                    body = gateway.answers.get(path.rsplit("/", 1)[-1], {"error": {"message": "nope"}})
                raw = json.dumps(body).encode()
                self.send_response(200 if "id" in body or "data" in body else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> LyingGateway:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _batch(batch_id: str, status: str = "failed") -> dict[str, Any]:
    return {
        "id": batch_id,
        "object": "batch",
        "status": status,
        "created_at": START,
        "failed_at": START + 60,
        "request_counts": {"total": 2, "completed": 1, "failed": 1},
    }


@contextmanager
def lying_gateway() -> Iterator[LyingGateway]:
    with LyingGateway() as gw:
        yield gw


_other_ids = st.one_of(
    st.just("asked"),
    st.sampled_from(["other", "ASKED", "asked ", " asked", "asked\x00", "ask", "asked2", ""]),
    st.text(max_size=12),
)


@pytest.fixture(scope="module")
def shared_lying_gateway() -> Iterator[LyingGateway]:
    with lying_gateway() as gw:
        yield gw


@settings(max_examples=60, deadline=None)
@given(answered=_other_ids)
def test_a_retrieve_answer_is_used_only_when_it_is_the_batch_asked_for(
    shared_lying_gateway: LyingGateway, answered: str
) -> None:
    gw = shared_lying_gateway
    gw.answers["asked"] = _batch(answered)
    client = BifrostClient(make_settings(gw.url, [P]))

    async def go() -> Any:
        try:
            return await client.retrieve(P, "asked")
        finally:
            await client.aclose()

    got = asyncio.run(go())
    if answered == "asked":
        assert got.batch is not None and got.batch.id == "asked" and got.failure is None
    else:
        assert got.batch is None and not got.gone
        assert got.failure is not None and got.failure.reason == "invalid_response"


def test_a_gateway_answering_retrieves_with_another_batch_folds_nothing() -> None:
    """Batch a is active and known; every retrieve of it answers with c, a failed batch the list never showed.
    Folding c under a's id would count a failure that is not the account's and keep a for ever: instead nothing
    is folded, a keeps its last state, and the failure is logged as invalid_response."""
    with lying_gateway() as gw:
        gw.listing = [{**_batch("a", "in_progress"), "failed_at": None}]
        cfg = make_settings(gw.url, [P], stale_after_seconds=10**9)
        with ExporterThread(cfg, clock=lambda: START + 100.0) as exp:
            exp.poll(P)  # the first full list: a is active
            gw.listing = [
                {**_batch("x-new", "in_progress"), "failed_at": None}
            ]  # a drops off the newest page
            gw.answers["a"] = {**_batch("c"), "created_at": START + 150, "failed_at": START + 200}
            with structlog.testing.capture_logs() as logs:
                for _ in range(3):
                    exp.poll(P)
            s = exp.samples()
            gw.answers["a"] = {**_batch("a", "in_progress"), "failed_at": None}  # the gateway mended
            exp.poll(P)
            mended = exp.samples()
        assert value(mended, "bifrost_batch_exporter_up", provider=P) == 1
        assert value(s, "bifrost_batch_finished_total", provider=P, status="failed") == 0
        assert value(s, "bifrost_batches", provider=P, status="failed") == 0
        assert value(s, "bifrost_batches", provider=P, status="in_progress") == 2  # a (last state) and x-new
        failures = [e for e in logs if e["event"] == "retrieve_failed"]
        assert failures and failures[0]["reason"] == "invalid_response"
        # A request of the poll failed: up is 0 and the reason counted (the list's picture is still published).
        assert value(s, "bifrost_batch_exporter_up", provider=P) == 0
        assert (
            value(s, "bifrost_batch_exporter_poll_errors_total", provider=P, reason="invalid_response") == 3
        )


# --- the host clock behind at a restart, ahead during a full list (found by a randomized audit) ----------------


def _history(sim: Simulator) -> None:
    """Six batches that finished 2 to 7 hours before the exporter's first start: history, never counted."""
    for i in range(6):
        end = START - 7200 - 3600 * i
        sim.add_batch(
            P, batch_id=f"h{i}", status="failed", created_at=end - 600, failed_at=end, api_key=i % 3
        )


def _exporter(sim: Simulator, clock: SimTime, host: Any, **kw: Any) -> ExporterThread:
    cfg = make_settings(
        sim.url, [P], poll_interval_seconds=10, resync_interval_seconds=60, page_size=2,
        stale_after_seconds=10**9, log_level="error", **kw,
    )  # fmt: skip
    client = BifrostClient(cfg, sleep=clock.sleep, monotonic=clock.monotonic)
    return ExporterThread(cfg, clock=host, client=client)


def test_a_restart_on_a_host_whose_clock_is_behind_never_counts_history(tmp_path: Path) -> None:
    """The first start (host clock right) polls before its first full list is through (history on the later keys
    unseen) and is stopped (a rollout, a liveness kill). The pod comes back on a node whose clock is a day behind:
    the restored threshold was min(this start, watermark), so every batch that finished in the day before the
    watermark, history by the state file's own record, counted as a new failure. The gateway's clock, saved with
    the state, now keeps the watermark."""
    clock = SimTime()
    with Simulator(providers=[multi_key(3)], lifecycle=False, clock=clock.time) as sim:
        clock.sim = sim
        _history(sim)
        kw: dict[str, Any] = {"state_dir": tmp_path, "max_requests_per_second": 0.2}  # 2 requests a poll
        with _exporter(sim, clock, clock.time, **kw) as exp:
            exp.poll(P)
            assert exp.exporter.poller._runs[P].synced is False  # the later keys' history not listed yet
        clock.advance(60)
        with _exporter(sim, clock, lambda: clock.now - 86_400.0, state_dir=tmp_path) as exp:
            for _ in range(10):
                exp.poll(P)
                clock.advance(10)
            assert exp.exporter.poller._runs[P].synced is True
            assert finished_counts(exp.samples()) == Counter()


@pytest.mark.parametrize("ahead_days", [0, 3])
def test_a_host_clock_ahead_never_moves_the_watermark_past_a_batch_the_full_list_did_not_see(
    tmp_path: Path, ahead_days: int
) -> None:
    """The restart watermark was min(full list's start by the host clock, gateway_now at its end). With the host
    clock stepped ahead while running (handled, says docs/state.md), a full list spread over polls gets the
    gateway's newest timestamp at its END as watermark. A batch that fails on a later Bifrost key's head after the
    list passed that key (only the next full list can see it) has an end time below that watermark: after a
    restart before the next full list it was taken for history, never counted. Now the gateway's clock when the
    list began bounds it."""
    clock = SimTime()
    step = [0.0]
    with Simulator(providers=[multi_key(3)], lifecycle=False, clock=clock.time) as sim:
        clock.sim = sim
        for key in range(3):
            for i in range(8):
                created = START - 50_000 + i
                sim.add_batch(P, batch_id=f"h{key}-{i}", status="completed", created_at=created,
                              completed_at=created + 60, api_key=key)  # fmt: skip
        kw: dict[str, Any] = {"state_dir": tmp_path, "max_requests_per_second": 0.2}  # 2 requests a poll
        with _exporter(sim, clock, lambda: clock.now + step[0], **kw) as exp:
            poll_until_resynced(exp, clock)
            step[0] = ahead_days * 86_400.0  # NTP steps the host three days ahead (0: the control)
            clock.advance(600)
            run = exp.exporter.poller._runs[P]

            def bifrost_key() -> int:  # the gateway's key the full list's cursor points into
                resync = run.store.resync
                if resync is None or resync.cursor is None:
                    return -1
                raw = resync.cursor + "=" * (-len(resync.cursor) % 4)
                return int(json.loads(base64.urlsafe_b64decode(raw))["i"])

            for _ in range(50):  # until the next full list is walking the last key
                exp.poll(P)
                clock.advance(10)
                if bifrost_key() == 2:
                    break
            assert bifrost_key() == 2
            # Key 1 is behind the full list now: a batch fails there, then one starts on key 0 (a head scan sees
            # it, moving the gateway's clock past the failure).
            sim.add_batch(P, batch_id="x", status="failed", created_at=int(clock.now) - 30, api_key=1)
            clock.advance(5)
            sim.add_batch(P, batch_id="y", status="in_progress", created_at=int(clock.now), api_key=0)
            last = exp.exporter.poller.states[P].ledger.last_resync
            for _ in range(50):
                exp.poll(P)
                clock.advance(10)
                if exp.exporter.poller.states[P].ledger.last_resync != last:
                    break
            assert finished_counts(exp.samples()) == Counter(), (
                "x seen before the restart: the test lost its point"
            )
        step[0] = 0.0
        clock.advance(60)
        with _exporter(sim, clock, lambda: clock.now + step[0], **kw) as exp:
            poll_until_resynced(exp, clock)
            clock.advance(600)
            poll_until_resynced(exp, clock)
            assert_counted(exp, Counter({"failed": 1}))

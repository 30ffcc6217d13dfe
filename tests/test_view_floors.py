"""From when a key's batches count: a key added to the view (SIGHUP, or while the exporter was down) brings its
tenant's past as history, and no batch the view before would have counted is lost to it.

The first version of the per-key floor (review 12) counted or dropped a batch by whichever key listed it first: an
unowned batch (every key sees it) that ended while the exporter was down was history when an added key, sorted ahead,
listed it first; so were the batches of a view of the whole account moved to one tenant's key, and of a key file
renamed. Against the simulator with Bifrost's governance (tests/test_view_change.py), on injected time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog

from exporter import statefile
from exporter.client import BifrostClient
from exporter.poller import Poller
from exporter.simulator import ProviderSpec, Simulator, write_key_dir
from exporter.simulator.governance import Governance, VirtualKey
from tests.harness import ExporterThread, make_settings
from tests.test_incremental import INTERVAL, START, SimTime, exporter, poll_until_resynced
from tests.test_view_change import A, B, C, P, _change_view, _counted, _polls

MANDATORY = Governance(keys=(A, B, C), mandatory=True)
OPEN = Governance(keys=(A, B, C), mandatory=False)


@contextmanager
def _gateway(governance: Governance = MANDATORY) -> Iterator[tuple[Simulator, SimTime]]:
    clock = SimTime()
    spec = ProviderSpec(P, style="cursor", flavor="anthropic")
    with Simulator(providers=[spec], lifecycle=False, clock=clock.time, governance=governance) as sim:
        clock.sim = sim
        clock.marks.append((clock.pace, clock.received()))
        sim.add_batch(P, batch_id="b-run", status="in_progress", created_at=START - 3000, owner=B.id)
        yield sim, clock


def _ends_while_down(sim: Simulator, clock: SimTime, batch_id: str, owner: str | None) -> None:
    """A batch created and ended while no exporter runs: only a list can show it, already ended."""
    clock.advance(300)
    sim.add_batch(P, batch_id=batch_id, status="in_progress", created_at=int(clock.now), owner=owner)
    clock.advance(300)
    sim.set_status(P, batch_id, "ended")
    clock.advance(300)


def _restart(sim: Simulator, clock: SimTime, **settings: Any) -> float:
    with exporter(sim, clock, provider=P, **settings) as exp:
        _polls(exp, clock, 4)
        return _counted(exp)


@pytest.mark.parametrize("mode", ["incremental", "full"])
@pytest.mark.parametrize("added", [True, False], ids=["a key added ahead", "the view unchanged"])
def test_an_unowned_batch_that_ended_while_down_counts_once_whatever_key_lists_it_first(
    tmp_path: Path, mode: str, added: bool
) -> None:
    """View (tenant-b); while the exporter is down an unowned batch runs and ends, and tenant-a's key (sorted ahead)
    is added. The view before would have counted it: the keys it had list first."""
    keys, state = tmp_path / "keys", tmp_path / "state"
    write_key_dir((B,), keys)
    with _gateway() as (sim, clock):
        with exporter(sim, clock, provider=P, virtual_key_dir=keys, state_dir=state, poll_mode=mode) as exp:
            _polls(exp, clock, 4)
        _ends_while_down(sim, clock, "u1", None)
        if added:
            write_key_dir((A, B), keys)
        assert _restart(sim, clock, virtual_key_dir=keys, state_dir=state, poll_mode=mode) == 1


@pytest.mark.parametrize("mode", ["incremental", "full"])
def test_a_view_of_the_whole_account_moved_to_a_key_loses_nothing_it_saw(tmp_path: Path, mode: str) -> None:
    keys, state = tmp_path / "keys", tmp_path / "state"
    with _gateway(OPEN) as (sim, clock):
        with exporter(sim, clock, provider=P, state_dir=state, poll_mode=mode) as exp:
            _polls(exp, clock, 4)
        _ends_while_down(sim, clock, "b-new", B.id)
        write_key_dir((B,), keys)
        assert _restart(sim, clock, virtual_key_dir=keys, state_dir=state, poll_mode=mode) == 1


def _unsalted(value: str) -> str:
    """The fingerprint builds before the salt wrote: the first 64 bits of the key's bare SHA-256."""
    return hashlib.sha256(value.encode()).hexdigest()[:16]


@pytest.mark.parametrize(
    ("saved", "counted"),
    [(None, 1), (_unsalted, 1), (lambda value: "zz:" + _unsalted(value), 0)],
    ids=["salted", "unsalted (an earlier build)", "a salt no build wrote"],
)
def test_a_key_file_renamed_while_down_is_the_same_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, saved: Callable[[str], str] | None, counted: int
) -> None:
    """Known by its fingerprint under the other name, whichever release took it; a fingerprint that matches nothing
    makes the renamed file a new key, its tenant's past history."""
    renamed = VirtualKey(id=B.id, value=B.value, name="tenant-b-renamed")
    keys, state = tmp_path / "keys", tmp_path / "state"
    write_key_dir((B,), keys)
    with _gateway() as (sim, clock):
        with monkeypatch.context() as patch:
            if saved is not None:
                fingerprint = saved(B.value)
                patch.setattr(
                    Poller,
                    "_saved_view",
                    lambda self, run: {"tenant-b": [fingerprint, run.key_floors["tenant-b"]]},
                )
            with exporter(sim, clock, provider=P, virtual_key_dir=keys, state_dir=state) as exp:
                _polls(exp, clock, 4)
        _ends_while_down(sim, clock, "b-new", B.id)
        for path in keys.iterdir():
            path.unlink()
        write_key_dir((renamed,), keys)
        assert _restart(sim, clock, virtual_key_dir=keys, state_dir=state) == counted


def test_a_first_start_stopped_before_its_first_poll_keeps_its_view(tmp_path: Path) -> None:
    """A fresh state's first record is written at start; without the view in it, a process stopped (or killed)
    before its first poll was saved left a state that took no key for new: tenant-a's batch that ended while the
    exporter was down counted when tenant-a's key was added (audit 12)."""
    keys, state = tmp_path / "keys", tmp_path / "state"
    write_key_dir((B,), keys)
    with _gateway() as (sim, clock):
        with exporter(sim, clock, provider=P, virtual_key_dir=keys, state_dir=state):
            pass  # started and stopped before a poll
        restored = statefile.read(state, P)
        assert restored is not None and list(restored.state["view"]) == ["tenant-b"]
        _ends_while_down(sim, clock, "a-new", A.id)
        write_key_dir((A, B), keys)
        assert _restart(sim, clock, virtual_key_dir=keys, state_dir=state) == 0


@pytest.mark.parametrize("mode", ["incremental", "full"])
@pytest.mark.parametrize("change", ["restart", "sighup"])
def test_a_refused_keys_batch_that_ended_meanwhile_counts_after_a_restart_or_view_change(
    tmp_path: Path, mode: str, change: str
) -> None:
    """tenant-b's key refused on the provider (403 provider_blocked) for a while: its running batch ends meanwhile,
    and tenant-a's activity moves the gateway's clock past that end. The lists over tenant-a's key are complete, but
    they saw none of tenant-b's batches: they moved the watermark past the end, so after a restart or a view change
    the end was history once tenant-b was allowed again (audit 12). Within one process it counted."""
    keys, state = tmp_path / "keys", tmp_path / "state"
    write_key_dir((A, B), keys)
    with _gateway() as (sim, clock):
        with exporter(sim, clock, provider=P, virtual_key_dir=keys, state_dir=state, poll_mode=mode) as exp:
            _polls(exp, clock, 4)
            sim.set_virtual_key(dataclasses.replace(B, providers=frozenset({"azure"})))
            poll_until_resynced(exp, clock, provider=P)
            sim.set_status(P, "b-run", "ended")
            clock.advance(INTERVAL)
            sim.add_batch(P, batch_id="a-run", status="in_progress", created_at=int(clock.now), owner=A.id)
            for _ in range(2):
                clock.advance(INTERVAL)
                poll_until_resynced(exp, clock, provider=P)
            assert _counted(exp) == 0
            if change == "sighup":
                _change_view(exp, keys, A, B, C)
                sim.set_virtual_key(B)
                _polls(exp, clock, 2)
                poll_until_resynced(exp, clock, provider=P)
                assert _counted(exp) == 1
        if change == "restart":
            sim.set_virtual_key(B)
            assert _restart(sim, clock, virtual_key_dir=keys, state_dir=state, poll_mode=mode) == 1


def test_the_state_holds_salted_fingerprints_no_two_alike(tmp_path: Path) -> None:
    """A bare hash of a key is the same in every deployment and file (they can be linked, and a known key looked up
    in a table of hashes): each fingerprint is an HMAC under its own random salt, and still recognises its key."""
    keys, state = tmp_path / "keys", tmp_path / "state"
    write_key_dir((B,), keys)
    with _gateway() as (sim, clock):
        with exporter(sim, clock, provider=P, virtual_key_dir=keys, state_dir=state) as exp:
            _polls(exp, clock, 2)
        url = sim.url
    restored = statefile.read(state, P)
    assert restored is not None
    fingerprint = restored.state["view"]["tenant-b"][0]
    assert fingerprint.count(":") == 1 and _unsalted(B.value) not in fingerprint
    client = BifrostClient(make_settings(url, [P], virtual_key_dir=keys))
    first, second = client.key_fingerprints()["tenant-b"], client.key_fingerprints()["tenant-b"]
    assert len({fingerprint, first, second}) == 3
    assert all(client.key_matches("tenant-b", fp) for fp in (fingerprint, first, second, _unsalted(B.value)))
    assert not client.key_matches("tenant-b", _unsalted(A.value))
    assert not client.key_matches("tenant-a", fingerprint)


@pytest.mark.parametrize("mode", ["incremental", "full"])
def test_a_key_added_ahead_on_sighup_leaves_a_short_unowned_batch_counted(tmp_path: Path, mode: str) -> None:
    """An unowned batch created after the last poll has ended when SIGHUP adds tenant-a's key (sorted ahead)."""
    keys = tmp_path / "keys"
    write_key_dir((B,), keys)
    with (
        _gateway() as (sim, clock),
        exporter(sim, clock, provider=P, virtual_key_dir=keys, poll_mode=mode) as exp,
    ):
        _polls(exp, clock, 6)
        sim.add_batch(P, batch_id="u1", status="in_progress", created_at=int(clock.now) - 20, owner=None)
        sim.set_status(P, "u1", "ended", int(clock.now) - 5)
        _change_view(exp, keys, A, B)
        _polls(exp, clock, 4)
        assert _counted(exp) == 1


@pytest.mark.parametrize("bad", [10**400, "x", None, [1, 2, 3], True])
def test_a_saved_view_no_release_wrote_does_not_stop_the_polls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: object
) -> None:
    """A view entry whose floor no float holds (a hand edit, a writer's bug) made every poll fail
    (poll_task_failed, for ever); such an entry is left out and its key counts from this start."""
    keys, state = tmp_path / "keys", tmp_path / "state"
    write_key_dir((B,), keys)
    with _gateway() as (sim, clock):
        with monkeypatch.context() as patch:
            patch.setattr(
                Poller, "_saved_view", lambda self, run: {"tenant-b": [run.key_prints["tenant-b"], bad]}
            )
            with exporter(sim, clock, provider=P, virtual_key_dir=keys, state_dir=state) as exp:
                _polls(exp, clock, 2)
        restored = statefile.read(state, P)
        assert restored is not None and restored.state["view"]["tenant-b"][1] == bad
        sim.set_status(P, "b-run", "ended")
        with exporter(sim, clock, provider=P, virtual_key_dir=keys, state_dir=state) as exp:
            _polls(exp, clock, 3)
            assert _counted(exp) == 1  # watched running before the stop: counted whatever the floor
            assert exp.exporter.poller.failing_tasks() == []


def test_a_gateway_change_is_written_at_once(tmp_path: Path) -> None:
    """bifrost_url changed, and the first process with it stops before its first poll: the next one must not see
    the old URL again and count from its own start (what failed in between would be history)."""
    state = tmp_path / "state"
    with Simulator(providers=[ProviderSpec("openai")], lifecycle=False) as sim:
        port = sim.url.rsplit(":", 1)[1]
        first, second = f"http://127.0.0.1:{port}", f"http://localhost:{port}"
        sim.add_batch("openai", batch_id="r", status="in_progress", created_at=int(time.time()) - 600)
        with ExporterThread(make_settings(first, ["openai"], state_dir=state)) as exp:
            exp.poll()
        with ExporterThread(make_settings(second, ["openai"], state_dir=state)):
            pass  # stopped before its first poll
        time.sleep(1.1)
        sim.add_batch("openai", batch_id="x", status="in_progress", created_at=int(time.time()))
        sim.set_status("openai", "x", "failed", int(time.time()), error_code="server_error")
        time.sleep(1.1)
        with (
            structlog.testing.capture_logs() as logs,
            ExporterThread(make_settings(second, ["openai"], state_dir=state)) as exp,
        ):
            exp.poll()
            counted = exp.exporter.poller._ledgers["openai"].view().finished_total("failed")
    assert counted == 1
    assert not [e for e in logs if e["event"] == "state_gateway_changed"]


# --- review 13: what rides beside the ledger, the refresh with more keys than the budget, rotation, chains ---


def _cut_short(state: Path) -> None:
    """A write cut short by a stop: blocks a crash allocated but never wrote, after the last whole record (any of
    the causes attach() compacts the next write for would do: a journal past its size, a state of format 1, no
    marker)."""
    with statefile.journal_path(state, P).open("ab") as f:
        f.write(b"\0" * 64)


def _other_spelling(sim: Simulator) -> str:
    """The simulator's URL as another host name: another gateway as far as the state can tell."""
    return f"http://localhost:{sim.url.rsplit(':', 1)[1]}"


def _gateway_changed_and_stopped(
    sim: Simulator, clock: SimTime, keys: Path, state: Path
) -> statefile.Restored:
    """tenant-b's view polled at 127.0.0.1, its last write torn by a kill (the next write is then a whole new base);
    then a process at another bifrost_url stopped before its first poll (a crash loop, a rollout). The state before
    that process."""
    write_key_dir((B,), keys)
    with exporter(sim, clock, provider=P, virtual_key_dir=keys, state_dir=state) as exp:
        _polls(exp, clock, 4)
    _cut_short(state)
    before = statefile.read(state, P)
    assert before is not None
    with exporter(sim, clock, provider=P, url=_other_spelling(sim), virtual_key_dir=keys, state_dir=state):
        pass
    return before


def test_gateway_change_written_at_once_keeps_view_tracker_and_holds(tmp_path: Path) -> None:
    """The first process with another bifrost_url writes at once, and that write may be a whole new base (here
    after a torn tail): what rides beside the ledger (the view, the calibration, the holds) goes in it as restored.
    Written without them (review 13), a process stopped before its first poll left the next one without them."""
    keys, state = tmp_path / "keys", tmp_path / "state"
    with _gateway() as (sim, clock):
        before = _gateway_changed_and_stopped(sim, clock, keys, state)
        assert before.torn and before.dropped_bytes > 0
        assert {"view", "tracker"} <= set(before.state)
        after = statefile.read(state, P)
        assert after is not None
        missing = {"view", "tracker", "shown"} & set(before.state) - set(after.state)
        assert not missing, f"lost from the state by the gateway change's write: {sorted(missing)}"


def test_gateway_change_write_then_key_added_while_down_counts_no_history(tmp_path: Path) -> None:
    """What losing the view would cost: a key added while the exporter is down next would be taken as known, and
    its tenant's batch that ended before that start would page as a transition."""
    keys, state = tmp_path / "keys", tmp_path / "state"
    with _gateway() as (sim, clock):
        _gateway_changed_and_stopped(sim, clock, keys, state)
        second = _other_spelling(sim)
        _ends_while_down(sim, clock, "a-old", A.id)  # tenant-a's history: before tenant-a joined the view
        write_key_dir((A, B), keys)
        with exporter(sim, clock, provider=P, url=second, virtual_key_dir=keys, state_dir=state) as exp:
            _polls(exp, clock, 4)
            assert _counted(exp) == 0


def _budget_account(sim: Simulator, owner: str) -> str:
    """Page 1 of the account (10 items) all finished; a running batch of `owner` on page 2."""
    for j in range(20):
        created = START - 1_000 - j
        if j == 12:
            sim.add_batch("openai", batch_id="run", status="in_progress", created_at=created, owner=owner)
        else:
            sim.add_batch(
                "openai",
                batch_id=f"f{j:03d}",
                status="completed",
                created_at=created,
                completed_at=created + 60,
                owner=owner,
            )
    return "run"


@pytest.mark.parametrize(("rate", "keys"), [(0.2, 2), (0.4, 3)], ids=["budget1-2keys", "budget2-3keys"])
def test_running_batch_below_the_head_page_is_refreshed_with_more_keys_than_budget(
    tmp_path: Path, rate: float, keys: int
) -> None:
    """With more keys than the budget every poll's head scans spend more than it (each key's scan takes a request);
    the refresh still gets one request a poll, or the running batch's end waited for the next full list (an hour
    here; review 13, against a version that gave it one only when the lists spent exactly the budget)."""
    kd = tmp_path / "keys"
    view = (A, B, C)[:keys]
    write_key_dir(view, kd)
    clock = SimTime()
    spec = ProviderSpec("openai", style="cursor", flavor="openai")
    with Simulator(providers=[spec], lifecycle=False, clock=clock.time, governance=MANDATORY) as sim:
        clock.sim = sim
        clock.marks.append((clock.pace, clock.received()))
        batch = _budget_account(sim, A.id)
        with exporter(
            sim,
            clock,
            provider="openai",
            virtual_key_dir=kd,
            page_size=10,
            max_requests_per_second=rate,
            resync_interval_seconds=3600,
        ) as exp:
            poll_until_resynced(exp, clock)
            for _ in range(2):
                clock.advance(INTERVAL)
                exp.poll("openai")
            sim.set_status("openai", batch, "completed", int(clock.now))
            took = None
            for n in range(1, 16):
                clock.advance(INTERVAL)
                exp.poll("openai")
                if exp.exporter.poller._ledgers["openai"].view().finished_total("completed") == 1:
                    took = n
                    break
    assert took is not None and took <= 3, f"the completion took {took} polls (None: not within 15)"


B_NEW_VALUE = VirtualKey(id="vk-b2", value="sk-bf-change-b-rotated-99999999", name=B.name)


def test_key_file_given_another_value_while_down_unowned_batch_counts(tmp_path: Path) -> None:
    """tenant-b's file holds another key after the restart (rotated: a new virtual key, with no past of its own):
    the tenant's file keeps its floor, so an unowned batch the view before would have counted still counts."""
    keys, state = tmp_path / "keys", tmp_path / "state"
    gov = Governance(keys=(A, B, C, B_NEW_VALUE), mandatory=True)
    write_key_dir((B,), keys)
    with _gateway(gov) as (sim, clock):
        with exporter(sim, clock, provider=P, virtual_key_dir=keys, state_dir=state) as exp:
            _polls(exp, clock, 4)
        _ends_while_down(sim, clock, "u1", None)
        write_key_dir((B_NEW_VALUE,), keys)
        with exporter(sim, clock, provider=P, virtual_key_dir=keys, state_dir=state) as exp:
            _polls(exp, clock, 4)
            assert _counted(exp) == 1


@pytest.mark.parametrize("mode", ["incremental", "full"])
def test_reference_key_added_while_down_other_tenants_history_is_history(tmp_path: Path, mode: str) -> None:
    """A key no view before had, added while the exporter was down (the view stays keyed): its tenant's batch that
    ended before this start is history."""
    keys, state = tmp_path / "keys", tmp_path / "state"
    write_key_dir((B,), keys)
    with _gateway(OPEN) as (sim, clock):
        with exporter(sim, clock, provider=P, virtual_key_dir=keys, state_dir=state, poll_mode=mode) as exp:
            _polls(exp, clock, 4)
        _ends_while_down(sim, clock, "c-old", C.id)
        write_key_dir((B, C), keys)
        with exporter(sim, clock, provider=P, virtual_key_dir=keys, state_dir=state, poll_mode=mode) as exp:
            _polls(exp, clock, 4)
            assert _counted(exp) == 0


@pytest.mark.parametrize("mode", ["incremental", "full"])
def test_chained_sighups_and_restart_count_each_end_once(tmp_path: Path, mode: str) -> None:
    keys, state = tmp_path / "keys", tmp_path / "state"
    write_key_dir((B,), keys)
    with _gateway() as (sim, clock):
        with (
            structlog.testing.capture_logs() as logs,
            exporter(
                sim, clock, provider=P, virtual_key_dir=keys, state_dir=state, poll_mode=mode, page_size=100
            ) as exp,
        ):
            _polls(exp, clock, 3)
            _change_view(exp, keys, A, B)  # tenant-a added ahead by name: listed after tenant-b
            _polls(exp, clock, 3)
            run = exp.exporter.poller._runs[P]
            assert run.keys == ("tenant-b", "tenant-a") and run.synced
            sim.add_batch(P, batch_id="a1", status="in_progress", created_at=int(clock.now), owner=A.id)
            _polls(exp, clock, 2)
            sim.set_status(P, "a1", "ended")
            _polls(exp, clock, 3)
            assert _counted(exp) == 1
            first_started = run.first.started_at
            _polls(exp, clock, 5)
            assert run.first.started_at == first_started  # no change detected again
        assert sum(1 for e in logs if e["event"] == "view") == 2
        sim.set_status(P, "b-run", "ended")
        _ends_while_down(sim, clock, "a2", A.id)
        _ends_while_down(sim, clock, "u2", None)
        write_key_dir((A, B, C), keys)
        with exporter(
            sim, clock, provider=P, virtual_key_dir=keys, state_dir=state, poll_mode=mode, page_size=100
        ) as exp:
            _polls(exp, clock, 4)
            run = exp.exporter.poller._runs[P]
            assert run.keys == ("tenant-b", "tenant-a", "tenant-c"), run.keys
            assert _counted(exp) == 1 + 3  # b-run, a2, u2 (the first process's a1 restored)
            _change_view(exp, keys, A, C)
            _polls(exp, clock, 4)
            assert tuple(run.keys) == ("tenant-a", "tenant-c")  # (mypy narrowed run.keys at the assert above)
            assert _counted(exp) == 4

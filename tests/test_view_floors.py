"""From when a key's batches count: a key added to the view (SIGHUP, or while the exporter was down) brings its
tenant's past as history, and no batch the view before would have counted is lost to it.

The first version of the per-key floor (review 12) counted or dropped a batch by whichever key listed it first: an
unowned batch (every key sees it) that ended while the exporter was down was history when an added key, sorted ahead,
listed it first; so were the batches of a view of the whole account moved to one tenant's key, and of a key file
renamed. Against the simulator with Bifrost's governance (tests/test_view_change.py), on injected time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog

from exporter import statefile
from exporter.poller import Poller
from exporter.simulator import ProviderSpec, Simulator, write_key_dir
from exporter.simulator.governance import Governance, VirtualKey
from tests.harness import ExporterThread, make_settings
from tests.test_incremental import START, SimTime, exporter
from tests.test_view_change import A, B, C, P, _change_view, _polls

MANDATORY = Governance(keys=(A, B, C), mandatory=True)
OPEN = Governance(keys=(A, B, C), mandatory=False)


def _counted(exp: ExporterThread) -> float:
    """The ledger's count (/metrics holds a restart's first counts for a minute)."""
    return exp.exporter.poller._ledgers[P].view().finished_total("ended")


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


def test_a_key_file_renamed_while_down_is_the_same_key(tmp_path: Path) -> None:
    renamed = VirtualKey(id=B.id, value=B.value, name="tenant-b-renamed")
    keys, state = tmp_path / "keys", tmp_path / "state"
    write_key_dir((B,), keys)
    with _gateway() as (sim, clock):
        with exporter(sim, clock, provider=P, virtual_key_dir=keys, state_dir=state) as exp:
            _polls(exp, clock, 4)
        _ends_while_down(sim, clock, "b-new", B.id)
        for path in keys.iterdir():
            path.unlink()
        write_key_dir((renamed,), keys)
        assert _restart(sim, clock, virtual_key_dir=keys, state_dir=state) == 1


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

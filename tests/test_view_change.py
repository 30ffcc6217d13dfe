"""A running batch that only retrieves reach keeps the key that can see it across a change of the view's keys.

Anthropic through /v1/batches (the gateway ignores its cursor: a key's full list is its first page) with Bifrost's
governance on: a running batch below that page is known by retrieves alone, and governance answers a retrieve with
another tenant's key 404 `access_blocked` (bifrost-batch-api.md, "Who sees which batches"). Two such 404s a poll
apart would read as a deletion. So across a key added, removed or rotated (SIGHUP, a kubelet Secret update) the
keys that stay keep what their lists showed; a batch no key of the view vouches for (its key left, or a restart
emptied the store) is asked with each key in turn, and goes only when every key refused it twice, a poll apart.
Against the simulator over loopback, on the injected clock of tests/test_incremental.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from exporter.simulator import ProviderSpec, Simulator, write_key_dir
from exporter.simulator.governance import Governance, VirtualKey
from tests.harness import ExporterThread, value
from tests.test_incremental import INTERVAL, START, SimTime, exporter

P = "anthropic"
A = VirtualKey(id="vk-a", value="sk-bf-change-a-11111111", name="tenant-a")
B = VirtualKey(id="vk-b", value="sk-bf-change-b-22222222", name="tenant-b")
C = VirtualKey(id="vk-c", value="sk-bf-change-c-33333333", name="tenant-c")
GOV = Governance(keys=(A, B, C), mandatory=True)


def _polls(exp: ExporterThread, clock: SimTime, n: int) -> None:
    for _ in range(n):
        exp.poll(P)
        clock.advance(INTERVAL)


def _running(exp: ExporterThread) -> float:
    return value(exp.samples(), "bifrost_batches", provider=P, status="in_progress") or 0.0


def _ended(exp: ExporterThread) -> float:
    return value(exp.samples(), "bifrost_batch_finished_total", provider=P, status="ended") or 0.0


def _retrieved_with(sim: Simulator, batch_id: str, since: int = 0) -> set[str | None]:
    """The keys (ids) the retrieves of `batch_id` went out with, from the `since`-th request on."""
    return {e["virtual_key"] for e in sim.request_log()[since:] if e["path"] == f"/v1/batches/{batch_id}"}


@contextmanager
def _gateway(owners: dict[str, VirtualKey]) -> Iterator[tuple[Simulator, SimTime]]:
    """Running batches (id → owner), created before the exporter starts."""
    clock = SimTime()
    spec = ProviderSpec(P, style="cursor", flavor="anthropic")
    with Simulator(providers=[spec], lifecycle=False, clock=clock.time, governance=GOV) as sim:
        clock.sim = sim
        clock.marks.append((clock.pace, clock.received()))
        for i, (batch_id, owner) in enumerate(owners.items()):
            sim.add_batch(
                P, batch_id=batch_id, status="in_progress", created_at=START - 5000 + i, owner=owner.id
            )
        yield sim, clock


def _push_below_the_page(sim: Simulator, exp: ExporterThread, clock: SimTime, known: int) -> None:
    """After three polls, two newer unowned batches (every key sees them) push the `known` running ones below the
    only page a list reads: from then on retrieves alone reach them."""
    _polls(exp, clock, 3)
    for i in range(2):
        sim.add_batch(
            P, batch_id=f"u{i}", status="in_progress", created_at=int(clock.now) - 5 + i, owner=None
        )
    _polls(exp, clock, 3)
    assert _running(exp) == known + 2


@contextmanager
def _below_the_page(
    tmp_path: Path, view: tuple[VirtualKey, ...], owners: dict[str, VirtualKey]
) -> Iterator[tuple[Simulator, ExporterThread, SimTime, Path]]:
    """The exporter with `view`'s keys, once `owners`' running batches are known by retrieves alone."""
    keys = tmp_path / "keys"
    write_key_dir(view, keys)
    with (
        _gateway(owners) as (sim, clock),
        exporter(sim, clock, provider=P, virtual_key_dir=keys, page_size=2) as exp,
    ):
        _push_below_the_page(sim, exp, clock, len(owners))
        yield sim, exp, clock, keys


def _change_view(exp: ExporterThread, keys: Path, *view: VirtualKey) -> None:
    """The key directory holds `view`'s keys from now on (SIGHUP, or the kubelet updating a Secret)."""
    for path in keys.iterdir():
        path.unlink()
    write_key_dir(view, keys)
    exp.exporter.client.update_credentials(exp.settings.reread_secret_files())


@pytest.mark.parametrize(
    ("before", "after", "owner"),
    [((B,), (A, B), B), ((A, B, C), (B, C), C)],
    ids=["a key added ahead", "a key removed before it"],
)
def test_a_view_change_keeps_the_running_batch_only_retrieves_reach_with_its_key(
    tmp_path: Path, before: tuple[VirtualKey, ...], after: tuple[VirtualKey, ...], owner: VirtualKey
) -> None:
    """A key is added ahead of the owner's (tenant-a's before tenant-b's), or one before it leaves (tenant-a's
    from a view of three: tenant-c's moves from third to second). The owner's running batch below the only page a
    list reads is still retrieved with the owner's key (never another, which governance answers 404), shown while
    it runs, and its end counted."""
    batch = "x"
    with _below_the_page(tmp_path, before, {batch: owner}) as (sim, exp, clock, keys):
        _change_view(exp, keys, *after)
        since = len(sim.request_log())
        _polls(exp, clock, 6)
        assert _running(exp) == 3
        sim.set_status(P, batch, "ended")
        _polls(exp, clock, 3)
        assert _ended(exp) == 1
        assert _retrieved_with(sim, batch, since) == {owner.id}


def test_a_rotated_key_lets_its_old_tenants_batch_go_and_keeps_the_others(tmp_path: Path) -> None:
    """tenant-a's file now holds tenant-c's key: a's running batch is in no key's view any more, and goes when every
    key of the view has refused it twice, a poll apart (the ledger lets its id go); b's stays with b's key."""
    with _below_the_page(tmp_path, (A, B), {"ax": A, "bx": B}) as (sim, exp, clock, keys):
        (keys / "tenant-a").write_text(C.value)
        exp.exporter.client.update_credentials(exp.settings.reread_secret_files())
        since = len(sim.request_log())
        _polls(exp, clock, 6)
        assert _running(exp) == 3
        assert not exp.exporter.poller._ledgers[P].holds_active("ax")
        assert _retrieved_with(sim, "ax", since) == {C.id, B.id}
        assert _retrieved_with(sim, "bx", since) == {B.id}
        sim.set_status(P, "bx", "ended")
        _polls(exp, clock, 3)
        assert _ended(exp) == 1


def test_after_a_restart_a_running_batch_no_list_shows_is_asked_with_each_key_until_one_sees_it(
    tmp_path: Path,
) -> None:
    """A restart empties the store: tenant-b's running batch below the page is retrieved by id again, first with
    the view's first key, tenant-a's, which governance answers 404 `access_blocked` (another tenant's batch, not a
    deletion), then with b's, which answers; from then on with b's alone. It is kept and its end counted."""
    keys = tmp_path / "keys"
    write_key_dir((A, B), keys)
    settings: dict[str, Any] = {
        "provider": P,
        "virtual_key_dir": keys,
        "page_size": 2,
        "state_dir": tmp_path / "s",
    }
    with _gateway({"bx": B}) as (sim, clock):
        with exporter(sim, clock, **settings) as exp:
            _push_below_the_page(sim, exp, clock, 1)
        clock.advance(INTERVAL)
        since = len(sim.request_log())
        with exporter(sim, clock, **settings) as exp:
            _polls(exp, clock, 6)
            assert _running(exp) == 3
            assert _retrieved_with(sim, "bx", since) == {A.id, B.id}
            since = len(sim.request_log())
            sim.set_status(P, "bx", "ended")
            _polls(exp, clock, 3)
            assert _ended(exp) == 1
            assert _retrieved_with(sim, "bx", since) == {B.id}


@contextmanager
def _quiet_view(tmp_path: Path) -> Iterator[tuple[Simulator, SimTime, Path]]:
    """tenant-a's only batch ended 20 h ago (its view's gateway clock is that old); tenant-b's batches run."""
    keys = tmp_path / "keys"
    write_key_dir((A,), keys)
    clock = SimTime()
    spec = ProviderSpec(P, style="cursor", flavor="anthropic")
    with Simulator(providers=[spec], lifecycle=False, clock=clock.time, governance=GOV) as sim:
        clock.sim = sim
        clock.marks.append((clock.pace, clock.received()))
        sim.add_batch(
            P, batch_id="a-old", status="ended", created_at=START - 72_000, completed_at=START - 71_000,
            owner=A.id,
        )  # fmt: skip
        for i in range(3):
            sim.add_batch(P, batch_id=f"b{i}", status="in_progress", created_at=START - 3_000 + i, owner=B.id)
        yield sim, clock, keys


def _counted(exp: ExporterThread) -> float:
    """The ledger's count (/metrics holds a restart's first counts for a minute)."""
    return exp.exporter.poller._ledgers[P].view().finished_total("ended")


@pytest.mark.parametrize("mode", ["incremental", "full"])
def test_a_key_added_to_a_quiet_view_brings_its_tenants_past_as_history(tmp_path: Path, mode: str) -> None:
    """The old view's watermark is bounded by its own gateway clock, which a quiet tenant leaves hours behind:
    tenant-b's batches that ended before its key was added counted as transitions (audit 11). A key added on
    SIGHUP counts its batches from then, as an exporter started with it would; what ends later counts."""
    with (
        _quiet_view(tmp_path) as (sim, clock, keys),
        exporter(sim, clock, provider=P, virtual_key_dir=keys) as exp,
    ):
        _polls(exp, clock, 3)
        sim.set_status(P, "b0", "ended")
        sim.set_status(P, "b1", "ended")
        _polls(exp, clock, 3)
        _change_view(exp, keys, A, B)
        _polls(exp, clock, 4)
        assert _counted(exp) == 0
        sim.set_status(P, "b2", "ended")
        _polls(exp, clock, 3)
        assert _counted(exp) == 1


def test_a_key_added_while_the_exporter_was_down_brings_its_tenants_past_as_history(tmp_path: Path) -> None:
    """The state keeps the view's keys (names and fingerprints, never values): a key added while the exporter was
    down counts from this start. tenant-b's batches that ended before are history (one counted before);
    with the view kept across the next restart, what ends while it is down counts once."""
    state = tmp_path / "state"
    with _quiet_view(tmp_path) as (sim, clock, keys):
        with exporter(sim, clock, provider=P, virtual_key_dir=keys, state_dir=state) as exp:
            _polls(exp, clock, 3)
            sim.set_status(P, "b0", "ended")
            sim.set_status(P, "b1", "ended")
            _polls(exp, clock, 3)
        write_key_dir((A, B), keys)
        clock.advance(600)
        with exporter(sim, clock, provider=P, virtual_key_dir=keys, state_dir=state) as exp:
            _polls(exp, clock, 4)
            assert _counted(exp) == 0
        sim.set_status(P, "b2", "ended")
        clock.advance(600)
        with exporter(sim, clock, provider=P, virtual_key_dir=keys, state_dir=state) as exp:
            _polls(exp, clock, 4)
            assert _counted(exp) == 1
    assert "sk-bf" not in "".join(p.read_bytes().decode("latin-1") for p in state.iterdir() if p.is_file())

"""Who the exporter sees: governance's per-key view, the union over a key directory, and GigaChat polled at all.

Against the simulator with Bifrost's governance on (tests of the simulator itself prove it narrows as the gateway
does): one key sees its tenant's batches and the unowned ones, and the exporter says so; a key directory sees the
union, each batch counted once in every gauge and counter, also across a restart; every retrieve goes out with a
key that can see the batch (another tenant's key gets a 404 that would read as "deleted"); a key that fails is
named by its file, never by its value; GigaChat, which refuses any `limit`, is polled and up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from exporter.client import BifrostClient, ListResult
from exporter.simulator import ProviderSpec, Simulator, demo_governance, write_key_dir
from exporter.simulator.governance import Governance, VirtualKey
from tests.harness import ExporterThread, Samples, make_settings, value

P = "openai"
GOV = demo_governance()  # tenant-a, tenant-b; keys mandatory
A, B = GOV.keys
OWNERS: dict[str | None, str] = {A.id: "a", B.id: "b", None: "u"}


def _count(samples: Samples, status: str) -> float:
    return value(samples, "bifrost_batches", provider=P, status=status) or 0.0


def _finished(samples: Samples, status: str) -> float:
    return value(samples, "bifrost_batch_finished_total", provider=P, status=status) or 0.0


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """12 active batches: 4 per tenant, 4 created outside the gateway (no owner: every key sees them). A key has
    its batches spread over several pages (3 a page), so retrieves and deeper pages both happen."""
    with Simulator(providers=[ProviderSpec(P, flavor="openai")], lifecycle=False, governance=GOV) as s:
        now = int(time.time())
        for owner, tag in OWNERS.items():
            for i in range(4):
                s.add_batch(
                    P, batch_id=f"{tag}{i}", status="in_progress", created_at=now - 1000 + 10 * i, owner=owner
                )
        yield s


def _keys(tmp_path: Path, *keys: VirtualKey) -> Path:
    directory = tmp_path / "keys"
    write_key_dir(keys, directory)
    return directory


def _exporter(sim: Simulator, **kw: Any) -> ExporterThread:
    values: dict[str, Any] = {"page_size": 3, "stale_after_seconds": 10**6}
    values.update(kw)
    return ExporterThread(make_settings(sim.url, [P], **values))


@pytest.mark.parametrize("mode", ["incremental", "full"])
def test_a_key_directory_sees_the_union_each_batch_counted_once_also_across_a_restart(
    sim: Simulator, tmp_path: Path, mode: str
) -> None:
    keys = _keys(tmp_path, A, B)
    state = tmp_path / "state"
    with (
        structlog.testing.capture_logs() as logs,
        _exporter(sim, virtual_key_dir=keys, state_dir=state, poll_mode=mode) as exp,
    ):
        exp.poll()
        s = exp.samples()
        assert _count(s, "in_progress") == 12
        assert value(s, "bifrost_batch_exporter_view_keys", provider=P) == 2
        assert value(s, "bifrost_batch_exporter_up", provider=P) == 1
        sim.set_status(P, "a0", "failed")  # tenant a's
        sim.set_status(P, "u0", "failed")  # unowned: both keys list it
        exp.poll()
        exp.poll()
        s = exp.samples()
        assert _finished(s, "failed") == 2
        assert _count(s, "failed") == 2 and _count(s, "in_progress") == 10
    views = [e for e in logs if e["event"] == "view"]
    assert [(e["keys"], e["key_names"]) for e in views] == [(2, ["tenant-a", "tenant-b"])]
    sim.set_status(P, "u1", "expired")  # while down
    sim.set_status(P, "b1", "completed")
    with _exporter(sim, virtual_key_dir=keys, state_dir=state, poll_mode=mode) as exp:
        for _ in range(3):
            exp.poll()
        s = exp.samples()
        led = exp.exporter.poller.states[P].ledger
        counted = tuple(led.finished_total(status) for status in ("failed", "expired", "completed"))
        assert counted == (2, 1, 1)
        # Shown: the expiry and completion while down from 0 a minute first (exporter/presence.py), as an increase.
        assert (_finished(s, "failed"), _finished(s, "expired") or 0, _finished(s, "completed") or 0) == (
            2,
            0,
            0,
        )
        assert _count(s, "in_progress") == 8


def test_one_key_sees_one_tenant_and_says_so(sim: Simulator, tmp_path: Path) -> None:
    key_file = tmp_path / "tenant-a"
    key_file.write_text(A.value + "\n")
    with structlog.testing.capture_logs() as logs, _exporter(sim, virtual_key_file=key_file) as exp:
        exp.poll()
        s = exp.samples()
    assert _count(s, "in_progress") == 8  # its own 4 and the 4 unowned
    assert value(s, "bifrost_batch_exporter_view_keys", provider=P) == 1
    (view,) = [e for e in logs if e["event"] == "view"]
    assert view["keys"] == 1 and "only the batches that key created" in view["detail"]
    assert A.value not in repr(logs)


def test_without_a_key_a_mandatory_gateway_is_an_auth_failure(sim: Simulator) -> None:
    with structlog.testing.capture_logs() as logs, _exporter(sim) as exp:
        exp.poll()
        s = exp.samples()
    assert value(s, "bifrost_batch_exporter_view_keys", provider=P) == 0
    assert value(s, "bifrost_batch_exporter_up", provider=P) == 0
    assert value(s, "bifrost_batch_exporter_poll_errors_total", provider=P, reason="auth") == 1
    (view,) = [e for e in logs if e["event"] == "view"]
    assert "requires a virtual key" in view["detail"]


def test_every_retrieve_goes_out_with_a_key_that_can_see_the_batch(sim: Simulator, tmp_path: Path) -> None:
    """Incremental polls after the first full list: the newest page (one batch a page) shows little, so the
    known active batches are retrieved every poll. Each retrieve carries the key whose list showed the batch: no 404,
    no batch taken for deleted."""
    keys = _keys(tmp_path, A, B)
    with _exporter(sim, virtual_key_dir=keys, page_size=1) as exp:
        for _ in range(4):
            exp.poll()
        s = exp.samples()
    retrieves = [e for e in sim.request_log() if e["path"].startswith("/v1/batches/")]
    assert retrieves, "no retrieve happened: this test lost its point"
    for entry in retrieves:
        batch_id = entry["path"].rsplit("/", 1)[-1]
        owner = sim.owner(P, batch_id)
        assert owner is None or owner == entry["virtual_key"], (batch_id, owner, entry["virtual_key"])
    assert _count(s, "in_progress") == 12
    assert value(s, "bifrost_batch_exporter_up", provider=P) == 1


def test_a_failing_key_fails_the_poll_named_by_its_file_never_its_value(
    sim: Simulator, tmp_path: Path
) -> None:
    revoked = VirtualKey(id="vk-revoked", value="sk-bf-revoked-0a1b2c3d4e", name="tenant-c")
    keys = _keys(tmp_path, A, revoked)
    with structlog.testing.capture_logs() as logs, _exporter(sim, virtual_key_dir=keys) as exp:
        exp.poll()
        s = exp.samples()
    assert value(s, "bifrost_batch_exporter_up", provider=P) == 0
    assert value(s, "bifrost_batch_exporter_poll_errors_total", provider=P, reason="auth") == 1
    failed = [e for e in logs if e["event"] == "poll_failed"]
    assert failed and "tenant-c" in failed[0]["detail"]
    assert revoked.value not in repr(logs) and A.value not in repr(logs)
    assert "bifrost_batches" not in {name for name, _ in s}  # part of the data is not shown as the whole


def test_keys_changed_on_reload_change_the_view(sim: Simulator, tmp_path: Path) -> None:
    keys = _keys(tmp_path, A)
    with structlog.testing.capture_logs() as logs, _exporter(sim, virtual_key_dir=keys) as exp:
        exp.poll()
        assert _count(exp.samples(), "in_progress") == 8
        write_key_dir([B], keys)
        exp.exporter.client.update_credentials(exp.settings.reread_secret_files())
        for _ in range(2):
            exp.poll()
        s = exp.samples()
    assert _count(s, "in_progress") == 12
    assert value(s, "bifrost_batch_exporter_view_keys", provider=P) == 2
    assert [e["keys"] for e in logs if e["event"] == "view"] == [1, 2]


def test_gigachat_is_polled_and_up() -> None:
    """GigaChat refuses any `limit` with an HTTP 500: sent none, its one page per key is read."""
    spec = ProviderSpec("gigachat", flavor="gigachat", keys=2)
    with Simulator(providers=[spec], lifecycle=False) as sim:
        now = int(time.time())
        for i in range(5):
            sim.add_batch(
                "gigachat", batch_id=f"g{i}", status="in_progress", created_at=now - 100, api_key=i % 2
            )
        sim.add_batch("gigachat", batch_id="g-done", status="completed", created_at=now - 50, api_key=1)
        for mode in ("incremental", "full"):
            with ExporterThread(make_settings(sim.url, ["gigachat"], poll_mode=mode)) as exp:
                exp.poll()
                exp.poll()
                s = exp.samples()
            assert value(s, "bifrost_batch_exporter_up", provider="gigachat") == 1, mode
            assert value(s, "bifrost_batch_exporter_truncated", provider="gigachat") == 0, mode
            assert value(s, "bifrost_batches", provider="gigachat", status="in_progress") == 5, mode
            assert value(s, "bifrost_batches", provider="gigachat", status="completed") == 1, mode
        lists = [e for e in sim.request_log() if e["path"] == "/v1/batches"]
        assert lists and all("limit" not in e["query"] for e in lists)


def test_governance_without_a_config_store_refuses_keyed_lists(tmp_path: Path) -> None:
    """A gateway without a config store answers every keyed batch request 403: the poll fails as auth, so a
    view that cannot be checked is never presented as data."""
    gov = Governance(keys=(A,), config_store=False)
    with Simulator(providers=[ProviderSpec(P)], lifecycle=False, governance=gov) as sim:
        sim.add_batch(P, batch_id="x", status="in_progress", owner=None)
        with _exporter(sim, virtual_key_dir=_keys(tmp_path, A)) as exp:
            exp.poll()
            s = exp.samples()
    assert value(s, "bifrost_batch_exporter_up", provider=P) == 0
    assert value(s, "bifrost_batch_exporter_poll_errors_total", provider=P, reason="auth") == 1


def test_a_changed_view_first_list_is_timed_from_its_first_poll(sim: Simulator, tmp_path: Path) -> None:
    """Keys changed on reload start the first full list over: its start is the poll that begins it (not the one
    after), so the estimate is there from that poll on, and the pace is measured over the whole list."""
    keys = _keys(tmp_path, A)
    settings = make_settings(
        sim.url, [P], virtual_key_dir=keys, page_size=3, max_requests_per_second=1, poll_interval_seconds=2,
        stale_after_seconds=10**6,
    )  # fmt: skip
    with ExporterThread(settings) as exp:
        for _ in range(3):  # key A: 3 pages, a budget of 2 requests a poll
            exp.poll()
        assert value(exp.samples(), "bifrost_batch_exporter_first_sync_complete", provider=P) == 1
        write_key_dir([A, B], keys)
        exp.exporter.client.update_credentials(exp.settings.reread_secret_files())
        before = time.time()
        exp.poll()
        first = exp.exporter.poller.states[P].health.first_sync
        s = exp.samples()
    assert not first.complete and first.started_at is not None and first.started_at >= before
    assert value(s, "bifrost_batch_exporter_first_sync_estimated_completion_timestamp_seconds", provider=P)


# --- keys the gateway scopes to other providers (403 provider_blocked) ----------------------------------------------
# Bifrost's resolver refuses a key every request on a provider its provider configs do not name, lists included
# (resolver.go isProviderAllowed): scoping each tenant's key to the providers it uses is ordinary governance, so a
# key directory meets it on every provider some tenant does not use.

B_ELSEWHERE = dataclasses.replace(B, providers=frozenset({"azure"}))  # tenant-b may not use openai


def _asked_with(sim: Simulator, key: VirtualKey) -> int:
    return sum(1 for entry in sim.request_log() if entry["virtual_key"] == key.id)


def test_a_key_not_allowed_on_the_provider_is_an_empty_view_not_a_failed_poll(
    sim: Simulator, tmp_path: Path
) -> None:
    """Full mode: the other key's view (its batches and the unowned ones) is listed and up; the refused key is
    logged once by name, left out of view_keys, and listed again once the gateway allows it."""
    sim.set_virtual_key(B_ELSEWHERE)
    keys = _keys(tmp_path, A, B)
    with (
        structlog.testing.capture_logs() as logs,
        _exporter(sim, virtual_key_dir=keys, poll_mode="full") as exp,
    ):
        for _ in range(2):
            exp.poll()
        s = exp.samples()
        assert value(s, "bifrost_batch_exporter_up", provider=P) == 1
        assert _count(s, "in_progress") == 8  # tenant-a's 4 and the 4 unowned
        assert value(s, "bifrost_batch_exporter_view_keys", provider=P) == 1
        assert (value(s, "bifrost_batch_exporter_poll_errors_total", provider=P, reason="auth") or 0) == 0
        sim.set_virtual_key(B)
        exp.poll()
        s = exp.samples()
    assert _count(s, "in_progress") == 12
    assert value(s, "bifrost_batch_exporter_view_keys", provider=P) == 2
    refused = [e for e in logs if e["event"] == "view_key_not_allowed"]
    assert len(refused) == 1 and refused[0]["key_name"] == "tenant-b" and refused[0]["provider"] == P
    assert [e["key_name"] for e in logs if e["event"] == "view_key_allowed"] == ["tenant-b"]
    assert not [e for e in logs if e["event"] == "poll_failed"]
    assert A.value not in repr(logs) and B.value not in repr(logs)


def test_incremental_polls_ask_a_refused_key_again_only_with_the_full_list(
    sim: Simulator, tmp_path: Path
) -> None:
    """Head scans and retrieves leave the refused key out (no request a poll); the next full list asks it again
    and, allowed by then, lists its batches."""
    sim.set_virtual_key(B_ELSEWHERE)
    now = [time.time()]
    keys = _keys(tmp_path, A, B)
    settings = make_settings(
        sim.url, [P], virtual_key_dir=keys, page_size=3, stale_after_seconds=10**6, poll_mode="incremental"
    )
    with ExporterThread(settings, clock=lambda: now[0]) as exp:
        exp.poll()  # the first full list: tenant-b asked once, refused
        assert _asked_with(sim, B) == 1
        for _ in range(2):
            now[0] += settings.poll_interval_seconds
            exp.poll()
            s = exp.samples()
            assert value(s, "bifrost_batch_exporter_up", provider=P) == 1
            assert _count(s, "in_progress") == 8
        assert _asked_with(sim, B) == 1
        sim.set_virtual_key(B)
        now[0] += settings.poll_interval_seconds
        exp.poll()
        assert _asked_with(sim, B) == 1 and _count(exp.samples(), "in_progress") == 8  # until the full list
        now[0] += 10 * settings.resync_interval_seconds
        for _ in range(3):
            exp.poll()
            now[0] += settings.poll_interval_seconds
        s = exp.samples()
    assert _count(s, "in_progress") == 12
    assert value(s, "bifrost_batch_exporter_view_keys", provider=P) == 2
    assert (value(s, "bifrost_batch_exporter_poll_errors_total", provider=P, reason="auth") or 0) == 0


@pytest.mark.parametrize("mode", ["incremental", "full"])
def test_no_key_allowed_on_the_provider_fails_the_poll(sim: Simulator, tmp_path: Path, mode: str) -> None:
    sim.set_virtual_key(B_ELSEWHERE)
    sim.set_virtual_key(dataclasses.replace(A, providers=frozenset({"azure"})))
    keys = _keys(tmp_path, A, B)
    with _exporter(sim, virtual_key_dir=keys, poll_mode=mode) as exp:
        exp.poll()
        s = exp.samples()
    assert value(s, "bifrost_batch_exporter_up", provider=P) == 0
    assert value(s, "bifrost_batch_exporter_poll_errors_total", provider=P, reason="auth") == 1
    assert "bifrost_batches" not in {name for name, _ in s}
    # Both keys are sent and refused: not 0, which says no key is sent (the whole account).
    assert value(s, "bifrost_batch_exporter_view_keys", provider=P) == 2


def test_a_spent_budget_on_a_cursor_page_is_not_a_refused_cursor(sim: Simulator, tmp_path: Path) -> None:
    """402 budget_exceeded is governance's decision about the key: restarting the walk from the head cannot help,
    and counting it as cursor_refused would send the on-call engineer after the gateway's cursors."""
    sim.set_virtual_key(dataclasses.replace(A, over_budget=True))
    settings = make_settings(sim.url, [P], virtual_key_dir=_keys(tmp_path, A), page_size=3)

    async def walk() -> ListResult:
        client = BifrostClient(settings)
        try:
            return await client.list_batches(P, lambda batches: None, after="a1", key="tenant-a")
        finally:
            await client.aclose()

    result = asyncio.run(walk())
    assert result.failure is not None and result.failure.reason == "client_error"
    assert result.failure.status == 402 and "budget_exceeded" in result.failure.detail
    assert not result.cursor_refused and not result.key_not_allowed


def test_a_key_file_rotated_to_another_key_is_a_new_view(tmp_path: Path) -> None:
    """A tenant's file that now holds another tenant's key keeps its name: the view changed all the same (other
    batches are visible). It is logged as a view and the full list starts again, so the old key's batches go with
    that list and the new key's come with it, instead of the old ones going one by one on 404s."""
    c = VirtualKey(id="vk-tenant-c", value="sk-bf-demo-tenant-c-51aa09e2", name="tenant-c")
    gov = Governance(keys=(A, B, c), mandatory=True)
    with Simulator(providers=[ProviderSpec(P, flavor="openai")], lifecycle=False, governance=gov) as sim:
        now = int(time.time())
        for owner, tag in ((A.id, "a"), (B.id, "b"), (c.id, "c"), (None, "u")):
            for i in range(3):
                sim.add_batch(
                    P, batch_id=f"{tag}{i}", status="in_progress", created_at=now - 500 + i, owner=owner
                )
        keys = _keys(tmp_path, A, B)
        with structlog.testing.capture_logs() as logs, _exporter(sim, virtual_key_dir=keys) as exp:
            exp.poll()
            assert _count(exp.samples(), "in_progress") == 9  # a, b and the unowned
            (keys / "tenant-b").write_text(c.value)  # the file keeps its name, now holds tenant-c's key
            exp.exporter.client.update_credentials(exp.settings.reread_secret_files())
            for _ in range(3):
                exp.poll()
            s = exp.samples()
    assert _count(s, "in_progress") == 9  # a, c and the unowned
    assert [e["keys"] for e in logs if e["event"] == "view"] == [2, 2]
    assert value(s, "bifrost_batch_exporter_first_sync_complete", provider=P) == 1
    assert c.value not in repr(logs) and B.value not in repr(logs)


@pytest.mark.parametrize("mode", ["incremental", "full"])
def test_a_key_added_on_reload_counts_none_of_its_tenants_history(tmp_path: Path, mode: str) -> None:
    """The exporter has run for an hour with tenant-a's key; five of tenant-b's batches failed half an hour ago,
    outside its view. Tenant-b's key is added (SIGHUP): those failures are history, as for an exporter started now
    with both keys, not a burst that pages (BifrostBatchFailed, the SLO burn)."""
    c = VirtualKey(id="vk-c", value="sk-bf-view-c-33333333", name="tenant-c")
    gov = Governance(keys=(A, B, c), mandatory=True)
    with Simulator(providers=[ProviderSpec(P, flavor="openai")], lifecycle=False, governance=gov) as s:
        start = time.time()
        clock = [start - 3600]
        s.add_batch(P, batch_id="a-run", status="in_progress", created_at=int(start) - 100, owner=A.id)
        for i in range(5):
            s.add_batch(
                P, batch_id=f"b-old-{i}", status="in_progress", created_at=int(start) - 7200, owner=B.id
            )
        keys = _keys(tmp_path, A)
        settings = make_settings(s.url, [P], virtual_key_dir=keys, stale_after_seconds=10**6, poll_mode=mode)
        with ExporterThread(settings, clock=lambda: clock[0]) as exp:
            exp.poll()
            for i in range(5):
                s.set_status(P, f"b-old-{i}", "failed", at=int(start) - 1800)
            clock[0] = start
            exp.poll()
            assert _finished(exp.samples(), "failed") == 0
            write_key_dir((A, B), keys)
            exp.exporter.client.update_credentials(exp.settings.reread_secret_files())
            exp.poll()
            exp.poll()
            assert _count(exp.samples(), "failed") == 5  # in the view now
            assert _finished(exp.samples(), "failed") == 0
            # A batch of the new tenant that fails now is a transition, counted once.
            s.add_batch(P, batch_id="b-new", status="in_progress", created_at=int(start) - 50, owner=B.id)
            clock[0] += 30
            exp.poll()
            s.set_status(P, "b-new", "failed", at=int(start) + 40)
            clock[0] += 30
            exp.poll()
            exp.poll()
            assert _finished(exp.samples(), "failed") == 1


def test_after_a_view_change_a_summary_item_is_retrieved_with_the_key_that_listed_it(tmp_path: Path) -> None:
    """Bedrock's list items carry no counts, so its running batches are refreshed by retrieves. After a third
    tenant's key is added, the view's positions are gone; a retrieve must still go with the key that lists the
    batch: another tenant's key is answered 404, and the batch would be taken for deleted."""
    provider = "bedrock"
    c = VirtualKey(id="vk-c", value="sk-bf-view-c-33333333", name="tenant-c")
    gov = Governance(keys=(A, B, c), mandatory=True)
    with Simulator(
        providers=[ProviderSpec(provider, flavor="bedrock")], lifecycle=False, governance=gov
    ) as s:
        now = int(time.time())
        for i in range(4):
            s.add_batch(
                provider,
                status="in_progress",
                created_at=now - 500 + i,
                owner=B.id,
                request_counts={"total": 10, "completed": 2, "failed": 0},
            )
        keys = _keys(tmp_path, A, B)
        clock = [time.time()]
        settings = make_settings(
            s.url, [provider], virtual_key_dir=keys, page_size=1000, stale_after_seconds=10**6
        )
        with structlog.testing.capture_logs(), ExporterThread(settings, clock=lambda: clock[0]) as exp:
            for _ in range(3):
                exp.poll()
                clock[0] += 30
            write_key_dir((A, B, c), keys)
            exp.exporter.client.update_credentials(exp.settings.reread_secret_files())
            running = []
            for _ in range(12):  # past the every-10th-poll refresh of summary items
                exp.poll()
                clock[0] += 30
                running.append(
                    value(exp.samples(), "bifrost_batches", provider=provider, status="in_progress")
                )
        retrieves = [e for e in s.request_log() if e["path"].startswith("/v1/batches/")]
    assert retrieves, "the summary items were never refreshed"
    assert {e["virtual_key"] for e in retrieves} == {B.id}
    assert running == [4] * 12


def test_a_failed_retrieve_names_the_key_by_its_file(sim: Simulator, tmp_path: Path) -> None:
    """A retrieve refused for its key says which tenant's key, as a failed list does (never the value)."""
    sim.set_virtual_key(dataclasses.replace(A, over_budget=True))
    settings = make_settings(sim.url, [P], virtual_key_dir=_keys(tmp_path, A), page_size=3)

    async def retrieve() -> Any:
        client = BifrostClient(settings)
        try:
            return await client.retrieve(P, "a1", key="tenant-a")
        finally:
            await client.aclose()

    result = asyncio.run(retrieve())
    assert result.failure is not None and result.failure.status == 402
    assert result.failure.detail.startswith("virtual key 'tenant-a': ")
    assert A.value not in result.failure.detail

"""The ledger's counting rules and its bounded memory, driven by an explicit clock."""

from __future__ import annotations

from exporter.client import REASONS
from exporter.ledger import RETENTION_SECONDS, Ledger
from exporter.models import Batch
from exporter.settings import DEFAULT_DURATION_BUCKETS, DEFAULT_LATENCY_BUCKETS

T0 = 1_800_000_000.0


def ledger(started: float = T0) -> Ledger:
    return Ledger(started, DEFAULT_DURATION_BUCKETS, DEFAULT_LATENCY_BUCKETS, REASONS)


def b(batch_id: str, status: str, **kw: float) -> Batch:
    return Batch.model_validate({"id": batch_id, "status": status, **kw})


def test_counts_once_and_observes_duration() -> None:
    led = ledger()
    assert led.observe([b("a", "in_progress", created_at=T0 - 100)], T0 + 1, complete=True) == 0
    done = b("a", "completed", created_at=T0 - 100, completed_at=T0 + 10)
    assert led.observe([done], T0 + 20, complete=True) == 1
    assert led.observe([done], T0 + 30, complete=True) == 0
    v = led.view()
    assert v.finished_total("completed") == 1
    assert v.durations["completed"].count == 1 and v.durations["completed"].sum == 110
    assert v.last_finished["completed"] == T0 + 10


def test_finished_before_start_or_beyond_retention_not_counted() -> None:
    led = ledger()
    batches = [
        b("old", "failed", failed_at=T0 - 5),
        b("ancient", "expired", expired_at=T0 - RETENTION_SECONDS - 10),
    ]
    assert led.observe(batches, T0 + 1, complete=True) == 0
    v = led.view()
    assert v.finished_total("failed") == 0 and v.finished_total("expired") == 0
    assert v.last_finished["failed"] == T0 - 5
    assert v.tracked_ids == 1  # "ancient" is never stored


def test_memory_is_bounded_and_forgetting_never_double_counts() -> None:
    led = ledger()
    finished_at = T0 + 100
    batch = b("x", "completed", created_at=T0, completed_at=finished_at)
    led.observe([b("x", "in_progress", created_at=T0)], T0 + 1, complete=True)
    led.observe([batch], T0 + 200, complete=True)
    assert led.view().tracked_ids == 1
    later = finished_at + RETENTION_SECONDS + 1
    # Still listed, but older than the retention by the gateway's own clock (a newer batch shows its time).
    led.observe([batch, b("y", "in_progress", created_at=later)], later, complete=True)
    v = led.view()
    assert v.tracked_ids == 1 and v.finished_total("completed") == 1  # only y is left


def test_vanished_active_ids_forgotten_only_after_a_complete_poll() -> None:
    led = ledger()
    led.observe([b("a", "in_progress"), b("b", "in_progress")], T0 + 1, complete=True)
    led.observe([b("a", "in_progress")], T0 + 2, complete=False)
    assert led.view().tracked_ids == 2
    led.observe([b("a", "in_progress")], T0 + 3, complete=True)
    assert led.view().tracked_ids == 1


def test_terminal_without_timestamp_needs_an_observed_transition() -> None:
    led = ledger()
    led.observe([b("g1", "in_progress"), b("g2", "deleted")], T0 + 1, complete=True)
    assert led.observe([b("g1", "deleted"), b("g2", "deleted")], T0 + 2, complete=True) == 1
    v = led.view()
    assert v.finished_total("deleted") == 1 and v.durations["deleted"].count == 0


def test_unknown_status_cap() -> None:
    led = ledger()
    labels = [led.admit_status(f"S{i}") for i in range(25)]
    assert labels[:20] == [f"S{i}" for i in range(20)]
    assert labels[20:] == ["other"] * 5
    assert led.status_overflow_pending
    assert led.admit_status("completed") == "completed" and led.admit_status("S3") == "S3"


def test_item_cache_debug_counted_once_per_id() -> None:
    led = ledger()
    item = Batch.model_validate(
        {
            "id": "c",
            "status": "in_progress",
            "extra_fields": {"cache_debug": {"cache_hit": True, "hit_type": "semantic", "similarity": 0.97}},
        }
    )
    for t in range(3):
        led.observe([item], T0 + t, complete=True)
    v = led.view()
    assert v.cache_lookups == 1 and v.cache_hits["semantic"] == 1 and v.similarity.count == 1


def test_terminal_active_terminal_flip_counts_once() -> None:
    led = ledger()
    led.observe([b("f", "in_progress", created_at=T0)], T0 + 1, complete=True)
    led.observe([b("f", "failed", failed_at=T0 + 5)], T0 + 10, complete=True)
    led.observe([b("f", "in_progress", created_at=T0)], T0 + 20, complete=True)  # a gateway that flip-flops
    led.observe([b("f", "failed", failed_at=T0 + 25)], T0 + 30, complete=True)
    assert led.view().finished_total("failed") == 1


def test_a_watched_batch_first_shown_with_a_far_past_end_time_counts_once_when_corrected() -> None:
    """A zero or default end time (1000) on a batch we watched, corrected polls later: counted at the first sight
    (it was watched), kept from the gateway time it was seen, so the real time is a correction, not a new end."""
    led = ledger()
    led.observe([b("w", "in_progress", created_at=T0)], T0 + 1, complete=True)
    assert led.observe([b("w", "completed", created_at=T0, completed_at=1000)], T0 + 10, complete=True) == 1
    for t in range(20, 200, 10):  # polls go on; the gateway clock moves with other batches
        led.observe([b("w", "completed", created_at=T0, completed_at=1000), b("n", "in_progress", created_at=T0 + t)],
                    T0 + t, complete=True)  # fmt: skip
    assert (
        led.observe([b("w", "completed", created_at=T0, completed_at=T0 + 8)], T0 + 300, complete=True) == 0
    )
    assert led.view().finished_total("completed") == 1


def test_truncated_polls_cannot_grow_the_ledger_without_bound() -> None:
    """Reproduction 3: every poll stops early, 10 new active batches each time, 500 polls, the list holds 10."""
    led = Ledger(T0, DEFAULT_DURATION_BUCKETS, DEFAULT_LATENCY_BUCKETS, REASONS, poll_interval=30.0)
    for poll in range(500):
        now = T0 + 30.0 * poll
        led.observe(
            [b(f"p{poll}-{i}", "in_progress", created_at=now) for i in range(10)], now, complete=False
        )
    from exporter.ledger import ACTIVE_FORGET_POLLS

    assert led.view().tracked_ids <= 10 * (ACTIVE_FORGET_POLLS + 1)


def test_cap_forgets_oldest_and_never_recounts_them() -> None:
    led = Ledger(T0, DEFAULT_DURATION_BUCKETS, DEFAULT_LATENCY_BUCKETS, REASONS, max_tracked_ids=100)
    done = [b(f"d{i}", "completed", created_at=T0, completed_at=T0 + i) for i in range(150)]
    assert led.observe(done, T0 + 200, complete=False) == 150
    assert led.view().tracked_ids <= 100 and led.forgotten_pending == 50
    assert led.observe(done, T0 + 300, complete=False) == 0  # the forgotten ones are below the floor
    assert led.view().finished_total("completed") == 150


def test_failure_codes_are_bounded_and_last_failure_named() -> None:
    led = ledger()
    batches = [
        Batch.model_validate(
            {
                "id": f"x{i}",
                "status": "failed",
                "failed_at": T0 + i,
                "errors": {"data": [{"code": f"code_{i}"}]},
            }
        )
        for i in range(25)
    ]
    odd = Batch.model_validate(
        {
            "id": "odd",
            "status": "expired",
            "expired_at": T0 + 99,
            "errors": {"data": [{"code": "not a code!"}]},
        }
    )
    none = Batch.model_validate({"id": "plain", "status": "failed", "failed_at": T0 + 98})
    led.observe([*batches, odd, none], T0 + 100, complete=True)
    v = led.view()
    codes = {c for (_, c, _) in v.failures}
    assert len(codes - {"other", "none", "invalid"}) == 20 and "other" in codes
    assert v.failures[("expired", "invalid", ())] == 1 and v.failures[("failed", "none", ())] == 1
    assert v.last_failure["failed"].batch_id == "plain" and v.last_failure["failed"].code == "none"
    assert v.last_failure["expired"].batch_id == "odd"


def test_the_failure_tables_codes_keep_their_series_past_the_cap() -> None:
    """Past 20 distinct codes a new code is `other` (class unknown); a code of the failure table must not be, or an
    input failure would page the platform team as BifrostBatchFailed instead of BifrostBatchInputRejected."""
    led = ledger()

    def failed(batch_id: str, code: str, at: float) -> Batch:
        return Batch.model_validate(
            {"id": batch_id, "status": "failed", "failed_at": at, "errors": {"data": [{"code": code}]}}
        )

    led.observe([failed(f"x{i}", f"code_{i}", T0 + i) for i in range(25)], T0 + 100, complete=True)
    led.observe(
        [failed("bad-input", "invalid_json_line", T0 + 200), failed("new", "code_99", T0 + 201)],
        T0 + 300,
        complete=True,
    )
    v = led.view()
    assert v.failures[("failed", "invalid_json_line", ())] == 1
    assert v.failures[("failed", "other", ())] == 5 + 1  # code_20..code_24, then code_99
    assert len({c for (_, c, _) in v.failures} - {"other", "invalid_json_line"}) == 20


def test_stage_durations_observed_once_when_timestamps_are_in_order() -> None:
    led = ledger()
    done = Batch.model_validate(
        {
            "id": "s",
            "status": "completed",
            "created_at": T0,
            "in_progress_at": T0 + 60,
            "finalizing_at": T0 + 660,
            "completed_at": T0 + 720,
        }
    )
    backwards = Batch.model_validate(
        {"id": "t", "status": "failed", "created_at": T0, "in_progress_at": T0 - 5, "failed_at": T0 + 100}
    )
    led.observe([done, backwards], T0 + 800, complete=True)
    led.observe([done, backwards], T0 + 900, complete=True)
    st = led.view().stages
    assert (st["queued"].count, st["queued"].sum) == (1, 60)
    assert (st["processing"].count, st["processing"].sum) == (2, 600 + 105)
    assert (st["finalizing"].count, st["finalizing"].sum) == (1, 60)


def test_metadata_groups_are_bounded_per_key() -> None:
    led = Ledger(T0, DEFAULT_DURATION_BUCKETS, DEFAULT_LATENCY_BUCKETS, REASONS, metadata_keys=("team",))
    batches = [
        Batch.model_validate(
            {"id": f"m{i}", "status": "completed", "completed_at": T0 + 1, "metadata": {"team": f"t{i}"}}
        )
        for i in range(60)
    ]
    led.observe([*batches, b("nometa", "completed", completed_at=T0 + 1)], T0 + 10, complete=True)
    groups = {g for (_, g) in led.view().finished}
    assert ("other",) in groups and ("",) in groups and len(groups) == 52
    assert led.group_overflow_pending


def test_a_finished_batch_whose_time_moves_is_not_counted_again_even_after_a_restart() -> None:
    """A gateway that reports a later terminal timestamp for a batch already counted (a provider correcting it, a
    status written twice): still one transition, in this process and in one restored from its state."""
    led = ledger()
    led.observe([b("m", "in_progress", created_at=T0)], T0 + 1, complete=True)
    assert led.observe([b("m", "failed", created_at=T0, failed_at=T0 + 5)], T0 + 10, complete=True) == 1
    later = b("m", "failed", created_at=T0, failed_at=T0 + 5000)
    assert led.observe([later], T0 + 5001, complete=True) == 0
    restarted = ledger(T0 + 6000)
    restarted.load_state(led.to_state())
    assert restarted.observe([b("m", "failed", created_at=T0, failed_at=T0 + 9000)], T0 + 9001, True) == 0
    assert restarted.view().finished_total("failed") == 1


def test_a_moved_terminal_time_is_not_counted_again_once_the_first_one_ages_out() -> None:
    """Counted at T0+5; the gateway then shows the batch failed at T0+5000 (the class test_ledger covers for a
    few seconds). Once the gateway's clock is 48 h past T0+5 the settled id is forgotten, but the batch is still
    listed, failed at T0+5000, which is newer than the floor: counted a second time."""
    led = ledger()
    led.observe([b("m", "in_progress", created_at=T0)], T0 + 1, complete=True)
    assert led.observe([b("m", "failed", created_at=T0, failed_at=T0 + 5)], T0 + 10, complete=True) == 1
    moved = b("m", "failed", created_at=T0, failed_at=T0 + 5000)
    assert led.observe([moved], T0 + 5001, complete=True) == 0
    # The gateway's clock moves on (another batch created 48 h + 60 s after T0+5), the same list as always.
    later = T0 + 5 + RETENTION_SECONDS + 60
    fresh = b("n", "in_progress", created_at=later)
    led.observe([fresh, moved], later + 1, complete=True)  # forgets m's id (48 h past T0+5)
    led.observe([fresh, moved], later + 31, complete=True)  # the next poll: the same list
    assert led.view().finished_total("failed") == 1


def test_a_view_change_before_the_first_complete_list_keeps_the_restored_floor() -> None:
    """The previous process ran with its host clock an hour ahead: its watermark is its own (ahead) start, which
    the restore does not take as the counting floor. A view change before this process's first complete list (a
    key file rotated) must not raise the floor to that watermark, or a short batch ending before it is lost."""
    ahead = ledger(T0 + 3600)
    ahead.observe([], T0 + 3600, complete=True)
    state = ahead.to_state()
    assert state["watermark"] == T0 + 3600

    def restarted(view_change: bool) -> float:
        led = ledger(T0)
        led.load_state(state)
        assert led.started_at == T0
        if view_change:
            led.view_changed()
        led.observe([b("x", "failed", created_at=T0 + 10, failed_at=T0 + 60)], T0 + 90, complete=False)
        return led.view().finished_total("failed")

    assert restarted(view_change=False) == 1
    assert restarted(view_change=True) == 1

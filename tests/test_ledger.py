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
    led.observe([batch], later, complete=True)  # still listed, but older than the retention
    v = led.view()
    assert v.tracked_ids == 0 and v.finished_total("completed") == 1


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

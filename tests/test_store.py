"""The store of known batches (exporter/store.py) against a plain model: a dict of the last object seen per id.

Whatever mix of listings, retrieves, removals and full lists (started, spread, finished, abandoned): the store
holds exactly the model's batches, its running totals of finished batches fold into the same gauges as folding
the model's batches from scratch (what full mode does), and a full list removes exactly what it did not show.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.ledger import Ledger
from exporter.models import TERMINAL_STATUSES, Batch
from exporter.settings import DEFAULT_DURATION_BUCKETS, DEFAULT_LATENCY_BUCKETS
from exporter.snapshot import BatchSnapshot, SnapshotBuilder
from exporter.store import Store

NOW = 1_800_000_000.0
STATUSES = ("validating", "in_progress", "completed", "failed", "expired", "cancelled", "ended", "weird")


def _ledger() -> Ledger:
    return Ledger(NOW, DEFAULT_DURATION_BUCKETS, DEFAULT_LATENCY_BUCKETS, ())


def _batch(n: int, status: str, total: int, done: int) -> Batch:
    counts = {"total": total, "completed": min(done, total), "failed": max(0, done - total)}
    return Batch.model_validate(
        {"id": f"b{n}", "status": status, "created_at": NOW - n, "request_counts": counts}
    )


def _snapshot(ledger: Ledger, fill: Any) -> BatchSnapshot:
    builder = SnapshotBuilder("p", label_for=ledger.admit_status, group_for=ledger.group_of, now=NOW)
    fill(builder)
    return builder.build(NOW)


_batches = st.builds(
    _batch,
    st.integers(0, 30),
    st.sampled_from(STATUSES),
    st.integers(0, 50),
    st.integers(0, 60),
)
_op = st.one_of(
    st.tuples(st.just("list"), st.lists(_batches, max_size=8)),
    st.tuples(st.just("head"), st.lists(_batches, max_size=4)),
    st.tuples(st.just("retrieve"), _batches),
    st.tuples(st.just("remove"), st.integers(0, 30)),
    st.tuples(st.just("start"), st.none()),
    st.tuples(st.just("finish"), st.sets(st.integers(0, 30), max_size=3)),
    st.tuples(st.just("abandon"), st.none()),
)


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(_op, max_size=40))
def test_the_store_holds_and_sums_what_a_fresh_fold_of_its_batches_would(ops: list[tuple[str, Any]]) -> None:
    ledger = _ledger()
    store = Store(ledger.admit_status, ledger.group_of)
    model: dict[str, Batch] = {}
    seen: set[str] | None = None  # ids the running full list has shown (None: none running)
    added: set[str] = set()  # ids first known after it started
    for kind, arg in ops:
        if kind in ("list", "head"):
            new = sum(1 for b in {b.id: b for b in arg} if b not in model)
            assert store.upsert(arg, listing=kind == "list") == new
            for batch in arg:
                if seen is not None:
                    if batch.id not in model:
                        added.add(batch.id)
                    seen.add(batch.id)
                model[batch.id] = batch
        elif kind == "retrieve":
            store.refresh(arg)
            model[arg.id] = arg
        elif kind == "remove":
            store.remove(f"b{arg}")
            model.pop(f"b{arg}", None)
        elif kind == "start":
            store.start_resync(NOW)
            seen, added = set(), set()
        elif kind == "finish":
            keep = {f"b{n}" for n in arg}
            gone = store.finish_resync(keep=keep)
            if seen is None:
                assert len(gone) == 0
                continue
            expected_gone = set(model) - seen - added - keep
            assert len(gone) == len(expected_gone)
            # Iterating names the active ones (a finished row keeps a key of its id, not the id).
            assert set(gone) == {
                i for i in expected_gone if model[i].normalized_status not in TERMINAL_STATUSES
            }
            for batch_id in expected_gone:
                del model[batch_id]
            seen = None
        else:
            store.abandon_resync()
            seen = None
        assert len(store) == len(model)
        assert all(batch_id in store for batch_id in model)
        ours = _snapshot(ledger, store.fold_into)
        fresh = _snapshot(ledger, lambda b: b.add(model.values()))
        assert dict(ours.counts) == dict(fresh.counts)
        assert dict(ours.requests) == dict(fresh.requests)
        assert ours.batches == fresh.batches
        assert dict(ours.oldest_created) == dict(fresh.oldest_created)


def test_a_finished_row_costs_a_few_dozen_bytes() -> None:
    """What the compact rows are for: 50,000 finished batches in a few megabytes of flat arrays."""
    ledger = _ledger()
    store = Store(ledger.admit_status, ledger.group_of)
    store.upsert([_batch(n, "completed", 10, 10) for n in range(50_000)])
    columns = [store._index.keys, store._index._slots, store._code, *store._requests, store._flags]
    size = sum(len(c) * (c.itemsize if hasattr(c, "itemsize") else 1) for c in columns)
    assert store.finished == 50_000 and size / 50_000 < 45


def test_the_labels_remembered_for_the_gateways_status_spellings_are_bounded() -> None:
    """A gateway that sends a new status string with every batch: the labels stay capped (20 unknown, then other)
    and so does what the store remembers of the spellings."""
    ledger = _ledger()
    store = Store(ledger.admit_status, ledger.group_of)
    for n in range(5_000):
        store.upsert([Batch.model_validate({"id": f"b{n}", "status": f"odd-{n}", "created_at": NOW})])
    assert len(store._labels) <= 1024
    assert len(store.active) == 5_000

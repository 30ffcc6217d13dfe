"""The compact key tables (exporter/idtable.py) against plain dicts, whatever the order of inserts and removals."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from array import array

from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.idtable import KeyIndex, TimedKeys, id_key, stable_key

# Keys from a small range, so operations hit the same keys (and the same slots) again and again.
_keys = st.integers(min_value=1, max_value=400)
_ops = st.lists(st.tuples(st.sampled_from(["add", "remove", "find"]), _keys), max_size=600)


@settings(max_examples=200, deadline=None)
@given(ops=_ops, spread=st.sampled_from([1, 8, 1 << 40]))
def test_key_index_is_a_set_with_stable_rows(ops: list[tuple[str, int]], spread: int) -> None:
    """Inserts, removals (tombstones), rebuilds and row reuse: the index always answers like a dict of
    key → row, rows stay put while their key is held, and no two keys share a row."""
    index = KeyIndex()
    model: dict[int, int] = {}
    for op, raw in ops:
        key = raw * spread  # 1: adjacent slots; 8: collisions in the low bits; 2^40: the high bits only
        row = index.find(key)
        assert row == model.get(key, -1)
        if op == "add" and key not in model:
            model[key], _ = index.add(key)
        elif op == "remove" and key in model:
            index.remove(model.pop(key))
    assert len(index) == len(model)
    assert sorted(index.rows()) == sorted(model.values())
    assert len(set(model.values())) == len(model)
    for key, row in model.items():
        assert index.find(key) == row and index.keys[row] == key
    assert len(index.keys) <= max(model.values(), default=-1) + 1 + len(ops)


def test_rows_are_reused_so_columns_do_not_grow_with_churn() -> None:
    index = KeyIndex()
    for round_ in range(50):
        rows = [index.add(round_ * 1000 + i + 1)[0] for i in range(100)]
        for row in rows:
            index.remove(row)
    assert len(index) == 0 and len(index.keys) == 100


@settings(max_examples=100, deadline=None)
@given(values=st.dictionaries(_keys, st.floats(min_value=1, max_value=2e9)), drop=st.sets(_keys))
def test_timed_keys_round_trip_through_their_columns(values: dict[int, float], drop: set[int]) -> None:
    """What a state file stores (the columns, free rows included) reads back as the same table."""
    table = TimedKeys()
    for key, value in values.items():
        table.set(key, value)
    for key in drop:
        table.discard(key)
    keys, columns = table.columns()
    again = TimedKeys.adopt(array("Q", keys), array("d", columns))
    expected = {k: v for k, v in values.items() if k not in drop}
    assert dict(again.items()) == expected
    for key, value in expected.items():
        assert again.get(key) == value


def test_a_key_written_twice_is_kept_once() -> None:
    table = TimedKeys.adopt(array("Q", [5, 0, 5, 7]), array("d", [1.0, 0.0, 2.0, 3.0]))
    assert dict(table.items()) == {5: 1.0, 7: 3.0} and len(table) == 2
    table.set(9, 4.0)  # a freed row is reused
    assert len(table.columns()[0]) == 4


def test_stable_keys_are_the_same_in_every_process_and_id_keys_never_zero() -> None:
    here = stable_key("batch_abc123")
    there = subprocess.run(
        [sys.executable, "-c", "from exporter.idtable import stable_key; print(stable_key('batch_abc123'))"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert int(there) == here
    assert here == int.from_bytes(hashlib.blake2b(b"batch_abc123", digest_size=8).digest(), "little")
    assert all(id_key(s) > 0 and stable_key(s) > 0 for s in ("", "x", "batch_1", "\udc80"))

"""Batch ids as 64-bit keys in flat arrays: what a million finished batches cost is a few dozen bytes each.

A Python dict of id strings costs about 150 bytes per entry (the string itself, its hash table slot, the value
object); at a million batches that alone was most of the exporter's memory. Here a batch id becomes a fixed-size
key and lives in `array` columns, indexed by an open-addressing hash table that is itself a flat `array`: about
8 bytes of key and 4 to 11 bytes of index per entry, plus whatever columns the owner keeps per row.

Two kinds of key, for two lifetimes:
- `id_key`: Python's own string hash (SipHash-1-3, 64 bits, salted per process), free once the string is parsed
  (the hash is cached in the string) and unpredictable to the gateway, so ids cannot be chosen to collide. Only for
  tables that live and die with the process (the store, the ledger's settled ids).
- `stable_key`: the first 8 bytes of BLAKE2b of the id: the same in every process, for what the state directory
  keeps across restarts. It costs about half a microsecond, so it is computed once per id that settles, not on
  every sighting.

Collision bound: two of n distinct ids share a 64-bit key with probability at most n²/2⁶⁵: 2.7 × 10⁻⁸ for a
million ids, 2.7 × 10⁻¹⁰ for 100,000. A collision makes the two batches one: one batch missing from the gauges,
or one transition not counted; never a crash, never a count twice.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterator
from typing import Final

M64: Final = 0xFFFF_FFFF_FFFF_FFFF
_EMPTY: Final = 0
_TOMB: Final = 0xFFFF_FFFF  # a removed entry's slot: probing goes on past it
_MIN_SLOTS: Final = 8
# The index is rebuilt once more than this share of its slots is taken (entries and tombstones), at half that
# load: linear probing stays under 2 probes per lookup on average, and the index costs 4 to 11 bytes per key.
_MAX_LOAD: Final = 0.7


def id_key(batch_id: str) -> int:
    """A process-local 64-bit key of `batch_id` (never 0: 0 marks a free row)."""
    return (hash(batch_id) & M64) or 1


def stable_key(batch_id: str) -> int:
    """A 64-bit key of `batch_id` that is the same in every process (never 0)."""
    digest = hashlib.blake2b(batch_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


class KeyIndex:
    """A set of 64-bit keys, each at a dense row number its owner's columns are indexed by.

    Rows of removed keys are reused by the next insert, so the owner's columns never grow past the largest number
    of keys held at once. Not thread-safe: one owner, one task.
    """

    __slots__ = ("_free", "_mask", "_slots", "_taken", "keys")

    def __init__(self) -> None:
        self.keys = array("Q")  # row → key; 0 marks a free row
        self._slots = array("I", [_EMPTY]) * _MIN_SLOTS  # slot → row + 1, _EMPTY or _TOMB
        self._mask = _MIN_SLOTS - 1
        self._taken = 0  # slots not _EMPTY
        self._free = array("I")  # free rows, reused last in first out

    def __len__(self) -> int:
        return len(self.keys) - len(self._free)

    def find(self, key: int) -> int:
        """The row of `key`, or -1."""
        slots, keys, mask = self._slots, self.keys, self._mask
        i = key & mask
        while True:
            slot = slots[i]
            if slot == _EMPTY:
                return -1
            if slot != _TOMB and keys[slot - 1] == key:
                return slot - 1
            i = (i + 1) & mask

    def add(self, key: int) -> tuple[int, bool]:
        """Insert `key`, which must not be present: (its row, whether the row is new at the end of the columns,
        so the owner appends to them rather than overwriting a free row)."""
        if (self._taken + 1) > _MAX_LOAD * len(self._slots):
            self._rebuild(len(self) + 1)
        if self._free:
            row, appended = self._free.pop(), False
            self.keys[row] = key
        else:
            row, appended = len(self.keys), True
            self.keys.append(key)
        slots, mask = self._slots, self._mask
        i = key & mask
        while slots[i] != _EMPTY and slots[i] != _TOMB:
            i = (i + 1) & mask
        if slots[i] == _EMPTY:
            self._taken += 1
        slots[i] = row + 1
        return row, appended

    def remove(self, row: int) -> None:
        """Forget the key at `row` (which must hold one); the row is free for reuse."""
        key = self.keys[row]
        slots, mask = self._slots, self._mask
        i = key & mask
        while slots[i] != row + 1:
            i = (i + 1) & mask
        slots[i] = _TOMB
        self.keys[row] = 0
        self._free.append(row)

    def rows(self) -> Iterator[int]:
        """The rows that hold a key (the caller must not add or remove while iterating)."""
        for row, key in enumerate(self.keys):
            if key:
                yield row

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    def _rebuild(self, entries: int) -> None:
        """A fresh index for `entries` keys at about half load (tombstones dropped)."""
        size = _MIN_SLOTS
        while size * _MAX_LOAD < 2 * entries:  # at most half the maximum load once rebuilt
            size *= 2
        slots = array("I", [_EMPTY]) * size
        mask = size - 1
        for row, key in enumerate(self.keys):
            if key:
                i = key & mask
                while slots[i]:
                    i = (i + 1) & mask
                slots[i] = row + 1
        self._slots, self._mask, self._taken = slots, mask, len(self)


class TimedKeys:
    """Keys with one float each (a settled batch's terminal time), as the state directory keeps them."""

    __slots__ = ("index", "values")

    def __init__(self) -> None:
        self.index = KeyIndex()
        self.values = array("d")  # row → value; 0.0 on a free row

    def __len__(self) -> int:
        return len(self.index)

    def get(self, key: int) -> float | None:
        row = self.index.find(key)
        return None if row < 0 else self.values[row]

    def set(self, key: int, value: float) -> None:
        row = self.index.find(key)
        if row < 0:
            row, appended = self.index.add(key)
            if appended:
                self.values.append(value)
                return
        self.values[row] = value

    def discard(self, key: int) -> bool:
        row = self.index.find(key)
        if row < 0:
            return False
        self.remove_row(row)
        return True

    def remove_row(self, row: int) -> None:
        self.index.remove(row)
        self.values[row] = 0.0

    def items(self) -> Iterator[tuple[int, float]]:
        keys, values = self.index.keys, self.values
        for row in self.index.rows():
            yield keys[row], values[row]

    def columns(self) -> tuple[array[int], array[float]]:
        """The key and value columns as they are (a free row has key 0 and value 0.0): what a state file stores
        without building a list of a million pairs."""
        return self.index.keys, self.values

    @classmethod
    def adopt(cls, keys: array[int], values: array[float]) -> TimedKeys:
        """The table of `keys[i]` → `values[i]` built on these very columns (no copy; key 0 marks a free row), as
        read from a state file. A key twice is kept once (the first)."""
        if len(keys) != len(values) or keys.typecode != "Q" or values.typecode != "d":
            raise ValueError("key and value columns do not match")
        table = cls()
        index = table.index
        index.keys, table.values = keys, values
        for row, key in enumerate(keys):
            if not key:
                index._free.append(row)
                values[row] = 0.0
        index._rebuild(len(index))
        # A key written twice (a damaged or crafted file): keep its first row, free the others.
        twice = [row for row, key in enumerate(keys) if key and index.find(key) != row]
        if twice:
            for row in twice:
                keys[row] = 0
                values[row] = 0.0
                index._free.append(row)
            index._rebuild(len(index))
        return table

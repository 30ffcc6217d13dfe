"""The batch ids a ledger remembers, compact, with what changed since the state directory last wrote them.

Two kinds of id (exporter/ledger.py has the rules):
- active ids, by the poll that last saw them: few (the batches still running), kept as strings in a dict, since a
  retrieve and a log line need the id itself;
- settled ids (counted, or seen finished), by their terminal time, until the retention passes it: up to a million,
  kept as 64-bit keys in flat columns (exporter/idtable.py), about 40 bytes each.

Settled ids live in two tiers. Ids settled by this process are indexed by `id_key` (free to compute: Python caches
a string's hash) and carry their `stable_key` in a column, computed once when they settle, for the state directory.
Ids restored from the state directory are known by their stable key only; they are looked up by it (half a
microsecond of BLAKE2b) only while any are left, and move to the first tier when seen, so after a restart's first
full list few lookups need it. A restored id never seen again leaves with the retention.

Change tracking serves the state journal (exporter/statefile.py): settled keys added and removed, active ids
added, dropped and seen, each since the last `take_changes`. It is off until the first `take_changes` (a process
without a state directory never pays for it) and bounded: past `MAX_TRACKED_CHANGES` it stops and
`take_changes` answers None, meaning "write everything".
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final

from .idtable import M64, KeyIndex, TimedKeys, id_key, stable_key

MAX_TRACKED_CHANGES: Final = 100_000
# Settled ids are forgotten in sweeps, at most once per this share of the retention of gateway time (29 minutes
# of 48 hours): a sweep reads every settled id, and an id kept a little past its retention changes nothing (a
# batch older than the retention is not counted whether or not its id is still there).
SWEEP_SHARE: Final = 0.01


@dataclass(frozen=True, slots=True)
class IdChanges:
    """What changed since the last `take_changes`: one state journal record's worth."""

    settled: Mapping[int, float]  # stable key → terminal time, settled since
    unsettled: tuple[int, ...]  # stable keys forgotten since (applied before `settled`)
    gone: tuple[str, ...]  # active ids no longer active (forgotten, or settled)
    poll: int  # the poll number every active id seen since was seen by
    seen: (
        tuple[str, ...] | None
    )  # active ids seen since (new ones included); None: every active id but `unseen`
    unseen: tuple[str, ...] = ()
    new: tuple[str, ...] = ()  # with `seen` None: the active ids first tracked since


class TrackedIds:
    """Active and settled ids of one provider. Only the provider's poller task touches it."""

    def __init__(self, retention: float) -> None:
        self.active: dict[str, int] = {}  # id → the poll that last saw it active
        self._index = KeyIndex()  # settled by this process, by id_key
        self._stable = array("Q")  # row → stable key (0 on a free row)
        self._at = array("d")  # row → terminal time (0.0 on a free row)
        self._restored = TimedKeys()  # settled before the restart, by stable key
        self._slack = retention * SWEEP_SHARE
        self._sweep_at = math.inf  # the earliest value a sweep could remove, not below _next_sweep
        self._next_sweep = -math.inf
        # Changes since the last take.
        self._added: dict[int, float] = {}
        self._removed: set[int] = set()
        self._gone: set[str] = set()
        self._new: set[str] = set()
        self._seen: set[str] = set()
        self._seen_poll: int | None = None
        self._overflow = True  # not tracking: nothing has taken changes yet

    def __len__(self) -> int:
        return len(self.active) + len(self._index) + len(self._restored)

    @property
    def settled(self) -> int:
        return len(self._index) + len(self._restored)

    # --- lookups ------------------------------------------------------------------------------------------------

    def settled_at(self, batch_id: str) -> float | None:
        """The settled id's terminal time, or None."""
        # id_key, inline: this runs for every recent batch listed
        row = self._index.find((hash(batch_id) & M64) or 1)
        if row >= 0:
            return self._at[row]
        restored = self._restored
        if not len(restored):
            return None
        # Not by the batch's timestamp: a gateway may move a finished batch's time, and it is still counted.
        key = stable_key(batch_id)
        at = restored.get(key)
        if at is not None:  # seen again: to the fast tier (nothing changes on disk)
            restored.discard(key)
            self._add(batch_id, key, at)
        return at

    # --- changes ------------------------------------------------------------------------------------------------

    def mark_active(self, batch_id: str, poll: int) -> None:
        if self._overflow:
            self.active[batch_id] = poll
            return
        if batch_id not in self.active:
            if batch_id in self._gone:
                self._gone.discard(batch_id)  # active at the last take after all
            else:
                self._note(self._new, batch_id)
        self.active[batch_id] = poll
        if self._seen_poll != poll:
            if self._seen:
                self._stop_tracking()  # two polls' sightings in one record: write everything
                return
            self._seen_poll = poll
        self._note(self._seen, batch_id)

    def settle(self, batch_id: str, at: float) -> None:
        """`batch_id` is settled at `at` (no longer active); it must not be settled already."""
        self._drop_active(batch_id)
        key = stable_key(batch_id)
        self._add(batch_id, key, at)
        if not self._overflow:
            self._removed.discard(key)
            self._added[key] = at
            self._check_size(self._added)
        self._sweep_at = min(self._sweep_at, max(at, self._next_sweep))

    def forget(self, batch_id: str) -> None:
        if batch_id in self.active:
            self._drop_active(batch_id)
            return
        row = self._index.find(id_key(batch_id))
        if row >= 0:
            self._unsettle(self._stable[row])
            self._remove_row(row)
        elif len(self._restored):
            key = stable_key(batch_id)
            if self._restored.discard(key):
                self._unsettle(key)

    def forget_stale_active(self, poll: int, complete: bool, unseen_polls: int) -> None:
        """Drop active ids not seen by `poll`: all of them after a complete poll, else those unseen for more
        than `unseen_polls` polls."""
        stale = [
            batch_id
            for batch_id, seen in self.active.items()
            if seen != poll and (complete or seen < poll - unseen_polls)
        ]
        for batch_id in stale:
            self._drop_active(batch_id)

    def expire(self, horizon: float) -> float:
        """Forget settled ids whose time is before `horizon` (at most once per sweep interval of gateway time);
        returns the newest time forgotten (0.0 when none), which the caller's floor must rise to."""
        if horizon <= self._sweep_at:
            return 0.0
        newest = 0.0
        oldest_kept = math.inf
        at = self._at
        for row in self._index.rows():  # removing rows does not move the others
            value = at[row]
            if value < horizon:
                newest = max(newest, value)
                self._unsettle(self._stable[row])
                self._remove_row(row)
            else:
                oldest_kept = min(oldest_kept, value)
        restored = self._restored
        keys, values = restored.columns()
        for row in restored.index.rows():
            value = values[row]
            if value < horizon:
                newest = max(newest, value)
                self._unsettle(keys[row])
                restored.remove_row(row)
            else:
                oldest_kept = min(oldest_kept, value)
        self._next_sweep = horizon + self._slack
        self._sweep_at = max(oldest_kept, self._next_sweep)
        return newest

    def enforce_cap(self, cap: int) -> tuple[int, float]:
        """Past `cap` ids, forget the oldest settled ids first, then the active ids seen longest ago: (how many
        went, the newest settled time among them). A cap of a million forgets a thousand more at once, so a
        provider at the cap does not sort its ids every poll."""
        excess = len(self) - cap
        if excess <= 0:
            return 0, 0.0
        excess = min(len(self), excess + cap // 1000)
        settled = heapq.nsmallest(excess, self._settled_rows())
        newest = 0.0
        for value, tier, row in settled:
            newest = max(newest, value)
            if tier == 0:
                self._unsettle(self._stable[row])
                self._remove_row(row)
            else:
                self._unsettle(self._restored.index.keys[row])
                self._restored.remove_row(row)
        rest = excess - len(settled)
        if rest > 0:
            for batch_id, _ in heapq.nsmallest(rest, self.active.items(), key=lambda kv: kv[1]):
                self._drop_active(batch_id)
        return excess, newest

    def take_changes(self) -> IdChanges | None:
        """The changes since the last take, or None when too many to track (the caller writes everything)."""
        try:
            if self._overflow:
                return None
            poll = self._seen_poll if self._seen_poll is not None else 0
            active = self.active
            seen: tuple[str, ...] | None = tuple(i for i in self._seen if i in active)
            unseen: tuple[str, ...] = ()
            new: tuple[str, ...] = ()
            assert seen is not None
            if len(seen) > len(active) // 2:
                unseen = tuple(i for i in active if i not in self._seen)
                new = tuple(i for i in self._new if i in active)
                seen = None
            return IdChanges(
                settled=self._added,
                unsettled=tuple(self._removed),
                gone=tuple(self._gone),
                poll=poll,
                seen=seen,
                unseen=unseen,
                new=new,
            )
        finally:
            self.discard_changes()

    def discard_changes(self) -> None:
        """Everything as it is now is being written whole: track changes from here."""
        self._added = {}
        self._removed = set()
        self._gone = set()
        self._new = set()
        self._seen = set()
        self._seen_poll = None
        self._overflow = False

    # --- whole state --------------------------------------------------------------------------------------------

    def settled_columns(self) -> tuple[tuple[array[int], array[float]], ...]:
        """Stable keys and terminal times of every settled id, as the columns they are kept in (a free row has
        key 0): what a state file's base stores without a list of a million pairs."""
        return (self._stable, self._at), self._restored.columns()

    def settled_items(self) -> Iterator[tuple[int, float]]:
        for row in self._index.rows():
            yield self._stable[row], self._at[row]
        yield from self._restored.items()

    def restore(self, active: Mapping[str, int], settled: TimedKeys) -> None:
        """Start from a state file's ids (this object fresh): settled ones in the restored tier."""
        self.active = dict(active)
        self._restored = settled
        self._sweep_at = min((value for _, value in settled.items()), default=math.inf)
        self.discard_changes()

    # --- internals ----------------------------------------------------------------------------------------------

    def _settled_rows(self) -> Iterator[tuple[float, int, int]]:
        at = self._at
        for row in self._index.rows():
            yield at[row], 0, row
        values = self._restored.values
        for row in self._restored.index.rows():
            yield values[row], 1, row

    def _add(self, batch_id: str, key: int, at: float) -> None:
        row, appended = self._index.add(id_key(batch_id))
        if appended:
            self._stable.append(key)
            self._at.append(at)
        else:
            self._stable[row] = key
            self._at[row] = at

    def _remove_row(self, row: int) -> None:
        self._index.remove(row)
        self._stable[row] = 0
        self._at[row] = 0.0

    def _unsettle(self, key: int) -> None:
        if self._added.pop(key, None) is None and not self._overflow:
            self._removed.add(key)
            self._check_size(self._removed)

    def _drop_active(self, batch_id: str) -> None:
        if self.active.pop(batch_id, None) is None or self._overflow:
            return
        if batch_id in self._new:
            self._new.discard(batch_id)
        else:
            self._note(self._gone, batch_id)
        self._seen.discard(batch_id)

    def _note(self, changes: set[str], batch_id: str) -> None:
        if not self._overflow:
            changes.add(batch_id)
            self._check_size(changes)

    def _check_size(self, changes: Mapping[int, float] | set[int] | set[str]) -> None:
        if len(changes) > MAX_TRACKED_CHANGES:
            self._stop_tracking()

    def _stop_tracking(self) -> None:
        """Too much to track: the next take answers None, and until then nothing is tracked."""
        self._overflow = True
        self._added, self._removed, self._gone, self._new, self._seen = {}, set(), set(), set(), set()

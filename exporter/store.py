"""The batches a provider is known to have (kube-state-metrics' store), kept compact between polls.

Incremental polling needs to know what exists without listing it again: active batches are kept whole (they can
still change, and the at-risk projection and per-batch series read them); a finished batch only as what it adds
to the gauges, in flat columns: a 64-bit key of its id (exporter/idtable.py), its status and owner group (one code
for the pair), its request outcomes and a flag byte, under 40 bytes in all. The gauges' totals of finished
batches are kept up to date as rows come and go, so a poll folds the active batches only, never the history.

A full list (resync) is folded in page by page and, when it ends, tells which known batches the gateway no longer
has: every row carries a "seen by the running resync" flag (and one for "first known after it started"), so
telling what is gone needs no set of a million ids.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import msgspec

from .idtable import M64 as _M64
from .idtable import KeyIndex, id_key
from .ledger import Group
from .models import TERMINAL_SET, Batch, normalize_status
from .outcomes import outcomes
from .snapshot import SnapshotBuilder

_SEEN: Final = 1  # listed (or confirmed) by the running resync
_ADDED: Final = (
    2  # first known after the running resync started: absent from its pages only because it is new
)
_INTERN_MAX: Final = 128
# Distinct raw status spellings whose label is remembered (a handful in practice; a hostile gateway could send a
# new one per batch: each is then looked up as the first time, never kept).
_MAX_REMEMBERED_STATUSES: Final = 1024


@dataclass(slots=True)
class Resync:
    """A full list in progress, possibly spanning several polls (continuing from `cursor`)."""

    started_at: float
    cursor: str | None = None
    pages: int = 0  # pages of the current key's walk (the loop guard's count)
    longest: int = 0  # pages of the longest key's walk finished so far
    listed: int = 0  # items of the current key's walk folded so far: the list position of the next one
    key: int = 0  # which key of the view is being walked (the view's keys are walked one after the other)
    truncated: str | None = None  # why a key's walk stopped early, if one did
    truncated_detail: str | None = None
    # Active batches seen by this resync (finished ones carry a flag in their row instead).
    seen_active: set[str] = field(default_factory=set)


# The page of the view's key that listed a running batch: (key, cursor it was read with, pages after that one).
ListedOn = tuple[int, str | None, int]


class Gone:
    """What a full list found gone: `len()` counts every batch removed; iterating gives the ids of the active ones
    among them (a finished batch is kept as a key of its id, not the id itself, and the ledger forgets only
    active ids: a counted one stays until its retention ends)."""

    __slots__ = ("active", "finished")

    def __init__(self, active: list[str], finished: int) -> None:
        self.active = active
        self.finished = finished

    def __iter__(self) -> Iterator[str]:
        return iter(self.active)

    def __len__(self) -> int:
        return len(self.active) + self.finished


def is_sparse(batch: Batch) -> bool:
    """A list item that says little: Bedrock's and Gemini's lists carry only `created_at` and zero counts, while
    their retrieve object has the counts and times. Such an active batch is worth a retrieve even when listed."""
    counts = batch.request_counts
    return batch.expires_at is None and (counts is None or not counts.total)


def _intern(value: str | None) -> str | None:
    return sys.intern(value) if value is not None and len(value) <= _INTERN_MAX else value


class Store:
    """Known batches of one provider. Only the provider's poller task touches it."""

    def __init__(
        self,
        label_for: Callable[[str], str],
        group_for: Callable[[Batch], Group],
        *,
        keep_metadata: bool = False,
        held: Callable[[str], bool] | None = None,
        seen: Callable[[list[str]], None] | None = None,
    ) -> None:
        """`held` says the ledger still holds an id as running; `seen` tells it which running ids a list showed
        as items it does not see (see defer_sparse)."""
        self._label_for = label_for
        self._held = held
        self._seen = seen
        self._group_for = group_for
        self._keep_metadata = keep_metadata
        self._labels: dict[str | None, str] = {}  # raw status → label (label_for once per distinct status)
        self.active: dict[str, Batch] = {}
        # Finished batches: row-indexed columns next to the index of their keys.
        self._index = KeyIndex()
        self._code = array("H")  # (status, group) code; "I" past 65,536 pairs
        # Succeeded, failed, expired, canceled (OUTCOMES order): each ≤ 2 × MAX_COUNT; a finished batch has nothing
        # pending (outcomes() moves it to what the terminal status lost), so that column is not kept.
        self._requests = tuple(array("I") for _ in range(4))
        self._flags = bytearray()
        # Per code: the pair, and the totals of its finished batches (five outcomes, then the number of batches).
        self._pairs: list[tuple[str, Group]] = []
        self._codes: dict[tuple[str, Group], int] = {}
        self._totals: list[list[int]] = []
        self.resync: Resync | None = None
        self._added_active: set[str] = set()  # active ids first known after the running resync started
        # Active id → (key, position) in the last full list: tells whether listing down to the known active
        # batches costs fewer requests than retrieving them one by one.
        self.positions: dict[str, tuple[int, int]] = {}
        # Active id → the page that last listed it: (the view's key, the cursor it was read with, depth). The key
        # is the one a retrieve goes out with, since it can see the batch (governance answers another tenant's key
        # with 404, which would read as "deleted"). The cursor (None for a walk's first page, which every head scan
        # reads) and `depth`, pages after the one that cursor reads (a key's first page moves as batches arrive,
        # pushing its oldest onto the next), let the page be read again: one request refreshes every running batch
        # on it, where a walk down from the top cannot reach them cheaply (a provider's later Bifrost keys lie
        # behind the earlier keys' whole history). One tuple per page, shared by its batches.
        self.listed_on: dict[str, ListedOn] = {}
        # Active id → the poll that last saw it (listed or retrieved): the least recently seen are retrieved first.
        self.checked_poll: dict[str, int] = {}
        # Active id → the view's key whose retrieve answered with it, for one no allowed key's list showed.
        self.answered_by: dict[str, int] = {}
        # Active ids held as an id alone (await_retrieve) until a retrieve or a list brings the batch: not shown.
        self._unfetched: set[str] = set()

    def __len__(self) -> int:
        return len(self.active) + len(self._index)

    def __contains__(self, batch_id: object) -> bool:
        if not isinstance(batch_id, str):
            return False
        return batch_id in self.active or self._index.find(id_key(batch_id)) >= 0

    @property
    def finished(self) -> int:
        return len(self._index)

    def upsert(
        self,
        batches: Iterable[Batch],
        *,
        listing: bool = True,
        key: int | None = None,
        poll: int = 0,
        after: str | None = None,
        depth: int = 0,
    ) -> int:
        """Fold batches in; returns how many were not known before. `listing` says the batches are pages of the
        running full list (which places them); the newest pages seen meanwhile only count as seen. `key` is the
        view's key whose list showed them (None: a retrieve), `poll` the poll's number, `after` the cursor their
        page was read with, or `depth` pages before it (None: the first page of `key`'s walk, which every poll's
        head scan reads anyway)."""
        return self._fold(batches, seen=True, listing=listing, key=key, poll=poll, after=after, depth=depth)

    def refresh(self, batch: Batch, poll: int = 0) -> None:
        """One batch from a retrieve: fold it without counting it as seen by the running resync's list."""
        self._fold((batch,), seen=False, listing=False, key=None, poll=poll, after=None, depth=0)

    def _fold(
        self,
        batches: Iterable[Batch],
        *,
        seen: bool,
        listing: bool,
        key: int | None,
        poll: int,
        after: str | None,
        depth: int,
    ) -> int:
        new = 0
        page: ListedOn | None = None if key is None else (key, after, depth if after is not None else 0)
        resync = self.resync
        walking = resync is not None and seen
        active = self.active
        find = self._index.find
        labels = self._labels
        codes, flags = self._codes, self._flags
        r0, r1, r2, r3 = self._requests
        group_for = self._group_for
        for batch in batches:
            batch_id = batch.id
            status = labels.get(batch.status)
            if status is None:
                status = self._label_for(normalize_status(batch.status))
                if len(labels) < _MAX_REMEMBERED_STATUSES:  # the gateway's strings: never without bound
                    labels[batch.status] = status
            was_active = batch_id in active
            key_ = (hash(batch_id) & _M64) or 1  # id_key, inline: this loop runs for every batch listed
            row = -1 if was_active else find(key_)
            known = was_active or row >= 0
            if not known:
                new += 1
            if walking and listing:
                assert resync is not None
                if status not in TERMINAL_SET:
                    self.positions[batch_id] = (resync.key, resync.listed)
                resync.listed += 1
            marks = (_SEEN if walking else 0) | (_ADDED if walking and not known else 0)
            if status in TERMINAL_SET:
                if row >= 0:
                    # Listed again, as it mostly is: unchanged unless its status, group or counts differ.
                    o = outcomes(batch.request_counts, status)
                    if not (
                        codes.get((status, group_for(batch))) == self._code[row]
                        and r0[row] == o[0]
                        and r1[row] == o[1]
                        and r2[row] == o[2]
                        and r3[row] == o[3]
                    ):
                        self._update(row, status, batch)
                    flags[row] |= marks
                    continue
                if was_active:
                    del active[batch_id]
                    self._forget_active(batch_id)
                    marks |= self._take_active_marks(batch_id)
                self._insert(key_, status, batch, marks)
                continue
            if row >= 0:  # a finished batch active again (a gateway that flip-flops)
                marks |= self._flags[row]
                self._remove_row(row)
            if marks:
                self._give_active_marks(batch_id, marks)
            active[batch_id] = self._slim(batch)
            if self._unfetched:
                self._unfetched.discard(batch_id)
            self.checked_poll[batch_id] = poll
            if page is not None:
                # A summary item (Bedrock, Gemini lists) cannot refresh its batch (a retrieve brings the counts):
                # its page is not worth reading again for it.
                sparse = after is not None and is_sparse(batch)
                self.listed_on[batch_id] = (page[0], None, 0) if sparse else page
        return new

    # --- finished rows ------------------------------------------------------------------------------------------

    def _code_of(self, status: str, batch: Batch) -> int:
        pair = (status, self._group_for(batch))
        code = self._codes.get(pair)
        if code is None:
            code = self._codes[pair] = len(self._pairs)
            self._pairs.append(pair)
            self._totals.append([0, 0, 0, 0, 0, 0])
            if code > 0xFFFF and self._code.typecode == "H":
                self._code = array("I", self._code)
        return code

    def _insert(self, key: int, status: str, batch: Batch, marks: int) -> None:
        code = self._code_of(status, batch)
        succeeded, failed, expired, canceled, _, _, _ = outcomes(batch.request_counts, status)
        row, appended = self._index.add(key)
        r0, r1, r2, r3 = self._requests
        if appended:
            self._code.append(code)
            r0.append(succeeded)
            r1.append(failed)
            r2.append(expired)
            r3.append(canceled)
            self._flags.append(marks)
        else:
            self._code[row] = code
            r0[row], r1[row], r2[row], r3[row] = succeeded, failed, expired, canceled
            self._flags[row] = marks
        acc = self._totals[code]
        acc[0] += succeeded
        acc[1] += failed
        acc[2] += expired
        acc[3] += canceled
        acc[5] += 1

    def _update(self, row: int, status: str, batch: Batch) -> None:
        """A finished batch listed again with another status, group or counts: its row follows what the gateway
        says now (a finished batch rarely changes, but full mode would show the change, so the store does too)."""
        code = self._code_of(status, batch)
        o = outcomes(batch.request_counts, status)
        req = self._requests
        before, after = self._totals[self._code[row]], self._totals[code]
        for i in range(4):
            before[i] -= req[i][row]
            after[i] += o[i]
            req[i][row] = o[i]
        before[5] -= 1
        after[5] += 1
        self._code[row] = code

    def _remove_row(self, row: int) -> None:
        acc = self._totals[self._code[row]]
        req = self._requests
        for i in range(4):
            acc[i] -= req[i][row]
        acc[5] -= 1
        self._index.remove(row)
        self._flags[row] = 0

    # --- resync marks of active batches -------------------------------------------------------------------------

    def _take_active_marks(self, batch_id: str) -> int:
        marks = 0
        if self.resync is not None and batch_id in self.resync.seen_active:
            self.resync.seen_active.discard(batch_id)
            marks |= _SEEN
        if batch_id in self._added_active:
            self._added_active.discard(batch_id)
            marks |= _ADDED
        return marks

    def _give_active_marks(self, batch_id: str, marks: int) -> None:
        if self.resync is None:
            return
        if marks & _SEEN:
            self.resync.seen_active.add(batch_id)
        if marks & _ADDED:
            self._added_active.add(batch_id)

    def _mark_seen(self, batch_id: str) -> None:
        if self.resync is None:
            return
        if batch_id in self.active:
            self.resync.seen_active.add(batch_id)
            return
        row = self._index.find(id_key(batch_id))
        if row >= 0:
            self._flags[row] |= _SEEN

    # --- active batches -----------------------------------------------------------------------------------------

    def _forget_active(self, batch_id: str) -> None:
        self._unfetched.discard(batch_id)
        self.answered_by.pop(batch_id, None)
        self.positions.pop(batch_id, None)
        self.listed_on.pop(batch_id, None)
        self.checked_poll.pop(batch_id, None)

    def _slim(self, batch: Batch) -> Batch:
        """What an active batch is kept as between polls: only what the gauges, the projection and the per-batch
        series read (the ledger saw the whole object when it arrived); its few distinct strings shared."""
        return msgspec.structs.replace(
            batch,
            status=_intern(batch.status),
            endpoint=_intern(batch.endpoint),
            completion_window=_intern(batch.completion_window),
            metadata=batch.metadata if self._keep_metadata else None,
            errors=None,
            extra_fields=None,
        )

    def defer_sparse(self, batches: list[Batch], key: int) -> list[Batch]:
        """The list items worth folding now. A sparse item (Bedrock, Gemini lists) of a batch we know is left to
        the retrieve of known active batches, whose object has the counts and times: folding the list item
        would show "no data" as zero requests, and could count a transition with none. It still counts as seen
        by a running full list, so it is not taken for deleted; and `key`, the view's key whose list showed it, is
        the one its retrieve goes with when no list has said so since the view changed (any other key of a
        governance view may be answered 404, and the batch taken for deleted).

        A finished item of an id the ledger still holds as running (`held`) is one too: after a restart the store
        starts empty, and the item would otherwise be counted with the summary's zero requests. It is kept as a
        known batch (as the list shows it) until its retrieve brings the counts the transition is counted with.

        The ledger is told (`seen`) of the known ones left aside: the list did show them, and a running id the
        ledger stops hearing of is forgotten after ACTIVE_FORGET_POLLS polls, so that a batch whose retrieves fail
        that long (or wait that long for the budget) would end uncounted."""
        if not any(is_sparse(b) for b in batches):
            return batches
        kept = []
        deferred: list[str] = []
        held = self._held
        for batch in batches:
            if not is_sparse(batch):
                kept.append(batch)
                continue
            finished = normalize_status(batch.status) in TERMINAL_SET
            if finished and held is not None and batch.id not in self and held(batch.id):
                self.active[batch.id] = self._slim(batch)
            # One held as finished that the list shows active again (a gateway that flip-flops) is folded: only
            # known active batches are retrieved, so deferring it would keep it finished for good.
            if batch.id in self.active or (finished and batch.id in self):
                self._mark_seen(batch.id)
                deferred.append(batch.id)
                if batch.id in self.active and batch.id not in self.listed_on:
                    self.listed_on[batch.id] = (key, None, 0)
            else:
                kept.append(batch)
        if deferred and self._seen is not None:
            self._seen(deferred)
        return kept

    def await_retrieve(self, last_seen: Mapping[str, int]) -> int:
        """Running ids the ledger holds that the store does not (id → the ledger's poll that last saw it), held as
        known active batches with no listing key, so that the refresh retrieves them, least recently seen first;
        returns how many. After a restart the store starts empty: a running batch below every page a full list
        reaches (a provider whose cursor the gateway ignores lists one page per key) was known by retrieves alone,
        and nothing would ask for it again; the ledger would forget it, and its end would go uncounted. Until a
        retrieve (or a list) brings the batch it is not shown: its status is not known. Two 404s a poll apart
        remove it, as any running batch."""
        if not last_seen:
            return 0
        newest = max(last_seen.values())
        added = 0
        for batch_id, seen in last_seen.items():
            if batch_id in self:
                continue
            self.active[batch_id] = Batch(id=batch_id)
            # Below any poll of this process (retrieved first), the least recently seen lowest.
            self.checked_poll[batch_id] = seen - newest - 1
            self._unfetched.add(batch_id)
            added += 1
        return added

    def remove(self, batch_id: str) -> None:
        if self.active.pop(batch_id, None) is not None:
            self._forget_active(batch_id)
            return
        row = self._index.find(id_key(batch_id))
        if row >= 0:
            self._remove_row(row)

    def list_depth(self, batch_ids: Iterable[str]) -> dict[int, int]:
        """Per key of the view, how many items from the top of its list reach every one of `batch_ids` that a
        list placed. One no list placed is left to a retrieve: it must not turn every other one into a retrieve."""
        deepest: dict[int, int] = {}
        for batch_id in batch_ids:
            position = self.positions.get(batch_id)
            if position is None:
                continue
            key, place = position
            deepest[key] = max(deepest.get(key, 0), place + 1)
        return deepest

    def place(self, batches: Sequence[Batch], key: int, offset: int) -> int:
        """The running ones of `batches`, items `offset`… from the top of `key`'s list as a head scan or a walk down
        to known batches read it: their places now (fresher than the last full list's). Returns the next offset."""
        active, positions = self.active, self.positions
        for i, batch in enumerate(batches):
            if batch.id in active:
                positions[batch.id] = (key, offset + i)
        return offset + len(batches)

    def listed_by(self, batch_id: str) -> int | None:
        """The view's key whose list last showed the batch (None: only retrieves have)."""
        page = self.listed_on.get(batch_id)
        return None if page is None else page[0]

    def answered(self, batch_id: str, key: int) -> None:
        """A retrieve with the view's `key` answered with this running batch, which no key the gateway allows had
        listed: its next retrieves go with that key (governance answers the others 404)."""
        if batch_id in self.active:
            self.answered_by[batch_id] = key

    def retrieve_keys(self, batch_id: str) -> tuple[int | None, int | None]:
        """The view's key whose list last showed the batch, and the one whose retrieve last answered with it when
        no list had (None: none)."""
        return self.listed_by(batch_id), self.answered_by.get(batch_id)

    def lose_page(self, batch_id: str) -> None:
        """Its saved page no longer shows the batch: retrieved until a list shows it again (its key is kept)."""
        page = self.listed_on.get(batch_id)
        if page is not None and page[1] is not None:
            self.listed_on[batch_id] = (page[0], None, 0)

    def move_places(self, moved: Mapping[int, int]) -> None:
        """The view's keys changed: places and listing keys follow each key still in the view to its new index
        (`moved`: old → new), and those of keys that left are forgotten. A running batch that only retrieves reach
        (below where a list stops) keeps the key that can see it: under governance any other key is answered 404,
        which two polls in a row would take for a deletion."""
        self.positions = {i: (moved[k], at) for i, (k, at) in self.positions.items() if k in moved}
        self.answered_by = {i: moved[k] for i, k in self.answered_by.items() if k in moved}
        pages: dict[ListedOn, ListedOn] = {}  # one tuple per page still, shared by its batches
        listed_on: dict[str, ListedOn] = {}
        for batch_id, page in self.listed_on.items():
            if page[0] in moved:
                listed_on[batch_id] = pages.setdefault(page, (moved[page[0]], page[1], page[2]))
        self.listed_on = listed_on

    # --- full lists ---------------------------------------------------------------------------------------------

    def start_resync(self, now: float) -> Resync:
        self.resync = Resync(started_at=now)
        self._added_active = set()
        self._flags = bytearray(len(self._flags))
        return self.resync

    def finish_resync(self, keep: Iterable[str] = ()) -> Gone:
        """End the running resync: forget known batches its pages did not show (unless first seen meanwhile, or
        in `keep`)."""
        resync = self.resync
        if resync is None:
            return Gone([], 0)
        kept = set(keep)
        for batch_id in kept:
            self._mark_seen(batch_id)
        self.resync = None
        survivors = resync.seen_active | self._added_active | kept
        self._added_active = set()
        gone = [i for i in self.active if i not in survivors]
        for batch_id in gone:
            self.remove(batch_id)
        removed = 0
        flags, keys = self._flags, self._index.keys
        row = flags.find(0)
        while row >= 0:
            if keys[row]:
                self._remove_row(row)
                removed += 1
            row = flags.find(0, row + 1)
        return Gone(gone, removed)

    def abandon_resync(self) -> None:
        self.resync = None
        self._added_active = set()

    # --- the gauges ---------------------------------------------------------------------------------------------

    def finished_totals(self) -> Mapping[tuple[str, Group], tuple[int, ...]]:
        """Per (status, group) of finished batches: the five outcomes' requests, then the number of batches."""
        return {self._pairs[code]: tuple(acc) for code, acc in enumerate(self._totals) if acc[5] > 0}

    def fold_into(self, builder: SnapshotBuilder) -> None:
        unfetched = self._unfetched
        if unfetched:
            builder.add(b for b in self.active.values() if b.id not in unfetched)
        else:
            builder.add(self.active.values())
        builder.add_totals(self.finished_totals())

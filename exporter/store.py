"""The batches a provider is known to have (kube-state-metrics' store), kept compact between polls.

Incremental polling needs to know what exists without listing it again: active batches are kept whole (they can
still change, and the at-risk projection and per-batch series read them), finished ones only as the row they add
to the gauges (a terminal batch never changes again). A full list (resync) is folded in page by page and, when it
ends, tells which known batches the gateway no longer has.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgspec

from .ledger import Group
from .models import Batch, normalize_status
from .snapshot import SnapshotBuilder, TerminalRow, is_terminal, terminal_row


@dataclass(slots=True)
class Resync:
    """A full list in progress, possibly spanning several polls (continuing from `cursor`)."""

    started_at: float
    cursor: str | None = None
    pages: int = 0
    seen: set[str] = field(default_factory=set)
    listed: int = 0  # items of the current key's walk folded so far: the list position of the next one
    key: int = 0  # which key of the view is being walked (the view's keys are walked one after the other)
    truncated: str | None = None  # why a key's walk stopped early, if one did
    truncated_detail: str | None = None


def is_sparse(batch: Batch) -> bool:
    """A list item that says little: Bedrock's and Gemini's lists carry only `created_at` and zero counts, while
    their retrieve object has the counts and times. Such an active batch is worth a retrieve even when listed."""
    counts = batch.request_counts
    return batch.expires_at is None and (counts is None or not counts.total)


_MAX_SHARED_ROWS = 65_536


def _intern(value: str | None) -> str | None:
    return sys.intern(value) if value is not None and len(value) <= 128 else value


class Store:
    """Known batches of one provider. Only the provider's poller task touches it."""

    def __init__(
        self,
        label_for: Callable[[str], str],
        group_for: Callable[[Batch], Group],
        *,
        keep_metadata: bool = False,
    ) -> None:
        self._label_for = label_for
        self._group_for = group_for
        self._keep_metadata = keep_metadata
        # Finished batches of one status, owner and outcomes share one row object: a long history is mostly rows
        # alike, and a row per batch was most of the store's memory (bounded, so odd counts cannot grow it).
        self._rows: dict[TerminalRow, TerminalRow] = {}
        self.active: dict[str, Batch] = {}
        self.terminal: dict[str, TerminalRow] = {}
        # Ids first seen after the running resync started: absent from its pages only because they are new.
        self._added_since_resync: set[str] = set()
        self.resync: Resync | None = None
        # Active id → (key, position) in the last full list: tells whether listing down to the known active
        # batches costs fewer requests than retrieving them one by one.
        self.positions: dict[str, tuple[int, int]] = {}
        # Active id → the key of the view that last listed it: a retrieve goes out with a key that can see the
        # batch (governance answers another tenant's key with 404, which would read as "deleted").
        self.listed_by: dict[str, int] = {}
        # Active id → the poll that last saw it (listed or retrieved): the least recently seen are retrieved first.
        self.checked_poll: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.active) + len(self.terminal)

    def __contains__(self, batch_id: object) -> bool:
        return batch_id in self.active or batch_id in self.terminal

    def upsert(
        self, batches: Iterable[Batch], *, listing: bool = True, key: int | None = None, poll: int = 0
    ) -> int:
        """Fold batches in; returns how many were not known before. `listing` says the batches are pages of the
        running full list (which places them); the newest pages seen meanwhile only count as seen. `key` is the
        view's key whose list showed them (None: a retrieve), `poll` the poll's number."""
        new = 0
        resync = self.resync
        for batch in batches:
            batch_id = batch.id
            known = batch_id in self.active or batch_id in self.terminal
            if not known:
                new += 1
                if resync is not None:
                    self._added_since_resync.add(batch_id)
            status = self._label_for(normalize_status(batch.status))
            if resync is not None:
                resync.seen.add(batch_id)
                if listing:
                    if not is_terminal(status):
                        self.positions[batch_id] = (resync.key, resync.listed)
                    resync.listed += 1
            if is_terminal(status):
                self.active.pop(batch_id, None)
                self._forget_active(batch_id)
                row = terminal_row(status, self._group_for(batch), batch)
                rows = self._rows
                if len(rows) < _MAX_SHARED_ROWS:
                    row = rows.setdefault(row, row)
                self.terminal[batch_id] = row
            else:
                self.terminal.pop(batch_id, None)
                self.active[batch_id] = self._slim(batch)
                self.checked_poll[batch_id] = poll
                if key is not None:
                    self.listed_by[batch_id] = key
        return new

    def _forget_active(self, batch_id: str) -> None:
        self.positions.pop(batch_id, None)
        self.listed_by.pop(batch_id, None)
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

    def defer_sparse(self, batches: list[Batch]) -> list[Batch]:
        """The list items worth folding now. A sparse item (Bedrock, Gemini lists) of a batch we know is left to
        the retrieve of known active batches, whose object has the counts and times: folding the list item
        would show "no data" as zero requests, and could count a transition with none. It still counts as seen
        by a running full list, so it is not taken for deleted."""
        if not any(is_sparse(b) for b in batches):
            return batches
        kept = []
        for batch in batches:
            if is_sparse(batch) and (batch.id in self.active or batch.id in self.terminal):
                if self.resync is not None:
                    self.resync.seen.add(batch.id)
            else:
                kept.append(batch)
        return kept

    def refresh(self, batch: Batch, poll: int = 0) -> None:
        """One batch from a retrieve: fold it without counting it as seen by the running resync's list."""
        resync, self.resync = self.resync, None
        try:
            self.upsert([batch], poll=poll)
        finally:
            self.resync = resync

    def remove(self, batch_id: str) -> None:
        self.active.pop(batch_id, None)
        self.terminal.pop(batch_id, None)
        self._forget_active(batch_id)

    def list_depth(self, batch_ids: Iterable[str]) -> dict[int, int] | None:
        """Per key of the view, how many items from the top of its list reach every one of `batch_ids` it
        placed (by the last full list), or None when one of them was not placed by it."""
        deepest: dict[int, int] = {}
        for batch_id in batch_ids:
            position = self.positions.get(batch_id)
            if position is None:
                return None
            key, place = position
            deepest[key] = max(deepest.get(key, 0), place + 1)
        return deepest

    def forget_places(self) -> None:
        """The view's keys changed: positions and listing keys refer to keys that are no more."""
        self.positions.clear()
        self.listed_by.clear()

    def start_resync(self, now: float) -> Resync:
        self.resync = Resync(started_at=now)
        self._added_since_resync = set()
        return self.resync

    def finish_resync(self, keep: Iterable[str] = ()) -> list[str]:
        """End the running resync: forget known batches its pages did not show (unless first seen meanwhile, or
        in `keep`); returns the ids removed."""
        resync = self.resync
        self.resync = None
        if resync is None:
            return []
        survivors = resync.seen | self._added_since_resync | set(keep)
        self._added_since_resync = set()
        gone = [i for i in (*self.active, *self.terminal) if i not in survivors]
        for batch_id in gone:
            self.remove(batch_id)
        return gone

    def abandon_resync(self) -> None:
        self.resync = None
        self._added_since_resync = set()

    def fold_into(self, builder: SnapshotBuilder) -> None:
        builder.add(self.active.values())
        builder.add_rows(self.terminal.values())

"""One provider's batches in memory, indexed so that paging stays O(page) even with 100k batches.

The store knows nothing about HTTP or time: the lifecycle moves batches, the gateway reads pages.
"""

from __future__ import annotations

import bisect
import heapq
import random
from dataclasses import dataclass
from typing import Any, NamedTuple

from .flavors import ProviderSpec, Step
from .wire import encode_cursor


@dataclass
class Meta:
    key: int
    sort_key: tuple[int, int]  # (-created_at, -seq): ascending order is newest first
    gen: int = 0  # bumped when the plan is replaced, so stale heap events are ignored
    plan: list[Step] | None = None


class Page(NamedTuple):
    data: list[dict[str, Any]]
    has_more: bool
    next_cursor: str | None
    last_id: str | None


class ProviderState:
    """One provider's batches plus the indexes that keep paging O(page) even with 100k batches."""

    def __init__(self, spec: ProviderSpec, seed: int) -> None:
        self.spec = spec
        self.rng = random.Random(f"{seed}:{spec.name}:lifecycle")
        self.manual_rng = random.Random(f"{seed}:{spec.name}:manual")
        self.latency_rng = random.Random(f"{seed}:{spec.name}:latency")
        self.batches: dict[str, dict[str, Any]] = {}
        self.meta: dict[str, Meta] = {}
        self.dirty = True
        self.order: list[list[str]] = []
        self.sort_keys: list[list[tuple[int, int]]] = []
        self.pos: dict[str, tuple[int, int]] = {}
        self.tombstones: dict[str, tuple[int, tuple[int, int]]] = {}
        self.heap: list[tuple[float, int, str, int, int]] = []
        self.next_create: float | None = None
        self.list_requests = 0
        self.nonce = 0
        self.round_robin = 0

    @property
    def lists(self) -> int:
        return 1 if self.spec.style == "legacy" else max(1, self.spec.keys)

    def fill_keys(self) -> list[int]:
        keys = [k for k in range(max(1, self.spec.keys)) if k not in self.spec.empty_keys]
        return keys or [0]

    def next_key(self) -> int:
        keys = self.fill_keys()
        key = keys[self.round_robin % len(keys)]
        self.round_robin += 1
        return key

    def ensure_order(self) -> None:
        if not self.dirty:
            return
        groups: list[list[tuple[tuple[int, int], str]]] = [[] for _ in range(self.lists)]
        legacy = self.lists == 1
        for bid, meta in self.meta.items():
            groups[0 if legacy else min(meta.key, self.lists - 1)].append((meta.sort_key, bid))
        self.order = []
        self.sort_keys = []
        self.pos = {}
        for k, group in enumerate(groups):
            group.sort()
            self.sort_keys.append([sk for sk, _ in group])
            ids = [bid for _, bid in group]
            self.order.append(ids)
            for i, bid in enumerate(ids):
                self.pos[bid] = (k, i)
        self.dirty = False

    def insert(
        self, batch: dict[str, Any], key: int, seq: int, plan: list[Step] | None, heap_seq: int
    ) -> None:
        bid = str(batch["id"])
        created = batch.get("created_at")
        created_i = int(created) if isinstance(created, int | float) else 0
        meta = Meta(key=key, sort_key=(-created_i, -seq), plan=plan)
        if bid in self.meta:
            meta.gen = self.meta[bid].gen + 1
        self.batches[bid] = batch
        self.meta[bid] = meta
        self.tombstones.pop(bid, None)
        self.dirty = True
        if plan:
            heapq.heappush(self.heap, (plan[0].t, heap_seq, bid, meta.gen, 0))

    def remove(self, bid: str) -> None:
        meta = self.meta.pop(bid)
        del self.batches[bid]
        self.tombstones[bid] = (meta.key, meta.sort_key)
        if len(self.tombstones) > 10_000:
            del self.tombstones[next(iter(self.tombstones))]
        self.dirty = True

    def clear(self) -> None:
        for bid in list(self.meta):
            self.remove(bid)
        self.heap.clear()

    def position_after(self, key: int, after: str) -> int | None:
        """Index just past `after` in a key's list; ids dropped since they were handed out still resolve."""
        self.ensure_order()
        legacy = self.lists == 1
        found = self.pos.get(after)
        if found is not None:
            if legacy or found[0] == key:
                return found[1] + 1
            return None
        tomb = self.tombstones.get(after)
        if tomb is not None and (legacy or tomb[0] == key):
            return bisect.bisect_right(self.sort_keys[0 if legacy else key], tomb[1])
        return None

    def key_of(self, after: str) -> int | None:
        found = self.pos.get(after)
        if found is not None:
            return found[0]
        tomb = self.tombstones.get(after)
        return None if tomb is None else tomb[0]

    def slice(self, key: int, start: int, limit: int) -> Page:
        """One key's page the way the real gateway builds it: never spanning keys, so boundaries give short or
        empty pages that still say has_more."""
        ids = self.order[key]
        chunk = ids[start : start + limit]
        data = [self.batches[bid] for bid in chunk]
        last = chunk[-1] if chunk else None
        if self.spec.style == "legacy":
            return Page(data, start + limit < len(ids), None, last)
        if start + limit < len(ids):
            return Page(data, True, encode_cursor(key, last), last)
        if key + 1 < self.lists:
            return Page(data, True, encode_cursor(key + 1, None), last)
        return Page(data, False, None, last)

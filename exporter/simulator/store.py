"""One provider's batches in memory, indexed so that paging stays O(page) even with 100k batches.

The store knows nothing about HTTP or time: the lifecycle moves batches, the gateway reads pages. Batches belong
to an account (the key that created them, or the one account that several keys share); each key lists its
account's batches newest first, which is how OpenAI keys of one organisation list the same batches twice.
"""

from __future__ import annotations

import bisect
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from .flavors import ProviderSpec, Step

__all__ = ["InsertHook", "Meta", "Page", "ProviderState"]

InsertHook = Callable[["ProviderState", str, bool], None]
"""Called under the world lock after a batch is stored: (state, batch id, new) — `new` is False when an id is
stored again. Governance assigns the batch's owner and accounting opens its job here, whoever created the batch
(the lifecycle, a scripted scenario, a test)."""

_TOMBSTONES = 10_000


@dataclass
class Meta:
    key: int
    sort_key: tuple[int, int]  # (-created_at, -seq): ascending order is newest first
    gen: int = 0  # bumped when the plan is replaced, so stale heap events are ignored
    plan: list[Step] | None = None


class Page(NamedTuple):
    data: list[dict[str, Any]]
    has_more: bool
    last_id: str | None


class ProviderState:
    """One provider's batches plus the per-account orderings that paging reads."""

    def __init__(self, spec: ProviderSpec, seed: int) -> None:
        self.spec = spec
        self.rng = random.Random(f"{seed}:{spec.name}:lifecycle")
        self.manual_rng = random.Random(f"{seed}:{spec.name}:manual")
        self.latency_rng = random.Random(f"{seed}:{spec.name}:latency")
        self.batches: dict[str, dict[str, Any]] = {}
        self.meta: dict[str, Meta] = {}
        self.dirty = True
        self.order: dict[int, list[str]] = {}
        self.sort_keys: dict[int, list[tuple[int, int]]] = {}
        self.pos: dict[str, int] = {}
        self.tombstones: dict[str, tuple[int, tuple[int, int]]] = {}
        self.heap: list[tuple[float, int, str, int, int]] = []
        self.next_create: float | None = None
        self.requests: dict[str, int] = {"list": 0, "retrieve": 0, "cancel": 0, "results": 0}
        self.nonce = 0
        self.round_robin = 0
        # Governance: the virtual key id recorded on the batch's job row (None: created with no key). A batch whose id
        # is in `external` has no job row at all (created outside the gateway): nobody owns it and the accounting
        # sweeper never polls it.
        self.owners: dict[str, str | None] = {}
        self.external: set[str] = set()
        self.on_insert: InsertHook | None = None

    @property
    def list_requests(self) -> int:
        return self.requests["list"]

    @property
    def lists(self) -> int:
        """How many keys the gateway pages over: the older gateway listed with one key only."""
        return 1 if self.spec.style == "legacy" else max(1, self.spec.keys)

    def account_of_key(self, key: int) -> int:
        return 0 if self.spec.style == "legacy" else self.spec.account(key)

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
        groups: dict[int, list[tuple[tuple[int, int], str]]] = {}
        for bid, meta in self.meta.items():
            groups.setdefault(self.account_of_key(meta.key), []).append((meta.sort_key, bid))
        self.order = {}
        self.sort_keys = {}
        self.pos = {}
        for account, group in groups.items():
            group.sort()
            self.sort_keys[account] = [sk for sk, _ in group]
            ids = [bid for _, bid in group]
            self.order[account] = ids
            for i, bid in enumerate(ids):
                self.pos[bid] = i
        self.dirty = False

    def insert(
        self, batch: dict[str, Any], key: int, seq: int, plan: list[Step] | None, heap_seq: int
    ) -> None:
        bid = str(batch["id"])
        created = batch.get("created_at")
        created_i = int(created) if isinstance(created, int | float) else 0
        meta = Meta(key=key, sort_key=(-created_i, -seq), plan=plan)
        new = bid not in self.meta
        if not new:
            meta.gen = self.meta[bid].gen + 1
        self.batches[bid] = batch
        self.meta[bid] = meta
        self.tombstones.pop(bid, None)
        self.dirty = True
        if plan:
            heapq.heappush(self.heap, (plan[0].t, heap_seq, bid, meta.gen, 0))
        if self.on_insert is not None:
            self.on_insert(self, bid, new)

    def remove(self, bid: str) -> None:
        meta = self.meta.pop(bid)
        del self.batches[bid]
        self.owners.pop(bid, None)
        self.external.discard(bid)
        self.tombstones[bid] = (self.account_of_key(meta.key), meta.sort_key)
        if len(self.tombstones) > _TOMBSTONES:
            del self.tombstones[next(iter(self.tombstones))]
        self.dirty = True

    def clear(self) -> None:
        for bid in list(self.meta):
            self.remove(bid)
        self.heap.clear()

    def account_ids(self, key: int) -> list[str]:
        self.ensure_order()
        return self.order.get(self.account_of_key(key), [])

    def position_after(self, key: int, after: str) -> int | None:
        """Index just past `after` in a key's list; ids dropped since they were handed out still resolve, as the
        upstreams page by creation time."""
        self.ensure_order()
        account = self.account_of_key(key)
        meta = self.meta.get(after)
        if meta is not None:
            if self.account_of_key(meta.key) == account:
                return self.pos[after] + 1
            return None
        tomb = self.tombstones.get(after)
        if tomb is not None and tomb[0] == account:
            return bisect.bisect_right(self.sort_keys.get(account, []), tomb[1])
        return None

    def slice(self, key: int, start: int, limit: int) -> Page:
        """One key's page the way the upstream builds it: never spanning keys."""
        ids = self.account_ids(key)
        chunk = ids[start : start + limit]
        data = [self.batches[bid] for bid in chunk]
        return Page(data, start + limit < len(ids), chunk[-1] if chunk else None)

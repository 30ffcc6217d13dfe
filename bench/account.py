"""A realistic large account for the memory benchmark (issue 20): weeks of finished batches behind a few active
ones, moving on a clock that may run faster than the wall.

Batch number s (a serial, newest highest) is created `step` seconds after batch s - 1, so the list of `total`
batches spans HISTORY_DAYS; a batch is active for its first `window` seconds (`active` × `step`: about `active`
batches are running at any moment) and finished after that, at created + window, with the status, counts and error
codes of a batch the simulator's generator made. As the clock moves, new batches appear at the top, active ones
finish (the transitions a poll counts) and the oldest fall off the end of the list (as a provider's retention
drops them). Pages are served by `after` cursor (the last id of the previous page, stable while the list moves),
and any listed batch by id, as Bifrost's list and retrieve routes answer.

Nothing is stored per batch: an item is one of a few hundred pre-encoded shapes with its id and timestamps
written in, so a million batches cost the server nothing but the encoding of the pages asked for.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, Final

from exporter.simulator import generate_batches, list_page_bytes

HISTORY_DAYS: Final = 21.0
ACTIVE: Final = 100
TEMPLATE: Final = 600
_ACTIVE_STATUSES: Final = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
_SERIAL_DIGITS: Final = 12
_ID: Final = b"~ID~"
_CREATED: Final = b"7000000001"
_LEGACY: Final = ("openai", "azure", "vertex")


class _Shape:
    """One batch of the generator with its id and times replaced by markers, encoded once."""

    def __init__(self, batch: dict[str, Any], finished: bool) -> None:
        item = dict(batch)
        created = float(item["created_at"])
        item["id"] = _ID.decode()
        if item.get("operation_name") == batch["id"]:
            item["operation_name"] = _ID.decode()
        item["created_at"] = int(_CREATED)
        times: list[tuple[str, float]] = []
        for key, value in batch.items():
            if key in ("created_at", "expires_at") or not key.endswith("_at"):
                continue
            if isinstance(value, int | float) and value:
                times.append((key, float(value) - created))
        last = max((offset for _, offset in times), default=0.0) or 1.0
        self.marks: list[tuple[bytes, float]] = []  # marker, fraction of the active window after creation
        for n, (key, offset) in enumerate(times, start=2):
            mark = b"70000000%02d" % n
            item[key] = int(mark)
            self.marks.append((mark, offset / last if finished else 0.0))
        if item.get("expires_at"):
            item["expires_at"] = int(b"7000000099")
        self.raw = json.dumps(item, separators=(",", ":")).encode()
        self.prefix = str(batch["id"]).split("_", 1)[0] + "_" if "_" in str(batch["id"]) else "batch_"

    def encode(self, batch_id: bytes, created: float, window: float) -> bytes:
        raw = self.raw.replace(_ID, batch_id).replace(_CREATED, b"%d" % created)
        raw = raw.replace(b"7000000099", b"%d" % (created + 86_400))
        for mark, fraction in self.marks:
            raw = raw.replace(mark, b"%d" % (created + fraction * window))
        return raw


class Account:
    """One provider's list as described above; `now()` is the account's clock."""

    def __init__(
        self,
        provider: str,
        flavor: str,
        total: int,
        *,
        active: int = ACTIVE,
        speed: float = 1.0,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.provider = provider
        self.total = max(1, total)
        self.speed = speed
        self._clock = clock
        self._start = clock()
        self.step = HISTORY_DAYS * 86_400.0 / self.total
        self.window = active * self.step
        batches = generate_batches(
            provider, TEMPLATE, seed=seed, now=self._start, flavor=flavor,
            style="legacy" if flavor in _LEGACY else "cursor",
        )  # fmt: skip
        self._active = [_Shape(b, False) for b in batches if b["status"] in _ACTIVE_STATUSES]
        self._finished = [_Shape(b, True) for b in batches if b["status"] not in _ACTIVE_STATUSES]
        self._prefix = self._finished[0].prefix.encode()

    def now(self) -> float:
        return self._start + (self._clock() - self._start) * self.speed

    def newest(self, now: float) -> int:
        """The serial of the newest batch at `now` (the list holds newest - total + 1 .. newest)."""
        return self.total - 1 + int((now - self._start) // self.step)

    def created(self, serial: int) -> float:
        return self._start - (self.total - 1 - serial) * self.step

    def batch_id(self, serial: int) -> bytes:
        return self._prefix + b"%0*d" % (_SERIAL_DIGITS, serial)

    def serial_of(self, batch_id: str) -> int | None:
        tail = batch_id[-_SERIAL_DIGITS:]
        if not batch_id.startswith(self._prefix.decode()) or not tail.isdigit():
            return None
        return int(tail)

    def item(self, serial: int, now: float) -> bytes:
        created = self.created(serial)
        shapes = self._active if now - created < self.window else self._finished
        return shapes[serial % len(shapes)].encode(self.batch_id(serial), created, self.window)

    def page(self, after: str | None, limit: int) -> bytes:
        now = self.now()
        newest = self.newest(now)
        oldest = newest - self.total + 1
        start = newest
        if after:
            serial = self.serial_of(after)
            start = min(newest, serial - 1) if serial is not None else oldest - 1
        end = max(oldest, start - limit + 1)
        serials = range(start, end - 1, -1) if start >= oldest else range(0)
        items = [self.item(s, now) for s in serials]
        more = bool(items) and end > oldest
        envelope = list_page_bytes(
            [],
            has_more=more,
            next_cursor=self.batch_id(end).decode() if more else None,
            provider=self.provider,
        )
        return envelope.replace(b'"data":[]', b'"data":[' + b",".join(items) + b"]", 1)

    def retrieve(self, batch_id: str) -> bytes | None:
        serial = self.serial_of(batch_id)
        now = self.now()
        newest = self.newest(now)
        if serial is None or not newest - self.total < serial <= newest:
            return None
        return self.item(serial, now)

"""The simulator's shared state: every provider's store, the armed faults, the lifecycle, the counters, and (when
configured) governance and the accounting ledger.

One object behind one lock, handed to the HTTP surface and the Python API alike, so both see and change the same
gateway; sleeps (faults, page delays) happen outside the lock so one slow page never stalls other clients.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .accounting import Accounting, Ledger
from .faults import FaultBook
from .flavors import ProviderSpec
from .governance import Governance, Governor
from .lifecycle import Clock, Lifecycle
from .store import ProviderState

__all__ = ["RawHeader", "Settings", "World"]

RawHeader = Literal["honoured", "promote_only"]


@dataclass(frozen=True)
class Settings:
    """What the gateway is configured with, fixed for the simulator's life."""

    virtual_key: str | None = None
    basic_header: str | None = None  # the whole expected Authorization value
    latency_ms: int = 120
    # Bifrost never sets cache_debug on batch responses (plugins/semanticcache skips batch request types): on
    # only for demos of the cache panels.
    cache_debug: bool = False
    # The providers' "send back raw response" config: on, as on the gateways where the echo bit us.
    send_back_raw_response: bool = True
    # How `x-bf-send-back-raw-response` is read: "honoured" both ways (newer), or "promote_only" (older).
    raw_header: RawHeader = "honoured"
    # The governance plugin with its virtual keys (None: no governance, the single `virtual_key` check or none).
    governance: Governance | None = None
    # Batch accounting and the logs API (None: logging off, no settlement rows, no /api/logs).
    accounting: Accounting | None = None
    # An admin session token accepted as `Authorization: Bearer` on /api/* next to the Basic login.
    admin_token: str | None = None


@dataclass
class World:
    clock: Clock
    settings: Settings
    lifecycle: Lifecycle
    seq: itertools.count[int]
    providers: dict[str, ProviderState]
    lock: threading.RLock = field(default_factory=threading.RLock)
    faults: FaultBook = field(default_factory=FaultBook)
    log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=10_000))
    list_requests_total: int = 0
    governor: Governor | None = None
    ledger: Ledger | None = None

    @classmethod
    def build(
        cls,
        *,
        specs: Sequence[ProviderSpec],
        seed: int,
        clock: Clock,
        settings: Settings,
        lifecycle: bool,
        max_batches: int,
        retention_seconds: float | None = None,
    ) -> World:
        seq = itertools.count()
        engine = Lifecycle(
            enabled=lifecycle,
            clock=clock,
            seq=seq,
            latency_ms=settings.latency_ms,
            cache_debug=settings.cache_debug,
            max_batches=max_batches,
            retention_seconds=retention_seconds,
        )
        providers = {spec.name: ProviderState(spec, seed) for spec in specs}
        world = cls(clock=clock, settings=settings, lifecycle=engine, seq=seq, providers=providers)
        if settings.governance is not None:
            world.governor = Governor(settings.governance, seed)
        if settings.accounting is not None:
            world.ledger = Ledger(
                settings.accounting,
                seed=seed,
                start=clock(),
                providers=providers,
                governance=settings.governance,
            )
        for state in providers.values():
            state.on_insert = world.on_insert
        return world

    def on_insert(self, state: ProviderState, batch_id: str, new: bool) -> None:
        if self.governor is not None:
            self.governor.on_insert(state, batch_id, new)
        if self.ledger is not None:
            self.ledger.on_insert(state, batch_id, new)

    def provider(self, name: str) -> ProviderState:
        try:
            return self.providers[name]
        except KeyError:
            raise ValueError(f"provider {name!r} is not configured in this simulator") from None

    def advance(self, state: ProviderState) -> None:
        """Bring a provider up to the clock. With accounting on, every provider and the sweeper move together: a
        settlement depends on every provider's batches."""
        if self.ledger is None:
            self.lifecycle.advance(state, self.clock())
            return
        self.advance_all()

    def advance_all(self) -> None:
        now = self.clock()
        for state in self.providers.values():
            self.lifecycle.advance(state, now)
        if self.ledger is not None:
            self.ledger.advance(now)

"""The fake gateway's Python API: start it, fill it, fault it, watch it.

`Simulator` composes the parts (world state, lifecycle, HTTP surface, control API) and is what tests, the
benchmarks and `--demo` hold on to.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import ssl
import time
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Literal

from .accounting import Accounting, AccountingTruth, Ledger, accounting_log_id
from .control import Control
from .flavors import (
    DEFAULT_PROVIDERS,
    TIMESTAMP_FIELD,
    ProviderSpec,
    apply_flavor_state,
    default_counts,
    list_item,
    new_id,
    retrieve_object,
    skeleton,
)
from .gateway import Gateway
from .governance import Governance, VirtualKey
from .lifecycle import Clock
from .scenario import Script
from .server import HttpServer
from .store import ProviderState
from .wire import copy_json
from .world import RawHeader, Settings, World

__all__ = ["Endpoint", "Simulator", "View"]

View = Literal["stored", "list", "retrieve"]
Endpoint = Literal["list", "retrieve", "cancel", "results"]


class _Unset:
    """Marks an argument left out, where None is a meaningful value (a batch with no owner)."""


_UNSET = _Unset()


class Simulator:
    """The fake gateway. State lives behind one lock; sleeps (faults, page delays) happen outside it so one
    slow page never stalls other clients."""

    def __init__(
        self,
        *,
        providers: Sequence[ProviderSpec] | None = None,
        seed: int = 0,
        clock: Clock = time.time,
        lifecycle: bool = True,
        initial_batches: int = 12,
        virtual_key: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        latency_ms: int = 120,
        cache_debug: bool = False,
        max_batches: int = 300,
        send_back_raw_response: bool = True,
        raw_header: RawHeader = "honoured",
        retention_seconds: float | None = None,
        troubled: bool = True,
        arrivals: bool = True,
        governance: Governance | None = None,
        accounting: Accounting | None = None,
        admin_token: str | None = None,
    ) -> None:
        """`lifecycle` moves batches in (injected) time; without it the store is static and tests build exact
        scenarios with add_batch. With the lifecycle on, new batches arrive every 10-30 s unless `arrivals` is
        False (a scripted scenario plays alone), and `troubled` adds to each provider with request counts a
        batch that falls behind and one that never starts (the early-warning demo); `retention_seconds` makes
        finished batches disappear that long after their end. `send_back_raw_response` is the providers' echo
        config; `raw_header` how the per-request header overrides it (see gateway). `cache_debug` invents semantic-cache debug data,
        which real Bifrost never puts on batch responses: for demos of the cache panels only.

        `governance` turns on the governance plugin (virtual keys, an owner per batch, narrowed lists, 404 for another
        key's batch; see `governance`); exclusive with the simple `virtual_key`. `accounting` turns on batch
        accounting and the logs API (settlement rows, see `accounting`); `basic_auth` (or `admin_token`, an admin
        session token sent as Bearer) is then the logs API's login. Both are off by default."""
        if governance is not None and virtual_key is not None:
            raise ValueError("virtual_key and governance are exclusive: list the key in governance.keys")
        basic = (
            None
            if basic_auth is None
            else "Basic " + base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode("ascii")
        )
        settings = Settings(
            virtual_key=virtual_key,
            basic_header=basic,
            latency_ms=latency_ms,
            cache_debug=cache_debug,
            send_back_raw_response=send_back_raw_response,
            raw_header=raw_header,
            governance=governance,
            accounting=accounting,
            admin_token=admin_token,
        )
        self._world = World.build(
            specs=DEFAULT_PROVIDERS if providers is None else providers,
            seed=seed,
            clock=clock,
            settings=settings,
            lifecycle=lifecycle,
            max_batches=max_batches,
            retention_seconds=retention_seconds,
        )
        self._clock = clock
        self._initial_batches = initial_batches
        self._gateway = Gateway(self._world, Control(self))
        self._server: HttpServer | None = None
        if lifecycle:
            now = self._clock()
            with self._world.lock:
                for state in self._world.providers.values():
                    if state.spec.supported:
                        self._world.lifecycle.seed(state, initial_batches, now)
                        if troubled:
                            self._world.lifecycle.seed_troubled(state, now)
                        if arrivals:
                            state.next_create = now + state.rng.uniform(10, 30)
                    self._world.lifecycle.advance(state, now)
        if self._world.ledger is not None:
            with self._world.lock:
                self._world.advance_all()

    # ---- server lifecycle --------------------

    def start(
        self, host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None
    ) -> Simulator:
        """Serve in a daemon thread; with `ssl_context` the gateway speaks HTTPS."""
        if self._server is None:
            self._server = HttpServer(
                self._gateway.dispatch, host, port, ssl_context=ssl_context, clock=self._clock
            )
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("simulator is not started")
        return self._server.url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def providers(self) -> tuple[ProviderSpec, ...]:
        return tuple(state.spec for state in self._world.providers.values())

    @property
    def governance(self) -> Governance | None:
        return self._world.settings.governance

    @property
    def virtual_keys(self) -> dict[str, str]:
        """Key name (or id) → value, for clients and key directories; empty without governance."""
        gov = self._world.settings.governance
        return {} if gov is None else {vk.name or vk.id: vk.value for vk in gov.keys}

    def set_virtual_key(self, key: VirtualKey) -> None:
        """Change one virtual key's configuration (the key with the same id) as the gateway's admin would while it
        runs: its provider scope, its budget, whether it is active. Its value and id stay what clients hold."""
        with self._world.lock:
            governor = self._world.governor
            if governor is None:
                raise ValueError("the simulator runs without governance")
            old = governor.config.key(key.id)
            if old.value != key.value:
                raise ValueError(f"virtual key {key.id!r}: its value is what clients hold; keep it")
            keys = tuple(key if k.id == key.id else k for k in governor.config.keys)
            governor.config = dataclasses.replace(governor.config, keys=keys)

    # ---- store API --------------------

    def _state(self, provider: str) -> ProviderState:
        try:
            return self._world.providers[provider]
        except KeyError:
            raise ValueError(f"provider {provider!r} is not configured in this simulator") from None

    def add_batch(
        self,
        provider: str,
        *,
        status: str = "in_progress",
        created_at: int | None = None,
        expires_at: int | None = None,
        request_counts: dict[str, int] | None = None,
        batch_id: str | None = None,
        api_key: int | None = None,
        error_code: str | None = None,
        owner: str | _Unset | None = _UNSET,
        external: bool = False,
        models: tuple[str, ...] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Exact scenarios for tests: the status is stored as spelled, timestamps follow it, `fields` win.
        `error_code` is the errors.data[].code a failed or expired OpenAI-shaped batch carries. With governance,
        `owner` is the virtual key id recorded as the batch's creator (None: created with no key; left out: drawn
        like the simulator's own batches) and `external` a batch created outside the gateway (no job row: nobody
        owns it and the accounting sweeper never settles it). With accounting, `models` are the models its
        requests ran on (two or more: a `mixed` settlement)."""
        with self._world.lock:
            state = self._world.provider(provider)
            self._check_owner(owner, external)
            batch = self._build_manual(
                state, status, created_at, expires_at, request_counts, batch_id, error_code, dict(fields)
            )
            key = state.next_key() if api_key is None else api_key
            if not 0 <= key < max(1, state.spec.keys):
                raise ValueError(f"api_key {key} out of range for {provider} ({state.spec.keys} keys)")
            seq = next(self._world.seq)
            if models is not None and self._world.ledger is not None:
                self._world.ledger.set_models(provider, str(batch["id"]), models)
            state.insert(batch, key, seq, None, seq)
            bid = str(batch["id"])
            if external:
                state.owners.pop(bid, None)
                state.external.add(bid)
                if self._world.ledger is not None:
                    self._world.ledger.drop_job(provider, bid)
            elif not isinstance(owner, _Unset):
                state.owners[bid] = owner
            return copy_json(batch)

    def _check_owner(self, owner: str | _Unset | None, external: bool) -> None:
        gov = self._world.settings.governance
        if isinstance(owner, str):
            if gov is None:
                raise ValueError("owner needs a simulator with governance")
            gov.key(owner)  # KeyError for an id the gateway does not know
        if external and isinstance(owner, str):
            raise ValueError("a batch created outside the gateway has no owner")

    def set_owner(self, provider: str, batch_id: str, owner: str | None) -> None:
        """Record another creator on the batch's job row (None: no key), e.g. to move a batch between tenants."""
        with self._world.lock:
            self._check_owner(owner, False)
            state = self._world.provider(provider)
            if batch_id not in state.batches:
                raise KeyError(batch_id)
            state.external.discard(batch_id)
            state.owners[batch_id] = owner

    def owner(self, provider: str, batch_id: str) -> str | None:
        """The virtual key id on the batch's job row (None: no key, or no row)."""
        with self._world.lock:
            return self._world.provider(provider).owners.get(batch_id)

    def visible_batches(self, provider: str, key_id: str | None) -> list[str]:
        """Ground truth for governance: the ids a request with this key (None: no key) can list, newest first."""
        with self._world.lock:
            state = self._world.provider(provider)
            gov = self._world.settings.governance
            vk: VirtualKey | None = None if key_id is None or gov is None else gov.key(key_id)
            ordered = sorted(state.meta.items(), key=lambda item: item[1].sort_key)
            return [
                bid
                for bid, _ in ordered
                if vk is None or self._world.governor is None or self._world.governor.visible(vk, state, bid)
            ]

    # ---- accounting --------------------

    @staticmethod
    def settlement_id(provider: str, batch_id: str) -> str:
        """The settlement row's id (UUIDv5 of "<provider>:<batch_id>"), as the exporter computes it."""
        return accounting_log_id(provider, batch_id)

    def accounting_truth(self) -> AccountingTruth:
        """Every settlement row as it reads now (after the sweeps due by the clock), the echo rows' ids, and the
        finished batches that have no settlement."""
        with self._world.lock:
            ledger = self._require_ledger()
            self._world.advance_all()
            return ledger.truth()

    def log_row(self, log_id: str) -> dict[str, Any] | None:
        """One row as `GET /api/logs/{id}` renders it (None: no such row yet)."""
        with self._world.lock:
            ledger = self._require_ledger()
            self._world.advance_all()
            row = ledger.rows.get(log_id)
            return None if row is None else row.render(ledger.config.null_cost)

    def job(self, provider: str, batch_id: str) -> dict[str, Any] | None:
        """The batch's accounting job row (status, poll attempts, next check), None when it has none."""
        with self._world.lock:
            ledger = self._require_ledger()
            self._world.advance_all()
            return ledger.job_state(provider, batch_id)

    def set_price(self, model: str, input_per_token: float, output_per_token: float) -> None:
        """The model catalog learns (or changes) a batch rate. Rows are not touched until `recalculate`."""
        with self._world.lock:
            self._require_ledger().prices[model] = (input_per_token, output_per_token)

    def recalculate(self, *, models: Iterable[str] | None = None, missing_only: bool = True) -> int:
        """The logs' cost recalculation (`POST /api/logs/recalculate-cost`): fill in costs that are missing, or with
        `missing_only` False re-price every row of `models`; returns how many rows changed."""
        with self._world.lock:
            ledger = self._require_ledger()
            self._world.advance_all()
            return ledger.recalculate(
                models=None if models is None else set(models), missing_only=missing_only
            )

    def _require_ledger(self) -> Ledger:
        ledger = self._world.ledger
        if ledger is None:
            raise ValueError("this simulator has no accounting (Simulator(accounting=Accounting()))")
        return ledger

    def load_batches(self, provider: str, batches: Iterable[dict[str, Any]]) -> int:
        """Bulk insert of ready-made batch dicts (e.g. from generate_batches) for big benchmark stores."""
        copies = copy_json(list(batches))
        if any("id" not in batch for batch in copies):
            raise ValueError("every batch needs an id")
        with self._world.lock:
            state = self._world.provider(provider)
            for batch in copies:
                seq = next(self._world.seq)
                state.insert(batch, state.next_key(), seq, None, seq)
        return len(copies)

    def _build_manual(
        self,
        state: ProviderState,
        status: str,
        created_at: int | None,
        expires_at: int | None,
        request_counts: dict[str, int] | None,
        batch_id: str | None,
        error_code: str | None,
        fields: dict[str, Any],
    ) -> dict[str, Any]:
        spec = state.spec
        now = int(self._clock())
        created = now if created_at is None else int(created_at)
        bid = batch_id if batch_id is not None else fields.get("id")
        if bid is None:
            bid = new_id(state.manual_rng, spec.flavor)
            while bid in state.batches:
                bid = new_id(state.manual_rng, spec.flavor)
        batch = skeleton(
            state.manual_rng,
            batch_id=str(bid),
            provider=spec.name,
            flavor=spec.flavor,
            style=spec.style,
            created=created,
            total=100,
            status=status,
            latency_ms=self._world.settings.latency_ms,
            cache_debug=False,
        )
        batch["status"] = status
        if expires_at is not None:
            batch["expires_at"] = int(expires_at)
        if status not in ("validating", "JOB_STATE_QUEUED") and spec.flavor != "anthropic":
            batch["in_progress_at"] = created
        ts_field = TIMESTAMP_FIELD.get(status)
        if ts_field is not None and ts_field != "in_progress_at":
            batch[ts_field] = now
        if status in ("cancelled", "canceled"):
            batch["cancelling_at"] = now
        canonical = "cancelled" if status == "canceled" else status
        apply_flavor_state(batch, spec.flavor, canonical, error_code)
        if request_counts is not None:
            batch["request_counts"] = dict(request_counts)
        else:
            batch["request_counts"] = default_counts(spec.flavor, status)
        batch.update(copy_json(fields))
        batch["id"] = str(bid)
        return batch

    @contextlib.contextmanager
    def atomically(self) -> Iterator[None]:
        """Changes made inside reach the gateway's clients at once: a request sees all of them or none (a real
        gateway's batches change one by one, so a test that means a burst, not a race with the poll, says so)."""
        with self._world.lock:
            yield

    def set_status(
        self,
        provider: str,
        batch_id: str,
        status: str,
        at: int | None = None,
        *,
        error_code: str | None = None,
    ) -> None:
        """Takes the batch out of its lifecycle plan: a test that sets a status means it to stay."""
        with self._world.lock:
            state = self._world.provider(provider)
            batch = state.batches.get(batch_id)
            if batch is None:
                raise KeyError(batch_id)
            when = int(self._clock()) if at is None else int(at)
            meta = state.meta[batch_id]
            meta.gen += 1
            meta.plan = None
            batch["status"] = status
            ts_field = TIMESTAMP_FIELD.get(status)
            if ts_field is not None and not (state.spec.flavor == "anthropic" and status == "in_progress"):
                batch[ts_field] = when
            canonical = "cancelled" if status == "canceled" else status
            apply_flavor_state(batch, state.spec.flavor, canonical, error_code)

    def batches(self, provider: str, *, view: View = "stored") -> list[dict[str, Any]]:
        """Newest first across all keys (a paging walk visits keys one at a time, so its order may differ).
        `view`: "stored" is the full record the simulator keeps; "list" and "retrieve" are what the gateway
        sends (Bedrock and Gemini list only summaries)."""
        with self._world.lock:
            state = self._world.provider(provider)
            ordered = sorted(state.meta.items(), key=lambda item: item[1].sort_key)
            return [copy_json(_view(state, state.batches[bid], view)) for bid, _ in ordered]

    def batch(self, provider: str, batch_id: str, *, view: View = "stored") -> dict[str, Any]:
        """One batch as the gateway holds it now (KeyError when absent)."""
        with self._world.lock:
            state = self._world.provider(provider)
            return copy_json(_view(state, state.batches[batch_id], view))

    def delete(self, provider: str, batch_id: str) -> None:
        """The batch disappears from lists (a provider's retention, or a user deleting it); a cursor that
        pointed at it keeps working, as the real upstreams page by creation time rather than by id."""
        with self._world.lock:
            state = self._world.provider(provider)
            if batch_id not in state.batches:
                raise KeyError(batch_id)
            state.remove(batch_id)

    def clear(self, provider: str | None = None) -> None:
        with self._world.lock:
            targets = self._world.providers.values() if provider is None else [self._world.provider(provider)]
            for state in targets:
                state.clear()

    def populate(self, n: int | None = None, *, provider: str | None = None) -> None:
        """The start-up mix again (e.g. for a static `--no-lifecycle` demo); moves if the lifecycle is on."""
        now = self._clock()
        with self._world.lock:
            targets = self._world.providers.values() if provider is None else [self._world.provider(provider)]
            for state in targets:
                if state.spec.supported:
                    self._world.lifecycle.seed(state, self._initial_batches if n is None else n, now)
                    self._world.lifecycle.advance(state, now)

    def play(self, script: Script, start: float | None = None) -> float:
        """Install a scripted scenario whose offsets count from `start` (default: now); its steps then happen
        as the clock reaches them. Needs the lifecycle on. Returns the start used."""
        if not self._world.lifecycle.enabled:
            raise ValueError("play() needs a simulator with lifecycle=True")
        at = self._clock() if start is None else start
        with self._world.lock:
            for b in script.batches:
                state = self._world.provider(b.provider)
                steps = [step._replace(t=step.t - b.created) for step in b.steps]
                self._world.lifecycle.create(
                    state, at + b.created, b.total, b.initial, steps, batch_id=b.batch_id, key=b.key
                )
            for state in self._world.providers.values():
                self._world.lifecycle.advance(state, self._clock())
        return at

    # ---- faults --------------------

    def set_fault(
        self, fault: str | None, *, provider: str | None = None, times: int | None = None, **params: Any
    ) -> None:
        """A provider's own fault wins over the global one; `set_fault(None)` clears every fault."""
        with self._world.lock:
            self._world.faults.arm(fault, provider=provider, times=times, params=params)

    def fault(self, provider: str | None = None) -> str | None:
        with self._world.lock:
            return self._world.faults.armed(provider)

    # ---- lifecycle --------------------

    def tick(self) -> None:
        """Everything due by the clock: lifecycles, and with accounting the sweeps and price events."""
        with self._world.lock:
            self._world.advance_all()

    def list_requests(self, provider: str | None = None) -> int:
        return self.requests(provider, "list")

    def requests(self, provider: str | None = None, endpoint: Endpoint = "list") -> int:
        """Requests the gateway received on one endpoint ("list", "retrieve", "cancel", "results"), for one
        provider or all: every one of them is a call to the provider's API on the customer's rate limit."""
        with self._world.lock:
            if provider is None:
                if endpoint == "list":
                    return self._world.list_requests_total
                return sum(state.requests[endpoint] for state in self._world.providers.values())
            state = self._world.providers.get(provider)
            return 0 if state is None else state.requests[endpoint]

    def request_log(self) -> list[dict[str, Any]]:
        with self._world.lock:
            return [copy_json(entry) for entry in self._world.log]

    def state(self) -> dict[str, Any]:
        with self._world.lock:
            providers: dict[str, Any] = {}
            for name, st in self._world.providers.items():
                statuses: dict[str, int] = {}
                for batch in st.batches.values():
                    status = str(batch.get("status"))
                    statuses[status] = statuses.get(status, 0) + 1
                providers[name] = {
                    "supported": st.spec.supported,
                    "style": st.spec.style,
                    "flavor": st.spec.flavor,
                    "batches": len(st.batches),
                    "statuses": dict(sorted(statuses.items())),
                    "list_requests": st.list_requests,
                    "requests": dict(st.requests),
                }
            out: dict[str, Any] = {
                "providers": providers,
                "list_requests": self._world.list_requests_total,
                "retrieve_requests": sum(st.requests["retrieve"] for st in self._world.providers.values()),
            }
            gov = self._world.settings.governance
            if gov is not None:
                for name, st in self._world.providers.items():
                    owners: dict[str, int] = {}
                    for bid in st.batches:
                        label = "external" if bid in st.external else (st.owners.get(bid) or "none")
                        owners[label] = owners.get(label, 0) + 1
                    providers[name]["owners"] = dict(sorted(owners.items()))
                out["governance"] = {
                    "mandatory": gov.mandatory,
                    "config_store": gov.config_store,
                    "keys": [{"id": k.id, "name": k.name, "active": k.active} for k in gov.keys],
                }
            ledger = self._world.ledger
            if ledger is not None:
                rows = list(ledger.rows.values())
                out["accounting"] = {
                    "settlements": sum(not r.echo for r in rows),
                    "unpriced": sum(not r.echo and r.cost is None for r in rows),
                    "echo_rows": sum(r.echo for r in rows),
                }
            return out


def _view(state: ProviderState, batch: dict[str, Any], view: View) -> dict[str, Any]:
    if view == "list":
        return list_item(batch, state.spec)
    if view == "retrieve":
        return retrieve_object(batch, state.spec, 0)
    return batch

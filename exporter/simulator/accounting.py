"""Bifrost's batch accounting (`framework/jobaccounting`): every finished batch settled into one log row, as the
gateway does it, so that an exporter reading costs can be proved exact against a known ground truth.

Read in maximhq/bifrost (each fact's file and commit):
- `engine.go` @a8b191cd: the row id is UUIDv5 of "<provider>:<batch_id>" in namespace 90a2f576-5276-481f-a753-2c78ccf97607
  (`AccountingLogID`); the row is `object` batch_results, `status` success, `timestamp` = settlement time, cost NULL
  when any usage could not be priced (the job is then parked "unpriceable" and only a cost backfill fills it in);
  attribution from the job row (virtual key, team, customer) when it has any, else from the request that settled it.
- `batch.go` @a8b191cd: completed/ended batches settle; expired and cancelled ones settle the requests that finished;
  failed ones only when the provider kept an output file; a batch spanning several models is labelled `mixed`; a
  wholly unpriced batch is written (cost NULL) only when it carried tokens; usage is extracted for openai, azure,
  bedrock, gemini, vertex and anthropic only (other providers never get a row); the sweeper's backoff is 1 min, then
  2 min from the 5th poll, 5 min from the 10th, 15 min from the 30th.
- `sweeper.go` @1be5e91b: a sweep every minute, at most 50 due jobs per sweep (oldest due first), give up after 120
  polls; jitter = fnv32a("<job id>:<attempts>") mod (min(1 min, delay/5) in seconds + 1) seconds.
- `configstore` tables: the job id is "batch-job:<provider>:<batch_id>"; only due jobs that are neither accounted nor
  unpriceable are swept.
- `plugins/logging`: a `/v1/batches/{id}/results` call settles the batch inline (labelled status "completed" whatever
  the provider said) and leaves a `batch_results` row of its own, with its request id, no cost, and
  `batch_debug.accounting.echo` true.
- `core/schemas/batch.go`: `batch_debug` {batch_id, status, endpoint, request_counts, accounting {model_breakdowns,
  cost, parse_error_count, incomplete}}; a re-pricing never clears `incomplete`.
- `framework/logstore/tables.go` @5ccfa23d: the row's JSON tags; `cost` is `omitempty`, so an unknown cost is absent
  from the row, not null (`null_cost="null"` renders it as null for clients that must cope with both).

Deterministic: the sweeps run on a one-minute grid of the injected clock, every batch's models and token counts are
drawn from its id, and echo row ids from the simulator's seed.
"""

from __future__ import annotations

import heapq
import math
import random
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from .flavors import TIMESTAMP_FIELD, ProviderSpec, retrieve_object
from .governance import Governance, VirtualKey
from .store import ProviderState

__all__ = [
    "ACCOUNTING_NAMESPACE",
    "DEFAULT_PRICES",
    "SUPPORTED_PROVIDERS",
    "Accounting",
    "AccountingTruth",
    "Ledger",
    "LogRow",
    "Settlement",
    "accounting_log_id",
    "batch_models",
    "batch_results",
    "go_time",
    "provider_job_id",
    "results_available",
    "results_body",
]

ACCOUNTING_NAMESPACE = uuid.UUID("90a2f576-5276-481f-a753-2c78ccf97607")
# jobaccounting/batch.go usageExtractors: keyed by provider identifier, so a custom provider name gets no usage.
SUPPORTED_PROVIDERS = frozenset({"openai", "azure", "bedrock", "gemini", "vertex", "anthropic"})
# schemas.BatchStatus values isTerminalStatus accepts; Azure's documented "canceled" is not among them.
BIFROST_TERMINAL = frozenset({"completed", "failed", "expired", "cancelled", "ended", "deleted"})
MAX_POLL_ATTEMPTS = 120
SWEEP_LIMIT = 50

# Batch rates in US dollars per token (input, output): half the list price, as the providers bill batches.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini-2024-07-18": (0.075e-6, 0.3e-6),
    "gpt-4o-2024-08-06": (1.25e-6, 5.0e-6),
    "claude-3-5-haiku-20241022": (0.4e-6, 2.0e-6),
    "claude-3-5-sonnet-20241022": (1.5e-6, 7.5e-6),
    "anthropic.claude-3-haiku-20240307-v1:0": (0.125e-6, 0.625e-6),
    "anthropic.claude-3-5-sonnet-20240620-v1:0": (1.5e-6, 7.5e-6),
    "gemini-1.5-flash-002": (0.0375e-6, 0.15e-6),
    "gemini-1.5-pro-002": (0.625e-6, 2.5e-6),
}
# The models a flavour's batches run on: the first is the usual one, the second joins it in mixed batches.
DEFAULT_MODELS: dict[str, tuple[str, ...]] = {
    "openai": ("gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06"),
    "azure": ("gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18"),
    "anthropic": ("claude-3-5-haiku-20241022", "claude-3-5-sonnet-20241022"),
    "bedrock": ("anthropic.claude-3-haiku-20240307-v1:0", "anthropic.claude-3-5-sonnet-20240620-v1:0"),
    "gemini": ("gemini-1.5-flash-002", "gemini-1.5-pro-002"),
    "vertex": ("gemini-1.5-pro-002", "gemini-1.5-flash-002"),
    "gigachat": ("GigaChat-2-Max",),
    "openrouter": ("openai/gpt-4o-mini",),
}

NullCost = Literal["omitted", "null"]
IncompleteCost = Literal["null", "number"]
Rates = tuple[float, float]


def accounting_log_id(provider: str, batch_id: str) -> str:
    """AccountingLogID: the settlement row's id, which anyone can compute from the provider and the batch id."""
    return str(uuid.uuid5(ACCOUNTING_NAMESPACE, f"{provider}:{batch_id}"))


def provider_job_id(provider: str, batch_id: str) -> str:
    return f"batch-job:{provider}:{batch_id}"


def go_time(t: float) -> str:
    """A UTC time.Time as Go's encoding/json writes it (RFC3339Nano: trailing zeros of the fraction dropped)."""
    dt = datetime.fromtimestamp(t, tz=UTC)
    frac = f"{dt.microsecond:06d}".rstrip("0")
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"


def _fnv32a(data: bytes) -> int:
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def backoff(attempts: int, interval: float) -> float:
    """BatchSettler.Backoff: a batch already polled for half an hour is not worth checking every minute."""
    if attempts >= 30:
        return max(interval, 900.0)
    if attempts >= 10:
        return max(interval, 300.0)
    if attempts >= 5:
        return max(interval, 120.0)
    return interval


def jitter(job_id: str, attempts: int, delay: float) -> float:
    """deterministicJitter (sweeper.go): whole seconds, at most a fifth of the delay and at most a minute."""
    cap = min(60.0, delay / 5)
    if cap <= 0:
        return 0.0
    return float(_fnv32a(f"{job_id}:{attempts}".encode()) % (int(cap) + 1))


@dataclass(frozen=True)
class Accounting:
    """What the gateway's accounting is configured with.

    `prices`: the model catalog's batch rates per model (US dollars per token, input and output); a model missing
    from it cannot be priced. `late_prices`: model → (seconds after the simulator started, rates): the rate appears
    then and the missing-cost backfill runs for rows of that model (a NULL cost filled in later). `reprices`: (seconds
    after start, model, rates): the rate changes then and every row using the model is re-priced (a `mixed` row
    included). `models`: per provider name, the models its batches run on (default: by flavour). `mixed_share`: the
    share of batches that span two models. `null_cost` and `incomplete_cost` choose between the row shapes
    different gateway versions write (see the module docstring)."""

    prices: Mapping[str, Rates] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    late_prices: Mapping[str, tuple[float, Rates]] = field(default_factory=dict)
    reprices: tuple[tuple[float, str, Rates], ...] = ()
    models: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    mixed_share: float = 0.15
    sweep_interval: float = 60.0
    null_cost: NullCost = "omitted"
    incomplete_cost: IncompleteCost = "null"

    def __post_init__(self) -> None:
        if self.sweep_interval <= 0:
            raise ValueError("sweep_interval must be > 0")
        if not 0 <= self.mixed_share <= 1:
            raise ValueError("mixed_share must be between 0 and 1")
        overlap = set(self.prices) & set(self.late_prices)
        if overlap:
            raise ValueError(f"models both priced and late-priced: {sorted(overlap)}")


@dataclass
class _Job:
    provider: str
    batch_id: str
    next_check: float | None
    attempts: int = 0
    status: str = "pending"  # pending, accounted, unpriceable
    written: bool = False
    version: int = 0

    @property
    def job_id(self) -> str:
        return provider_job_id(self.provider, self.batch_id)


@dataclass
class _ModelUse:
    model: str
    requests: int
    prompt: int
    completion: int


@dataclass
class LogRow:
    """One row of the logs store; `cost` None is an unknown cost. Rendered with the Go struct's JSON tags."""

    id: str
    timestamp: float
    provider: str
    model: str
    cost: float | None
    parent_request_id: str | None = None
    status: str = "success"
    selected_key_id: str = ""
    selected_key_name: str = ""
    virtual_key_id: str | None = None
    virtual_key_name: str | None = None
    team_id: str | None = None
    customer_id: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency: float | None = None
    batch_debug: dict[str, Any] | None = None
    echo: bool = False
    batch_id: str = ""
    breakdown: list[_ModelUse] = field(default_factory=list)

    def render(self, null_cost: NullCost) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": self.id,
            "parent_request_id": self.parent_request_id,
            "timestamp": go_time(self.timestamp),
            "object": "batch_results",
            "provider": self.provider,
            "model": self.model,
            "number_of_retries": 0,
            "fallback_index": 0,
            "selected_key_id": self.selected_key_id,
            "selected_key_name": self.selected_key_name,
            "virtual_key_id": self.virtual_key_id,
            "virtual_key_name": self.virtual_key_name,
            "routing_rule_id": None,
            "routing_rule_name": None,
        }
        if self.latency is not None:
            row["latency"] = self.latency
        if self.cost is not None:
            row["cost"] = self.cost
        elif null_cost == "null":
            row["cost"] = None
        row["status"] = self.status
        row["stream"] = False
        row["raw_request"] = ""
        row["raw_response"] = ""
        row["created_at"] = go_time(self.timestamp)
        if self.prompt_tokens is not None and self.completion_tokens is not None:
            row["token_usage"] = {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
            }
        row["user_id"] = None
        row["team_id"] = self.team_id
        row["customer_id"] = self.customer_id
        row["user_agent"] = "bifrost"
        if self.batch_debug is not None:
            row["batch_debug"] = self.batch_debug
        return row

    @property
    def total_tokens(self) -> int:
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)


@dataclass(frozen=True)
class Settlement:
    """Ground truth for one settled batch, as its row reads now."""

    provider: str
    batch_id: str
    log_id: str
    timestamp: float
    model: str
    cost: float | None
    prompt_tokens: int
    completion_tokens: int
    status: str
    incomplete: bool
    virtual_key_id: str | None


@dataclass(frozen=True)
class AccountingTruth:
    """What an exporter reading every settlement row must end up with: settlements by batch, the echo rows' ids
    (never settlements), and the finished batches that have no settlement row."""

    settlements: tuple[Settlement, ...]
    echo_ids: tuple[str, ...]
    unsettled_finished: tuple[tuple[str, str], ...]

    def cost(self, provider: str | None = None, model: str | None = None) -> float:
        """Dollars of the rows that carry a cost, by the row's own model label (`mixed` included)."""
        return sum(
            s.cost
            for s in self.settlements
            if s.cost is not None
            and (provider is None or s.provider == provider)
            and (model is None or s.model == model)
        )

    def tokens(
        self,
        provider: str | None = None,
        model: str | None = None,
        kind: Literal["prompt", "completion"] = "prompt",
    ) -> int:
        return sum(
            s.prompt_tokens if kind == "prompt" else s.completion_tokens
            for s in self.settlements
            if (provider is None or s.provider == provider) and (model is None or s.model == model)
        )

    def priced(self, provider: str | None = None) -> list[Settlement]:
        return [s for s in self.settlements if s.cost is not None and provider in (None, s.provider)]

    def unpriced(self, provider: str | None = None) -> list[Settlement]:
        return [s for s in self.settlements if s.cost is None and provider in (None, s.provider)]

    def settlement(self, provider: str, batch_id: str) -> Settlement | None:
        for s in self.settlements:
            if s.provider == provider and s.batch_id == batch_id:
                return s
        return None

    def as_json(self) -> dict[str, Any]:
        return {
            "settlements": [s.__dict__ for s in self.settlements],
            "echo_ids": list(self.echo_ids),
            "unsettled_finished": [list(pair) for pair in self.unsettled_finished],
        }


@dataclass
class _Results:
    """What the provider's results hold for a batch: per-model usage of the succeeded requests, the other rows."""

    uses: list[_ModelUse]
    failed_rows: int

    @property
    def rows(self) -> int:
        return sum(u.requests for u in self.uses) + self.failed_rows


class Ledger:
    """The config store's job rows, the sweeper and the logs store's batch_results rows. Not thread-safe: every
    call happens under the world lock."""

    def __init__(
        self,
        config: Accounting,
        *,
        seed: int,
        start: float,
        providers: Mapping[str, ProviderState],
        governance: Governance | None,
    ) -> None:
        self.config = config
        self.prices: dict[str, Rates] = dict(config.prices)
        self._providers = providers
        self._governance = governance
        self._interval = config.sweep_interval
        self._phase = start % self._interval
        self._last_tick: float | None = None
        self._jobs: dict[tuple[str, str], _Job] = {}
        self._due: list[tuple[float, str, int, str, str]] = []
        self.rows: dict[str, LogRow] = {}
        self._settlements: dict[tuple[str, str], str] = {}
        self._echo_ids: list[str] = []
        self._batch_models: dict[tuple[str, str], tuple[str, ...]] = {}
        self._echo_rng = random.Random(f"{seed}:accounting:echo")
        self._events: list[tuple[float, int, str, str, Rates]] = []
        for n, (model, (delay, rates)) in enumerate(sorted(config.late_prices.items())):
            heapq.heappush(self._events, (start + delay, n, "late", model, rates))
        for n, (delay, model, rates) in enumerate(config.reprices, start=len(self._events)):
            heapq.heappush(self._events, (start + delay, n, "reprice", model, rates))

    # ---- jobs --------------------

    def on_insert(self, state: ProviderState, batch_id: str, new: bool) -> None:
        """recordBatchJobLifecycle on a create: a job row, first checked a minute after the batch was created."""
        if not new:
            return
        batch = state.batches[batch_id]
        created = batch.get("created_at")
        at = float(created) if isinstance(created, int | float) else 0.0
        job = _Job(state.spec.name, batch_id, next_check=at + 60.0)
        self._jobs[(state.spec.name, batch_id)] = job
        if (
            state.spec.name in SUPPORTED_PROVIDERS
        ):  # the sweeper never polls the others: keep them out of the heap
            self._push(job)

    def set_models(self, provider: str, batch_id: str, models: Iterable[str]) -> None:
        chosen = tuple(models)
        if not chosen:
            raise ValueError("models must name at least one model")
        self._batch_models[(provider, batch_id)] = chosen

    def _push(self, job: _Job) -> None:
        if (
            job.next_check is None
            or job.status != "pending"
            or (job.provider, job.batch_id) not in self._jobs
        ):
            return
        job.version += 1
        heapq.heappush(self._due, (job.next_check, job.job_id, job.version, job.provider, job.batch_id))

    # ---- time --------------------

    def _tick_at_or_after(self, t: float) -> float:
        return self._phase + math.ceil((t - self._phase) / self._interval) * self._interval

    def _next_tick(self) -> float:
        if not self._due:
            return math.inf
        earliest = self._tick_at_or_after(self._due[0][0])
        if self._last_tick is None:
            return earliest
        return max(self._last_tick + self._interval, earliest)

    def advance(self, now: float) -> None:
        """Every sweep and price event up to `now`, in time order. The lifecycles must already be at `now`: a job
        is judged by its batch's terminal timestamp, so a sweep in the past sees the batch as it was then."""
        while True:
            tick = self._next_tick()
            event_at = self._events[0][0] if self._events else math.inf
            if min(tick, event_at) > now:
                return
            if event_at <= tick:
                _, _, kind, model, rates = heapq.heappop(self._events)
                self.prices[model] = rates
                self.recalculate(models={model}, missing_only=kind == "late")
                continue
            self._sweep(tick)
            self._last_tick = tick

    def _sweep(self, t: float) -> None:
        taken: list[_Job] = []
        while self._due and len(taken) < SWEEP_LIMIT and self._due[0][0] <= t:
            _, _, version, provider, batch_id = heapq.heappop(self._due)
            job = self._jobs.get((provider, batch_id))
            if job is None or job.version != version or job.status != "pending":
                continue
            taken.append(job)
        for job in taken:
            self._poll(job, t)

    def _poll(self, job: _Job, t: float) -> None:
        state = self._providers.get(job.provider)
        batch = state.batches.get(job.batch_id) if state is not None else None
        if state is None or batch is None:
            self._reschedule(job, t)  # the provider no longer has it: the retrieve fails
            return
        status = str(batch.get("status"))
        if status not in BIFROST_TERMINAL or _terminal_time(batch) > t:
            self._reschedule(job, t)
            return
        view = retrieve_object(batch, state.spec, 0)
        if status in ("completed", "ended"):
            self._settle(job, state, batch, t, status=status, view=view)
            return
        if status in ("expired", "cancelled") or (
            status == "failed" and (view.get("output_file_id") or view.get("results_url"))
        ):
            results = self._results(state, batch)
            if results.rows > 0:
                self._settle(job, state, batch, t, status=status, view=view, results=results)
                return
        job.status = "unpriceable"  # terminal_without_results

    def _reschedule(self, job: _Job, t: float) -> None:
        job.attempts += 1
        if job.attempts >= MAX_POLL_ATTEMPTS:
            job.status = "unpriceable"  # max_poll_attempts
            return
        delay = max(backoff(job.attempts, self._interval), self._interval)
        job.next_check = t + delay + jitter(job.job_id, job.attempts, delay)
        self._push(job)

    # ---- settlement --------------------

    def _models_of(self, state: ProviderState, batch_id: str) -> tuple[str, ...]:
        chosen = self._batch_models.get((state.spec.name, batch_id))
        if chosen is not None:
            return chosen
        return batch_models(state.spec, batch_id, self.config.models, self.config.mixed_share)

    def _results(self, state: ProviderState, batch: dict[str, Any]) -> _Results:
        return batch_results(batch, self._models_of(state, str(batch["id"])), state.spec.name)

    def drop_job(self, provider: str, batch_id: str) -> None:
        """The batch has no job row (created outside the gateway): the sweeper never sees it."""
        self._jobs.pop((provider, batch_id), None)

    def _owner(self, state: ProviderState, batch_id: str) -> VirtualKey | None:
        owner = state.owners.get(batch_id)
        if owner is None or self._governance is None:
            return None
        try:
            return self._governance.key(owner)
        except KeyError:
            return None

    def _settle(
        self,
        job: _Job,
        state: ProviderState,
        batch: dict[str, Any],
        t: float,
        *,
        status: str,
        view: dict[str, Any] | None,
        results: _Results | None = None,
        settler_vk: VirtualKey | None = None,
        parent_request_id: str | None = None,
    ) -> None:
        """AccountJob + BatchSettler.Settle: write the row unless one was written, then park or complete the job."""
        if results is None:
            results = self._results(state, batch)
        provider = state.spec.name
        uses = results.uses if provider in SUPPORTED_PROVIDERS else []
        tokens = sum(u.prompt + u.completion for u in uses)
        priced = [u for u in uses if u.model in self.prices]
        complete = bool(uses) and len(priced) == len(uses)
        if not priced and tokens == 0:
            job.status = "unpriceable"  # no_results / no_usage: nothing worth a row
            return
        if not job.written:
            cost: float | None = None
            if complete or (priced and self.config.incomplete_cost == "number"):
                cost = sum(self._cost_of(u) or 0.0 for u in priced)
            model = uses[0].model if len(uses) == 1 else "mixed"
            counts = (view or {}).get("request_counts") or {}
            if not any(counts.get(k) for k in ("total", "completed", "failed")):
                counts = {
                    "total": results.rows,
                    "completed": sum(u.requests for u in results.uses),
                    "failed": results.failed_rows,
                }
            row = LogRow(
                id=accounting_log_id(provider, job.batch_id),
                timestamp=t,
                provider=provider,
                model=model,
                cost=cost,
                parent_request_id=parent_request_id,
                prompt_tokens=sum(u.prompt for u in uses),
                completion_tokens=sum(u.completion for u in uses),
                batch_id=job.batch_id,
                breakdown=list(uses),
            )
            self._attribute(row, state, job.batch_id, settler_vk)
            row.batch_debug = {"batch_id": job.batch_id, "status": status}
            if batch.get("endpoint"):
                row.batch_debug["endpoint"] = batch["endpoint"]
            row.batch_debug["request_counts"] = dict(counts)
            accounting: dict[str, Any] = {"model_breakdowns": self._breakdowns(uses)}
            if not complete:
                accounting["incomplete"] = True
            row.batch_debug["accounting"] = accounting
            self.rows[row.id] = row
            self._settlements[(provider, job.batch_id)] = row.id
            job.written = True
        job.status = "accounted" if complete else "unpriceable"

    def _attribute(
        self, row: LogRow, state: ProviderState, batch_id: str, settler: VirtualKey | None
    ) -> None:
        """Job attribution (the creating key) when the job row has any; a batch first seen at settlement is
        attributed to the request that settled it."""
        meta = state.meta.get(batch_id)
        tracked = batch_id not in state.external
        if tracked and meta is not None:
            row.selected_key_id = row.selected_key_name = f"{state.spec.name}-key-{meta.key}"
            vk = self._owner(state, batch_id)
        else:
            vk = settler
        if vk is not None:
            row.virtual_key_id, row.virtual_key_name = vk.id, vk.name or vk.id
            row.team_id, row.customer_id = vk.team_id, vk.customer_id

    def _cost_of(self, use: _ModelUse) -> float | None:
        rates = self.prices.get(use.model)
        if rates is None:
            return None
        return use.prompt * rates[0] + use.completion * rates[1]

    def _breakdowns(self, uses: list[_ModelUse]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for use in uses:
            entry: dict[str, Any] = {
                "model": use.model,
                "request_count": use.requests,
                "usage": {
                    "prompt_tokens": use.prompt,
                    "completion_tokens": use.completion,
                    "total_tokens": use.prompt + use.completion,
                },
            }
            cost = self._cost_of(use)
            if cost is not None:
                entry["cost"] = cost
            out[use.model] = entry
        return out

    def recalculate(self, *, models: set[str] | None = None, missing_only: bool = True) -> int:
        """The logs' cost recalculation: rows with no cost (or, with `missing_only` False, every row) using one of
        `models` are priced again from their per-model usage; a row gets a cost only when every model prices.
        `incomplete` stays as it was. Echo rows are left alone. Returns how many rows changed."""
        changed = 0
        for row in self.rows.values():
            if row.echo or not row.breakdown:
                continue
            if missing_only and row.cost is not None:
                continue
            if models is not None and not any(u.model in models for u in row.breakdown):
                continue
            costs = [self._cost_of(u) for u in row.breakdown]
            if row.batch_debug is not None:
                row.batch_debug["accounting"]["model_breakdowns"] = self._breakdowns(row.breakdown)
            if all(c is not None for c in costs):
                new = sum(c for c in costs if c is not None)
                if new != row.cost:
                    row.cost = new
                    changed += 1
        return changed

    # ---- the /results endpoint --------------------

    def results_call(
        self,
        state: ProviderState,
        batch: dict[str, Any],
        t: float,
        *,
        vk: VirtualKey | None,
        latency: float,
    ) -> tuple[dict[str, Any], str]:
        """A successful `/v1/batches/{id}/results`: settle inline (AccountBatchResults) and leave the echo row.
        Returns the response body and the echo row's id."""
        provider = state.spec.name
        bid = str(batch["id"])
        results = self._results(state, batch)
        echo_id = str(uuid.UUID(int=self._echo_rng.getrandbits(128), version=4))
        key = (provider, bid)
        job = self._jobs.get(key)
        if job is None:
            job = _Job(provider, bid, next_check=None)
            self._jobs[key] = job
        claimable = job.status == "pending" or (job.status == "unpriceable" and results.rows > 0)
        if claimable:
            self._settle(
                job,
                state,
                batch,
                t,
                status="completed",
                view=None,
                results=results,
                settler_vk=vk,
                parent_request_id=echo_id,
            )
        echo = LogRow(
            id=echo_id,
            timestamp=t,
            provider=provider,
            model="",
            cost=None,
            latency=latency,
            batch_id=bid,
            echo=True,
        )
        if vk is not None:
            echo.virtual_key_id, echo.virtual_key_name = vk.id, vk.name or vk.id
            echo.team_id, echo.customer_id = vk.team_id, vk.customer_id
        echo.batch_debug = self._echo_debug(provider, bid, results)
        self.rows[echo_id] = echo
        self._echo_ids.append(echo_id)
        return results_body(state.spec, bid, results, latency), echo_id

    def _echo_debug(self, provider: str, batch_id: str, results: _Results) -> dict[str, Any]:
        """attachBatchResultsDisplay: the batch, counts derived from the results, and the settlement's price."""
        debug: dict[str, Any] = {"batch_id": batch_id}
        succeeded = sum(u.requests for u in results.uses)
        if results.rows:
            debug["request_counts"] = {
                "total": results.rows,
                "completed": succeeded,
                "failed": results.failed_rows,
            }
        settled = self.rows.get(self._settlements.get((provider, batch_id), ""))
        if settled is not None and settled.batch_debug is not None:
            debug["status"] = settled.batch_debug.get("status", "")
            accounting: dict[str, Any] = {
                "model_breakdowns": settled.batch_debug["accounting"]["model_breakdowns"],
                "echo": True,
            }
            if settled.cost is not None:
                accounting["cost"] = settled.cost
            else:
                accounting["incomplete"] = True
            debug["accounting"] = accounting
        return debug

    def error_echo(self, provider: str, t: float, vk: VirtualKey | None) -> str:
        """A failed results call is logged too (status error), under its own id."""
        echo_id = str(uuid.UUID(int=self._echo_rng.getrandbits(128), version=4))
        row = LogRow(
            id=echo_id, timestamp=t, provider=provider, model="", cost=None, status="error", echo=True
        )
        if vk is not None:
            row.virtual_key_id, row.virtual_key_name = vk.id, vk.name or vk.id
        self.rows[echo_id] = row
        self._echo_ids.append(echo_id)
        return echo_id

    # ---- ground truth --------------------

    def truth(self) -> AccountingTruth:
        settlements = []
        for (provider, batch_id), row_id in sorted(self._settlements.items()):
            row = self.rows[row_id]
            debug = row.batch_debug or {}
            settlements.append(
                Settlement(
                    provider=provider,
                    batch_id=batch_id,
                    log_id=row_id,
                    timestamp=row.timestamp,
                    model=row.model,
                    cost=row.cost,
                    prompt_tokens=row.prompt_tokens or 0,
                    completion_tokens=row.completion_tokens or 0,
                    status=str(debug.get("status", "")),
                    incomplete=bool(debug.get("accounting", {}).get("incomplete", False)),
                    virtual_key_id=row.virtual_key_id,
                )
            )
        unsettled = []
        for name, state in sorted(self._providers.items()):
            for bid, batch in state.batches.items():
                if (
                    batch.get("status") in BIFROST_TERMINAL | {"canceled"}
                    and (name, bid) not in self._settlements
                ):
                    unsettled.append((name, bid))
        return AccountingTruth(tuple(settlements), tuple(self._echo_ids), tuple(sorted(unsettled)))

    def job_state(self, provider: str, batch_id: str) -> dict[str, Any] | None:
        job = self._jobs.get((provider, batch_id))
        if job is None:
            return None
        return {
            "id": job.job_id,
            "accounting_status": job.status,
            "poll_attempts": job.attempts,
            "next_check_at": job.next_check,
            "aggregate_log_written": job.written,
        }


def batch_models(
    spec: ProviderSpec, batch_id: str, models: Mapping[str, tuple[str, ...]], mixed_share: float
) -> tuple[str, ...]:
    """The models a batch ran on, drawn from its id: one usually, two for a `mixed_share` of batches."""
    choice = models.get(spec.name) or DEFAULT_MODELS.get(spec.flavor, ("unknown",))
    rng = random.Random(f"{spec.name}:{batch_id}:models")
    if len(choice) > 1 and rng.random() < mixed_share:
        return choice[:2]
    return choice[:1]


def batch_results(batch: dict[str, Any], models: tuple[str, ...], provider: str) -> _Results:
    """The rows of the provider's results: one per finished request, the succeeded ones with usage; the token
    counts per request are drawn from the batch id."""
    counts = batch.get("request_counts") or {}
    succeeded = int(counts.get("completed", 0))
    failed = sum(int(counts.get(k, 0)) for k in ("failed", "expired", "canceled"))
    bid = str(batch["id"])
    rng = random.Random(f"{provider}:{bid}:usage")
    shares = [succeeded]
    if len(models) > 1:
        first = math.ceil(succeeded * rng.uniform(0.3, 0.7))
        shares = [first, succeeded - first]
    uses = []
    for model, n in zip(models, shares, strict=False):
        prompt, completion = rng.randint(150, 1500), rng.randint(20, 600)
        uses.append(_ModelUse(model, n, n * prompt, n * completion))
    return _Results([u for u in uses if u.requests > 0], failed)


def _terminal_time(batch: dict[str, Any]) -> float:
    """When the batch reached its terminal status, from the status's own timestamp (Anthropic's `ended` is in
    completed_at); a terminal batch without one counts as terminal since it was created."""
    status = str(batch.get("status"))
    field_name = "completed_at" if status == "ended" else TIMESTAMP_FIELD.get(status)
    value = batch.get(field_name) if field_name else None
    if isinstance(value, int | float):
        return float(value)
    created = batch.get("created_at")
    return float(created) if isinstance(created, int | float) else 0.0


def results_body(spec: ProviderSpec, batch_id: str, results: _Results, latency: float) -> dict[str, Any]:
    """BifrostBatchResultsResponse: OpenAI-shaped rows (response.body.usage) for most providers, Anthropic's own
    (result.message.usage with input/output tokens)."""
    rows: list[dict[str, Any]] = []
    n = 0
    anthropic = spec.flavor == "anthropic"
    for use in results.uses:
        prompt, completion = use.prompt // use.requests, use.completion // use.requests
        for i in range(use.requests):
            # The per-request tokens add up to the model's totals exactly: the first request takes the remainders.
            p = prompt + (use.prompt - prompt * use.requests if i == 0 else 0)
            c = completion + (use.completion - completion * use.requests if i == 0 else 0)
            n += 1
            if anthropic:
                message = {"model": use.model, "usage": {"input_tokens": p, "output_tokens": c}}
                rows.append(
                    {"custom_id": f"request-{n}", "result": {"type": "succeeded", "message": message}}
                )
            else:
                body = {
                    "model": use.model,
                    "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
                }
                rows.append(
                    {
                        "custom_id": f"request-{n}",
                        "response": {"status_code": 200, "request_id": f"req_{n}", "body": body},
                    }
                )
    for _ in range(results.failed_rows):
        n += 1
        if anthropic:
            rows.append({"custom_id": f"request-{n}", "result": {"type": "errored"}})
        else:
            rows.append(
                {
                    "custom_id": f"request-{n}",
                    "error": {"code": "server_error", "message": "The request failed."},
                }
            )
    return {
        "batch_id": batch_id,
        "results": rows,
        "extra_fields": {"request_type": "batch_results", "provider": spec.name, "latency": int(latency)},
    }


def results_available(batch: dict[str, Any], view: dict[str, Any], flavor: str = "") -> bool:
    """Whether the provider hands out results for the batch now: finished and holding finished requests (a failed
    batch only with an output file; OpenRouter only once completed, GigaChat only with an output file). Anything
    else is the provider's refusal."""
    status = str(batch.get("status"))
    if flavor == "openrouter":
        return status == "completed"
    if flavor == "gigachat":
        return bool(view.get("output_file_id"))
    counts = batch.get("request_counts") or {}
    finished = sum(int(counts.get(k, 0)) for k in ("completed", "failed", "expired", "canceled"))
    if status in ("completed", "ended"):
        return True
    if status in ("expired", "cancelled", "canceled"):
        return finished > 0
    if status == "failed":
        return bool(view.get("output_file_id") or view.get("results_url"))
    return False

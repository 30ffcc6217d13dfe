"""What finished batches cost, from the gateway's own batch accounting: one settlement row per batch, read by id.

Batch objects carry no usage. Bifrost settles each finished batch it can account for into one log row whose id
anyone can compute (UUIDv5 of "<provider>:<batch_id>", `framework/jobaccounting`), so for every batch the batch
ledger counts as finished this module awaits that row (`GET /api/logs/{id}`, behind the gateway's admin login):

- the first look-up is timed to Bifrost's sweeper, whose check interval grows with a job's age (1 min, 2 from the
  5th check, 5 from the 10th, 15 from the 30th, plus jitter; it gives up after 120): a batch that ran ten minutes
  is settled within about two minutes of its end, one that ran a day within about seventeen. One look-up per batch
  is the usual cost; a row not there yet is looked for again at widening gaps;
- a row with a cost counts once — dollars, tokens, settled requests and `priced` — under the model the row names
  and the batch's metadata group captured when it finished. The id is then done: a later re-pricing of the row is
  never read, so never counted twice;
- a row without a cost (a model the gateway could not price; `incomplete`) is looked at again until
  `cost_horizon_seconds` after the batch finished; a cost that appears meanwhile counts then, as `priced`. Past the
  horizon it counts `unpriced`, with its tokens but no dollars (a partial sum would read as the whole cost) and so
  no settled requests (they are the divisor of a cost per request: without their dollars they would lower it, to $0
  for a model the catalog never priced); no row at all by then counts `missing`. Every batch id gets exactly one
  result;
- a batch that ran past the sweeper's patience (120 checks, about a day) is settled only by a
  `/v1/batches/{id}/results` call, usually the user's pipeline fetching its results some time after the end: it
  is awaited like the others, so a row written then counts, and no row by the horizon is `missing` (a real gap,
  which that call closes);
- batches Bifrost never settles are not awaited, so they cannot show as missing: providers without a usage
  extractor, Azure's `canceled` (not a terminal status to Bifrost), finished batches with no succeeded request.
  Those it settles only sometimes (a failed batch outside Bedrock, counts not measured) are looked up on the same
  schedule and count when a row appears; no row by the horizon gives them no result (counting them missing would
  page for batches that never get a row);
- a batch whose row never comes costs at most 13 look-ups in the day after its end (gaps of 2, 5, 15, 30 minutes,
  then 1, 2 and 4 hours) and 6 a day beyond that, up to `cost_horizon_seconds`.

A new (model, group) series is exposed at 0 for `hold_seconds` before its first amount is added, so that
Prometheus' increase() sees the first settlement of a new model or team as an increase, not as the series' start.

The awaited ids, the counters and the held amounts are durable (`to_state`/`load_state`, plain versioned JSON,
saved in the same atomic write as the batch ledger whose finish created them, so a crash can neither lose an
awaited id nor count one twice); `delta`/`apply_delta` give the same content as changes since the last save: the
counters that changed (with metadata groups there are thousands), so a poll that counted nothing writes a few
hundred bytes.
"""

from __future__ import annotations

import heapq
import json
import math
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal, Protocol

import structlog

from .client import Failure, LogResult
from .ledger import Group
from .models import Batch, InvalidResponseError
from .outcomes import outcomes

# AccountingLogID (framework/jobaccounting/engine.go): its comment says the namespace and name format never change.
ACCOUNTING_NAMESPACE: Final = uuid.UUID("90a2f576-5276-481f-a753-2c78ccf97607")
# jobaccounting/batch.go usageExtractors, keyed by provider identifier: any other name (gigachat, openrouter, a
# custom provider) is never settled.
SETTLING_PROVIDERS: Final = frozenset({"openai", "azure", "bedrock", "gemini", "vertex", "anthropic"})
RESULTS: Final = ("priced", "unpriced", "missing")
TOKEN_TYPES: Final = ("prompt", "completion")
AWAITING: Final = ("row", "cost")
MIXED: Final = "mixed"
OTHER_MODEL: Final = "other"
UNKNOWN_MODEL: Final = "unknown"
MAX_MODELS: Final = 20
MAX_AWAITED: Final = 100_000
STATE_VERSION: Final = 1
# A journal record's changes: version 1 carried the counters whole, version 2 only those changed since the last save.
DELTA_VERSION: Final = 2

# The sweeper (sweeper.go, batch.go): a minute's grid, first check a minute after the batch was created.
SWEEP_INTERVAL: Final = 60.0
SWEEP_MAX_ATTEMPTS: Final = 120
LOOKUP_SLACK: Final = 15.0
# After a look-up found no row (the sweeper is behind: at most 50 jobs a sweep), and after one found a row without
# a cost (a price must reach the catalog and a backfill run): the gaps widen, the last one repeats.
ABSENT_GAPS: Final = (120.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0)
UNPRICED_GAPS: Final = (900.0, 1800.0, 3600.0, 7200.0, 14400.0)
# A reason that says the gateway (or the way to it) is failing, not this one row: the round stops and the look-up
# is repeated next poll.
# A lying gateway's numbers must not poison a counter for ever: no batch costs a billion dollars or uses 10^15
# tokens.
MAX_DOLLARS: Final = 1e9
MAX_TOKENS: Final = 10**15
_MAX_LABEL_VALUE: Final = 128
_PROBE_BATCH_ID: Final = "bifrost-batch-exporter-login-check"
# Different rows in a row (across rounds) this release cannot read, with none read between, from which the look-ups
# count as failing (cost_up 0): one or two are faults of their own; more, and no cost is being read at all (a row
# shape this release does not know). A lone awaited batch cannot tell the two apart: its row stays its own fault.
UNREADABLE_RUN: Final = 3
# How far the gateway's Date may be behind the end time it gave a batch and still be its clock (providers' times
# and the gateway's differ by seconds; by more, the Date is not the gateway's now).
GATEWAY_CLOCK_SLACK: Final = 3600.0

Result = Literal["priced", "unpriced", "missing"]


def settlement_id(provider: str, batch_id: str) -> str:
    """The settlement row's id, as the gateway computes it."""
    return str(uuid.uuid5(ACCOUNTING_NAMESPACE, f"{provider}:{batch_id}"))


def lookup_allowance(budget: int, spent: int) -> int:
    """Look-ups one poll may send: what the poll's request budget has left, and never less than a tenth of it, so
    that a full-mode poll (whose list alone can exceed the budget) still settles costs."""
    return max(budget - spent, budget // 10, 1)


# ---- the settlement row ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """What a settlement row says, reduced to what is counted. `dollars` None: not (fully) priced yet."""

    dollars: float | None
    model: str
    prompt: int
    completion: int
    requests: int


def _number(value: Any, limit: float, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidResponseError(f"settlement row: {what} is not a number")
    if isinstance(value, int) and not 0 <= value <= limit:
        raise InvalidResponseError(f"settlement row: {what} out of range")  # float() of a huge int overflows
    number = float(value)
    if not (0.0 <= number <= limit):
        raise InvalidResponseError(f"settlement row: {what} out of range")
    return number


def _count(value: Any, what: str) -> int:
    number = _number(value, MAX_TOKENS, what)
    return 0 if number is None else int(number)


def label_text(text: str) -> str:
    """`text` as a label value can carry it. JSON lets a lone surrogate through (`"\\ud800"`), which no UTF-8
    encoder takes: one such model name failed every render of /metrics, and came back with the state after a
    restart. Such characters become "?"."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def parse_row(log_id: str) -> Callable[[bytes], Row]:
    """The parser of one `GET /api/logs/{id}` answer (`framework/logstore` tables.go's JSON tags), for `log_id`.

    Priced means a cost is there and nothing says part of it is missing: `cost` is `omitempty` (or null), and some
    versions write the known part and set `batch_debug.accounting.incomplete` instead. A later re-pricing fills the
    cost and the per-model breakdowns but never clears `incomplete`, so a flagged row counts as priced once every
    model breakdown carries a cost.
    """

    def parse(body: bytes) -> Row:
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            raise InvalidResponseError("settlement row is not JSON") from None
        if not isinstance(doc, dict):
            raise InvalidResponseError("settlement row is not an object")
        if doc.get("id") != log_id:
            # A cache or proxy answering with another row: counting it under this batch would count it twice.
            raise InvalidResponseError("the gateway answered with another log row")
        debug = doc.get("batch_debug")
        debug = debug if isinstance(debug, dict) else {}
        accounting = debug.get("accounting")
        accounting = accounting if isinstance(accounting, dict) else {}
        if accounting.get("echo") is True:
            raise InvalidResponseError("the row is a results echo, not a settlement")
        dollars = _number(doc.get("cost"), MAX_DOLLARS, "cost")
        raw = accounting.get("model_breakdowns")
        parts = list(raw.values()) if isinstance(raw, dict) else raw if isinstance(raw, list) else []
        parts = [p for p in parts if isinstance(p, dict)]
        flagged = accounting.get("incomplete") is True
        if flagged and (
            not parts or any(_number(p.get("cost"), MAX_DOLLARS, "breakdown cost") is None for p in parts)
        ):
            dollars = None
        usage = doc.get("token_usage")
        usage = usage if isinstance(usage, dict) else {}
        prompt = _count(usage.get("prompt_tokens"), "prompt_tokens")
        completion = _count(usage.get("completion_tokens"), "completion_tokens")
        requests = sum(_count(p.get("request_count"), "request_count") for p in parts)
        if not parts:
            counts = debug.get("request_counts")
            requests = _count(counts.get("completed"), "completed") if isinstance(counts, dict) else 0
        model = doc.get("model")
        name = label_text(model[:_MAX_LABEL_VALUE]) if isinstance(model, str) and model else UNKNOWN_MODEL
        return Row(dollars, name, prompt, completion, min(requests, MAX_TOKENS))

    return parse


# ---- when Bifrost settles a batch ----------------------------------------------------------------------------------


def _sweeper_delay(attempts: int) -> float:
    """BatchSettler.Backoff with the sweeper's one-minute interval."""
    if attempts >= 30:
        return 900.0
    if attempts >= 10:
        return 300.0
    if attempts >= 5:
        return 120.0
    return SWEEP_INTERVAL


def settled_by(created: float | None, finished: float) -> float | None:
    """The latest time Bifrost's sweeper settles a batch created at `created` that finished at `finished`; None when
    the sweeper may have given up on it by then.

    Its checks run `created` + 1 min, then at the backoff of the attempts so far plus a jitter of at most a fifth of
    the delay (at most a minute), on a one-minute sweep grid. Without the jitter the checks come earlier, so the
    attempts counted here are at least the real ones and the delay after the last check before `finished` at least
    the real one: the check that settles comes at most that delay, its jitter and one sweep tick after `finished`.
    """
    if created is None or created > finished:
        delay = _sweeper_delay(SWEEP_MAX_ATTEMPTS - 1)
        return finished + delay + min(60.0, delay / 5) + SWEEP_INTERVAL
    check = created + SWEEP_INTERVAL
    attempts = 0
    while check < finished:
        attempts += 1
        if attempts >= SWEEP_MAX_ATTEMPTS:
            return None
        check += _sweeper_delay(attempts)
    if attempts == 0:
        return check + SWEEP_INTERVAL
    delay = _sweeper_delay(attempts)
    return finished + delay + min(60.0, delay / 5) + SWEEP_INTERVAL


# The latest a first look-up is scheduled after a batch's end (finished): settled_by's longest wait, the sweeper's
# longest backoff with its jitter and a tick, plus LOOKUP_SLACK.
_FIRST_LOOK_BOUND: Final = _sweeper_delay(SWEEP_MAX_ATTEMPTS - 1) + 60.0 + SWEEP_INTERVAL + LOOKUP_SLACK

Expectation = Literal["settles", "maybe"]


def expectation(provider: str, batch: Batch, status: str) -> Expectation | None:
    """Whether Bifrost writes a settlement row for this finished batch (`jobaccounting/batch.go`): always for a
    completed or ended batch with a succeeded request; for an expired or cancelled one when some requests succeeded;
    for a failed one only when the provider kept an output file (Bedrock does, the others do not; the batch object
    does not say). Counts of 0 everywhere are "not measured" (Bedrock and Gemini list items): maybe."""
    if provider not in SETTLING_PROVIDERS or (batch.status or "").strip().lower() == "canceled":
        return None
    result = outcomes(batch.request_counts, status)
    measured = result.total > 0
    if measured and result.succeeded == 0:
        return None
    if status in ("completed", "ended"):
        return "settles"
    if status in ("expired", "cancelled"):
        return "settles" if measured else "maybe"
    if status == "failed" and provider == "bedrock":
        return "settles" if measured else "maybe"
    return "maybe"


# ---- the ledger ----------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Awaited:
    finished_at: float
    next_at: float
    group: Group
    looks: int = 0
    maybe: bool = False  # a kind Bifrost settles only sometimes: no row by the horizon is no result
    row_seen: bool = False  # a row without a cost was read: awaiting its cost, not the row

    def to_state(self, to_wall: float) -> list[Any]:
        """`to_wall`: the wall clock less the monotonic one (next_at is kept on the latter, saved as wall time)."""
        flags = (1 if self.maybe else 0) | (2 if self.row_seen else 0)
        return [self.finished_at, self.next_at + to_wall, self.looks, list(self.group), flags]

    @classmethod
    def from_state(cls, raw: Any) -> _Awaited:
        finished_at, next_at, looks, group, flags = raw
        return cls(
            _finite(finished_at),
            _finite(next_at),
            tuple(str(g) for g in group),
            _natural(looks),
            bool(_natural(flags) & 1),
            bool(_natural(flags) & 2),
        )


def _gap_after(entry: _Awaited) -> float:
    """The longest gap `_schedule` can have put after the entry's last look-up (a row seen may have been
    scheduled by either table)."""
    absent = ABSENT_GAPS[min(entry.looks, len(ABSENT_GAPS)) - 1]
    if not entry.row_seen:
        return absent
    return max(absent, UNPRICED_GAPS[min(entry.looks, len(UNPRICED_GAPS)) - 1])


@dataclass(frozen=True, slots=True)
class _Credit:
    """Amounts of settlements on a (model, group) series that has not been exposed at 0 long enough yet."""

    model: str
    group: Group
    dollars: float
    prompt: int
    completion: int
    requests: int


@dataclass(frozen=True, slots=True)
class CostView:
    """An immutable copy of a provider's cost figures, taken after a poll."""

    up: bool | None  # None until the first look-up (or login check) answered
    dollars: Mapping[tuple[str, Group], float]  # (model, group)
    tokens: Mapping[tuple[str, str, Group], int]  # (model, type, group)
    requests: Mapping[tuple[str, Group], int]  # (model, group): requests of the priced settlements
    settlements: Mapping[tuple[str, Group], int]  # (result, group), every result of every group
    awaited: Mapping[str, int]  # awaiting ∈ AWAITING
    lookups: int  # requests sent to the logs API, retries included
    # (figure, key) → the value shown for now instead of the count (set by the poller when it publishes: its start-up
    # hold, exporter/holds.py); a figure is "dollars", "tokens", "requests" or "settlements".
    held: Mapping[tuple[str, Any], float] = field(default_factory=lambda: MappingProxyType({}))

    def shown(self, figure: str, key: Any, value: float) -> float:
        return self.held.get((figure, key), value)

    def settlements_total(self, result: str) -> int:
        return sum(n for (r, _), n in self.settlements.items() if r == result)

    def dollars_total(self, model: str | None = None) -> float:
        return sum(v for (m, _), v in self.dollars.items() if model in (None, m))


class _Log(Protocol):
    def debug(self, event: str, **kw: Any) -> Any: ...
    def info(self, event: str, **kw: Any) -> Any: ...
    def warning(self, event: str, **kw: Any) -> Any: ...


class CostLedger:
    """One provider's settlements: the finished batches awaited and what the counted ones cost.

    Only the provider's poller task touches it (the batch ledger's finish hook, then `settle` in the same poll).
    """

    def __init__(
        self,
        provider: str,
        *,
        clock: Callable[[], float],
        monotonic: Callable[[], float] | None = None,
        horizon_seconds: float = 86400.0,
        metadata_keys: Sequence[str] = (),
        hold_seconds: float = 60.0,
        max_awaited: int = MAX_AWAITED,
        log: _Log | None = None,
    ) -> None:
        self.provider = provider
        self.settles = provider in SETTLING_PROVIDERS
        self.horizon = horizon_seconds
        self.metadata_keys = tuple(metadata_keys)
        self.hold_seconds = hold_seconds
        self.max_awaited = max_awaited
        self._clock = clock
        # The look-ups' schedule and the new-series hold run on it (a step of the host's clock neither brings a
        # look-up early or late nor ends or stretches a hold); both are saved as wall times. Without one (a ledger
        # driven by one test clock) the wall clock stands in.
        self._monotonic = monotonic or clock
        self.log: _Log = log if log is not None else structlog.get_logger("exporter.cost")
        self.up: bool | None = None
        self._empty: Group = ("",) * len(self.metadata_keys)
        self._awaited: dict[str, _Awaited] = {}
        self._awaiting_cost = 0  # entries of _awaited with row_seen (kept, not counted per view)
        self._due: list[tuple[float, str]] = []  # (next_at, batch id); stale pairs are skipped
        self._dollars: dict[tuple[str, Group], float] = {}
        self._tokens: dict[tuple[str, str, Group], int] = {}
        self._requests: dict[tuple[str, Group], int] = {}
        self._settlements: dict[tuple[str, Group], int] = {}
        self._groups: set[Group] = {self._empty}
        self._models: set[str] = set()
        self._held: list[_Credit] = []
        self._fresh: dict[tuple[str, Group], float] = {}  # series at 0 until then (monotonic)
        self._lookups = 0
        self._model_overflowed = False
        self._evicted_warned = False
        self._probe_due = True
        # The rows that could not be read since the last readable answer (UNREADABLE_RUN). Not saved.
        self.unreadable_ids: set[str] = set()
        # What changed since the last save (delta): awaited ids added, changed or removed; the (model, group) series
        # whose dollars, requests or tokens changed; the settlement counters changed; the held amounts, the models.
        self._dirty: set[str] = set()
        # (Dicts as ordered sets: a replay adds new series in the order they came, so it rebuilds the same state.)
        self._changed_series: dict[tuple[str, Group], None] = {}
        self._changed_settlements: dict[tuple[str, Group], None] = {}
        self._held_changed = False
        self._models_changed = False

    # --- events ---------------------------------------------------------------------------------------------------

    def finished(self, batch: Batch, status: str, ts: float | None, group: Group) -> None:
        """The batch ledger counted `batch` as finished (once per id): await its settlement when it will have one."""
        if not self.settles or batch.id in self._awaited:
            return
        kind = expectation(self.provider, batch, status)
        if kind is None:
            return
        now = self._clock()
        # Without an end time (or with one ahead of ours) the end is our clock's now: with our clock stepped ahead,
        # a time the gateway reaches only later, so the horizon is measured from a later end and such a batch's
        # result comes late by the step (never early; `_judged` then falls back to our clock alone).
        finished_at = ts if ts is not None and ts <= now else now
        settled = settled_by(batch.created, finished_at)
        if settled is None:
            # Past the sweeper's 120 checks: only a /results call settles it, usually the user's pipeline fetching
            # the results some time after the end. Awaited as any other (a settling kind with no row by the horizon
            # is `missing`: a gap the operator closes with that call); the first look comes when the sweeper's
            # last check could still have settled it (its jitter makes its patience longer than settled_by's).
            settled = finished_at + 2 * SWEEP_INTERVAL
        entry = _Awaited(
            finished_at=finished_at,
            next_at=self._scheduled(now, min(settled + LOOKUP_SLACK, finished_at + self.horizon) - now),
            group=group,
            maybe=kind == "maybe",
        )
        self._make_room()
        self._awaited[batch.id] = entry
        self._groups.add(group)
        self._dirty.add(batch.id)
        heapq.heappush(self._due, (entry.next_at, batch.id))

    def next_due(self, now: float) -> str | None:
        """The batch id whose look-up is due first (taken off the schedule: answer it with `answered`/`failed`)."""
        while self._due and self._due[0][0] <= now:
            at, batch_id = heapq.heappop(self._due)
            entry = self._awaited.get(batch_id)
            if entry is not None and entry.next_at == at:
                return batch_id
        return None

    def next_at(self) -> float | None:
        """When the next look-up is due (None: nothing awaited)."""
        while self._due:
            at, batch_id = self._due[0]
            entry = self._awaited.get(batch_id)
            if entry is not None and entry.next_at == at:
                return at
            heapq.heappop(self._due)
        return None

    def answered(self, batch_id: str, row: Row | None, now: float, gateway_now: float | None = None) -> None:
        """The gateway answered the look-up: `row`, or None for 404 (not settled); `gateway_now` is its clock when
        it answered (its Date header), None when unknown."""
        entry = self._awaited.get(batch_id)
        if entry is None:
            if row is not None:
                self.log.debug("settlement_already_counted", provider=self.provider, batch_id=batch_id[:256])
            return
        entry.looks += 1
        judged = self._judged(entry, now, gateway_now)
        final = judged >= entry.finished_at + self.horizon
        if row is None:
            if final:
                if not entry.maybe:
                    self._count("missing", entry.group, None, now)
                self._drop(batch_id)  # a kind Bifrost settles only sometimes: no row, no result
            else:
                self._schedule(batch_id, entry, now, judged, ABSENT_GAPS)
            return
        entry.maybe = False
        if row.dollars is not None:
            self._count("priced", entry.group, row, now)
            self._drop(batch_id)
        elif final:
            self._count("unpriced", entry.group, row, now)
            self._drop(batch_id)
        else:
            if not entry.row_seen:
                entry.row_seen = True
                self._awaiting_cost += 1
            self._schedule(batch_id, entry, now, judged, UNPRICED_GAPS)

    def failed(
        self,
        batch_id: str,
        failure: Failure,
        now: float,
        *,
        row_fault: bool,
        gateway_now: float | None = None,
    ) -> None:
        """The look-up failed. A fault of this row (the gateway answered with a body that cannot be read, or failed
        on this id while it answered others): looked up again after a gap, so it does not hold up the others, and
        given up on at the horizon. Any other failure may be the gateway's (it, its route or its login failing): due
        again next poll, behind the ids due now, so that one row the gateway fails on never comes first in every
        round; never counted while it lasts."""
        entry = self._awaited.get(batch_id)
        if entry is None:
            return
        if not row_fault:
            entry.next_at = self._scheduled(now, 0.0)  # the ids due before it come first
            self._dirty.add(batch_id)
            heapq.heappush(self._due, (entry.next_at, batch_id))
            return
        if failure.status is not None and 200 <= failure.status < 300 and not entry.row_seen:
            entry.row_seen = True  # the gateway answered with something for this id: a row, awaiting a cost
            self._awaiting_cost += 1
        judged = self._judged(entry, now, gateway_now)
        if judged >= entry.finished_at + self.horizon:
            # A row the gateway keeps failing on, or answering wrongly, past the horizon: no cost could be read.
            self._give_up(batch_id, entry, now)
            return
        entry.looks += 1
        self._schedule(batch_id, entry, now, judged, ABSENT_GAPS)

    def round_done(self, requests: int, ok: bool | None) -> None:
        """A round of look-ups sent `requests` requests; `ok` None when none answered either way."""
        self._lookups += requests
        if ok is not None:
            self.up = ok
            self._probe_due = not ok

    def probe_wanted(self) -> bool:
        """Check the login with a look-up of an id that never exists: at start (a wrong login shows at once, not
        when the first batch finishes) and while look-ups fail with nothing due to retry."""
        return self.settles and self._probe_due

    @staticmethod
    def probe_id() -> str:
        return _PROBE_BATCH_ID

    def now(self) -> float:
        return self._clock()

    def unreadable(self, batch_id: str) -> None:
        """An answer for `batch_id` that is not a row this release can read."""
        self.unreadable_ids.add(batch_id)

    def readable(self) -> None:
        """A row read for one of our batches."""
        self.unreadable_ids.clear()

    def reads_nothing(self) -> bool:
        """No cost is being read: UNREADABLE_RUN different rows in a row could not be read."""
        return len(self.unreadable_ids) >= UNREADABLE_RUN

    def elapsed(self) -> float:
        """The clock the look-ups are scheduled on (next_due, next_at)."""
        return self._monotonic()

    def _scheduled(self, now: float, wait: float) -> float:
        """`wait` seconds after the wall time `now` (read just before), on the schedule's monotonic clock."""
        return now + (self._monotonic() - self._clock()) + wait

    def release(self) -> None:
        """Add held amounts whose series has now been exposed at 0 long enough."""
        if not self._held:
            return
        now = self._monotonic()
        keep = []
        for credit in self._held:
            key = (credit.model, credit.group)
            if self._fresh.get(key, 0.0) > now:
                keep.append(credit)
                continue
            self._fresh.pop(key, None)
            self._add(
                credit.model, credit.group, credit.dollars, credit.prompt, credit.completion, credit.requests
            )
        if len(keep) != len(self._held):
            self._held_changed = True
        self._held = keep

    # --- internals --------------------------------------------------------------------------------------------------

    @staticmethod
    def _judged(entry: _Awaited, now: float, gateway_now: float | None) -> float:
        """The time the horizon is judged at: ours, or the gateway's when it is behind. `finished_at` is (mostly)
        the gateway's time, so a host clock stepped a day ahead would otherwise end the wait of every batch
        awaited in that poll, and count as `missing` settlements the gateway writes a minute later. A gateway
        clock behind the batch's own end time contradicts the gateway's data (a clock reset, a cached answer):
        not believed, or settlements would never be final."""
        if gateway_now is None or gateway_now < entry.finished_at - GATEWAY_CLOCK_SLACK:
            return now
        return min(now, gateway_now)

    def _schedule(
        self, batch_id: str, entry: _Awaited, now: float, judged: float, gaps: Sequence[float]
    ) -> None:
        # The wait, cut to what is left of the horizon on the clock it is judged on: never 0 when the look-up was not
        # final, so the id is not due again in the same round.
        gap = gaps[min(entry.looks, len(gaps)) - 1]
        entry.next_at = self._scheduled(now, max(0.0, min(gap, entry.finished_at + self.horizon - judged)))
        self._dirty.add(batch_id)
        heapq.heappush(self._due, (entry.next_at, batch_id))

    def _give_up(self, batch_id: str, entry: _Awaited, now: float) -> None:
        """No cost could be read by the horizon: `unpriced` when a row was seen, else `missing`, except for a
        kind Bifrost settles only sometimes, which gets no result (counting it missing would page falsely)."""
        if entry.row_seen:
            self._count("unpriced", entry.group, None, now)
        elif not entry.maybe:
            self._count("missing", entry.group, None, now)
        self._drop(batch_id)

    def forget_awaited(self) -> int:
        """Stop awaiting every settlement (a state another gateway wrote: its batches are not in this gateway's
        logs, and counting them missing at their horizon would page falsely). How many there were."""
        dropped = list(self._awaited)
        for batch_id in dropped:
            self._drop(batch_id)
        self._due = []
        return len(dropped)

    def _drop(self, batch_id: str) -> None:
        entry = self._awaited.pop(batch_id, None)
        if entry is not None and entry.row_seen:
            self._awaiting_cost -= 1
        self._dirty.add(batch_id)

    def _make_room(self) -> None:
        """Past `max_awaited`, the batch that finished first is given up on as at its horizon (`missing`, or
        `unpriced` with a row seen; no result for a kind settled only sometimes): an honest gap, logged."""
        while len(self._awaited) >= self.max_awaited:
            oldest = min(self._awaited, key=lambda i: self._awaited[i].finished_at)
            self._give_up(oldest, self._awaited[oldest], self._clock())
            if not self._evicted_warned:
                self._evicted_warned = True
                self.log.warning(
                    "settlements_given_up",
                    provider=self.provider,
                    detail=f"more than {self.max_awaited} settlements awaited; the oldest are counted as missing "
                    "(or unpriced) before their horizon",
                )

    def _admit_model(self, model: str) -> str:
        if model == MIXED or model in self._models:
            return model
        if len(self._models) < MAX_MODELS:
            self._models.add(model)
            self._models_changed = True
            return model
        if not self._model_overflowed:
            self._model_overflowed = True
            self.log.warning(
                "models_capped",
                provider=self.provider,
                detail=f'more than {MAX_MODELS} models in settlements; further ones are reported as model="other"',
            )
        return OTHER_MODEL

    def _count(self, result: Result, group: Group, row: Row | None, now: float) -> None:
        key = (result, group)
        self._settlements[key] = self._settlements.get(key, 0) + 1
        self._changed_settlements[key] = None
        self._groups.add(group)
        if row is None:
            return
        model = self._admit_model(row.model)
        dollars = row.dollars if result == "priced" and row.dollars is not None else 0.0
        series = (model, group)
        if series not in self._dollars:
            # First sight of this series: exposed at 0 now, its amounts once a scrape can have seen the 0.
            self._dollars[series] = 0.0
            self._requests[series] = 0
            for kind in TOKEN_TYPES:
                self._tokens[(model, kind, group)] = 0
            self._changed_series[series] = None
            if self.hold_seconds > 0:
                self._fresh[series] = self._monotonic() + self.hold_seconds
        # Requests only with their dollars: they are the divisor of a cost per request.
        requests = row.requests if result == "priced" else 0
        credit = _Credit(model, group, dollars, row.prompt, row.completion, requests)
        if series in self._fresh:
            self._held.append(credit)
            self._held_changed = True
        else:
            self._add(model, group, dollars, row.prompt, row.completion, requests)

    def _add(
        self, model: str, group: Group, dollars: float, prompt: int, completion: int, requests: int
    ) -> None:
        series = (model, group)
        self._changed_series[series] = None
        self._dollars[series] = self._dollars.get(series, 0.0) + dollars
        self._requests[series] = self._requests.get(series, 0) + requests
        for kind, n in (("prompt", prompt), ("completion", completion)):
            key = (model, kind, group)
            self._tokens[key] = self._tokens.get(key, 0) + n

    # --- views ------------------------------------------------------------------------------------------------------

    def view(self) -> CostView:
        settlements = dict(self._settlements)
        for group in self._groups:
            for result in RESULTS:
                settlements.setdefault((result, group), 0)
        awaited = {"row": len(self._awaited) - self._awaiting_cost, "cost": self._awaiting_cost}
        return CostView(
            up=self.up,
            dollars=MappingProxyType(dict(self._dollars)),
            tokens=MappingProxyType(dict(self._tokens)),
            requests=MappingProxyType(dict(self._requests)),
            settlements=MappingProxyType(settlements),
            awaited=MappingProxyType(awaited),
            lookups=self._lookups,
        )

    def awaiting(self) -> list[str]:
        """The batch ids still awaited (tests, diagnostics)."""
        return sorted(self._awaited)

    # --- durable state ----------------------------------------------------------------------------------------------

    def _to_wall(self) -> float:
        """What turns a time on the monotonic clock (the schedule, the holds) into the wall time it is saved as."""
        return self._clock() - self._monotonic()

    def _held_state(self, to_wall: float) -> list[list[Any]]:
        return [
            [
                self._fresh.get((c.model, c.group), 0.0) + to_wall,
                c.model,
                list(c.group),
                c.dollars,
                c.prompt,
                c.completion,
                c.requests,
            ]
            for c in self._held
        ]

    def to_state(self) -> dict[str, Any]:
        """Everything a restarted process needs to resume: plain JSON types, bounded by the caps above."""
        to_wall = self._to_wall()
        return {
            "version": STATE_VERSION,
            "metadata_keys": list(self.metadata_keys),
            "lookups": self._lookups,
            "models": sorted(self._models),
            "dollars": [[m, list(g), v] for (m, g), v in self._dollars.items()],
            "tokens": [[m, k, list(g), n] for (m, k, g), n in self._tokens.items()],
            "requests": [[m, list(g), n] for (m, g), n in self._requests.items()],
            "settlements": [[r, list(g), n] for (r, g), n in self._settlements.items()],
            "held": self._held_state(to_wall),
            "awaited": {i: e.to_state(to_wall) for i, e in self._awaited.items()},
        }

    def delta(self) -> dict[str, Any]:
        """What changed since the last `mark_saved`: the counters that changed (their new values, not increments,
        so a record written twice reads the same), the models and held amounts when they changed, the awaited ids
        added or changed, and those removed. `apply_delta` on the state saved before gives `to_state`.

        A poll that counted nothing writes a few hundred bytes whatever the number of (model, group) series: with
        metadata groups the counters run to thousands of numbers, and writing them whole made every journal record
        tens to hundreds of kilobytes."""
        to_wall = self._to_wall()
        series = list(self._changed_series)
        out: dict[str, Any] = {
            "version": DELTA_VERSION,
            "delta": True,
            "metadata_keys": list(self.metadata_keys),
            "lookups": self._lookups,
            "dollars": [[m, list(g), self._dollars[(m, g)]] for m, g in series],
            "tokens": [
                [m, k, list(g), self._tokens[(m, k, g)]]
                for m, g in series
                for k in TOKEN_TYPES
                if (m, k, g) in self._tokens
            ],
            "requests": [[m, list(g), self._requests[(m, g)]] for m, g in series],
            "settlements": [[r, list(g), self._settlements[(r, g)]] for r, g in self._changed_settlements],
            "awaited": {i: self._awaited[i].to_state(to_wall) for i in self._dirty if i in self._awaited},
            "removed": sorted(i for i in self._dirty if i not in self._awaited),
        }
        if self._models_changed:
            out["models"] = sorted(self._models)
        if self._held_changed:
            out["held"] = self._held_state(to_wall)
        return out

    def mark_saved(self) -> None:
        self._dirty.clear()
        self._changed_series.clear()
        self._changed_settlements.clear()
        self._held_changed = self._models_changed = False

    def load_state(self, state: Mapping[str, Any] | None) -> list[str]:
        """Resume from `to_state` output (None: nothing saved). Raises (KeyError, TypeError, ValueError) on a
        malformed state, leaving this ledger untouched; returns notes on parts deliberately not restored."""
        if state is None:
            return []
        fresh = self._blank()
        notes = fresh._apply(state, full=True)
        self._take(fresh)
        return notes

    def apply_delta(self, delta: Mapping[str, Any]) -> list[str]:
        """Replay one `delta` on top of what was loaded (the same checks as `load_state`). A delta of version 1
        (an earlier release's journal) carries the counters whole; one of version 2 only those that changed."""
        fresh = self._blank()
        fresh._awaited = dict(self._awaited)
        if delta.get("version") == DELTA_VERSION:
            fresh._lookups = self._lookups
            fresh._models = set(self._models)
            fresh._dollars = dict(self._dollars)
            fresh._tokens = dict(self._tokens)
            fresh._requests = dict(self._requests)
            fresh._settlements = dict(self._settlements)
            fresh._held = list(self._held)
            fresh._fresh = dict(self._fresh)
            notes = fresh._apply(delta, full=False, changes=True)
        else:
            notes = fresh._apply(delta, full=False)
        self._take(fresh)
        return notes

    def _blank(self) -> CostLedger:
        return CostLedger(
            self.provider,
            clock=self._clock,
            monotonic=self._monotonic,
            horizon_seconds=self.horizon,
            metadata_keys=self.metadata_keys,
            hold_seconds=self.hold_seconds,
            max_awaited=self.max_awaited,
            log=self.log,
        )

    def _take(self, other: CostLedger) -> None:
        up, probe = self.up, self._probe_due
        self.__dict__.update(other.__dict__)
        self.up, self._probe_due = up, probe

    def _apply(self, state: Mapping[str, Any], *, full: bool, changes: bool = False) -> list[str]:
        """`state` onto this ledger: a whole state or a version-1 delta onto empty counters (`changes` False), or a
        version-2 delta's changed counters onto those already loaded (`changes` True)."""
        version = state["version"]
        if version != (DELTA_VERSION if changes else STATE_VERSION):
            raise ValueError(f"cost state version {version!r}")
        notes: list[str] = []
        width = len(self.metadata_keys)
        same_keys = list(state["metadata_keys"]) == list(self.metadata_keys)
        if not same_keys:
            notes.append("metadata_labels changed: cost counters start again from 0")

        def model_of(raw: Any) -> str:
            return label_text(str(raw))

        def group_of(raw: Any) -> Group:
            group = tuple(str(v) for v in raw)
            if len(group) != width:
                raise ValueError("a group of the wrong width")
            return group

        self._lookups = _natural(state["lookups"])
        if not changes or "models" in state:
            models = {model_of(m) for m in state["models"]}
            if len(models) > MAX_MODELS:
                raise ValueError("more models than the cap admits")
            self._models = models
        # A whole state's values are summed onto empty counters (two names a state written before label_text
        # cleaned them may now be one); a version-2 delta's are the counters' new values, written from clean names.
        summed = not changes
        if same_keys:
            for m, g, v in state["dollars"]:
                key = (model_of(m), group_of(g))
                self._dollars[key] = (self._dollars.get(key, 0.0) if summed else 0.0) + _finite_nonnegative(v)
            for m, k, g, n in state["tokens"]:
                if k not in TOKEN_TYPES:
                    raise ValueError("unknown token type")
                tkey = (model_of(m), str(k), group_of(g))
                self._tokens[tkey] = (self._tokens.get(tkey, 0) if summed else 0) + _natural(n)
            for m, g, n in state["requests"]:
                key = (model_of(m), group_of(g))
                self._requests[key] = (self._requests.get(key, 0) if summed else 0) + _natural(n)
            for r, g, n in state["settlements"]:
                if r not in RESULTS:
                    raise ValueError("unknown settlement result")
                self._settlements[(str(r), group_of(g))] = _natural(n)
        # Saved wall times onto this process's monotonic clock.
        wall, monotonic = self._clock(), self._monotonic()
        if same_keys and (not changes or "held" in state):
            self._held, self._fresh = [], {}
            for release_at, m, g, dollars, prompt, completion, requests in state["held"]:
                credit = _Credit(
                    model_of(m), group_of(g), _finite_nonnegative(dollars), _natural(prompt),
                    _natural(completion), _natural(requests),
                )  # fmt: skip
                self._held.append(credit)
                # Never later than a hold begun now.
                left = min(_finite(release_at) - wall, self.hold_seconds)
                self._fresh[(credit.model, credit.group)] = monotonic + left
        awaited = state["awaited"]
        if not isinstance(awaited, dict):
            raise TypeError("awaited is not a mapping")
        for batch_id, raw in awaited.items():
            entry = _Awaited.from_state(raw)
            # Saved as wall time, from the host's clock, which may have been ahead then (a step NTP has since
            # undone): no batch ended after now, a look-up after the first is never further away than its gap, and
            # the first never later than the sweeper's last chance after the end.
            entry.finished_at = min(entry.finished_at, wall)
            wait = entry.next_at - wall
            bound = _gap_after(entry) if entry.looks else entry.finished_at + _FIRST_LOOK_BOUND - wall
            entry.next_at = monotonic + min(wait, bound)
            if not same_keys:
                entry.group = self._empty
            elif len(entry.group) != width:
                raise ValueError("a group of the wrong width")
            self._awaited[str(batch_id)] = entry
        if not full:
            for batch_id in state["removed"]:
                self._awaited.pop(str(batch_id), None)
        if len(self._awaited) > self.max_awaited:
            raise ValueError("more awaited settlements than the cap admits")
        self._groups = {
            self._empty,
            *(g for _, g in self._settlements),
            *(e.group for e in self._awaited.values()),
        }
        self._awaiting_cost = sum(1 for e in self._awaited.values() if e.row_seen)
        self._due = [(e.next_at, i) for i, e in self._awaited.items()]
        heapq.heapify(self._due)
        return notes


def _finite(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("not a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    return number


def _finite_nonnegative(value: Any) -> float:
    number = _finite(value)
    if number < 0:
        raise ValueError("a negative amount")
    return number


def _natural(value: Any) -> int:
    # Above 2**63 a hand edit or a writer bug, not a count: it would not even render as a float.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 63:
        raise ValueError("not a counter value")
    return value


# ---- one round of look-ups -----------------------------------------------------------------------------------------


class _Lookup(Protocol):
    async def settlement(
        self, provider: str, log_id: str, parse: Callable[[bytes], Row]
    ) -> LogResult[Row]: ...


async def settle(costs: CostLedger, client: _Lookup, allowance: int) -> int:
    """The look-ups due now, at most `allowance` requests (the client paces them with the provider's lists).
    Returns the requests sent.

    A failed look-up (an error status, a timeout, a refused connection) is judged by the next one. The first
    look-up of a round failing while other ids are due ends the round, as the gateway's failure (cost_up 0; a down
    logs API gets one look-up a poll), and that id goes behind the others, so the next round starts with another.
    Otherwise one more look-up follows: the next due id, or the login check's id (which never exists: a 404 when
    the logs API works). If it answers, the failure was the row's own (its store read failing, a proxy rule for
    that path): that id waits a gap and the round goes on. If it fails too, the gateway is failing. That judging
    look-up is sent even when the failed one used the last of the allowance (one look-up beyond it): without it, a
    lone awaited id failing with the gateway down was looked up alone every round, and cost_up never went to 0.

    A 2xx body the parser refuses is judged the same way until a proper answer (a row, or the gateway's 404) has
    shown this round that the logs API works; after one it is that row's fault at once. It does not end the round
    when others are due (the gateway did answer); a second one in a row (or one that used the last of the
    allowance) is judged by the login check's id: refused too, it is the gateway's failure (an SSO or auth proxy
    answering 200 with its own JSON answers every row so, and taken as each row's fault it kept cost_up at 1 while
    no cost was ever read); the gateway's 404, the rows are ones this release cannot read (each waits a gap, logged
    `settlement_row_unreadable`), however many of them are due. UNREADABLE_RUN different such rows in a row, across
    rounds, with none read between, and no cost is being read at all (a row shape this release does not know):
    cost_up 0 until a row is read, while each row is still looked up and counted at the horizon.
    """
    if not costs.settles:
        return 0
    now = costs.now()
    costs.release()
    sent = 0
    ok: bool | None = None
    first_failure: Failure | None = None
    suspects: list[_Suspect] = []  # failed (or refused) look-ups the next one judges
    provider = costs.provider
    while sent < allowance or suspects:
        # Refused bodies are judged by the login check's id, which is never a row: refused too, everything is
        # answered so (a proxy's JSON); the gateway's 404, the rows are ones this release cannot read.
        probe_next = len(suspects) >= 2 or (sent >= allowance and bool(suspects) and suspects[-1].refused)
        batch_id = None if probe_next else costs.next_due(costs.elapsed())
        probe = False
        if batch_id is None:
            if not suspects and (ok is not None or not costs.probe_wanted()):
                break
            batch_id, probe = costs.probe_id(), True
        log_id = settlement_id(provider, batch_id)
        got = await client.settlement(provider, log_id, parse_row(log_id))
        sent += got.requests
        now = costs.now()
        refused = got.failure is not None and got.row_fault
        if got.failure is not None and (probe or not refused or ok is None):
            others_due = (at := costs.next_at()) is not None and at <= costs.elapsed()
            judged_later = not suspects or (refused and all(s.refused for s in suspects))
            if judged_later and not probe and (ok is not None or not others_due or refused):
                suspects.append(_Suspect(batch_id, got.failure, refused, got.date))
                continue
            # Two failures in a row, the login check failing, or the first look-up failing with others waiting.
            first_failure = first_failure or (suspects[0].failure if suspects else got.failure)
            ok = False
            for suspect in suspects:
                costs.failed(suspect.batch_id, suspect.failure, now, row_fault=False)
            suspects = []
            if not probe:
                costs.failed(batch_id, got.failure, now, row_fault=False)
            break
        # The gateway answered.
        ok = True if ok is None else ok
        for suspect in suspects:
            _row_fault(costs, suspect, now)
        suspects = []
        if got.failure is not None:
            # The gateway answered; the row is unreadable: the look-ups work (cost_up stays), this row waits.
            _row_fault(costs, _Suspect(batch_id, got.failure, True, got.date), now)
        elif not probe:
            if got.row is not None:
                costs.readable()  # a row read (a 404 says the route works, not that rows can be read)
            costs.answered(batch_id, got.row, now, got.date)
    if ok is True and costs.reads_nothing():
        ok = False  # the gateway answers, but no row it sends can be read: no cost is being read
        first_failure = Failure(
            "invalid_response",
            f"the last {len(costs.unreadable_ids)} settlement rows looked up could not be read (the gateway's "
            "row shape?)",
            None,
            0,
        )
    was = costs.up
    costs.round_done(sent, ok)
    costs.release()
    if ok is False and was is not False and first_failure is not None:
        costs.log.warning(
            "settlement_lookup_failed",
            provider=provider,
            reason=first_failure.reason,
            http_status=first_failure.status,
            detail=first_failure.detail,
            consequence="bifrost_batch_exporter_cost_up is 0; settlements are looked up again next poll "
            "(batch metrics are not affected)",
        )
    elif ok is True and was is False:
        costs.log.info("settlement_lookup_recovered", provider=provider)
    return sent


@dataclass(frozen=True, slots=True)
class _Suspect:
    """A look-up that failed (`refused`: its 2xx body was refused) and the gateway's clock when it was answered."""

    batch_id: str
    failure: Failure
    refused: bool
    date: float | None


def _row_fault(costs: CostLedger, suspect: _Suspect, now: float) -> None:
    """The gateway answers other look-ups: `suspect` failed for its row alone, which waits a gap."""
    costs.failed(suspect.batch_id, suspect.failure, now, row_fault=True, gateway_now=suspect.date)
    failure = suspect.failure
    if suspect.refused:
        costs.unreadable(suspect.batch_id)
        costs.log.warning(
            "settlement_row_unreadable",
            provider=costs.provider,
            batch_id=suspect.batch_id[:256],
            detail=failure.detail,
            consequence="looked up again after a gap; counted unpriced (or missing) if still unreadable at "
            "cost_horizon_seconds",
        )
        return
    costs.log.warning(
        "settlement_row_failing",
        provider=costs.provider,
        batch_id=suspect.batch_id[:256],
        reason=failure.reason,
        http_status=failure.status,
        detail=failure.detail,
        consequence="the gateway answers other look-ups: this row is looked up again after a gap; counted "
        "missing if still failing at cost_horizon_seconds",
    )


def never_settled(providers: Iterable[str]) -> list[str]:
    """The configured providers whose batches Bifrost never settles (logged once at start)."""
    return [p for p in providers if p not in SETTLING_PROVIDERS]

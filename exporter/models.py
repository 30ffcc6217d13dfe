"""The gateway's list-page JSON as typed values.

Lenient where Bifrost's versions disagree (field spellings, nulls, omitted zero values, unknown fields and
statuses) and strict only where a wrong shape would make us report nonsense: a body that is not a list object is
rejected as a whole.

Two decoders, one set of rules. Every page goes first through msgspec, straight from the response bytes into the
typed structs below, in strict mode: it accepts only a page whose every value already has its declared JSON type,
and there it gives exactly what the lenient rules give (a poll parses thousands of such items, so this is the path
the CPU budget is about). Anything msgspec refuses (a number sent as a string, a malformed item, NaN, a body that
is not a list page) is parsed again by the pydantic models, which carry the lenient rules: coercion, one malformed
item skipped with the rest kept, and the error text. Both paths return the same msgspec structs.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import msgspec
from msgspec import UNSET, UnsetType
from msgspec.structs import force_setattr
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

ACTIVE_STATUSES: tuple[str, ...] = ("validating", "in_progress", "finalizing", "cancelling")
TERMINAL_STATUSES: tuple[str, ...] = ("completed", "failed", "expired", "cancelled", "ended", "deleted")
KNOWN_STATUSES: tuple[str, ...] = ACTIVE_STATUSES + TERMINAL_STATUSES
# The same statuses for the membership tests of the per-batch loops; the tuples keep the order the exposition uses.
ACTIVE_SET: frozenset[str] = frozenset(ACTIVE_STATUSES)
TERMINAL_SET: frozenset[str] = frozenset(TERMINAL_STATUSES)
REQUEST_COUNT_KINDS: tuple[str, ...] = (
    "total",
    "completed",
    "failed",
    "succeeded",
    "expired",
    "canceled",
    "pending",
)

# Provider spellings that mean one of our statuses; everything else passes through unchanged.
_STATUS_ALIASES = {"canceled": "cancelled", "canceling": "cancelling"}
_MAX_STATUS_LENGTH = 64


# Year 5138: a timestamp beyond this is garbage (or milliseconds sent as seconds) and would skew every age and
# projection computed from it.
MAX_TIMESTAMP = 1e11


MAX_ID_LABEL = 256


def id_label(batch_id: str) -> str:
    """The batch_id label: the id itself up to 256 characters; a longer one cut, with a hash of the whole id at the
    end, so two ids that share their first 256 characters stay two series (Prometheus would keep one of two
    identical ones)."""
    if len(batch_id) <= MAX_ID_LABEL:
        return batch_id
    digest = hashlib.blake2b(batch_id.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return f"{batch_id[: MAX_ID_LABEL - len(digest) - 1]}~{digest}"


def valid_timestamp(ts: float | None) -> float | None:
    """A Unix time we can expose, or None: Go's omitempty zero, negatives, NaN, infinities and absurdly distant
    times mean "not set"."""
    if ts is None or not (0 < ts <= MAX_TIMESTAMP):
        return None
    return ts


def normalize_status(raw: str | None) -> str:
    """Fold the docs' and providers' spellings into the contract's status names.

    A missing status is reported as the literal "unknown" rather than dropped, so the batch still counts.
    The ledger, the store and the snapshot each ask for every batch of every poll, about a handful of distinct
    spellings, so answers are remembered: at most _STATUS_MEMO_SIZE short ones (the strings are the gateway's,
    so neither their number nor their length may grow the memo without bound).
    """
    status = _status_memo.get(raw)
    if status is None:
        status = _normalize_status(raw)
        if len(_status_memo) < _STATUS_MEMO_SIZE and (raw is None or len(raw) <= _MAX_STATUS_LENGTH):
            _status_memo[raw] = status
    return status


def _normalize_status(raw: str | None) -> str:
    if not raw:
        return "unknown"
    status = raw.strip()[:_MAX_STATUS_LENGTH]
    lowered = status.lower()
    if lowered in KNOWN_STATUSES:
        return lowered
    return _STATUS_ALIASES.get(lowered, status)


_STATUS_MEMO_SIZE = 1024
_status_memo: dict[str | None, str] = {}


# --- the typed values every consumer reads (msgspec structs) ------------------------------------------------------
#
# A field with two spellings (completed_at/ended_at, cancelled_at/canceled_at, canceled/cancelled) decodes both;
# __post_init__ keeps the first spelling present, as pydantic's AliasChoices did, even when its value is null, and
# clears the second, so two batches that say the same thing compare equal whichever spelling they used. Readers see
# only the merged field; its declared type says so (UNSET exists only between decoding and __post_init__).
if TYPE_CHECKING:
    _MergedInt: TypeAlias = int | None
    _MergedFloat: TypeAlias = float | None
else:
    _MergedInt = int | UnsetType | None
    _MergedFloat = float | UnsetType | None

# Typed Any so that it can default a field declared (for readers) without UnsetType.
_ABSENT: Any = UNSET


class RequestCounts(msgspec.Struct, frozen=True, gc=False):
    total: int | None = None
    completed: int | None = None
    failed: int | None = None
    succeeded: int | None = None
    expired: int | None = None
    canceled: _MergedInt = _ABSENT
    pending: int | None = None
    _cancelled: int | UnsetType | None = msgspec.field(default=UNSET, name="cancelled")

    def __post_init__(self) -> None:
        if self.canceled is _ABSENT:
            force_setattr(self, "canceled", None if self._cancelled is UNSET else self._cancelled)
        if self._cancelled is not UNSET:
            force_setattr(self, "_cancelled", UNSET)

    def get(self, kind: str) -> int:
        value = getattr(self, kind)
        return int(value) if value is not None else 0

    @classmethod
    def model_validate(cls, obj: Any) -> RequestCounts:
        """Python values (a dict) under the lenient rules; raises pydantic's ValidationError like before."""
        counts = _counts(_LenientCounts.model_validate(obj))
        assert counts is not None
        return counts


class CacheDebug(msgspec.Struct, frozen=True, gc=False):
    cache_hit: bool | None = None
    hit_type: str | None = None
    similarity: float | None = None


class ExtraFields(msgspec.Struct, frozen=True, gc=False):
    latency: float | None = None
    cache_debug: CacheDebug | None = None


class BatchError(msgspec.Struct, frozen=True, gc=False):
    code: str | None = None


class BatchErrors(msgspec.Struct, frozen=True, gc=False):
    data: list[BatchError] | None = None


class Batch(msgspec.Struct, frozen=True, gc=False):
    id: str
    status: str | None = None
    endpoint: str | None = None
    completion_window: str | None = None
    request_counts: RequestCounts | None = None
    created_at: float | None = None
    expires_at: float | None = None
    completed_at: _MergedFloat = _ABSENT
    failed_at: float | None = None
    expired_at: float | None = None
    cancelled_at: _MergedFloat = _ABSENT
    in_progress_at: float | None = None
    finalizing_at: float | None = None
    progress: float | None = None
    metadata: dict[str, Any] | None = None
    errors: BatchErrors | None = None
    extra_fields: ExtraFields | None = None
    _ended_at: float | UnsetType | None = msgspec.field(default=UNSET, name="ended_at")
    _canceled_at: float | UnsetType | None = msgspec.field(default=UNSET, name="canceled_at")

    def __post_init__(self) -> None:
        if self.completed_at is _ABSENT:
            force_setattr(self, "completed_at", None if self._ended_at is UNSET else self._ended_at)
        if self._ended_at is not UNSET:
            force_setattr(self, "_ended_at", UNSET)
        if self.cancelled_at is _ABSENT:
            force_setattr(self, "cancelled_at", None if self._canceled_at is UNSET else self._canceled_at)
        if self._canceled_at is not UNSET:
            force_setattr(self, "_canceled_at", UNSET)

    @classmethod
    def model_validate(cls, obj: Any) -> Batch:
        """Python values (a dict) under the lenient rules; raises pydantic's ValidationError like before."""
        return _batch(_LenientBatch.model_validate(obj))

    @property
    def normalized_status(self) -> str:
        return normalize_status(self.status)

    def terminal_timestamp(self, status: str) -> float | None:
        """The moment the batch reached `status`; Anthropic's `ended` reuses completed_at (Bifrost maps ended_at)."""
        if status in ("completed", "ended"):
            ts = self.completed_at
        elif status == "failed":
            ts = self.failed_at
        elif status == "expired":
            ts = self.expired_at
        elif status == "cancelled":
            ts = self.cancelled_at
        else:
            ts = None
        if ts is None and status in ("failed", "expired", "cancelled"):
            # Bedrock reports every end time as completed_at (its EndTime), whatever the outcome.
            ts = self.completed_at
        return ts if ts is not None and 0 < ts <= MAX_TIMESTAMP else None

    # The four readers below run for every batch of every poll (the ledger, the fold, the early warning), so
    # valid_timestamp's test is written out in each.
    @property
    def created(self) -> float | None:
        ts = self.created_at
        return ts if ts is not None and 0 < ts <= MAX_TIMESTAMP else None

    @property
    def expires(self) -> float | None:
        ts = self.expires_at
        return ts if ts is not None and 0 < ts <= MAX_TIMESTAMP else None

    @property
    def started(self) -> float | None:
        ts = self.in_progress_at
        return ts if ts is not None and 0 < ts <= MAX_TIMESTAMP else None

    @property
    def finalizing(self) -> float | None:
        ts = self.finalizing_at
        return ts if ts is not None and 0 < ts <= MAX_TIMESTAMP else None


class _WirePage(msgspec.Struct, frozen=True, gc=False):
    """The list envelope for the strict fast path."""

    data: list[Batch]
    object: str | None = None
    has_more: bool | None = None
    next_cursor: str | None = None
    first_id: str | None = None
    last_id: str | None = None
    extra_fields: ExtraFields | None = None


class _WireKind(msgspec.Struct, frozen=True, gc=False):
    object: str | None = None


_PAGE_DECODER = msgspec.json.Decoder(_WirePage)
_BATCH_DECODER = msgspec.json.Decoder(Batch)
_KIND_DECODER = msgspec.json.Decoder(_WireKind)
# What makes msgspec refuse a body; the pydantic path then decides (and words the error).
_FAST_PATH_REFUSALS = (msgspec.MsgspecError, RecursionError, ValueError, OverflowError)


# --- the lenient rules (pydantic): the fallback for anything the strict path refuses -------------------------------


class _Lenient(BaseModel):
    """Base for every gateway object: unknown fields are ignored, numbers may arrive as strings."""

    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True, frozen=True)


class _LenientCounts(_Lenient):
    total: int | None = None
    completed: int | None = None
    failed: int | None = None
    succeeded: int | None = None
    expired: int | None = None
    canceled: int | None = Field(default=None, validation_alias=AliasChoices("canceled", "cancelled"))
    pending: int | None = None


class _LenientCacheDebug(_Lenient):
    cache_hit: bool | None = None
    hit_type: str | None = None
    similarity: float | None = None


class _LenientExtraFields(_Lenient):
    latency: float | None = None
    cache_debug: _LenientCacheDebug | None = None


class _LenientBatchError(_Lenient):
    code: str | None = None


class _LenientBatchErrors(_Lenient):
    data: list[_LenientBatchError] | None = None


class _LenientBatch(_Lenient):
    id: str
    status: str | None = None
    endpoint: str | None = None
    completion_window: str | None = None
    request_counts: _LenientCounts | None = None
    created_at: float | None = None
    expires_at: float | None = None
    completed_at: float | None = Field(
        default=None, validation_alias=AliasChoices("completed_at", "ended_at")
    )
    failed_at: float | None = None
    expired_at: float | None = None
    cancelled_at: float | None = Field(
        default=None, validation_alias=AliasChoices("cancelled_at", "canceled_at")
    )
    in_progress_at: float | None = None
    finalizing_at: float | None = None
    progress: float | None = None
    metadata: dict[str, Any] | None = None
    errors: _LenientBatchErrors | None = None
    extra_fields: _LenientExtraFields | None = None


class _LooseListPage(_Lenient):
    """The list envelope with items left unvalidated, for the slow path that checks items one at a time."""

    object: str | None = None
    data: list[Any]
    has_more: bool | None = None
    next_cursor: str | None = None
    first_id: str | None = None
    last_id: str | None = None
    extra_fields: _LenientExtraFields | None = None


class _ListPage(_LooseListPage):
    data: list[_LenientBatch]


class _ObjectKind(_Lenient):
    object: str | None = None


def _counts(m: _LenientCounts | None) -> RequestCounts | None:
    if m is None:
        return None
    return RequestCounts(
        total=m.total,
        completed=m.completed,
        failed=m.failed,
        succeeded=m.succeeded,
        expired=m.expired,
        canceled=m.canceled,
        pending=m.pending,
    )


def _cache_debug(m: _LenientCacheDebug | None) -> CacheDebug | None:
    if m is None:
        return None
    return CacheDebug(cache_hit=m.cache_hit, hit_type=m.hit_type, similarity=m.similarity)


def _extra_fields(m: _LenientExtraFields | None) -> ExtraFields | None:
    if m is None:
        return None
    return ExtraFields(latency=m.latency, cache_debug=_cache_debug(m.cache_debug))


def _batch(m: _LenientBatch) -> Batch:
    errors = None
    if m.errors is not None:
        data = None if m.errors.data is None else [BatchError(code=e.code) for e in m.errors.data]
        errors = BatchErrors(data=data)
    return Batch(
        id=m.id,
        status=m.status,
        endpoint=m.endpoint,
        completion_window=m.completion_window,
        request_counts=_counts(m.request_counts),
        created_at=m.created_at,
        expires_at=m.expires_at,
        completed_at=m.completed_at,
        failed_at=m.failed_at,
        expired_at=m.expired_at,
        cancelled_at=m.cancelled_at,
        in_progress_at=m.in_progress_at,
        finalizing_at=m.finalizing_at,
        progress=m.progress,
        metadata=m.metadata,
        errors=errors,
        extra_fields=_extra_fields(m.extra_fields),
    )


class InvalidResponseError(ValueError):
    """The gateway answered 2xx with something that is not a batch list page."""


@dataclass(frozen=True, slots=True)
class Page:
    batches: tuple[Batch, ...]
    has_more: bool
    next_cursor: str | None
    last_id: str | None
    latency_seconds: float | None
    cache_debug: CacheDebug | None
    skipped_items: int
    first_skip_error: str | None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in err["loc"]) or "body"
    return f"{where}: {err['msg']}"


def parse_page(body: bytes) -> Page:
    """Turn one list response body into a Page, or raise InvalidResponseError saying what was wrong.

    Item values never appear in the error text: raw_request/raw_response may carry prompts or credentials.
    """
    try:
        page = _PAGE_DECODER.decode(body)
    except _FAST_PATH_REFUSALS:
        return _parse_page_leniently(body)
    if page.object is not None and page.object != "list":
        raise InvalidResponseError("not a batch list page (object is not 'list')")
    extra = page.extra_fields
    return Page(
        batches=tuple(page.data),
        has_more=bool(page.has_more),
        next_cursor=page.next_cursor or None,
        last_id=page.last_id or None,
        latency_seconds=latency_seconds(extra),
        cache_debug=extra.cache_debug if extra is not None else None,
        skipped_items=0,
        first_skip_error=None,
    )


_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def _as_go_reads(body: bytes) -> bytes | None:
    """The body as Bifrost's Go decoders read it, or None when that is the body itself.

    Go's encoding/json (and sonic) replace invalid UTF-8 and lone surrogate escapes (`\\ud800`) with U+FFFD
    instead of refusing the document, and Bifrost passes provider values (metadata, ids) through, so one such byte
    in one batch would otherwise fail its whole page, every poll, for as long as the batch is listed. Only bodies
    the decoders refused come here; the cost of the rewrite is theirs alone.
    """
    try:
        text = body.decode("utf-8")
        changed = False
    except UnicodeDecodeError:
        text = body.decode("utf-8", "replace")
        changed = True
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        return None
    changed = _replace_lone_surrogates(doc) or changed
    if not changed:
        return None
    try:
        return json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError):
        return None


def _replace_lone_surrogates(doc: Any) -> bool:
    """Replace, in place, the lone surrogates json.loads leaves in strings (keys included) with U+FFFD, as Go
    does; True when there was one."""
    changed = False
    stack: list[Any] = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            for i, value in enumerate(node):
                if isinstance(value, str) and _SURROGATE_RE.search(value):
                    node[i] = _SURROGATE_RE.sub("\ufffd", value)
                    changed = True
                elif isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(node, dict):
            for key in list(node):
                value = node[key]
                if isinstance(value, str) and _SURROGATE_RE.search(value):
                    node[key] = _SURROGATE_RE.sub("\ufffd", value)
                    changed = True
                elif isinstance(value, dict | list):
                    stack.append(value)
                if _SURROGATE_RE.search(key):
                    node[_SURROGATE_RE.sub("\ufffd", key)] = node.pop(key)
                    changed = True
    return changed


def _parse_page_leniently(body: bytes) -> Page:
    """parse_page for a body the strict path refused: coercion, item-by-item validation, the error text."""
    skipped = 0
    first_skip: str | None = None
    try:
        page: _ListPage | _LooseListPage = _ListPage.model_validate_json(body)
        batches = tuple(_batch(item) for item in page.data)
    except ValidationError as exc:
        try:
            loose = _LooseListPage.model_validate_json(body)
        except ValidationError as envelope_exc:
            as_go = _as_go_reads(body)
            if as_go is not None:
                return _parse_page_leniently(as_go)
            raise InvalidResponseError(f"not a batch list page ({_first_error(envelope_exc)})") from None
        except RecursionError:
            raise InvalidResponseError("not a batch list page (nested too deeply)") from None
        page = loose
        kept: list[Batch] = []
        for item in loose.data:
            try:
                kept.append(_batch(_LenientBatch.model_validate(item)))
            except ValidationError:
                skipped += 1
        batches = tuple(kept)
        first_skip = _first_error(exc)
    except (RecursionError, ValueError) as exc:
        raise InvalidResponseError(f"not a batch list page ({type(exc).__name__})") from None
    if page.object is not None and page.object != "list":
        raise InvalidResponseError("not a batch list page (object is not 'list')")
    extra = _extra_fields(page.extra_fields)
    return Page(
        batches=batches,
        has_more=bool(page.has_more),
        next_cursor=page.next_cursor or None,
        last_id=page.last_id or None,
        latency_seconds=latency_seconds(extra),
        cache_debug=extra.cache_debug if extra is not None else None,
        skipped_items=skipped,
        first_skip_error=first_skip,
    )


# A day: no list call takes longer, and anything beyond (or inf, NaN, negative) would poison the histogram's sum.
MAX_LATENCY_SECONDS = 86_400.0


def latency_seconds(extra: ExtraFields | None) -> float | None:
    """extra_fields.latency (ms) in seconds, or None when absent or not a plausible duration."""
    if extra is None or extra.latency is None:
        return None
    latency = extra.latency / 1000.0
    return latency if 0.0 <= latency <= MAX_LATENCY_SECONDS else None


def error_code(body: bytes) -> tuple[str | None, str | None]:
    """(error.code, error.type) of a Bifrost error body, or Nones when the body is not one."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(doc, dict):
        return None, None
    err = doc.get("error")
    if not isinstance(err, dict):
        return None, doc.get("type") if isinstance(doc.get("type"), str) else None
    code = err.get("code")
    etype = err.get("type") if isinstance(err.get("type"), str) else doc.get("type")
    return (code if isinstance(code, str) else None), (etype if isinstance(etype, str) else None)


def parse_batch(body: bytes) -> Batch:
    """One retrieve response body (`GET /v1/batches/{id}`) as a Batch, or InvalidResponseError saying why not.

    The retrieve object is the list item's type, so the same lenient rules hold; a list envelope is refused
    (a gateway answering the retrieve path with a list would otherwise look like a batch without an id).
    """
    try:
        kind_object = _KIND_DECODER.decode(body).object
        batch = _BATCH_DECODER.decode(body)
    except _FAST_PATH_REFUSALS:
        try:
            kind_object = _ObjectKind.model_validate_json(body).object
            batch = _batch(_LenientBatch.model_validate_json(body))
        except ValidationError as exc:
            as_go = _as_go_reads(body)
            if as_go is not None:
                return parse_batch(as_go)
            raise InvalidResponseError(f"not a batch object ({_first_error(exc)})") from None
        except (RecursionError, ValueError) as exc:
            raise InvalidResponseError(f"not a batch object ({type(exc).__name__})") from None
    if kind_object == "list":
        raise InvalidResponseError("not a batch object (object is 'list')")
    return batch

"""The gateway's list-page JSON as typed values.

Lenient where Bifrost's versions disagree (field spellings, nulls, omitted zero values, unknown fields and
statuses) and strict only where a wrong shape would make us report nonsense: a body that is not a list object is
rejected as a whole. Parsing goes straight from the response bytes through pydantic-core, so the common case never
builds intermediate Python dicts; only a page with a malformed item falls back to item-by-item validation, so one
odd batch cannot hide the rest of a provider's list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

ACTIVE_STATUSES: tuple[str, ...] = ("validating", "in_progress", "finalizing", "cancelling")
TERMINAL_STATUSES: tuple[str, ...] = ("completed", "failed", "expired", "cancelled", "ended", "deleted")
KNOWN_STATUSES: tuple[str, ...] = ACTIVE_STATUSES + TERMINAL_STATUSES
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


def valid_timestamp(ts: float | None) -> float | None:
    """A Unix time we can expose, or None: Go's omitempty zero, negatives, NaN, infinities and absurdly distant
    times mean "not set"."""
    if ts is None or not (0 < ts <= MAX_TIMESTAMP):
        return None
    return ts


def normalize_status(raw: str | None) -> str:
    """Fold the docs' and providers' spellings into the contract's status names.

    A missing status is reported as the literal "unknown" rather than dropped, so the batch still counts.
    """
    if not raw:
        return "unknown"
    status = raw.strip()[:_MAX_STATUS_LENGTH]
    lowered = status.lower()
    if lowered in KNOWN_STATUSES:
        return lowered
    return _STATUS_ALIASES.get(lowered, status)


class _Lenient(BaseModel):
    """Base for every gateway object: unknown fields are ignored, numbers may arrive as strings."""

    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True, frozen=True)


class RequestCounts(_Lenient):
    total: int | None = None
    completed: int | None = None
    failed: int | None = None
    succeeded: int | None = None
    expired: int | None = None
    canceled: int | None = Field(default=None, validation_alias=AliasChoices("canceled", "cancelled"))
    pending: int | None = None

    def get(self, kind: str) -> int:
        value = getattr(self, kind)
        return int(value) if value is not None else 0


class CacheDebug(_Lenient):
    cache_hit: bool | None = None
    hit_type: str | None = None
    similarity: float | None = None


class ExtraFields(_Lenient):
    latency: float | None = None
    cache_debug: CacheDebug | None = None


class BatchError(_Lenient):
    code: str | None = None


class BatchErrors(_Lenient):
    data: list[BatchError] | None = None


class Batch(_Lenient):
    id: str
    status: str | None = None
    endpoint: str | None = None
    completion_window: str | None = None
    request_counts: RequestCounts | None = None
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
    errors: BatchErrors | None = None
    extra_fields: ExtraFields | None = None

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
        return valid_timestamp(ts)

    @property
    def created(self) -> float | None:
        return valid_timestamp(self.created_at)

    @property
    def expires(self) -> float | None:
        return valid_timestamp(self.expires_at)

    @property
    def started(self) -> float | None:
        return valid_timestamp(self.in_progress_at)

    @property
    def finalizing(self) -> float | None:
        return valid_timestamp(self.finalizing_at)


class _LooseListPage(_Lenient):
    """The list envelope with items left unvalidated, for the slow path that checks items one at a time."""

    object: str | None = None
    data: list[Any]
    has_more: bool | None = None
    next_cursor: str | None = None
    first_id: str | None = None
    last_id: str | None = None
    extra_fields: ExtraFields | None = None


class _ListPage(_LooseListPage):
    data: list[Batch]


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
    skipped = 0
    first_skip: str | None = None
    try:
        page: _ListPage | _LooseListPage = _ListPage.model_validate_json(body)
        batches = tuple(page.data)
    except ValidationError as exc:
        try:
            loose = _LooseListPage.model_validate_json(body)
        except ValidationError as envelope_exc:
            raise InvalidResponseError(f"not a batch list page ({_first_error(envelope_exc)})") from None
        except RecursionError:
            raise InvalidResponseError("not a batch list page (nested too deeply)") from None
        page = loose
        kept: list[Batch] = []
        for item in loose.data:
            try:
                kept.append(Batch.model_validate(item))
            except ValidationError:
                skipped += 1
        batches = tuple(kept)
        first_skip = _first_error(exc)
    except (RecursionError, ValueError) as exc:
        raise InvalidResponseError(f"not a batch list page ({type(exc).__name__})") from None
    if page.object is not None and page.object != "list":
        raise InvalidResponseError("not a batch list page (object is not 'list')")
    extra = page.extra_fields
    latency = latency_seconds(extra)
    return Page(
        batches=batches,
        has_more=bool(page.has_more),
        next_cursor=page.next_cursor or None,
        last_id=page.last_id or None,
        latency_seconds=latency,
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


class _ObjectKind(_Lenient):
    object: str | None = None


def parse_batch(body: bytes) -> Batch:
    """One retrieve response body (`GET /v1/batches/{id}`) as a Batch, or InvalidResponseError saying why not.

    The retrieve object is the list item's type, so the same lenient rules hold; a list envelope is refused
    (a gateway answering the retrieve path with a list would otherwise look like a batch without an id).
    """
    try:
        kind = _ObjectKind.model_validate_json(body)
        batch = Batch.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidResponseError(f"not a batch object ({_first_error(exc)})") from None
    except (RecursionError, ValueError) as exc:
        raise InvalidResponseError(f"not a batch object ({type(exc).__name__})") from None
    if kind.object == "list":
        raise InvalidResponseError("not a batch object (object is 'list')")
    return batch

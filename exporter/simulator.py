"""A faithful fake Bifrost gateway for the batch API.

The exporter's ``--demo`` mode, the test suites and the benchmarks all need a gateway that behaves like the
real one, including its quirks (key-by-key cursor paging, omitempty fields, flavour-specific batch shapes,
upstream defects), without network access or a Go toolchain. Everything is stdlib so the simulator runs
wherever the package runs, and time comes from an injected clock so lifecycles are deterministic under test.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import bisect
import dataclasses
import heapq
import itertools
import json
import random
import signal
import socket
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, Literal, NamedTuple, TypeVar, cast
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "ACTIVE_STATUSES",
    "DEFAULT_PROVIDERS",
    "FAULTS",
    "TERMINAL_STATUSES",
    "Clock",
    "ProviderSpec",
    "Simulator",
    "decode_cursor",
    "encode_cursor",
    "generate_batches",
    "list_page_bytes",
    "main",
]

Clock = Callable[[], float]
_T = TypeVar("_T")
Style = Literal["cursor", "legacy"]
Flavor = Literal["openai", "azure", "anthropic", "bedrock", "gemini", "vertex"]

DAY = 86_400
MAX_LIMIT = 1000

ACTIVE_STATUSES = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
TERMINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled", "canceled", "ended", "deleted"})

FAULTS = frozenset(
    {
        "server_error",
        "bad_gateway",
        "rate_limit",
        "slow",
        "malformed_json",
        "html",
        "not_list",
        "cursor_loop",
        "repeat_page",
        "no_cursor",
        "auth",
        "forbidden",
        "unsupported",
    }
)

# Which timestamp a status sets. `ended` is Anthropic's finished state: Bifrost maps ended_at to completed_at.
_TIMESTAMP_FIELD: dict[str, str] = {
    "in_progress": "in_progress_at",
    "finalizing": "finalizing_at",
    "completed": "completed_at",
    "failed": "failed_at",
    "expired": "expired_at",
    "cancelling": "cancelling_at",
    "cancelled": "cancelled_at",
    "canceled": "cancelled_at",
    "ended": "completed_at",
}
_TIMESTAMP_FIELDS = (
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)
_CANONICAL_TERMINAL = frozenset({"completed", "failed", "expired", "cancelled", "deleted"})

_MODELS: dict[str, tuple[str, str]] = {
    "openai": ("gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
    "azure": ("gpt-4o", "gpt-4o-prod-eastus"),
    "anthropic": ("claude-3-5-haiku-latest", "claude-3-5-haiku-20241022"),
    "bedrock": ("claude-3-haiku", "anthropic.claude-3-haiku-20240307-v1:0"),
    "gemini": ("gemini-1.5-flash", "gemini-1.5-flash-002"),
    "vertex": ("gemini-1.5-pro", "gemini-1.5-pro-002"),
}
_BEDROCK_ARN = "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/"
_MISSING_PROVIDER_BODY = (
    b'{"is_bifrost_error":false,"status_code":400,"error":{"message":"provider query parameter is required"}}'
)
_BAD_GATEWAY_HTML = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
_ERROR_PAGE_HTML = (
    b"<!DOCTYPE html><html><head><title>Bifrost</title></head>"
    b"<body><h1>Something went wrong</h1><p>Please try again later.</p></body></html>"
)


@dataclass(frozen=True)
class ProviderSpec:
    """How one provider behaves behind the gateway; the two styles mirror the two generations of Bifrost."""

    name: str
    style: Style = "cursor"
    flavor: Flavor = "openai"
    keys: int = 1
    supported: bool = True
    page_delay: float = 0.0
    default_limit: int = 20
    # Keys the lifecycle (and add_batch without api_key) never fill, so an empty key is always paged over.
    empty_keys: tuple[int, ...] = ()


DEFAULT_PROVIDERS: tuple[ProviderSpec, ...] = (
    ProviderSpec("openai", style="cursor", flavor="openai", keys=2, empty_keys=(0,)),
    ProviderSpec("anthropic", style="cursor", flavor="anthropic"),
    ProviderSpec("azure", style="legacy", flavor="azure"),
    ProviderSpec("bedrock", style="cursor", flavor="bedrock"),
    ProviderSpec("gemini", style="cursor", flavor="gemini"),
    ProviderSpec("vertex", style="legacy", flavor="vertex"),
    ProviderSpec("cohere", supported=False),
    ProviderSpec("mistral", supported=False),
)


# ------------------------------------------------------------
# Cursor encoding


def encode_cursor(key: int, after: str | None, nonce: int | None = None) -> str:
    """Opaque to clients on purpose: standard base64 (with '+', '/', '=') so a client that forgets to
    URL-encode it breaks here the way it would against the real gateway."""
    obj: dict[str, Any] = {"k": key}
    if after is not None:
        obj["a"] = after
    if nonce is not None:
        obj["n"] = nonce
    return base64.b64encode(json.dumps(obj, separators=(",", ":")).encode()).decode("ascii")


def decode_cursor(value: str) -> tuple[int, str | None] | None:
    """None for anything that is not one of our cursors, so the caller can fall back to a raw batch id."""
    try:
        raw = base64.b64decode(value, validate=True)
        obj = json.loads(raw)
    except (binascii.Error, ValueError):
        return None
    if not isinstance(obj, dict):
        return None
    key = obj.get("k")
    after = obj.get("a")
    if not isinstance(key, int) or isinstance(key, bool) or key < 0:
        return None
    if after is not None and not isinstance(after, str):
        return None
    return key, after


# ------------------------------------------------------------
# Batch construction (shared by the live store and generate_batches)


class _Step(NamedTuple):
    """One scheduled change of a batch; counts are absolute so a step can be applied without history."""

    t: float
    status: str | None  # canonical status, spelled per flavour when applied; None = progress only
    completed: int
    failed: int
    canceled: int = 0
    expired: int = 0


def _hex(rng: random.Random, n: int) -> str:
    return f"{rng.getrandbits(4 * n):0{n}x}"


def _new_id(rng: random.Random, flavor: str) -> str:
    if flavor == "anthropic":
        return "msgbatch_" + _hex(rng, 24)
    if flavor == "gemini":
        return "batches/" + _hex(rng, 20)
    if flavor == "bedrock":
        return _BEDROCK_ARN + _hex(rng, 12)
    if flavor == "azure":
        h = _hex(rng, 32)
        return f"batch_{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    if flavor == "vertex":
        return str(rng.randrange(10**17, 10**18))
    return "batch_" + _hex(rng, 24)


def _spell(flavor: str, canonical: str) -> str:
    """Anthropic only ever reports `ended`; Azure's docs spell `canceled`: clients must cope with both."""
    if flavor == "anthropic" and canonical in _CANONICAL_TERMINAL:
        return "ended"
    if flavor == "azure" and canonical == "cancelled":
        return "canceled"
    return canonical


def _counts(
    flavor: str, total: int, completed: int, failed: int, canceled: int = 0, expired: int = 0, *, done: bool
) -> dict[str, int]:
    counts = {"total": total, "completed": completed, "failed": failed}
    if flavor == "anthropic":
        pending = 0 if done else max(0, total - completed - failed - canceled - expired)
        for name, value in (("succeeded", completed), ("expired", expired), ("canceled", canceled)):
            if value:
                counts[name] = value
        if pending:
            counts["pending"] = pending
    return counts


def _cache_debug(rng: random.Random, provider: str, flavor: str) -> dict[str, Any]:
    model = _MODELS.get(flavor, _MODELS["openai"])[0]
    hit = rng.random() < 0.55
    hit_type: str | None = ("semantic" if rng.random() < 0.5 else "direct") if hit else None
    debug: dict[str, Any] = {
        "cache_hit": hit,
        "cache_id": _hex(rng, 8) + "-" + _hex(rng, 4) + "-" + _hex(rng, 12),
        "hit_type": hit_type,
        "requested_provider": provider,
        "requested_model": model,
        "provider_used": provider,
        "model_used": model,
        "input_tokens": rng.randint(20, 4000),
    }
    if hit_type == "semantic":
        debug["threshold"] = 0.8
        debug["similarity"] = round(rng.uniform(0.8, 1.0), 4)
    return debug


def _jitter(rng: random.Random, latency_ms: int) -> int:
    return max(1, int(rng.gauss(latency_ms, latency_ms * 0.25)))


def _item_extra_fields(
    rng: random.Random, provider: str, flavor: str, style: str, latency_ms: int, cache_debug: bool
) -> dict[str, Any]:
    """Newer gateways put only latency on items; older ones fill them fully, sometimes with cache_debug."""
    latency = _jitter(rng, latency_ms)
    if style == "cursor":
        return {"latency": latency}
    requested, deployment = _MODELS.get(flavor, _MODELS["openai"])
    extra: dict[str, Any] = {
        "request_type": "batch_list",
        "provider": provider,
        "model_requested": requested,
        "model_deployment": deployment,
        "latency": latency,
    }
    if cache_debug and rng.random() < 0.25:
        extra["cache_debug"] = _cache_debug(rng, provider, flavor)
    return extra


def _skeleton(
    rng: random.Random,
    *,
    batch_id: str,
    provider: str,
    flavor: str,
    style: str,
    created: int,
    total: int,
    status: str,
    latency_ms: int,
    cache_debug: bool,
) -> dict[str, Any]:
    """A batch as first listed, keys in Bifrost's Go struct order so the JSON reads like the real thing
    (timestamps omitted by newer flavours are appended when they are first set, as key order is not semantic)."""
    suffix = _hex(rng, 24)
    batch: dict[str, Any] = {
        "id": batch_id,
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "input_file_id": "file-" + suffix,
        "completion_window": "24h",
        "status": status,
        "request_counts": _counts(flavor, total, 0, 0, done=False),
    }
    roll = rng.random()
    if roll < 0.5:
        batch["metadata"] = {
            "team": rng.choice(["search", "ads", "support", "research"]),
            "job": "nightly-eval",
        }
    elif roll < 0.75:
        batch["metadata"] = None
    batch["created_at"] = created
    batch["expires_at"] = created + DAY
    # Older (legacy, OpenAI-shaped) flavours serialise unset pointers as null; newer ones omit them.
    nulls = flavor in ("openai", "azure")
    if nulls:
        for name in _TIMESTAMP_FIELDS:
            batch[name] = None
        batch["output_file_id"] = None
        batch["error_file_id"] = None
        batch["errors"] = None
    if status == "in_progress":
        batch["in_progress_at"] = created
    if flavor == "anthropic":
        batch["processing_status"] = "in_progress"
        batch["results_url"] = None
    elif flavor == "gemini":
        batch["operation_name"] = batch_id
        batch["done"] = False
        batch["progress"] = 0
    elif flavor == "vertex":
        batch["display_name"] = f"{provider}-batch-{suffix[:6]}"
        batch["input_blob"] = f"gs://bifrost-sim/{provider}/input-{suffix[:12]}.jsonl"
        batch["output_blob"] = None
    batch["extra_fields"] = _item_extra_fields(rng, provider, flavor, style, latency_ms, cache_debug)
    return batch


def _apply_flavor_state(batch: dict[str, Any], flavor: str, canonical: str) -> None:
    """Side fields that move with the status (done/progress, processing_status, output locations, errors)."""
    terminal = canonical in _CANONICAL_TERMINAL or canonical in ("ended", "canceled")
    bid = str(batch.get("id", ""))
    tail = bid.rsplit("/", 1)[-1][-24:]
    if flavor == "anthropic":
        batch["processing_status"] = (
            "ended" if terminal else ("canceling" if canonical == "cancelling" else "in_progress")
        )
        if terminal:
            batch["results_url"] = f"https://api.anthropic.com/v1/messages/batches/{bid}/results"
        return
    if flavor == "gemini":
        batch["done"] = terminal
    if canonical == "completed":
        if flavor == "vertex":
            batch["output_blob"] = f"gs://bifrost-sim/output/{tail}/"
        else:
            batch["output_file_id"] = "file-out-" + tail
    elif canonical == "failed":
        batch["error_file_id"] = "file-err-" + tail
        batch["errors"] = {
            "object": "list",
            "data": [
                {
                    "code": "invalid_request",
                    "message": "The batch failed: too many requests in the input file were invalid.",
                    "param": None,
                    "line": 1,
                }
            ],
        }


def _apply_step(batch: dict[str, Any], flavor: str, step: _Step, offset: float = 0.0) -> None:
    if step.status is not None:
        batch["status"] = _spell(flavor, step.status)
        ts_field = _TIMESTAMP_FIELD.get(step.status)
        if flavor == "anthropic" and step.status in _CANONICAL_TERMINAL:
            ts_field = "completed_at"
        if ts_field is not None:
            batch[ts_field] = int(step.t + offset)
        _apply_flavor_state(batch, flavor, step.status)
    counts = batch.get("request_counts") or {}
    total = int(counts.get("total", 0))
    done = step.status in _CANONICAL_TERMINAL or batch.get("status") in TERMINAL_STATUSES
    batch["request_counts"] = _counts(
        flavor, total, step.completed, step.failed, step.canceled, step.expired, done=done
    )
    if flavor == "gemini":
        if batch.get("status") == "completed":
            batch["progress"] = 100
        elif total:
            batch["progress"] = min(100, (step.completed + step.failed) * 100 // total)


def _plan(rng: random.Random, flavor: str, total: int, scale: float) -> tuple[str, list[_Step]]:
    """A whole life drawn up front (offsets from creation), so state depends only on the clock, not on how
    often anyone looks. Step times are tens of seconds at scale 1 so a demo shows movement within a minute."""
    outcomes = ["completed", "failed", "expired", "cancelled"]
    weights = [62.0, 12.0, 9.0, 12.0]
    if flavor == "gemini":
        outcomes.append("deleted")
        weights.append(6.0)
    outcome = rng.choices(outcomes, weights)[0]
    steps: list[_Step] = []
    t = 0.0
    initial = "in_progress" if flavor == "anthropic" else "validating"
    if flavor == "vertex" and rng.random() < 0.3:
        # Vertex passes unknown provider states through unchanged; clients must not choke on them.
        initial = "JOB_STATE_QUEUED"
        t += rng.uniform(10, 40) * scale
        steps.append(_Step(t, "validating", 0, 0))
    if flavor != "anthropic":
        if outcome == "failed" and rng.random() < 0.3:
            t += rng.uniform(5, 20) * scale
            steps.append(_Step(t, "failed", 0, total))
            return initial, steps
        t += rng.uniform(5, 20) * scale
        steps.append(_Step(t, "in_progress", 0, 0))
    run = rng.uniform(30, 120) * scale
    end_fraction = 1.0 if outcome == "completed" else rng.uniform(0.1, 0.9)
    fail_rate = rng.uniform(0.3, 0.9) if outcome == "failed" else rng.uniform(0.0, 0.03)
    n = max(1, int(run * end_fraction / (10 * scale)))
    start = t
    completed = failed = 0
    for i in range(1, n + 1):
        frac = end_fraction * i / n
        processed = int(total * frac)
        failed = int(processed * fail_rate)
        completed = processed - failed
        steps.append(_Step(start + run * frac, None, completed, failed))
    t = start + run * end_fraction
    rest = total - completed - failed
    anthropic = flavor == "anthropic"
    if outcome == "completed":
        if not anthropic:
            t += rng.uniform(1, 3) * scale
            steps.append(_Step(t, "finalizing", completed, failed))
        t += rng.uniform(5, 15) * scale
        steps.append(_Step(t, "completed", completed, failed))
    elif outcome == "failed":
        t += rng.uniform(1, 5) * scale
        steps.append(_Step(t, "failed", completed, max(1, failed + rest)))
    elif outcome == "expired":
        t += rng.uniform(5, 30) * scale
        steps.append(_Step(t, "expired", completed, failed, 0, rest if anthropic else 0))
    elif outcome == "cancelled":
        t += rng.uniform(1, 5) * scale
        steps.append(_Step(t, "cancelling", completed, failed))
        t += rng.uniform(5, 20) * scale
        steps.append(_Step(t, "cancelled", completed, failed, rest if anthropic else 0, 0))
    else:  # deleted (Gemini): terminal, but no terminal timestamp at all
        t += rng.uniform(1, 10) * scale
        steps.append(_Step(t, "deleted", completed, failed))
    return initial, steps


_TOTALS = (10, 50, 100, 100, 250, 500, 1000, 2000, 5000, 10000)


def _initial_timing(rng: random.Random, now: float, steps: list[_Step]) -> float:
    """Recent batches are still moving; older ones ended a while ago (terminal timestamps in the past)."""
    recent = rng.random() < 0.4
    length = steps[-1].t if steps else 0.0
    created = now - rng.uniform(0, 100) if recent else now - length - rng.uniform(60, 6 * 3600)
    return created


def generate_batches(
    provider: str,
    n: int,
    *,
    seed: int = 0,
    now: float | None = None,
    flavor: str = "openai",
    style: Style = "legacy",
    latency_ms: int = 120,
    cache_debug: bool = True,
) -> list[dict[str, Any]]:
    """Realistic static batches for benchmarks and fixtures: the same shapes and status mix the live simulator
    produces, without the server. Legacy style by default so items carry full extra_fields (some with
    cache_debug)."""
    rng = random.Random(f"{seed}:{provider}:generate")
    at = time.time() if now is None else now
    out: list[tuple[tuple[int, int], dict[str, Any]]] = []
    seen: set[str] = set()
    for seq in range(n):
        total = rng.choice(_TOTALS)
        scale = 1.0 if rng.random() < 0.4 else rng.uniform(5, 300)
        initial, steps = _plan(rng, flavor, total, scale)
        created = _initial_timing(rng, at, steps)
        bid = _new_id(rng, flavor)
        while bid in seen:
            bid = _new_id(rng, flavor)
        seen.add(bid)
        batch = _skeleton(
            rng,
            batch_id=bid,
            provider=provider,
            flavor=flavor,
            style=style,
            created=int(created),
            total=total,
            status=initial,
            latency_ms=latency_ms,
            cache_debug=cache_debug,
        )
        due = [step for step in steps if created + step.t <= at]
        for i, step in enumerate(due):
            # Counts are absolute, so only status changes and the last step matter: cheaper at 100k.
            if step.status is not None or i == len(due) - 1:
                _apply_step(batch, flavor, step, created)
        out.append(((int(created), seq), batch))
    out.sort(key=lambda pair: pair[0], reverse=True)
    return [batch for _, batch in out]


# ------------------------------------------------------------
# Response bodies


def _dumps(obj: Any) -> bytes:
    """Compact like Go's encoding/json, which is what the exporter parses in production."""
    return json.dumps(obj, separators=(",", ":")).encode()


def _list_body(
    data: Sequence[dict[str, Any]],
    *,
    has_more: bool,
    next_cursor: str | None,
    first_id: str | None,
    last_id: str | None,
    extra_fields: dict[str, Any],
) -> bytes:
    body: dict[str, Any] = {"object": "list", "data": data}
    # Go omitempty: false, "" and nil disappear. A missing has_more is the classic trap for clients.
    if first_id:
        body["first_id"] = first_id
    if last_id:
        body["last_id"] = last_id
    if has_more:
        body["has_more"] = True
    if next_cursor:
        body["next_cursor"] = next_cursor
    body["extra_fields"] = extra_fields
    return _dumps(body)


def _top_extra_fields(provider: str, latency: int, cache_debug: dict[str, Any] | None) -> dict[str, Any]:
    extra: dict[str, Any] = {"request_type": "batch_list", "provider": provider, "latency": latency}
    if cache_debug is not None:
        extra["cache_debug"] = cache_debug
    return extra


def list_page_bytes(
    batches: Sequence[dict[str, Any]],
    *,
    has_more: bool = False,
    next_cursor: str | None = None,
    provider: str = "openai",
    latency_ms: int = 120,
    cache_debug: dict[str, Any] | None = None,
) -> bytes:
    """Exactly the server's encoding, so parser benchmarks measure the bytes the exporter really sees."""
    data = list(batches)
    return _list_body(
        data,
        has_more=has_more,
        next_cursor=next_cursor,
        first_id=str(data[0].get("id", "")) if data else None,
        last_id=str(data[-1].get("id", "")) if data else None,
        extra_fields=_top_extra_fields(provider, latency_ms, cache_debug),
    )


def _error(
    status: int,
    message: str,
    *,
    err_type: str | None = None,
    code: str | None = None,
    top_type: str | None = None,
    is_bifrost_error: bool = False,
    extra_fields: dict[str, Any] | None = None,
) -> bytes:
    error: dict[str, Any] = {}
    if err_type is not None:
        error["type"] = err_type
    if code is not None:
        error["code"] = code
    error["message"] = message
    body: dict[str, Any] = {}
    if top_type is not None:
        body["type"] = top_type
    body["is_bifrost_error"] = is_bifrost_error
    body["status_code"] = status
    body["error"] = error
    if extra_fields is not None:
        body["extra_fields"] = extra_fields
    return _dumps(body)


def _unauthorized(err_type: str | None) -> bytes:
    return _error(401, "Unauthorized", err_type=err_type)


def _unsupported(provider: str, request_type: str) -> bytes:
    return _error(
        400,
        f"{request_type} is not supported by {provider} provider",
        code="unsupported_operation",
        extra_fields={"provider": provider, "request_type": request_type},
    )


# ------------------------------------------------------------
# The store


@dataclass
class _Meta:
    key: int
    sort_key: tuple[int, int]  # (-created_at, -seq): ascending order is newest first
    gen: int = 0  # bumped when the plan is replaced, so stale heap events are ignored
    plan: list[_Step] | None = None


@dataclass
class _Fault:
    name: str
    remaining: int | None
    params: dict[str, Any]


class _Page(NamedTuple):
    data: list[dict[str, Any]]
    has_more: bool
    next_cursor: str | None
    last_id: str | None


class _ProviderState:
    """One provider's batches plus the indexes that keep paging O(page) even with 100k batches."""

    def __init__(self, spec: ProviderSpec, seed: int) -> None:
        self.spec = spec
        self.rng = random.Random(f"{seed}:{spec.name}:lifecycle")
        self.manual_rng = random.Random(f"{seed}:{spec.name}:manual")
        self.latency_rng = random.Random(f"{seed}:{spec.name}:latency")
        self.batches: dict[str, dict[str, Any]] = {}
        self.meta: dict[str, _Meta] = {}
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
        self, batch: dict[str, Any], key: int, seq: int, plan: list[_Step] | None, heap_seq: int
    ) -> None:
        bid = str(batch["id"])
        created = batch.get("created_at")
        created_i = int(created) if isinstance(created, int | float) else 0
        meta = _Meta(key=key, sort_key=(-created_i, -seq), plan=plan)
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

    def slice(self, key: int, start: int, limit: int) -> _Page:
        """One key's page the way the real gateway builds it: never spanning keys, so boundaries give short or
        empty pages that still say has_more."""
        ids = self.order[key]
        chunk = ids[start : start + limit]
        data = [self.batches[bid] for bid in chunk]
        last = chunk[-1] if chunk else None
        if self.spec.style == "legacy":
            return _Page(data, start + limit < len(ids), None, last)
        if start + limit < len(ids):
            return _Page(data, True, encode_cursor(key, last), last)
        if key + 1 < self.lists:
            return _Page(data, True, encode_cursor(key + 1, None), last)
        return _Page(data, False, None, last)


# ------------------------------------------------------------
# HTTP plumbing

_Response = tuple[int, bytes, str, dict[str, str]]
_JSON = "application/json"
_HTML = "text/html; charset=utf-8"


def _json(status: int, body: bytes, headers: dict[str, str] | None = None) -> _Response:
    return status, body, _JSON, headers or {}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    simulator: Simulator


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bifrost-sim/1.0"
    sys_version = ""
    # Buffered writes (flushed by handle_one_request) send headers and body together; with TCP_NODELAY this
    # avoids the Nagle/delayed-ACK stall that otherwise costs ~40 ms per keep-alive request.
    wbufsize = 64 * 1024

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _serve(self, method: str) -> None:
        server = cast(_Server, self.server)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        status, payload, content_type, headers = server.simulator._dispatch(
            method, self.path, {k.lower(): v for k, v in self.headers.items()}, body
        )
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(payload)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: tests and benchmarks would drown in access logs."""


_AUTH_HEADERS = ("authorization", "x-bf-vk", "x-api-key", "api-key")


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
        cache_debug: bool = True,
        max_batches: int = 300,
    ) -> None:
        self._clock = clock
        self._seed = seed
        self._lifecycle = lifecycle
        self._initial_batches = initial_batches
        self._virtual_key = virtual_key
        self._basic = (
            None
            if basic_auth is None
            else "Basic " + base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode("ascii")
        )
        self._latency_ms = latency_ms
        self._cache_debug = cache_debug
        self._max_batches = max_batches
        self._lock = threading.RLock()
        self._seq = itertools.count()
        self._providers: dict[str, _ProviderState] = {}
        for spec in DEFAULT_PROVIDERS if providers is None else providers:
            self._providers[spec.name] = _ProviderState(spec, seed)
        self._faults: dict[str | None, _Fault] = {}
        self._log: deque[dict[str, Any]] = deque(maxlen=10_000)
        self._list_requests_total = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None
        if lifecycle:
            now = self._clock()
            with self._lock:
                for state in self._providers.values():
                    if state.spec.supported:
                        self._seed_provider(state, initial_batches, now)
                        state.next_create = now + state.rng.uniform(10, 30)
                    self._advance(state, now)

    # ---- server lifecycle --------------------

    def start(
        self, host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None
    ) -> Simulator:
        """Serve in a daemon thread; with `ssl_context` the gateway speaks HTTPS (handshakes happen lazily in the
        per-connection threads, so one stalled client cannot block accepting others)."""
        if self._server is not None:
            return self
        server = _Server((host, port), _Handler)
        server.simulator = self
        if ssl_context is not None:
            server.socket = ssl_context.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._server = server
        bound_port = int(server.server_address[1])
        shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
        scheme = "https" if ssl_context is not None else "http"
        self._url = f"{scheme}://{shown}:{bound_port}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="bifrost-sim", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("simulator is not started")
        return self._url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def providers(self) -> tuple[ProviderSpec, ...]:
        return tuple(state.spec for state in self._providers.values())

    # ---- store API --------------------

    def _state(self, provider: str) -> _ProviderState:
        try:
            return self._providers[provider]
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
        **fields: Any,
    ) -> dict[str, Any]:
        """Exact scenarios for tests: the status is stored as spelled, timestamps follow it, `fields` win."""
        with self._lock:
            state = self._state(provider)
            batch = self._build_manual(
                state, status, created_at, expires_at, request_counts, batch_id, dict(fields)
            )
            key = state.next_key() if api_key is None else api_key
            if not 0 <= key < max(1, state.spec.keys):
                raise ValueError(f"api_key {key} out of range for {provider} ({state.spec.keys} keys)")
            seq = next(self._seq)
            state.insert(batch, key, seq, None, seq)
            return _copy(batch)

    def load_batches(self, provider: str, batches: Iterable[dict[str, Any]]) -> int:
        """Bulk insert of ready-made batch dicts (e.g. from generate_batches) for big benchmark stores."""
        copies = _copy(list(batches))
        if any("id" not in batch for batch in copies):
            raise ValueError("every batch needs an id")
        with self._lock:
            state = self._state(provider)
            for batch in copies:
                seq = next(self._seq)
                state.insert(batch, state.next_key(), seq, None, seq)
        return len(copies)

    def _build_manual(
        self,
        state: _ProviderState,
        status: str,
        created_at: int | None,
        expires_at: int | None,
        request_counts: dict[str, int] | None,
        batch_id: str | None,
        fields: dict[str, Any],
    ) -> dict[str, Any]:
        spec = state.spec
        now = int(self._clock())
        created = now if created_at is None else int(created_at)
        bid = batch_id if batch_id is not None else fields.get("id")
        if bid is None:
            bid = _new_id(state.manual_rng, spec.flavor)
            while bid in state.batches:
                bid = _new_id(state.manual_rng, spec.flavor)
        batch = _skeleton(
            state.manual_rng,
            batch_id=str(bid),
            provider=spec.name,
            flavor=spec.flavor,
            style=spec.style,
            created=created,
            total=100,
            status=status,
            latency_ms=self._latency_ms,
            cache_debug=False,
        )
        batch["status"] = status
        if expires_at is not None:
            batch["expires_at"] = int(expires_at)
        if status not in ("validating", "JOB_STATE_QUEUED"):
            batch["in_progress_at"] = created
        ts_field = _TIMESTAMP_FIELD.get(status)
        if ts_field is not None and ts_field != "in_progress_at":
            batch[ts_field] = now
        if status in ("cancelled", "canceled"):
            batch["cancelling_at"] = now
        canonical = "cancelled" if status == "canceled" else status
        _apply_flavor_state(batch, spec.flavor, canonical)
        if request_counts is not None:
            batch["request_counts"] = dict(request_counts)
        else:
            batch["request_counts"] = _default_counts(spec.flavor, status)
        if spec.flavor == "gemini":
            rc = batch["request_counts"]
            total = int(rc.get("total", 0)) or 1
            batch["progress"] = (
                100
                if status == "completed"
                else (rc.get("completed", 0) + rc.get("failed", 0)) * 100 // total
            )
        batch.update(_copy(fields))
        batch["id"] = str(bid)
        return batch

    def set_status(self, provider: str, batch_id: str, status: str, at: int | None = None) -> None:
        """Takes the batch out of its lifecycle plan: a test that sets a status means it to stay."""
        with self._lock:
            state = self._state(provider)
            batch = state.batches.get(batch_id)
            if batch is None:
                raise KeyError(batch_id)
            self._set_status_locked(state, batch, status, int(self._clock()) if at is None else int(at))

    def _set_status_locked(self, state: _ProviderState, batch: dict[str, Any], status: str, at: int) -> None:
        meta = state.meta[str(batch["id"])]
        meta.gen += 1
        meta.plan = None
        batch["status"] = status
        ts_field = _TIMESTAMP_FIELD.get(status)
        if ts_field is not None:
            batch[ts_field] = at
        _apply_flavor_state(batch, state.spec.flavor, "cancelled" if status == "canceled" else status)
        if state.spec.flavor == "gemini" and status == "completed":
            batch["progress"] = 100

    def batches(self, provider: str) -> list[dict[str, Any]]:
        """Newest first across all keys (a paging walk visits keys one at a time, so its order may differ)."""
        with self._lock:
            state = self._state(provider)
            ordered = sorted(state.meta.items(), key=lambda item: item[1].sort_key)
            return [_copy(state.batches[bid]) for bid, _ in ordered]

    def clear(self, provider: str | None = None) -> None:
        with self._lock:
            targets = self._providers.values() if provider is None else [self._state(provider)]
            for state in targets:
                state.clear()

    def populate(self, n: int | None = None, *, provider: str | None = None) -> None:
        """The start-up mix again (e.g. for a static `--no-lifecycle` demo); moves if the lifecycle is on."""
        now = self._clock()
        with self._lock:
            targets = self._providers.values() if provider is None else [self._state(provider)]
            for state in targets:
                if state.spec.supported:
                    self._seed_provider(state, self._initial_batches if n is None else n, now)
                    self._advance(state, now)

    # ---- faults --------------------

    def set_fault(
        self, fault: str | None, *, provider: str | None = None, times: int | None = None, **params: Any
    ) -> None:
        """A provider's own fault wins over the global one; `set_fault(None)` clears every fault."""
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {sorted(FAULTS)}")
        if times is not None and times < 0:
            raise ValueError("times must be >= 0")
        with self._lock:
            if fault is None or times == 0:
                if provider is None and fault is None:
                    self._faults.clear()
                else:
                    self._faults.pop(provider, None)
                return
            self._faults[provider] = _Fault(fault, times, dict(params))

    def fault(self, provider: str | None = None) -> str | None:
        with self._lock:
            found = self._faults.get(provider)
            return None if found is None else found.name

    def _take_fault(self, provider: str) -> _Fault | None:
        found = self._faults.get(provider)
        scope: str | None = provider
        if found is None:
            found, scope = self._faults.get(None), None
        if found is None:
            return None
        if found.remaining is not None:
            found.remaining -= 1
            if found.remaining <= 0:
                self._faults.pop(scope, None)
        return found

    # ---- lifecycle --------------------

    def tick(self) -> None:
        now = self._clock()
        with self._lock:
            for state in self._providers.values():
                self._advance(state, now)

    def _seed_provider(self, state: _ProviderState, n: int, now: float) -> None:
        for _ in range(n):
            total = state.rng.choice(_TOTALS)
            recent_scale = state.rng.random()
            scale = 1.0 if recent_scale < 0.4 else state.rng.uniform(5, 300)
            initial, steps = _plan(state.rng, state.spec.flavor, total, scale)
            created = (
                now - state.rng.uniform(0, 100)
                if recent_scale < 0.4
                else (now - steps[-1].t - state.rng.uniform(60, 6 * 3600))
            )
            self._create(state, created, total, initial, steps)

    def _create(
        self, state: _ProviderState, created: float, total: int, initial: str, steps: list[_Step]
    ) -> None:
        spec = state.spec
        bid = _new_id(state.rng, spec.flavor)
        while bid in state.batches:
            bid = _new_id(state.rng, spec.flavor)
        batch = _skeleton(
            state.rng,
            batch_id=bid,
            provider=spec.name,
            flavor=spec.flavor,
            style=spec.style,
            created=int(created),
            total=total,
            status=initial,
            latency_ms=self._latency_ms,
            cache_debug=self._cache_debug,
        )
        plan = [step._replace(t=created + step.t) for step in steps]
        seq = next(self._seq)
        key = state.fill_keys()[state.rng.randrange(len(state.fill_keys()))]
        state.insert(batch, key, seq, plan if self._lifecycle else None, seq)
        if not self._lifecycle:
            now = self._clock()
            for step in plan:
                if step.t > now:
                    break
                _apply_step(batch, spec.flavor, step)

    def _advance(self, state: _ProviderState, now: float) -> None:
        if not self._lifecycle:
            return
        spec = state.spec
        created_any = False
        if spec.supported and state.next_create is not None:
            horizon = now - 30.0 * max(1, self._max_batches)
            if state.next_create < horizon:
                state.next_create = horizon
            while state.next_create <= now:
                at = state.next_create
                total = state.rng.choice(_TOTALS)
                initial, steps = _plan(state.rng, spec.flavor, total, 1.0)
                self._create(state, at, total, initial, steps)
                state.next_create = at + state.rng.uniform(10, 30)
                created_any = True
        heap = state.heap
        while heap and heap[0][0] <= now:
            _, _, bid, gen, idx = heapq.heappop(heap)
            meta = state.meta.get(bid)
            if meta is None or meta.gen != gen or meta.plan is None or idx >= len(meta.plan):
                continue
            _apply_step(state.batches[bid], spec.flavor, meta.plan[idx])
            if idx + 1 < len(meta.plan):
                heapq.heappush(heap, (meta.plan[idx + 1].t, next(self._seq), bid, gen, idx + 1))
        if created_any and len(state.batches) > self._max_batches:
            self._trim(state)

    def _trim(self, state: _ProviderState) -> None:
        excess = len(state.batches) - self._max_batches
        terminal = [
            (meta.sort_key, bid)
            for bid, meta in state.meta.items()
            if state.batches[bid].get("status") in TERMINAL_STATUSES
        ]
        terminal.sort(reverse=True)  # oldest first: largest (-created, -seq)
        for _, bid in terminal[:excess]:
            state.remove(bid)

    # ---- observation --------------------

    def list_requests(self, provider: str | None = None) -> int:
        with self._lock:
            if provider is None:
                return self._list_requests_total
            state = self._providers.get(provider)
            return 0 if state is None else state.list_requests

    def request_log(self) -> list[dict[str, Any]]:
        with self._lock:
            return [_copy(entry) for entry in self._log]

    def state(self) -> dict[str, Any]:
        with self._lock:
            providers: dict[str, Any] = {}
            for name, st in self._providers.items():
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
                }
            return {"providers": providers, "list_requests": self._list_requests_total}

    # ---- HTTP dispatch --------------------

    def _dispatch(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> _Response:
        parts = urlsplit(raw_path)
        path = parts.path
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        if not path.startswith("/_sim/"):
            with self._lock:
                self._log.append(
                    {
                        "method": method,
                        "path": path,
                        "query": query,
                        "auth_headers": [name for name in _AUTH_HEADERS if name in headers],
                    }
                )
        try:
            if path == "/health" and method in ("GET", "HEAD"):
                return _json(200, b'{"status":"ok"}')
            if path.startswith("/_sim/"):
                return self._control(method, path, body)
            if path == "/v1/batches" or path.startswith("/v1/batches/"):
                denied = self._check_auth(headers)
                if denied is not None:
                    return _json(401, denied)
                if path == "/v1/batches":
                    if method != "GET":
                        return _json(405, _error(405, "method not allowed"))
                    return self._list(query)
                return self._batch_endpoint(method, unquote(path[len("/v1/batches/") :]), query)
        except (
            Exception
        ) as exc:  # a bug in the simulator must surface as a response, not a dropped connection
            return _json(500, _error(500, f"simulator error: {exc!r}", is_bifrost_error=True))
        return _json(404, _error(404, f"no route for {method} {path}"))

    def _check_auth(self, headers: dict[str, str]) -> bytes | None:
        if self._basic is not None and headers.get("authorization") != self._basic:
            return _unauthorized(None)
        if self._virtual_key is None:
            return None
        if self._basic is not None:
            candidates = [headers.get("x-bf-vk")]
        else:
            auth = headers.get("authorization", "")
            bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else None
            candidates = [headers.get("x-bf-vk")] + [
                value
                for value in (bearer, headers.get("x-api-key"), headers.get("api-key"))
                if value is not None and value.startswith("sk-bf-")
            ]
        present = [value for value in candidates if value]
        if not present:
            return _unauthorized("virtual_key_required")
        if self._virtual_key not in present:
            return _unauthorized("virtual_key_not_found")
        return None

    def _list(self, query: dict[str, str]) -> _Response:
        provider = query.get("provider", "")
        with self._lock:
            self._list_requests_total += 1
            state = self._providers.get(provider) if provider else None
            if state is not None:
                state.list_requests += 1
            if not provider:
                return _json(400, _MISSING_PROVIDER_BODY)
            fault = self._take_fault(provider)
        if state is not None and state.spec.page_delay > 0:
            time.sleep(state.spec.page_delay)
        if fault is not None:
            if fault.name == "slow":
                time.sleep(float(fault.params.get("delay", 5)))
            else:
                early = self._simple_fault(fault, provider)
                if early is not None:
                    return early
        if state is None or not state.spec.supported:
            return _json(400, _unsupported(provider, "batch_list"))
        limit = _parse_limit(query.get("limit"), state.spec.default_limit)
        after = query.get("after") or None
        with self._lock:
            self._advance(state, self._clock())
            state.ensure_order()
            name = fault.name if fault is not None else None
            if name == "repeat_page":
                page = state.slice(0, 0, limit)
                state.nonce += 1
                cursor = encode_cursor(0, page.last_id, state.nonce) if state.spec.style == "cursor" else None
                page = page._replace(has_more=True, next_cursor=cursor)
            elif name == "no_cursor":
                page = _Page([], True, None, None)
            else:
                found = self._page(state, after, limit)
                if isinstance(found, bytes):
                    if name != "cursor_loop":
                        return _json(400, found)
                    found = _Page([], False, None, None)
                page = found
                if name == "cursor_loop":
                    if after is None:
                        cursor = page.next_cursor or encode_cursor(0, page.last_id)
                        page = page._replace(has_more=True, next_cursor=cursor)
                    elif state.spec.style == "cursor":
                        page = page._replace(has_more=True, next_cursor=after)
                    else:
                        page = page._replace(has_more=True, last_id=after)
            if fault is not None and name in ("not_list", "malformed_json"):
                return self._shape_fault(name, page, fault, state)
            return _json(200, self._page_body(state, page))

    def _page(self, state: _ProviderState, after: str | None, limit: int) -> _Page | bytes:
        if after is None:
            return state.slice(0, 0, limit)
        if state.spec.style == "legacy":
            start = state.position_after(0, after)
            if start is None:
                return _error(
                    400, f"invalid 'after': no batch with id {after}", err_type="invalid_request_error"
                )
            return state.slice(0, start, limit)
        decoded = decode_cursor(after)
        if decoded is None:
            key = state.key_of(after)  # a raw batch id still works, as upstream falls back to it
            if key is None:
                return _error(400, "invalid cursor", err_type="invalid_request_error")
            decoded = (key, after)
        key, after_id = decoded
        if key >= state.lists:
            return _error(400, "invalid cursor: key index out of range", err_type="invalid_request_error")
        if after_id is None:
            return state.slice(key, 0, limit)
        start = state.position_after(key, after_id)
        if start is None:
            return _error(400, "invalid cursor", err_type="invalid_request_error")
        return state.slice(key, start, limit)

    def _page_body(self, state: _ProviderState, page: _Page) -> bytes:
        latency = _jitter(state.latency_rng, self._latency_ms)
        debug = None
        if self._cache_debug and state.spec.style == "cursor" and state.latency_rng.random() < 0.3:
            debug = _cache_debug(state.latency_rng, state.spec.name, state.spec.flavor)
        return _list_body(
            page.data,
            has_more=page.has_more,
            next_cursor=page.next_cursor,
            first_id=str(page.data[0]["id"]) if page.data else None,
            last_id=page.last_id,
            extra_fields=_top_extra_fields(state.spec.name, latency, debug),
        )

    def _simple_fault(self, fault: _Fault, provider: str) -> _Response | None:
        name = fault.name
        if name == "server_error":
            return _json(
                500, _error(500, "internal server error", err_type="server_error", is_bifrost_error=True)
            )
        if name == "bad_gateway":
            return 502, _BAD_GATEWAY_HTML, _HTML, {}
        if name == "rate_limit":
            body = _error(
                429, "rate limit exceeded for virtual key", err_type="rate_limited", top_type="rate_limited"
            )
            return _json(429, body, {"Retry-After": str(fault.params.get("retry_after", 1))})
        if name == "html":
            return 200, _ERROR_PAGE_HTML, _HTML, {}
        if name == "auth":
            return _json(401, _unauthorized(None))
        if name == "forbidden":
            body = _error(
                403, "virtual key is blocked", err_type="virtual_key_blocked", top_type="virtual_key_blocked"
            )
            return _json(403, body)
        if name == "unsupported":
            return _json(400, _unsupported(provider, "batch_list"))
        return None

    def _shape_fault(self, name: str, page: _Page, fault: _Fault, state: _ProviderState) -> _Response:
        if name == "malformed_json":
            body = self._page_body(state, page)
            return _json(200, body[: max(1, len(body) // 2)])
        if fault.params.get("shape") == "array":
            return _json(200, _dumps(page.data))
        if page.data:
            return _json(200, _dumps(page.data[0]))
        return _json(200, _dumps({"object": "batch", "id": "batch_unexpected", "status": "in_progress"}))

    def _batch_endpoint(self, method: str, rest: str, query: dict[str, str]) -> _Response:
        provider = query.get("provider", "")
        if not provider:
            return _json(400, _MISSING_PROVIDER_BODY)
        cancel = method == "POST" and rest.endswith("/cancel")
        if cancel:
            rest = rest[: -len("/cancel")]
        elif method not in ("GET", "HEAD"):
            return _json(405, _error(405, "method not allowed"))
        request_type = "batch_cancel" if cancel else "batch_retrieve"
        with self._lock:
            state = self._providers.get(provider)
            if state is None or not state.spec.supported:
                return _json(400, _unsupported(provider, request_type))
            self._advance(state, self._clock())
            batch = state.batches.get(rest)
            if batch is None:
                return _json(404, _error(404, f"batch not found: {rest}", err_type="not_found_error"))
            if cancel:
                problem = self._cancel(state, batch)
                if problem is not None:
                    return _json(400, problem)
            return _json(200, _dumps(batch))

    def _cancel(self, state: _ProviderState, batch: dict[str, Any]) -> bytes | None:
        status = str(batch.get("status"))
        if status == "cancelling":
            return None
        if status in TERMINAL_STATUSES:
            return _error(
                400, f"Cannot cancel a batch with status {status!r}.", err_type="invalid_request_error"
            )
        now = self._clock()
        bid = str(batch["id"])
        meta = state.meta[bid]
        meta.gen += 1
        flavor = state.spec.flavor
        counts = batch.get("request_counts") or {}
        completed, failed = int(counts.get("completed", 0)), int(counts.get("failed", 0))
        rest = max(0, int(counts.get("total", 0)) - completed - failed)
        _apply_step(batch, flavor, _Step(now, "cancelling", completed, failed))
        if self._lifecycle:
            when = now + state.rng.uniform(5, 20)
            canceled = rest if flavor == "anthropic" else 0
            meta.plan = [_Step(when, "cancelled", completed, failed, canceled, 0)]
            heapq.heappush(state.heap, (when, next(self._seq), bid, meta.gen, 0))
        else:
            meta.plan = None
        return None

    def _control(self, method: str, path: str, body: bytes) -> _Response:
        if method == "GET" and path == "/_sim/state":
            return _json(200, _dumps(self.state()))
        if method != "POST":
            return _json(405, _error(405, "method not allowed"))
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            return _json(400, _error(400, "body is not JSON"))
        if not isinstance(payload, dict):
            return _json(400, _error(400, "body must be a JSON object"))
        try:
            if path == "/_sim/fault":
                fault = payload.pop("fault", None)
                provider = payload.pop("provider", None)
                times = payload.pop("times", None)
                self.set_fault(fault, provider=provider, times=times, **payload)
                return _json(200, _dumps({"fault": fault, "provider": provider, "times": times}))
            if path == "/_sim/batches":
                provider = payload.pop("provider")
                return _json(200, _dumps(self.add_batch(provider, **payload)))
            if path == "/_sim/clear":
                self.clear(payload.get("provider"))
                return _json(200, b'{"cleared":true}')
            if path == "/_sim/tick":
                self.tick()
                return _json(200, _dumps(self.state()))
            if path.startswith("/_sim/batches/") and path.endswith("/status"):
                bid = unquote(path[len("/_sim/batches/") : -len("/status")])
                self.set_status(payload["provider"], bid, payload["status"], payload.get("at"))
                with self._lock:
                    return _json(200, _dumps(self._state(payload["provider"]).batches[bid]))
        except KeyError as exc:
            return _json(404 if path.endswith("/status") else 400, _error(400, f"missing or unknown: {exc}"))
        except (TypeError, ValueError) as exc:
            return _json(400, _error(400, str(exc)))
        return _json(404, _error(404, f"no control route {path}"))


def _parse_limit(raw: str | None, default: int) -> int:
    """Bifrost uses limit only when it parses as an int > 0; anything else silently means the default."""
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        return default
    if value <= 0:
        return default
    return min(value, MAX_LIMIT)


def _default_counts(flavor: str, status: str) -> dict[str, int]:
    completed, failed = {
        "validating": (0, 0),
        "in_progress": (40, 0),
        "finalizing": (100, 0),
        "completed": (98, 2),
        "failed": (20, 80),
        "expired": (60, 0),
        "cancelling": (50, 0),
        "cancelled": (50, 0),
        "canceled": (50, 0),
        "ended": (95, 5),
    }.get(status, (0, 0))
    terminal = status in TERMINAL_STATUSES
    rest = 100 - completed - failed
    expired = rest if flavor == "anthropic" and terminal and status == "expired" else 0
    canceled = rest if flavor == "anthropic" and terminal and not expired else 0
    return _counts(flavor, 100, completed, failed, canceled, expired, done=terminal)


def _copy(value: _T) -> _T:
    """A JSON round trip runs in C: far faster than copy.deepcopy at benchmark sizes, and the store only ever
    holds JSON-shaped data (anything else would not survive the wire either)."""
    return cast(_T, json.loads(json.dumps(value)))


# ------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exporter.simulator", description="Fake Bifrost gateway")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-lifecycle", action="store_true", help="static store (seeded once, never moves)")
    parser.add_argument("--virtual-key", default=None)
    parser.add_argument("--basic-auth", default=None, metavar="USER:PASS")
    parser.add_argument("--page-delay", type=float, default=0.0, metavar="S")
    args = parser.parse_args(argv)
    basic: tuple[str, str] | None = None
    if args.basic_auth is not None:
        user, sep, password = str(args.basic_auth).partition(":")
        if not sep:
            parser.error("--basic-auth must be USER:PASS")
        basic = (user, password)
    providers = [dataclasses.replace(spec, page_delay=args.page_delay) for spec in DEFAULT_PROVIDERS]
    sim = Simulator(
        providers=providers,
        seed=args.seed,
        lifecycle=not args.no_lifecycle,
        virtual_key=args.virtual_key,
        basic_auth=basic,
    )
    if args.no_lifecycle:
        sim.populate()
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    sim.start(args.host, args.port)
    print(f"bifrost simulator listening on {sim.url}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What each provider's batches look like through Bifrost: ids, status spellings, counts, side fields.

One place per provider quirk, so the lifecycle and the HTTP surface stay provider-agnostic and a reader can check
each shape against Bifrost's converters (`core/providers/<provider>/batch*.go`) in one file.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

__all__ = [
    "ACTIVE_STATUSES",
    "DAY",
    "DEFAULT_PROVIDERS",
    "TERMINAL_STATUSES",
    "Flavor",
    "ProviderSpec",
    "Style",
]

Style = Literal["cursor", "legacy"]
Flavor = Literal["openai", "azure", "anthropic", "bedrock", "gemini", "vertex"]

DAY = 86_400

ACTIVE_STATUSES = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
TERMINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled", "canceled", "ended", "deleted"})

# Which timestamp a status sets. `ended` is Anthropic's finished state: Bifrost maps ended_at to completed_at.
TIMESTAMP_FIELD: dict[str, str] = {
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
TIMESTAMP_FIELDS = (
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)
CANONICAL_TERMINAL = frozenset({"completed", "failed", "expired", "cancelled", "deleted"})

_MODELS: dict[str, tuple[str, str]] = {
    "openai": ("gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
    "azure": ("gpt-4o", "gpt-4o-prod-eastus"),
    "anthropic": ("claude-3-5-haiku-latest", "claude-3-5-haiku-20241022"),
    "bedrock": ("claude-3-haiku", "anthropic.claude-3-haiku-20240307-v1:0"),
    "gemini": ("gemini-1.5-flash", "gemini-1.5-flash-002"),
    "vertex": ("gemini-1.5-pro", "gemini-1.5-pro-002"),
}
_BEDROCK_ARN = "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/"


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


def hex_digits(rng: random.Random, n: int) -> str:
    return f"{rng.getrandbits(4 * n):0{n}x}"


def new_id(rng: random.Random, flavor: str) -> str:
    if flavor == "anthropic":
        return "msgbatch_" + hex_digits(rng, 24)
    if flavor == "gemini":
        return "batches/" + hex_digits(rng, 20)
    if flavor == "bedrock":
        return _BEDROCK_ARN + hex_digits(rng, 12)
    if flavor == "azure":
        h = hex_digits(rng, 32)
        return f"batch_{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    if flavor == "vertex":
        return str(rng.randrange(10**17, 10**18))
    return "batch_" + hex_digits(rng, 24)


def spell(flavor: str, canonical: str) -> str:
    """Anthropic only ever reports `ended`; Azure's docs spell `canceled`: clients must cope with both."""
    if flavor == "anthropic" and canonical in CANONICAL_TERMINAL:
        return "ended"
    if flavor == "azure" and canonical == "cancelled":
        return "canceled"
    return canonical


def make_counts(
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


def cache_debug_entry(rng: random.Random, provider: str, flavor: str) -> dict[str, Any]:
    model = _MODELS.get(flavor, _MODELS["openai"])[0]
    hit = rng.random() < 0.55
    hit_type: str | None = ("semantic" if rng.random() < 0.5 else "direct") if hit else None
    debug: dict[str, Any] = {
        "cache_hit": hit,
        "cache_id": hex_digits(rng, 8) + "-" + hex_digits(rng, 4) + "-" + hex_digits(rng, 12),
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


def jitter(rng: random.Random, latency_ms: int) -> int:
    return max(1, int(rng.gauss(latency_ms, latency_ms * 0.25)))


def item_extra_fields(
    rng: random.Random, provider: str, flavor: str, style: str, latency_ms: int, cache_debug: bool
) -> dict[str, Any]:
    """Newer gateways put only latency on items; older ones fill them fully, sometimes with cache_debug."""
    latency = jitter(rng, latency_ms)
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
        extra["cache_debug"] = cache_debug_entry(rng, provider, flavor)
    return extra


def skeleton(
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
    suffix = hex_digits(rng, 24)
    batch: dict[str, Any] = {
        "id": batch_id,
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "input_file_id": "file-" + suffix,
        "completion_window": "24h",
        "status": status,
        "request_counts": make_counts(flavor, total, 0, 0, done=False),
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
        for name in TIMESTAMP_FIELDS:
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
    batch["extra_fields"] = item_extra_fields(rng, provider, flavor, style, latency_ms, cache_debug)
    return batch


def apply_flavor_state(batch: dict[str, Any], flavor: str, canonical: str) -> None:
    """Side fields that move with the status (done/progress, processing_status, output locations, errors)."""
    terminal = canonical in CANONICAL_TERMINAL or canonical in ("ended", "canceled")
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


def default_counts(flavor: str, status: str) -> dict[str, int]:
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
    return make_counts(flavor, 100, completed, failed, canceled, expired, done=terminal)


class Step(NamedTuple):
    """One scheduled change of a batch; counts are absolute so a step can be applied without history."""

    t: float
    status: str | None  # canonical status, spelled per flavour when applied; None = progress only
    completed: int
    failed: int
    canceled: int = 0
    expired: int = 0


def apply_step(batch: dict[str, Any], flavor: str, step: Step, offset: float = 0.0) -> None:
    if step.status is not None:
        batch["status"] = spell(flavor, step.status)
        ts_field = TIMESTAMP_FIELD.get(step.status)
        if flavor == "anthropic" and step.status in CANONICAL_TERMINAL:
            ts_field = "completed_at"
        if ts_field is not None:
            batch[ts_field] = int(step.t + offset)
        apply_flavor_state(batch, flavor, step.status)
    counts = batch.get("request_counts") or {}
    total = int(counts.get("total", 0))
    done = step.status in CANONICAL_TERMINAL or batch.get("status") in TERMINAL_STATUSES
    batch["request_counts"] = make_counts(
        flavor, total, step.completed, step.failed, step.canceled, step.expired, done=done
    )
    if flavor == "gemini":
        if batch.get("status") == "completed":
            batch["progress"] = 100
        elif total:
            batch["progress"] = min(100, (step.completed + step.failed) * 100 // total)

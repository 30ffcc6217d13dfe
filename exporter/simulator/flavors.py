"""What each provider's batches look like through Bifrost: ids, status spellings, counts, side fields.

One place per provider quirk, so the lifecycle and the HTTP surface stay provider-agnostic and a reader can check
each shape against the Bifrost source it was read from (maximhq/bifrost):
- `core/schemas/batch.go`: one object type for list items and retrieve; Go `omitempty` on every pointer, so newer
  gateways never send `null` (older ones did, kept for the `legacy` style); `request_counts` is a struct and always
  present, even when all zero.
- `core/providers/openai/batch.go`: OpenAI/Azure statuses pass through; `metadata`, `errors` and every timestamp.
- `core/providers/anthropic/batch.go`: `processing_status` in_progress/canceling/ended → in_progress/cancelling/
  ended (never failed/cancelled/expired); `ended_at` → `completed_at`, `cancel_initiated_at` → `cancelling_at`;
  counts from succeeded/errored/canceled/expired/processing; no metadata, endpoint or input file.
- `core/providers/bedrock/batch.go`: Submitted/Validating/Scheduled → validating, PartiallyCompleted → failed,
  Stopping/Stopped → cancelling/cancelled; list summaries carry only id, status and created_at; retrieve adds the
  S3 input/output, `completed_at` (the job's EndTime, for every terminal status) and `expires_at`; no counts.
- `core/providers/gemini/*.go`: PENDING and RUNNING → in_progress (no validating, no finalizing); list items carry
  id (`batches/…`), status, created_at and operation_name; retrieve adds `done` and counts from batchStats, where
  `completed` is every processed request (successes and failures) and `failed` = completed − succeeded.
- `core/providers/gigachat/batch.go` (@f44330cd): created/in_progress/completed → validating/in_progress/completed,
  anything else passes through raw; items carry created_at and completed_at only, counts total/completed/failed, the
  endpoint from the batch method, and `provider_extra_fields` (method, raw status, file ids).
- `core/providers/openrouter/batch.go`: the OpenAI-compatible helper on `/beta/batches`; OpenAI's object without an
  input file (requests are inline) and without OpenRouter's own model, usage and cost.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

__all__ = [
    "ACTIVE_STATUSES",
    "BEDROCK_JOB_ARN",
    "DAY",
    "DEFAULT_PROVIDERS",
    "FAILURE_CODES",
    "NEWEST_EXTRA_PROVIDERS",
    "NEWEST_PROVIDERS",
    "TERMINAL_STATUSES",
    "Flavor",
    "ProviderSpec",
    "Style",
]

Style = Literal["cursor", "legacy"]
Flavor = Literal["openai", "azure", "anthropic", "bedrock", "gemini", "vertex", "gigachat", "openrouter"]

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

# Through /v1/batches these never get past page 1: the handler fills only `After`, while Anthropic reads its
# cursor from `AfterID` and Gemini and Bedrock from `PageToken` (transports/bifrost-http/handlers/inference.go
# batchList; core/providers/anthropic/anthropic.go, gemini/gemini.go, bedrock/batch.go BatchList).
AFTER_IGNORED_FLAVORS = frozenset({"anthropic", "gemini", "bedrock"})
# Flavours whose list items are summaries: the retrieve object is richer.
SPARSE_FLAVORS = frozenset({"bedrock", "gemini"})
# The upstreams' own page-size maxima (OpenAI and Azure: 100; Anthropic, Bedrock, Gemini: 1000): the gateway passes
# `limit` on unchanged and keeps the provider's 400 for a larger one.
FLAVOR_MAX_LIMIT: dict[str, int] = {
    "openai": 100,
    "azure": 100,
    "anthropic": 1000,
    "bedrock": 1000,
    "gemini": 1000,
}
# Flavours with OpenAI's object: metadata, errors, input/output files.
OPENAI_SHAPED = frozenset({"openai", "azure"})
# Flavours with no finalizing stage of their own.
NO_FINALIZING = frozenset({"anthropic", "bedrock", "gemini", "gigachat"})
# Flavours listed through Bifrost's OpenAI-compatible batch helper: every item carries the raw page when echo is on.
OPENAI_HELPER = OPENAI_SHAPED | {"openrouter"}
# GigaChat's own statuses that Bifrost maps; anything else passes through raw and is named in provider_extra_fields.
GIGACHAT_MAPPED = frozenset({"validating", "in_progress", "completed"})

# errors.data[].code of failed batches, OpenAI's wording (a small realistic set, so per-code counters stay bounded).
FAILURE_CODES: dict[str, str] = {
    "invalid_json_line": "This line is not parseable as valid JSON.",
    "token_limit_exceeded": (
        "Enqueued token limit reached for gpt-4o-mini in organization org-sim. Limit: 2,000,000 enqueued tokens. "
        "Please try again once some in_progress batches have been completed."
    ),
    "model_not_found": "The model 'gpt-4o-mini-2024-07-18' does not exist or you do not have access to it.",
}
EXPIRED_CODE = "batch_expired"
EXPIRED_MESSAGE = "This batch could not be completed within its 24h completion window."

_MODELS: dict[str, tuple[str, str]] = {
    "openai": ("gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
    "azure": ("gpt-4o", "gpt-4o-prod-eastus"),
    "anthropic": ("claude-3-5-haiku-latest", "claude-3-5-haiku-20241022"),
    "bedrock": ("claude-3-haiku", "anthropic.claude-3-haiku-20240307-v1:0"),
    "gemini": ("gemini-1.5-flash", "gemini-1.5-flash-002"),
    "vertex": ("gemini-1.5-pro", "gemini-1.5-pro-002"),
    "gigachat": ("GigaChat-2-Max", "GigaChat-2-Max"),
    "openrouter": ("openai/gpt-4o-mini", "openai/gpt-4o-mini"),
}
BEDROCK_JOB_ARN = "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/"
_VERTEX_JOBS = "projects/123456789012/locations/us-central1/batchPredictionJobs/"
_TEAMS = ("search", "ads", "support", "research")
_PROJECTS = ("nightly-eval", "backfill", "embeddings", "labeling")


@dataclass(frozen=True)
class ProviderSpec:
    """How one provider behaves behind the gateway; the two styles mirror the two generations of Bifrost.

    `cursor` is the newer gateway (serial multi-key paging with an opaque `next_cursor`, items carrying only
    latency, no nulls, `x-bf-send-back-raw-response: false` honoured, a bad cursor is HTTP 500); `legacy` the
    older one (OpenAI's first_id/last_id passed through, one key, full items, the raw-response header can only
    turn echo on, "no batch-enabled keys" is HTTP 500). Realistic is the default; the fields below that make the
    gateway kinder exist only for tests that name why they need it.
    """

    name: str
    style: Style = "cursor"
    flavor: Flavor = "openai"
    keys: int = 1
    supported: bool = True
    page_delay: float = 0.0
    default_limit: int = 20
    # Keys the lifecycle (and add_batch without api_key) never fill, so an empty key is always paged over.
    empty_keys: tuple[int, ...] = ()
    # Keys of one account (OpenAI keys of one org/project) list the same batches, each under its own cursor.
    shared_account: bool = False
    # None: the flavour decides (Anthropic, Gemini, Bedrock ignore `after`). False: the kind gateway of old tests.
    after_ignored: bool | None = None
    # The upstream's own page-size maximum: a larger `limit` is refused as the provider refuses it (HTTP 400).
    # None: the flavour decides (FLAVOR_MAX_LIMIT). 0: silently capped at 1000, the kind gateway of old tests.
    max_limit: int | None = None
    # None: the flavour decides (Bedrock and Gemini list summaries). False: full list items, for old tests.
    sparse_items: bool | None = None
    # False: no key of this provider has "use for batch APIs" on, so every batch call is refused.
    batch_keys: bool = True

    @property
    def ignores_after(self) -> bool:
        if self.after_ignored is not None:
            return self.after_ignored
        return self.flavor in AFTER_IGNORED_FLAVORS

    @property
    def limit_maximum(self) -> int | None:
        """The `limit` above which the provider answers 400 (None: no such check, the simulator caps at 1000)."""
        if self.max_limit is not None:
            return self.max_limit or None
        return FLAVOR_MAX_LIMIT.get(self.flavor)

    @property
    def sparse(self) -> bool:
        if self.sparse_items is not None:
            return self.sparse_items
        return self.flavor in SPARSE_FLAVORS

    def account(self, key: int) -> int:
        """Which account a key belongs to: keys of one account list the same batches. Empty keys are accounts
        of their own (a key of another project, with nothing in it)."""
        if self.shared_account and key not in self.empty_keys:
            return -1
        return key


DEFAULT_PROVIDERS: tuple[ProviderSpec, ...] = (
    # Three OpenAI keys: key 0 of a fresh project (empty), keys 1 and 2 of one org (the same batches twice).
    ProviderSpec("openai", style="cursor", flavor="openai", keys=3, empty_keys=(0,), shared_account=True),
    ProviderSpec("anthropic", style="cursor", flavor="anthropic"),
    ProviderSpec("azure", style="legacy", flavor="azure"),
    ProviderSpec("bedrock", style="cursor", flavor="bedrock"),
    ProviderSpec("gemini", style="cursor", flavor="gemini"),
    ProviderSpec("vertex", style="legacy", flavor="vertex"),
    ProviderSpec("cohere", supported=False),
    ProviderSpec("mistral", supported=False),
)

# The providers the newest source adds or changes (bifrost-batch-api.md, "Newest source"): GigaChat lists one page per
# key and refuses every paging parameter, OpenRouter lists through the OpenAI-compatible helper (its own page-size
# maximum is not documented, so it is not enforced), Volcengine still answers unsupported_operation. Kept out of
# DEFAULT_PROVIDERS, the set of the gateways most deployments run (the demo's and the suites'); the simulator's
# --newest-providers adds them (the exporter sends no `limit` to gigachat: exporter/providers.py).
NEWEST_EXTRA_PROVIDERS: tuple[ProviderSpec, ...] = (
    ProviderSpec("gigachat", style="cursor", flavor="gigachat", keys=2),
    ProviderSpec("openrouter", style="cursor", flavor="openrouter"),
    ProviderSpec("volcengine", supported=False),
)
NEWEST_PROVIDERS: tuple[ProviderSpec, ...] = DEFAULT_PROVIDERS + NEWEST_EXTRA_PROVIDERS


def hex_digits(rng: random.Random, n: int) -> str:
    return f"{rng.getrandbits(4 * n):0{n}x}"


def new_id(rng: random.Random, flavor: str) -> str:
    if flavor == "anthropic":
        return "msgbatch_" + hex_digits(rng, 24)
    if flavor == "gemini":
        return "batches/" + hex_digits(rng, 20)
    if flavor == "bedrock":
        return BEDROCK_JOB_ARN + hex_digits(rng, 12)
    if flavor == "azure":
        h = hex_digits(rng, 32)
        return f"batch_{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    if flavor == "vertex":
        return _VERTEX_JOBS + str(rng.randrange(10**17, 10**18))
    if flavor == "gigachat":
        h = hex_digits(rng, 32)
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
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
    """The stored (OpenAI-like) counts: `completed` succeeded, `failed` failed. Anthropic adds its own parts,
    omitted when zero as Go's omitempty does."""
    counts = {"total": total, "completed": completed, "failed": failed}
    if flavor == "anthropic":
        pending = 0 if done else max(0, total - completed - failed - canceled - expired)
        for name, value in (("succeeded", completed), ("expired", expired), ("canceled", canceled)):
            if value:
                counts[name] = value
        if pending:
            counts["pending"] = pending
    return counts


def failure_errors(code: str) -> dict[str, Any]:
    """OpenAI's `errors` object; Bifrost's BatchError has omitempty on param, so it is absent."""
    message = EXPIRED_MESSAGE if code == EXPIRED_CODE else FAILURE_CODES.get(code, "The batch failed.")
    return {"object": "list", "data": [{"code": code, "message": message, "line": 1}]}


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
    """A batch as first stored, keys in Bifrost's Go struct order so the JSON reads like the real thing
    (timestamps are appended when they are first set, as key order is not semantic)."""
    suffix = hex_digits(rng, 24)
    batch: dict[str, Any] = {"id": batch_id, "object": "batch"}
    if flavor != "anthropic":
        batch["endpoint"] = "/v1/chat/completions"
        batch["input_file_id"] = "file-" + suffix
        batch["completion_window"] = "24h"
    batch["status"] = status
    batch["request_counts"] = make_counts(flavor, total, 0, 0, done=False)
    roll = rng.random()
    if flavor in OPENAI_SHAPED:
        if roll < 0.6:
            batch["metadata"] = {"team": rng.choice(_TEAMS), "project": rng.choice(_PROJECTS)}
        elif roll < 0.75 and style == "legacy":
            batch["metadata"] = None
    batch["created_at"] = created
    batch["expires_at"] = created + DAY
    # Older (legacy) OpenAI-shaped gateways serialised unset pointers as null; newer ones omit them.
    if style == "legacy" and flavor in OPENAI_SHAPED:
        for name in TIMESTAMP_FIELDS:
            batch[name] = None
        batch["output_file_id"] = None
        batch["error_file_id"] = None
        batch["errors"] = None
    if status == "in_progress" and flavor != "anthropic":
        batch["in_progress_at"] = created
    if flavor == "anthropic":
        batch["processing_status"] = "in_progress"
    elif flavor == "gemini":
        batch["operation_name"] = batch_id
        batch["done"] = False
    elif flavor == "vertex":
        batch["display_name"] = f"{provider}-batch-{suffix[:6]}"
        batch["input_blob"] = f"gs://bifrost-sim/{provider}/input-{suffix[:12]}.jsonl"
        if style == "legacy":
            batch["output_blob"] = None
    elif flavor == "bedrock":
        batch["input_file_id"] = f"s3://bifrost-sim/{provider}/input-{suffix[:12]}.jsonl"
    elif flavor == "openrouter":
        del batch["input_file_id"]  # requests are sent inline: OpenRouter's batches have no input file
    elif flavor == "gigachat":
        batch["gigachat_method"] = (
            "chat_completions"  # stored only; the views show it in provider_extra_fields
        )
    batch["extra_fields"] = item_extra_fields(rng, provider, flavor, style, latency_ms, cache_debug)
    return batch


def apply_flavor_state(batch: dict[str, Any], flavor: str, canonical: str, code: str | None = None) -> None:
    """Side fields that move with the status (done, processing_status, output locations, errors)."""
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
    if flavor == "openrouter":
        return  # results are inline on the batch object: no output or error file
    if canonical == "completed":
        if flavor == "vertex":
            batch["output_blob"] = f"gs://bifrost-sim/output/{tail}/"
        elif flavor == "bedrock":
            batch["output_file_id"] = f"s3://bifrost-sim/output/{tail}/"
        else:
            batch["output_file_id"] = "file-out-" + tail
    elif canonical in ("failed", "expired") and flavor in OPENAI_SHAPED:
        chosen = code or ("invalid_json_line" if canonical == "failed" else EXPIRED_CODE)
        batch["error_file_id"] = "file-err-" + tail
        batch["errors"] = failure_errors(chosen)
    elif canonical in ("failed", "expired") and flavor == "bedrock":
        batch["output_file_id"] = f"s3://bifrost-sim/output/{tail}/"


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
    code: str | None = None  # errors.data[].code of a failed/expired batch (OpenAI-shaped flavours)
    total: int | None = None  # request_counts.total from this step on (None: unchanged)


def apply_step(batch: dict[str, Any], flavor: str, step: Step, offset: float = 0.0) -> None:
    if step.status is not None:
        batch["status"] = spell(flavor, step.status)
        ts_field = TIMESTAMP_FIELD.get(step.status)
        if flavor == "anthropic" and step.status in CANONICAL_TERMINAL:
            ts_field = "completed_at"
        if flavor == "anthropic" and step.status == "in_progress":
            ts_field = None  # Anthropic has no start time of its own: a batch is in progress from creation
        if ts_field is not None:
            batch[ts_field] = int(step.t + offset)
        apply_flavor_state(batch, flavor, step.status, step.code)
    counts = batch.get("request_counts") or {}
    total = int(counts.get("total", 0)) if step.total is None else step.total
    done = step.status in CANONICAL_TERMINAL or batch.get("status") in TERMINAL_STATUSES
    batch["request_counts"] = make_counts(
        flavor, total, step.completed, step.failed, step.canceled, step.expired, done=done
    )


# ------------------------------------------------------------
# Views: what the gateway sends for a stored batch


def _terminal_time(batch: dict[str, Any]) -> Any:
    for name in ("completed_at", "failed_at", "expired_at", "cancelled_at"):
        if batch.get(name) is not None:
            return batch[name]
    return None


def gigachat_item(batch: dict[str, Any], spec: ProviderSpec, latency: int | None) -> dict[str, Any]:
    """toBifrostGigaChatBatchRetrieveResponse (core/providers/gigachat/batch.go @f44330cd), the same for list items
    and retrieve: created_at and completed_at are the only timestamps, counts are total/completed/failed, the endpoint
    comes from the batch method, and `provider_extra_fields` carries the method, a raw status Bifrost does not map,
    and the file ids. Each item's extra_fields hold the provider and the upstream latency."""
    item: dict[str, Any] = {"id": batch["id"], "object": "batch"}
    for name in ("endpoint", "input_file_id", "completion_window"):
        if batch.get(name):
            item[name] = batch[name]
    status = str(batch.get("status"))
    item["status"] = status
    counts = batch.get("request_counts") or {}
    item["request_counts"] = {k: int(counts.get(k, 0)) for k in ("total", "completed", "failed")}
    if batch.get("created_at"):
        item["created_at"] = batch["created_at"]
    if batch.get("completed_at") is not None and status == "completed":
        item["completed_at"] = batch["completed_at"]
    for name in ("output_file_id", "error_file_id"):
        if batch.get(name):
            item[name] = batch[name]
    extra: dict[str, Any] = {"gigachat_batch_method": batch.get("gigachat_method", "chat_completions")}
    if status not in GIGACHAT_MAPPED:
        extra["gigachat_batch_status"] = status
    for name, key in (
        ("output_file_id", "gigachat_output_file_id"),
        ("input_file_id", "gigachat_input_file_id"),
        ("error_file_id", "gigachat_error_file_id"),
    ):
        if batch.get(name):
            extra[key] = batch[name]
    item["provider_extra_fields"] = extra
    fields: dict[str, Any] = {"provider": spec.name}
    if latency is not None:
        fields["latency"] = latency
    item["extra_fields"] = fields
    return item


def list_item(batch: dict[str, Any], spec: ProviderSpec) -> dict[str, Any]:
    """A list item. Rich flavours list the stored object itself (no copy: this runs for every item served);
    Bedrock and Gemini list summaries, GigaChat its own conversion."""
    if spec.flavor == "gigachat":
        latency = batch.get("extra_fields", {}).get("latency")
        return gigachat_item(batch, spec, latency if isinstance(latency, int) else None)
    flavor = spec.flavor if spec.sparse else ""
    if flavor == "bedrock":
        item: dict[str, Any] = {"id": batch["id"], "object": "batch", "status": batch.get("status")}
        item["request_counts"] = {"total": 0, "completed": 0, "failed": 0}
        if batch.get("created_at"):
            item["created_at"] = batch["created_at"]
        return item
    if flavor == "gemini":
        item = {"id": batch["id"], "object": "batch", "status": batch.get("status")}
        item["request_counts"] = {"total": 0, "completed": 0, "failed": 0}
        if batch.get("created_at"):
            item["created_at"] = batch["created_at"]
        item["operation_name"] = batch.get("operation_name", batch["id"])
        item["extra_fields"] = {"request_type": "batch_list", "provider": spec.name}
        return item
    return batch


def retrieve_object(batch: dict[str, Any], spec: ProviderSpec, latency: int) -> dict[str, Any]:
    """`GET /v1/batches/{id}`: the same object as a list item for rich flavours (its own extra_fields), and
    what the provider's get call gives for Bedrock and Gemini."""
    extra = {"request_type": "batch_retrieve", "provider": spec.name, "latency": latency}
    if spec.flavor == "gigachat":
        item = gigachat_item(batch, spec, latency)
        item["extra_fields"] = extra
        return item
    flavor = spec.flavor if spec.sparse else ""
    if flavor == "bedrock":
        obj: dict[str, Any] = {"id": batch["id"], "object": "batch", "status": batch.get("status")}
        if batch.get("input_file_id"):
            obj["input_file_id"] = batch["input_file_id"]
        obj["request_counts"] = {"total": 0, "completed": 0, "failed": 0}
        if batch.get("created_at"):
            obj["created_at"] = batch["created_at"]
        if batch.get("expires_at") is not None:
            obj["expires_at"] = batch["expires_at"]
        ended = _terminal_time(batch)
        if ended is not None:
            obj["completed_at"] = ended  # the job's EndTime, whatever way it ended
        if batch.get("output_file_id"):
            obj["output_file_id"] = batch["output_file_id"]
        obj["extra_fields"] = extra
        return obj
    if flavor == "gemini":
        counts = batch.get("request_counts") or {}
        total = int(counts.get("total", 0))
        ok, bad = int(counts.get("completed", 0)), int(counts.get("failed", 0))
        gcounts: dict[str, int] = {"total": total, "completed": ok + bad, "failed": bad}
        if ok:
            gcounts["succeeded"] = ok
        pending = 0 if batch.get("status") in TERMINAL_STATUSES else max(0, total - ok - bad)
        if pending:
            gcounts["pending"] = pending
        obj = {"id": batch["id"], "object": "batch", "status": batch.get("status"), "request_counts": gcounts}
        if batch.get("created_at"):
            obj["created_at"] = batch["created_at"]
        obj["operation_name"] = batch.get("operation_name", batch["id"])
        obj["done"] = bool(batch.get("done"))
        if "progress" in batch:
            obj["progress"] = batch["progress"]
        obj["extra_fields"] = extra
        return obj
    obj = dict(batch)
    obj["extra_fields"] = extra
    return obj

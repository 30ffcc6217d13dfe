"""Who must act on a failed batch: its failure code → a class (input, provider, auth, unknown).

A batch that fails because its input file is malformed is its owner's to fix; one that fails because the provider
ran out of capacity, or expired before it ran, is the platform team's. One alert for both pages the platform team for
the user's own mistakes, so the failure counters carry the class and the alerts route on it.

The class is derived at render time from the (status, code) pair the ledger already counts, so neither the ledger nor
the state file changes, and a code added to the table reclassifies past failures too. Codes are OpenAI's wording
(`errors.data[].code` of the batch object; Bifrost passes OpenAI's and Azure's through, `core/providers/openai/batch.go`)
— Anthropic, Bedrock and Gemini batches carry no code through Bifrost (Anthropic never reports a failed batch;
Bedrock's job `message` and Gemini's operation error are not mapped), so theirs are `none`, class `unknown`.
The table with its sources is in docs/runbook.md ("Failure classes").
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, Literal

FailureClass = Literal["input", "provider", "auth", "unknown"]
# Label values of `class`, in the order the exposition lists them.
CLASSES: Final[tuple[FailureClass, ...]] = ("input", "provider", "auth", "unknown")

# Each code with where it is documented (docs/runbook.md, "Failure classes", has the same table for operators):
# - Azure: "Getting started with Azure OpenAI batch deployments", section "Troubleshooting" (learn.microsoft.com),
#   the batch validation codes; OpenAI's batch endpoint reports the same ones;
# - OpenAI errors: the API's error-codes guide (platform.openai.com/docs/guides/error-codes);
# - enqueued tokens: OpenAI's rate-limit guide, "Batch API" (a per-model limit on tokens waiting in batches), and
#   Azure's "enqueued token quota" of a batch deployment.
_INPUT: Final = (
    "invalid_json_line",  # Azure: a line of the input file is not valid JSON
    "invalid_request",  # Azure: the schema of a line is invalid
    "duplicate_custom_id",  # Azure: two lines share a custom_id
    "too_many_tasks",  # Azure: more requests than one batch may hold
    "empty_batch",  # Azure: the input file holds no request
    "url_mismatch",  # Azure: a line's url differs from the others or from the batch's endpoint
    "model_mismatch",  # Azure: lines name different models or deployments
    "model_not_found",  # Azure: the model or deployment named in the file does not exist
    "missing_required_parameter",  # OpenAI: e.g. a line without custom_id
)
# Capacity, quota and the provider's own faults: nothing in the batch is wrong; the platform team acts (raise a quota,
# spread the load, open a ticket with the provider).
_PROVIDER: Final = (
    "token_limit_exceeded",  # enqueued tokens of the model over the organisation's or deployment's limit
    "rate_limit_exceeded",  # OpenAI errors: 429, too many requests
    "insufficient_quota",  # OpenAI errors: 429, the account's quota or credit is used up
    "server_error",  # OpenAI errors: 500, the provider's own fault
)
# The provider refused the credentials the gateway uses for it: whoever owns Bifrost's provider keys.
_AUTH: Final = ("invalid_api_key",)  # OpenAI errors: 401

TABLE: Final[Mapping[str, FailureClass]] = MappingProxyType(
    {
        **dict.fromkeys(_INPUT, "input"),
        **dict.fromkeys(_PROVIDER, "provider"),
        **dict.fromkeys(_AUTH, "auth"),
    }
)


def failure_class(status: str, code: str) -> FailureClass:
    """The class of one counted failure: `expired` is always the provider's (it did not run the batch within its
    window, whatever code came with it); a `failed` batch is classified by its code, `unknown` when the code is not
    in the table (`none`, `other`, `invalid` included): routed like a provider failure, but named as unknown."""
    if status == "expired":
        return "provider"
    return TABLE.get(code, "unknown")

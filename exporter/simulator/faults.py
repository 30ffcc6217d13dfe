"""Injected failures: what a real gateway or the network in front of it does on a bad day.

Faults are armed per provider (or for all) and consumed per request, so a test can say "the next two pages fail"
and watch the exporter recover. A fault applies to list requests unless armed with `endpoint="retrieve"` (or
"any"), with `batch_id=` to the retrieve of that one batch only, and with `cursor_only=True` to list requests that
carry a cursor only (a continuation page).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .wire import (
    BAD_GATEWAY_HTML,
    ERROR_PAGE_HTML,
    HTML,
    Response,
    dumps,
    error_body,
    json_response,
    unauthorized_body,
    unsupported_body,
)

__all__ = ["FAULTS", "Fault", "FaultBook", "early_response", "no_batch_keys_response", "shape_response"]

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
        "cursor_refused",
        "repeat_page",
        "no_cursor",
        "ends_early",
        "auth",
        "forbidden",
        "unsupported",
        "upstream_auth",
        "upstream_forbidden",
        "no_batch_keys",
        "list_unavailable",
        "not_found",
    }
)
_ENDPOINTS = ("list", "retrieve", "any")


@dataclass
class Fault:
    name: str
    remaining: int | None
    params: dict[str, Any]


class FaultBook:
    """Armed faults by scope (a provider, or None for all). Not thread-safe: the caller holds the world lock."""

    def __init__(self) -> None:
        self._faults: dict[str | None, Fault] = {}

    def arm(
        self, fault: str | None, *, provider: str | None, times: int | None, params: dict[str, Any]
    ) -> None:
        """A provider's own fault wins over the global one; `arm(None)` for all providers clears every fault."""
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {sorted(FAULTS)}")
        if times is not None and times < 0:
            raise ValueError("times must be >= 0")
        if params.get("endpoint", "list") not in _ENDPOINTS:
            raise ValueError(f"endpoint must be one of {_ENDPOINTS}")
        if fault is None or times == 0:
            if provider is None and fault is None:
                self._faults.clear()
            else:
                self._faults.pop(provider, None)
            return
        self._faults[provider] = Fault(fault, times, dict(params))

    def armed(self, provider: str | None) -> str | None:
        found = self._faults.get(provider)
        return None if found is None else found.name

    def take(
        self, provider: str, endpoint: str = "list", batch_id: str | None = None, *, cursor: str | None = None
    ) -> Fault | None:
        """The fault that applies to this request, counting it down; one armed for another endpoint or another
        batch, or (`cursor_refused`) for a request that carries no cursor, is left as it is."""
        found = self._faults.get(provider)
        scope: str | None = provider
        if found is None:
            found, scope = self._faults.get(None), None
        if found is None:
            return None
        wanted = found.params.get("endpoint", "list")
        if wanted != "any" and wanted != endpoint:
            return None
        target = found.params.get("batch_id")
        if target is not None and target != batch_id:
            return None
        if (found.name == "cursor_refused" or found.params.get("cursor_only")) and cursor is None:
            return None
        if found.remaining is not None:
            found.remaining -= 1
            if found.remaining <= 0:
                self._faults.pop(scope, None)
        return found


def early_response(fault: Fault, provider: str, *, legacy: bool, request_type: str) -> Response | None:
    """Faults answered before the store is read: the gateway (or a proxy in front of it) refuses outright, or the
    provider refuses the gateway's own key (kept as the provider's status, not a Bifrost error)."""
    name = fault.name
    upstream = {"provider": provider, "request_type": request_type}
    if name == "server_error":
        # A provider's or a proxy's 5xx may say when to come back (maintenance); only when the test asks.
        # `status` other than 500: the upstream's own 5xx as Bifrost passes it on (the provider's status, not a
        # Bifrost error, the provider named: HandleProviderAPIError), or its timeout (504 request_timed_out) and
        # unreachable upstream (502 provider_connection_failed), Bifrost errors with a status.
        wait = fault.params.get("retry_after")
        status = int(fault.params.get("status", 500))
        if status == 500:
            body = error_body(500, "internal server error", err_type="server_error", is_bifrost_error=True)
        elif status == 504:
            body = error_body(504, "request timed out", err_type="request_timed_out", is_bifrost_error=True)
        elif status == 502:
            body = error_body(
                502,
                "dial tcp: connection refused",
                err_type="provider_connection_failed",
                is_bifrost_error=True,
            )
        else:
            body = error_body(status, "service unavailable", err_type="server_error", extra_fields=upstream)
        return json_response(status, body, {"Retry-After": str(wait)} if wait is not None else None)
    if name == "bad_gateway":
        return 502, BAD_GATEWAY_HTML, HTML, {}
    if name == "rate_limit":
        body = error_body(
            429, "rate limit exceeded for virtual key", err_type="rate_limited", top_type="rate_limited"
        )
        return json_response(429, body, {"Retry-After": str(fault.params.get("retry_after", 1))})
    if name == "html":
        return 200, ERROR_PAGE_HTML, HTML, {}
    if name == "auth":
        return json_response(401, unauthorized_body(None))
    if name == "forbidden":
        return json_response(403, error_body(403, "virtual key is blocked", top_type="virtual_key_blocked"))
    if name == "unsupported":
        return json_response(400, unsupported_body(provider, request_type))
    if name == "upstream_auth":
        body = error_body(
            401,
            "Incorrect API key provided: sk-proj-****wxyz. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            err_type="invalid_request_error",
            code="invalid_api_key",
            extra_fields=upstream,
        )
        return json_response(401, body)
    if name == "upstream_forbidden":
        body = error_body(
            403,
            "You have insufficient permissions for this operation. Missing scopes: api.batch.read.",
            err_type="invalid_request_error",
            extra_fields=upstream,
        )
        return json_response(403, body)
    if name == "no_batch_keys":
        return no_batch_keys_response(legacy=legacy)
    return None


def no_batch_keys_response(*, legacy: bool) -> Response:
    """No key of the provider has "use for batch APIs" on. Core's newBifrostErrorFromMsg is not a Bifrost error
    and has no status: newer transports send that as 400, older ones sent every status-less error as 500."""
    status = 500 if legacy else 400
    return json_response(status, error_body(None, "no batch-enabled keys found"))


def shape_response(fault: Fault, data: list[dict[str, Any]], page_body: bytes) -> Response:
    """Faults that answer 200 with a body the client must refuse: cut JSON, or JSON that is not a list page."""
    if fault.name == "malformed_json":
        return json_response(200, page_body[: max(1, len(page_body) // 2)])
    if fault.params.get("shape") == "array":
        return json_response(200, dumps(data))
    if data:
        return json_response(200, dumps(data[0]))
    return json_response(200, dumps({"object": "batch", "id": "batch_unexpected", "status": "in_progress"}))

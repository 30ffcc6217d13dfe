"""Bytes on the wire: cursors, list pages and error bodies encoded the way Bifrost's Go handlers encode them.

Kept apart from behaviour so benchmarks (`list_page_bytes`) and the live server share one encoder, and a parser
benchmark measures exactly the bytes the exporter sees in production.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Any, TypeVar, cast

__all__ = [
    "HTML",
    "MAX_LIMIT",
    "Response",
    "copy_json",
    "decode_cursor",
    "dumps",
    "encode_cursor",
    "error_body",
    "invalid_cursor_body",
    "json_response",
    "list_body",
    "list_page_bytes",
    "operation_error_body",
    "parse_limit",
    "top_extra_fields",
    "unauthorized_body",
    "unsupported_body",
]

_T = TypeVar("_T")

MAX_LIMIT = 1000

Response = tuple[int, bytes, str, dict[str, str]]
"""status, body, content type, extra headers"""

JSON = "application/json"
HTML = "text/html; charset=utf-8"

MISSING_PROVIDER_BODY = (
    b'{"is_bifrost_error":false,"status_code":400,"error":{"message":"provider query parameter is required"}}'
)
BAD_GATEWAY_HTML = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
ERROR_PAGE_HTML = (
    b"<!DOCTYPE html><html><head><title>Bifrost</title></head>"
    b"<body><h1>Something went wrong</h1><p>Please try again later.</p></body></html>"
)


def json_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> Response:
    return status, body, JSON, headers or {}


# ------------------------------------------------------------
# Cursor encoding


def encode_cursor(key: int, after: str | None, nonce: int | None = None) -> str:
    """Bifrost's serial cursor (core/schemas/pagination.go): URL-safe base64 of {"v":1,"i":key,"c":native},
    opaque to clients. `nonce` adds a field Go ignores, so a fault can hand out new cursors for one page."""
    obj: dict[str, Any] = {"v": 1, "i": key, "c": after or ""}
    if nonce is not None:
        obj["n"] = nonce
    return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).decode("ascii")


def decode_cursor(value: str) -> tuple[int, str | None] | None:
    """(key index, native cursor or None), or None for anything DecodeSerialCursor refuses (bad base64, not
    JSON, version other than 1): the gateway answers those with HTTP 500 "invalid pagination cursor"."""
    try:
        raw = base64.b64decode(value, altchars=b"-_", validate=True)
        obj = json.loads(raw)
    except (binascii.Error, ValueError):
        return None
    if not isinstance(obj, dict) or obj.get("v") != 1:
        return None
    key = obj.get("i", 0)
    after = obj.get("c", "")
    if not isinstance(key, int) or isinstance(key, bool) or key < 0:
        return None
    if not isinstance(after, str):
        return None
    return key, after or None


def parse_limit(raw: str | None, default: int) -> int:
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


# ------------------------------------------------------------
# Response bodies


def dumps(obj: Any) -> bytes:
    """Compact like Go's encoding/json, which is what the exporter parses in production."""
    return json.dumps(obj, separators=(",", ":")).encode()


def copy_json(value: _T) -> _T:
    """A JSON round trip runs in C: far faster than copy.deepcopy at benchmark sizes, and the store only ever
    holds JSON-shaped data (anything else would not survive the wire either)."""
    return cast(_T, json.loads(json.dumps(value)))


def list_body(
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
    return dumps(body)


def top_extra_fields(
    provider: str, latency: int, cache_debug: dict[str, Any] | None, request_type: str = "batch_list"
) -> dict[str, Any]:
    extra: dict[str, Any] = {"request_type": request_type, "provider": provider, "latency": latency}
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
    return list_body(
        data,
        has_more=has_more,
        next_cursor=next_cursor,
        first_id=str(data[0].get("id", "")) if data else None,
        last_id=str(data[-1].get("id", "")) if data else None,
        extra_fields=top_extra_fields(provider, latency_ms, cache_debug),
    )


def error_body(
    status: int | None,
    message: str,
    *,
    err_type: str | None = None,
    code: str | None = None,
    top_type: str | None = None,
    is_bifrost_error: bool = False,
    extra_fields: dict[str, Any] | None = None,
) -> bytes:
    """Bifrost's BifrostError JSON; `status` None omits status_code, as Go's omitempty does for a nil pointer."""
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
    if status is not None:
        body["status_code"] = status
    body["error"] = error
    if extra_fields is not None:
        body["extra_fields"] = extra_fields
    return dumps(body)


def unauthorized_body(err_type: str | None) -> bytes:
    """The gateway's own 401s. With admin auth on, its middleware answers a bare "Unauthorized"; governance
    refusals carry a top-level `type` and their own wording (plugins/governance/main.go)."""
    if err_type is None:
        return error_body(401, "Unauthorized")
    return error_body(401, _GOVERNANCE_MESSAGES.get(err_type, "Unauthorized"), top_type=err_type)


_GOVERNANCE_MESSAGES = {
    "virtual_key_required": "virtual key is required. Provide a virtual key via the x-bf-vk header.",
    "virtual_key_not_found": "virtual key not found. The provided virtual key does not exist or has been revoked.",
    "virtual_key_blocked": "virtual key is blocked",
}


def operation_error_body(message: str, provider: str, request_type: str = "batch_list") -> bytes:
    """NewBifrostOperationError: a Bifrost error without a status, which the transport sends as HTTP 500."""
    return error_body(
        None,
        message,
        is_bifrost_error=True,
        extra_fields={"provider": provider, "request_type": request_type},
    )


def invalid_cursor_body(provider: str) -> bytes:
    """NewBifrostOperationError("invalid pagination cursor"): a Bifrost error without a status, sent as 500."""
    return operation_error_body("invalid pagination cursor", provider)


def unsupported_body(provider: str, request_type: str) -> bytes:
    return error_body(
        400,
        f"{request_type} is not supported by {provider} provider",
        code="unsupported_operation",
        extra_fields={"provider": provider, "request_type": request_type},
    )

"""The gateway's logs API as far as batch accounting needs it: `GET /api/logs/{id}` and `GET /api/logs`.

Follows `transports/bifrost-http/handlers/logging.go` (@004baac5, getLogs and getLogByID): `limit` defaults to 50, a
value <= 0 or > 1000 is a 400, a negative `offset` is a 400, an unparsable number is ignored; `sort_by` is one of
timestamp/latency/tokens/cost (default timestamp), `order` asc/desc (default desc); `start_time`/`end_time` are
RFC3339 (an unparsable value is silently ignored, as Go's handler does); list filters are comma-separated. The answer
is logstore's SearchResult {logs, pagination, stats, has_logs}; a missing row is 404 "log not found". These routes sit
behind the admin login (Basic auth, or an admin session token) whenever the gateway's auth is on: a virtual key is not
enough.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from .accounting import Ledger, LogRow
from .wire import Response, dumps, error_body, json_response

__all__ = ["LogsApi", "parse_rfc3339"]

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
_SORT_FIELDS = ("timestamp", "latency", "tokens", "cost")


def parse_rfc3339(value: str) -> float | None:
    """time.Parse(time.RFC3339Nano, value) as a Unix time, or None where Go would refuse it."""
    if not _RFC3339.match(value):
        return None
    text = value.replace("Z", "+00:00")
    main, _, rest = text.partition(".")
    if rest:
        digits = re.match(r"\d+", rest)
        assert digits is not None
        frac = digits.group(0)
        text = main + "." + frac[:6].ljust(6, "0") + rest[len(frac) :]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _csv(raw: str | None) -> list[str] | None:
    if not raw:
        return None
    values = [v.strip() for v in raw.split(",") if v.strip()]
    return values or None


def _int(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        return None


class LogsApi:
    """Serves the ledger's rows. `authorized` decides the admin login; the caller holds the world lock."""

    def __init__(self, ledger: Ledger, authorized: Callable[[dict[str, str]], bool]) -> None:
        self._ledger = ledger
        self._authorized = authorized

    def handle(self, method: str, path: str, query: dict[str, str], headers: dict[str, str]) -> Response:
        if not self._authorized(headers):
            return json_response(401, error_body(401, "Unauthorized"))
        if method not in ("GET", "HEAD"):
            return json_response(405, error_body(405, "method not allowed"))
        if path == "/api/logs":
            return self._search(query)
        log_id = path[len("/api/logs/") :]
        if not log_id:
            return json_response(400, error_body(400, "log id is required"))
        row = self._ledger.rows.get(log_id)
        if row is None:
            return json_response(404, error_body(404, "log not found"))
        return json_response(200, dumps(row.render(self._ledger.config.null_cost)))

    def _search(self, query: dict[str, str]) -> Response:
        limit = 50
        parsed = _int(query.get("limit"))
        if parsed is not None:
            if parsed <= 0:
                return json_response(400, error_body(400, "limit must be greater than 0"))
            if parsed > 1000:
                return json_response(400, error_body(400, "limit cannot exceed 1000"))
            limit = parsed
        offset = 0
        parsed = _int(query.get("offset"))
        if parsed is not None:
            if parsed < 0:
                return json_response(400, error_body(400, "offset cannot be negative"))
            offset = parsed
        sort_by = query.get("sort_by") if query.get("sort_by") in _SORT_FIELDS else "timestamp"
        order = query.get("order") if query.get("order") in ("asc", "desc") else "desc"
        rows = [row for row in self._ledger.rows.values() if _matches(row, query)]
        rows.sort(key=lambda r: (_sort_value(r, str(sort_by)), r.id), reverse=order == "desc")
        page = rows[offset : offset + limit]
        null_cost = self._ledger.config.null_cost
        costs = [r.cost for r in rows if r.cost is not None]
        latencies = [r.latency for r in rows if r.latency is not None]
        body: dict[str, Any] = {
            "logs": [r.render(null_cost) for r in page],
            "pagination": {
                "limit": limit,
                "offset": offset,
                "sort_by": sort_by,
                "order": order,
                "total_count": len(rows),
            },
            "stats": {
                "total_requests": len(rows),
                "success_rate": (100.0 * sum(r.status == "success" for r in rows) / len(rows))
                if rows
                else 0.0,
                "average_latency": (sum(latencies) / len(latencies)) if latencies else 0.0,
                "total_tokens": sum(r.total_tokens for r in rows),
                "total_cost": sum(costs),
            },
            "has_logs": bool(self._ledger.rows),
        }
        return json_response(200, dumps(body))


def _sort_value(row: LogRow, field: str) -> float:
    if field == "latency":
        return row.latency if row.latency is not None else -1.0
    if field == "tokens":
        return float(row.total_tokens)
    if field == "cost":
        return row.cost if row.cost is not None else -1.0
    return row.timestamp


def _matches(row: LogRow, query: dict[str, str]) -> bool:
    checks: list[tuple[list[str] | None, list[str | None]]] = [
        (_csv(query.get("objects")), ["batch_results"]),
        (_csv(query.get("providers")), [row.provider]),
        (_csv(query.get("models")), [row.model]),
        (_csv(query.get("status")), [row.status]),
        (_csv(query.get("virtual_key_ids")), [row.virtual_key_id]),
        (_csv(query.get("team_ids")), [row.team_id]),
        (_csv(query.get("customer_ids")), [row.customer_id]),
        (_csv(query.get("selected_key_ids")), [row.selected_key_id]),
    ]
    for wanted, values in checks:
        if wanted is not None and not any(v in wanted for v in values):
            return False
    start = parse_rfc3339(query.get("start_time", ""))
    if start is not None and row.timestamp < start:
        return False
    end = parse_rfc3339(query.get("end_time", ""))
    if end is not None and row.timestamp > end:
        return False
    if query.get("missing_cost_only", "").lower() in ("1", "t", "true") and not (
        row.cost is None or row.cost <= 0
    ):
        return False
    request_id = query.get("request_id")
    return not request_id or row.id == request_id

"""The gateway's HTTP API as Bifrost serves it: auth, `GET /v1/batches`, retrieve and cancel, `/health`.

Routing and response bodies only; the socket plumbing lives in `server`, the `/_sim/` control API in `control`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import parse_qs, unquote, urlsplit

from .faults import early_response, shape_response
from .flavors import cache_debug_entry, jitter
from .store import Page, ProviderState
from .wire import (
    MISSING_PROVIDER_BODY,
    Response,
    decode_cursor,
    dumps,
    encode_cursor,
    error_body,
    json_response,
    list_body,
    parse_limit,
    top_extra_fields,
    unauthorized_body,
    unsupported_body,
)
from .world import World

__all__ = ["Gateway"]

_AUTH_HEADERS = ("authorization", "x-bf-vk", "x-api-key", "api-key")

ControlHandler = Callable[[str, str, bytes], Response]


class Gateway:
    """Answers one request at a time from the shared world; `/_sim/` paths go to the control handler."""

    def __init__(self, world: World, control: ControlHandler) -> None:
        self._world = world
        self._control = control

    def dispatch(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> Response:
        parts = urlsplit(raw_path)
        path = parts.path
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        if not path.startswith("/_sim/"):
            with self._world.lock:
                self._world.log.append(
                    {
                        "method": method,
                        "path": path,
                        "query": query,
                        "auth_headers": [name for name in _AUTH_HEADERS if name in headers],
                    }
                )
        try:
            if path == "/health" and method in ("GET", "HEAD"):
                return json_response(200, b'{"status":"ok"}')
            if path.startswith("/_sim/"):
                return self._control(method, path, body)
            if path == "/v1/batches" or path.startswith("/v1/batches/"):
                denied = self._check_auth(headers)
                if denied is not None:
                    return json_response(401, denied)
                if path == "/v1/batches":
                    if method != "GET":
                        return json_response(405, error_body(405, "method not allowed"))
                    return self._list(query)
                return self._batch_endpoint(method, unquote(path[len("/v1/batches/") :]), query)
        except (
            Exception
        ) as exc:  # a bug in the simulator must surface as a response, not a dropped connection
            return json_response(500, error_body(500, f"simulator error: {exc!r}", is_bifrost_error=True))
        return json_response(404, error_body(404, f"no route for {method} {path}"))

    def _check_auth(self, headers: dict[str, str]) -> bytes | None:
        settings = self._world.settings
        if settings.basic_header is not None and headers.get("authorization") != settings.basic_header:
            return unauthorized_body(None)
        if settings.virtual_key is None:
            return None
        if settings.basic_header is not None:
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
            return unauthorized_body("virtual_key_required")
        if settings.virtual_key not in present:
            return unauthorized_body("virtual_key_not_found")
        return None

    def _list(self, query: dict[str, str]) -> Response:
        provider = query.get("provider", "")
        with self._world.lock:
            self._world.list_requests_total += 1
            state = self._world.providers.get(provider) if provider else None
            if state is not None:
                state.list_requests += 1
            if not provider:
                return json_response(400, MISSING_PROVIDER_BODY)
            fault = self._world.faults.take(provider)
        if state is not None and state.spec.page_delay > 0:
            time.sleep(state.spec.page_delay)
        if fault is not None:
            if fault.name == "slow":
                time.sleep(float(fault.params.get("delay", 5)))
            else:
                early = early_response(fault, provider)
                if early is not None:
                    return early
        if state is None or not state.spec.supported:
            return json_response(400, unsupported_body(provider, "batch_list"))
        limit = parse_limit(query.get("limit"), state.spec.default_limit)
        after = query.get("after") or None
        with self._world.lock:
            self._world.advance(state)
            state.ensure_order()
            name = fault.name if fault is not None else None
            if name == "repeat_page":
                page = state.slice(0, 0, limit)
                state.nonce += 1
                cursor = encode_cursor(0, page.last_id, state.nonce) if state.spec.style == "cursor" else None
                page = page._replace(has_more=True, next_cursor=cursor)
            elif name == "no_cursor":
                page = Page([], True, None, None)
            else:
                found = self._page(state, after, limit)
                if isinstance(found, bytes):
                    if name != "cursor_loop":
                        return json_response(400, found)
                    found = Page([], False, None, None)
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
                return shape_response(fault, page.data, self._page_body(state, page))
            return json_response(200, self._page_body(state, page))

    def _page(self, state: ProviderState, after: str | None, limit: int) -> Page | bytes:
        if after is None:
            return state.slice(0, 0, limit)
        if state.spec.style == "legacy":
            start = state.position_after(0, after)
            if start is None:
                return error_body(
                    400, f"invalid 'after': no batch with id {after}", err_type="invalid_request_error"
                )
            return state.slice(0, start, limit)
        decoded = decode_cursor(after)
        if decoded is None:
            key = state.key_of(after)  # a raw batch id still works, as upstream falls back to it
            if key is None:
                return error_body(400, "invalid cursor", err_type="invalid_request_error")
            decoded = (key, after)
        key, after_id = decoded
        if key >= state.lists:
            return error_body(400, "invalid cursor: key index out of range", err_type="invalid_request_error")
        if after_id is None:
            return state.slice(key, 0, limit)
        start = state.position_after(key, after_id)
        if start is None:
            return error_body(400, "invalid cursor", err_type="invalid_request_error")
        return state.slice(key, start, limit)

    def _page_body(self, state: ProviderState, page: Page) -> bytes:
        latency = jitter(state.latency_rng, self._world.settings.latency_ms)
        debug = None
        if (
            self._world.settings.cache_debug
            and state.spec.style == "cursor"
            and state.latency_rng.random() < 0.3
        ):
            debug = cache_debug_entry(state.latency_rng, state.spec.name, state.spec.flavor)
        return list_body(
            page.data,
            has_more=page.has_more,
            next_cursor=page.next_cursor,
            first_id=str(page.data[0]["id"]) if page.data else None,
            last_id=page.last_id,
            extra_fields=top_extra_fields(state.spec.name, latency, debug),
        )

    def _batch_endpoint(self, method: str, rest: str, query: dict[str, str]) -> Response:
        provider = query.get("provider", "")
        if not provider:
            return json_response(400, MISSING_PROVIDER_BODY)
        cancel = method == "POST" and rest.endswith("/cancel")
        if cancel:
            rest = rest[: -len("/cancel")]
        elif method not in ("GET", "HEAD"):
            return json_response(405, error_body(405, "method not allowed"))
        request_type = "batch_cancel" if cancel else "batch_retrieve"
        with self._world.lock:
            state = self._world.providers.get(provider)
            if state is None or not state.spec.supported:
                return json_response(400, unsupported_body(provider, request_type))
            self._world.advance(state)
            batch = state.batches.get(rest)
            if batch is None:
                return json_response(
                    404, error_body(404, f"batch not found: {rest}", err_type="not_found_error")
                )
            if cancel:
                problem = self._world.lifecycle.cancel(state, batch)
                if problem is not None:
                    return json_response(400, problem)
            return json_response(200, dumps(batch))

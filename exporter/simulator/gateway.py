"""The gateway's HTTP API as Bifrost serves it: auth, `GET /v1/batches`, retrieve, cancel and results, `/health`,
and (with accounting on) the logs API.

Routing and response bodies only; the socket plumbing lives in `server`, the `/_sim/` control API in `control`,
governance's decisions in `governance`, settlements in `accounting`, the logs API in `logsapi`. The behaviour follows
transports/bifrost-http/handlers/inference.go (batchList, batchRetrieve, batchCancel, batchResults) and the
providers' BatchList implementations behind it; see each method for the quirk it reproduces.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .accounting import DEFAULT_MODELS, batch_results, results_available, results_body
from .faults import Fault, early_response, no_batch_keys_response, shape_response
from .flavors import BEDROCK_JOB_ARN, OPENAI_HELPER, cache_debug_entry, jitter, list_item, retrieve_object
from .governance import VirtualKey, presented_key
from .logsapi import LogsApi
from .store import Page, ProviderState
from .wire import (
    MISSING_PROVIDER_BODY,
    Response,
    decode_cursor,
    dumps,
    encode_cursor,
    error_body,
    invalid_cursor_body,
    json_response,
    list_body,
    operation_error_body,
    parse_limit,
    top_extra_fields,
    unauthorized_body,
    unsupported_body,
)
from .world import World

__all__ = ["Gateway"]

_AUTH_HEADERS = ("authorization", "x-bf-vk", "x-api-key", "api-key", "x-goog-api-key")
# GigaChat lists everything a key has on one page: no page size reaches the upstream.
_WHOLE_KEY = 1 << 30
_RAW_HEADER = "x-bf-send-back-raw-response"

ControlHandler = Callable[[str, str, bytes], Response]


class _Listing:
    """One list answer before encoding: the stored batches of the page and how paging goes on."""

    __slots__ = ("data", "first_id", "has_more", "last_id", "narrowed", "next_cursor")

    def __init__(
        self,
        data: list[dict[str, Any]],
        *,
        has_more: bool,
        next_cursor: str | None = None,
        first_id: str | None = None,
        last_id: str | None = None,
    ) -> None:
        self.data = data
        self.has_more = has_more
        self.next_cursor = next_cursor
        self.first_id = first_id
        self.last_id = last_id
        self.narrowed = False


class Gateway:
    """Answers one request at a time from the shared world; `/_sim/` paths go to the control handler."""

    def __init__(self, world: World, control: ControlHandler) -> None:
        self._world = world
        self._control = control
        self._logs = None if world.ledger is None else LogsApi(world.ledger, self._admin_login)

    def _presented_key_id(self, headers: dict[str, str]) -> str | None:
        governor = self._world.governor
        value = presented_key(headers)
        if governor is None or value is None:
            return None
        return next((vk.id for vk in governor.config.keys if vk.value == value), "unknown")

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
                        # Which of the governance's keys the request presented (its id, never its value).
                        "virtual_key": self._presented_key_id(headers),
                        "raw_response_header": headers.get(_RAW_HEADER),
                    }
                )
        try:
            if path == "/health" and method in ("GET", "HEAD"):
                return json_response(200, b'{"status":"ok"}')
            if path.startswith("/_sim/"):
                return self._control(method, path, body)
            if path == "/v1/batches" or path.startswith("/v1/batches/"):
                vk, denied = self._authenticate(headers)
                if denied is not None:
                    return denied
                if path == "/v1/batches":
                    if method != "GET":
                        return json_response(405, error_body(405, "method not allowed"))
                    return self._list(query, headers, vk)
                return self._batch_endpoint(method, unquote(path[len("/v1/batches/") :]), query, headers, vk)
            if self._logs is not None and (path == "/api/logs" or path.startswith("/api/logs/")):
                with self._world.lock:
                    self._world.advance_all()
                    return self._logs.handle(method, path, query, headers)
        except (
            Exception
        ) as exc:  # a bug in the simulator must surface as a response, not a dropped connection
            return json_response(500, error_body(500, f"simulator error: {exc!r}", is_bifrost_error=True))
        return json_response(404, error_body(404, f"no route for {method} {path}"))

    def _admin_login(self, headers: dict[str, str]) -> bool:
        """The logs API's login: the Basic credentials, or an admin session token as Bearer; open when the gateway's
        auth is off. A virtual key is never enough."""
        settings = self._world.settings
        if settings.basic_header is None and settings.admin_token is None:
            return True
        auth = headers.get("authorization", "")
        if settings.basic_header is not None and auth == settings.basic_header:
            return True
        return settings.admin_token is not None and auth == f"Bearer {settings.admin_token}"

    def _authenticate(self, headers: dict[str, str]) -> tuple[VirtualKey | None, Response | None]:
        """Admin basic auth first (a bare "Unauthorized"), then governance's virtual key checks: the key the request
        presents (None without governance, or without a key where keys are optional) or the refusal."""
        settings = self._world.settings
        if settings.basic_header is not None and headers.get("authorization") != settings.basic_header:
            return None, json_response(401, unauthorized_body(None))
        governor = self._world.governor
        if governor is not None:
            return governor.authenticate(headers)
        denied = self._check_single_key(headers)
        return None, None if denied is None else json_response(401, denied)

    def _check_single_key(self, headers: dict[str, str]) -> bytes | None:
        """The simple mandatory virtual key of `Simulator(virtual_key=...)`, kept as the older suites know it."""
        settings = self._world.settings
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

    def _echo_raw(self, headers: dict[str, str]) -> bool:
        """Whether the provider's raw response is copied into the answer. Newer transports take the header as a
        per-request override either way (transports/bifrost-http/lib/ctx.go); older ones only let it turn echo
        on (core/providers/utils ShouldSendBackRawResponse): `raw_header="promote_only"`, where `false` cannot
        silence a provider configured to echo."""
        settings = self._world.settings
        header = headers.get(_RAW_HEADER)
        if settings.raw_header == "promote_only":
            return settings.send_back_raw_response or header == "true"
        if header in ("true", "false"):
            return header == "true"
        return settings.send_back_raw_response

    # ---- list --------------------

    def _list(self, query: dict[str, str], headers: dict[str, str], vk: VirtualKey | None) -> Response:
        provider = query.get("provider", "")
        with self._world.lock:
            self._world.list_requests_total += 1
            state = self._world.providers.get(provider) if provider else None
            if state is not None:
                state.requests["list"] += 1
            if not provider:
                return json_response(400, MISSING_PROVIDER_BODY)
            if self._world.governor is not None:
                refused = self._world.governor.check_batch_request(vk, state, None)
                if refused is not None:
                    return refused
            fault = self._world.faults.take(provider, "list", cursor=query.get("after") or None)
        if state is not None and state.spec.page_delay > 0:
            time.sleep(state.spec.page_delay)
        if fault is not None:
            if fault.name == "slow":
                time.sleep(float(fault.params.get("delay", 5)))
            else:
                legacy = state is not None and state.spec.style == "legacy"
                early = early_response(fault, provider, legacy=legacy, request_type="batch_list")
                if early is not None:
                    return early
        if state is None or not state.spec.supported:
            return json_response(400, unsupported_body(provider, "batch_list"))
        spec = state.spec
        if fault is not None and fault.name == "list_unavailable":
            return self._list_unavailable(state)
        if fault is not None and fault.name == "cursor_refused":
            # A cursor the upstream no longer knows (its batch purged, the key rotated): OpenAI's 400; with
            # `undecodable=True`, one Bifrost itself cannot decode (a proxy mangled it): its 500 operation error.
            if fault.params.get("undecodable"):
                return json_response(500, invalid_cursor_body(spec.name))
            return self._unknown_after(state, query.get("after", ""))
        if not spec.batch_keys:
            return no_batch_keys_response(legacy=spec.style == "legacy")
        if spec.flavor == "gigachat":
            refused = _gigachat_refusal(query, spec.name)
            limit = _WHOLE_KEY
        else:
            refused = self._check_limit(state, query.get("limit"))
            limit = parse_limit(query.get("limit"), spec.default_limit)
        if refused is not None:
            return refused
        echo = self._echo_raw(headers)
        with self._world.lock:
            self._world.advance(state)
            state.ensure_order()
            if spec.style == "legacy":
                listing: _Listing | Response = self._legacy_page(
                    state, query.get("after") or None, limit, fault
                )
            else:
                listing = self._serial_page(state, query.get("after") or None, limit, fault)
            if not isinstance(listing, _Listing):
                return listing
            if spec.flavor == "gigachat" and listing.data:
                listing.first_id = str(listing.data[0]["id"])
                listing.last_id = str(listing.data[-1]["id"])
            if vk is not None and self._world.governor is not None:
                kept = [b for b in listing.data if self._world.governor.visible(vk, state, str(b["id"]))]
                listing.narrowed = len(kept) != len(listing.data)
                listing.data = kept
            body = self._page_body(state, listing, echo and not listing.narrowed)
            if fault is not None and fault.name in ("not_list", "malformed_json"):
                return shape_response(fault, listing.data, body)
            return json_response(200, body)

    def _list_unavailable(self, state: ProviderState) -> Response:
        """The upstream's list endpoint answers 404 (not available for this account or API version). Gemini's
        batchListByKey turns that into an empty list, so "no data" looks like "no batches"; the others keep the
        provider's 404."""
        spec = state.spec
        if spec.flavor == "gemini":
            latency = jitter(state.latency_rng, self._world.settings.latency_ms)
            extra = top_extra_fields(spec.name, latency, None)
            body = list_body(
                [], has_more=False, next_cursor=None, first_id=None, last_id=None, extra_fields=extra
            )
            return json_response(200, body)
        return json_response(404, _not_found_body(state, "", "batch_list"))

    def _check_limit(self, state: ProviderState, raw: str | None) -> Response | None:
        """A `limit` above the upstream's own maximum is passed on unchanged and refused by the provider
        (OpenAI: 100, Anthropic and Bedrock: 1000); the gateway keeps the provider's 400."""
        maximum = state.spec.limit_maximum
        if maximum is None or raw is None:
            return None
        try:
            value = int(raw)
        except ValueError:
            return None
        if value <= maximum:
            return None
        message = (
            f"Invalid 'limit': integer above maximum value. Expected a value <= {maximum}, "
            f"but got {value} instead."
        )
        body = error_body(
            400,
            message,
            err_type="invalid_request_error",
            code="integer_above_max_value",
            extra_fields={"provider": state.spec.name, "request_type": "batch_list"},
        )
        return json_response(400, body)

    def _serial_page(
        self, state: ProviderState, after: str | None, limit: int, fault: Fault | None
    ) -> _Listing | Response:
        """The newer gateway: keys one after the other (core/providers/utils SerialListHelper), each page from one
        key, `next_cursor` = Bifrost's serial cursor. Providers that read their cursor from a field the
        /v1/batches handler never fills (Anthropic AfterID, Gemini and Bedrock PageToken) start from key 0's
        first page on every request and so hand back the same `next_cursor` every time."""
        spec = state.spec
        name = fault.name if fault is not None else None
        if name == "repeat_page":
            page = state.slice(0, 0, limit)
            state.nonce += 1
            return _Listing(page.data, has_more=True, next_cursor=encode_cursor(0, page.last_id, state.nonce))
        if name == "no_cursor":
            return _Listing([], has_more=True)
        cursor_in = None if spec.ignores_after else after
        if cursor_in is None:
            key, native = 0, None
        else:
            decoded = decode_cursor(cursor_in)
            if decoded is None:
                if name == "cursor_loop":
                    return _Listing([], has_more=True, next_cursor=after)
                return json_response(500, invalid_cursor_body(spec.name))
            key, native = decoded
        if key >= state.lists:  # every key exhausted: an empty, final page
            return _Listing([], has_more=False)
        start = 0
        if native is not None:
            found = state.position_after(key, native)
            if found is None:
                return self._unknown_after(state, native)
            start = found
        page = state.slice(key, start, limit)
        listing = _Listing(page.data, has_more=False, last_id=page.last_id)
        if page.has_more:
            listing.has_more, listing.next_cursor = True, encode_cursor(key, page.last_id)
        elif key + 1 < state.lists:
            listing.has_more, listing.next_cursor = True, encode_cursor(key + 1, None)
        if name == "cursor_loop":
            listing.has_more = True
            listing.next_cursor = after or listing.next_cursor or encode_cursor(0, page.last_id)
        if name == "ends_early":
            # A gateway that ends its lists after the first page and says they are complete (has_more false): a
            # continuation gets an empty, final page. Nothing in the answer tells it from a list that really ended.
            listing.has_more, listing.next_cursor = False, None
            if after is not None:
                listing.data = []
        return listing

    def _legacy_page(
        self, state: ProviderState, after: str | None, limit: int, fault: Fault | None
    ) -> _Listing | Response:
        """The older gateway: one key, the provider's first_id/last_id and has_more passed through; a client
        passes `last_id` back as `after`."""
        name = fault.name if fault is not None else None
        if name == "repeat_page":
            page = state.slice(0, 0, limit)
            return self._legacy_listing(page, has_more=True)
        if name == "no_cursor":
            return _Listing([], has_more=True)
        if state.spec.ignores_after:
            after = None
        start = 0
        if after is not None:
            found = state.position_after(0, after)
            if found is None:
                if name == "cursor_loop":
                    return _Listing([], has_more=True, last_id=after)
                return self._unknown_after(state, after)
            start = found
        page = state.slice(0, start, limit)
        listing = self._legacy_listing(page, has_more=page.has_more)
        if name == "cursor_loop":
            listing.has_more = True
            listing.last_id = after or listing.last_id
        return listing

    @staticmethod
    def _legacy_listing(page: Page, *, has_more: bool) -> _Listing:
        first = str(page.data[0]["id"]) if page.data else None
        return _Listing(page.data, has_more=has_more, first_id=first, last_id=page.last_id)

    @staticmethod
    def _unknown_after(state: ProviderState, after: str) -> Response:
        body = error_body(
            400,
            f"invalid 'after': no batch with id {after}",
            err_type="invalid_request_error",
            extra_fields={"provider": state.spec.name, "request_type": "batch_list"},
        )
        return json_response(400, body)

    def _page_body(self, state: ProviderState, listing: _Listing, echo: bool) -> bytes:
        spec = state.spec
        latency = jitter(state.latency_rng, self._world.settings.latency_ms)
        debug = None
        if self._world.settings.cache_debug and spec.style == "cursor" and state.latency_rng.random() < 0.3:
            debug = cache_debug_entry(state.latency_rng, spec.name, spec.flavor)
        items = [list_item(batch, spec) for batch in listing.data]
        top = top_extra_fields(spec.name, latency, debug)
        if echo and spec.flavor == "gigachat":
            top["raw_response"] = {"data": [_native(batch) for batch in listing.data]}
        if echo and spec.flavor in OPENAI_HELPER and items:
            # Each item carries the provider's whole raw page (the provider converts every item with the page's
            # raw response): a page of n items grows with n².
            raw = _native_page(listing)
            items = [
                {**item, "extra_fields": {**item.get("extra_fields", {}), "raw_response": raw}}
                for item in items
            ]
        return list_body(
            items,
            has_more=listing.has_more,
            next_cursor=listing.next_cursor,
            first_id=listing.first_id,
            last_id=listing.last_id,
            extra_fields=top,
        )

    # ---- retrieve and cancel --------------------

    def _batch_endpoint(
        self, method: str, rest: str, query: dict[str, str], headers: dict[str, str], vk: VirtualKey | None
    ) -> Response:
        provider = query.get("provider", "")
        if not provider:
            return json_response(400, MISSING_PROVIDER_BODY)
        cancel = method == "POST" and rest.endswith("/cancel")
        results = method in ("GET", "HEAD") and rest.endswith("/results")
        if cancel:
            rest = rest[: -len("/cancel")]
        elif results:
            rest = rest[: -len("/results")]
        elif method not in ("GET", "HEAD"):
            return json_response(405, error_body(405, "method not allowed"))
        endpoint = "cancel" if cancel else "results" if results else "retrieve"
        request_type = f"batch_{endpoint}"
        with self._world.lock:
            state = self._world.providers.get(provider)
            if state is not None:
                state.requests[endpoint] += 1
                rest = _provider_id(state, rest)
            if self._world.governor is not None:
                refused = self._world.governor.check_batch_request(vk, state, rest)
                if refused is not None:
                    return refused
            fault = self._world.faults.take(provider, endpoint, rest)
        if state is not None and state.spec.page_delay > 0:
            time.sleep(state.spec.page_delay)
        if fault is not None:
            if fault.name == "slow":
                time.sleep(float(fault.params.get("delay", 5)))
            elif fault.name == "not_found" and state is not None:
                # Bifrost's retrieve asks the provider's keys in turn and answers with the last key's error: the
                # owning key rate-limited, another key's 404 is what the client gets, for a batch that exists.
                return json_response(404, _not_found_body(state, rest, request_type))
            else:
                legacy = state is not None and state.spec.style == "legacy"
                early = early_response(fault, provider, legacy=legacy, request_type=request_type)
                if early is not None:
                    return early
        if state is None or not state.spec.supported or (cancel and state.spec.flavor == "gigachat"):
            # GigaChat has no batch cancel (core/providers/gigachat/gigachat.go BatchCancel @d187fb6f).
            return json_response(400, unsupported_body(provider, request_type))
        if not state.spec.batch_keys:
            return no_batch_keys_response(legacy=state.spec.style == "legacy")
        echo = self._echo_raw(headers)
        with self._world.lock:
            self._world.advance(state)
            batch = state.batches.get(rest)
            if batch is None:
                return json_response(404, _not_found_body(state, rest, request_type))
            if results:
                return self._results(state, batch, vk)
            if cancel:
                problem = self._world.lifecycle.cancel(state, batch)
                if problem is not None:
                    return json_response(400, problem)
            latency = jitter(state.latency_rng, self._world.settings.latency_ms)
            obj = retrieve_object(batch, state.spec, latency)
            if echo and state.spec.flavor in OPENAI_HELPER | {"anthropic", "gigachat"}:
                obj["extra_fields"] = {**obj["extra_fields"], "raw_response": _native(batch)}
            if fault is not None and fault.name in ("not_list", "malformed_json"):
                return shape_response(fault, [obj], dumps(obj))
            return json_response(200, dumps(obj))

    def _results(self, state: ProviderState, batch: dict[str, Any], vk: VirtualKey | None) -> Response:
        """`GET /v1/batches/{id}/results`: the provider's result rows once the batch has any; with accounting on,
        the call settles the batch inline and leaves its own batch_results log row (see accounting)."""
        spec = state.spec
        ledger = self._world.ledger
        now = self._world.clock()
        view = retrieve_object(batch, spec, 0)
        if not results_available(batch, view, spec.flavor):
            if ledger is not None:
                ledger.error_echo(spec.name, now, vk)
            return _no_results(spec.name, spec.flavor, batch)
        latency = jitter(state.latency_rng, self._world.settings.latency_ms)
        if ledger is not None:
            payload, _ = ledger.results_call(state, batch, now, vk=vk, latency=float(latency))
            return json_response(200, dumps(payload))
        models = DEFAULT_MODELS.get(spec.flavor, ("unknown",))[:1]
        found = batch_results(batch, models, spec.name)
        return json_response(200, dumps(results_body(spec, str(batch["id"]), found, float(latency))))


def _native(batch: dict[str, Any]) -> dict[str, Any]:
    """What the provider itself answered for one batch (the stored object without Bifrost's extra_fields)."""
    return {k: v for k, v in batch.items() if k != "extra_fields"}


def _native_page(listing: _Listing) -> dict[str, Any]:
    data = [_native(batch) for batch in listing.data]
    page: dict[str, Any] = {"object": "list", "data": data}
    if data:
        page["first_id"] = data[0]["id"]
        page["last_id"] = data[-1]["id"]
    page["has_more"] = listing.has_more
    return page


def _no_results(provider: str, flavor: str, batch: dict[str, Any]) -> Response:
    """A results call before there are results: GigaChat and OpenRouter refuse with operation errors (HTTP 500,
    gigachat.go BatchResults @d187fb6f, openrouter/batch.go BatchResults); the others with the provider's own error
    (its wording here is not taken from a provider)."""
    if flavor == "gigachat":
        message = (
            "batch results not available: GigaChat did not return output_file_id or result_file_id "
            "(batch may not be completed yet)"
        )
        return json_response(500, operation_error_body(message, provider, "batch_results"))
    if flavor == "openrouter":
        message = f"batch results not available: batch status is {batch.get('status')}"
        return json_response(500, operation_error_body(message, provider, "batch_results"))
    body = error_body(
        400,
        f"Batch {batch['id']} has no results yet (status {batch.get('status')}).",
        err_type="invalid_request_error",
        extra_fields={"provider": provider, "request_type": "batch_results"},
    )
    return json_response(400, body)


def _gigachat_refusal(query: dict[str, str], provider: str) -> Response | None:
    """validateGigaChatBatchListRequest (core/providers/gigachat/batch.go @f44330cd), for what /v1/batches passes:
    `limit` when it parses as an int > 0, `before` as BeforeID. `after` travels as the serial cursor across keys and
    is not refused (a value that is not one is "invalid pagination cursor")."""
    message = None
    raw_limit = query.get("limit")
    if raw_limit is not None:
        try:
            if int(raw_limit) > 0:
                message = "GigaChat batch list does not support limit pagination"
        except ValueError:
            pass
    if message is None and query.get("before", "").strip():
        message = "GigaChat batch list does not support before_id pagination"
    if message is None:
        return None
    return json_response(500, operation_error_body(message, provider))


def _provider_id(state: ProviderState, batch_id: str) -> str:
    """The id the provider resolves `batch_id` (the route's one path segment, as Bifrost hands it on) to.

    Gemini's batchRetrieveByKey adds "batches/" to an id without it, and Bedrock's GetModelInvocationJob takes the
    job id for the ARN (docs/providers.md "Retrieve"); both answer with the full id. Their full ids hold a "/",
    which one path segment cannot carry: sent as is it splits the route, escaped it reaches the provider still
    escaped, so neither finds the batch. Vertex's retrieve is unsupported in the Bifrost source read, so its ids
    are taken as given.
    """
    flavor = state.spec.flavor
    if flavor not in ("gemini", "bedrock"):
        return batch_id
    if "/" in batch_id:
        return batch_id.replace("/", "%2F")  # as it reaches the provider, which knows no such batch
    full = ("batches/" if flavor == "gemini" else BEDROCK_JOB_ARN) + batch_id
    return full if full in state.batches else batch_id


def _not_found_body(state: ProviderState, batch_id: str, request_type: str) -> bytes:
    """A batch the provider does not know: its own 404, which the gateway keeps (is_bifrost_error false)."""
    flavor = state.spec.flavor
    extra = {"provider": state.spec.name, "request_type": request_type}
    if flavor == "anthropic":
        return error_body(404, "Not found", err_type="not_found_error", extra_fields=extra)
    if flavor in ("gemini", "vertex"):
        return error_body(404, "Requested entity was not found.", extra_fields=extra)
    if flavor == "bedrock":
        return error_body(404, f"Could not find job {batch_id}", extra_fields=extra)
    return error_body(
        404, f"No batch found with id '{batch_id}'.", err_type="invalid_request_error", extra_fields=extra
    )

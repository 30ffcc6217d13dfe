"""One provider's batch list from the gateway, page by page.

This is the only place that knows HTTP: auth headers, Bifrost's pagination quirks (three cursor spellings, empty
pages that are not the end, providers that ignore `after`), bounded retries, and the mapping of every way a request
can go wrong onto the metrics contract's closed list of reasons. Callers get a ListResult and never an exception.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import re
import ssl
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

import httpx

from . import __version__
from .logs import Redactor
from .models import Batch, CacheDebug, InvalidResponseError, Page, error_code, parse_page
from .settings import Settings

Reason = Literal[
    "timeout",
    "connection",
    "auth",
    "rate_limited",
    "server_error",
    "client_error",
    "invalid_response",
    "cursor_loop",
    "max_pages",
]
REASONS: Final[tuple[Reason, ...]] = get_args(Reason)
_RETRYABLE: Final = frozenset({"timeout", "connection", "rate_limited", "server_error"})
_MAX_REDIRECTS = 5
# What we repeat from a gateway's answer in a failure detail: identifiers only. A gateway (or a proxy in front of
# it) may echo the request, credentials included, into error codes or headers.
_TOKEN_RE: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_MEDIA_TYPE_RE: Final = re.compile(r"^[A-Za-z0-9_.+-]{1,40}/[A-Za-z0-9_.+-]{1,80}$")


class RequestFailedError(Exception):
    """A list request that failed for good (after retries, or at once when retrying cannot help)."""

    def __init__(
        self, reason: Reason, detail: str, status: int | None = None, retry_after: float | None = None
    ):
        super().__init__(f"{reason}: {detail}")
        self.reason: Reason = reason
        self.detail = detail
        self.status = status
        self.retry_after = retry_after


class UnsupportedProviderError(Exception):
    """The gateway said this provider has no batch listing: not a failure, and not worth retrying soon."""


@dataclass(frozen=True, slots=True)
class Failure:
    reason: Reason
    detail: str
    status: int | None
    attempts: int


@dataclass(slots=True)
class ListResult:
    """What one poll of one provider saw. `failure` set means a request failed and the batches are incomplete.

    `batches` is filled only when list_batches was called without `on_page`; the poller streams pages instead, so
    a large gateway's list never has to sit in memory whole.
    """

    batches: list[Batch] = field(default_factory=list)
    batch_count: int = 0
    pages: int = 0
    latencies: list[float] = field(default_factory=list)
    cache_debugs: list[CacheDebug] = field(default_factory=list)
    skipped_items: int = 0
    first_skip_error: str | None = None
    truncated: Literal["cursor_loop", "max_pages"] | None = None
    failure: Failure | None = None
    unsupported: bool = False
    retries: int = 0


def _parse_retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def build_headers(settings: Settings) -> dict[str, str]:
    """Request headers for every call; extra_headers go first so they cannot override the auth we were given."""
    headers = dict(settings.extra_headers)
    headers["User-Agent"] = f"bifrost-batch-exporter/{__version__}"
    headers["Accept"] = "application/json"
    if settings.virtual_key is not None:
        headers["x-bf-vk"] = settings.virtual_key.get_secret_value()
    token = settings.basic_auth_token()
    if token is not None:
        headers["Authorization"] = "Basic " + token
    elif settings.bearer_token is not None:
        headers["Authorization"] = "Bearer " + settings.bearer_token.get_secret_value()
    return headers


def _verify(settings: Settings) -> ssl.SSLContext | bool:
    if not settings.tls_verify:
        return False
    if settings.ca_file is not None:
        return ssl.create_default_context(cafile=str(settings.ca_file))
    return True


class BifrostClient:
    """Keep-alive HTTP to the gateway for every provider's poller: one small pool per provider.

    A provider's pages are fetched one after the other, so its pool holds one connection. Pools are per provider
    because httpcore's pool does work proportional to (queued requests × connections) on every request event:
    with one shared pool and 23 providers polling at once, that bookkeeping cost more CPU than parsing the pages.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._settings = settings
        self._sleep = sleep
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._rng = rng
        self._transport = transport
        self._headers = build_headers(settings)
        verify = _verify(settings)
        # One TLS context (and one read of the CA bundle) shared by every provider's pool.
        self._tls: ssl.SSLContext | bool = (
            httpx.create_ssl_context(verify=True, trust_env=False) if verify is True else verify
        )
        self._pools: dict[str, httpx.AsyncClient] = {}
        base = httpx.URL(settings.bifrost_url)
        self._origin = (base.scheme, base.host, base.port)
        # Failure details end up in logs and exceptions: never with one of our credentials in them.
        self._scrub = Redactor(settings.secret_values()).scrub

    def _new_http(self) -> httpx.AsyncClient:
        settings = self._settings
        return httpx.AsyncClient(
            base_url=settings.bifrost_url,
            headers=self._headers,
            timeout=httpx.Timeout(settings.request_timeout_seconds),
            verify=self._tls,
            follow_redirects=True,
            max_redirects=_MAX_REDIRECTS,
            trust_env=False,
            transport=self._transport,
            event_hooks={"request": [self._same_origin_only]},
        )

    def _http_for(self, provider: str) -> httpx.AsyncClient:
        http = self._pools.get(provider)
        if http is None:
            http = self._pools[provider] = self._new_http()
        return http

    async def _same_origin_only(self, request: httpx.Request) -> None:
        """Refuse a redirect to another origin: httpx strips only Authorization there, not x-bf-vk or extra_headers."""
        url = request.url
        if (url.scheme, url.host, url.port) != self._origin:
            raise RequestFailedError(
                "invalid_response",
                f"redirect to another origin ({url.scheme}://{_short(url.host, 80)}) refused; "
                "credentials are only sent to bifrost_url",
            )

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for http in pools:
            await http.aclose()

    async def list_batches(
        self, provider: str, on_page: Callable[[list[Batch]], None] | None = None
    ) -> ListResult:
        """Every batch of `provider`, deduplicated by id, following Bifrost's cursor rules to the end or a stop.

        With `on_page`, each page's new batches are handed over as they arrive and not kept.
        """
        result = ListResult()
        # Hashes, not the id strings: this set lives for a whole poll and a large list has 10^5-10^6 ids; a 64-bit
        # collision would at worst drop one batch from one poll.
        seen_ids: set[int] = set()
        used_cursors: set[str] = set()
        after: str | None = None
        settings = self._settings
        while True:
            try:
                page = await self._fetch_page(provider, after, result)
            except UnsupportedProviderError:
                result.unsupported = True
                return result
            except RequestFailedError as exc:
                result.failure = Failure(exc.reason, self._scrub(exc.detail), exc.status, result.retries + 1)
                return result
            result.pages += 1
            if page.latency_seconds is not None:
                result.latencies.append(page.latency_seconds)
            if page.cache_debug is not None:
                result.cache_debugs.append(page.cache_debug)
            if page.skipped_items:
                result.skipped_items += page.skipped_items
                result.first_skip_error = result.first_skip_error or page.first_skip_error
            fresh: list[Batch] = []
            for batch in page.batches:
                key = hash(batch.id)
                if key not in seen_ids:
                    seen_ids.add(key)
                    fresh.append(batch)
            if fresh:
                result.batch_count += len(fresh)
                if on_page is None:
                    result.batches.extend(fresh)
                else:
                    on_page(fresh)
            if page.batches and not fresh:
                # Providers that ignore `after` hand back page 1 again under a new cursor: only ids reveal it.
                result.truncated = "cursor_loop"
                return result
            if not page.has_more:
                return result
            cursor = page.next_cursor or page.last_id or (page.batches[-1].id if page.batches else None)
            if cursor is None or cursor in used_cursors:
                result.truncated = "cursor_loop"
                return result
            if result.pages >= settings.max_pages:
                result.truncated = "max_pages"
                return result
            used_cursors.add(cursor)
            after = cursor

    async def _fetch_page(self, provider: str, after: str | None, result: ListResult) -> Page:
        params = {"provider": provider, "limit": str(self._settings.page_size)}
        if after is not None:
            params["after"] = after
        attempt = 0
        while True:
            try:
                return await self._request(params)
            except RequestFailedError as exc:
                if exc.reason not in _RETRYABLE or attempt >= self._settings.max_retries:
                    raise
                delay = min(self._backoff_max, self._backoff_base * (2**attempt))
                delay = delay / 2 + self._rng() * delay / 2
                if exc.retry_after is not None:
                    if exc.retry_after > self._backoff_max:
                        raise RequestFailedError(
                            exc.reason,
                            f"{exc.detail}; Retry-After {exc.retry_after:.0f}s is beyond the retry budget",
                            exc.status,
                        ) from None
                    delay = max(delay, exc.retry_after)
                attempt += 1
                result.retries += 1
                await self._sleep(delay)

    async def _request(self, params: dict[str, str]) -> Page:
        settings = self._settings
        cap = settings.max_response_bytes
        try:
            async with asyncio.timeout(settings.request_timeout_seconds):
                async with self._http_for(params["provider"]).stream(
                    "GET", "/v1/batches", params=params, headers={"Accept-Encoding": "gzip, deflate"}
                ) as response:
                    declared = response.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > cap:
                        raise RequestFailedError(
                            "invalid_response",
                            f"body of {declared} bytes exceeds max_response_bytes={cap}",
                            response.status_code,
                        )
                    # Decoded here, not by httpx, so the cap bounds the inflated size: httpx inflates a whole
                    # network chunk at once, and 64 KB of gzip can become 64 MB.
                    decoder = _BoundedDecoder(response.headers.get("content-encoding", ""), cap, response)
                    async for raw in response.aiter_raw():
                        decoder.feed(raw)
                    body = decoder.finish()
        except TimeoutError:
            raise RequestFailedError(
                "timeout", f"no complete answer within {settings.request_timeout_seconds:g}s"
            ) from None
        except httpx.TimeoutException as exc:
            raise RequestFailedError(
                "timeout", f"{type(exc).__name__} after {settings.request_timeout_seconds:g}s"
            ) from None
        except httpx.TooManyRedirects:
            raise RequestFailedError("invalid_response", f"more than {_MAX_REDIRECTS} redirects") from None
        except httpx.TransportError as exc:
            raise RequestFailedError("connection", f"{type(exc).__name__}: {_short(str(exc))}") from None
        except httpx.HTTPError as exc:
            raise RequestFailedError("connection", f"{type(exc).__name__}") from None
        return self._interpret(response, body)

    def _interpret(self, response: httpx.Response, body: bytes) -> Page:
        status = response.status_code
        if 200 <= status < 300:
            ctype = response.headers.get("content-type", "")
            if ctype and "json" not in ctype.lower():
                media = ctype.split(";", 1)[0].strip()
                shown = media if _MEDIA_TYPE_RE.match(media) else "unparseable"
                raise RequestFailedError("invalid_response", f"content-type {shown!r}, expected JSON", status)
            try:
                return parse_page(body)
            except InvalidResponseError as exc:
                raise RequestFailedError("invalid_response", str(exc), status) from None
        code, etype = (c if c is not None and _TOKEN_RE.match(c) else None for c in error_code(body))
        hint = f" ({code or etype})" if (code or etype) else ""
        if status == 400 and code == "unsupported_operation":
            raise UnsupportedProviderError()
        if status in (401, 403):
            raise RequestFailedError("auth", f"HTTP {status}{hint}", status)
        if status == 429:
            retry_after = _parse_retry_after(response.headers.get("retry-after"), time.time())
            raise RequestFailedError("rate_limited", f"HTTP 429{hint}", status, retry_after)
        if status >= 500:
            retry_after = _parse_retry_after(response.headers.get("retry-after"), time.time())
            raise RequestFailedError("server_error", f"HTTP {status}{hint}", status, retry_after)
        raise RequestFailedError("client_error", f"HTTP {status}{hint}", status)


class _BoundedDecoder:
    """Content-Encoding gzip/deflate/identity, refusing to produce more than `cap` bytes."""

    def __init__(self, encoding: str, cap: int, response: httpx.Response) -> None:
        self._cap = cap
        self._status = response.status_code
        self._chunks: list[bytes] = []
        self._size = 0
        coding = encoding.strip().lower()
        self._zlib: zlib._Decompress | None = None
        self._deflate_guess = False
        self._unsupported: str | None = None
        if coding in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif coding == "deflate":
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS)
            self._deflate_guess = True
        elif coding not in ("", "identity"):
            self._unsupported = coding  # kept raw: an error status still classifies by its code

    def _keep(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._cap:
            raise RequestFailedError(
                "invalid_response", f"body exceeds max_response_bytes={self._cap}", self._status
            )
        if data:
            self._chunks.append(data)

    def feed(self, raw: bytes) -> None:
        if self._zlib is None:
            self._keep(raw)
            return
        try:
            if self._deflate_guess:
                # Servers send raw deflate as often as the zlib-wrapped kind the RFC asks for; the header tells.
                self._deflate_guess = False
                if len(raw) >= 2 and not (raw[0] & 0x0F == 8 and (raw[0] << 8 | raw[1]) % 31 == 0):
                    self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
            self._keep(self._zlib.decompress(raw, self._cap - self._size + 1))
            while self._zlib.unconsumed_tail:
                self._keep(self._zlib.decompress(self._zlib.unconsumed_tail, self._cap - self._size + 1))
        except zlib.error as exc:
            raise RequestFailedError(
                "invalid_response", f"body does not decode: {exc}", self._status
            ) from None

    def finish(self) -> bytes:
        if self._unsupported is not None and 200 <= self._status < 300:
            raise RequestFailedError(
                "invalid_response",
                f"unsupported content-encoding {_short(self._unsupported, 40)!r}",
                self._status,
            )
        if self._zlib is not None:
            try:
                self._keep(self._zlib.flush())
            except zlib.error as exc:
                raise RequestFailedError(
                    "invalid_response", f"body does not decode: {exc}", self._status
                ) from None
        return b"".join(self._chunks)


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."

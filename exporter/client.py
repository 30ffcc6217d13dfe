"""One provider's batches from the gateway: list pages and single retrieves.

This is the only place that knows HTTP: auth headers, Bifrost's pagination quirks (three cursor spellings, empty
pages that are not the end, providers whose cursor the gateway never forwards), bounded retries, pacing, and the
mapping of every way a request can go wrong onto the metrics contract's closed list of reasons. Callers get a
ListResult or RetrieveResult and never an exception.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import hashlib
import hmac
import json
import math
import random
import re
import secrets
import ssl
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, Generic, Literal, TypeVar, get_args
from urllib.parse import quote, urljoin, urlsplit

from . import __version__
from .http1client import HttpError, Pool, Resolve, Response, TooLarge, tls_context
from .logs import REDACTED, Redactor
from .models import Batch, CacheDebug, InvalidResponseError, Page, parse_batch, parse_page
from .providers import list_rules, page_size_for
from .settings import Settings

Reason = Literal[
    "timeout",
    "connection",
    "auth",
    "upstream_auth",
    "rate_limited",
    "server_error",
    "client_error",
    "invalid_response",
    "cursor_loop",
    "cursor_ignored",
    "max_pages",
    "cursor_refused",
]
REASONS: Final[tuple[Reason, ...]] = get_args(Reason)
Truncation = Literal["cursor_loop", "cursor_ignored", "max_pages"]
Stop = Literal["end", "budget", "caller"]
_RETRYABLE: Final = frozenset({"timeout", "connection", "rate_limited", "server_error"})
# The longest Retry-After kept to across polls: beyond it (a misconfigured proxy's year) the provider is asked again.
MAX_RETRY_AFTER_SECONDS: Final = 3600.0
_MAX_REDIRECTS = 5
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# What a redirect's path and query may carry as they are; anything else (spaces, controls, non-ASCII) is escaped,
# so a Location can never end the request line early or add a header.
_TARGET_SAFE: Final = "/%:@!$&'()*+,;=~"
# What we repeat from a gateway's answer in a failure detail: identifiers only. A gateway (or a proxy in front of
# it) may echo the request, credentials included, into error codes or headers.
_TOKEN_RE: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_MEDIA_TYPE_RE: Final = re.compile(r"^[A-Za-z0-9_.+-]{1,40}/[A-Za-z0-9_.+-]{1,80}$")
# Credentials that are not ours but may still be echoed in an upstream message (a provider quoting the key it was
# given, a proxy quoting a header): OpenAI/Anthropic/Bifrost-style keys, bearer tokens, AWS access key ids, Google
# API keys, 32-hex keys (Azure's; a request id of that shape is redacted too, harmlessly).
_FOREIGN_SECRET_RE: Final = re.compile(
    r"(sk-[A-Za-z0-9_*-]{6,}|(?i:bearer)\s+[A-Za-z0-9._~+/=-]{6,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35}"
    r"|(?<![0-9A-Fa-f])[0-9A-Fa-f]{32}(?![0-9A-Fa-f]))"
)
# Characters a path segment may carry unescaped (RFC 3986 pchar): ":" stays readable in ARNs; "/", "?", "#", "%"
# and everything else are percent-encoded, so an id is always exactly one segment.
_PATH_SAFE: Final = ":@!$&'()*+,;="
_BEDROCK_JOB_ARN_RE: Final = re.compile(
    r"^arn:aws[a-z-]*:bedrock:[a-z0-9-]*:\d{12}:model-invocation-job/([a-z0-9]{1,64})$"
)
_MESSAGE_LIMIT: Final = 160
_DETAIL_LIMIT: Final = 290
# Error `type`s that the gateway itself answers with (its auth, governance and rate-limit layers), never a provider.
_GATEWAY_ERROR_TYPES: Final = frozenset(
    {
        # The newest governance's identity and ownership refusals (plugins/governance; docs/providers.md S22).
        "access_not_found",
        "access_blocked",
        "provider_blocked",
        "model_blocked",
        "budget_exceeded",
        "rate_limited",
        "token_limited",
        "request_limited",
    }
)
T = TypeVar("T")


class RequestFailedError(Exception):
    """A request that failed for good (after retries, or at once when retrying cannot help)."""

    def __init__(
        self,
        reason: Reason,
        detail: str,
        status: int | None = None,
        retry_after: float | None = None,
        *,
        gateway_body: bool = False,
        refusal: str | None = None,
        body_refused: bool = False,
        cursor_error: bool = False,
    ):
        super().__init__(f"{reason}: {detail}")
        self.reason: Reason = reason
        self.detail = detail
        self.status = status
        self.retry_after = retry_after
        # The answer was a Bifrost-shaped error body, not a proxy's page or a router's bare "Not Found".
        self.gateway_body = gateway_body
        # The gateway's own error type or code when it is one of governance's refusals (provider_blocked,
        # budget_exceeded, …): a decision about the key, never about the cursor the request carried.
        self.refusal = refusal
        # A JSON answer of the right type that the parser refused: a fault of what was asked for (one row, one
        # batch), not of the route or the gateway.
        self.body_refused = body_refused
        # A 5xx that is the gateway's own verdict on the cursor (Bifrost answers a cursor it cannot decode with its
        # operation error "invalid pagination cursor", a 500 without a status), not an upstream's outage.
        self.cursor_error = cursor_error


class UnsupportedProviderError(Exception):
    """The gateway said this provider has no batch API: not a failure, and not worth retrying soon."""


@dataclass(frozen=True, slots=True)
class Failure:
    reason: Reason
    detail: str
    status: int | None
    attempts: int


@dataclass(slots=True)
class ListResult:
    """What one list call of one provider saw. `failure` set means a request failed and the batches are incomplete.

    `batches` is filled only when list_batches was called without `on_page`; the poller streams pages instead, so
    a large gateway's list never has to sit in memory whole. `truncated` says the list is known to be partial for
    a reason the operator must see (with `truncated_detail` naming the gateway behaviour and the workaround);
    `stopped` says why paging ended when it did not fail, and `next_cursor` where a later call can continue (also
    after a failure on a page past the first: the failed page).
    """

    batches: list[Batch] = field(default_factory=list)
    batch_count: int = 0
    pages: int = 0
    latencies: list[float] = field(default_factory=list)
    cache_debugs: list[CacheDebug] = field(default_factory=list)
    skipped_items: int = 0
    first_skip_error: str | None = None
    truncated: Truncation | None = None
    truncated_detail: str | None = None
    failure: Failure | None = None
    unsupported: bool = False
    retries: int = 0
    requests: int = 0
    stopped: Stop = "end"
    next_cursor: str | None = None
    # The request that failed carried a cursor, and the gateway refused it (a 4xx, or Bifrost's own 500 "invalid
    # pagination cursor"; any other 5xx is an outage, whatever its shape): the walk must restart from the head,
    # since sending the same cursor again would fail the same way for ever.
    cursor_refused: bool = False
    # The failure is governance saying this call's virtual key is not allowed on the provider (403
    # provider_blocked): that key has no view of the provider, which the poller may take as an empty one.
    key_not_allowed: bool = False


@dataclass(slots=True)
class PagePlace:
    """Where the page being handed to `on_page` was read: the cursor it was fetched with (None: a walk's first
    page). Bifrost's cursors carry their place (the provider key and the provider's own cursor), so a page that
    holds running batches can be read again by it later: one request for the page instead of one per batch."""

    after: str | None = None


@dataclass(slots=True)
class RetrieveResult:
    """One batch fetched by id. Exactly one of: `batch`, `gone` (the gateway answered 404), `failure`."""

    batch: Batch | None = None
    gone: bool = False
    failure: Failure | None = None
    requests: int = 0
    latency_seconds: float | None = None
    # With `gone`: governance's refusal type, when the 404 is its own (`access_blocked`: the batch is another
    # virtual key's, which says nothing of whether it exists).
    refusal: str | None = None


@dataclass(slots=True)
class LogResult(Generic[T]):
    """One row of the gateway's logs API. Exactly one of: `row`, `absent` (a 404 in the gateway's own error shape:
    no such row, i.e. not settled yet), `failure`."""

    row: T | None = None
    absent: bool = False
    failure: Failure | None = None
    requests: int = 0
    # The failure is this row's (the gateway answered it, but not as a row we can read): the route and the
    # gateway work, so other rows are looked up, and this one again after a gap. Any other failure (a bare 404
    # of a route that is not there, a login page, a 5xx) says nothing about the row.
    row_fault: bool = False
    # The gateway's clock when it answered (its Date header; Go's net/http always sends one), None without a
    # readable one: the cost horizon is judged on it as well as on ours, so a host clock stepped ahead cannot end
    # a settlement's wait early.
    date: float | None = None


@dataclass(slots=True)
class _Tally:
    requests: int = 0
    retries: int = 0
    cursor: str | None = None  # the `after` of the request under way
    vk: str | None = None  # the virtual key this call's requests carry (None: the default headers')
    date: str | None = None  # the Date header of the last answer (None: no answer, or none in it)


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


def parse_http_date(value: str | None) -> float | None:
    """An HTTP Date header as a Unix time; None for a missing or unreadable one (junk is never a time)."""
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)  # "-0000": an HTTP date is always GMT
    try:
        seconds = when.timestamp()
    except (OverflowError, ValueError, OSError):
        return None
    return seconds if math.isfinite(seconds) else None


def build_headers(settings: Settings) -> dict[str, str]:
    """Request headers for every call; extra_headers go first so they cannot override what we must send.

    `x-bf-send-back-raw-response: false`: with raw responses on, Bifrost copies the provider's whole raw page
    into every OpenAI/Azure list item, which multiplies a page's size by its length.
    """
    headers = dict(settings.extra_headers)
    headers["User-Agent"] = f"bifrost-batch-exporter/{__version__}"
    headers["Accept"] = "application/json"
    headers["x-bf-send-back-raw-response"] = "false"
    keys = settings.virtual_keys()
    if keys:
        # The first key by default; a call made for another key of the view carries that one instead.
        headers["x-bf-vk"] = keys[0][1].get_secret_value()
    token = settings.basic_auth_token()
    if token is not None:
        headers["Authorization"] = "Basic " + token
    elif settings.bearer_token is not None:
        headers["Authorization"] = "Bearer " + settings.bearer_token.get_secret_value()
    return headers


def _header_block(headers: dict[str, str], authority: str) -> tuple[bytes, str | None]:
    """The request head's fields after the request line, encoded once (one field per name: a later spelling of a
    name replaces an earlier one, so extra_headers can never double one we send), and the default virtual key,
    which is sent per request since a call for another key of the view carries that one instead. That key is always
    the view's first: settings refuse an `x-bf-vk` in extra_headers, which would be a key the view does not count."""
    fields: dict[str, tuple[str, str]] = {}
    for name, value in headers.items():
        fields[name.lower()] = (name, value)
    vk = fields.pop("x-bf-vk", None)
    fields.pop("host", None)
    fields["accept-encoding"] = ("Accept-Encoding", "gzip, deflate")
    lines = [f"Host: {authority}\r\n", *(f"{name}: {value}\r\n" for name, value in fields.values())]
    return "".join(lines).encode("latin-1"), None if vk is None else vk[1]


@dataclass(frozen=True, slots=True)
class _ErrorBody:
    """What an error response says about itself, reduced to what classification and the log line need."""

    code: str | None = None
    etype: str | None = None
    message: str | None = None
    is_bifrost_error: bool | None = None
    from_provider: bool = False
    shaped: bool = False  # a JSON object with an `error` object: Bifrost's error shape


def _read_error_body(body: bytes) -> _ErrorBody:
    """Bifrost's error shape `{type?, is_bifrost_error, error:{type?, code?, message}, extra_fields?}`, leniently."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return _ErrorBody()
    if not isinstance(doc, dict):
        return _ErrorBody()
    raw_err = doc.get("error")
    err = raw_err if isinstance(raw_err, dict) else {}
    top_type = doc.get("type")
    etype = err.get("type") if isinstance(err.get("type"), str) else top_type
    code = err.get("code")
    message = err.get("message")
    extra = doc.get("extra_fields")
    is_bifrost = doc.get("is_bifrost_error")
    return _ErrorBody(
        code=code if isinstance(code, str) and _TOKEN_RE.match(code) else None,
        etype=etype if isinstance(etype, str) and _TOKEN_RE.match(etype) else None,
        message=message if isinstance(message, str) else None,
        is_bifrost_error=is_bifrost if isinstance(is_bifrost, bool) else None,
        from_provider=isinstance(extra, dict) and isinstance(extra.get("provider"), str),
        shaped=isinstance(raw_err, dict),
    )


def _is_gateway_type(value: str | None) -> bool:
    return value is not None and (value.startswith("virtual_key") or value in _GATEWAY_ERROR_TYPES)


def _upstream_refusal(err: _ErrorBody) -> bool:
    """A 401/403 that the provider gave the gateway (kept by Bifrost), not the gateway refusing us.

    The gateway's own refusals are Bifrost errors or carry a governance `type` (virtual_key_*, provider_blocked);
    its auth middleware answers a bare `{"error":{"message":"Unauthorized"}}`. A provider's refusal is not a
    Bifrost error and says something of its own: an error type or code, or the provider in `extra_fields`.
    """
    if err.is_bifrost_error is not False:
        return False
    if _is_gateway_type(err.etype) or _is_gateway_type(err.code):
        return False
    return err.from_provider or err.etype is not None or err.code is not None


class BifrostClient:
    """Keep-alive HTTP to the gateway for every provider's poller: one small pool per provider.

    A provider's requests go one after the other (or a few at once for retrieves), so its pool stays small, and
    one provider's slow pages never queue another's requests. Request starts are paced per provider (list and
    retrieve together), because every request the gateway receives it forwards to the provider and spends the
    customer's rate limit there.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        resolve: Resolve | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._settings = settings
        self._sleep = sleep
        self._monotonic = monotonic
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._rng = rng
        self._resolve = resolve
        # Per provider, the Date header of its last answer and when it came (monotonic): the gateway's own clock,
        # which the early warning judges by (gateway_time). Parsed only when asked for, once a poll.
        self._dates: dict[str, tuple[str, float]] = {}
        gateway = settings.gateway
        self._origin = gateway.origin
        self._prefix = gateway.path
        self._head, self._default_vk = _header_block(build_headers(settings), self._origin.authority)
        # The view: every virtual key the gateway's lists are read with, by name (a file name, never the key).
        self._keys = {name: key.get_secret_value() for name, key in settings.virtual_keys()}
        # Bumped whenever a key is added, removed or given another value: the view (which batches each key sees)
        # changed, even where the names did not (a tenant's file rotated to another key).
        self._view_version = 0
        # Per name, bumped when its key leaves the view or is given another value: a name whose generation did
        # not change across a view change still sees the same batches.
        self._key_generation: dict[str, int] = {}
        # One TLS context (and one read of the CA bundle) shared by every provider's pool.
        ca_file = str(settings.ca_file) if settings.ca_file is not None else None
        self._tls: ssl.SSLContext | None = (
            tls_context(settings.tls_verify, ca_file) if gateway.scheme == "https" else None
        )
        self._pools: dict[str, Pool] = {}
        self._next_start: dict[str, float] = {}
        # (provider, virtual key, API) → monotonic time before which the gateway asked not to be asked again: a
        # Retry-After longer than one poll's retries is kept to, not met with a request every poll interval.
        # With it, the reason and status of the answer that asked (a 503 in maintenance stays server_error).
        self._not_before: dict[tuple[str, str | None, str], tuple[float, Reason, int | None]] = {}
        # Failure details end up in logs and exceptions: never with one of our credentials in them.
        self._scrub = Redactor(settings.secret_values()).scrub

    def _pool_for(self, provider: str) -> Pool:
        pool = self._pools.get(provider)
        if pool is None:
            pool = self._pools[provider] = Pool(self._origin, self._tls, resolve=self._resolve)
        return pool

    def update_credentials(self, settings: Settings) -> None:
        """Send these settings' credentials from the next request on (secret files re-read on SIGHUP).

        Open connections are kept; the old secrets stay redacted, since a gateway may still echo them.
        """
        self._scrub = Redactor([*self._settings.secret_values(), *settings.secret_values()]).scrub
        self._settings = settings
        self._head, self._default_vk = _header_block(build_headers(settings), self._origin.authority)
        keys = {name: key.get_secret_value() for name, key in settings.virtual_keys()}
        if keys != self._keys:
            self._view_version += 1
        for name, value in self._keys.items():
            if keys.get(name) != value:
                self._key_generation[name] = self._key_generation.get(name, 0) + 1
        self._keys = keys

    def key_names(self) -> tuple[str, ...]:
        """The names of the virtual keys of the view, in order (empty: requests carry no key)."""
        return tuple(self._keys)

    def key_generations(self) -> dict[str, int]:
        """Per name of the view, how often its key changed (left the view, or was given another value) before:
        the same name at the same generation is the same key, never saying which."""
        return {name: self._key_generation.get(name, 0) for name in self._keys}

    def key_fingerprints(self) -> dict[str, str]:
        """Per name of the view, a fingerprint of its key: the state file tells a key added while the exporter was
        down from one it listed with before (`key_matches`), and says nothing a key's value could be had from.
        Salted afresh each time, so one key's fingerprints cannot be linked across files, providers or
        deployments, nor looked up in a table of known keys' hashes."""
        salt = secrets.token_hex(8)
        return {name: _fingerprint(value, salt) for name, value in self._keys.items()}

    def key_matches(self, name: str, fingerprint: str) -> bool:
        """Whether the key the view holds under `name` is the one `fingerprint` was taken of (salted or not)."""
        value = self._keys.get(name)
        if value is None or not fingerprint:
            return False
        salt, salted, _ = fingerprint.rpartition(":")
        return hmac.compare_digest(_fingerprint(value, salt if salted else None), fingerprint)

    def view_version(self) -> int:
        """Changes whenever the view's keys do (names or values), never saying how."""
        return self._view_version

    def _key_value(self, key: str | None) -> str | None:
        if key is None:
            return None
        value = self._keys.get(key)
        if value is None:
            raise RequestFailedError("auth", f"virtual key {key!r} is no longer configured")
        return value

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()

    # ---- listing ------------------------------------------------------------------------------------------------

    async def list_batches(
        self,
        provider: str,
        on_page: Callable[[list[Batch]], bool | None] | None = None,
        *,
        after: str | None = None,
        max_pages: int | None = None,
        budget_truncates: bool = True,
        key: str | None = None,
        seen: set[int] | None = None,
        place: PagePlace | None = None,
    ) -> ListResult:
        """`provider`'s batches, deduplicated by id, following Bifrost's cursor rules to the end or a stop.

        With `on_page`, every page's batches not yet seen in this call are handed over as they arrive (possibly
        none) and not kept; returning False stops paging cleanly (`stopped="caller"`). `after` continues an earlier
        call from its `next_cursor`. `max_pages` (default settings.max_pages) bounds this call: reaching it marks the
        result truncated, or with `budget_truncates=False` sets `stopped="budget"` and `next_cursor` instead.
        `seen` (hashes of ids) carries what earlier calls of the same walk handed over (the view's other keys):
        those batches are not handed over again. `place`, when given, holds the cursor of each page while it is
        handed over.
        """
        result = ListResult()
        tally = _Tally()
        try:
            tally.vk = self._key_value(key)
            await self._list(
                provider,
                on_page,
                after,
                max_pages,
                budget_truncates,
                result,
                tally,
                set() if seen is None else seen,
                place,
            )
        except UnsupportedProviderError:
            result.unsupported = True
        except RequestFailedError as exc:
            detail = exc.detail if key is None else f"virtual key {key!r}: {exc.detail}"
            result.failure = Failure(exc.reason, self._scrub(detail), exc.status, tally.retries + 1)
            result.cursor_refused = (
                tally.cursor is not None
                and exc.refusal is None
                and (exc.reason == "client_error" or (exc.reason == "server_error" and exc.cursor_error))
            )
            result.key_not_allowed = key is not None and exc.refusal == "provider_blocked"
            if result.pages and not result.cursor_refused:
                # Where a walk that read pages before the failing one goes on from (a full list spread over polls):
                # sending its earlier pages again would spend a whole poll's requests twice.
                result.next_cursor = tally.cursor
        result.requests = tally.requests
        result.retries = tally.retries
        return result

    async def _list(
        self,
        provider: str,
        on_page: Callable[[list[Batch]], bool | None] | None,
        after: str | None,
        max_pages: int | None,
        budget_truncates: bool,
        result: ListResult,
        tally: _Tally,
        seen_ids: set[int],
        place: PagePlace | None,
    ) -> None:
        # seen_ids holds hashes, not the id strings: it lives for a whole list and a large list has 10^5-10^6 ids;
        # a 64-bit collision would at worst drop one batch from one poll.
        budget = self._settings.max_pages if max_pages is None else max_pages
        used_cursors: set[str] = set()
        first: tuple[str, tuple[str, ...]] | None = None  # (cursor, ids) of this call's first page
        # The page that handed out the cursor we are about to send: if the answer is that page again under the
        # same cursor, the gateway ignored the cursor.
        giver: tuple[str, ...] | None = None
        if after is not None:
            used_cursors.add(after)
        while True:
            page = await self._fetch_page(provider, after, tally)
            result.pages += 1
            if page.latency_seconds is not None:
                result.latencies.append(page.latency_seconds)
            if page.cache_debug is not None:
                result.cache_debugs.append(page.cache_debug)
            if page.skipped_items:
                result.skipped_items += page.skipped_items
                result.first_skip_error = result.first_skip_error or page.first_skip_error
            batches = page.batches
            if page.skipped_items and not batches and not result.batch_count:
                # Nothing of this walk could be read (a gateway whose items changed shape: timestamps as strings,
                # ids as numbers): that is a failed request, which keeps the last picture, not an empty account,
                # and not a full list that saw every batch gone. Single bad items among readable ones are skipped.
                raise RequestFailedError(
                    "invalid_response",
                    f"no batch of the page could be read ({page.skipped_items} items; first: "
                    f"{_short(page.first_skip_error or 'unknown', 160)})",
                    200,
                )
            page_ids = [b.id for b in batches]
            hashes = list(map(hash, page_ids))
            fresh: list[Batch]
            if seen_ids.isdisjoint(hashes) and len(set(hashes)) == len(hashes):
                fresh = list(batches)  # the usual page: all new (checked in C, not batch by batch)
                seen_ids.update(hashes)
            else:
                fresh = []
                for key, batch in zip(hashes, batches, strict=True):
                    if key not in seen_ids:
                        seen_ids.add(key)
                        fresh.append(batch)
            # A page of ids already seen is not a loop: several keys of one account (one OpenAI org) list the
            # same batches under different cursors. Only a repeated cursor is.
            result.batch_count += len(fresh)
            wanted_more = True
            if on_page is None:
                result.batches.extend(fresh)
            else:
                if place is not None:
                    place.after = after
                wanted_more = on_page(fresh) is not False
            if not page.has_more:
                return
            cursor = page.next_cursor or page.last_id or (page_ids[-1] if page_ids else None)
            ids = tuple(page_ids)
            if cursor is None:
                result.truncated = "cursor_loop"
                result.truncated_detail = (
                    "the gateway said has_more without any cursor (no next_cursor, last_id or item); "
                    f"kept the {result.batch_count} batches seen"
                )
                return
            # The same cursor back for the page it was handed out with (or, continuing a list from a cursor,
            # for the first page we see), or the first page's cursor and ids again: `after` was not used.
            same_page = giver is None or ids == giver
            if after is not None and ((cursor, ids) == first or (cursor == after and same_page)):
                result.truncated = "cursor_ignored"
                result.truncated_detail = _cursor_ignored_detail(provider, result.batch_count)
                return
            if cursor in used_cursors:
                result.truncated = "cursor_loop"
                result.truncated_detail = (
                    f"the gateway handed out a cursor it had handed out before; kept the {result.batch_count} "
                    "batches seen"
                )
                return
            if not wanted_more:
                result.stopped = "caller"
                result.next_cursor = cursor
                return
            if result.pages >= budget:
                if budget_truncates:
                    result.truncated = "max_pages"
                    size = page_size_for(provider, self._settings.page_size) or "the provider's size"
                    result.truncated_detail = (
                        f"stopped after max_pages={budget} pages of {size}; "
                        f"kept the {result.batch_count} batches seen"
                    )
                else:
                    result.stopped = "budget"
                    result.next_cursor = cursor
                return
            if first is None:
                first = (cursor, ids)
            used_cursors.add(cursor)
            giver = ids
            after = cursor
            # Let go of this page before waiting for the next: with every provider's walk holding its last page
            # across the wait, the next page's objects land in memory no longer in cache (7 % more CPU per cycle).
            del page, batches, fresh

    async def _fetch_page(self, provider: str, after: str | None, tally: _Tally) -> Page:
        tally.cursor = after
        params = {"provider": provider}
        size = page_size_for(provider, self._settings.page_size)
        if size is not None:
            params["limit"] = str(size)
        if after is not None:
            params["after"] = after
        return await self._with_retries(provider, "/v1/batches", params, _parse_list_body, tally)

    # ---- retrieve -----------------------------------------------------------------------------------------------

    async def retrieve(self, provider: str, batch_id: str, *, key: str | None = None) -> RetrieveResult:
        """One batch by id (`GET /v1/batches/{id}?provider=P`), with the list's retries, caps and reasons.

        The id is sent as one percent-encoded path segment, in the spelling `retrieve_ids` picks for its id.
        A 404 with a gateway error body means the gateway no longer has the batch (`gone`), not a failure; a bare
        404 (a proxy, or a gateway without the route) is a failure, so batches never vanish because of a route.
        """
        result = RetrieveResult()
        tally = _Tally()
        try:
            tally.vk = self._key_value(key)
            batch = await self._retrieve_any(provider, retrieve_ids(batch_id), tally)
        except UnsupportedProviderError:
            result.failure = Failure(
                "client_error", "the gateway does not support batch_retrieve for this provider", 400, 1
            )
        except RequestFailedError as exc:
            if exc.status == 404 and exc.gateway_body:
                result.gone = True
                result.refusal = exc.refusal
            else:
                detail = exc.detail if key is None else f"virtual key {key!r}: {exc.detail}"
                if exc.status == 404:
                    detail += (
                        "; not a gateway error body: is the retrieve route missing (old gateway or proxy)?"
                    )
                result.failure = Failure(exc.reason, self._scrub(detail), exc.status, tally.retries + 1)
        else:
            if batch.id != batch_id:
                # A gateway, proxy or cache that answers with another batch: folding it under the id we asked for
                # would count that other batch twice. Not the batch asked for is a fault, never data.
                result.failure = Failure(
                    "invalid_response",
                    self._scrub(
                        f"asked for batch {_short(batch_id, 80)!r}, the gateway answered with "
                        f"{_short(batch.id, 80)!r}; not folded"
                    ),
                    200,
                    tally.retries + 1,
                )
                result.requests = tally.requests
                return result
            result.batch = batch
            extra = batch.extra_fields
            if extra is not None and extra.latency is not None and extra.latency >= 0:
                result.latency_seconds = extra.latency / 1000.0
        result.requests = tally.requests
        return result

    # ---- a settlement row of the logs API (cost_metrics) ---------------------------------------------------------

    async def settlement(self, provider: str, log_id: str, parse: Callable[[bytes], T]) -> LogResult[T]:
        """One row of the gateway's logs API (`GET /api/logs/{id}`), with the list's pacing, retries, caps and reasons.

        The logs API sits behind the gateway's admin login, which the default headers carry (`basic_auth_*` or
        `bearer_token`); a virtual key is not enough. Paced as one of `provider`'s requests, so look-ups share its
        rate with the lists. A 404 in the gateway's error shape means the row does not exist (yet); a bare 404 (no
        such route: a gateway without the logs API, or a proxy) is a failure, so settlements never go missing
        because of a route.
        """
        result: LogResult[T] = LogResult()
        tally = _Tally()
        try:
            segment = id_segment(log_id)
            if segment is None:
                raise RequestFailedError(
                    "invalid_response",
                    f"log id {_short(log_id, 80)!r} is not one path segment",
                    body_refused=True,
                )
            result.row = await self._with_retries(provider, "/api/logs/" + segment, {}, parse, tally)
        except UnsupportedProviderError:
            result.failure = Failure(
                "client_error", "unsupported_operation from the logs API", 400, tally.retries + 1
            )
        except RequestFailedError as exc:
            if exc.status == 404 and exc.gateway_body:
                result.absent = True
            else:
                detail = exc.detail
                if exc.status == 404:
                    detail += "; not a gateway error body: does the gateway serve the logs API (/api/logs)?"
                elif exc.reason == "auth":
                    detail += "; the logs API needs the gateway's admin login (basic_auth_* or bearer_token)"
                result.failure = Failure(exc.reason, self._scrub(detail), exc.status, tally.retries + 1)
                result.row_fault = exc.body_refused
        result.requests = tally.requests
        result.date = parse_http_date(tally.date)
        return result

    async def _retrieve_any(self, provider: str, ids: tuple[str, ...], tally: _Tally) -> Batch:
        """The first of `ids` the gateway knows; a gateway 404 on one spelling moves on to the next."""
        for candidate in ids[:-1]:
            try:
                return await self._retrieve_one(provider, candidate, tally)
            except RequestFailedError as exc:
                if exc.status != 404 or not exc.gateway_body:
                    raise
        return await self._retrieve_one(provider, ids[-1], tally)

    async def _retrieve_one(self, provider: str, batch_id: str, tally: _Tally) -> Batch:
        segment = id_segment(batch_id)
        if segment is None:
            raise RequestFailedError(
                "invalid_response",
                f"batch id {_short(batch_id, 80)!r} is not retrieved: URL normalisation would send it to another "
                "route",
            )
        path = "/v1/batches/" + segment
        return await self._with_retries(provider, path, {"provider": provider}, _parse_retrieve_body, tally)

    # ---- one request, retried and paced -------------------------------------------------------------------------

    async def _with_retries(
        self,
        provider: str,
        path: str,
        params: dict[str, str],
        parse: Callable[[bytes], T],
        tally: _Tally,
    ) -> T:
        attempt = 0
        hold = (provider, tally.vk, path.split("/", 2)[1])  # the batch API and the logs API are held apart
        held = self._not_before.get(hold)
        if held is not None:
            until, reason, status = held
            left = until - self._monotonic()
            if left > 0:
                raise RequestFailedError(
                    reason,
                    f"not asked: the gateway's Retry-After has {left:.0f}s to run (until then every poll of this "
                    "provider fails without a request)",
                    status,
                )
            del self._not_before[hold]
        while True:
            try:
                tally.requests += 1
                tally.date = None
                return await self._request(provider, path, params, parse, tally)
            except RequestFailedError as exc:
                if exc.reason not in _RETRYABLE:
                    raise
                if exc.retry_after is not None and exc.retry_after > self._backoff_max:
                    # Beyond what one poll's retries wait: kept to across polls (bounded: a year-long Retry-After
                    # must not silence a provider for good).
                    wait = min(exc.retry_after, MAX_RETRY_AFTER_SECONDS)
                    self._not_before[hold] = (self._monotonic() + wait, exc.reason, exc.status)
                    raise RequestFailedError(
                        exc.reason,
                        f"{exc.detail}; Retry-After {exc.retry_after:.0f}s: not asked again for {wait:.0f}s",
                        exc.status,
                    ) from None
                if attempt >= self._settings.max_retries:
                    raise
                delay = min(self._backoff_max, self._backoff_base * (2**attempt))
                delay = delay / 2 + self._rng() * delay / 2
                if exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
                attempt += 1
                tally.retries += 1
                await self._sleep(delay)

    def gateway_time(self, provider: str) -> float | None:
        """The gateway's clock now as the Date of its last answer about `provider` showed it, run on by the
        monotonic clock (to the second); None without a readable one (a proxy that strips it)."""
        seen = self._dates.get(provider)
        if seen is None:
            return None
        at = parse_http_date(seen[0])
        return None if at is None else at + (self._monotonic() - seen[1])

    async def _pace(self, provider: str) -> None:
        """Wait for this provider's next request slot: starts at least 1/max_requests_per_second apart.

        The slot is reserved before waiting, so concurrent retrieves of one provider queue up instead of bursting.
        """
        rate = float(getattr(self._settings, "max_requests_per_second", 10.0))
        now = self._monotonic()
        slot = max(now, self._next_start.get(provider, now))
        self._next_start[provider] = slot + 1.0 / rate
        if slot > now:
            await self._sleep(slot - now)

    async def _request(
        self,
        provider: str,
        path: str,
        params: dict[str, str],
        parse: Callable[[bytes], T],
        tally: _Tally,
    ) -> T:
        settings = self._settings
        cap = settings.max_response_bytes
        await self._pace(provider)
        target = f"{self._prefix}{path}?{_query(params)}"
        try:
            async with asyncio.timeout(settings.request_timeout_seconds):
                response = await self._follow(provider, target, tally.vk, cap)
        except TimeoutError:
            raise RequestFailedError(
                "timeout", f"no complete answer within {settings.request_timeout_seconds:g}s"
            ) from None
        except TooLarge as exc:
            if not 200 <= exc.status < 300:
                # An error page too big to keep (a proxy's HTML): its status says what happened, and decides the
                # reason and whether to retry, as it would for a short one.
                return self._interpret(Response(exc.status, {}, b""), b"", parse)
            size = "body" if exc.declared is None else f"body of {exc.declared} bytes"
            raise RequestFailedError(
                "invalid_response", f"{size} exceeds max_response_bytes={cap}", exc.status
            ) from None
        except HttpError as exc:
            raise RequestFailedError("connection", _short(exc.detail)) from None
        date = tally.date = response.headers.get("date")
        if date is not None:
            self._dates[provider] = (date, self._monotonic())
        # Decoded here, bounded: 64 KB of gzip can become 64 MB.
        decoder = _BoundedDecoder(response.headers.get("content-encoding", ""), cap, response.status)
        try:
            decoder.feed(response.body)
            body = decoder.finish()
        except RequestFailedError:
            if 200 <= response.status < 300:
                raise
            body = b""  # an error body that does not decode (labelled gzip, and is not): classified by its status
        return self._interpret(response, body, parse)

    def request_head(self, target: str, vk: str | None = None) -> bytes:
        """The head of a GET of `target` exactly as it is sent (the virtual key: `vk`, else the default one)."""
        key = self._default_vk if vk is None else vk
        head = b"GET %s HTTP/1.1\r\n%s" % (target.encode("ascii"), self._head)
        if key is not None:
            head += b"x-bf-vk: %s\r\n" % key.encode("latin-1")
        return head + b"\r\n"

    async def _follow(self, provider: str, target: str, vk: str | None, cap: int) -> Response:
        """The answer to GET `target`, same-origin redirects followed (at most _MAX_REDIRECTS)."""
        pool = self._pool_for(provider)
        for _ in range(_MAX_REDIRECTS + 1):
            response = await pool.get(self.request_head(target, vk), cap)
            location = response.headers.get("location")
            if response.status not in _REDIRECTS or location is None:
                return response
            target = self._redirect_target(target, location)
        raise RequestFailedError("invalid_response", f"more than {_MAX_REDIRECTS} redirects")

    def _redirect_target(self, current: str, location: str) -> str:
        """Where a redirect points, as a request target on our origin; a redirect elsewhere is refused, since
        every request carries the credentials (Authorization, x-bf-vk, extra_headers)."""
        origin = self._origin
        try:
            url = urlsplit(urljoin(f"{origin.scheme}://{origin.authority}{current}", location.strip()))
            scheme = url.scheme.lower()
            there = (scheme, (url.hostname or "").lower(), url.port or _DEFAULT_PORTS.get(scheme))
        except ValueError:
            raise RequestFailedError("invalid_response", "redirect to an unreadable Location") from None
        if there != (origin.scheme, origin.host.lower(), origin.port):
            raise RequestFailedError(
                "invalid_response",
                f"redirect to another origin ({_short(scheme, 10)}://{_short(url.hostname or '', 80)}) refused; "
                "credentials are only sent to bifrost_url",
            )
        path = quote(url.path or "/", safe=_TARGET_SAFE)
        query = quote(url.query, safe=_TARGET_SAFE + "?")
        return f"{path}?{query}" if query else path

    def _interpret(self, response: Response, body: bytes, parse: Callable[[bytes], T]) -> T:
        status = response.status
        if 200 <= status < 300:
            ctype = response.headers.get("content-type", "")
            if ctype and "json" not in ctype.lower():
                media = ctype.split(";", 1)[0].strip()
                shown = media if _MEDIA_TYPE_RE.match(media) else "unparseable"
                raise RequestFailedError("invalid_response", f"content-type {shown!r}, expected JSON", status)
            try:
                return parse(body)
            except InvalidResponseError as exc:
                raise RequestFailedError("invalid_response", str(exc), status, body_refused=True) from None
        err = _read_error_body(body)
        if status == 400 and err.code == "unsupported_operation":
            raise UnsupportedProviderError()
        hint = f" ({err.code or err.etype})" if (err.code or err.etype) else ""
        message = self._clean_message(err.message)
        said = f"HTTP {status}{hint}" + (f": {message}" if message else "")
        refusal = next((t for t in (err.etype, err.code) if _is_gateway_type(t)), None)
        if status in (401, 403):
            if _upstream_refusal(err):
                raise RequestFailedError(
                    "upstream_auth",
                    _short(
                        f"{said}; the provider refused the gateway's own provider key, not the exporter",
                        _DETAIL_LIMIT,
                    ),
                    status,
                )
            raise RequestFailedError("auth", said, status, refusal=refusal)
        if status == 429:
            retry_after = _parse_retry_after(response.headers.get("retry-after"), time.time())
            raise RequestFailedError("rate_limited", said, status, retry_after, refusal=refusal)
        if status >= 500:
            retry_after = _parse_retry_after(response.headers.get("retry-after"), time.time())
            cursor_error = (
                status == 500 and err.is_bifrost_error is True and "cursor" in (err.message or "").lower()
            )
            raise RequestFailedError("server_error", said, status, retry_after, cursor_error=cursor_error)
        raise RequestFailedError("client_error", said, status, gateway_body=err.shaped, refusal=refusal)

    def _clean_message(self, message: str | None) -> str | None:
        """The gateway's error message made safe for a log line: secrets redacted (ours and key-shaped ones)
        before anything is cut, printable characters only, one line, bounded."""
        if not message:
            return None
        text = _FOREIGN_SECRET_RE.sub(REDACTED, self._scrub(message))
        text = "".join(ch if ch.isprintable() else " " for ch in text)
        text = " ".join(text.split())
        return _short(text, _MESSAGE_LIMIT) or None


def id_segment(batch_id: str) -> str | None:
    """`batch_id` as exactly one path segment of the retrieve route, or None when no URL layer would keep it one.

    "/", "?", "#" and "%" are percent-encoded, so an id containing them stays one segment. But "." and ".." are
    dot-segments, which URL normalisation removes (RFC 3986 5.2.4: `/v1/batches/.` is the list route,
    `/v1/batches/..` is `/v1`), and percent-encoding does not save them: servers and proxies that normalise decode
    `%2E` first. An empty id names the list route too. Such an id is never sent.
    """
    if batch_id in ("", ".", ".."):
        return None
    return quote(batch_id, safe=_PATH_SAFE)


def retrieve_ids(batch_id: str) -> tuple[str, ...]:
    """The spellings of `batch_id` to ask `/v1/batches/{id}` for, best first.

    Bifrost routes `/v1/batches/{batch_id}` as one path segment and hands the parameter to the provider without
    unescaping it, so an id containing "/" cannot travel intact. The two providers whose ids contain one accept a
    shorter form that does not: Bedrock's GetModelInvocationJob takes the job id for the ARN, and Gemini's retrieve
    adds the "batches/" prefix itself. Both answer with the full id, so the batch keeps the id the list gave it.
    Chosen by the id's shape, not the provider's name: a custom provider in Bifrost (another name over the Bedrock
    or Gemini implementation) has the same ids. The full id is tried second, for gateways (and simulators) that
    only know it; an answer carrying another id is never folded (`retrieve`), so a short form another provider
    resolved differently is a failed retrieve, never a count.
    """
    short: str | None = None
    match = _BEDROCK_JOB_ARN_RE.match(batch_id)
    if match:
        short = match.group(1)
    elif batch_id.startswith("batches/") and "/" not in batch_id[8:]:
        short = batch_id[8:] or None
    return (short, batch_id) if short else (batch_id,)


def _fingerprint(value: str, salt: str | None) -> str:
    """64 bits of HMAC-SHA-256 under `salt`, written `salt:digest`; without a salt, the bare SHA-256 prefix that
    builds before the salt wrote (still read: their states keep their views' floors). A salt that is not hex (a
    hand edit) matches nothing."""
    if salt is None:
        return hashlib.sha256(value.encode()).hexdigest()[:16]
    try:
        key = bytes.fromhex(salt)
    except ValueError:
        return ""
    return f"{salt}:{hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:16]}"


def _query(params: dict[str, str]) -> str:
    """The query string: every name and value percent-encoded but for unreserved characters (a cursor is opaque
    and may hold anything; provider names and limits pass through unchanged)."""
    return "&".join(f"{name}={quote(value, safe='')}" for name, value in params.items())


def _parse_list_body(body: bytes) -> Page:
    return parse_page(body)


def _parse_retrieve_body(body: bytes) -> Batch:
    return parse_batch(body)


def _cursor_ignored_detail(provider: str, kept: int) -> str:
    cap = list_rules(provider).max_page_size
    size = f"page_size up to {cap}" if cap is not None else "page_size"
    return (
        f"the gateway answered after=<cursor> with the first page again (its /v1/batches does not pass the "
        f"cursor to {provider}); kept the {kept} batches seen. Workaround: raise {size} so one page holds all, "
        "and use poll_mode incremental (retrieve of known batches); see docs/providers.md"
    )


class _BoundedDecoder:
    """Content-Encoding gzip/deflate/identity, refusing to produce more than `cap` bytes."""

    def __init__(self, encoding: str, cap: int, status: int) -> None:
        self._cap = cap
        self._status = status
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
            if not self._zlib.eof:
                # Cut before its end (a gzip trailer missing): what arrived may parse, but it is not what was sent.
                raise RequestFailedError(
                    "invalid_response", "body does not decode: the compressed stream ends early", self._status
                )
        return b"".join(self._chunks)


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""httpx's API over aiohttp's HTTP/1.1 client, every aiohttp failure reported as the httpx error it is.

Why: with 23 providers polled at once, httpcore/h11's pure-Python request path was the largest CPU cost of a poll
after parsing; aiohttp's pool and C parser cost about a fifth less CPU per request (bench.concurrency). httpx
still builds the requests, follows redirects and applies the timeouts, and the body reaches the client still
compressed, so its bounded decoder alone inflates it (gzip bombs stay capped).

Why a wrapper: httpx-aiohttp maps a closed connection to ConnectTimeout and lets a malformed response (not HTTP,
too many headers) escape as aiohttp's own exception. The client tells "timeout" from "connection" by the httpx
exception type, so each aiohttp failure is translated here by what it means.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport as _Inner


def _translated(exc: BaseException) -> httpx.TransportError:
    """The httpx error for an aiohttp failure (or for httpx-aiohttp's own mapping of one)."""
    cause = exc.__cause__ if isinstance(exc, httpx.TransportError) and exc.__cause__ is not None else exc
    # ClientResponseError's text ends with the request URL: its message alone says what was wrong.
    text = cause.message if isinstance(cause, aiohttp.ClientResponseError) else str(cause)
    first_line = text.splitlines()[0] if text else ""
    message = f"{type(cause).__name__}: {first_line}" if first_line else type(cause).__name__
    if isinstance(cause, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message)
    if isinstance(cause, TimeoutError):
        return httpx.ReadTimeout(message)
    if isinstance(cause, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message)
    if isinstance(
        cause, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | aiohttp.ClientResponseError
    ):
        return httpx.RemoteProtocolError(message)
    if isinstance(exc, httpx.TransportError) and cause is exc:
        return exc
    return httpx.ReadError(message)


class _Stream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except (httpx.TransportError, aiohttp.ClientError) as exc:
            raise _translated(exc) from None

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        except (httpx.TransportError, aiohttp.ClientError) as exc:
            raise _translated(exc) from None


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One provider's connection pool (an aiohttp session, opened on the first request)."""

    def __init__(self, verify: ssl.SSLContext | bool) -> None:
        self._inner = _Inner(verify=verify, trust_env=False)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await self._inner.handle_async_request(request)
        except (httpx.TransportError, aiohttp.ClientError) as exc:
            raise _translated(exc) from None
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        response.stream = _Stream(stream)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()

"""The gateway client's HTTP/1.1 framing against raw loopback servers: what a valid response may look like (lengths,
chunks, interim answers, HTTP/1.0, connections kept or closed) and what is refused. The hostile cases (sizes, drips,
bombs) are in test_hostile_gateway; here each server says one framing fact."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from exporter.client import BifrostClient, ListResult
from exporter.http1client import HttpError, parse_head
from tests.test_hostile_gateway import make_settings, no_sleep, raw_server

PAGE = json.dumps(
    {"object": "list", "data": [{"id": "b1", "status": "completed"}], "has_more": False}
).encode()
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run_list(handler: Handler, **overrides: Any) -> tuple[ListResult, int]:
    """One list call and the number of connections the server accepted."""
    connections = 0

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await handler(reader, writer)

    async def scenario() -> ListResult:
        async with raw_server(counted) as url:
            client = BifrostClient(make_settings(url, **overrides), sleep=no_sleep)
            try:
                return await client.list_batches("openai")
            finally:
                await client.aclose()

    return asyncio.run(scenario()), connections


def answering(*responses: bytes) -> Handler:
    """A server that answers its connection's requests with `responses` in turn, then closes."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for response in responses:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(response)
            await writer.drain()

    return handler


def ok(body: bytes = PAGE, *fields: str, version: str = "1.1") -> bytes:
    head = [f"HTTP/{version} 200 OK", "Content-Type: application/json", *fields]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def test_content_length_body() -> None:
    result, _ = run_list(answering(ok(PAGE, f"Content-Length: {len(PAGE)}")))
    assert result.failure is None and [b.id for b in result.batches] == ["b1"]


def test_chunked_body_with_extensions_and_trailers() -> None:
    half = len(PAGE) // 2
    body = b"%x;ext=1\r\n%s\r\n%X\r\n%s\r\n0\r\nX-Trailer: t\r\n\r\n" % (
        half,
        PAGE[:half],
        len(PAGE) - half,
        PAGE[half:],
    )
    result, _ = run_list(answering(ok(body, "Transfer-Encoding: chunked")))
    assert result.failure is None and [b.id for b in result.batches] == ["b1"]


def test_http_1_0_body_until_close() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(ok(PAGE, version="1.0"))
        await writer.drain()
        writer.close()

    result, _ = run_list(handler)
    assert result.failure is None and [b.id for b in result.batches] == ["b1"]


def test_interim_answers_are_skipped() -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
    result, _ = run_list(answering(interim + ok(PAGE, f"Content-Length: {len(PAGE)}")))
    assert result.failure is None and len(result.batches) == 1


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 5, 40])
def test_a_head_that_arrives_in_pieces_is_gathered(cut: int) -> None:
    """Each head cut `cut` bytes before its end (inside the blank line that ends it, or before it), the pieces
    arriving apart: the interim answer is still skipped and the page read whole."""
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    final = ok(PAGE, f"Content-Length: {len(PAGE)}")
    response = interim + final
    final_end = response.index(b"\r\n\r\n", len(interim)) + 4
    cuts = [len(interim) - min(cut, len(interim) - 1), final_end - cut]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for start, end in zip([0, *cuts], [*cuts, len(response)], strict=True):
            writer.write(response[start:end])
            await writer.drain()
            await asyncio.sleep(0.02)

    result, _ = run_list(handler)
    assert result.failure is None and [b.id for b in result.batches] == ["b1"]


def test_a_kept_alive_connection_is_used_again() -> None:
    def page(n: int, more: bool) -> bytes:
        body = json.dumps(
            {"object": "list", "data": [{"id": f"b{n}", "status": "completed"}], "has_more": more}
            | ({"last_id": f"b{n}"} if more else {})
        ).encode()
        return ok(body, f"Content-Length: {len(body)}")

    result, connections = run_list(answering(page(1, True), page(2, True), page(3, False)))
    assert result.failure is None and [b.id for b in result.batches] == ["b1", "b2", "b3"]
    assert connections == 1


def test_connection_close_is_honoured() -> None:
    """`Connection: close` on the first page: the second request goes out on a new connection, not the old one."""
    body1 = json.dumps(
        {"object": "list", "data": [{"id": "b1", "status": "completed"}], "has_more": True, "last_id": "b1"}
    ).encode()
    body2 = json.dumps({"object": "list", "data": [{"id": "b2", "status": "completed"}]}).encode()
    served = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await reader.readuntil(b"\r\n\r\n")
        served += 1
        if served == 1:
            writer.write(ok(body1, f"Content-Length: {len(body1)}", "Connection: close"))
            await writer.drain()
            await asyncio.sleep(30)  # keeps the socket open: only the header says not to reuse it
        writer.write(ok(body2, f"Content-Length: {len(body2)}"))
        await writer.drain()

    result, connections = run_list(handler)
    assert result.failure is None and [b.id for b in result.batches] == ["b1", "b2"]
    assert connections == 2


def test_a_connection_the_server_closed_while_idle_is_replaced_without_a_retry() -> None:
    """The server closes a kept-alive connection between two polls: the next request notices before any answer
    and goes out on a fresh connection; no retry is counted and the poll does not fail."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(ok(PAGE, f"Content-Length: {len(PAGE)}"))
        await writer.drain()
        await reader.read(1)  # close as soon as anything more arrives (the race a keep-alive timeout has)
        writer.transport.abort()

    async def scenario() -> tuple[ListResult, ListResult]:
        async with raw_server(handler) as url:
            client = BifrostClient(make_settings(url, max_retries=0), sleep=no_sleep)
            try:
                return await client.list_batches("openai"), await client.list_batches("openai")
            finally:
                await client.aclose()

    first, second = asyncio.run(scenario())
    assert first.failure is None and second.failure is None, second.failure
    assert second.retries == 0 and second.requests == 1


@pytest.mark.parametrize(
    "fields",
    [
        ("Content-Length: 5", "Content-Length: 6"),
        ("Content-Length: -1",),
        ("Content-Length: 0x10",),
        ("Transfer-Encoding: gzip",),
        ("Transfer-Encoding: gzip, chunked",),
        (" Folded: header",),
        ("Bad Name: x",),
    ],
)
def test_ambiguous_framing_is_a_connection_failure(fields: tuple[str, ...]) -> None:
    result, _ = run_list(answering(ok(PAGE, *fields)), max_retries=0)
    assert result.failure is not None and result.failure.reason == "connection", result.failure


@pytest.mark.parametrize("piece", [None, 8192])
def test_a_head_over_64_kib_is_refused(piece: int | None) -> None:
    """A response head larger than the bound fails the request, whether it arrives at once or in pieces (which are
    gathered only up to the bound)."""
    response = ok(PAGE, "X-Big: " + "a" * (64 * 1024), f"Content-Length: {len(PAGE)}")

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        step = piece or len(response)
        for start in range(0, len(response), step):
            writer.write(response[start : start + step])
            await writer.drain()
            await asyncio.sleep(0.005 if piece else 0)

    result, _ = run_list(handler, max_retries=0)
    assert result.failure is not None and result.failure.reason == "connection", result.failure
    assert "larger than 64 KiB" in result.failure.detail


def test_malformed_chunk_is_a_connection_failure() -> None:
    result, _ = run_list(
        answering(ok(b"zz\r\nabc\r\n0\r\n\r\n", "Transfer-Encoding: chunked")), max_retries=0
    )
    assert result.failure is not None and result.failure.reason == "connection"


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"HTTP/1.1 200 OK\r\nA: 1\r\na: 2", 200),
        (b"HTTP/1.0 404", 404),
        (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After:  7 ", 503),
    ],
)
def test_parse_head(head: bytes, status: int) -> None:
    _, got, fields = parse_head(head)
    assert got == status
    if status == 200:
        assert fields == {"a": "1, 2"}
    if status == 503:
        assert fields["retry-after"] == "7"


@pytest.mark.parametrize(
    "head", [b"HTTP/2 200 OK", b"ICY 200 OK", b"HTTP/1.1 20 OK", b"HTTP/1.1 200 OK\r\nno-colon"]
)
def test_parse_head_refuses(head: bytes) -> None:
    with pytest.raises(HttpError) as caught:
        parse_head(head)
    assert caught.value.kind == "protocol"

"""Property tests: whatever the gateway (or a client of ours) sends, nothing escapes unclassified.

Each property runs PROPERTY_EXAMPLES examples (1,000 by default, the CI figure; set HYPOTHESIS_EXAMPLES to change it
locally). The gateway properties go through the real client and poller against a real loopback HTTP server, so "never an
exception escaping the poller" is checked where it matters: a poll ends either with a snapshot (up) or with exactly
one classified `invalid_response`, and the rendered exposition still parses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from exporter.client import REASONS, BifrostClient
from exporter.logs import configure
from exporter.models import InvalidResponseError, parse_page
from exporter.poller import Poller
from exporter.render import render
from exporter.server import HttpServer, Routes, negotiate
from exporter.settings import Settings
from exporter.webconfig import WebConfigError, parse_basic, parse_web_config

PROPERTY_EXAMPLES = int(os.environ.get("HYPOTHESIS_EXAMPLES", "1000"))
settings.register_profile(
    "bifrost-property",
    max_examples=PROPERTY_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    derandomize=os.environ.get("CI", "").lower() in {"1", "true", "yes"},
)
PROFILE = settings.get_profile("bifrost-property")

# Counted so the suite can report how many examples really ran (see test_examples_ran).
RUNS: dict[str, int] = {}
OUTCOMES: dict[str, int] = {}


def _count(name: str) -> None:
    RUNS[name] = RUNS.get(name, 0) + 1


# --- strategies ---------------------------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=30,
)
small_json = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
# Cheaper than json_values for the many fields of a batch: any JSON type, one level deep.
field_values = st.one_of(
    json_scalars,
    st.lists(json_scalars, max_size=3),
    st.dictionaries(st.text(max_size=5), json_scalars, max_size=3),
)
timestamps = st.one_of(
    st.none(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -1, 1, 2**63, -(2**63), 1.5e308]),
    st.text(max_size=12),
    field_values,
)
statuses = st.one_of(
    st.sampled_from(
        [
            "validating",
            "in_progress",
            "finalizing",
            "cancelling",
            "completed",
            "failed",
            "expired",
            "cancelled",
            "canceled",
            "ended",
            "deleted",
            "",
            "IN_PROGRESS",
            " completed ",
        ]
    ),
    st.text(max_size=80),
    field_values,
)
counts = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from(
            ["total", "completed", "failed", "succeeded", "expired", "canceled", "cancelled", "pending", "x"]
        ),
        st.one_of(st.integers(min_value=-(10**25), max_value=10**25), field_values),
        max_size=8,
    ),
    field_values,
)


NESTED = re.compile(r'"__nested_(\d+)__"')


def nested(depth: int) -> str:
    """JSON text of `depth` alternating objects and arrays (built as text: json.dumps would recurse that deep)."""
    opens = "".join('{"k":' if i % 2 == 0 else "[" for i in range(depth))
    closes = "".join("}" if i % 2 == 0 else "]" for i in reversed(range(depth)))
    return opens + '"deep"' + closes


@st.composite
def batch_objects(draw: st.DrawFn) -> Any:
    """A batch whose every field is, one time in four, of an arbitrary type (else of a plausible one)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(field_values)  # not even an object

    def pick(plausible: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any] = field_values) -> Any:
        return draw(hostile if draw(st.integers(0, 3)) == 0 else plausible)

    batch: dict[str, Any] = {}
    if draw(st.integers(0, 7)):
        batch["id"] = pick(st.text(min_size=1, max_size=40))
    batch["status"] = pick(statuses)
    for name in (
        "created_at",
        "expires_at",
        "completed_at",
        "failed_at",
        "expired_at",
        "cancelled_at",
        "ended_at",
        "in_progress_at",
    ):
        if draw(st.booleans()):
            batch[name] = pick(st.integers(1_600_000_000, 1_900_000_000), timestamps)
    if draw(st.booleans()):
        batch["request_counts"] = pick(
            st.dictionaries(
                st.sampled_from(
                    ["total", "completed", "failed", "succeeded", "expired", "canceled", "pending"]
                ),
                st.integers(0, 10**6),
            ),
            counts,
        )
    if draw(st.integers(0, 3)) == 0:
        batch["progress"] = pick(
            st.integers(0, 100),
            st.one_of(st.integers(-(10**20), 10**20), st.floats(allow_nan=False), field_values),
        )
    for name in ("endpoint", "completion_window", "metadata", "errors", "output_file_id"):
        if draw(st.integers(0, 3)) == 0:
            batch[name] = pick(st.text(max_size=20))
    if draw(st.booleans()):
        extra: dict[str, Any] = {"latency": pick(st.integers(0, 10**6), st.integers(-(10**25), 10**25))}
        if draw(st.integers(0, 3)) == 0:
            extra["raw_response"] = f"__nested_{draw(st.integers(1, 3000))}__"
        if draw(st.booleans()):
            extra["cache_debug"] = pick(
                st.fixed_dictionaries(
                    {
                        "cache_hit": st.booleans(),
                        "hit_type": st.sampled_from(["direct", "semantic", None, "x"]),
                        "similarity": st.floats(-2, 2),
                    }
                )
            )
        batch["extra_fields"] = extra
    return batch


@st.composite
def list_pages(draw: st.DrawFn) -> bytes:
    """Mostly a well-formed envelope around hostile items (the interesting case), sometimes a hostile envelope."""
    wild = draw(st.integers(0, 3)) == 0
    page: dict[str, Any] = {"data": draw(st.lists(batch_objects(), max_size=12))}
    if draw(st.integers(0, 4)):
        page["object"] = draw(field_values) if wild else "list"
    for name in ("has_more", "next_cursor", "last_id", "first_id"):
        if draw(st.booleans()):
            proper = st.booleans() if name == "has_more" else st.text(max_size=10)
            page[name] = draw(field_values if wild else proper)
    if draw(st.booleans()):
        page["extra_fields"] = draw(
            field_values if wild else st.fixed_dictionaries({"latency": st.integers(-(10**15), 10**15)})
        )
    if wild and draw(st.booleans()):
        page["data"] = draw(field_values)
    text = NESTED.sub(lambda m: nested(int(m.group(1))), json.dumps(page))
    if draw(st.integers(0, 19)) == 0:  # non-standard JSON some encoders emit
        text = text.replace('{"data"', '{"nan": NaN, "inf": -Infinity, "data"', 1)
    return text.encode()


# --- the poll harness ------------------------------------------------------------------------------------------------


class Gateway(asyncio.Protocol):
    """A real HTTP/1.1 gateway on loopback, on the test's own event loop, answering every request with the body
    under test (has_more pages loop to max_pages). Real sockets keep the client's whole read path under test."""

    body = b""
    content_type = "application/json"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while b"\r\n\r\n" in self._buffer:
            _, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
            body = Gateway.body
            head = b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (
                Gateway.content_type.encode(),
                len(body),
            )
            self._transport.write(head + body)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    configure("error", "json", [], stream=open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the module
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def harness(loop: asyncio.AbstractEventLoop) -> Iterator[tuple[Settings, BifrostClient, type[Gateway]]]:
    server = loop.run_until_complete(loop.create_server(Gateway, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    config = Settings(
        bifrost_url=f"http://127.0.0.1:{port}",
        providers=["openai"],
        max_retries=0,
        max_pages=3,
        per_batch_metrics=True,
    )
    client = BifrostClient(config)
    yield config, client, Gateway
    loop.run_until_complete(client.aclose())
    server.close()
    loop.run_until_complete(server.wait_closed())


def poll_and_render(
    loop: asyncio.AbstractEventLoop, harness: tuple[Settings, BifrostClient, type[Gateway]], body: bytes
) -> None:
    config, client, gateway = harness
    gateway.body = body
    poller = Poller(config, client, clock=lambda: 1_800_000_000.0, started_at=1_700_000_000.0)
    state = loop.run_until_complete(poller.poll("openai"))
    errors = {k: v for k, v in state.ledger.errors.items() if v}
    outcome = (
        "up_with_batches"
        if state.snapshot and state.snapshot.batches
        else "up"
        if state.health.up
        else "invalid"
    )
    OUTCOMES[outcome] = OUTCOMES.get(outcome, 0) + 1
    if state.health.up:
        assert state.snapshot is not None
        assert set(errors) <= {"cursor_loop", "cursor_ignored", "max_pages"}
    else:
        # Not up means a request failed and was classified — a crash inside the poller would count nothing.
        assert errors == {"invalid_response": 1}, errors
        return  # nothing new to render: the previous (empty) state stays
    rendered = render(
        list(poller.states.values()), now=1_800_000_000.0, stale_after=150, reasons=REASONS, per_batch=True
    )
    if outcome != "up_with_batches":
        return  # an empty snapshot renders like every other empty one; parsing is the slow part
    families = list(text_string_to_metric_families(rendered.text.decode()))
    assert any(f.name == "bifrost_batch_exporter_up" for f in families)
    for family in families:
        for sample in family.samples:
            assert isinstance(sample.value, float)
            assert not math.isnan(sample.value) or sample.name.endswith("_sum"), sample


# --- gateway properties --------------------------------------------------------------------------------------------


@settings(PROFILE)
@given(body=st.binary(max_size=2000))
def test_arbitrary_bytes_as_a_list_page(loop: asyncio.AbstractEventLoop, harness: Any, body: bytes) -> None:
    _count("arbitrary_bytes")
    with contextlib.suppress(InvalidResponseError):
        parse_page(body)
    poll_and_render(loop, harness, body)


@settings(PROFILE)
@given(doc=json_values)
def test_arbitrary_json_as_a_list_page(loop: asyncio.AbstractEventLoop, harness: Any, doc: Any) -> None:
    _count("arbitrary_json")
    poll_and_render(loop, harness, json.dumps(doc).encode())


@settings(PROFILE)
@given(body=list_pages())
def test_list_pages_with_hostile_fields(loop: asyncio.AbstractEventLoop, harness: Any, body: bytes) -> None:
    """Arbitrary field types inside batches, huge numbers, negative timestamps, deeply nested raw_response."""
    _count("hostile_fields")
    poll_and_render(loop, harness, body)


@settings(PROFILE)
@given(depth=st.integers(min_value=1, max_value=100_000), opener=st.sampled_from(["[", '{"a":']))
def test_deep_nesting_anywhere(
    loop: asyncio.AbstractEventLoop, harness: Any, depth: int, opener: str
) -> None:
    _count("deep_nesting")
    closer = "]" if opener == "[" else "}"
    inner = opener * depth + "1" + closer * depth
    body = f'{{"object":"list","data":[{{"id":"b","status":"in_progress","extra_fields":{{"raw_response":{inner}}}}}]}}'
    poll_and_render(loop, harness, body.encode())
    poll_and_render(loop, harness, inner.encode())


# --- our own inputs --------------------------------------------------------------------------------------------------


class _Transport(asyncio.Transport):
    """Just enough of an asyncio.Transport to drive the server's protocol without a socket."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += data

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.out += line

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        return None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


request_heads = st.one_of(
    st.binary(max_size=600),
    st.builds(
        lambda method, path, version, headers: (
            f"{method} {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
        ).encode("utf-8", "surrogateescape"),
        st.sampled_from(["GET", "HEAD", "POST", "get", "", "GET GET"]),
        st.one_of(st.sampled_from(["/metrics", "/", "/healthz", "/readyz", "*"]), st.text(max_size=200)),
        st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "", "HTTP/1.1 x"]),
        st.lists(
            st.tuples(
                st.one_of(
                    st.sampled_from(
                        ["Accept", "Accept-Encoding", "Content-Length", "Connection", "Authorization"]
                    ),
                    st.text(max_size=20),
                ),
                st.text(max_size=100),
            ),
            max_size=6,
        ),
    ),
)


@settings(PROFILE)
@given(chunks=st.lists(request_heads, min_size=1, max_size=3))
def test_server_answers_any_request_bytes(loop: asyncio.AbstractEventLoop, chunks: list[bytes]) -> None:
    """Any bytes from a client get a well-formed HTTP response or a close; never a 500 or an escaped exception."""
    _count("server_requests")
    from exporter.server import _Connection

    rendered = render([], now=0.0, stale_after=150, reasons=REASONS, per_batch=False)
    errors: list[int] = []
    server = HttpServer(
        Routes(lambda: rendered, lambda: True), "127.0.0.1", 0, on_error=lambda: errors.append(1)
    )

    async def drive() -> _Transport:
        transport = _Transport()
        conn = _Connection(server)
        conn.connection_made(transport)
        for chunk in chunks:
            conn.data_received(chunk)
        conn.connection_lost(None)
        return transport

    transport = loop.run_until_complete(drive())
    assert errors == []
    out = bytes(transport.out)
    for status_line in (line for line in out.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")):
        code = int(status_line.split(b" ")[1])
        assert 200 <= code < 500 or code == 505, status_line


@settings(PROFILE)
@given(
    accept=st.one_of(st.none(), st.text(max_size=200)), encoding=st.one_of(st.none(), st.text(max_size=100))
)
def test_negotiate_never_raises(accept: str | None, encoding: str | None) -> None:
    _count("negotiate")
    openmetrics, use_gzip = negotiate(accept, encoding)
    assert isinstance(openmetrics, bool) and isinstance(use_gzip, bool)


@settings(PROFILE)
@given(
    header=st.one_of(
        st.none(), st.text(max_size=300), st.binary(max_size=200).map(lambda b: "Basic " + b.hex())
    )
)
def test_parse_basic_never_raises(header: str | None) -> None:
    _count("parse_basic")
    result = parse_basic(header)
    assert result is None or (isinstance(result[0], bytes) and isinstance(result[1], bytes))


@settings(PROFILE)
@given(
    doc=st.one_of(
        small_json,
        st.fixed_dictionaries(
            {},
            optional={
                "tls_server_config": small_json,
                "http_server_config": st.one_of(small_json, st.fixed_dictionaries({"headers": small_json})),
                "basic_auth_users": st.one_of(small_json, st.dictionaries(st.text(max_size=8), small_json)),
                "rate_limit": small_json,
            },
        ),
    )
)
def test_web_config_parses_or_names_the_problem(doc: Any) -> None:
    _count("web_config")
    try:
        config = parse_web_config(doc, Path("/nonexistent/web.yml"))
    except WebConfigError as exc:
        message = str(exc)
    else:
        assert all(isinstance(h, bytes) for h in config.users.values())
        return
    assert message.startswith("invalid setting web_config_file (")


def test_examples_ran() -> None:
    """Runs last in this module: every property above ran at least its full budget of examples."""
    if not RUNS:
        pytest.skip("run together with the property tests")
    print(f"hypothesis examples run: {RUNS} (total {sum(RUNS.values())}); poll outcomes: {OUTCOMES}")
    assert OUTCOMES.get("up_with_batches", 0) > 0 and OUTCOMES.get("invalid", 0) > 0  # both paths exercised
    assert all(count >= PROPERTY_EXAMPLES for count in RUNS.values()), RUNS

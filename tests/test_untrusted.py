"""Every number from the gateway is untrusted (issue: one 401-digit total froze /metrics for good).

Whatever numeric value any field of a batch or page carries — huge integers, ±inf, NaN, negatives, floats where
integers belong, numbers as strings — the poller folds it, the render succeeds, every exposed value is finite, and
every counter, histogram count and sum only grows across polls. Real HTTP: a loopback gateway serves the pages.
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from exporter.client import REASONS, BifrostClient
from exporter.logs import configure
from exporter.poller import Poller
from exporter.render import render
from exporter.settings import Settings

NOW = 1_800_000_000.0

# Raw JSON number texts, so values Python's json cannot produce (1e400, 401 digits) reach the parser as sent.
_EXTREME = [
    "9" * 401,
    "-" + "9" * 401,
    "1e400",
    "-1e400",
    "NaN",
    "Infinity",
    "-Infinity",
    "-1",
    "0",
    "1.5",
    "1e308",
    "18446744073709551616",
    '"12"',
    '"x"',
    "null",
    "true",
]
numbers = st.one_of(st.sampled_from(_EXTREME), st.integers(-(10**20), 10**20).map(str))
INT_FIELDS = ("total", "completed", "failed", "succeeded", "expired", "canceled", "pending")
TIME_FIELDS = ("created_at", "expires_at", "in_progress_at", "finalizing_at", "completed_at", "failed_at")
STATUSES = ("in_progress", "validating", "finalizing", "completed", "failed", "expired", "cancelled")


@st.composite
def hostile_batch(draw: st.DrawFn, index: int) -> str:
    status = draw(st.sampled_from(STATUSES))
    counts = ",".join(f'"{k}":{draw(numbers)}' for k in INT_FIELDS if draw(st.booleans()))
    times = ",".join(f'"{k}":{draw(numbers)}' for k in TIME_FIELDS if draw(st.booleans()))
    parts = [f'"id":"b{index}"', f'"status":"{status}"', f'"request_counts":{{{counts}}}']
    if times:
        parts.append(times)
    if draw(st.booleans()):
        parts.append(f'"progress":{draw(numbers)}')
    parts.append(f'"extra_fields":{{"latency":{draw(numbers)}}}')
    return "{" + ",".join(parts) + "}"


@st.composite
def hostile_pages(draw: st.DrawFn) -> list[bytes]:
    """A few polls' worth of one provider's list, the same ids changing their numbers between polls."""
    n = draw(st.integers(1, 4))
    polls = []
    for _ in range(draw(st.integers(2, 3))):
        items = ",".join(draw(hostile_batch(i)) for i in range(n))
        polls.append(
            f'{{"object":"list","data":[{items}],"extra_fields":{{"latency":{draw(numbers)}}}}}'.encode()
        )
    return polls


class Gateway(asyncio.Protocol):
    body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            self.transport.write(head % len(self.body) + self.body)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    configure("error", "json", [], stream=open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the module
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def config(loop: asyncio.AbstractEventLoop) -> Iterator[Settings]:
    server = loop.run_until_complete(loop.create_server(Gateway, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    yield Settings(
        bifrost_url=f"http://127.0.0.1:{port}",
        providers=["openai"],
        max_retries=0,
        per_batch_metrics=True,
        max_requests_per_second=1000,
    )
    server.close()
    loop.run_until_complete(server.wait_closed())


_GROWING = ("_total", "_count", "_sum", "_bucket")


def _values(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(polls=hostile_pages(), mode=st.sampled_from(["full", "incremental"]))
def test_any_numbers_render_finite_and_counters_only_grow(
    loop: asyncio.AbstractEventLoop, config: Settings, polls: list[bytes], mode: str
) -> None:
    cfg = config.model_copy(update={"poll_mode": mode})
    client = BifrostClient(cfg)
    poller = Poller(cfg, client, clock=lambda: NOW, started_at=NOW - 3600)
    previous: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    try:
        for body in polls:
            Gateway.body = body
            loop.run_until_complete(poller.poll("openai"))
            rendered = render(
                list(poller.states.values()), now=NOW, stale_after=150, reasons=REASONS, per_batch=True
            )
            values = _values(rendered.text.decode())
            assert values, "nothing rendered"
            for key, value in values.items():
                assert math.isfinite(value), key
                if key[0].endswith(_GROWING) and key in previous:
                    assert value >= previous[key], (key, previous[key], value)
            previous = values
    finally:
        loop.run_until_complete(client.aclose())


def test_once_with_a_401_digit_total_prints_and_exits_cleanly(config: Settings) -> None:
    """Reproduction 1 as written: --once against a gateway whose only batch has a 401-digit total."""
    huge = "9" * 401
    body = (
        b'{"object":"list","data":[{"id":"b","status":"in_progress","request_counts":{"total":'
        + huge.encode()
        + b',"completed":'
        + huge.encode()
        + b"}}]}"
    )
    script = (
        "import asyncio, sys\n"
        "from tests.test_untrusted import Gateway\n"
        f"Gateway.body = {body!r}\n"
        "async def main():\n"
        "    loop = asyncio.get_running_loop()\n"
        "    server = await loop.create_server(Gateway, '127.0.0.1', 0)\n"
        "    port = server.sockets[0].getsockname()[1]\n"
        "    proc = await asyncio.create_subprocess_exec(sys.executable, '-m', 'exporter', '--once',\n"
        "        env={'BIFROST_EXPORTER_BIFROST_URL':\n"
        "        f'http://127.0.0.1:{port}', 'BIFROST_EXPORTER_PROVIDERS': 'openai', 'BIFROST_EXPORTER_MAX_RETRIES': '0',\n"
        "        'BIFROST_EXPORTER_PER_BATCH_METRICS': 'true', 'PATH': ''},\n"
        "        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)\n"
        "    out, err = await proc.communicate()\n"
        "    sys.stdout.write(f'rc={proc.returncode}\\n'); sys.stdout.write(out.decode()); sys.stderr.write(err.decode())\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.startswith("rc=0\n"), done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    values = _values(done.stdout.split("\n", 1)[1])
    assert all(math.isfinite(v) for v in values.values())
    pending = values[
        (
            "bifrost_batch_requests",
            frozenset({("provider", "openai"), ("status", "in_progress"), ("outcome", "pending")}),
        )
    ]
    assert (
        pending == 0
    )  # a total beyond any real batch is clamped (to 1e9), completed too: nothing left pending
    assert "batch_values_clamped" in done.stdout + done.stderr

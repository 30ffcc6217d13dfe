"""Client details the end-to-end fault tests do not pin down: headers sent, Retry-After parsing, backoff budget."""

from __future__ import annotations

import asyncio
import base64
import time
from email.utils import formatdate

from exporter.client import BifrostClient, _parse_retry_after, build_headers
from exporter.simulator import ProviderSpec, Simulator
from tests.harness import make_settings

KEY = "sk-bf-test-key-0001"


def test_retry_after_forms() -> None:
    now = time.time()
    assert _parse_retry_after("3", now) == 3
    assert _parse_retry_after(" 1.5 ", now) == 1.5
    assert _parse_retry_after("-4", now) == 0
    assert _parse_retry_after("nonsense", now) is None
    assert _parse_retry_after(None, now) is None
    http_date = _parse_retry_after(formatdate(now + 30, usegmt=True), now)
    assert http_date is not None and 28 <= http_date <= 31


def test_headers_for_each_auth_mode() -> None:
    s = make_settings(
        "http://x",
        ["openai"],
        virtual_key=KEY,
        basic_auth_username="admin",
        basic_auth_password="pw",
        extra_headers={"X-Team": "batch", "Authorization": "ignored"},
    )
    h = build_headers(s)
    assert h["x-bf-vk"] == KEY
    assert h["Authorization"] == "Basic " + base64.b64encode(b"admin:pw").decode()
    assert h["X-Team"] == "batch"
    bearer = build_headers(make_settings("http://x", ["openai"], bearer_token=KEY))
    assert bearer["Authorization"] == f"Bearer {KEY}"
    assert "x-bf-vk" not in bearer


def test_gateway_auth_accepts_our_headers_and_rejects_wrong_key() -> None:
    with Simulator(
        providers=[ProviderSpec("openai")], lifecycle=False, virtual_key=KEY, basic_auth=("admin", "pw")
    ) as sim:
        sim.add_batch("openai", batch_id="a")

        async def poll(**auth: str) -> tuple[int, str | None]:
            client = BifrostClient(make_settings(sim.url, ["openai"], **auth))
            try:
                result = await client.list_batches("openai")
            finally:
                await client.aclose()
            return len(result.batches), result.failure.reason if result.failure else None

        assert asyncio.run(poll(virtual_key=KEY, basic_auth_username="admin", basic_auth_password="pw")) == (
            1,
            None,
        )
        assert asyncio.run(
            poll(virtual_key="sk-bf-wrong", basic_auth_username="admin", basic_auth_password="pw")
        ) == (0, "auth")
        assert asyncio.run(poll(virtual_key=KEY)) == (0, "auth")


def test_retry_after_beyond_budget_fails_fast() -> None:
    with Simulator(providers=[ProviderSpec("openai")], lifecycle=False) as sim:
        sim.set_fault("rate_limit", retry_after=3600)
        sleeps: list[float] = []

        async def fake_sleep(seconds: float) -> None:
            sleeps.append(seconds)

        async def poll() -> str | None:
            client = BifrostClient(make_settings(sim.url, ["openai"], max_retries=3), sleep=fake_sleep)
            try:
                result = await client.list_batches("openai")
            finally:
                await client.aclose()
            return result.failure.reason if result.failure else None

        assert asyncio.run(poll()) == "rate_limited"
        assert sleeps == []  # no point sleeping an hour inside one poll


def test_backoff_grows_with_jitter_and_stops_at_max_retries() -> None:
    with Simulator(providers=[ProviderSpec("openai")], lifecycle=False) as sim:
        sim.set_fault("server_error")
        sleeps: list[float] = []

        async def fake_sleep(seconds: float) -> None:
            sleeps.append(seconds)

        async def poll() -> tuple[str | None, int]:
            client = BifrostClient(
                make_settings(sim.url, ["openai"], max_retries=4),
                sleep=fake_sleep,
                backoff_base=1.0,
                rng=lambda: 1.0,
            )
            try:
                result = await client.list_batches("openai")
            finally:
                await client.aclose()
            return (result.failure.reason if result.failure else None), sim.list_requests("openai")

        reason, requests = asyncio.run(poll())
        assert reason == "server_error"
        assert requests == 5  # one try plus four retries
        assert sleeps == [1.0, 2.0, 4.0, 8.0]

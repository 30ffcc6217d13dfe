"""Secrets never leave the process: not in logs (at debug), /metrics, /, --check-config output or exception text.

The secrets are distinctive strings, so a leak in any spelling we know (plain, base64 of user:password) is found by
substring search across everything the exporter emitted while every fault — the simulator's and hostile echoing
gateways' — was in play.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import yaml

from exporter import cli
from exporter.client import BifrostClient
from exporter.logs import configure
from exporter.settings import ConfigError, Settings, load_settings
from exporter.simulator import FAULTS, ProviderSpec, Simulator
from exporter.webconfig import WebSecurity
from tests.harness import ExporterThread, make_settings

VIRTUAL_KEY = "sk-bf-VKSECRET-4f1e9a7c2b"
GW_USER = "gwadmin-USERSECRET-81"
GW_PASSWORD = "gw-PWSECRET-b7d3e0a9"
BEARER = "sk-bf-BEARERSECRET-6c2d8e"
HEADER_SECRET = "org-HDRSECRET-5e9f7a"
WEB_PASSWORD = "web-WEBSECRET-0c4b1f"
GW_BASIC = base64.b64encode(f"{GW_USER}:{GW_PASSWORD}".encode()).decode()
WEB_BASIC = base64.b64encode(f"scraper:{WEB_PASSWORD}".encode()).decode()
SECRETS = (VIRTUAL_KEY, GW_USER, GW_PASSWORD, BEARER, HEADER_SECRET, WEB_PASSWORD, GW_BASIC, WEB_BASIC)


def assert_clean(where: str, text: str | bytes) -> None:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked into {where}: ...{_around(text, secret)}..."
    for secret in (VIRTUAL_KEY, GW_PASSWORD, BEARER, HEADER_SECRET):
        # A partial echo (a gateway truncating a key in its message) must not leak the distinctive middle either.
        assert secret[6:18] not in text, f"part of {secret!r} leaked into {where}"


def _around(text: str, secret: str) -> str:
    i = text.find(secret)
    return text[max(0, i - 80) : i + len(secret) + 40]


@pytest.fixture
def logs() -> io.StringIO:
    stream = io.StringIO()
    basic_token = base64.b64encode(f"{GW_USER}:{GW_PASSWORD}".encode()).decode()
    secrets = [VIRTUAL_KEY, GW_USER, GW_PASSWORD, BEARER, HEADER_SECRET, basic_token]
    configure("debug", "json", secrets, stream=stream)
    return stream


def web_security(tmp_path: Path) -> WebSecurity:
    hashed = bcrypt.hashpw(WEB_PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump({"basic_auth_users": {"scraper": hashed}}))
    return WebSecurity(path)


def test_every_simulator_fault_with_debug_logs(tmp_path: Path, logs: io.StringIO) -> None:
    sim = Simulator(
        providers=[ProviderSpec("openai"), ProviderSpec("anthropic")],
        virtual_key=VIRTUAL_KEY,
        basic_auth=(GW_USER, GW_PASSWORD),
        initial_batches=6,
        latency_ms=1,
    )
    with sim:
        settings = make_settings(
            sim.url,
            ["openai", "anthropic"],
            virtual_key=VIRTUAL_KEY,
            basic_auth_username=GW_USER,
            basic_auth_password=GW_PASSWORD,
            extra_headers={"X-Org-Token": HEADER_SECRET},
            log_level="debug",
            request_timeout_seconds=0.5,
            max_retries=1,
        )
        web = web_security(tmp_path)
        with ExporterThread(settings, guard=web) as running:
            running.poll()
            outputs: list[tuple[str, bytes]] = []
            for fault in sorted(FAULTS):
                sim.set_fault(fault, delay=1) if fault == "slow" else sim.set_fault(fault)
                running.poll()
                sim.set_fault(None)
                for path in ("/metrics", "/", "/readyz", "/healthz"):
                    response = running.get(path, auth=("scraper", WEB_PASSWORD))
                    assert response.status_code in (200, 503), (fault, path)
                    outputs.append((f"{path} after {fault}", response.content))
                refused = running.get("/metrics", auth=("scraper", WEB_PASSWORD + "x"))
                assert refused.status_code == 401
                outputs.append((f"401 after {fault}", refused.content + str(refused.headers).encode()))
            running.poll()
    for where, body in outputs:
        assert_clean(where, body)
    text = logs.getvalue()
    assert '"level": "debug"' in text or '"poll_finished"' in text
    events = {json.loads(line)["event"] for line in text.splitlines() if line.startswith("{")}
    assert {"poll_failed", "poll_finished"} <= events
    assert_clean("logs", text)


# --- gateways that echo what they were sent ---------------------------------------------------------------------


@contextlib.asynccontextmanager
async def echo_gateway(mode: str) -> AsyncIterator[str]:
    """A gateway that puts the request head (with every credential) somewhere in its answer."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            status, ctype, extra, body = _echo_response(mode, request)
            head = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


def _echo_response(mode: str, request: str) -> tuple[str, str, str, bytes]:
    def error(status: int, **err: str) -> bytes:
        return json.dumps(
            {"is_bifrost_error": False, "status_code": status, "type": request, "error": err}
        ).encode()

    if mode == "error_code":
        return (
            "401 Unauthorized",
            "application/json",
            "",
            error(401, code=request, message=request, type=request),
        )
    if mode == "server_error":
        return (
            "500 Internal Server Error",
            "application/json",
            "",
            error(500, code=request[:300], message=request),
        )
    if mode == "html":
        return "200 OK", "text/html", "", f"<html>{request}</html>".encode()
    if mode == "content_type":
        return "200 OK", f"text/x-{request[:100]}".replace("\r\n", " "), "", b"{}"
    if mode == "redirect":
        location = "/v1/batches?k=" + request.split("x-bf-vk: ", 1)[-1].split("\r\n", 1)[0]
        return "302 Found", "text/plain", f"Location: {location}\r\n", b""
    if mode == "invalid_page":
        return "200 OK", "application/json", "", json.dumps({"object": request, "data": request}).encode()
    if mode == "bad_item":
        item = {"id": {"nested": request}, "status": [request]}
        return "200 OK", "application/json", "", json.dumps({"object": "list", "data": [item]}).encode()
    if mode == "retry_after":
        return (
            "429 Too Many Requests",
            "application/json",
            f"Retry-After: {request[:200]!r}\r\n".replace("\\r\\n", ""),
            b"{}",
        )
    raise AssertionError(mode)


ECHO_MODES = [
    "error_code",
    "server_error",
    "html",
    "content_type",
    "redirect",
    "invalid_page",
    "bad_item",
    "retry_after",
]


@pytest.mark.parametrize("mode", ECHO_MODES)
@pytest.mark.parametrize("auth", ["basic", "bearer"])
def test_echoing_gateway_never_makes_us_repeat_a_secret(mode: str, auth: str, logs: io.StringIO) -> None:
    from exporter.poller import Poller

    async def scenario() -> tuple[str, str]:
        async with echo_gateway(mode) as url:
            creds: dict[str, Any] = (
                {"basic_auth_username": GW_USER, "basic_auth_password": GW_PASSWORD}
                if auth == "basic"
                else {"bearer_token": BEARER}
            )
            settings = Settings(
                bifrost_url=url,
                providers=["openai"],
                virtual_key=VIRTUAL_KEY,
                extra_headers={"X-Org-Token": HEADER_SECRET},
                max_retries=1,
                request_timeout_seconds=2,
                log_level="debug",
                **creds,
            )
            client = BifrostClient(settings, backoff_base=0.01)
            try:
                result = await client.list_batches("openai")
                poller = Poller(settings, client)
                await poller.poll("openai")
            finally:
                await client.aclose()
            failure = result.failure
            exception_text = "" if failure is None else f"{failure!r} {failure.detail}"
            return exception_text, repr(result)

    exception_text, result_repr = asyncio.run(scenario())
    assert_clean("failure detail (exception text)", exception_text)
    assert_clean("list result", result_repr)
    assert_clean("logs", logs.getvalue())


# --- configuration surfaces ---------------------------------------------------------------------------------------


def test_check_config_output_and_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BIFROST_EXPORTER_VIRTUAL_KEY", VIRTUAL_KEY)
    monkeypatch.setenv("BIFROST_EXPORTER_BASIC_AUTH_USERNAME", GW_USER)
    monkeypatch.setenv("BIFROST_EXPORTER_BASIC_AUTH_PASSWORD", GW_PASSWORD)
    monkeypatch.setenv("BIFROST_EXPORTER_EXTRA_HEADERS", json.dumps({"X-Org-Token": HEADER_SECRET}))
    web = web_security(tmp_path)
    monkeypatch.setenv("BIFROST_EXPORTER_WEB_CONFIG_FILE", str(web.path))
    assert cli.main(["--check-config"]) == 0
    out, err = capsys.readouterr()
    assert "virtual_key: '**********'" in out
    assert_clean("--check-config output", out + err)

    # Invalid combinations and values name the setting, never its secret value.
    monkeypatch.setenv("BIFROST_EXPORTER_BEARER_TOKEN", BEARER)
    assert cli.main(["--check-config"]) == 2
    out, err = capsys.readouterr()
    assert "bearer_token" in err
    assert_clean("--check-config error", out + err)
    monkeypatch.delenv("BIFROST_EXPORTER_BEARER_TOKEN")
    monkeypatch.setenv("BIFROST_EXPORTER_EXTRA_HEADERS", json.dumps({"X-Org-Token": HEADER_SECRET + "\n"}))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert_clean("ConfigError", str(info.value))
    monkeypatch.setenv("BIFROST_EXPORTER_EXTRA_HEADERS", "{" + HEADER_SECRET)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert_clean("ConfigError", str(info.value))


def test_settings_repr_and_dump_mask_secrets() -> None:
    settings = Settings(
        virtual_key=VIRTUAL_KEY, bearer_token=BEARER, extra_headers={"X-Org-Token": HEADER_SECRET}
    )
    assert_clean("repr(settings)", repr(settings).replace(HEADER_SECRET, "<extra header value>"))
    assert_clean("masked()", json.dumps(settings.masked()))


def test_web_password_and_hash_stay_out_of_reload_errors(tmp_path: Path, logs: io.StringIO) -> None:
    web = web_security(tmp_path)
    hashed = web.config.users["scraper"].decode()
    web.path.write_text(yaml.safe_dump({"basic_auth_users": {"scraper": hashed[:-3] + WEB_PASSWORD}}))
    assert web.reload("sighup") is False
    text = logs.getvalue()
    assert "web_config_reload_failed" in text
    assert_clean("reload error", text)
    assert hashed[7:] not in text


def test_credentials_in_the_url_are_refused_or_masked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BIFROST_EXPORTER_BIFROST_URL", f"http://{GW_USER}:{GW_PASSWORD}@127.0.0.1:9")
    cli.main(["--check-config"])
    out, err = capsys.readouterr()
    assert GW_PASSWORD not in out + err


def test_secrets_are_not_sent_to_another_origin() -> None:
    """Covered in depth in test_hostile_gateway; here the headers httpx would carry are checked directly."""
    settings = Settings(bifrost_url="http://gateway.test", providers=["openai"], virtual_key=VIRTUAL_KEY)
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if request.url.host == "gateway.test":
            return httpx.Response(302, headers={"Location": "http://elsewhere.test/v1/batches"})
        return httpx.Response(200, json={"object": "list", "data": []})

    async def scenario() -> Any:
        client = BifrostClient(settings, transport=httpx.MockTransport(handler))
        try:
            return await client.list_batches("openai")
        finally:
            await client.aclose()

    result = asyncio.run(scenario())
    assert [r.url.host for r in sent] == ["gateway.test"]
    assert result.failure is not None and result.failure.reason == "invalid_response"

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
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import structlog
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter import cli
from exporter.basicauth import ALLOWED
from exporter.client import BifrostClient
from exporter.logs import configure
from exporter.settings import ConfigError, Settings, load_settings
from exporter.simulator import FAULTS, ProviderSpec, Simulator
from exporter.webconfig import WebSecurity, load_web_config
from tests.conftest import free_port
from tests.harness import ExporterThread, make_settings, parse_samples, value, wait_until
from tests.test_cli import run as run_exporter
from tests.test_client import Gateway, gateway

VIRTUAL_KEY = "sk-bf-VKSECRET-4f1e9a7c2b"
GW_USER = "gwadmin-USERSECRET-81"
GW_PASSWORD = "gw-PWSECRET-b7d3e0a9"
BEARER = "admin-BEARERSECRET-6c2d8e"  # an admin session token: an sk-bf- value is a key, refused
HEADER_SECRET = "org-HDRSECRET-5e9f7a"
WEB_PASSWORD = "web-WEBSECRET-0c4b1f"
GW_BASIC = base64.b64encode(f"{GW_USER}:{GW_PASSWORD}".encode()).decode()
WEB_BASIC = base64.b64encode(f"scraper:{WEB_PASSWORD}".encode()).decode()
__all__ = ["gateway"]  # the fixture, shared with test_client

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
    events = {json.loads(line)["msg"] for line in text.splitlines() if line.startswith("{")}
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


def test_secrets_are_not_sent_to_another_origin(gateway: Callable[..., tuple[Gateway, str]]) -> None:
    """Covered in depth in test_hostile_gateway; here by name: gateway.test redirects to elsewhere.test (each a
    loopback server reached under that name), and elsewhere.test never hears from us."""
    elsewhere, elsewhere_url = gateway(lambda seen: (200, {"object": "list", "data": []}))
    home, home_url = gateway(lambda seen: (302, b"", {"Location": "http://elsewhere.test/v1/batches"}))
    ports = {
        "gateway.test": int(home_url.rsplit(":", 1)[1]),
        "elsewhere.test": int(elsewhere_url.rsplit(":", 1)[1]),
    }
    settings = Settings(bifrost_url="http://gateway.test", providers=["openai"], virtual_key=VIRTUAL_KEY)

    async def scenario() -> Any:
        client = BifrostClient(settings, resolve=lambda host, port: ("127.0.0.1", ports[host]))
        try:
            return await client.list_batches("openai")
        finally:
            await client.aclose()

    result = asyncio.run(scenario())
    assert [s.headers["host"] for s in home.seen] == ["gateway.test"]
    assert home.seen[0].headers["x-bf-vk"] == VIRTUAL_KEY
    assert elsewhere.seen == []
    assert result.failure is not None and result.failure.reason == "invalid_response"
    assert VIRTUAL_KEY not in result.failure.detail


# --- no secret in any configuration message (issue 15, reproduction 9 and its class) ---------------------------------

URL_SECRET = "sk-bf-URLSECRET-93b1c7"


# (case id, where the value comes from, settings, the setting the error must name)
# Every value carries a secret; the one-line error must name the setting and never repeat the secret.
CONFIG_ERRORS: list[tuple[str, str, dict[str, Any], str]] = [
    ("url-query", "env", {"bifrost_url": f"https://gw:8080/?api_key={URL_SECRET}"}, "bifrost_url"),
    ("url-query-flag", "flag", {"bifrost_url": f"https://gw:8080/v1?key={URL_SECRET}&x=1"}, "bifrost_url"),
    ("url-userinfo", "flag", {"bifrost_url": f"https://admin:{URL_SECRET}@gw:8080"}, "bifrost_url"),
    ("url-user-only", "env", {"bifrost_url": f"http://{URL_SECRET}@gw"}, "bifrost_url"),
    ("url-fragment", "yaml", {"bifrost_url": f"https://gw/#{URL_SECRET}"}, "bifrost_url"),
    ("url-bad-scheme", "yaml", {"bifrost_url": f"ftp://u:{URL_SECRET}@gw/"}, "bifrost_url"),
    ("url-in-a-list", "yaml", {"bifrost_url": [f"https://gw/?k={URL_SECRET}"]}, "bifrost_url"),
    ("provider-url", "env", {"providers": f"openai,https://gw/?k={URL_SECRET}"}, "providers"),
    ("vk-wrong-type", "yaml", {"virtual_key": {"nested": VIRTUAL_KEY}}, "virtual_key"),
    ("vk-list", "yaml", {"virtual_key": [VIRTUAL_KEY]}, "virtual_key"),
    (
        "bearer-and-basic",
        "env",
        {"bearer_token": BEARER, "basic_auth_username": GW_USER, "basic_auth_password": GW_PASSWORD},
        "bearer_token",
    ),
    ("password-without-user", "flag", {"basic_auth_password": GW_PASSWORD}, "basic_auth_username"),
    ("user-without-password", "yaml", {"basic_auth_username": GW_USER}, "basic_auth_password"),
    (
        "header-line-break",
        "yaml",
        {"extra_headers": {"X-Org-Token": HEADER_SECRET + "\nX: y"}},
        "extra_headers",
    ),
    ("header-not-json", "env", {"extra_headers": "{" + HEADER_SECRET}, "extra_headers"),
    ("header-wrong-type", "yaml", {"extra_headers": [HEADER_SECRET]}, "extra_headers"),
    (
        "vk-and-vk-file",
        "env",
        {"virtual_key": VIRTUAL_KEY, "virtual_key_file": "@secret"},
        "virtual_key_file",
    ),
    (
        "bearer-and-file",
        "flag",
        {"bearer_token": BEARER, "bearer_token_file": "@secret"},
        "bearer_token_file",
    ),
    ("file-two-lines", "yaml", {"virtual_key_file": "@two-lines"}, "virtual_key_file"),
    (
        "file-empty",
        "env",
        {"basic_auth_password_file": "@empty", "basic_auth_username": "u"},
        "basic_auth_password_file",
    ),
    ("file-missing", "flag", {"bearer_token_file": "@missing"}, "bearer_token_file"),
    ("file-binary", "yaml", {"bearer_token_file": "@binary"}, "bearer_token_file"),
]


def _materialise(value: Any, tmp_path: Path) -> Any:
    """`@name` stands for a file under tmp_path with a secret-bearing content of that kind."""
    if not (isinstance(value, str) and value.startswith("@")):
        return value
    path = tmp_path / value[1:]
    contents = {
        "@secret": f"{BEARER}\n".encode(),
        "@two-lines": f"{VIRTUAL_KEY}\n{VIRTUAL_KEY}\n".encode(),
        "@empty": b"\n",
        "@binary": b"\xff\xfe" + BEARER.encode(),
    }
    if value in contents:
        path.write_bytes(contents[value])
    return str(path)


def _flag_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


@pytest.mark.parametrize(
    ("where", "settings", "named"), [pytest.param(w, s, n, id=i) for i, w, s, n in CONFIG_ERRORS]
)
def test_config_errors_name_the_setting_never_the_secret(
    tmp_path: Path, where: str, settings: dict[str, Any], named: str
) -> None:
    values = {k: _materialise(v, tmp_path) for k, v in settings.items()}
    args: list[str] = ["--check-config"]
    env: dict[str, str] = {}
    if where == "flag":
        for name, value in values.items():
            args += [f"--{name.replace('_', '-')}", _flag_value(value)]
    elif where == "env":
        env = {f"BIFROST_EXPORTER_{k.upper()}": _flag_value(v) for k, v in values.items()}
    else:
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(values))
        args += ["--config", str(config)]
    result = run_exporter(*args, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert named in result.stderr
    assert_clean("configuration error", result.stdout + result.stderr)
    assert URL_SECRET not in result.stderr and URL_SECRET[6:18] not in result.stderr


def test_reproduction_9_url_query_is_masked_not_printed() -> None:
    result = run_exporter("--check-config", "--bifrost-url", f"https://gw:8080/?api_key={URL_SECRET}")
    assert result.returncode == 2
    assert result.stderr.startswith(
        "bifrost-batch-exporter: invalid setting bifrost_url='https://gw:8080/?***' (from the command line): "
    )


@pytest.mark.parametrize("where", ["flag", "env", "yaml", "file"])
def test_check_config_masks_every_secret_from_every_source(tmp_path: Path, where: str) -> None:
    secrets = {"virtual_key": VIRTUAL_KEY, "basic_auth_username": GW_USER, "basic_auth_password": GW_PASSWORD}
    args = ["--check-config", "--extra-headers", json.dumps({"X-Org-Token": HEADER_SECRET})]
    env: dict[str, str] = {}
    if where == "flag":
        for name, value in secrets.items():
            args += [f"--{name.replace('_', '-')}", value]
    elif where == "env":
        env = {f"BIFROST_EXPORTER_{k.upper()}": v for k, v in secrets.items()}
    elif where == "yaml":
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(secrets))
        args += ["--config", str(config)]
    else:
        (tmp_path / "vk").write_text(VIRTUAL_KEY + "\n")
        (tmp_path / "pw").write_text(GW_PASSWORD)
        args += [
            "--virtual-key-file",
            str(tmp_path / "vk"),
            "--basic-auth-password-file",
            str(tmp_path / "pw"),
        ]
        args += ["--basic-auth-username", GW_USER]
    result = run_exporter(*args, env=env)
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    for name in secrets:
        assert shown[name] == "**********"
    assert shown["extra_headers"] == {"X-Org-Token": "**********"}
    assert_clean("--check-config", result.stdout + result.stderr)


# --- secrets from files, rotated with SIGHUP (issue 11.3) -------------------------------------------------------------


def _metric(url: str, name: str, **labels: str) -> float | None:
    try:
        response = httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None
    return value(parse_samples(response.text), name, **labels)


def _put(path: Path, data: bytes) -> None:
    """A file written whole, as a secret manager does (a dot name is no key, then renamed into place)."""
    scratch = path.with_name(f".{path.name}.tmp")
    scratch.write_bytes(data)
    os.replace(scratch, path)


def _kubelet_update(secret: Path, version: str, files: dict[str, bytes]) -> None:
    """What the kubelet does to a mounted Secret: a new timestamped directory, then `..data` swapped in one rename
    (the top-level entries are links through `..data`, so every file changes at once)."""
    (secret / version).mkdir()
    for name, data in files.items():
        (secret / version / name).write_bytes(data)
        if not (secret / name).is_symlink():
            (secret / name).symlink_to(f"..data/{name}")
    (secret / "..data_tmp").symlink_to(version)
    os.replace(secret / "..data_tmp", secret / "..data")


def test_a_rotated_kubernetes_secret_is_used_without_a_signal(tmp_path: Path) -> None:
    """The gateway only knows the new key. Nothing in a pod sends SIGHUP: the kubelet's update of the mounted Secret
    is noticed (a stat per second) and the new key sent from the next request on; a bad new file keeps the working
    key and is reported once, naming the setting and the file; SIGHUP still reads the files at once."""
    old_key, new_key = "sk-bf-OLDKEY-1f2e3d4c", "sk-bf-NEWKEY-9a8b7c6d"
    secret = tmp_path / "auth"
    secret.mkdir()
    _kubelet_update(secret, "..2026_01", {"virtual-key": old_key.encode() + b"\n"})
    key_file = secret / "virtual-key"
    port = free_port()
    metrics = f"http://127.0.0.1:{port}/metrics"
    with Simulator(providers=[ProviderSpec("openai")], virtual_key=new_key, latency_ms=1) as sim:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BIFROST_EXPORTER_")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--bifrost-url", sim.url, "--providers", "openai",
             "--virtual-key-file", str(key_file), "--poll-interval-seconds", "1", "--max-retries", "0",
             "--web.listen-address", f"127.0.0.1:{port}", "--log.format", "json"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:

            def polls() -> float:
                return _metric(metrics, "bifrost_batch_exporter_polls_total", provider="openai") or 0

            wait_until(
                lambda: (
                    (
                        _metric(
                            metrics,
                            "bifrost_batch_exporter_poll_errors_total",
                            provider="openai",
                            reason="auth",
                        )
                        or 0
                    )
                    >= 1
                )
            )
            assert _metric(metrics, "bifrost_batch_exporter_up", provider="openai") == 0
            _kubelet_update(secret, "..2026_02", {"virtual-key": new_key.encode() + b"\n"})
            wait_until(lambda: _metric(metrics, "bifrost_batch_exporter_up", provider="openai") == 1)
            # The next version is saved by an editor that adds a byte-order mark: it cannot be sent. The working key
            # stays in use, through polls and the watcher's later looks, and one line says which file failed.
            _kubelet_update(secret, "..2026_03", {"virtual-key": b"\xef\xbb\xbf" + new_key.encode() + b"\n"})
            seen = polls()
            wait_until(lambda: polls() > seen + 2)
            assert _metric(metrics, "bifrost_batch_exporter_up", provider="openai") == 1
            assert _metric(metrics, "bifrost_batch_exporter_view_keys", provider="openai") == 1
            proc.send_signal(signal.SIGHUP)  # read now, changed or not: the same file fails again
            seen = polls()
            wait_until(lambda: polls() > seen + 1)
            assert _metric(metrics, "bifrost_batch_exporter_up", provider="openai") == 1
        finally:
            proc.terminate()
            _, stderr = proc.communicate(timeout=10)
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    reloaded = [e for e in events if e["msg"] == "secret_files_reloaded"]
    assert [(e["trigger"], e["settings"]) for e in reloaded] == [("file_changed", ["virtual_key_file"])]
    failed = [e for e in events if e["msg"] == "secret_files_reload_failed"]
    assert [e["trigger"] for e in failed] == ["file_changed", "sighup"]
    for event in failed:
        assert event["error"] == (
            f"invalid setting virtual_key_file: '{key_file}' starts with a byte-order mark (U+FEFF); "
            "save the file without it"
        )
        assert event["level"] == "error" and event["kept"] == "previous"
    assert old_key not in stderr and new_key not in stderr


def test_virtual_key_dir_is_reread_when_it_changes_and_a_bad_key_keeps_the_old_ones(tmp_path: Path) -> None:
    """A key added to the directory is used without a signal; a bad one keeps the keys in use (one line)."""
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "team-a").write_text(VIRTUAL_KEY + "\n")
    port = free_port()
    metrics = f"http://127.0.0.1:{port}/metrics"
    with Simulator(providers=[ProviderSpec("openai")], latency_ms=1) as sim:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BIFROST_EXPORTER_")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--bifrost-url", sim.url, "--providers", "openai",
             "--virtual-key-dir", str(keys), "--poll-interval-seconds", "1", "--log.level", "debug",
             "--web.listen-address", f"127.0.0.1:{port}", "--log.format", "json"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            wait_until(lambda: _metric(metrics, "bifrost_batch_exporter_up", provider="openai") == 1)
            _put(keys / "team-b", b"sk-bf-" + BEARER.encode() + b"\n")
            # Seen by the watcher: the second key is in use once the view says so.
            wait_until(lambda: _metric(metrics, "bifrost_batch_exporter_view_keys", provider="openai") == 2)
            _put(keys / "team-c", b"sk-bf-caf\xc3\xa9-" + GW_PASSWORD.encode())
            polls = _metric(metrics, "bifrost_batch_exporter_polls_total", provider="openai") or 0
            wait_until(
                lambda: (
                    (_metric(metrics, "bifrost_batch_exporter_polls_total", provider="openai") or 0)
                    > polls + 2
                )
            )
            assert _metric(metrics, "bifrost_batch_exporter_up", provider="openai") == 1
            assert _metric(metrics, "bifrost_batch_exporter_view_keys", provider="openai") == 2
        finally:
            proc.terminate()
            _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0, stderr
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    (reloaded,) = [e for e in events if e["msg"] == "secret_files_reloaded"]
    assert reloaded["settings"] == ["virtual_key_dir"] and reloaded["virtual_keys"] == 2
    (failed,) = [e for e in events if e["msg"] == "secret_files_reload_failed"]
    assert failed["error"] == (
        f"invalid setting virtual_key_dir: '{keys / 'team-c'}' has a non-ASCII character at position 10, "
        "which an HTTP header cannot carry"
    )
    assert_clean("logs", stderr)


# --- a secret next to a YAML syntax error (issue 19, item 10) ----------------------------------------------------

# Characters and tokens that break YAML, or change what a line means, when typed next to a secret.
YAML_BREAKERS = [":", ": ", "\t", "'", '"', "[", "]", "{", "}", "*", "&", "!", "%", "@", "`", "|", ">", "- ", "? ",
                 "\\", "#", ",", "\x07", "\ufeff", "\n", "\n  ", "  ", "<<: ", "!!binary ", "&a ", "*a "]  # fmt: skip
INLINE_KEY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC-INLINEKEYSECRET-7fa1c93e"


def _config_text() -> str:
    return (
        "bifrost_url: http://gw:8080\n"
        "providers: [openai]\n"
        f"virtual_key: {VIRTUAL_KEY}\n"
        "basic_auth_username: admin\n"
        f'basic_auth_password: "{GW_PASSWORD}"\n'
        f"extra_headers: {{X-Org-Token: '{HEADER_SECRET}'}}\n"
        "page_size: 10\n"
    )


def _web_config_text(hashed: str) -> str:
    return (
        "basic_auth_users:\n"
        f"  scraper: {hashed}\n"
        f"  other: '{hashed}'\n"
        "tls_server_config:\n"
        "  cert_file: cert.pem\n"
        "  key: |\n"
        "    -----BEGIN PRIVATE KEY-----\n"
        f"    {INLINE_KEY}\n"
        "    -----END PRIVATE KEY-----\n"
    )


@st.composite
def _broken(draw: st.DrawFn, text: str, secret_lines: list[int]) -> str:
    """`text` with one to three edits (insert a YAML breaker, delete or double a character) on or next to a line
    holding a secret."""
    lines = text.split("\n")
    for _ in range(draw(st.integers(1, 3))):
        index = max(
            0,
            min(
                len(lines) - 1, draw(st.sampled_from(secret_lines)) + draw(st.sampled_from([-1, 0, 0, 0, 1]))
            ),
        )
        line = lines[index]
        at = draw(st.integers(0, len(line)))
        edit = draw(st.sampled_from(["insert", "insert", "delete", "double"]))
        if edit == "insert":
            line = line[:at] + draw(st.sampled_from(YAML_BREAKERS)) + line[at:]
        elif edit == "delete" and at < len(line):
            line = line[:at] + line[at + 1 :]
        elif at < len(line):
            line = line[:at] + line[at] + line[at:]
        lines[index] = line
    return "\n".join(lines)


def _assert_no_secret_piece(where: str, text: str, secrets: tuple[str, ...]) -> None:
    """No 8 consecutive characters of any secret: a quoted line, an alias or a tag would show more than that."""
    for secret in secrets:
        for i in range(len(secret) - 7):
            assert secret[i : i + 8] not in text, f"{secret[i : i + 8]!r} of a secret in {where}: {text}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_broken_config_file_never_prints_a_secret(
    data: st.DataObject, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.upper().startswith("BIFROST_EXPORTER_")]:
        monkeypatch.delenv(key)
    text = data.draw(_broken(_config_text(), [2, 4, 5]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text)
        try:
            load_settings(config_file=path)
        except ConfigError as exc:
            message = str(exc)
            assert "\n" not in message
            _assert_no_secret_piece("the config error", message, (VIRTUAL_KEY, GW_PASSWORD, HEADER_SECRET))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_broken_web_config_never_prints_a_hash_or_key(data: st.DataObject) -> None:
    hashed = "$2b$04$" + "Zl1cW9yQ3xV7bN2mK5pR8uT4eH6jA0sD3fG9hJ2kL5zX8cV1bN4m"[:53]
    text = data.draw(_broken(_web_config_text(hashed), [1, 2, 7]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "web.yml"
        path.write_text(text)
        (Path(tmp) / "cert.pem").write_text("not used: the file only has to exist")
        try:
            load_web_config(path)
        except ConfigError as exc:
            _assert_no_secret_piece("the web-config error", str(exc), (hashed[7:], INLINE_KEY))


def test_a_private_key_line_read_as_a_key_is_not_shown(tmp_path: Path) -> None:
    """Hypothesis' find: an inline `key: |` block whose indentation breaks turns the key's line into a mapping key,
    which the unknown-key error used to quote."""
    text = (
        _web_config_text("$2b$04$" + "x" * 53)
        .replace("  key: |\n", "")
        .replace(f"    {INLINE_KEY}\n", f"  -----BEGIN PRIVATE KEY----- {INLINE_KEY}: x\n")
    )
    path = tmp_path / "web.yml"
    path.write_text(text)
    (tmp_path / "cert.pem").write_text("not used: the file only has to exist")
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    assert "not shown" in str(caught.value)
    _assert_no_secret_piece("the web-config error", str(caught.value), (INLINE_KEY,))


def test_a_web_config_reload_with_a_syntax_error_logs_where_not_what(
    tmp_path: Path, logs: io.StringIO
) -> None:
    web = web_security(tmp_path)
    hashed = web.config.users["scraper"].decode()
    web.path.write_text(f"basic_auth_users:\n  scraper: *{hashed}\n")  # an alias where the hash was
    assert web.reload("sighup") is False
    (line,) = [json.loads(x) for x in logs.getvalue().splitlines() if "web_config_reload_failed" in x]
    assert line["error"] == (
        f"invalid setting web_config_file: {web.path}:2:13: expected alphabetic or numeric character, but found "
        "'$' (while scanning an alias at 2:12)"
    )
    _assert_no_secret_piece("the reload log", logs.getvalue(), (hashed[7:],))


def test_a_web_config_edit_yaml_cannot_build_keeps_the_running_config(
    tmp_path: Path, logs: io.StringIO
) -> None:
    """A value YAML parses but cannot build (an impossible date, a tagged hash) used to escape the reload as a bare
    ValueError/KeyError before the fingerprint moved: every request, /healthz included, re-read the file and
    answered 500 until the file was mended."""
    web = web_security(tmp_path)
    hashed = web.config.users["scraper"].decode()
    web.path.write_text(f"basic_auth_users:\n  scraper: !!bool {hashed}\n")
    assert web.reload("file_changed") is False
    for _ in range(3):  # later requests neither reload again nor fail
        assert web.admit("/healthz", {}, "127.0.0.1") == ALLOWED
        assert web.maybe_reload() is False
    assert web.failed_reloads == 1
    assert web.config.users["scraper"].decode() == hashed  # the running config is kept
    (line,) = [json.loads(x) for x in logs.getvalue().splitlines() if "web_config_reload_failed" in x]
    assert line["error"] == (
        f"invalid setting web_config_file: {web.path}:2:12: a value that cannot be read as bool"
    )
    _assert_no_secret_piece("the reload log", logs.getvalue(), (hashed[7:],))


def test_a_config_syntax_error_next_to_a_secret_on_a_real_process(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"providers: [openai]\nvirtual_key: {VIRTUAL_KEY}: oops\n")
    result = run_exporter("--check-config", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr == (
        f"bifrost-batch-exporter: invalid setting config: {config}:2:39: mapping values are not allowed here\n"
    )


# --- a secret that cannot be sent (issue 19, item 11) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "content"),
    [
        ("--virtual-key-file", b"\xef\xbb\xbf" + VIRTUAL_KEY.encode() + b"\n"),
        ("--bearer-token-file", BEARER.encode() + "\u00e9".encode() + b"\n"),
        ("--basic-auth-password-file", b"\xef\xbb\xbf" + GW_PASSWORD.encode()),
    ],
)
@pytest.mark.parametrize("mode", ["--check-config", "--once"])
def test_a_secret_file_that_cannot_be_sent_stops_the_start(
    tmp_path: Path, setting: str, content: bytes, mode: str
) -> None:
    """It used to pass --check-config and then crash-loop the poll task: now both refuse, naming the file."""
    secret = tmp_path / "secret"
    secret.write_bytes(content)
    args = [mode, "--bifrost-url", "http://127.0.0.1:9", "--providers", "openai", setting, str(secret)]
    if setting == "--basic-auth-password-file":
        args += ["--basic-auth-username", "admin"]
    result = run_exporter(*args)
    assert result.returncode == 2, result.stderr
    name = setting.removeprefix("--").replace("-", "_")
    assert result.stderr.startswith(
        f"bifrost-batch-exporter: invalid setting {name} (from the command line): '{secret}' "
    )
    assert len(result.stderr.splitlines()) == 1
    assert_clean("the start error", result.stdout + result.stderr)


def test_an_extra_header_that_cannot_be_sent_stops_the_start() -> None:
    result = run_exporter(
        "--once", "--providers", "openai", "--extra-headers", f"X-Org-Token={HEADER_SECRET}\u00e9"
    )
    assert result.returncode == 2
    assert result.stderr == (
        "bifrost-batch-exporter: invalid setting extra_headers (from the command line): value of header "
        "'X-Org-Token' has a non-ASCII character at position 21, which an HTTP header cannot carry\n"
    )


def test_a_hash_read_as_a_user_name_is_not_shown(tmp_path: Path) -> None:
    """Hypothesis' second find: `? other:' '$2b$…'` makes the user name hold the hash, which the name check quoted."""
    hashed = "$2b$04$" + "Zl1cW9yQ3xV7bN2mK5pR8uT4eH6jA0sD3fG9hJ2kL5zX8cV1bN4m"
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  ? other:' '{hashed}'\n")
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    assert "#1 (not shown: not a plain user name)" in str(caught.value)
    _assert_no_secret_piece("the web-config error", str(caught.value), (hashed[7:],))


def test_a_secret_rotated_while_the_exporter_starts_is_picked_up(tmp_path: Path) -> None:
    """The files are read at start (settings, then the state restore) before the watcher exists: a kubelet `..data`
    swap in between is read at the watcher's first look, not taken as the state it already knows. A first look
    that finds the files as read changes and logs nothing."""
    from exporter.secretreload import SecretReloader

    def data(name: str, key: str) -> None:
        (tmp_path / name).mkdir()
        (tmp_path / name / "virtual-key").write_text(key + "\n")

    data("..2026_a", "sk-bf-old-key-1111")
    os.symlink("..2026_a", tmp_path / "..data")
    os.symlink("..data/virtual-key", tmp_path / "virtual-key")
    loaded = load_settings(
        {
            "bifrost_url": "http://127.0.0.1:1",
            "providers": ["openai"],
            "virtual_key_file": str(tmp_path / "virtual-key"),
        }
    )

    quiet = _Holder(loaded)
    with structlog.testing.capture_logs() as logs:
        assert SecretReloader(quiet).maybe_reload() is False
    assert logs == []
    data("..2026_b", "sk-bf-new-key-2222")
    os.symlink("..2026_b", tmp_path / "..data_tmp")
    os.rename(tmp_path / "..data_tmp", tmp_path / "..data")
    holder = _Holder(loaded)
    reloader = SecretReloader(holder)
    assert reloader.maybe_reload() is True
    assert holder.settings.virtual_key is not None
    assert holder.settings.virtual_key.get_secret_value() == "sk-bf-new-key-2222"
    assert reloader.maybe_reload() is False


def test_a_short_bearer_token_rotated_on_disk_is_picked_up(tmp_path: Path) -> None:
    """The watcher compares each secret whole: a token too short for the log redactor's list (under 4
    characters) rotated from `abc` to `xyz` is a change too."""
    from exporter.secretreload import SecretReloader

    token = tmp_path / "token"
    token.write_text("abc\n")
    loaded = load_settings(
        {"bifrost_url": "http://127.0.0.1:1", "providers": ["openai"], "bearer_token_file": str(token)}
    )

    holder = _Holder(loaded)
    reloader = SecretReloader(holder)
    assert reloader.maybe_reload() is False  # the first look: as read at start
    token.write_text("xyz\n")
    os.utime(token, ns=(1, 10**18))  # a new mtime, whatever the file system's granularity
    assert reloader.maybe_reload() is True
    assert (
        holder.settings.bearer_token is not None and holder.settings.bearer_token.get_secret_value() == "xyz"
    )


def test_a_bearer_token_file_rotated_to_a_virtual_key_is_refused_and_the_old_token_kept(
    tmp_path: Path,
) -> None:
    """A bearer_token_file rewritten with an sk-bf- value would go out as `Authorization: Bearer sk-bf-…`, which
    the gateway reads as the view's key (one tenant) while the view says the whole account. Like any reread that
    cannot be used, it keeps the token in use and logs one line naming the setting and the file, never the key."""
    from exporter.secretreload import SecretReloader
    from exporter.simulator import demo_governance

    governance = demo_governance(mandatory=False)  # keys optional: a keyless request sees the whole account
    tenant_a = governance.keys[0]
    token = tmp_path / "token"
    token.write_text(BEARER + "\n")
    with Simulator(providers=[ProviderSpec("openai")], lifecycle=False, governance=governance) as sim:
        for i, owner in enumerate((tenant_a.id, governance.keys[1].id, None)):
            sim.add_batch("openai", batch_id=f"b{i}", status="in_progress", owner=owner)
        settings = make_settings(sim.url, ["openai"], bearer_token_file=token, stale_after_seconds=10**6)
        with ExporterThread(settings) as exp:
            reloader = SecretReloader(exp.exporter)

            async def reload() -> bool:  # on the exporter's loop, as the watcher and SIGHUP run it
                return reloader.maybe_reload()

            assert exp.call(reload()) is False  # the first look: as read at start
            token.write_text(tenant_a.value + "\n")
            os.utime(token, ns=(1, 10**18))  # a new mtime, whatever the file system's granularity
            with structlog.testing.capture_logs() as logs:
                assert exp.call(reload()) is False
            exp.poll()
            samples = exp.samples()
    bearer = exp.exporter.settings.bearer_token
    assert bearer is not None and bearer.get_secret_value() == BEARER
    (failed,) = [e for e in logs if e["event"] == "secret_files_reload_failed"]
    assert failed["kept"] == "previous" and failed["error"].startswith(
        f"invalid setting bearer_token_file: '{token}' holds a Bifrost virtual key"
    )
    assert tenant_a.value not in str(logs)
    # Still keyless, and the whole account as the view says: every tenant's batch and the unowned one.
    assert value(samples, "bifrost_batch_exporter_view_keys", provider="openai") == 0
    assert value(samples, "bifrost_batches", provider="openai", status="in_progress") == 3


class _Holder:
    """The part of the Exporter a secret reload updates: the settings in use."""

    def __init__(self, current: Settings) -> None:
        self.settings = current

    def update_credentials(self, fresh: Settings) -> None:
        self.settings = fresh

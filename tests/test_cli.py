"""The program as operators run it: real processes, real ports, real signals."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from exporter.cli import GROUPS, flag_names, help_text
from exporter.settings import Settings
from exporter.simulator import ProviderSpec, Simulator
from tests.conftest import free_port
from tests.harness import parse_samples, series, value, wait_until

SECRET = "sk-bf-very-secret-key-123"


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BIFROST_EXPORTER_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(providers=[ProviderSpec("openai"), ProviderSpec("azure", style="legacy")], seed=3) as s:
        yield s


@pytest.mark.parametrize(
    ("env", "args", "needle"),
    [
        (
            {"BIFROST_EXPORTER_PAGE_SIZE": "5000"},
            [],
            "invalid setting page_size='5000' (from environment BIFROST_EXPORTER_PAGE_SIZE)",
        ),
        ({"BIFROST_EXPORTER_PROVIDERS": "openai,openai"}, [], "invalid setting providers"),
        ({"BIFROST_EXPORTER_POLL_INTERVAL_SECONDS": "0.5"}, [], "poll_interval_seconds"),
        ({"BIFROST_EXPORTER_BIFROST_URL": "ftp://x"}, [], "bifrost_url"),
        (
            {},
            ["--listen-address", "nonsense"],
            "invalid setting listen_address='nonsense' (from the command line)",
        ),
        ({}, ["--log.level", "loud"], "invalid setting log_level='loud' (from the command line)"),
        ({"BIFROST_EXPORTER_CA_FILE": "/nonexistent/ca.pem"}, [], "ca_file"),
        ({"BIFROST_EXPORTER_DURATION_BUCKETS": "10,5"}, [], "duration_buckets"),
    ],
)
def test_invalid_setting_exits_2_naming_it(env: dict[str, str], args: list[str], needle: str) -> None:
    result = run("--check-config", *args, env=env)
    assert result.returncode == 2
    assert needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_config_file_names_file_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("providers: [openai]\npage_sise: 10\n")
    result = run("--config", str(cfg))
    assert result.returncode == 2
    assert result.stderr == (
        f"bifrost-batch-exporter: unknown setting 'page_sise' in config file {cfg}:2:1 (did you mean 'page_size'?)\n"
    )
    cfg.write_text("page_size: lots\n")
    result = run("--config", str(cfg))
    assert result.returncode == 2 and f"(from config file {cfg}:1:1)" in result.stderr


def test_yaml_syntax_error_is_one_line_with_file_line_column(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"providers: [openai\nvirtual_key: {SECRET}\n")
    result = run("--check-config", "--config", str(cfg))
    assert result.returncode == 2
    assert result.stderr == (
        f"bifrost-batch-exporter: invalid setting config: {cfg}:2:12: expected ',' or ']', but got ':' "
        "(while parsing a flow sequence at 1:12)\n"
    )


def test_unknown_environment_variable_is_refused_with_a_suggestion() -> None:
    result = run("--check-config", env={"BIFROST_EXPORTER_WEB_LISTEN_ADDRESS": "127.0.0.1:1"})
    assert result.returncode == 2
    assert result.stderr == (
        "bifrost-batch-exporter: unknown environment variable BIFROST_EXPORTER_WEB_LISTEN_ADDRESS "
        "(did you mean BIFROST_EXPORTER_LISTEN_ADDRESS?)\n"
    )


def test_secret_in_invalid_combination_is_not_echoed() -> None:
    result = run(
        "--check-config",
        env={
            "BIFROST_EXPORTER_BEARER_TOKEN": SECRET,
            "BIFROST_EXPORTER_BASIC_AUTH_USERNAME": "u",
            "BIFROST_EXPORTER_BASIC_AUTH_PASSWORD": SECRET,
        },
    )
    assert result.returncode == 2 and "bearer_token" in result.stderr
    assert SECRET not in result.stderr + result.stdout


def test_precedence_and_masked_check_config(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"page_size: 10\nmax_pages: 7\nvirtual_key: {SECRET}\nextra_headers: {{X-Team: {SECRET}}}\n"
    )
    result = run(
        "--config",
        str(cfg),
        "--check-config",
        "--listen-address",
        "127.0.0.1:1234",
        env={
            "BIFROST_EXPORTER_PAGE_SIZE": "20",
            "BIFROST_EXPORTER_LISTEN_ADDRESS": "0.0.0.0:1",
            "BIFROST_EXPORTER_PROVIDERS": '["openai", "azure"]',
        },
    )
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout
    shown = yaml.safe_load(result.stdout)
    assert shown["page_size"] == 20  # env beats file
    assert shown["max_pages"] == 7  # file beats default
    assert shown["listen_address"] == "127.0.0.1:1234"  # flag beats env
    assert shown["providers"] == ["openai", "azure"]
    assert shown["virtual_key"] == "**********"
    assert shown["extra_headers"] == {"X-Team": "**********"}
    assert shown["stale_after_seconds"] == 150.0  # 5 × the default interval
    # the config file may also come from the environment
    env_cfg = run("--check-config", env={"BIFROST_EXPORTER_CONFIG": str(cfg)})
    assert yaml.safe_load(env_cfg.stdout)["max_pages"] == 7


def test_version_comes_from_the_package_metadata() -> None:
    result = run("--version")
    assert result.returncode == 0
    # Laid out like Prometheus' version.Print; the build facts themselves are tested in tests/test_version.py.
    first = result.stdout.splitlines()[0]
    assert first.startswith(
        f"bifrost-batch-exporter, version {importlib.metadata.version('bifrost-batch-exporter')} ("
    )


def test_help_lists_every_setting_as_a_flag_with_its_sentence_and_default() -> None:
    result = run("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # help lines are wrapped
    for name, field in Settings.model_fields.items():
        flags = flag_names(name)
        if field.annotation is bool:
            flags = [f"--[no-]{flag.removeprefix('--')}" for flag in flags]
        assert any(f"{flag}," in text or f"{flag} " in text for flag in flags), name
        assert help_text(name, field).replace("%%", "%") in text, name
    for flag in ("--web.listen-address", "--web.config.file", "--web.telemetry-path", "--log.level", "--log.format",
                 "--config", "--demo", "--once", "--check-config", "--version", "--[no-]tls-verify"):  # fmt: skip
        assert flag in text, flag
    # node_exporter's style: metavars that say what to write, no Python types, sentences
    for metavar in ("PROVIDER,...", "FILE", "NAME=VALUE", "SECONDS", "HOST:PORT", "DIR", "LEVEL", "FORMAT"):
        assert f" {metavar}" in text, metavar
    python_metavar = re.search(r"--[\w.-]+ (?:Path|str|float|int|bool|SecretStr|tuple|dict)\b", text)
    assert python_metavar is None, python_metavar
    for python in ("tuple[", "SecretStr", "dict[", "None", "= setting"):
        assert python not in text, python
    assert "--log-level" not in text and "--log-format" not in text  # deprecated: accepted, not advertised


def test_every_setting_is_in_one_help_section() -> None:
    listed = [name for _, names in GROUPS for name in names]
    assert sorted(listed) == sorted(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        extra = field.json_schema_extra
        assert field.annotation is bool or (isinstance(extra, dict) and extra.get("metavar")), name
        assert field.description and field.description.endswith("."), name


def test_extra_headers_flag_takes_name_value_repeated_and_json() -> None:
    result = run(
        "--check-config", "--extra-headers", "X-Team=llm", "--extra-headers", "X-Env=prod=eu",
        "--extra-headers", '{"X-Org": "a"}', "--providers", "openai", "--providers", "azure,gemini",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["extra_headers"] == {"X-Team": "**********", "X-Env": "**********", "X-Org": "**********"}
    assert shown["providers"] == ["openai", "azure", "gemini"]
    bad = run("--check-config", "--extra-headers", "X-Team")
    assert (
        bad.returncode == 2
        and "invalid setting extra_headers (from the command line): must be NAME=VALUE" in bad.stderr
    )


def test_log_flags_promslog_spelling_and_the_deprecated_ones() -> None:
    new = run("--check-config", "--log.level", "warn", "--log.format", "json")
    assert new.returncode == 0 and new.stderr == ""
    shown = yaml.safe_load(new.stdout)
    assert (shown["log_level"], shown["log_format"]) == ("warn", "json")
    old = run("--check-config", "--log-level", "warning", "--log-format", "console")
    assert old.returncode == 0
    assert (yaml.safe_load(old.stdout)["log_level"], yaml.safe_load(old.stdout)["log_format"]) == (
        "warn",
        "logfmt",
    )
    assert old.stderr.splitlines() == [
        "bifrost-batch-exporter: warning: --log-level is deprecated and will be removed; use --log.level",
        "bifrost-batch-exporter: warning: --log-format is deprecated and will be removed; use --log.format",
        "bifrost-batch-exporter: warning: log_level 'warning' is deprecated and will be removed; use 'warn'",
        "bifrost-batch-exporter: warning: log_format 'console' is deprecated and will be removed; use 'logfmt'",
    ]


def test_an_unknown_flag_gets_a_suggestion() -> None:
    result = run("--check-config", "--web.listen-adress", "127.0.0.1:1")
    assert result.returncode == 2
    assert result.stderr == (
        "bifrost-batch-exporter: unrecognized arguments: --web.listen-adress <value> "
        "(did you mean --web.listen-address?) (see --help)\n"
    )
    abbreviated = run("--check-config", "--poll-interval", "5")  # no prefix matching: a typo stays a typo
    assert abbreviated.returncode == 2 and "did you mean --poll-interval-seconds?" in abbreviated.stderr


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["--basic-auth-pasword=hunter2-secret"], "unrecognized arguments: --basic-auth-pasword=<value> "),
        (["--virtual-kye", "sk-bf-hunter2-secret"], "unrecognized arguments: --virtual-kye <value> "),
        (["--tls-verify=hunter2-secret"], "ignored explicit argument (its value is not shown)"),
    ],
)
def test_a_misspelt_flag_never_echoes_its_value(args: list[str], shown: str) -> None:
    """argparse quotes unknown arguments back; a misspelt secret flag would print the secret it carries."""
    result = run("--check-config", *args)
    assert result.returncode == 2
    assert shown in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_demo_listens_on_loopback_unless_told_otherwise() -> None:
    assert yaml.safe_load(run("--demo", "--check-config").stdout)["listen_address"] == "127.0.0.1:9877"
    for args, env in (
        (["--web.listen-address", "0.0.0.0:9100"], {}),
        ([], {"BIFROST_EXPORTER_LISTEN_ADDRESS": "0.0.0.0:9100"}),
    ):
        shown = yaml.safe_load(run("--demo", "--check-config", *args, env=env).stdout)
        assert shown["listen_address"] == "0.0.0.0:9100"
    assert yaml.safe_load(run("--check-config").stdout)["listen_address"] == "0.0.0.0:9877"


@pytest.mark.parametrize(
    "url", ["http://h:abc", "http://h:99999", "http://h:0", "http://[::1", "http://a..b", "http://h:8080 x"]
)
def test_once_refuses_an_unusable_url_in_one_line_not_a_traceback(url: str) -> None:
    for mode in ("--check-config", "--once"):
        result = run(mode, "--bifrost-url", url, "--providers", "openai")
        assert result.returncode == 2, (mode, result.stderr)
        assert result.stderr.startswith("bifrost-batch-exporter: invalid setting bifrost_url")
        assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


def test_once_against_a_usable_url_with_nothing_there_fails_cleanly() -> None:
    port = free_port()
    for url in (f"http://127.0.0.1:{port}/prefix", f"http://[::1]:{port}"):
        result = run("--once", "--bifrost-url", url, "--providers", "openai", "--max-retries", "0")
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert value(parse_samples(result.stdout), "bifrost_batch_exporter_up", provider="openai") == 0


def test_every_setting_has_a_flag_that_beats_env_and_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("poll_interval_seconds: 60\nper_batch_metrics: true\n")
    env = {"BIFROST_EXPORTER_POLL_INTERVAL_SECONDS": "45", "BIFROST_EXPORTER_PROVIDERS": "gemini"}
    result = run(
        "--config", str(cfg), "--check-config", "--poll-interval-seconds", "15",
        "--providers", "openai,anthropic", "--no-per-batch-metrics", "--no-tls-verify",
        "--extra-headers", '{"X-Team": "a"}', "--duration-buckets", "30,600", "--metadata-labels", "team",
        "--web.listen-address", "127.0.0.1:9999", "--web.telemetry-path", "/custom", env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["poll_interval_seconds"] == 15
    assert shown["providers"] == ["openai", "anthropic"]
    assert shown["per_batch_metrics"] is False and shown["tls_verify"] is False
    assert shown["extra_headers"] == {"X-Team": "**********"}
    assert shown["duration_buckets"] == [30.0, 600.0] and shown["metadata_labels"] == ["team"]
    assert shown["listen_address"] == "127.0.0.1:9999" and shown["telemetry_path"] == "/custom"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ["--poll-interval-seconds", "soon"],
            "invalid setting poll_interval_seconds='soon' (from the command line)",
        ),
        (
            ["--web.listen-address", "nowhere"],
            "invalid setting listen_address='nowhere' (from the command line)",
        ),
        (
            ["--web.telemetry-path", "metrics"],
            "invalid setting telemetry_path='metrics' (from the command line)",
        ),
        (["--web.config.file", "/nonexistent/web.yml"], "invalid setting web_config_file"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_bad_flag_is_one_line_exit_2(args: list[str], needle: str) -> None:
    result = run("--check-config", *args)
    assert result.returncode == 2
    assert needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_toolkit_flags_serve_with_web_config_on_a_real_process(sim: Simulator, tmp_path: Path) -> None:
    import bcrypt

    web = tmp_path / "web.yml"
    hashed = bcrypt.hashpw(b"scrape-pw", bcrypt.gensalt(4)).decode()
    web.write_text(yaml.safe_dump({"basic_auth_users": {"prometheus": hashed}}))
    port = free_port()
    proc = _start(
        {}, "--bifrost-url", sim.url, "--providers", "openai,azure",
        "--web.listen-address", f"127.0.0.1:{port}", "--web.config.file", str(web),
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: (r := _get(url + "/healthz")) is not None and r.status_code == 200)
        assert httpx.get(url + "/metrics", timeout=5).status_code == 401
        ok = httpx.get(url + "/metrics", auth=("prometheus", "scrape-pw"), timeout=5)
        assert ok.status_code == 200 and "bifrost_batch_exporter_up" in ok.text
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0


def test_custom_telemetry_path_on_a_real_process(sim: Simulator) -> None:
    port = free_port()
    proc = _start(
        {}, "--bifrost-url", sim.url, "--providers", "openai",
        "--web.listen-address", f"127.0.0.1:{port}", "--web.telemetry-path", "/exporter/metrics",
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: (r := _get(url + "/exporter/metrics")) is not None and r.status_code == 200)
        body = httpx.get(url + "/exporter/metrics", timeout=5).text
        assert "bifrost_batch_exporter_up" in body and "process_resident_memory_bytes" in body
        assert httpx.get(url + "/metrics", timeout=5).status_code == 404
        assert "/exporter/metrics" in httpx.get(url + "/", timeout=5).text  # the landing page links it
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_once_prints_exposition_and_exit_code(sim: Simulator) -> None:
    env = {
        "BIFROST_EXPORTER_BIFROST_URL": sim.url,
        "BIFROST_EXPORTER_PROVIDERS": "openai,azure",
        "BIFROST_EXPORTER_LOG_FORMAT": "json",
    }
    ok = run("--once", env=env)
    assert ok.returncode == 0, ok.stderr
    s = parse_samples(ok.stdout)
    assert value(s, "bifrost_batch_exporter_up", provider="openai") == 1
    assert value(s, "bifrost_batch_exporter_up", provider="azure") == 1
    logs = [json.loads(line) for line in ok.stderr.splitlines() if line.startswith("{")]
    # At info, one summary line per provider (at most once a minute); each poll's own line is at debug.
    assert not [entry for entry in logs if entry["msg"] == "poll_finished"]
    summaries = [entry for entry in logs if entry["msg"] == "polls_summary"]
    assert sorted(e["provider"] for e in summaries) == ["azure", "openai"]
    for entry in summaries:
        assert {"polls", "failed", "batches", "list_requests", "retrieve_requests", "full_list"} <= set(entry)
    debug = run("--once", env={**env, "BIFROST_EXPORTER_LOG_LEVEL": "debug"})
    logs = [json.loads(line) for line in debug.stderr.splitlines() if line.startswith("{")]
    finished = [entry for entry in logs if entry["msg"] == "poll_finished"]
    assert {e["provider"] for e in finished} == {"openai", "azure"}
    for entry in finished:
        assert {"pages", "batches", "duration_seconds", "outcome"} <= set(entry)
    sim.set_fault("server_error", provider="azure")
    bad = run("--once", env={**env, "BIFROST_EXPORTER_MAX_RETRIES": "0"})
    assert bad.returncode == 1
    assert value(parse_samples(bad.stdout), "bifrost_batch_exporter_up", provider="azure") == 0
    failures = [json.loads(line) for line in bad.stderr.splitlines() if '"poll_failed"' in line]
    assert (
        len(failures) == 1 and failures[0]["reason"] == "server_error" and failures[0]["provider"] == "azure"
    )


def test_once_lists_an_account_larger_than_one_polls_budget_whole() -> None:
    """One poll may send poll_interval_seconds x max_requests_per_second requests: 10 pages here, of 15. `--once`
    polls on until the first full list is complete, so what it prints is the whole account, never a partial list
    with exit 0."""
    with Simulator(providers=[ProviderSpec("openai")], lifecycle=False) as gateway:
        for i in range(150):
            gateway.add_batch(
                "openai", batch_id=f"b{i:03d}", status="completed", created_at=1_700_000_000 + i
            )
        done = run(
            "--once", "--page-size", "10", "--poll-interval-seconds", "1",
            env={"BIFROST_EXPORTER_BIFROST_URL": gateway.url, "BIFROST_EXPORTER_PROVIDERS": "openai"},
        )  # fmt: skip
        lists = gateway.requests("openai", "list")
    assert done.returncode == 0, done.stderr[-2000:]
    s = parse_samples(done.stdout)
    assert value(s, "bifrost_batches", provider="openai", status="completed") == 150
    assert value(s, "bifrost_batch_exporter_first_sync_complete", provider="openai") == 1
    assert lists >= 15


@pytest.mark.parametrize(
    ("args", "fault", "reason"),
    [
        (("--max-pages", "5", "--poll-mode", "full"), None, "max_pages"),
        ((), "cursor_loop", "cursor_loop"),
    ],
)
def test_once_exits_1_on_a_list_that_stopped_early(
    args: tuple[str, ...], fault: str | None, reason: str
) -> None:
    """A first full list cut by max_pages or a looping cursor completes the first sync (a later poll would list it
    again the same way), but what `--once` prints is part of the account: exit 1 and a warning naming the
    provider, not a third of the batches with exit 0 (audit 7, surface F2)."""
    with Simulator(providers=[ProviderSpec("openai")], lifecycle=False) as gateway:
        for i in range(150):
            gateway.add_batch(
                "openai", batch_id=f"b{i:03d}", status="completed", created_at=1_700_000_000 + i
            )
        gateway.set_fault(fault)
        done = run(
            "--once", "--page-size", "10", *args,
            env={"BIFROST_EXPORTER_BIFROST_URL": gateway.url, "BIFROST_EXPORTER_PROVIDERS": "openai",
                 "BIFROST_EXPORTER_LOG_FORMAT": "json"},
        )  # fmt: skip
    s = parse_samples(done.stdout)
    assert value(s, "bifrost_batch_exporter_coverage", provider="openai", reason=reason) == 1
    assert (value(s, "bifrost_batches", provider="openai", status="completed") or 0) < 150
    assert done.returncode == 1, done.stderr[-2000:]
    warnings = [json.loads(line) for line in done.stderr.splitlines() if '"once_incomplete"' in line]
    assert len(warnings) == 1 and warnings[0]["providers"] == ["openai"], done.stderr[-2000:]


def _start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BIFROST_EXPORTER_")}
    full_env.update(env)
    return subprocess.Popen(
        [sys.executable, "-m", "exporter", *args],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_within_5s(sim: Simulator, sig: signal.Signals) -> None:
    port = free_port()
    proc = _start(
        {
            "BIFROST_EXPORTER_BIFROST_URL": sim.url,
            "BIFROST_EXPORTER_PROVIDERS": "openai,azure",
            "BIFROST_EXPORTER_LISTEN_ADDRESS": f"127.0.0.1:{port}",
        }
    )
    try:
        wait_until(
            lambda: (r := _get(f"http://127.0.0.1:{port}/readyz")) is not None and r.status_code == 200
        )
        # a poll in flight when the signal arrives is cancelled, not waited for
        sim.set_fault("slow", delay=30)
        time.sleep(0.2)
        started = time.monotonic()
        proc.send_signal(sig)
        proc.wait(timeout=5)
        assert time.monotonic() - started < 5
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sim.set_fault(None)


def test_demo_serves_live_metrics() -> None:
    """`--demo` comes up with live data (3–4 s on a quiet host; the deadline is a hang guard, not a measure)."""
    port = free_port()
    proc = _start({}, "--demo", "--web.listen-address", f"127.0.0.1:{port}")
    try:

        def ready() -> bool:
            r = _get(f"http://127.0.0.1:{port}/metrics")
            return r is not None and 'bifrost_batch_exporter_up{provider="openai"} 1.0' in r.text

        wait_until(ready, timeout=60)
        s = parse_samples(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
        total = sum(v for (n, _), v in s.items() if n == "bifrost_batches")
        assert total > 0
        landing = httpx.get(f"http://127.0.0.1:{port}/")
        assert "openai" in landing.text and "/metrics" in landing.text
    finally:
        proc.terminate()
        proc.wait(timeout=5)
    assert proc.returncode == 0


def test_port_in_use_fails_with_a_clear_line() -> None:
    import socket

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        result = run(
            "--listen-address", f"127.0.0.1:{port}", env={"BIFROST_EXPORTER_LOG_FORMAT": "json"}, timeout=20
        )
    assert result.returncode == 1
    assert "startup_failed" in result.stderr


def test_log_level_and_format_and_custom_buckets(sim: Simulator) -> None:
    env = {
        "BIFROST_EXPORTER_BIFROST_URL": sim.url,
        "BIFROST_EXPORTER_PROVIDERS": "openai",
        "BIFROST_EXPORTER_LATENCY_BUCKETS": "0.1,1",
        "BIFROST_EXPORTER_DURATION_BUCKETS": "[30, 600]",
    }
    quiet = run(
        "--once", env={**env, "BIFROST_EXPORTER_LOG_LEVEL": "warn", "BIFROST_EXPORTER_LOG_FORMAT": "json"}
    )
    assert quiet.returncode == 0 and "polls_summary" not in quiet.stderr
    s = parse_samples(quiet.stdout)
    assert value(s, "bifrost_batch_upstream_latency_seconds_bucket", provider="openai", le="1.0") is not None
    assert value(s, "bifrost_batch_upstream_latency_seconds_bucket", provider="openai", le="0.05") is None
    assert (
        value(s, "bifrost_batch_duration_seconds_bucket", provider="openai", status="failed", le="600.0") == 0
    )
    logfmt = run("--once", env=env)  # logfmt is the default
    lines = [line for line in logfmt.stderr.splitlines() if "msg=polls_summary" in line]
    assert lines and lines[0].startswith("ts=") and " level=info caller=" in lines[0]
    assert " provider=openai" in lines[0]


def test_check_config_names_the_keys_of_a_key_directory_never_their_values(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "team-b").write_text(SECRET + "-b\n")
    (keys / "team-a").write_text(SECRET + "-a\n")
    (keys / ".hidden").write_text("not a key\n")
    result = run("--check-config", "--virtual-key-dir", str(keys))
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("# virtual_key_dir holds 2 keys: team-a, team-b\n")
    shown = yaml.safe_load(result.stdout)
    assert shown["virtual_key_dir"] == str(keys) and shown["virtual_key"] is None
    assert SECRET not in result.stdout + result.stderr


def test_demo_shows_the_union_view_of_a_governance_gateway_with_two_tenants() -> None:
    """--demo runs the simulator with governance (mandatory keys, two tenants) and gives the exporter both keys (in
    memory, as a key directory would: nothing is written, so the demo runs on a read-only root filesystem): every
    provider reports the union view and the keys never reach the log."""
    from exporter.simulator import demo_governance

    done = run("--demo", "--once", env={"BIFROST_EXPORTER_LOG_FORMAT": "json"})
    assert done.returncode == 0, done.stderr
    s = parse_samples(done.stdout)
    views = {lbl["provider"]: v for lbl, v in series(s, "bifrost_batch_exporter_view_keys")}
    assert views and set(views.values()) == {2.0}
    assert all(v == 1 for _, v in series(s, "bifrost_batch_exporter_up"))
    logs = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    (started,) = [e for e in logs if e["msg"] == "demo_simulator_started"]
    assert started["virtual_keys"] == ["tenant-a", "tenant-b"]
    assert {tuple(e["key_names"]) for e in logs if e["msg"] == "view"} == {("tenant-a", "tenant-b")}
    for key in demo_governance().keys:
        assert key.value not in done.stderr

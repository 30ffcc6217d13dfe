"""Real Prometheus and Alertmanager processes for tests: free loopback ports, temp dirs, APIs polled with deadlines.

Reusable by any suite that needs a real scraper (alert e2e, TLS scrape tests, …)::

    prom_bin = require_tool("prometheus")
    with Prometheus(prom_bin, tmp_path / "prom", scrape_configs=[static_scrape("exporter", "127.0.0.1:9877")]) as prom:
        prom.wait_for_targets_up(timeout=30)
        prom.query("up")

Nothing here sleeps for a fixed time: every wait polls an API until a deadline and fails with the process log.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import yaml

from tests.conftest import free_port

T = TypeVar("T")

DEFAULT_START_TIMEOUT = 30.0
_PORT_ATTEMPTS = 3


class ProcessDied(RuntimeError):
    """A managed process exited while a test was waiting on it."""


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    diagnostics: Callable[[], str] | None = None,
) -> T:
    """Call `probe` until it returns something truthy (returned) or `timeout` seconds pass (TimeoutError).

    Exceptions from `probe` count as "not yet" except ProcessDied, which ends the wait at once; the last one is
    reported on timeout together with `diagnostics()` (e.g. a process log).
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = probe()
        except ProcessDied:
            raise
        except Exception as exc:  # a server not up yet, a transient HTTP error, …
            result, last = None, exc
        else:
            last = result
        if result:
            return result
        if time.monotonic() >= deadline:
            extra = f"\n{diagnostics()}" if diagnostics is not None else ""
            raise TimeoutError(f"{what}: not within {timeout:.0f}s (last: {last!r}){extra}")
        time.sleep(interval)


def http_get(
    url: str,
    *,
    timeout: float = 5.0,
    headers: Mapping[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, bytes]:
    """(status, body) of a GET; HTTP error statuses are returned, not raised."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as err:
        return int(err.code), bytes(err.read())


def http_json(url: str, *, timeout: float = 5.0) -> Any:
    status, body = http_get(url, timeout=timeout)
    if status != 200:
        raise RuntimeError(f"GET {url}: HTTP {status}: {body[:500]!r}")
    return json.loads(body)


class ManagedProcess:
    """A child process whose stdout+stderr go to a log file; stopped (TERM, then KILL) on exit."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._env = None if env is None else {**os.environ, **env}
        self._cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env,
                cwd=self._cwd,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return f"[{self.name}: no log]"
        return f"--- {self.name} log ({self.log_path}) ---\n{text[-chars:]}"

    def ensure_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ProcessDied(f"{self.name} exited with code {self.proc.returncode}\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class _Server:
    """Common part of Prometheus and Alertmanager: a ManagedProcess listening on a free loopback port."""

    name = "server"

    def __init__(self, binary: str, workdir: Path, *, port: int | None = None) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.process: ManagedProcess | None = None
        self.config_path = workdir / f"{self.name}.yml"
        self.config: dict[str, Any] = {}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write the YAML config the binary is started with into self.workdir."""
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def diagnostics(self) -> str:
        return self.process.log_tail() if self.process is not None else f"[{self.name} not started]"

    def ensure_alive(self) -> None:
        if self.process is not None:
            self.process.ensure_alive()

    def start(self, timeout: float = DEFAULT_START_TIMEOUT) -> Self:
        """Start and wait for /-/ready; a port taken between choosing and binding is retried on a new port."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._prepare()
        for attempt in range(_PORT_ATTEMPTS):
            self.process = ManagedProcess(self.name, self._argv(), self.workdir / f"{self.name}.log").start()
            try:
                self.wait_ready(timeout)
                return self
            except ProcessDied:
                log = self.process.log_tail()
                self.process.stop()
                if "address already in use" not in log or attempt == _PORT_ATTEMPTS - 1:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def wait_ready(self, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        def ready() -> bool:
            self.ensure_alive()
            return http_get(f"{self.url}/-/ready", timeout=2)[0] == 200

        wait_until(
            ready, timeout=timeout, what=f"{self.name} ready at {self.url}", diagnostics=self.diagnostics
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def static_scrape(job: str, *targets: str, **options: Any) -> dict[str, Any]:
    """A scrape_config entry for fixed targets; `options` adds e.g. scheme="https", tls_config={...}."""
    return {"job_name": job, "static_configs": [{"targets": list(targets)}], **options}


class Prometheus(_Server):
    """A real Prometheus with a temp data dir, a generated config and the given rule files."""

    name = "prometheus"

    def __init__(
        self,
        binary: str,
        workdir: Path,
        *,
        scrape_configs: Sequence[Mapping[str, Any]] = (),
        rule_files: Sequence[Path] = (),
        alertmanagers: Sequence[str] = (),
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        port: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(binary, workdir, port=port)
        self.config_path = workdir / "prometheus.yml"
        self.config: dict[str, Any] = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval},
            "scrape_configs": [dict(c) for c in scrape_configs],
        }
        if rule_files:
            self.config["rule_files"] = [str(Path(p).resolve()) for p in rule_files]
        if alertmanagers:
            self.config["alerting"] = {
                "alertmanagers": [{"api_version": "v2", "static_configs": [{"targets": list(alertmanagers)}]}]
            }
        self.extra_args = list(extra_args)

    def _argv(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address={self.address}",
            *self.extra_args,
        ]

    def api(self, path: str, **params: str) -> Any:
        """`data` of a successful /api/v1 call."""
        self.ensure_alive()
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        body = http_json(f"{self.url}/api/v1/{path}{query}")
        if body.get("status") != "success":
            raise RuntimeError(f"/api/v1/{path}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the vector's samples (a scalar comes back as one sample without labels)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "vector":
            return list(data["result"])
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        raise RuntimeError(f"unexpected result type {data['resultType']} for {expr}")

    def active_targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets", state="active")["activeTargets"])

    def wait_for_targets_up(self, *, timeout: float = DEFAULT_START_TIMEOUT, job: str | None = None) -> None:
        """Until every active target (of `job`) has been scraped successfully at least once."""

        def all_up() -> bool:
            targets = [t for t in self.active_targets() if job is None or t["labels"].get("job") == job]
            return bool(targets) and all(t["health"] == "up" for t in targets)

        wait_until(
            all_up,
            timeout=timeout,
            what=f"targets up{f' (job {job})' if job else ''}",
            diagnostics=lambda: f"targets: {self._safe(self.active_targets)}\n{self.diagnostics()}",
        )

    def wait_for_series(self, expr: str, *, timeout: float = DEFAULT_START_TIMEOUT) -> list[dict[str, Any]]:
        return wait_until(
            lambda: self.query(expr), timeout=timeout, what=f"series for {expr}", diagnostics=self.diagnostics
        )

    def alerts(self) -> list[dict[str, Any]]:
        """Prometheus' own view of pending and firing alerts."""
        return list(self.api("alerts")["alerts"])

    def rule_groups(self) -> list[dict[str, Any]]:
        return list(self.api("rules")["groups"])

    @staticmethod
    def _safe(fn: Callable[[], object]) -> object:
        try:
            return fn()
        except Exception as exc:
            return exc


def alertmanager_binary() -> str | None:
    """Debian ships Alertmanager as `prometheus-alertmanager`; upstream tarballs as `alertmanager`."""
    return shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


DEFAULT_ALERTMANAGER_CONFIG: dict[str, Any] = {
    "route": {"receiver": "blackhole", "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"},
    "receivers": [{"name": "blackhole"}],
}


class Alertmanager(_Server):
    """A real Alertmanager, clustering disabled, temp storage; alerts read back from /api/v2/alerts."""

    name = "alertmanager"

    def __init__(
        self,
        binary: str,
        workdir: Path,
        *,
        config: Mapping[str, Any] | None = None,
        port: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(binary, workdir, port=port)
        self.config_path = workdir / "alertmanager.yml"
        self.config = dict(config if config is not None else DEFAULT_ALERTMANAGER_CONFIG)
        self.extra_args = list(extra_args)

    def _argv(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address={self.address}",
            "--cluster.listen-address=",  # no gossip port, no peers
            *self.extra_args,
        ]

    def alerts(self, **label_filters: str) -> list[dict[str, Any]]:
        """Alerts Alertmanager holds now, optionally filtered by exact label values."""
        self.ensure_alive()
        matchers = [("filter", f'{name}="{value}"') for name, value in sorted(label_filters.items())]
        query = f"?{urllib.parse.urlencode(matchers)}" if matchers else ""
        return list(http_json(f"{self.url}/api/v2/alerts{query}"))


def start_exporter(workdir: Path, settings: Mapping[str, Any], *, root: Path) -> tuple[ManagedProcess, str]:
    """`python -m exporter` with `settings` as its YAML config on a free loopback port, once /readyz answers 200.

    Returns the process (stop it) and its base URL. A port taken between choosing and binding (parallel test
    workers) is retried on a new port, like _Server.start."""
    config = workdir / "exporter.yaml"
    config.write_text(yaml.safe_dump(dict(settings)))
    for attempt in range(_PORT_ATTEMPTS):
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "exporter",
            "--config",
            str(config),
            "--listen-address",
            f"127.0.0.1:{port}",
        ]
        exporter = ManagedProcess(
            "exporter",
            argv,
            workdir / ("exporter.log" if attempt == 0 else f"exporter-{attempt}.log"),
            cwd=root,
        ).start()
        url = f"http://127.0.0.1:{port}"

        def ready(exporter: ManagedProcess = exporter, url: str = url) -> bool:
            exporter.ensure_alive()
            return http_get(f"{url}/readyz", timeout=2)[0] == 200

        try:
            wait_until(ready, timeout=30, what="exporter /readyz", diagnostics=exporter.log_tail)
            return exporter, url
        except ProcessDied:
            log = exporter.log_tail()
            exporter.stop()
            if "address already in use" not in log.lower() or attempt == _PORT_ATTEMPTS - 1:
                raise
        except BaseException:
            exporter.stop()
            raise
    raise AssertionError("unreachable")

"""Shared plumbing for the benchmarks: tables, child processes, readiness waits, RSS, wrk.

Servers under load and the processes whose memory is measured always run as separate child processes (see
``bench/servers.py``), so neither the load generator nor the data feeder shares a GIL or an address space with what
is being measured.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent

# Every provider identifier Bifrost knows (docs: bifrost-batch-api.md), i.e. the largest realistic fleet.
PROVIDERS_23: tuple[str, ...] = (
    "openai",
    "azure",
    "anthropic",
    "bedrock",
    "cohere",
    "vertex",
    "vllm",
    "mistral",
    "ollama",
    "groq",
    "sgl",
    "parasail",
    "perplexity",
    "replicate",
    "cerebras",
    "gemini",
    "openrouter",
    "elevenlabs",
    "huggingface",
    "nebius",
    "xai",
    "runway",
    "fireworks",
)
FLAVORS: tuple[str, ...] = ("openai", "azure", "anthropic", "bedrock", "gemini", "vertex")


def flavor_of(index: int) -> str:
    """Providers cycle through the six batch-object shapes, so every shape is in every large benchmark."""
    return FLAVORS[index % len(FLAVORS)]


# --------------------------------------------------------------------------------------------------------------
# Results and tables


@dataclass(slots=True)
class Check:
    """One target of the issue: a measured figure against its threshold."""

    name: str
    value: float
    target: str
    met: bool
    detail: str = ""


@dataclass(slots=True)
class Report:
    benchmark: str
    smoke: bool
    tables: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def table(self, title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        text = format_table(title, header, rows)
        self.tables.append(text)
        print(text, flush=True)

    def check(self, name: str, value: float, target: str, met: bool, detail: str = "") -> None:
        self.checks.append(Check(name, value, target, met, detail))

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def finish(self, json_path: str | None, started: float) -> None:
        self.seconds = time.perf_counter() - started
        for c in self.checks:
            verdict = "MET " if c.met else "MISSED"
            print(f"  [{verdict}] {c.name}: {c.detail or _fmt(c.value)} (target {c.target})", flush=True)
        print(f"  ({self.benchmark}: {self.seconds:.1f} s{', smoke mode' if self.smoke else ''})", flush=True)
        if json_path:
            Path(json_path).write_text(json.dumps(asdict(self), indent=1))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        if abs(value) >= 0.1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (readable in a terminal, pasteable into docs)."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    out = [f"\n### {title}\n", line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}×" if baseline > 0 else "n/a"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, seconds, no target verdicts")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return p


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} CPUs ({cpu}){mem}, Python {sys.version.split()[0]}"


# --------------------------------------------------------------------------------------------------------------
# Child processes


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIFROST_EXPORTER_")}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class Child:
    """A child process we started; stopped by its own pid only."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str] | None = None, name: str = "") -> None:
        self.name = name or args[-1]
        self.proc = subprocess.Popen(
            list(args),
            cwd=ROOT,
            env=child_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ready_port(self, timeout: float = 120.0) -> int:
        """Servers in bench/servers.py print `READY <port>` once they listen."""
        line = _readline(self.proc.stdout, timeout)
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"{self.name} did not start: {line!r} {self.stderr_tail()}")
        return int(line.split()[1])

    def stderr_tail(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()[-2000:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def _readline(stream: IO[str] | None, timeout: float) -> str:
    import select

    if stream is None:
        return ""
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline().strip() if ready else ""


@contextmanager
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in reversed(started):
            child.stop()


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 10.0, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    """Seconds it took for predicate() to hold; raises after timeout."""
    start = time.perf_counter()
    while True:
        try:
            if predicate():
                return time.perf_counter() - start
        except OSError:
            pass
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"{what} not reached within {timeout:.0f} s")
        time.sleep(interval)


def memory_of(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of one process in bytes, from /proc: the process itself, nothing else."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


# --------------------------------------------------------------------------------------------------------------
# The exporter under test, as deployed: `python -m exporter` configured through its environment variables


def exporter_env(
    bifrost_url: str,
    providers: Sequence[str],
    port: int,
    *,
    per_batch: bool = False,
    page_size: int = 1000,
    poll_interval: float = 3600.0,
) -> dict[str, str]:
    return {
        "BIFROST_EXPORTER_BIFROST_URL": bifrost_url,
        "BIFROST_EXPORTER_PROVIDERS": ",".join(providers),
        "BIFROST_EXPORTER_LISTEN_ADDRESS": f"127.0.0.1:{port}",
        "BIFROST_EXPORTER_PER_BATCH_METRICS": "true" if per_batch else "false",
        "BIFROST_EXPORTER_PAGE_SIZE": str(page_size),
        "BIFROST_EXPORTER_MAX_PAGES": "100000",
        "BIFROST_EXPORTER_POLL_INTERVAL_SECONDS": str(poll_interval),
        # v2: a full list at most once per poll interval (the setting must not be below it)
        "BIFROST_EXPORTER_RESYNC_INTERVAL_SECONDS": str(max(600.0, poll_interval)),
        "BIFROST_EXPORTER_REQUEST_TIMEOUT_SECONDS": "120",
        "BIFROST_EXPORTER_LOG_LEVEL": "warning",
        "BIFROST_EXPORTER_LOG_FORMAT": "json",
    }


_UP = re.compile(rb"^bifrost_batch_exporter_up\{provider=\"[^\"]*\"\} (\S+)$", re.M)


def start_exporter(
    bifrost_url: str,
    providers: Sequence[str],
    *,
    per_batch: bool = False,
    timeout: float = 300.0,
    page_size: int = 1000,
    extra_env: Mapping[str, str] | None = None,
) -> tuple[Child, int, float]:
    """Start the real exporter and wait until every provider's first poll succeeded: (child, port, seconds)."""
    port = free_port()
    child = Child(
        python_module("exporter"),
        {
            **exporter_env(bifrost_url, providers, port, per_batch=per_batch, page_size=page_size),
            **(extra_env or {}),
        },
        "exporter",
    )

    def polled() -> bool:
        if not child.alive():
            raise RuntimeError(f"exporter exited: {child.stderr_tail()}")
        status, _ = http_get(f"http://127.0.0.1:{port}/readyz", timeout=30)
        if status != 200:
            return False
        _, body = http_get(f"http://127.0.0.1:{port}/metrics", timeout=30)
        ups = _UP.findall(body)
        return len(ups) == len(providers) and all(float(v) == 1.0 for v in ups)

    try:
        took = wait_until(polled, timeout, "exporter's first poll of every provider", interval=0.1)
    except BaseException:
        child.stop()
        raise
    return child, port, took


def start_feeder(providers: Sequence[str], per_provider: int, *, seed: int = 0) -> tuple[Child, str]:
    """The templated gateway of bench/servers.py, in its own process."""
    child = Child(
        python_module(
            "bench.servers",
            "feeder",
            "--providers",
            ",".join(providers),
            "--per-provider",
            str(per_provider),
            "--seed",
            str(seed),
        ),
        name="feeder",
    )
    port = child.ready_port()
    return child, f"http://127.0.0.1:{port}"


# --------------------------------------------------------------------------------------------------------------
# The realistic large account (issue 20): three providers, a few hundred batches running, the rest finished over
# the last three weeks (bench/account.py), on a clock that may run faster than the wall.

REALISTIC_PROVIDERS: tuple[str, ...] = PROVIDERS_23[:3]
REALISTIC_ACTIVE = 100  # per provider: 300 running in all


def start_account(
    providers: Sequence[str], per_provider: int, *, active: int = REALISTIC_ACTIVE, speed: float = 1.0
) -> tuple[Child, str]:
    """The account server of bench/servers.py, in its own process."""
    child = Child(
        python_module(
            "bench.servers", "account", "--providers", ",".join(providers), "--per-provider",
            str(per_provider), "--active", str(active), "--speed", str(speed),
        ),
        name="account",
    )  # fmt: skip
    port = child.ready_port()
    return child, f"http://127.0.0.1:{port}"


def compressed_env(speed: float) -> dict[str, str]:
    """The exporter's defaults with time compressed `speed` times (poll interval, resync interval and request
    rate scaled alike), against an account whose clock runs `speed` times faster: an hour of polls, full lists
    and transitions in 3600 / speed seconds."""
    return {
        "BIFROST_EXPORTER_POLL_INTERVAL_SECONDS": f"{30.0 / speed:g}",
        "BIFROST_EXPORTER_RESYNC_INTERVAL_SECONDS": f"{600.0 / speed:g}",
        "BIFROST_EXPORTER_MAX_REQUESTS_PER_SECOND": f"{10.0 * speed:g}",
        "BIFROST_EXPORTER_MAX_PAGES": "200",
    }


def gauge_values(port: int, name: str) -> dict[str, float]:
    """One per-provider gauge (or counter) from the exporter's /metrics: provider → value."""
    _, body = http_get(f"http://127.0.0.1:{port}/metrics", timeout=30)
    pattern = re.compile(rb"^" + re.escape(name.encode()) + rb'\{provider="([^"]*)"\} (\S+)$', re.M)
    return {p.decode(): float(v) for p, v in pattern.findall(body)}


def batches_listed(port: int) -> dict[str, float]:
    """Batches each provider's snapshot holds (the sum of bifrost_batches over status and group)."""
    _, body = http_get(f"http://127.0.0.1:{port}/metrics", timeout=30)
    out: dict[str, float] = {}
    for provider, value in re.findall(rb'^bifrost_batches\{provider="([^"]*)",[^}]*\} (\S+)$', body, re.M):
        out[provider.decode()] = out.get(provider.decode(), 0.0) + float(value)
    return out


# --------------------------------------------------------------------------------------------------------------
# wrk


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    mb_per_second: float


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
_SIZE = {"B": 1 / 1e6, "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0}


def _duration_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if m is None:
        raise ValueError(f"unparsable wrk duration {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(output: str) -> WrkResult:
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", output, re.M))
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    total = re.search(r"^\s+(\d+) requests in", output, re.M)
    transfer = re.search(r"^Transfer/sec:\s+([\d.]+)(\w+)", output, re.M)
    if rps is None or total is None or "50" not in pct or "99" not in pct:
        raise ValueError(f"unparsable wrk output:\n{output}")
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if sock:
        errors += sum(int(g) for g in sock.groups())
    mbps = float(transfer.group(1)) * _SIZE.get(transfer.group(2), 0.0) if transfer else 0.0
    return WrkResult(
        float(rps.group(1)),
        _duration_ms(pct["50"]),
        _duration_ms(pct["99"]),
        int(total.group(1)),
        errors,
        mbps,
    )


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    url: str,
    *,
    seconds: float,
    connections: int = 16,
    threads: int = 1,
    timeout: float = 10.0,
    headers: Mapping[str, str] | None = None,
) -> WrkResult:
    """One wrk run with its latency distribution; 1 thread leaves the second core to the server."""
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            f"{timeout:g}s",
            "--latency",
            *(arg for k, v in (headers or {}).items() for arg in ("-H", f"{k}: {v}")),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + timeout + 60,
        check=True,
    )
    return parse_wrk(out.stdout)


def load_json(path: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(path).read_text())
    return data


async def _load_worker(
    host: str, port: int, path: str, deadline: float, latencies: list[float], extra: str
) -> int:
    import asyncio

    reader, writer = await asyncio.open_connection(host, port)
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: */*\r\n{extra}\r\n".encode()
    errors = 0
    try:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if not head.startswith(b"HTTP/1.1 200"):
                errors += 1
    finally:
        writer.close()
    return errors


def run_async_load(
    url: str, *, seconds: float, connections: int = 16, headers: Mapping[str, str] | None = None
) -> WrkResult:
    """Fallback when wrk is not installed: keep-alive asyncio clients (slower than wrk; same figures reported)."""
    import asyncio
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    latencies: list[float] = []
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())

    async def run() -> int:
        deadline = time.perf_counter() + seconds
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        results = await asyncio.gather(
            *(
                _load_worker(host, port, parts.path or "/", deadline, latencies, extra)
                for _ in range(connections)
            )
        )
        return sum(results)

    t0 = time.perf_counter()
    errors = asyncio.run(run())
    elapsed = time.perf_counter() - t0
    latencies.sort()
    n = len(latencies)
    if n == 0:
        return WrkResult(0.0, 0.0, 0.0, 0, errors, 0.0)
    return WrkResult(
        n / elapsed, latencies[n // 2] * 1e3, latencies[min(n - 1, int(n * 0.99))] * 1e3, n, errors, 0.0
    )


def load(
    url: str,
    *,
    seconds: float,
    connections: int = 16,
    timeout: float = 10.0,
    headers: Mapping[str, str] | None = None,
) -> WrkResult:
    if have_wrk():
        return run_wrk(url, seconds=seconds, connections=connections, timeout=timeout, headers=headers)
    return run_async_load(url, seconds=seconds, connections=connections, headers=headers)

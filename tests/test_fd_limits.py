"""File descriptors: a crowd of idle connections, or a process short of descriptors, never stops the exporter.

The class: anything that makes the exporter run out of descriptors (more connections than RLIMIT_NOFILE, a limit
lower than the cap, descriptors held by something else). The exporter under test is a real process with a low
RLIMIT_NOFILE (soft and hard, so raising the soft limit at start cannot lift it) and a state_dir; each test holds
more idle connections than the limit and then checks what an operator needs: a fresh scraper gets /metrics, the
state file keeps being written, and the log stays a few lines long.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import structlog.testing

from exporter import statefile
from exporter.server import FD_RESERVE_BASE, FD_RESERVE_PER_PROVIDER, MAX_CONNECTIONS, fd_budget, fd_reserve
from exporter.simulator import ProviderSpec, Simulator
from tests.conftest import free_port
from tests.harness import parse_samples, value, wait_until
from tests.test_http_framing import ServerThread, exchange, statuses

NOFILE = 256
# Sets the limit, then runs the exporter as `python -m exporter` does (no preexec_fn: the test process has threads).
_LAUNCH = (
    "import resource, runpy, sys; "
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({NOFILE}, {NOFILE})); "
    "sys.argv = ['exporter']; runpy.run_module('exporter', run_name='__main__', alter_sys=True)"
)
GET_METRICS = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


@contextlib.contextmanager
def exporter_process(
    tmp_path: Path, sim: Simulator, *, held_fds: int = 0
) -> Iterator[tuple[int, Path, Path]]:
    """An exporter under RLIMIT_NOFILE=NOFILE polling `sim` every second: (port, state file, log file).

    `held_fds` descriptors are inherited and held for the whole run (something else in the process holding
    descriptors the budget did not plan for).
    """
    port = free_port()
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    log = tmp_path / "exporter.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIFROST_EXPORTER_")}
    env.update(
        {
            "BIFROST_EXPORTER_BIFROST_URL": sim.url,
            "BIFROST_EXPORTER_PROVIDERS": "openai",
            "BIFROST_EXPORTER_LISTEN_ADDRESS": f"127.0.0.1:{port}",
            "BIFROST_EXPORTER_POLL_INTERVAL_SECONDS": "1",
            "BIFROST_EXPORTER_STATE_DIR": str(state_dir),
            "BIFROST_EXPORTER_LOG_FORMAT": "json",
        }
    )
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(held_fds)]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCH], env=env, stdout=out, stderr=out, pass_fds=held, text=True
        )
    for fd in held:
        os.close(fd)
    try:
        wait_until(lambda: _status(port, b"/readyz") == 200, timeout=30)
        yield port, state_dir / "ledger-openai.journal", log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _status(port: int, path: bytes) -> int | None:
    try:
        data, _ = exchange(
            port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=5
        )
    except OSError:
        return None
    found = statuses(data)
    return found[0] if found else None


def _idle_connections(port: int, count: int) -> list[socket.socket]:
    """`count` connections that never send a byte (each is accepted by the kernel whatever the server does)."""
    out = []
    for _ in range(count):
        with contextlib.suppress(OSError):
            out.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    return out


def _log_lines(log: Path) -> list[dict[str, object]]:
    lines = []
    for line in log.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            lines.append(json.loads(line))
    return lines


def _state_advances(journal: Path) -> None:
    """The state journal grows by a complete record (or a compaction rewrites it): a poll after now saved its
    changes, so the descriptors it needs were there."""

    def records() -> int:
        return (
            sum(1 for r in statefile.iter_records(journal) if isinstance(r, dict)) if journal.exists() else 0
        )

    before = (journal.stat().st_mtime_ns if journal.exists() else 0, records())
    wait_until(lambda: (journal.stat().st_mtime_ns, records()) != before, timeout=15)


def _scrape(port: int) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(providers=[ProviderSpec("openai")], seed=5) as s:
        yield s


def test_more_idle_connections_than_the_limit(tmp_path: Path, sim: Simulator) -> None:
    """Twice NOFILE idle connections: the cap (NOFILE less the reserve) holds, the longest idle make room, and a
    fresh scraper, the state writes and the gateway pool all still get descriptors."""
    with exporter_process(tmp_path, sim) as (port, state, log):
        wait_until(state.exists, timeout=15)
        budget = next(line for line in _log_lines(log) if line.get("msg") == "file_descriptors")
        assert budget["nofile_limit"] == NOFILE
        assert budget["max_connections"] == NOFILE - (FD_RESERVE_BASE + FD_RESERVE_PER_PROVIDER)
        lines_before = len(log.read_text().splitlines())
        idle = _idle_connections(port, 2 * NOFILE)
        try:
            response = _scrape(port)
            assert response.status_code == 200
            samples = parse_samples(response.text)
            assert value(samples, "bifrost_batch_exporter_up", provider="openai") == 1
            _state_advances(state)
            # Polls keep succeeding while the crowd is held (the gateway pool gets its sockets).
            assert (
                value(parse_samples(_scrape(port).text), "bifrost_batch_exporter_up", provider="openai") == 1
            )
        finally:
            for sock in idle:
                sock.close()
        text = log.read_text()
        assert "Traceback" not in text
        assert len(text.splitlines()) - lines_before < 20, text[-3000:]


def test_descriptors_taken_by_something_else(tmp_path: Path, sim: Simulator) -> None:
    """The budget is too generous (half the limit is held by inherited descriptors): accept() meets EMFILE. The
    server backs off, lowers its cap and closes idle connections, logging the episode once rather than a
    traceback per accept; the scraper and the state writes get descriptors again."""
    with exporter_process(tmp_path, sim, held_fds=NOFILE // 2) as (port, state, log):
        wait_until(state.exists, timeout=15)
        idle = _idle_connections(port, 2 * NOFILE)
        try:
            wait_until(
                lambda: any(line.get("msg") == "accept_out_of_descriptors" for line in _log_lines(log)),
                timeout=15,
            )
            # Recovered: a fresh scraper is served (its connection makes an idle one go) ...
            wait_until(lambda: _status(port, b"/metrics") == 200, timeout=15)
            # ... and the state file is written again, with the crowd still connected.
            _state_advances(state)
            more = _idle_connections(port, NOFILE)  # a second wave meets the lowered cap, not EMFILE
            idle += more
            # The kernel completed the wave's connects before the server accepted them all: a scrape racing those
            # accepts may be the one a late accept makes room with, so the claim is that a scraper is served.
            wait_until(lambda: _status(port, b"/metrics") == 200, timeout=15)
        finally:
            for sock in idle:
                sock.close()
        lines = _log_lines(log)
        episodes = [line for line in lines if line.get("msg") == "accept_out_of_descriptors"]
        assert 1 <= len(episodes) <= 3, episodes
        lowered = int(str(episodes[0]["max_connections"]))
        assert lowered < NOFILE - (FD_RESERVE_BASE + FD_RESERVE_PER_PROVIDER)
        text = log.read_text()
        assert "Traceback" not in text
        assert "state_write_failed" not in text
        assert len(text.splitlines()) < 40, text[-3000:]


def test_idle_connections_make_room_least_recently_active_first() -> None:
    """At the cap, the connection idle the longest is closed for the newcomer; one mid-response never is."""
    with ServerThread(max_connections=4, header_timeout=30) as srv:
        idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(4)]
        wait_until(lambda: srv.connections() == 4)
        # The first one becomes the most recently active: now the second is the oldest idle.
        idle[0].sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle[0].recv(65536).startswith(b"HTTP/1.1 200")
        data, _ = exchange(srv.port, GET_METRICS)
        assert statuses(data) == [200]
        idle[1].settimeout(5)
        try:
            closed = idle[1].recv(1) == b""
        except ConnectionResetError:
            closed = True
        assert closed  # closed to make room
        for sock in (idle[2], idle[3]):
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)  # still open, nothing to read
        wait_until(lambda: srv.connections() == 3)  # idle[0], [2] and [3]; the newcomer asked for close
        assert srv.server.evicted >= 1
        for sock in idle:
            sock.close()


def test_budget_leaves_the_reserve() -> None:
    reserve = fd_reserve(23)
    assert reserve == FD_RESERVE_BASE + 23 * FD_RESERVE_PER_PROVIDER
    budget = fd_budget(reserve)
    assert budget.soft >= budget.soft_before  # raised to the hard limit where allowed, never lowered
    assert budget.connections == max(8, min(MAX_CONNECTIONS, budget.soft - reserve))


def test_accept_backoff_doubles_to_one_second_and_logs_once() -> None:
    """Go net/http's schedule: 5 ms, doubling, capped at 1 s; one line when the episode starts, one when it ends."""
    with ServerThread(max_connections=100) as srv:
        server = srv.server

        async def fail(times: int) -> list[float]:
            delays = []
            for _ in range(times):
                server._accept_failed(OSError(errno.EMFILE, "Too many open files"))
                delays.append(server._backoff)
            return delays

        with structlog.testing.capture_logs() as logs:
            delays = srv.call(fail(10))
            # Accepting resumes by itself: a scrape is answered once the backoff has run out.
            wait_until(lambda: statuses(exchange(srv.port, GET_METRICS)[0]) == [200], timeout=5)
        assert delays == [0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.0, 1.0]
        assert [entry["event"] for entry in logs] == ["accept_out_of_descriptors", "accept_resumed"]
        assert logs[1]["failed_accepts"] == 10
        assert server.max_connections == 8  # lowered on EMFILE (nothing open: the floor)

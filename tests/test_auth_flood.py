"""Basic auth under a flood of wrong credentials (issue 15, reproductions 7 and 8), over real HTTP on loopback.

- A flood of wrong passwords from one address (127.0.0.2) must not lock out a scraper on another (127.0.0.1)
  whose credentials are not cached yet (after a start or a users reload).
- A check costs one bcrypt at the user's own cost (an unknown name: the users' most common cost), so one slow
  hash never makes every login slow.

The module is also a script printing the figures in docs/security.md, and runs unchanged against an older checkout
(it uses only the Routes/HttpServer/WebSecurity calls every version has) for a before/after:
    PYTHONPATH=DIR .venv/bin/python tests/test_auth_flood.py
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import secrets
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import yaml

from exporter.render import Rendered
from exporter.server import HttpServer, Routes
from exporter.webconfig import WebSecurity

FLOOD_SOURCE = "127.0.0.2"
FLOOD_CONNECTIONS = 32


def rendered() -> Rendered:
    body = b"up 1\n"
    return Rendered(body, gzip.compress(body), body, gzip.compress(body), b"", True, 0.0)


@contextlib.contextmanager
def serving(web: WebSecurity) -> Iterator[int]:
    """The HTTP server behind `web` in an event loop thread; yields its port."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    fixed = rendered()
    server = HttpServer(Routes(lambda: fixed, lambda: True, web), "127.0.0.1", 0, ssl_context=web.ssl_context)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        yield server.port
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)


def write_web_config(path: Path, users: dict[str, tuple[str, int]]) -> Path:
    """users: name → (password, bcrypt cost)."""
    hashed = {
        name: bcrypt.hashpw(pw.encode(), bcrypt.gensalt(cost)).decode() for name, (pw, cost) in users.items()
    }
    path.write_text(yaml.safe_dump({"basic_auth_users": hashed}))
    return path


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Flood:
    """Wrong passwords (each one new, so no cache helps) from FLOOD_SOURCE on keep-alive connections."""

    def __init__(self, port: int, user: str) -> None:
        self.port = port
        self.user = user
        self.statuses: Counter[int] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.started = 0.0
        self.elapsed = 0.0

    def __enter__(self) -> Flood:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=20)
        self.elapsed = time.monotonic() - self.started

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    async def _run(self) -> None:
        await asyncio.gather(*(self._one() for _ in range(FLOOD_CONNECTIONS)))

    async def _one(self) -> None:
        while not self._stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", self.port, local_addr=(FLOOD_SOURCE, 0)
                )
            except OSError:
                await asyncio.sleep(0.01)
                continue
            try:
                while not self._stop.is_set():
                    auth = basic(self.user, secrets.token_hex(8))
                    writer.write(
                        f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n".encode()
                    )
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                    lines = head.split(b"\r\n")
                    self.statuses[int(lines[0].split(b" ")[1])] += 1
                    length = next(
                        (
                            int(v)
                            for k, _, v in (x.partition(b":") for x in lines[1:])
                            if k.lower() == b"content-length"
                        ),
                        0,
                    )
                    await reader.readexactly(length)
                    if b"Connection: close" in head:
                        break
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                pass
            finally:
                writer.close()


def scrape(port: int, user: str, password: str) -> tuple[int, float]:
    started = time.monotonic()
    status = httpx.get(f"http://127.0.0.1:{port}/metrics", auth=(user, password), timeout=30).status_code
    return status, time.monotonic() - started


def flood_scenario(tmp: Path, *, cost: int = 10, scrapes: int = 4) -> dict[str, Any]:
    """`scrapes` scrapers, each with its own user (so never cached), scrape once each during a flood."""
    users = {f"scraper{i}": (f"pw-{i}", cost) for i in range(scrapes)}
    web = WebSecurity(write_web_config(tmp / "web.yml", users))
    rss_before = rss_mib()
    with serving(web) as port, Flood(port, "scraper0") as flood:
        deadline = time.monotonic() + 10
        while flood.sent < 50 and time.monotonic() < deadline:  # the flood is on before the first scrape
            time.sleep(0.01)
        results = [scrape(port, name, pw) for name, (pw, _) in users.items()]
    return {
        "scrapes_ok": sum(1 for status, _ in results if status == 200),
        "scrapes": scrapes,
        "scrape_seconds": [round(s, 3) for _, s in results],
        "flood_requests": flood.sent,
        "flood_per_second": round(flood.sent / max(flood.elapsed, 1e-9)),
        "flood_statuses": dict(flood.statuses),
        "rss_mib_before_after": (rss_before, rss_mib()),  # this whole process: server, flood and scrapers
    }


def rss_mib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return -1


def test_a_flood_of_wrong_passwords_does_not_lock_out_the_scraper(tmp_path: Path) -> None:
    figures = flood_scenario(tmp_path)
    print(figures)
    assert figures["flood_requests"] >= 50, "the flood must really have run during the scrapes"
    assert figures["scrapes_ok"] == figures["scrapes"], figures
    # Past its budget the flood is told to slow down (429) rather than costing a bcrypt each.
    assert figures["flood_statuses"].get(429, 0) > 0
    assert set(figures["flood_statuses"]) <= {401, 429}


def test_one_bcrypt_per_check_at_the_users_own_cost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each uncached check runs bcrypt once: a user at its own cost (never another user's), an unknown name at the
    most common cost among the users, so a wrong name looks like a wrong password of most users. Counted, not
    timed: timing is what the script mode prints."""
    users = {"fast": ("a", 4), "fast2": ("c", 4), "slow": ("b", 6)}
    web = WebSecurity(write_web_config(tmp_path / "web.yml", users))
    seen: list[int] = []
    real = bcrypt.checkpw

    def recording(password: bytes, hashed: bytes) -> bool:
        seen.append(int(hashed[4:6]))
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", recording)
    work = {}
    for user in ("fast", "slow", "nobody"):
        seen.clear()
        assert web.auth.verify(user.encode(), b"wrong") is False
        work[user] = seen[:]
    assert work == {"fast": [4], "slow": [6], "nobody": [4]}
    for user, (password, cost) in users.items():
        seen.clear()
        assert web.auth.verify(user.encode(), password.encode()) is True
        assert seen == [cost]
    # The dummy hash matches nothing, not even the password it might be guessed to hold.
    assert web.auth.verify(b"nobody", b"") is False


def timing_scenario(tmp: Path, cost: int = 12, samples: int = 5) -> dict[str, float]:
    """Median seconds of a wrong password for an existing user (cost `cost`) and for an unknown user."""
    web = WebSecurity(write_web_config(tmp / "web.yml", {"alice": ("right", cost)}))
    out: dict[str, float] = {}
    with serving(web) as port:
        for label, user in (("existing_user", "alice"), ("unknown_user", "mallory")):
            times = [scrape(port, user, secrets.token_hex(6))[1] for _ in range(samples)]
            out[label] = round(statistics.median(times), 3)
    return out


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        print("flood:", flood_scenario(Path(directory)), flush=True)
        print("timing (cost 12):", timing_scenario(Path(directory)), flush=True)
    sys.exit(0)

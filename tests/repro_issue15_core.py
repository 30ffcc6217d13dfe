"""Issue 15, reproductions 1, 3 and 5, as written, runnable against any checkout (only calls every version has),
for the before/after table of the closing note:

    PYTHONPATH=CHECKOUT .venv/bin/python tests/repro_issue15_core.py

1: `--once` against a gateway whose only batch has a 401-digit `request_counts.total`;
3: the ledger after 500 polls that always stop early, 10 new active batches each, while the list holds 10;
5: `extra_fields.latency: 1e400` and the upstream latency histogram's sum.
The regression tests for the classes are tests/test_untrusted.py and tests/test_ledger.py.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from exporter.client import REASONS, BifrostClient
from exporter.ledger import Ledger
from exporter.models import Batch
from exporter.poller import Poller
from exporter.settings import Settings


class _Gateway(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    huge = "9" * 401
    _Gateway.body = (
        b'{"object":"list","data":[{"id":"b","status":"in_progress","request_counts":{"total":'
        + huge.encode()
        + b',"completed":1}}]}'
    )
    env = {
        **os.environ,
        "BIFROST_EXPORTER_BIFROST_URL": url,
        "BIFROST_EXPORTER_PROVIDERS": "openai",
        "BIFROST_EXPORTER_MAX_RETRIES": "0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "--once"], env=env, capture_output=True, text=True, timeout=60
    )
    print(
        f"1. --once, 401-digit total: rc={done.returncode}, traceback={'Traceback' in done.stderr}, "
        f"exposition lines={len(done.stdout.splitlines())}"
    )

    settings = Settings(bifrost_url=url, providers=["openai"], max_retries=0)

    async def latency_sum() -> float:
        client = BifrostClient(settings)
        _Gateway.body = b'{"object":"list","data":[],"extra_fields":{"latency":1e400}}'
        state = await Poller(settings, client).poll("openai")
        await client.aclose()
        return state.ledger.latency.sum

    print(f"5. latency 1e400: upstream_latency_seconds_sum = {asyncio.run(latency_sum())}")

    ledger = Ledger(1.8e9, (60.0,), (1.0,), REASONS)
    for poll in range(500):
        now = 1.8e9 + 30 * poll
        batches = [
            Batch.model_validate({"id": f"p{poll}-{k}", "status": "in_progress", "created_at": now})
            for k in range(10)
        ]
        ledger.observe(batches, now, complete=False)
    print(f"3. ledger ids after 500 truncated polls (the list holds 10): {ledger.view().tracked_ids}")
    server.shutdown()


if __name__ == "__main__":
    main()

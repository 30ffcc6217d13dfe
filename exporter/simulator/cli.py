"""`python -m exporter.simulator`: the fake gateway as a standalone process (demos, benchmarks, other tools)."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import threading
from collections.abc import Sequence
from types import FrameType

from .core import Simulator
from .flavors import DEFAULT_PROVIDERS

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exporter.simulator", description="Fake Bifrost gateway")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-lifecycle", action="store_true", help="static store (seeded once, never moves)")
    parser.add_argument("--virtual-key", default=None)
    parser.add_argument("--basic-auth", default=None, metavar="USER:PASS")
    parser.add_argument("--page-delay", type=float, default=0.0, metavar="S")
    parser.add_argument(
        "--cache-debug",
        action="store_true",
        help="invent semantic-cache debug data (real Bifrost never sets it on batch responses)",
    )
    parser.add_argument(
        "--no-raw-response", action="store_true", help="providers not configured to echo raw responses"
    )
    parser.add_argument(
        "--retention-seconds", type=float, default=None, metavar="S", help="drop finished batches after S"
    )
    parser.add_argument(
        "--no-troubled", action="store_true", help="without the demo's late and never-starting batches"
    )
    args = parser.parse_args(argv)
    basic: tuple[str, str] | None = None
    if args.basic_auth is not None:
        user, sep, password = str(args.basic_auth).partition(":")
        if not sep:
            parser.error("--basic-auth must be USER:PASS")
        basic = (user, password)
    providers = [dataclasses.replace(spec, page_delay=args.page_delay) for spec in DEFAULT_PROVIDERS]
    sim = Simulator(
        providers=providers,
        seed=args.seed,
        lifecycle=not args.no_lifecycle,
        virtual_key=args.virtual_key,
        basic_auth=basic,
        cache_debug=args.cache_debug,
        send_back_raw_response=not args.no_raw_response,
        retention_seconds=args.retention_seconds,
        troubled=not args.no_troubled,
    )
    if args.no_lifecycle:
        sim.populate()
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    sim.start(args.host, args.port)
    print(f"bifrost simulator listening on {sim.url}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()
    return 0

"""`python -m exporter.simulator`: the fake gateway as a standalone process (demos, benchmarks, other tools)."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from .accounting import Accounting
from .core import Simulator
from .flavors import DEFAULT_PROVIDERS, NEWEST_PROVIDERS
from .governance import demo_governance, write_key_dir

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
    parser.add_argument(
        "--governance",
        action="store_true",
        help="governance with two tenants (one virtual key each, mandatory), a third of the batches unowned",
    )
    parser.add_argument(
        "--vk-optional", action="store_true", help="with --governance: keyless requests allowed"
    )
    parser.add_argument(
        "--no-config-store", action="store_true", help="with --governance: every keyed batch request is a 403"
    )
    parser.add_argument(
        "--key-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="with --governance: write one file per tenant key into DIR (a virtual_key_dir)",
    )
    parser.add_argument(
        "--accounting", action="store_true", help="settle finished batches into the logs API (/api/logs)"
    )
    parser.add_argument(
        "--admin-token", default=None, help="an admin session token accepted on /api/* as Bearer"
    )
    parser.add_argument(
        "--newest-providers",
        action="store_true",
        help="add gigachat, openrouter and volcengine (newest source)",
    )
    args = parser.parse_args(argv)
    if args.governance and args.virtual_key is not None:
        parser.error("--virtual-key and --governance are exclusive")
    if (args.key_dir is not None or args.vk_optional or args.no_config_store) and not args.governance:
        parser.error("--key-dir, --vk-optional and --no-config-store need --governance")
    basic: tuple[str, str] | None = None
    if args.basic_auth is not None:
        user, sep, password = str(args.basic_auth).partition(":")
        if not sep:
            parser.error("--basic-auth must be USER:PASS")
        basic = (user, password)
    specs = NEWEST_PROVIDERS if args.newest_providers else DEFAULT_PROVIDERS
    providers = [dataclasses.replace(spec, page_delay=args.page_delay) for spec in specs]
    governance = None
    if args.governance:
        governance = dataclasses.replace(
            demo_governance(mandatory=not args.vk_optional), config_store=not args.no_config_store
        )
    if governance is not None and args.key_dir is not None:
        for path in write_key_dir(governance.keys, args.key_dir):
            print(f"virtual key written to {path}", flush=True)
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
        governance=governance,
        accounting=Accounting() if args.accounting else None,
        admin_token=args.admin_token,
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

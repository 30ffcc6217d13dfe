"""Command line: parse flags, load settings (exit 2 on a bad one), then run, poll once, or just check."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
import yaml

from . import __version__
from .app import Exporter
from .logs import configure
from .settings import ConfigError, Settings, load_settings
from .webconfig import WebSecurity

PROG = "bifrost-batch-exporter"
DEMO_POLL_INTERVAL = 5.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Prometheus exporter for Bifrost batch jobs.")
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="YAML settings file (env: BIFROST_EXPORTER_CONFIG)"
    )
    parser.add_argument(
        "--listen-address", metavar="ADDR", help="HOST:PORT to serve on (default 0.0.0.0:9877)"
    )
    parser.add_argument("--log-level", metavar="L", help="debug, info, warning or error")
    parser.add_argument(
        "--demo", action="store_true", help="poll a built-in Bifrost simulator; no gateway needed"
    )
    parser.add_argument(
        "--once", action="store_true", help="poll every provider once, print the metrics, exit"
    )
    parser.add_argument(
        "--check-config", action="store_true", help="validate settings, print them masked, exit"
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    flags: dict[str, Any] = {"listen_address": args.listen_address, "log_level": args.log_level}
    try:
        settings = load_settings(flags, args.config)
        web = WebSecurity(settings.web_config_file) if settings.web_config_file is not None else None
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(yaml.safe_dump(settings.masked(), sort_keys=False), end="")
        return 0
    configure(settings.log_level, settings.log_format, settings.secret_values())
    if web is not None:
        web.log_warnings()
    simulator = None
    if args.demo:
        from .simulator import Simulator

        simulator = Simulator().start()
        update: dict[str, Any] = {"bifrost_url": simulator.url}
        if "poll_interval_seconds" not in settings.model_fields_set:
            update["poll_interval_seconds"] = DEMO_POLL_INTERVAL
        settings = settings.model_copy(update=update)
        structlog.get_logger("exporter").info("demo_simulator_started", url=simulator.url)
    try:
        if args.once:
            return asyncio.run(_once(settings))
        asyncio.run(_serve(settings, web))
        return 0
    except OSError as exc:
        structlog.get_logger("exporter").error(
            "startup_failed", error=str(exc), listen=settings.listen_address
        )
        return 1
    finally:
        if simulator is not None:
            simulator.stop()


async def _once(settings: Settings) -> int:
    exporter = Exporter(settings)
    try:
        states = await exporter.poller.poll_all_once()
        rendered = exporter.refresh()
    finally:
        await exporter.client.aclose()
    sys.stdout.buffer.write(rendered.text)
    sys.stdout.flush()
    return 0 if all(s.health.up for s in states.values()) else 1


async def _serve(settings: Settings, web: WebSecurity | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _on_sighup, web)
    exporter = Exporter(settings, guard=web, ssl_context=web.ssl_context if web is not None else None)
    watcher = asyncio.create_task(web.watch(), name="web-config") if web is not None else None
    try:
        await exporter.serve_until(stop)
    finally:
        if watcher is not None:
            watcher.cancel()


def _on_sighup(web: WebSecurity | None) -> None:
    """SIGHUP re-reads the web config (TLS certificates, basic-auth users); settings need a restart."""
    if web is None:
        structlog.get_logger("exporter").info("sighup_ignored", detail="no web_config_file to reload")
    else:
        web.reload("sighup")

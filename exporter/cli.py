"""Command line: parse flags, load settings (exit 2 on a bad one), then run, poll once, or just check.

Every setting is a flag, built here from the Settings fields (a new setting is a new flag with no code here): its
help is the setting's description, its metavar the one the field declares, its default the field's. The flags are
spelt as the setting in kebab case, except where the Prometheus ecosystem has a name: the exporter-toolkit
`--web.listen-address`, `--web.config.file`, `--web.telemetry-path` (the kebab spellings stay as synonyms) and
promslog's `--log.level`, `--log.format` (the v2 spellings `--log-level`, `--log-format` are accepted for one
release, with a warning).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import re
import signal
import sys
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import structlog
import yaml
from pydantic.fields import FieldInfo

from . import allocator
from .app import Exporter
from .demo import demo_gateway
from .logs import add_secrets, configure
from .runtime import RuntimeMetrics
from .secretreload import SecretReloader
from .settings import (
    CONFIG_ENV,
    ENV_PREFIX,
    ConfigError,
    Settings,
    load_settings,
    split_list,
)
from .snapshot import ProviderState
from .statefile import StateDirError
from .version import VersionAction
from .webconfig import WebSecurity

PROG = "bifrost-batch-exporter"
DEMO_LISTEN_ADDRESS = "127.0.0.1:9877"
# Settings whose flag the Prometheus ecosystem spells its own way → that spelling.
ECOSYSTEM_FLAGS = {
    "listen_address": "--web.listen-address",
    "web_config_file": "--web.config.file",
    "telemetry_path": "--web.telemetry-path",
    "log_level": "--log.level",
    "log_format": "--log.format",
}
# The kebab-case spellings of those: synonyms, or deprecated (accepted with a warning, hidden from --help).
DEPRECATED_FLAGS = frozenset({"--log-level", "--log-format"})
LIST_SETTINGS = frozenset({"providers", "duration_buckets", "latency_buckets", "metadata_labels"})
# --help's sections, in order; every setting is in exactly one (tests/test_cli.py checks).
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "gateway",
        (
            "bifrost_url",
            "providers",
            "virtual_key_file",
            "virtual_key_dir",
            "virtual_key",
            "basic_auth_username",
            "basic_auth_password_file",
            "basic_auth_password",
            "bearer_token_file",
            "bearer_token",
            "extra_headers",
            "tls_verify",
            "ca_file",
        ),
    ),
    (
        "polling",
        (
            "poll_interval_seconds",
            "poll_mode",
            "resync_interval_seconds",
            "request_timeout_seconds",
            "page_size",
            "max_pages",
            "max_retries",
            "max_requests_per_second",
            "max_response_bytes",
            "state_dir",
        ),
    ),
    (
        "metrics",
        (
            "stale_after_seconds",
            "per_batch_metrics",
            "per_batch_limit",
            "metadata_labels",
            "duration_buckets",
            "latency_buckets",
            "risk_no_progress_fraction",
            "cost_metrics",
            "cost_horizon_seconds",
        ),
    ),
    ("web", ("listen_address", "web_config_file", "telemetry_path")),
    ("logging", ("log_level", "log_format")),
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (like a bad setting), with a suggestion, not the usage."""

    def error(self, message: str) -> NoReturn:
        hint = _flag_hint(self, message)
        self.exit(2, f"{self.prog}: {_values_hidden(message)}{hint} (see --help)\n")


class _HelpFormatter(argparse.HelpFormatter):
    """node_exporter's --help: `--flag, --synonym METAVAR` on one line, the sentence below it, wider columns."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=8, width=100)

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings:
            return super()._format_action_invocation(action)
        if isinstance(action, argparse.BooleanOptionalAction):
            return ", ".join(f"--[no-]{s.removeprefix('--')}" for s in action.option_strings[::2])
        names = ", ".join(action.option_strings)
        if action.nargs == 0:
            return names
        return f"{names} {self._metavar_formatter(action, action.dest.upper())(1)[0]}"


def default_text(name: str) -> str | None:
    """A setting's default as --help and the docs table show it, or None when it is unset by default."""
    if name == "stale_after_seconds":
        return "5 x poll_interval_seconds"
    field = Settings.model_fields[name]
    value = field.get_default(call_default_factory=True)
    if value is None or value == () or value == {}:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return ",".join(default_text_item(v) for v in value)
    return str(value)


def default_text_item(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def flag_names(name: str) -> list[str]:
    """The flag(s) of a setting as --help lists them: the ecosystem spelling first, then the kebab-case one."""
    kebab = "--" + name.replace("_", "-")
    dotted = ECOSYSTEM_FLAGS.get(name)
    if dotted is None:
        return [kebab]
    return [dotted] if kebab in DEPRECATED_FLAGS else [dotted, kebab]


def help_text(name: str, field: FieldInfo) -> str:
    """The flag's help: the setting's sentence, then its default (node_exporter shows the default the same way)."""
    text = field.description or ""
    shown = default_text(name)
    if shown is not None:
        text += f" (default: {shown})"
    return text.replace("%", "%%")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        usage="%(prog)s [<flags>]",
        description="Prometheus exporter for the batch jobs behind a Bifrost LLM gateway.",
        epilog=f"Every setting can also come from the environment ({ENV_PREFIX}<SETTING>, e.g. "
        f"{ENV_PREFIX}POLL_INTERVAL_SECONDS) or from the --config file (keys are the setting names, e.g. "
        "poll_interval_seconds); flags win over the environment, which wins over the file. Secrets are better "
        "read from files (the *_file settings, virtual_key_dir): flags show in ps.",
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
        add_help=False,
    )
    program = parser.add_argument_group("program")
    program.add_argument("-h", "--help", action="help", help="Show this help and exit.")
    program.add_argument(
        "--config", type=Path, metavar="FILE", help=f"YAML file of settings (also {CONFIG_ENV})."
    )
    program.add_argument(
        "--demo",
        action="store_true",
        help=f"Poll a built-in Bifrost simulator instead of a gateway; serve on {DEMO_LISTEN_ADDRESS} unless "
        "--web.listen-address says otherwise.",
    )
    program.add_argument(
        "--once",
        action="store_true",
        help="Poll every provider until its first full list is complete, print the metrics, exit 0 if every poll "
        "succeeded and every list completed, else 1.",
    )
    program.add_argument(
        "--check-config",
        action="store_true",
        help="Validate the settings, print them with secrets masked, and exit (0, or 2 when invalid).",
    )
    program.add_argument(
        "--version",
        action=VersionAction,
        help="Print the version and the build's revision, branch and date, and exit.",
    )
    for title, names in GROUPS:
        group = parser.add_argument_group(title)
        for name in names:
            _add_setting(group, name, Settings.model_fields[name])
    return parser


def _add_setting(group: argparse._ArgumentGroup, name: str, field: FieldInfo) -> None:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    common: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text(name, field)}
    if field.annotation is bool:
        group.add_argument(*flag_names(name), action=argparse.BooleanOptionalAction, **common)
        return
    metavar = str(extra.get("metavar", "VALUE"))
    repeatable = name in LIST_SETTINGS or name == "extra_headers"
    action = "append" if repeatable else "store"
    group.add_argument(*flag_names(name), action=action, metavar=metavar, **common)
    for deprecated in DEPRECATED_FLAGS:
        if deprecated == "--" + name.replace("_", "-"):
            group.add_argument(
                deprecated, dest=f"deprecated:{name}", default=argparse.SUPPRESS, help=argparse.SUPPRESS
            )


def _values_hidden(message: str) -> str:
    """argparse's message without the values it quotes back: a misspelt `--basic-auth-pasword=hunter2` or
    `--virtual-kye sk-bf-...` would otherwise print the secret it carries. Flags stay, so the hint still helps."""
    if message.startswith("unrecognized arguments:"):
        words = message.removeprefix("unrecognized arguments:").split()
        shown = [
            (w.split("=", 1)[0] + ("=<value>" if "=" in w else "")) if w.startswith("--") else "<value>"
            for w in words
        ]
        return "unrecognized arguments: " + " ".join(shown)
    return re.sub(
        r"ignored explicit argument .*", "ignored explicit argument (its value is not shown)", message
    )


def _flag_hint(parser: argparse.ArgumentParser, message: str) -> str:
    """` (did you mean --x?)` for the first unknown flag in argparse's message, or ""."""
    if not message.startswith("unrecognized arguments:"):
        return ""
    known = [s for action in parser._actions for s in action.option_strings]
    for word in message.removeprefix("unrecognized arguments:").split():
        flag = word.split("=", 1)[0]
        if flag.startswith("--"):
            close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
            if close:
                return f" (did you mean {close[0]}?)"
    return ""


def flag_values(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """The settings given as flags (name → value as Settings takes it), and the deprecated flags used."""
    values: dict[str, Any] = {}
    deprecated: list[str] = []
    for dest, value in vars(args).items():
        name = dest.removeprefix("deprecated:")
        if name not in Settings.model_fields:
            continue
        if dest != name:
            flag = "--" + name.replace("_", "-")
            deprecated.append(f"{flag} is deprecated and will be removed; use {ECOSYSTEM_FLAGS[name]}")
        if name in LIST_SETTINGS:
            value = _joined(value)
        values[name] = value
    return values, deprecated


def _joined(occurrences: Iterable[str]) -> Any:
    """One list from a repeated list flag (`--providers a,b --providers c` = `--providers a,b,c`); a flag given
    once is passed as written, so that an error shows it as written."""
    given = list(occurrences)
    if len(given) == 1:
        return given[0]
    joined: list[Any] = []
    for text in given:
        items = split_list(text)
        joined.extend(items if isinstance(items, list) else [items])
    return joined


def main(argv: Sequence[str] | None = None) -> int:
    allocator.tune()  # before the polls allocate: see exporter/allocator.py
    parser = _parser()
    args = parser.parse_args(argv)
    flags, deprecated = flag_values(args)
    try:
        settings = load_settings(flags, config_file=args.config)
        web = WebSecurity(settings.web_config_file) if settings.web_config_file is not None else None
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    if args.demo and "listen_address" not in settings.model_fields_set:
        # The simulator's data is nobody's business off this host: loopback unless told otherwise.
        settings = settings.model_copy(update={"listen_address": DEMO_LISTEN_ADDRESS})
    deprecated.extend(settings.deprecations())
    if args.check_config:
        for line in deprecated:
            print(f"{PROG}: warning: {line}", file=sys.stderr)
        print(yaml.safe_dump(settings.masked(), sort_keys=False), end="")
        keys = settings.virtual_keys()
        if settings.virtual_key_dir is not None:
            print(f"# virtual_key_dir holds {len(keys)} keys: {', '.join(name for name, _ in keys)}")
        return 0
    configure(settings.log_level, settings.log_format, settings.secret_values())
    log = structlog.get_logger("exporter")
    for line in deprecated:
        log.warning("deprecated_setting", detail=line)
    if web is not None:
        web.log_warnings()
    with contextlib.ExitStack() as stack:
        if args.demo:
            settings = stack.enter_context(demo_gateway(settings))
            add_secrets(settings.secret_values())
            log.info(
                "demo_simulator_started",
                url=settings.bifrost_url,
                virtual_keys=[name for name, _ in settings.virtual_keys()],
            )
        try:
            if args.once:
                return asyncio.run(_once(settings))
            asyncio.run(_serve(settings, web))
            return 0
        except StateDirError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            log.error("startup_failed", error=str(exc), listen=settings.listen_address)
            return 1


_CUT_SHORT = frozenset({"cursor_loop", "cursor_refused", "max_pages"})


async def _once(settings: Settings) -> int:
    """Polls until every provider's first full list is complete (one poll's request budget may not hold it), or a
    poll fails or makes no progress: a partial list is never printed as the whole with exit 0."""
    exporter = Exporter(settings)

    def listed(states: Mapping[str, ProviderState]) -> bool:
        return all(s.health.first_sync.complete or not s.health.supported for s in states.values())

    def cut(states: Mapping[str, ProviderState]) -> list[str]:
        # A full list that ended early for a reason the gateway does not document (max_pages, a cursor loop or
        # refusal: what BifrostBatchProviderTruncated alerts on) completes the first sync, but only part of the
        # account was printed. `cursor_ignored` is the gateway's own limit for some providers, and as listed as it gets.
        return sorted(p for p, s in states.items() if s.health.coverage in _CUT_SHORT)

    try:
        states = await exporter.poller.poll_all_once()
        while not listed(states):
            if not all(s.health.up for s in states.values()):
                break
            pages = sum(s.health.first_sync.pages for s in states.values())
            states = await exporter.poller.poll_all_once()
            if sum(s.health.first_sync.pages for s in states.values()) <= pages:
                break
        rendered = exporter.render_counted()
    finally:
        await exporter.client.aclose()
        exporter.poller.close()
    # The same exposition a scrape gets: the batch series, then the process's own.
    sys.stdout.buffer.write(rendered.text + RuntimeMetrics().text())
    sys.stdout.flush()
    if short := cut(states):
        structlog.get_logger("exporter").warning(
            "once_incomplete",
            providers=short,
            coverage={p: states[p].health.coverage for p in short},
            detail="the full list stopped early: the exposition shows part of the batches",
        )
        return 1
    return 0 if listed(states) and all(s.health.up for s in states.values()) else 1


async def _serve(settings: Settings, web: WebSecurity | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    exporter = Exporter(settings, guard=web, ssl_context=web.ssl_context if web is not None else None)
    secrets = SecretReloader(exporter)
    loop.add_signal_handler(signal.SIGHUP, _on_sighup, web, secrets)
    watchers = []
    if web is not None:
        watchers.append(asyncio.create_task(web.watch(), name="web-config"))
    if secrets.watched:
        watchers.append(asyncio.create_task(secrets.watch(), name="secret-files"))
    try:
        await exporter.serve_until(stop)
    finally:
        for watcher in watchers:
            watcher.cancel()


def _on_sighup(web: WebSecurity | None, secrets: SecretReloader) -> None:
    """SIGHUP re-reads the web config, the *_file secrets and virtual_key_dir; every other setting needs a restart.

    Both are also watched and re-read when they change; SIGHUP reads them now, changed or not.
    """
    if web is not None:
        web.reload("sighup")
    if secrets.watched:
        secrets.reload("sighup")
    elif web is None:
        structlog.get_logger("exporter").info(
            "sighup_ignored", detail="no web_config_file or secret file to reload"
        )

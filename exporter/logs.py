"""One log stream: our structlog events and every stdlib record (httpx, asyncio, …) as the same lines.

Our events go through structlog into the standard library's logging, and one handler renders every record
with structlog's ProcessorFormatter: one event per line, JSON for machines or console for people, the same keys
(`event`, `level`, `logger`, `timestamp`) whoever logged it. The redactor runs last, after exceptions are
formatted, so a secret that leaks into an exception message, a traceback or a library's own message is scrubbed
too; it replaces every configured secret value wherever it appears in any string.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

REDACTED = "[REDACTED]"
# Libraries whose debug output describes requests (headers included): never below warning, whatever log_level.
QUIET_LIBRARIES = ("httpx", "httpcore", "hpack")


class Redactor:
    def __init__(self, secrets: Iterable[str]) -> None:
        self._lock = threading.Lock()
        self._secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Redact these too (a secret rotated by SIGHUP); old values stay redacted, they may still be echoed."""
        with self._lock:
            # Longest first, so a secret containing another is replaced whole; a new list, swapped in whole.
            self._secrets = sorted({*self._secrets, *(s for s in secrets if s)}, key=len, reverse=True)

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {k: self.scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.scrub(v) for v in value)
        return value

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if not self._secrets:
            return event_dict
        for key, value in event_dict.items():
            event_dict[key] = self.scrub(value)
        return event_dict


_redactor = Redactor(())


class _OurHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler configure() installed, so a second configure() replaces it instead of adding one."""


def add_secrets(secrets: Iterable[str]) -> None:
    """Extend the redaction of every log line (ours and libraries') with these values."""
    _redactor.add(secrets)


def configure(level: str, fmt: str, secrets: Iterable[str], stream: TextIO | None = None) -> None:
    global _redactor
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    _redactor = Redactor(secrets)
    numeric = logging.getLevelName(level.upper())
    shared: list[Any] = [
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    handler = _OurHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _redact,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _OurHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))


def _redact(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The current redactor (configure() and add_secrets() replace or extend it while loggers keep running)."""
    return _redactor(logger, method, event_dict)

"""One log stream: our structlog events and every stdlib record (httpx, asyncio, …) as the same lines.

Our events go through structlog into the standard library's logging, and one handler renders every record
with structlog's ProcessorFormatter: one event per line, in the shape every Prometheus exporter logs in (Go's
promslog / go-kit: `ts=… level=info caller=file.py:123 msg=… key=value …`), as logfmt by default or as JSON with
the same keys, whoever logged it. The redactor runs last, after exceptions are formatted, so a secret that leaks
into an exception message, a traceback or a library's own message is scrubbed too; it replaces every configured
secret value wherever it appears in any string.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

REDACTED = "[REDACTED]"
LOG_LEVELS = ("debug", "info", "warn", "error")
LOG_FORMATS = ("logfmt", "json")
# The v2 spellings, accepted for one release (0.2.x) and then removed: value → the value it now stands for.
# `auto` meant JSON off a terminal, which is where an exporter runs, so it stands for json.
DEPRECATED_LOG_LEVELS = {"warning": "warn"}
DEPRECATED_LOG_FORMATS = {"console": "logfmt", "auto": "json"}
# Libraries whose debug output describes requests (headers included): never below warn, whatever log_level.
QUIET_LIBRARIES = ("httpx", "httpcore", "hpack")
_NUMERIC = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}
# Python's level names → promslog's four.
_LEVEL_NAMES = {"warning": "warn", "critical": "error", "exception": "error", "fatal": "error"}
# The keys every line starts with, in this order; the event's own keys follow, `logger` last.
_HEAD = ("ts", "level", "caller", "msg")
# Where the shared processors leave the time and the call site until the line is shaped (not an event's key).
_TS, _CALLER = "_promslog_ts", "_promslog_caller"


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


def canonical_level(level: str) -> str:
    """debug, info, warn or error for a level as given (the v2 spelling `warning` too); ValueError otherwise."""
    lowered = level.strip().lower()
    lowered = DEPRECATED_LOG_LEVELS.get(lowered, lowered)
    if lowered not in _NUMERIC:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}")
    return lowered


def canonical_format(fmt: str) -> str:
    """logfmt or json for a format as given (the v2 spellings `console` and `auto` too); ValueError otherwise."""
    lowered = fmt.strip().lower()
    lowered = DEPRECATED_LOG_FORMATS.get(lowered, lowered)
    if lowered not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    return lowered


def configure(level: str, fmt: str, secrets: Iterable[str], stream: TextIO | None = None) -> None:
    global _redactor
    stream = stream or sys.stderr
    numeric = _NUMERIC[canonical_level(level)]
    renderer: Any = (
        structlog.processors.JSONRenderer(default=str) if canonical_format(fmt) == "json" else render_logfmt
    )
    _redactor = Redactor(secrets)
    shared: list[Any] = [
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        _timestamp,
        _Caller(),
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
                _promslog_shape,
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


def _timestamp(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """RFC 3339 in UTC with milliseconds, as promslog writes it; a stdlib record keeps its own creation time."""
    record = event_dict.get("_record")
    now = record.created if isinstance(record, logging.LogRecord) else time.time()
    millis = int(now * 1000) % 1000
    event_dict[_TS] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{millis:03d}Z"
    return event_dict


class _Caller:
    """`file.py:line` of the logging call (of the record, for a stdlib one), kept apart from the event's keys."""

    def __init__(self) -> None:
        parameters = structlog.processors.CallsiteParameter
        self._adder = structlog.processors.CallsiteParameterAdder(
            [parameters.FILENAME, parameters.LINENO], additional_ignores=[__name__]
        )

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        own = {key: event_dict.pop(key) for key in ("filename", "lineno") if key in event_dict}
        event_dict = self._adder(logger, method, event_dict)
        event_dict[_CALLER] = f"{event_dict.pop('filename', '?')}:{event_dict.pop('lineno', 0)}"
        event_dict.update(own)
        return event_dict


def _promslog_shape(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    """ts, level (debug/info/warn/error), caller (file:line), msg, then the event's keys, logger last."""
    out: dict[str, Any] = {"ts": event_dict.pop(_TS, None)}
    level = str(event_dict.pop("level", method))
    out["level"] = _LEVEL_NAMES.get(level, level)
    caller = event_dict.pop(_CALLER, None)
    if caller is not None:
        out["caller"] = caller
    out["msg"] = event_dict.pop("event", "")
    name = event_dict.pop("logger", None)
    for key, value in event_dict.items():
        out[f"{key}_" if key in _HEAD or key == "logger" else key] = value
    if name is not None:
        out["logger"] = name
    return out


def render_logfmt(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> str:
    """One logfmt line, quoting and escaping as go-logfmt does so that any value stays on its line.

    Not structlog's LogfmtRenderer: it leaves carriage returns and other control characters raw, escapes a
    backslash only inside quotes (so `a\\nb` and a real newline look alike) and raises on an odd key, which would
    lose the line.
    """
    return " ".join(f"{_logfmt_key(key)}={_logfmt_value(value)}" for key, value in event_dict.items())


def _logfmt_key(key: Any) -> str:
    text = str(key)
    cleaned = "".join("_" if c <= " " or c in '="' or not c.isprintable() else c for c in text)
    return cleaned or "_"


def _logfmt_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float | str):
        text = str(value)
    elif isinstance(value, list | tuple) and all(
        isinstance(v, str | int | float) and not isinstance(v, bool) and "," not in str(v) and str(v)
        for v in value
    ):
        text = ",".join(str(v) for v in value)  # providers=openai,anthropic: as the flag takes it
    elif isinstance(value, dict | list | tuple):
        text = json.dumps(value, default=str, separators=(",", ":"), ensure_ascii=False)
    else:
        text = str(value)
    if text and not any(c <= " " or c in '="\\' or not c.isprintable() for c in text):
        return text
    if not text:
        return ""
    return '"' + "".join(_escape(c) for c in text) + '"'


def _escape(char: str) -> str:
    if char == '"':
        return '\\"'
    if char == "\\":
        return "\\\\"
    if char == "\n":
        return "\\n"
    if char == "\r":
        return "\\r"
    if char == "\t":
        return "\\t"
    if char < " " or (not char.isprintable() and char != " "):
        return f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}"
    return char


def _redact(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The current redactor (configure() and add_secrets() replace or extend it while loggers keep running)."""
    return _redactor(logger, method, event_dict)

"""The durable ledger: one JSON file per provider in `state_dir`, written atomically, read once at start.

Why a file per provider: providers poll independently, so each poll rewrites only its own (bounded) ledger, and a
damaged file costs one provider's history, not all of them. Why atomic (temp file, fsync, rename, fsync of the
directory): a kill -9 mid-write must leave the previous complete state, never half of a new one. The poller
writes before it publishes a poll's values, so a restarted process never exposes a counter lower than one
already scraped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Final

FORMAT: Final = "bifrost-batch-exporter-ledger"
VERSION: Final = 1
MAX_STATE_BYTES: Final = 256 * 1024 * 1024


class StateError(Exception):
    """A state file that cannot be used; str() is the reason, for one log line."""


def state_path(state_dir: Path, provider: str) -> Path:
    # Provider ids are validated to [A-Za-z0-9_.-] (settings), and never start with a dot: a safe file name.
    return state_dir / f"ledger-{provider}.json"


def encode(provider: str, ledger_state: dict[str, Any], written_at: float) -> bytes:
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "provider": provider,
        "written_at": written_at,
        "ledger": ledger_state,
    }
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode("utf-8")


def write(state_dir: Path, provider: str, data: bytes) -> None:
    """Replace the provider's state file atomically; raises OSError for the caller to log."""
    state_dir.mkdir(parents=True, exist_ok=True)
    final = state_path(state_dir, provider)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, final)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(state_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read(state_dir: Path, provider: str) -> dict[str, Any] | None:
    """The ledger state saved for `provider`; None when there is none; StateError when it cannot be used."""
    path = state_path(state_dir, provider)
    try:
        size = path.stat().st_size
        if size > MAX_STATE_BYTES:
            raise StateError(f"{path} is {size} bytes, more than the {MAX_STATE_BYTES} a state file may be")
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise StateError(f"{path} is not valid JSON (truncated or corrupt)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise StateError(f"{path} is not a {FORMAT} file")
    if doc.get("version") != VERSION:
        raise StateError(
            f"{path} has format version {str(doc.get('version'))[:20]!r}; this exporter reads {VERSION}"
        )
    if doc.get("provider") != provider:
        raise StateError(f"{path} belongs to another provider")
    ledger = doc.get("ledger")
    if not isinstance(ledger, dict):
        raise StateError(f"{path} has no ledger object")
    return ledger

"""The durable ledger: one JSON file per provider in `state_dir`, written atomically, read once at start.

Why a file per provider: providers poll independently, so each poll rewrites only its own (bounded) ledger, and a
damaged file costs one provider's history, not all of them. Why atomic (a fresh temporary file, fsync, rename,
fsync of the directory): a kill -9 mid-write must leave the previous complete state, never half of a new one.
The poller writes before it publishes a poll's values, so a restarted process never exposes a counter lower than
one already scraped.

What the directory itself must survive, each an operator's bad day (docs/state.md):
- a second exporter on the same directory (two replicas on one volume, a rollout overlap) would overwrite the
  first one's counters with its own: `lock` takes an exclusive `flock` for the life of the process and a second
  process refuses to start, naming the directory;
- a rollback to an older exporter must not destroy what a newer one wrote: a file of a newer format version is
  refused at start (`NewerStateError`), never overwritten;
- a planted symlink at a temporary name must not be followed: temporaries are created with `O_CREAT | O_EXCL`
  under a random name (`tempfile.mkstemp`), which refuses any existing path, symlink included;
- a failing write (ENOSPC, EACCES, EMFILE) must not leave its temporary behind to fill the volume: it is removed
  on every error path, and leftovers of a killed process are removed at start.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Final

FORMAT: Final = "bifrost-batch-exporter-ledger"
VERSION: Final = 1
MAX_STATE_BYTES: Final = 256 * 1024 * 1024
LOCK_NAME: Final = ".lock"
_TMP_SUFFIX: Final = ".tmp"


class StateError(Exception):
    """A state file that cannot be used; str() is the reason, for one log line."""


class StateDirError(Exception):
    """The state directory cannot be used by this process at all (locked by another exporter, or holding a newer
    version's data): the exporter refuses to start rather than overwrite it. str() names the directory."""


class NewerStateError(StateDirError):
    """A state file written by a newer exporter: refusing it keeps a rollback from destroying its data."""


def state_path(state_dir: Path, provider: str) -> Path:
    # Provider ids are validated to [A-Za-z0-9_.-] (settings), and never start with a dot: a safe file name.
    return state_dir / f"ledger-{provider}.json"


def _tmp_prefix(final: Path) -> str:
    return f".{final.name}."


class StateLock:
    """An exclusive lock on `state_dir` held for the life of the process (or until `release`).

    `flock` rather than a pid file: the kernel drops it when the process dies, kill -9 included, so a crashed
    exporter never leaves a stale lock behind, and it works on the network filesystems Kubernetes volumes use.
    """

    def __init__(self, state_dir: Path, handle: IO[str]) -> None:
        self.state_dir = state_dir
        self._handle: IO[str] | None = handle

    def release(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()  # closing the descriptor drops the flock

    def __del__(self) -> None:
        self.release()


def lock(state_dir: Path) -> StateLock:
    """Take `state_dir` for this process; StateDirError when another process holds it (or it cannot be made)."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        # Not being able to create the directory is a write problem the poller reports per write; a lock file that
        # is a symlink (ELOOP) is not ours to follow.
        if exc.errno == errno.ELOOP:
            raise StateDirError(
                f"state_dir {state_dir}: {LOCK_NAME} is a symbolic link; refusing to follow it"
            ) from None
        raise
    handle = os.fdopen(fd, "r+", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = handle.read(200).strip() or "unknown"
        handle.close()
        if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
            raise StateDirError(
                f"state_dir {state_dir} is in use by another exporter ({_printable(holder)}); two exporters "
                "on one state directory would overwrite each other's counters: give each its own directory"
            ) from None
        raise
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return StateLock(state_dir, handle)


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in text)[:120]


def remove_temporaries(state_dir: Path) -> int:
    """Remove temporaries a killed process left behind (ours only: `.ledger-*.json.*.tmp`); returns how many.

    Only called with the lock held, so no other exporter is writing one at the moment.
    """
    removed = 0
    try:
        entries = list(os.scandir(state_dir))
    except OSError:
        return 0
    for entry in entries:
        name = entry.name
        if name.startswith(".ledger-") and name.endswith(_TMP_SUFFIX):
            try:
                if stat.S_ISREG(entry.stat(follow_symlinks=False).st_mode) or entry.is_symlink():
                    os.unlink(entry.path)  # a symlink is removed itself, never its target
                    removed += 1
            except OSError:
                continue
    return removed


def encode(provider: str, ledger_state: dict[str, Any], written_at: float) -> bytes:
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "provider": provider,
        "written_at": written_at,
        "ledger": ledger_state,
    }
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode("utf-8")


class FileOps:
    """The system calls a state write makes, one method each, so a test can fail any one of them (ENOSPC, EACCES,
    EMFILE at every step) without touching the process-wide `os` module the server's threads also use."""

    def makedirs(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)

    def mkstemp(self, directory: Path, prefix: str) -> tuple[int, str]:
        # O_CREAT | O_EXCL (| O_NOFOLLOW) under a random name: an existing path, a planted symlink included, is
        # never opened.
        return tempfile.mkstemp(prefix=prefix, suffix=_TMP_SUFFIX, dir=directory)

    def write(self, fd: int, data: memoryview) -> int:
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def replace(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)

    def unlink(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def open_dir(self, path: Path) -> int:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


REAL_FILE_OPS: Final = FileOps()


def write(state_dir: Path, provider: str, data: bytes, ops: FileOps = REAL_FILE_OPS) -> None:
    """Replace the provider's state file atomically; raises OSError for the caller to log.

    Whatever step fails, the temporary is gone afterwards and the previous state file is untouched (or, when only
    the directory's fsync failed, the new one is complete in its place).
    """
    ops.makedirs(state_dir)
    final = state_path(state_dir, provider)
    fd, tmp_name = ops.mkstemp(state_dir, _tmp_prefix(final))
    tmp = Path(tmp_name)
    try:
        try:
            view = memoryview(data)
            while view:
                written = ops.write(fd, view)
                view = view[written:]
            ops.fsync(fd)
        finally:
            ops.close(fd)
        ops.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):  # the write's own error is the one to report
            ops.unlink(tmp)
        raise
    dir_fd = ops.open_dir(state_dir)
    try:
        ops.fsync(dir_fd)
    finally:
        ops.close(dir_fd)


def read(state_dir: Path, provider: str) -> dict[str, Any] | None:
    """The ledger state saved for `provider`; None when there is none; StateError when it cannot be used;
    NewerStateError when a newer exporter wrote it (the caller must not overwrite it)."""
    path = state_path(state_dir, provider)
    try:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            raise StateError(f"{path} is a symbolic link; a state file must be a regular file")
        size = info.st_size
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
    version = doc.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
        raise NewerStateError(
            f"state_dir {state_dir}: {path.name} was written by a newer exporter (format version {version}; "
            f"this one reads {VERSION}); refusing to start rather than overwrite it — run the newer version, "
            "or move the file away to start this provider's counters afresh"
        )
    if version != VERSION:
        raise StateError(f"{path} has format version {str(version)[:20]!r}; this exporter reads {VERSION}")
    if doc.get("provider") != provider:
        raise StateError(f"{path} belongs to another provider")
    ledger = doc.get("ledger")
    if not isinstance(ledger, dict):
        raise StateError(f"{path} has no ledger object")
    return ledger

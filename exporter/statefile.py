"""The durable ledger in `state_dir`: per provider a base written whole now and then, and a journal of what each poll
changed, appended after every poll. What a poll writes grows with what changed, not with history.

Files of provider P (docs/state.md):
- `ledger-P.base`: the whole ledger as of one moment, generation g: a JSON header (counters, histograms, bounds,
  watermark, active ids), then the settled ids as binary columns of 64-bit keys and times, then an end record;
- `ledger-P.journal`: a header naming generation g, then one record per poll since: the header fields that changed,
  the settled keys added and removed, the active ids' changes; in a journal of version 3, the rows of the counter
  tables (by status and owner group) that changed instead of the tables;
- `ledger-P.json`: format version 1's whole-JSON state file, which an upgrade reads once (and migrates), then a
  short marker of format version 2 in its place, so that a rollback to a version-1 exporter refuses the directory
  (it reads the marker as a newer version) instead of starting from zero.

Every record is framed as `length (4 bytes, little-endian) | CRC-32 of the payload (4 bytes) | payload`; a payload
is `J` + a JSON object, or `K` + n 64-bit keys then n 64-bit floats (native byte order, named in the header).

Crash safety, at any byte:
- the journal is only ever appended to: a kill -9 mid-append leaves a last record cut short (or its CRC wrong),
  and the reader stops at the last complete record, i.e. at the end of the last poll whose values were published
  (a poll's values reach /metrics only after its record is on disk). A failed append is cut off again
  (ftruncate); if even that fails, the next write is a compaction, never an append after a torn record;
- a base, the journal's first record and the version marker are written atomically: a fresh temporary file (O_EXCL
  under a random name: a planted symlink is never followed), fsync, rename over the old one, fsync of the
  directory. A compaction writes the base of generation g + 1 first, then a new journal naming g + 1: a journal
  naming another generation than the base is stale and ignored, so a crash between the two loses nothing.
- a base that cannot be read (truncated, bit rot) is one `state_unusable` line and a fresh start, as any damaged
  state file always was.

What the directory itself must survive, each an operator's bad day:
- a second exporter on the same directory would overwrite the first one's counters with its own: `lock` takes an
  exclusive `flock` for the life of the process and a second process refuses to start, naming the directory;
- a rollback to an older exporter must not destroy what a newer one wrote: a file of a newer format version is
  refused at start (`NewerStateError`), never overwritten;
- a failing write (ENOSPC, EACCES, EMFILE) must not leave its temporary behind to fill the volume: it is removed
  on every error path, and leftovers of a killed process are removed at start. Every system call goes through
  `FileOps`, so tests fail each one in turn.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import socket
import stat
import sys
import tempfile
import zlib
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Final, Protocol

from .idtable import TimedKeys
from .ledger import Ledger, count_rows, row_key
from .tracked import IdChanges

FORMAT: Final = "bifrost-batch-exporter-ledger"
# The newest formats this exporter reads and writes, per kind of file: the base and the marker are version 2; a
# journal is version 2, or version 3 when its records may carry counter rows (below): only a ledger with owner groups
# whose counter tables are wide writes it, so that a rollback to a release reading version 2 refuses only the
# directories it would misread. A file of a newer version than its kind's is refused, never overwritten.
LAYOUT_VERSION: Final = 2
ROWS_VERSION: Final = 3
# The per-status-and-group counter tables of the ledger's head, and the number of rows from which a journal record
# carries the rows that changed instead of every table that changed (one owner group each per status with
# `metadata_labels`: a thousand groups were ~92 KiB a poll for one batch counted).
COUNT_TABLES: Final = ("finished", "finished_requests", "failures")
ROWS_MIN: Final = 64
MAX_STATE_BYTES: Final = 256 * 1024 * 1024
LOCK_NAME: Final = ".lock"
_TMP_SUFFIX: Final = ".tmp"
_FRAME: Final = 8
_JSON: Final = b"J"
_KEYS: Final = b"K"
# A journal is folded into a new base once it is larger than the base and than this: a write costs at most about
# twice what changed, and a restart replays at most that much.
COMPACT_MIN_BYTES: Final = 4 * 1024 * 1024


class StateError(Exception):
    """A state file that cannot be used; str() is the reason, for one log line."""


class StateDirError(Exception):
    """The state directory cannot be used by this process at all (locked by another exporter, or holding a newer
    version's data): the exporter refuses to start rather than overwrite it. str() names the directory."""


class NewerStateError(StateDirError):
    """A state file written by a newer exporter: refusing it keeps a rollback from destroying its data."""


# A provider's files: ledger-<provider>.<suffix>. Provider ids are validated to [A-Za-z0-9_.-] (settings), and never
# start with a dot: a safe file name.
_FILE_PREFIX = "ledger-"
_FILE_SUFFIXES = ("json", "base", "journal")


def _ledger_file(state_dir: Path, provider: str, suffix: str) -> Path:
    return state_dir / f"{_FILE_PREFIX}{provider}.{suffix}"


def state_path(state_dir: Path, provider: str) -> Path:
    """Format version 1's state file, version 2's marker."""
    return _ledger_file(state_dir, provider, "json")


def base_path(state_dir: Path, provider: str) -> Path:
    return _ledger_file(state_dir, provider, "base")


def journal_path(state_dir: Path, provider: str) -> Path:
    return _ledger_file(state_dir, provider, "journal")


def _tmp_prefix(final: Path) -> str:
    return f".{final.name}."


# --- the directory ---------------------------------------------------------------------------------------------


class StateLock:
    """An exclusive lock on `state_dir` held for the life of the process (or until `release`).

    `flock` rather than a pid file: the kernel drops it when the process dies, kill -9 included, so a crashed
    exporter never leaves a stale lock behind, and it works on the network filesystems Kubernetes volumes use.
    """

    def __init__(
        self, state_dir: Path, handle: IO[str] | None, *, fd: int | None = None, read_only: bool = False
    ) -> None:
        self.state_dir = state_dir
        self._handle: IO[str] | None = handle
        self._fd = fd  # a bare descriptor (of a read-only directory) instead of the lock file's handle
        # The directory could be locked but not written (a volume remounted read-only, a lock file another user
        # owns): what it holds is still restored, and every write fails and says so (state_write_failed).
        self.read_only = read_only

    def release(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()  # closing the descriptor drops the flock
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

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
        if exc.errno not in (errno.EROFS, errno.EACCES) or not state_dir.is_dir():
            raise
        # Readable but not writable: flock works on a read-only descriptor (of the directory itself when there is
        # no lock file, which then nobody can have written either), so the state can still be read safely.
        return _lock_read_only(state_dir, _read_only_descriptor(state_dir))
    handle = os.fdopen(fd, "r+", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = handle.read(200).strip() or "unknown"
        handle.close()
        if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
            raise _in_use(state_dir, _printable(holder)) from None
        raise
    # The holder line only informs a second exporter's error message: this process owns the directory once flock
    # succeeded, so a volume that refuses these bytes (EIO, a quota) must not cost it the state it may read.
    # Written past the text wrapper's buffer, so nothing failed is left in it to fail again at close.
    with contextlib.suppress(OSError):
        os.ftruncate(handle.fileno(), 0)
        os.pwrite(handle.fileno(), f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return StateLock(state_dir, handle)


def _lock_read_only(state_dir: Path, fd: int) -> StateLock:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
            raise _in_use(state_dir, "unknown") from None
        raise
    return StateLock(state_dir, None, fd=fd, read_only=True)


def _in_use(state_dir: Path, holder: str) -> StateDirError:
    return StateDirError(
        f"state_dir {state_dir} is in use by another exporter ({holder}); two exporters on one state directory "
        "would overwrite each other's counters: give each its own directory"
    )


def _read_only_descriptor(state_dir: Path) -> int:
    try:
        return os.open(state_dir / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in text)[:120]


def providers_saved(state_dir: Path) -> set[str]:
    """The providers whose ledger files the directory holds (any format version)."""
    try:
        names = [entry.name for entry in os.scandir(state_dir)]
    except OSError:
        return set()
    found = set()
    for name in names:
        stem, _, suffix = name.rpartition(".")
        provider = stem.removeprefix(_FILE_PREFIX)
        if suffix in _FILE_SUFFIXES and provider and provider != stem:
            found.add(provider)
    return found


def remove_temporaries(state_dir: Path) -> int:
    """Remove temporaries a killed process left behind (ours only: `.ledger-*.tmp`); returns how many.

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


# --- system calls ----------------------------------------------------------------------------------------------


class FileOps:
    """The system calls a state write makes, one method each, so a test can fail any one of them (ENOSPC, EACCES,
    EMFILE at every step) without touching the process-wide `os` module the server's threads also use."""

    def makedirs(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)

    def mkstemp(self, directory: Path, prefix: str) -> tuple[int, str]:
        # O_CREAT | O_EXCL (| O_NOFOLLOW) under a random name: an existing path, a planted symlink included, is
        # never opened.
        return tempfile.mkstemp(prefix=prefix, suffix=_TMP_SUFFIX, dir=directory)

    def open_append(self, path: Path) -> int:
        # O_NOFOLLOW: a journal replaced by a symlink is not followed (ELOOP), and the next write replaces it.
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)

    def size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def write(self, fd: int, data: memoryview) -> int:
        return os.write(fd, data)

    def truncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)

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


def _write_all(fd: int, chunks: Sequence[bytes], ops: FileOps) -> None:
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            written = ops.write(fd, view)
            view = view[written:]


def write_atomic(final: Path, chunks: Sequence[bytes], ops: FileOps = REAL_FILE_OPS) -> None:
    """Replace `final` with `chunks` atomically; raises OSError for the caller to log.

    Whatever step fails, the temporary is gone afterwards and `final` is untouched (or, when only the directory's
    fsync failed, the new file is complete in its place).
    """
    directory = final.parent
    ops.makedirs(directory)
    fd, tmp_name = ops.mkstemp(directory, _tmp_prefix(final))
    tmp = Path(tmp_name)
    try:
        try:
            _write_all(fd, chunks, ops)
            ops.fsync(fd)
        finally:
            ops.close(fd)
        ops.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):  # the write's own error is the one to report
            ops.unlink(tmp)
        raise
    dir_fd = ops.open_dir(directory)
    try:
        ops.fsync(dir_fd)
    finally:
        ops.close(dir_fd)


def write(state_dir: Path, provider: str, data: bytes, ops: FileOps = REAL_FILE_OPS) -> None:
    """Replace the provider's `ledger-P.json` atomically (the version marker; tests plant old and damaged files)."""
    write_atomic(state_path(state_dir, provider), [data], ops)


# --- records ---------------------------------------------------------------------------------------------------


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "little") + zlib.crc32(payload).to_bytes(4, "little") + payload


def json_record(doc: Mapping[str, Any]) -> bytes:
    return _frame(_JSON + json.dumps(doc, separators=(",", ":"), allow_nan=False).encode("utf-8"))


def keys_record(tables: Sequence[tuple[array[int], array[float]]]) -> list[bytes]:
    """One `K` record of the tables' key columns, then their value columns, as chunks (not joined into one more
    copy). A free row (key 0) is written as it is and skipped by the reader."""
    chunks = [keys.tobytes() for keys, _ in tables] + [values.tobytes() for _, values in tables]
    crc = zlib.crc32(_KEYS)
    for chunk in chunks:
        crc = zlib.crc32(chunk, crc)
    length = 1 + sum(len(chunk) for chunk in chunks)
    return [length.to_bytes(4, "little") + crc.to_bytes(4, "little") + _KEYS, *chunks]


class _Damaged(Exception):
    """A record that is cut short or fails its CRC: the end of what can be read."""


class _Unappliable(_Damaged):
    """A journal record read whole, its checksum right, whose content cannot be applied."""


def _read_record(
    f: BinaryIO, limit: int
) -> tuple[bytes, int] | tuple[tuple[array[int], array[float]], int] | None:
    """The next record of `f` as (JSON payload bytes or key and value columns, bytes consumed); None at a clean
    end."""
    frame = f.read(_FRAME)
    if not frame:
        return None
    if len(frame) < _FRAME:
        raise _Damaged("a record cut short")
    length = int.from_bytes(frame[:4], "little")
    crc = int.from_bytes(frame[4:], "little")
    if not 1 <= length <= limit:
        raise _Damaged("a record of impossible length")
    kind = f.read(1)
    if kind == _KEYS:
        n, odd = divmod(length - 1, 16)
        if odd:
            raise _Damaged("a key record of odd length")
        keys, values = array("Q"), array("d")
        try:
            keys.fromfile(f, n)
            values.fromfile(f, n)
        except EOFError:
            raise _Damaged("a record cut short") from None
        if zlib.crc32(values, zlib.crc32(keys, zlib.crc32(_KEYS))) != crc:
            raise _Damaged("a record whose checksum does not match")
        if keys.itemsize != 8 or values.itemsize != 8:  # pragma: no cover - every platform we build for
            raise _Damaged("64-bit columns are not 8 bytes here")
        return (keys, values), _FRAME + length
    body = f.read(length - 1)
    if len(body) < length - 1 or len(kind) < 1:
        raise _Damaged("a record cut short")
    if kind != _JSON or zlib.crc32(body, zlib.crc32(kind)) != crc:
        raise _Damaged("a record whose checksum does not match")
    return body, _FRAME + length


def _json(body: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise StateError(f"{what} holds a record that is not JSON") from None
    if not isinstance(doc, dict):
        raise StateError(f"{what} holds a record that is not an object")
    return doc


# --- reading ---------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Restored:
    """A provider's state as read at start, and where its files stand for the next write."""

    state: dict[str, Any]  # the ledger's head fields and ids (`active`, or version 1's `ids`)
    settled: TimedKeys | None  # version 2's settled ids
    generation: int = 0
    journal_end: int = 0  # bytes of the journal up to its last complete record
    base_bytes: int = 0
    records: int = 0  # journal records replayed
    dropped_bytes: int = 0  # an incomplete last record (a write cut short by a crash), not replayed
    damage: str | None = None  # why the journal could not be read to its end
    torn: bool = False  # that was the last record, cut short by a stop; otherwise the journal is damaged
    migrated: bool = False  # read from a version-1 file: the next write rewrites it in version 2
    marked: bool = False  # ledger-P.json already marks version 2
    journal_version: int = (
        LAYOUT_VERSION  # of the journal replayed: 3 when its records may carry counter rows
    )
    # The counter tables the journal's row records changed, by row key, while it is replayed (`state` holds them
    # as lists again once it is read).
    tables: dict[str, dict[tuple[Any, ...], list[Any]]] = field(default_factory=dict)
    marker_problem: str | None = None  # why ledger-P.json could not be read (the base could, so it was used)
    cost: dict[str, Any] | None = (
        None  # the cost ledger as of the base (cost_metrics), None when none was saved
    )
    cost_deltas: list[dict[str, Any]] = field(
        default_factory=list
    )  # its changes since, one per journal record


class CostState(Protocol):
    """The cost ledger as the journal writes it (exporter/cost.py): whole in a base, as changes in a record. It
    rides in the ledger's own writes, so a settlement counted and the batch it belongs to land together."""

    def to_state(self) -> dict[str, Any]: ...

    def delta(self) -> dict[str, Any]: ...


def _open_regular(path: Path) -> tuple[BinaryIO, int] | None:
    """`path` opened for reading (never through a symlink) with its size; None when it does not exist."""
    try:
        # O_NONBLOCK: a FIFO at the name would otherwise block the start until a writer came (a regular file's
        # reads never block, so it changes nothing for those).
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StateError(f"{path} is a symbolic link; a state file must be a regular file") from None
        raise StateError(f"cannot read {path}: {exc.strerror or exc}") from None
    f = os.fdopen(fd, "rb")
    size = os.fstat(fd).st_size
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        f.close()
        raise StateError(f"{path} is not a regular file")
    if size > MAX_STATE_BYTES:
        f.close()
        raise StateError(f"{path} is {size} bytes, more than the {MAX_STATE_BYTES} a state file may be")
    return f, size


def _check_header(
    doc: Mapping[str, Any], path: Path, state_dir: Path, provider: str, newest: int = LAYOUT_VERSION
) -> None:
    """`newest`: the newest version of this kind of file this exporter reads (the journal's is not the base's)."""
    if doc.get("format") != FORMAT:
        raise StateError(f"{path} is not a {FORMAT} file")
    version = doc.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > newest:
        raise NewerStateError(
            f"state_dir {state_dir}: {path.name} was written by a newer exporter (format version {version}; "
            f"this one reads up to {newest}); refusing to start rather than overwrite it — run the newer "
            "version, or move the provider's ledger-* files away to start its counters afresh"
        )
    if doc.get("provider") != provider:
        raise StateError(f"{path} belongs to another provider")


def _unreadable(path: Path, exc: OSError) -> StateError:
    """A read that failed after the open (EIO: a bad sector, a failing network volume): the state is unusable, named
    by its file, as a damaged one is; never an exception that ends the start."""
    return StateError(f"cannot read {path}: {exc.strerror or exc}")


def _read_all(f: BinaryIO, path: Path) -> bytes:
    try:
        return f.read()
    except OSError as exc:
        raise _unreadable(path, exc) from None


def _read_marker(state_dir: Path, provider: str) -> dict[str, Any] | None:
    path = state_path(state_dir, provider)
    opened = _open_regular(path)
    if opened is None:
        return None
    f, _ = opened
    with f:
        raw = _read_all(f, path)
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise StateError(f"{path} is not valid JSON (truncated or corrupt)") from None
    if not isinstance(doc, dict):
        raise StateError(f"{path} is not a {FORMAT} file")
    _check_header(doc, path, state_dir, provider)
    version = doc.get("version")
    if version not in (1, LAYOUT_VERSION) or isinstance(version, bool):
        raise StateError(
            f"{path} has format version {str(version)[:20]!r}; this exporter reads 1 and {LAYOUT_VERSION}"
        )
    return doc


def read(state_dir: Path, provider: str) -> Restored | None:
    """The provider's saved state; None when there is none; StateError when it cannot be used; NewerStateError
    when a newer exporter wrote it (the caller must not overwrite it)."""
    path = base_path(state_dir, provider)
    marker_problem: str | None = None
    try:
        marker = _read_marker(state_dir, provider)
    except StateError as exc:
        # The marker carries no data in version 2 (the base has its own header, version and provider): a damaged
        # one beside a base is rewritten at the next write, not a reason to throw the base and journal away.
        marker, marker_problem = None, str(exc)
    opened = _open_regular(path)
    if opened is None:
        if marker_problem is not None:  # no base beside it: the marker's problem is the state's
            raise StateError(marker_problem)
        if marker is None:
            if _open_regular(journal_path(state_dir, provider)) is not None:
                raise StateError(f"{journal_path(state_dir, provider)} has no base to apply it to")
            return None
        if marker["version"] == LAYOUT_VERSION:
            raise StateError(f"{path} is missing (ledger-{provider}.json says the state is there)")
        ledger = marker.get("ledger")
        if not isinstance(ledger, dict):
            raise StateError(f"{state_path(state_dir, provider)} has no ledger object")
        cost = ledger.pop("cost", None)  # version 1 kept the cost ledger inside the ledger object
        return Restored(ledger, None, migrated=True, cost=cost if isinstance(cost, dict) else None)
    f, size = opened
    with f:
        try:
            restored = _read_base(f, path, state_dir, provider)
        except OSError as exc:
            raise _unreadable(path, exc) from None
    restored.base_bytes = size
    restored.marked = marker is not None and marker["version"] == LAYOUT_VERSION
    restored.marker_problem = marker_problem
    try:
        _replay_journal(state_dir, provider, restored)
    except OSError as exc:
        raise _unreadable(journal_path(state_dir, provider), exc) from None
    for name, rows in restored.tables.items():
        restored.state[name] = list(rows.values())
    restored.tables = {}
    return restored


def _read_base(f: BinaryIO, path: Path, state_dir: Path, provider: str) -> Restored:
    try:
        first = _read_record(f, MAX_STATE_BYTES)
        if first is None or not isinstance(first[0], bytes):
            raise StateError(f"{path} does not start with its header")
        header = _json(first[0], str(path))
        _check_header(header, path, state_dir, provider)
        if header.get("version") != LAYOUT_VERSION:
            raise StateError(f"{path} has format version {str(header.get('version'))[:20]!r}")
        columns: tuple[array[int], array[float]] | None = None
        while True:
            record = _read_record(f, MAX_STATE_BYTES)
            if record is None:
                raise StateError(f"{path} is truncated (no end record)")
            if not isinstance(record[0], bytes):
                if columns is not None:
                    raise StateError(f"{path} has two key records")
                columns = record[0]
                continue
            end = _json(record[0], str(path))
            if end.get("end") is not True or end.get("keys") != (len(columns[0]) if columns else 0):
                raise StateError(f"{path} has an inconsistent end record")
            break
    except _Damaged as exc:
        raise StateError(f"{path} is damaged ({exc})") from None
    generation = header.get("generation")
    head = header.get("head")
    active = header.get("active")
    if not isinstance(generation, int) or not isinstance(head, dict) or not isinstance(active, dict):
        raise StateError(f"{path} has a malformed header")
    cost = header.get("cost")
    if cost is not None and not isinstance(cost, dict):
        raise StateError(f"{path} has a malformed cost ledger")
    settled = TimedKeys()
    if columns is not None:
        keys, values = columns
        if (
            header.get("byteorder") != sys.byteorder
        ):  # pragma: no cover - a directory moved to another machine
            keys.byteswap()
            values.byteswap()
        settled = TimedKeys.adopt(keys, values)
    return Restored({**head, "active": active}, settled, generation=generation, cost=cost)


def _replay_journal(state_dir: Path, provider: str, restored: Restored) -> None:
    path = journal_path(state_dir, provider)
    opened = _open_regular(path)
    if opened is None:
        return
    f, size = opened
    offset = 0
    with f:
        try:
            first = _read_record(f, MAX_STATE_BYTES)
            if first is None or not isinstance(first[0], bytes):
                raise _Damaged("no header")
            header = _json(first[0], str(path))
            _check_header(header, path, state_dir, provider, newest=ROWS_VERSION)
            if header.get("generation") != restored.generation:
                return  # a journal of another base: a compaction was cut short, its base holds all of it
            restored.journal_version = (
                ROWS_VERSION if header.get("version") == ROWS_VERSION else LAYOUT_VERSION
            )
            offset = first[1]
            while True:
                record = _read_record(f, MAX_STATE_BYTES)
                if record is None:
                    break
                if not isinstance(record[0], bytes):
                    raise _Damaged("a key record in a journal")
                try:
                    _apply(_json(record[0], str(path)), restored)
                except StateError as exc:
                    # Whole and checksummed, yet not a record this exporter wrote (a writer's bug, a hand edit):
                    # damage at that record, not a reason to throw away the base and every good record before it.
                    raise _Unappliable(str(exc)) from None
                offset += record[1]
                restored.records += 1
        except _Damaged as exc:
            restored.dropped_bytes = size - offset
            # A stop (a crash, kill -9, a full disk) can only cut the last record short; a record that fails with
            # more written after it, or a header (written whole, by rename), is damage to what was saved.
            restored.torn = (
                offset > 0
                and not isinstance(exc, _Unappliable)
                and (f.tell() >= size or _only_zeros(f, offset))
            )
            if offset == 0:
                restored.damage = f"its header: {exc}"
                return
            restored.damage = str(exc)
    restored.journal_end = offset


def _only_zeros(f: BinaryIO, offset: int) -> bool:
    """Everything from `offset` on is zero bytes (blocks a crash allocated but never wrote)."""
    f.seek(offset)
    while chunk := f.read(1 << 16):
        if chunk.count(0) != len(chunk):
            return False
    return True


def _apply(record: Mapping[str, Any], restored: Restored) -> None:
    """One poll's changes, as `Journal.prepare` wrote them: all of a record or none of it (everything that can
    fail is checked and converted before `restored` is touched, so a record refused leaves the state of the one
    before it)."""
    try:
        head = record.get("head", {})
        state = restored.state
        active = state["active"]
        settled = restored.settled
        if settled is None or not isinstance(head, dict) or "active" in head:
            raise TypeError("head")
        rows = _rows(record.get("rows"), restored.journal_version)
        built: dict[str, dict[tuple[Any, ...], Any]] = {}  # the tables rows first land in, made up front
        for name, _, _ in rows:
            if name not in built and (name in head or name not in restored.tables):
                built[name] = {row_key(r): r for r in (head[name] if name in head else state[name])}
        unsettled = [int(key) for key in record.get("unsettled", ())]
        newly_settled = [(int(key), float(at)) for key, at in record.get("settled", ())]
        cost = record.get("cost")
        if cost is not None and not isinstance(cost, dict):
            raise TypeError("cost")
        gone = [str(batch_id) for batch_id in record.get("gone", ())]
        poll = record.get("poll")
        seen = [str(batch_id) for batch_id in record["seen"]] if "seen" in record else None
        new = [str(batch_id) for batch_id in record.get("new", ())]
        unseen = {str(i) for i in record["unseen"]} if "unseen" in record else None
        state.update(head)
        for name in COUNT_TABLES:
            if name in head:  # written whole: it replaces the table, rows included
                restored.tables.pop(name, None)
        for name, counter_key, row in rows:
            table = restored.tables.get(name)
            if table is None:
                table = restored.tables[name] = built[name]
            table[counter_key] = row
        for key in unsettled:
            settled.discard(key)
        for key, at in newly_settled:
            settled.set(key, at)
        if cost is not None:
            restored.cost_deltas.append(cost)
        for batch_id in gone:
            active.pop(batch_id, None)
        if seen is not None:
            for batch_id in seen:
                active[batch_id] = poll
        elif unseen is not None:
            for batch_id in new:
                active[batch_id] = poll
            for batch_id in active:
                if batch_id not in unseen:
                    active[batch_id] = poll
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError):
        raise StateError("a journal record is malformed") from None


def _rows(rows: Any, journal_version: int) -> list[tuple[str, tuple[Any, ...], list[Any]]]:
    """A record's counter rows, checked before any is applied: only a version-3 journal may carry them."""
    if rows is None:
        return []
    if journal_version < ROWS_VERSION or not isinstance(rows, dict):
        raise TypeError("rows")
    out: list[tuple[str, tuple[Any, ...], list[Any]]] = []
    for name, table in rows.items():
        if name not in COUNT_TABLES or not isinstance(table, list):
            raise TypeError("rows")
        for row in table:
            if not isinstance(row, list) or len(row) < 2:
                raise TypeError("rows")
            out.append((name, row_key(row), row))
    return out


# --- writing ---------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Write:
    """One save, prepared on the event loop (it reads the ledger) and run in a worker thread (it only writes)."""

    journal: Path
    append: list[bytes] = field(default_factory=list)  # one journal record
    expected: int = 0  # the journal's length before the append
    files: list[tuple[Path, list[bytes]]] = field(default_factory=list)  # atomic rewrites, in order
    heads: dict[str, str] = field(default_factory=dict)  # the head fields' encodings once written
    tables: dict[str, dict[tuple[Any, ...], Any]] = field(
        default_factory=dict
    )  # the counter tables once written
    version: int = LAYOUT_VERSION  # a compaction's new journal
    compaction: bool = False
    size: int = 0  # bytes written
    base_size: int = 0

    def run(self, ops: FileOps) -> None:
        if self.compaction:
            for path, chunks in self.files:
                write_atomic(path, chunks, ops)
            return
        fd = ops.open_append(self.journal)
        try:
            if ops.size(fd) != self.expected:
                raise OSError(errno.ESTALE, "the journal is not as this process left it")
            try:
                _write_all(fd, self.append, ops)
                ops.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):  # the write's own error is the one to report
                    ops.truncate(fd, self.expected)
                raise
        finally:
            ops.close(fd)


class Journal:
    """Writes one provider's ledger: a journal record per save, a compaction when the journal has grown past its
    base (or after anything went wrong). Lives on the poller's event loop; `_Write.run` goes to a thread."""

    def __init__(self, state_dir: Path, provider: str) -> None:
        self.state_dir = state_dir
        self.provider = provider
        self.compact_min_bytes = COMPACT_MIN_BYTES
        # A fresh state's first base must not share its generation with a journal an earlier state left behind (a
        # damaged base refused at start, its journal still on disk): a compaction cut short between its base and
        # its journal would then replay that journal onto the new base, counting its records again. Random, below
        # 2**52 so it stays exact in any JSON reader; compactions count on from it.
        self._generation = secrets.randbits(52)
        self._journal_bytes = 0
        self._base_bytes = 0
        self._compact_next = True
        self._marked = False
        self._heads: dict[str, str] = {}
        self._version = LAYOUT_VERSION  # the journal's: ROWS_VERSION lets a record carry counter rows
        self._tables: dict[str, dict[tuple[Any, ...], Any]] | None = None  # as last written; None: unknown

    def attach(self, restored: Restored) -> None:
        """Continue the files `restored` was read from: append to its journal when it ends cleanly."""
        self._generation = restored.generation
        self._journal_bytes = restored.journal_end
        self._base_bytes = restored.base_bytes
        self._marked = restored.marked
        # A journal that does not end cleanly is never appended to; a directory still holding format 1's file
        # gets its marker written (a rollback then refuses it rather than resuming from older counts).
        self._compact_next = (
            restored.migrated
            or restored.dropped_bytes > 0
            or restored.journal_end == 0
            or not restored.marked
        )
        self._heads = {}
        self._version = restored.journal_version
        # The restored tables may hold what this ledger did not take (metadata_labels changed): the first record
        # writes every table whole.
        self._tables = None

    def compact_next(self) -> None:
        self._compact_next = True

    def prepare(
        self,
        ledger: Ledger,
        now: float,
        *,
        extras: Mapping[str, Any] | None = None,
        cost: CostState | None = None,
    ) -> _Write:
        """The next write: a journal record of what changed, or a whole new base. `extras` are small fields kept
        beside the ledger's head (the early warning's calibration), rewritten when they change; `cost` the cost
        ledger (cost_metrics), whose changes ride in the same record."""
        journal = journal_path(self.state_dir, self.provider)
        head = {**ledger.head_state(), **(extras or {})}
        tables = ledger.count_tables()
        encoded = {
            key: json.dumps(value, separators=(",", ":"), allow_nan=False) for key, value in head.items()
        }
        grown = self._journal_bytes > max(self.compact_min_bytes, self._base_bytes)
        # Rows only where owner groups widen the tables (without them, failure codes alone may reach the bound):
        # a directory without metadata_labels stays readable by a release that reads version 2.
        wide = bool(ledger.metadata_keys) and sum(len(table) for table in tables.values()) >= ROWS_MIN
        # A journal of version 2 cannot take rows: a ledger whose tables grew wide starts a version-3 journal, and
        # one that is narrow again (metadata_labels removed at a restart) goes back to version 2.
        version = ROWS_VERSION if wide else LAYOUT_VERSION
        other_version = version != self._version
        changes = None if self._compact_next or grown or other_version else ledger.take_changes()
        if changes is None:
            whole = {name: count_rows(table) for name, table in tables.items()}
            return self._compaction(ledger, {**head, **whole}, encoded, tables, cost, now, version)
        diff = {key: head[key] for key, text in encoded.items() if self._heads.get(key) != text}
        rows: dict[str, list[list[Any]]] = {}
        for name, table in tables.items():
            last = self._tables.get(name) if self._tables is not None else None
            if last is not None and self._version >= ROWS_VERSION and last.keys() <= table.keys():
                changed = count_rows({key: value for key, value in table.items() if last.get(key) != value})
                if changed:
                    rows[name] = changed
            elif last != table:  # a row gone (never, as counters go) or a table not known written: whole
                diff[name] = count_rows(table)
        fields = _record(diff, changes)
        if rows:
            fields["rows"] = rows
        if cost is not None:
            fields["cost"] = cost.delta()
        record = json_record(fields)
        return _Write(
            journal, [record], expected=self._journal_bytes, heads=encoded, tables=tables, size=len(record)
        )

    def _compaction(
        self,
        ledger: Ledger,
        head: dict[str, Any],
        encoded: dict[str, str],
        tables: dict[str, dict[tuple[Any, ...], Any]],
        cost: CostState | None,
        now: float,
        version: int,
    ) -> _Write:
        ledger.discard_changes()  # everything is in this base
        generation = self._generation + 1
        common = {"format": FORMAT, "version": LAYOUT_VERSION, "provider": self.provider}
        columns = ledger.settled_columns()
        keys = sum(len(k) for k, _ in columns)
        base = [
            json_record(
                {
                    **common,
                    "written_at": now,
                    "generation": generation,
                    "byteorder": sys.byteorder,
                    "head": head,
                    "active": ledger.active_ids(),
                    **({"cost": cost.to_state()} if cost is not None else {}),
                }
            )
        ]
        if keys:
            base += keys_record(columns)
        base.append(json_record({"end": True, "keys": keys}))
        journal = journal_path(self.state_dir, self.provider)
        header = json_record({**common, "version": version, "generation": generation})
        files = [(base_path(self.state_dir, self.provider), base), (journal, [header])]
        if not self._marked:
            marker = {
                **common,
                "note": f"format {LAYOUT_VERSION}: the state is in ledger-{self.provider}.base and .journal",
            }
            files.append((state_path(self.state_dir, self.provider), [json.dumps(marker).encode()]))
        size = sum(len(chunk) for _, chunks in files for chunk in chunks)
        base_size = sum(len(chunk) for chunk in base)
        return _Write(
            journal, expected=len(header), files=files, heads=encoded, tables=tables, version=version,
            compaction=True, size=size, base_size=base_size,
        )  # fmt: skip

    def done(self, write: _Write) -> None:
        """`write` is on disk."""
        self._heads = write.heads
        self._tables = write.tables
        if write.compaction:
            self._version = write.version
            self._generation += 1
            self._base_bytes = write.base_size
            self._journal_bytes = write.expected
            self._compact_next = False
            self._marked = True
        else:
            self._journal_bytes += write.size

    def failed(self) -> None:
        """`write` failed: what it carried is only in memory now, so the next write is a whole base."""
        self._compact_next = True


def _record(head: Mapping[str, Any], changes: IdChanges) -> dict[str, Any]:
    record: dict[str, Any] = {}
    if head:
        record["head"] = head
    if changes.unsettled:
        record["unsettled"] = list(changes.unsettled)
    if changes.settled:
        record["settled"] = [[key, at] for key, at in changes.settled.items()]
    if changes.gone:
        record["gone"] = list(changes.gone)
    if changes.seen is not None:
        if changes.seen:
            record["poll"] = changes.poll
            record["seen"] = list(changes.seen)
    else:
        record["poll"] = changes.poll
        record["unseen"] = list(changes.unseen)
        if changes.new:
            record["new"] = list(changes.new)
    return record


def iter_records(path: Path) -> Iterator[dict[str, Any] | int]:
    """The records of a state file as JSON objects (a key record as its number of keys): for tests and tools."""
    opened = _open_regular(path)
    if opened is None:
        return
    f, _ = opened
    with f:
        while True:
            try:
                record = _read_record(f, MAX_STATE_BYTES)
            except _Damaged:
                return
            if record is None:
                return
            body = record[0]
            yield _json(body, str(path)) if isinstance(body, bytes) else len(body[0])

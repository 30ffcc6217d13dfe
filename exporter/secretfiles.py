"""Secrets mounted as files (Kubernetes Secrets, Docker secrets): one file per secret, or a directory of keys.

Every reader raises ValueError with the file and the reason, never the content: a file that does not read as
intended may still hold a secret, and the message ends up on stderr or in a log line.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

MAX_SECRET_FILE_BYTES = 64 * 1024
MAX_VIRTUAL_KEYS = 256
# A key's name is its file's name: what a Kubernetes Secret allows as a key, not starting with '.'.
_KEY_NAME_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,252}$")


def read_secret_file(path: Path) -> str:
    """The secret in a mounted file, one trailing newline stripped (`echo key > file` and Kubernetes both work).

    Only that newline: any other byte is part of the secret, and whether the secret can be sent is checked by the
    caller, which knows how it is sent.
    """
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {_shown(path)}: {exc.strerror or type(exc).__name__}") from None
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise ValueError(f"{_shown(path)} is larger than {MAX_SECRET_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{_shown(path)} is not UTF-8 text") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise ValueError(f"{_shown(path)} is empty")
    if any(c in text for c in "\r\n\0"):
        raise ValueError(f"{_shown(path)} holds more than one line")
    return text


def list_key_files(directory: Path) -> list[tuple[str, Path]]:
    """(name, path) of each key file in `directory`, by name: every regular file whose name does not start with '.'.

    Symbolic links are followed (a mounted Secret's entries are links into its `..data` directory); a link that
    leads nowhere is refused rather than skipped, since skipping it would silently drop a tenant. Anything else
    (a directory, a socket) is not a key and is left alone, never opened.
    """
    try:
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except OSError as exc:
        raise ValueError(f"cannot read {_shown(directory)}: {exc.strerror or type(exc).__name__}") from None
    found: list[tuple[str, Path]] = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        try:
            mode = os.stat(entry.path).st_mode
        except OSError as exc:
            raise ValueError(f"cannot read {_shown(path)}: {exc.strerror or type(exc).__name__}") from None
        if not stat.S_ISREG(mode):
            continue
        if not _KEY_NAME_RE.match(entry.name):
            raise ValueError(
                f"{_shown(path)}: a key's name (its file name) may hold only letters, digits, '.', '_' and '-'"
            )
        found.append((entry.name, path))
    return found


def read_virtual_key_dir(directory: Path) -> tuple[tuple[str, str], ...]:
    """Every (name, key) in a `virtual_key_dir`; refused when it holds none, too many, or the same key twice.

    Whether each key can be sent is checked by the caller, as for a single secret file.
    """
    files = list_key_files(directory)
    if not files:
        raise ValueError(
            f"{_shown(directory)} holds no key file (each regular file not starting with '.' is one virtual key)"
        )
    if len(files) > MAX_VIRTUAL_KEYS:
        raise ValueError(f"{_shown(directory)} holds {len(files)} key files, more than {MAX_VIRTUAL_KEYS}")
    keys: list[tuple[str, str]] = []
    first_with: dict[str, str] = {}
    for name, path in files:
        value = read_secret_file(path)
        if value in first_with:
            raise ValueError(f"{_shown(path)} holds the same key as {first_with[value]!r}")
        first_with[value] = name
        keys.append((name, value))
    return tuple(keys)


def _shown(path: Path) -> str:
    return repr(str(path)[:300])

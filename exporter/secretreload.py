"""The secret files and key directory, read again on SIGHUP and when they change on disk.

Kubernetes updates a mounted Secret by writing a new timestamped directory and swapping the `..data` link to it in
one rename; external-secrets, Vault agents and Docker secrets rewrite files. Nothing in a pod sends SIGHUP, so a
rotated key would otherwise be used only after a restart, while the revoked one fails every poll. A change is
noticed with stat() alone (no secret is read until something changed): the files the `*_file` settings name,
followed through their links, and virtual_key_dir with each of its entries.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Final, Protocol

import structlog

from .logs import add_secrets
from .settings import RELOADABLE_SECRET_SETTINGS, SECRET_FIELDS, ConfigError, Settings

# How often the watcher looks: the kubelet itself takes up to a minute to update a Secret's files.
WATCH_SECONDS: Final = 1.0

Fingerprint = tuple[tuple[str, int, int, int, int, int], ...]


class CredentialHolder(Protocol):
    """What a reload updates: the settings in use and the client that sends them (the Exporter)."""

    settings: Settings

    def update_credentials(self, settings: Settings) -> None: ...


def _stat(path: str) -> tuple[str, int, int, int, int, int]:
    """A new file (device, inode: a `..data` swap) or new content (size, mtime, ctime); an error is a state too."""
    try:
        st = os.stat(path)  # follows links: a Secret's entries are links into ..data
    except OSError as exc:
        return (path, -1, -(exc.errno or 1), -1, -1, -1)
    return (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def fingerprint(settings: Settings) -> Fingerprint:
    """What changes whenever a secret file or the key directory does: stats only, never a read."""
    out = []
    for name in RELOADABLE_SECRET_SETTINGS:
        path: Path | None = getattr(settings, name)
        if path is None:
            continue
        out.append(_stat(str(path)))
        if name == "virtual_key_dir":
            try:
                entries = sorted(e.path for e in os.scandir(path) if not e.name.startswith("."))
            except OSError:
                continue  # the directory's own stat above says so
            out.extend(_stat(entry) for entry in entries)
    return tuple(out)


def _credentials(settings: Settings) -> tuple[tuple[tuple[str, str], ...], tuple[str | None, ...]]:
    """What a reload may change: the keys by name, and each secret setting's value (whole: the log redactor's
    list leaves out values too short to redact, and a short token rotated would pass for unchanged)."""
    keys = tuple((name, key.get_secret_value()) for name, key in settings.virtual_keys())
    values = tuple(
        None if (secret := getattr(settings, name)) is None else secret.get_secret_value()
        for name in SECRET_FIELDS
    )
    return keys, values


class SecretReloader:
    """Reads the secret files again (SIGHUP, or a change seen by `watch`) and hands the new credentials over.

    The rules are SIGHUP's: the new credentials are sent from the next request on; a file that cannot be used keeps
    every credential in use and logs one line naming the setting and the file, never the value. The fingerprint is
    taken before reading, so a broken file is reported once, and fixing it (any later change) is noticed.
    """

    def __init__(self, holder: CredentialHolder) -> None:
        self._holder = holder
        self._log = structlog.get_logger("exporter")
        # No fingerprint yet: the first look reads the files once. They were read at start before this existed
        # (settings, then the state restore), and a Secret rotated in between would otherwise pass for known.
        self._fingerprint: Fingerprint | None = None
        self.reloads = 0
        self.failed_reloads = 0

    @property
    def watched(self) -> list[str]:
        """The settings that name a secret file or directory (empty: nothing to reload)."""
        settings = self._holder.settings
        return [name for name in RELOADABLE_SECRET_SETTINGS if getattr(settings, name) is not None]

    def reload(self, trigger: str) -> bool:
        """Read every secret file again now; True when the new credentials are in use."""
        settings = self._holder.settings
        self._fingerprint = fingerprint(settings)
        try:
            fresh = settings.reread_secret_files()
        except ConfigError as exc:
            self.failed_reloads += 1
            self._log.error("secret_files_reload_failed", trigger=trigger, error=str(exc), kept="previous")
            return False
        if trigger == "file_changed" and _credentials(fresh) == _credentials(settings):
            return False  # touched, not changed (or the first look after the start): nothing to say
        add_secrets(fresh.secret_values())
        self._holder.update_credentials(fresh)
        self.reloads += 1
        self._log.info(
            "secret_files_reloaded",
            trigger=trigger,
            settings=self.watched,
            virtual_keys=len(fresh.virtual_keys()),
        )
        return True

    def maybe_reload(self) -> bool:
        """Reload when a file or the key directory changed since the last look; True when reloaded."""
        if fingerprint(self._holder.settings) == self._fingerprint:
            return False
        return self.reload("file_changed")

    async def watch(self, interval: float = WATCH_SECONDS) -> None:
        """Look for changes every `interval` seconds, for as long as the exporter runs (cancelled at stop)."""
        while True:
            await asyncio.sleep(interval)
            self.maybe_reload()

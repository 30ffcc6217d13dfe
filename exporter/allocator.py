"""glibc's malloc, told to give memory back: what the exporter holds is what its resident set shows.

A poll allocates and frees a lot (every list page parsed into objects, folded, dropped), and glibc's defaults keep
freed memory for reuse: one heap per thread that ever allocated (the state writes run in worker threads), a
top-of-heap slack of 128 KiB kept on every free, and a threshold for mmap'd blocks that rises to the largest block
ever freed, so later large blocks come from the heap and fragment it. Measured on the realistic 100,000-batch
account (bench/memory.py), these settings take 5 MiB off an RSS of 70 MiB, peak included.

The thresholds are 512 KiB, not lower: every list page passes through blocks above 64 KiB (asyncio reads up to
256 KiB at a time; a page of 100 batches is ~75 KB), and at a 64 KiB threshold each of them was an mmap, its page
faults and a munmap: 8 % more CPU per poll cycle (bench.concurrency runs with these settings, as the daemon does).

The MALLOC_ARENA_MAX_, MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ environment variables still win: a
setting named there is left alone. Not glibc (musl, macOS): nothing to do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Final

# mallopt(3) parameters.
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
_M_ARENA_MAX: Final = -8
_SETTINGS: Final = (
    (_M_ARENA_MAX, "MALLOC_ARENA_MAX", 1),
    (_M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_", 512 * 1024),
    (_M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_", 512 * 1024),
)


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018 - glibc has it, musl does not
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def tune() -> list[str]:
    """Apply the settings (once, at start); returns the names of those applied."""
    libc = _libc()
    if libc is None:
        return []
    applied = []
    for param, env, value in _SETTINGS:
        if env not in os.environ and libc.mallopt(param, value) == 1:
            applied.append(env.rstrip("_").lower())
    return applied

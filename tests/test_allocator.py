"""exporter/allocator.py: the malloc settings apply at start, and the environment's own settings win."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.common import child_env

_GLIBC = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION") is not None


def _tune(env: dict[str, str]) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", "from exporter import allocator; print(','.join(allocator.tune()))"],
        env={**child_env(), **env}, capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()  # fmt: skip
    return out.split(",") if out else []


@pytest.mark.skipif(not _GLIBC, reason="mallopt is glibc's")
def test_the_settings_apply_and_the_environment_wins() -> None:
    assert _tune({}) == ["malloc_arena_max", "malloc_mmap_threshold", "malloc_trim_threshold"]
    assert _tune({"MALLOC_ARENA_MAX": "4"}) == ["malloc_mmap_threshold", "malloc_trim_threshold"]

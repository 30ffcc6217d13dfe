"""Shared test plumbing: free ports and the CI rule that a missing tool fails rather than skips."""

from __future__ import annotations

import os
import shutil
import socket

import pytest


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_tool(name: str) -> str:
    """Path of an external tool; skip locally when absent, but fail under CI=true so CI cannot go green by skipping."""
    path = shutil.which(name)
    if path is None:
        message = f"required tool {name!r} is not installed"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message + " (CI=true: missing tools fail the run)")
        pytest.skip(message)
    return path

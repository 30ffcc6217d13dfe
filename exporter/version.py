"""Build facts of this copy of the exporter: what `--version` prints and `bifrost_batch_exporter_build_info` carries.

Mirrors Prometheus' `version` package (prometheus/common): the version is source (`exporter.__version__`), while
revision, branch and build date are facts of the build that made this copy. A release build (the image, the wheel
the release workflow publishes) bakes them into `exporter/_build.py` with::

    python3 -m exporter.version --write-build-file --revision SHA --branch NAME --build-date 2026-12-06T10:00:00Z

A copy run from a git checkout (editable install, `make demo`) asks git once; anything else says "unknown", never a
guess. Python's version takes the place of Go's `goversion`.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import platform
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from . import __version__

UNKNOWN = "unknown"
BUILD_FILE = Path(__file__).with_name("_build.py")
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class BuildInfo:
    version: str
    revision: str
    branch: str
    build_date: str
    python_version: str

    def labels(self) -> dict[str, str]:
        """The label set of `bifrost_batch_exporter_build_info` (Prometheus' names; python_version for goversion)."""
        return {
            "version": self.version,
            "revision": self.revision,
            "branch": self.branch,
            "build_date": self.build_date,
            "python_version": self.python_version,
        }

    def print(self, program: str) -> str:
        """The `--version` text, laid out like `version.Print` of every Prometheus binary."""
        return (
            f"{program}, version {self.version} (branch: {self.branch}, revision: {self.revision})\n"
            f"  build date:       {self.build_date}\n"
            f"  python version:   {self.python_version}\n"
            f"  platform:         {sys.platform}/{platform.machine() or UNKNOWN}"
        )


def _baked() -> dict[str, str] | None:
    """The facts a build wrote into exporter/_build.py, or None when this copy was not built that way."""
    try:
        module = importlib.import_module(f"{__package__}._build")
    except ImportError:
        return None
    return {
        key: str(getattr(module, key.upper(), UNKNOWN) or UNKNOWN)
        for key in ("revision", "branch", "build_date")
    }


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", "-C", str(_PACKAGE_ROOT), *args], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    out = proc.stdout.strip()
    return out if proc.returncode == 0 and out else None


def _from_checkout() -> dict[str, str] | None:
    """Revision and branch of the git checkout the package is imported from (Prometheus appends -modified too)."""
    if not (_PACKAGE_ROOT / ".git").exists():  # a directory, or a file in a worktree
        return None
    revision = _git("rev-parse", "HEAD")
    if revision is None:
        return None
    if _git("status", "--porcelain", "--untracked-files=no"):
        revision += "-modified"
    return {
        "revision": revision,
        "branch": _git("rev-parse", "--abbrev-ref", "HEAD") or UNKNOWN,
        "build_date": UNKNOWN,
    }


@functools.cache
def build_info() -> BuildInfo:
    """This copy's build facts; computed once per process (the git fallback runs at most once)."""
    facts = _baked() or _from_checkout() or {}
    return BuildInfo(
        version=__version__,
        revision=facts.get("revision", UNKNOWN),
        branch=facts.get("branch", UNKNOWN),
        build_date=facts.get("build_date", UNKNOWN),
        python_version=platform.python_version(),
    )


def write_build_file(revision: str, branch: str, build_date: str, path: Path = BUILD_FILE) -> Path:
    """Bake the build facts into the package before it is built into a wheel or an image."""
    lines = [
        '"""Written by `python3 -m exporter.version --write-build-file` at build time; not in git."""',
        "",
        f"REVISION = {revision or UNKNOWN!r}",
        f"BRANCH = {branch or UNKNOWN!r}",
        f"BUILD_DATE = {build_date or UNKNOWN!r}",
        "",
    ]
    path.write_text("\n".join(lines))
    return path


class VersionAction(argparse.Action):
    """`--version`: print the build facts and exit (argparse's own action would re-wrap the lines)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(build_info().print(parser.prog))
        parser.exit(0)


def main(argv: list[str] | None = None) -> int:
    """Write exporter/_build.py; what is not given comes from git (when in a checkout) and the clock."""
    parser = argparse.ArgumentParser(prog="python3 -m exporter.version", description=main.__doc__)
    parser.add_argument("--write-build-file", action="store_true", required=True)
    parser.add_argument("--revision", default="", help="commit SHA (default: git rev-parse HEAD)")
    parser.add_argument("--branch", default="", help="branch (default: git rev-parse --abbrev-ref HEAD)")
    parser.add_argument("--build-date", default="", help="RFC 3339 UTC time (default: now)")
    args = parser.parse_args(argv)
    checkout = _from_checkout() or {}
    path = write_build_file(
        revision=args.revision or checkout.get("revision", UNKNOWN),
        branch=args.branch or checkout.get("branch", UNKNOWN),
        build_date=args.build_date or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    print(path.read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One version, one place; the build facts of `--version` and `bifrost_batch_exporter_build_info`.

The version is written only in exporter/__init__.py; pyproject.toml, the installed metadata, the chart and the
changelog must agree with it. Revision, branch and build date come from exporter/_build.py when a build wrote it,
else from git in a checkout, else "unknown": each path is run for real (a copy of the package in a temp dir, a
fresh interpreter, a real git repository).
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

import exporter
from exporter.simulator import ProviderSpec, Simulator
from exporter.version import build_info
from tests.conftest import require_tool
from tests.harness import ExporterThread, make_settings, value

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "bifrost-batch-exporter" / "Chart.yaml"
SEMVER = re.compile(r"^\d+\.\d+\.\d+$")
# Run in a fresh interpreter whose first import path is the copy (-I keeps the editable install's .pth out).
SHOW = (
    "import sys; sys.path.insert(0, '.'); import json, exporter.version as v; "
    "assert v.__file__.startswith(sys.argv[1]), v.__file__; "
    "b = v.build_info(); print(json.dumps(b.labels())); print(b.print('bifrost-batch-exporter'))"
)


def test_the_version_is_written_once() -> None:
    assert SEMVER.match(exporter.__version__)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "exporter.__version__"}
    assert importlib.metadata.version("bifrost-batch-exporter") == exporter.__version__, (
        "reinstall: make clean test"
    )
    chart = yaml.safe_load(CHART.read_text())
    assert chart["version"] == chart["appVersion"] == exporter.__version__


def test_the_changelog_dates_the_current_release() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## \[([^\]]+)\](.*)$", text, re.MULTILINE)
    assert headings[0][0] == "Unreleased", "keep an [Unreleased] section on top for work in flight"
    released = {name: rest for name, rest in headings[1:]}
    assert re.fullmatch(r" - \d{4}-\d{2}-\d{2}", released[exporter.__version__]), released
    # Keep a Changelog: each version heading links to its tag (or compare view) at the bottom.
    for name, _ in headings:
        assert re.search(rf"^\[{re.escape(name)}\]: https://", text, re.MULTILINE), name


def _package_copy(tmp_path: Path) -> Path:
    """The exporter package alone in a temp dir: no .git above it, no installed metadata in its way."""
    shutil.copytree(
        ROOT / "exporter", tmp_path / "exporter", ignore=shutil.ignore_patterns("__pycache__", "_build.py")
    )
    return tmp_path


def _show(cwd: Path) -> tuple[dict[str, str], str]:
    proc = subprocess.run(
        [sys.executable, "-I", "-c", SHOW, str(cwd)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    first, _, printed = proc.stdout.partition("\n")
    return dict(yaml.safe_load(first)), printed


def test_a_copy_without_build_facts_says_unknown(tmp_path: Path) -> None:
    labels, printed = _show(_package_copy(tmp_path))
    assert labels["version"] == exporter.__version__
    assert labels["revision"] == labels["branch"] == labels["build_date"] == "unknown"
    assert (
        labels["python_version"]
        == f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    )
    assert printed.splitlines()[0] == (
        f"bifrost-batch-exporter, version {exporter.__version__} (branch: unknown, revision: unknown)"
    )


def test_a_build_bakes_its_facts_into_the_package(tmp_path: Path) -> None:
    root = _package_copy(tmp_path)
    subprocess.run(
        [sys.executable, "-m", "exporter.version", "--write-build-file", "--revision", "0123abc" * 5 + "01234",
         "--branch", "HEAD", "--build-date", "2026-12-06T10:11:12Z"],
        cwd=root, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    assert (root / "exporter" / "_build.py").is_file()
    labels, printed = _show(root)
    assert labels == {
        "version": exporter.__version__,
        "revision": "0123abc" * 5 + "01234",
        "branch": "HEAD",
        "build_date": "2026-12-06T10:11:12Z",
        "python_version": labels["python_version"],
    }
    lines = printed.splitlines()
    assert (
        lines[0]
        == f"bifrost-batch-exporter, version {exporter.__version__} (branch: HEAD, revision: {'0123abc' * 5}01234)"
    )
    assert lines[1].split() == ["build", "date:", "2026-12-06T10:11:12Z"]
    assert lines[2].split() == ["python", "version:", labels["python_version"]]
    assert lines[3].startswith("  platform:") and "/" in lines[3]


def test_a_checkout_asks_git(tmp_path: Path) -> None:
    git = require_tool("git")
    root = _package_copy(tmp_path)

    def run_git(*args: str) -> str:
        env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
               "GIT_COMMITTER_EMAIL": "t@example.org", "PATH": "/usr/bin:/bin"}  # fmt: skip
        return subprocess.run(
            [git, "-C", str(root), *args], check=True, capture_output=True, text=True, env=env, timeout=60
        ).stdout.strip()

    run_git("init", "-q", "-b", "feature-x")
    run_git("add", "exporter")
    run_git("commit", "-q", "-m", "x")
    head = run_git("rev-parse", "HEAD")
    labels, _ = _show(root)
    assert (labels["revision"], labels["branch"], labels["build_date"]) == (head, "feature-x", "unknown")
    # Like Prometheus' version package, a tree with uncommitted changes says so.
    (root / "exporter" / "__init__.py").write_text(
        (root / "exporter" / "__init__.py").read_text() + "\n# edit\n"
    )
    labels, _ = _show(root)
    assert labels["revision"] == head + "-modified"


def test_build_info_is_served_with_every_fact() -> None:
    with (
        Simulator(providers=[ProviderSpec("openai")], lifecycle=False) as sim,
        ExporterThread(make_settings(sim.url, ["openai"])) as exp,
    ):
        exp.poll()
        facts = build_info().labels()
        assert set(facts) == {"version", "revision", "branch", "build_date", "python_version"}
        assert value(exp.samples(), "bifrost_batch_exporter_build_info", **facts) == 1.0

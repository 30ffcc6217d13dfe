"""The container image: deploy/image-test.sh builds the real Dockerfile with buildah and runs it with --demo.

Slow (a cold run bootstraps a Debian root; later runs reuse the cached tarball). Locally it skips when the tools or
root are missing; under CI=true it must run (require_tool fails instead of skipping). The documented build commands
are checked without a build (fast tier).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import exporter
from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "deploy" / "image-test.sh"
DOCKERFILE = ROOT / "Dockerfile"


def documented_build_commands() -> dict[str, str]:
    """The `docker build` command of the Dockerfile's header and of the README, each joined onto one line."""
    header = [
        line.removeprefix("#").strip() for line in DOCKERFILE.read_text().splitlines() if line.startswith("#")
    ]
    readme = [line.strip() for line in (ROOT / "README.md").read_text().splitlines()]
    commands = {}
    for where, lines in (("Dockerfile header", header), ("README", readme)):
        (start,) = [i for i, line in enumerate(lines) if line.startswith("docker build ")]
        end = start
        while lines[end].endswith("\\"):
            end += 1
        commands[where] = " ".join(line.removesuffix("\\").strip() for line in lines[start : end + 1])
    return commands


def test_documented_build_commands_pass_the_build_facts() -> None:
    """The README's build gave an image labelled org.opencontainers.image.version=unknown: it passed no VERSION (nor
    BRANCH). Each documented command passes every build arg that is a fact of the build (default "unknown"), and the
    VERSION it passes, run from the checkout as documented, is the package's."""
    facts = re.findall(r"^ARG (\w+)=unknown$", DOCKERFILE.read_text(), re.MULTILINE)
    assert {"VERSION", "REVISION", "BRANCH", "CREATED"} <= set(facts)
    for where, command in documented_build_commands().items():
        missing = [name for name in facts if f"--build-arg {name}=" not in command]
        assert not missing, f"{where}: {command} passes no {missing}"
        (version,) = re.findall(r"--build-arg VERSION=(\"\$\(.*?\)\")(?= --build-arg| \.$)", command)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        shown = subprocess.run(
            ["bash", "-c", f"printf %s {version}"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown.stdout == exporter.__version__, (
            f"{where}: {version} gives {shown.stdout!r} {shown.stderr}"
        )


def require_root() -> None:
    if os.geteuid() == 0:
        return
    message = "the image test needs root (debootstrap, rootful buildah/podman storage)"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(message + " (CI=true)")
    pytest.skip(message)


@pytest.mark.image
@pytest.mark.timeout(1200)
def test_image_builds_and_serves_metrics() -> None:
    for tool in ("debootstrap", "buildah", "podman", "runc"):
        require_tool(tool)
    require_root()
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=1150)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert re.search(
        r'^bifrost_batch_exporter_up\{provider="[a-z]+"\} [01]\.0$', proc.stdout, re.MULTILINE
    ), output
    assert "/healthz 200, /readyz 200" in proc.stdout
    # --version inside the image: the package's version and the build facts baked in from the build args.
    assert re.search(
        rf"bifrost-batch-exporter, version {re.escape(exporter.__version__)} "
        r"\(branch: \S+, revision: ([0-9a-f]{40}|unknown)\)\n +build date: +\S+Z\n",
        output,
    ), output
    assert "user=65532:65532" in output
    # OCI labels from the build args: the package's version and the commit the image was built from.
    assert re.search(
        rf"image labels: version={re.escape(exporter.__version__)} revision=([0-9a-f]{{40}}|unknown) created=\S+Z ",
        output,
    ), output
    assert "OK in" in output

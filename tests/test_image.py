"""The container image: deploy/image-test.sh builds the real Dockerfile with buildah and runs it with --demo.

Slow (a cold run bootstraps a Debian root; later runs reuse the cached tarball). Locally it skips when the tools or
root are missing; under CI=true it must run (require_tool fails instead of skipping).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

import exporter
from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "deploy" / "image-test.sh"

pytestmark = pytest.mark.image


def require_root() -> None:
    if os.geteuid() == 0:
        return
    message = "the image test needs root (debootstrap, rootful buildah/podman storage)"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(message + " (CI=true)")
    pytest.skip(message)


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

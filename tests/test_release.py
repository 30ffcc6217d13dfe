"""The release's files, built by tools/build-release exactly as the tag's workflow builds them, then used.

In the e2e tier (it builds a wheel and an sdist in an isolated build environment and installs the wheel into a fresh
venv). On a copy of the checkout, so the build facts it bakes in never reach the working tree other tests import.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

import exporter
from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parents[1]
LOCAL_HELM = ROOT / ".tools" / "bin" / "helm"
VERSION = exporter.__version__
FACTS = {"REVISION": "f" * 40, "BRANCH": "HEAD", "CREATED": "2026-12-06T12:00:00Z"}
WHEEL = f"bifrost_batch_exporter-{VERSION}-py3-none-any.whl"
SDIST = f"bifrost_batch_exporter-{VERSION}.tar.gz"
CHART = f"bifrost-batch-exporter-{VERSION}.tgz"


def helm() -> str:
    if not LOCAL_HELM.exists():
        subprocess.run(
            ["bash", str(ROOT / "tools" / "get-helm"), str(LOCAL_HELM.parent)], check=True, timeout=600
        )
    return str(LOCAL_HELM)


def tracked_copy(dest: Path) -> Path:
    """The files git tracks or would (what a tag's checkout has), or the tree minus local state without git."""
    git = shutil.which("git")
    listed = (
        subprocess.run(
            [git, "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if git
        else None
    )
    if listed is not None and listed.returncode == 0 and listed.stdout:
        for name in listed.stdout.decode().split("\0"):
            source = ROOT / name
            if name and (source.is_file() or source.is_symlink()):
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, dest / name, follow_symlinks=False)
        return dest
    ignore = shutil.ignore_patterns(
        ".venv", ".tools", ".git", "__pycache__", "*_cache", "dist", "build", "*.egg-info"
    )
    shutil.copytree(ROOT, dest, ignore=ignore, dirs_exist_ok=True)
    return dest


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("release")
    checkout = tracked_copy(work / "checkout")
    out = work / "dist"
    proc = subprocess.run(
        ["bash", str(checkout / "tools" / "build-release"), str(out)],
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(work), "HELM": helm(),
             "PYTHON": sys.executable, **FACTS},
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (checkout / "exporter" / "_build.py").exists(), (
        "build-release must not leave its build file behind"
    )
    return out


def test_checksums_cover_exactly_the_release_files(release: Path) -> None:
    sums = {}
    for line in (release / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        sums[name] = digest
    assert set(sums) == {WHEEL, SDIST, CHART}
    for name, digest in sums.items():
        assert hashlib.sha256((release / name).read_bytes()).hexdigest() == digest, name
    check = subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"], cwd=release, capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_wheel_and_sdist_carry_the_version_and_the_build_facts(release: Path) -> None:
    baked = (
        f"REVISION = {FACTS['REVISION']!r}\nBRANCH = {FACTS['BRANCH']!r}\nBUILD_DATE = {FACTS['CREATED']!r}\n"
    )
    with zipfile.ZipFile(release / WHEEL) as wheel:
        names = set(wheel.namelist())
        assert baked in wheel.read("exporter/_build.py").decode()
        metadata = wheel.read(f"bifrost_batch_exporter-{VERSION}.dist-info/METADATA").decode()
    assert f"\nVersion: {VERSION}\n" in metadata and "\nLicense-Expression: Apache-2.0\n" in metadata
    assert f"bifrost_batch_exporter-{VERSION}.dist-info/licenses/LICENSE" in names
    assert not [
        n for n in names if not n.startswith(("exporter/", f"bifrost_batch_exporter-{VERSION}.dist-info/"))
    ]
    with tarfile.open(release / SDIST) as sdist:
        member = sdist.extractfile(f"bifrost_batch_exporter-{VERSION}/exporter/_build.py")
        assert member is not None and baked in member.read().decode()


def test_the_wheel_installs_and_reports_its_build(release: Path, tmp_path: Path) -> None:
    """README's `pipx install` in its plain form: a fresh venv, the wheel, the console script."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(release / WHEEL)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    version = subprocess.run(
        [str(venv / "bin" / "bifrost-batch-exporter"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert version.returncode == 0, version.stderr
    lines = version.stdout.splitlines()
    assert lines[0] == f"bifrost-batch-exporter, version {VERSION} (branch: HEAD, revision: {'f' * 40})"
    assert lines[1].split() == ["build", "date:", FACTS["CREATED"]]


def test_the_packaged_chart_deploys_the_published_image(release: Path) -> None:
    binary = helm()
    release_workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())
    image = release_workflow["env"]["IMAGE"]
    shown = subprocess.run(
        [binary, "show", "chart", str(release / CHART)], capture_output=True, text=True, timeout=120
    )
    chart = yaml.safe_load(shown.stdout)
    assert chart["version"] == chart["appVersion"] == VERSION
    lint = subprocess.run(
        [binary, "lint", "--strict", str(release / CHART)], capture_output=True, text=True, timeout=120
    )
    assert lint.returncode == 0 and "symbolic link" not in lint.stdout + lint.stderr, (
        lint.stdout + lint.stderr
    )
    rendered = subprocess.run(
        [binary, "template", "bifrost-batch-exporter", str(release / CHART), "--namespace", "monitoring",
         "--set", "grafanaDashboard.enabled=true"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"{image}:{VERSION}"
    assert any(d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboards") for d in docs)
    validator = Path(sys.executable).parent / "kubernetes-validate"
    validate = subprocess.run(
        [str(validator) if validator.exists() else require_tool("kubernetes-validate"), "--strict", "-k", "1.31.0",
         "-"],
        input=rendered, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    output = validate.stdout + validate.stderr
    assert validate.returncode == 0 and "ERROR" not in output and "FATAL" not in output, output
    assert output.count(" passed for resource ") == len(docs), output

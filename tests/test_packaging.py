"""What a tag publishes, checked without publishing: the workflows, the image and chart names, the mixin's vendoring.

The release workflow cannot run here (no forge, no registry), so this checks what it would do against what the
project ships: the workflow files are valid GitHub Actions (the GitHub workflow JSON schema, as vendored by
check-jsonschema), every action is pinned by commit, the image it pushes is the chart's default image, the tag must
be v + the package's version, the build args are the ones the Dockerfile reads. tests/test_release.py (e2e tier)
builds the artefacts themselves with the script the workflow runs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import _jsonnet  # type: ignore[import-untyped]  # the jsonnet package ships no type information
import pytest
import yaml

import exporter
from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
CHART = ROOT / "deploy" / "helm" / "bifrost-batch-exporter"
MIXIN = ROOT / "deploy" / "mixin"
REPO = "github.com/bifrost-batch-exporter/bifrost-batch-exporter"
RELEASE_NOTES = ROOT / "tools" / "release-notes.py"

Doc = dict[str, Any]


def workflow(name: str) -> Doc:
    raw: dict[Any, Any] = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as True.
    raw["on"] = raw.pop(True, raw.get("on"))
    return {str(k): v for k, v in raw.items()}


def steps(job: Doc) -> list[Doc]:
    return list(job.get("steps", []))


def step_using(job: Doc, action: str) -> Doc:
    (found,) = [s for s in steps(job) if str(s.get("uses", "")).startswith(action + "@")]
    return found


def test_workflows_are_valid_github_actions() -> None:
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {f.name for f in files} == {"ci.yml", "release.yml"}
    checker = Path(sys.executable).parent / "check-jsonschema"
    binary = str(checker) if checker.exists() else require_tool("check-jsonschema")
    proc = subprocess.run(
        [binary, "--builtin-schema", "vendor.github-workflows", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_action_is_pinned_by_commit() -> None:
    for path in sorted(WORKFLOWS.glob("*.yml")):
        for line in path.read_text().splitlines():
            match = re.match(r"^\s*(?:-\s+)?uses:\s*(\S+)(.*)$", line)
            if match is None or match[1].startswith("./"):
                continue
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", match[1]), f"{path.name}: {line.strip()}"
            assert re.fullmatch(r"\s+# v\d+\.\d+\.\d+", match[2]), (
                f"{path.name}: say which tag: {line.strip()}"
            )


def test_ci_runs_both_tiers_through_the_projects_entry_point() -> None:
    ci = workflow("ci.yml")
    assert set(ci["on"]) == {"push", "pull_request", "workflow_call"}
    assert ci["permissions"] == {"contents": "read"}
    (job,) = ci["jobs"].values()
    assert any("bash .ci/run" in str(s.get("run", "")) for s in steps(job))
    run = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", run, re.MULTILINE) and re.search(r"^make test-e2e$", run, re.MULTILINE)


def test_the_release_publishes_the_charts_default_image() -> None:
    release = workflow("release.yml")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    image = release["env"]["IMAGE"]
    assert image == values["image"]["repository"]
    assert values["image"]["tag"] == "" and values["image"]["digest"] == ""  # the default is appVersion
    # Only tags v<major>.<minor>.<patch>, and the tag must be v + the package's version (checked in the facts job).
    assert release["on"] == {"push": {"tags": ["v[0-9]+.[0-9]+.[0-9]+"]}}
    facts = release["jobs"]["facts"]
    assert any('"v$version" != "$GITHUB_REF_NAME"' in str(s.get("run", "")) for s in steps(facts))
    # docker/metadata-action's semver {{version}} of the tag v<version> is <version>: the chart's appVersion.
    meta = step_using(release["jobs"]["image"], "docker/metadata-action")
    assert meta["with"]["images"] == "${{ env.IMAGE }}"
    tag_rules = meta["with"]["tags"].split("\n")
    assert "type=semver,pattern={{version}}" in tag_rules
    assert chart["appVersion"] == exporter.__version__
    assert f"v{exporter.__version__}".removeprefix("v") == chart["appVersion"]
    # ...and the chart itself is pushed only after that image.
    assert "image" in release["jobs"]["chart"]["needs"]


def test_the_image_is_multi_arch_with_sbom_provenance_and_the_build_args_the_dockerfile_reads() -> None:
    image_job = workflow("release.yml")["jobs"]["image"]
    build = step_using(image_job, "docker/build-push-action")["with"]
    assert build["platforms"] == "linux/amd64,linux/arm64"
    assert build["sbom"] is True and build["provenance"] == "mode=max" and build["push"] is True
    assert build["labels"] and build["annotations"]
    passed = {line.split("=", 1)[0] for line in build["build-args"].split("\n") if line}
    dockerfile = (ROOT / "Dockerfile").read_text()
    declared = set(re.findall(r"^ARG (\w+)", dockerfile, re.MULTILINE)) - {
        "BASE_IMAGE",
        "SOURCE",
        "DOCUMENTATION",
    }
    assert passed == declared == {"VERSION", "REVISION", "BRANCH", "CREATED"}
    image_test = (ROOT / "deploy" / "image-test.sh").read_text()
    assert {f"--build-arg {arg}=" for arg in passed} <= {
        m[0] for m in re.finditer(r"--build-arg (\w+)=", image_test.replace('"', ""))
    }


def test_publishing_waits_for_ci_and_each_job_holds_only_the_permissions_it_needs() -> None:
    release = workflow("release.yml")
    assert release["permissions"] == {}
    jobs = release["jobs"]
    assert jobs["ci"]["uses"] == "./.github/workflows/ci.yml"

    def upstream(name: str) -> set[str]:
        needs = jobs[name].get("needs", [])
        direct = {needs} if isinstance(needs, str) else set(needs)
        return direct.union(*(upstream(n) for n in direct)) if direct else set()

    allowed = {
        "ci": {"contents": "read"},
        "facts": {"contents": "read"},
        "dists": {"contents": "read"},
        "pypi": {"id-token": "write"},
        "image": {"contents": "read", "packages": "write"},
        "chart": {"contents": "read", "packages": "write"},
        "github-release": {"contents": "write"},
    }
    assert {name: job.get("permissions") for name, job in jobs.items()} == allowed
    for name in ("pypi", "image", "chart", "github-release"):
        assert {"ci", "facts"} <= upstream(name), name
    assert jobs["pypi"]["environment"]["name"] == "pypi"
    for job in jobs.values():
        for step in steps(job):
            if str(step.get("uses", "")).startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False


def test_the_release_builds_its_files_with_the_script_make_test_e2e_runs() -> None:
    dists = workflow("release.yml")["jobs"]["dists"]
    assert any("bash tools/build-release dist" in str(s.get("run", "")) for s in steps(dists))
    github_release = workflow("release.yml")["jobs"]["github-release"]
    run = "\n".join(str(s.get("run", "")) for s in steps(github_release))
    assert "sha256sum -c SHA256SUMS" in run and "dist/SHA256SUMS" in run
    assert "tools/release-notes.py" in run


def release_notes(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RELEASE_NOTES), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_release_notes_are_the_changelog_section_of_the_version() -> None:
    proc = release_notes(exporter.__version__)
    assert proc.returncode == 0, proc.stderr
    text = (ROOT / "CHANGELOG.md").read_text()
    assert proc.stdout.strip() and proc.stdout.strip() in text
    assert "## [" not in proc.stdout and "]: https://" not in proc.stdout


@pytest.mark.parametrize(
    ("changelog", "message"),
    [
        ("## [Unreleased]\n\n## [9.9.9]\n\n- x\n", "no release date"),
        ("## [Unreleased]\n\n## [9.9.8] - 2026-01-01\n\n- x\n", "no section [9.9.9]"),
    ],
)
def test_release_notes_refuse_an_undated_or_missing_release(
    tmp_path: Path, changelog: str, message: str
) -> None:
    path = tmp_path / "CHANGELOG.md"
    path.write_text(changelog)
    proc = release_notes("9.9.9", "--changelog", str(path))
    assert proc.returncode == 1 and message in proc.stderr


def test_the_mixin_and_the_chart_carry_current_copies_of_the_dashboards() -> None:
    sources = {p.name: p.read_bytes() for p in sorted((ROOT / "dashboards").glob("*.json"))}
    assert sources
    for copy in (MIXIN / "dashboards", CHART / "files" / "dashboards"):
        assert not copy.is_symlink()
        assert {p.name: p.read_bytes() for p in sorted(copy.glob("*.json"))} == sources, (
            f"{copy}: make dashboards"
        )


def test_the_mixin_works_as_jsonnet_bundler_vendors_it(tmp_path: Path) -> None:
    """`jb install github.com/bifrost-batch-exporter/bifrost-batch-exporter/deploy/mixin@main` copies only that
    directory to vendor/<its path>: the mixin must import nothing outside it."""
    jsonnetfile = json.loads((MIXIN / "jsonnetfile.json").read_text())
    assert jsonnetfile["version"] == 1 and jsonnetfile["dependencies"] == []
    vendored = tmp_path / "vendor" / REPO / "deploy" / "mixin"
    vendored.parent.mkdir(parents=True)
    subprocess.run(["cp", "-r", str(MIXIN), str(vendored)], check=True)
    for stray in vendored.glob("*.py"):
        stray.unlink()
    snippet = f"""
        local m = (import '{REPO}/deploy/mixin/mixin.libsonnet') + {{ _config+:: {{ dashboard+: {{ uid: 'mine' }} }} }};
        {{
          alerts: [r.alert for g in m.prometheusAlerts.groups for r in g.rules],
          records: [r.record for g in m.prometheusRules.groups for r in g.rules if std.objectHas(r, 'record')],
          dashboards: {{ [k]: m.grafanaDashboards[k].uid for k in std.objectFields(m.grafanaDashboards) }},
        }}
    """
    out = json.loads(_jsonnet.evaluate_snippet("user.jsonnet", snippet, jpathdir=[str(tmp_path / "vendor")]))
    assert "BifrostBatchExporterDown" in out["alerts"] and out["records"]
    assert out["dashboards"] == {"bifrost-batches.json": "mine"}


def test_the_readme_installs_what_the_release_publishes() -> None:
    """README's Install blocks name the version, image and chart the tag's workflow publishes."""
    readme = (ROOT / "README.md").read_text()
    install = readme[readme.index("## Install") : readme.index("\n## ", readme.index("## Install") + 1)]
    blocks = re.findall(r"```sh\n(.*?)```", install, re.DOTALL)
    assert len(blocks) == 3, "pip/pipx, container, Helm"
    pip, container, chart = (b.replace("\\\n", " ") for b in blocks)
    release = workflow("release.yml")["env"]
    version = exporter.__version__
    assert f"pipx install bifrost-batch-exporter=={version}" in pip
    assert f"pip install bifrost-batch-exporter=={version}" in pip
    assert f" {release['IMAGE']}:{version} " in container
    assert (
        "--web.listen-address=0.0.0.0:9877" in container
    )  # the demo listens on loopback unless told otherwise
    ref = re.search(r"helm install (\S+) (\S+)\s+--version (\S+)", chart)
    assert ref is not None
    assert (ref[2], ref[3]) == (f"{release['CHART_REPOSITORY']}/bifrost-batch-exporter", version)
    assert f"jb install {REPO}/deploy/mixin@v{version}" in " ".join(install.split())


def test_the_readmes_helm_install_renders() -> None:
    helm = ROOT / ".tools" / "bin" / "helm"
    binary = str(helm) if helm.exists() else require_tool("helm")
    readme = (ROOT / "README.md").read_text()
    install = readme[readme.index("## Install") :]
    chart_block = re.findall(r"```sh\n(.*?)```", install, re.DOTALL)[2].replace("\\\n", " ")
    sets = re.findall(r"--set (\S+)", chart_block)
    assert sets
    args = [a for s in sets for a in ("--set", s)]
    proc = subprocess.run(
        [binary, "template", "bifrost-batch-exporter", str(CHART), "--namespace", "monitoring", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(proc.stdout) if d)
    assert "Deployment" in kinds


def test_every_demo_command_a_user_copies_publishes_a_reachable_port() -> None:
    """`--demo` listens on 127.0.0.1 unless told otherwise, so in a container a published port reaches nothing:
    every `docker run … --demo` line we hand out (README, the release notes the release workflow writes) must listen
    on all interfaces."""
    sources = {
        "README.md": (ROOT / "README.md").read_text(),
        "release.yml": (ROOT / ".github" / "workflows" / "release.yml").read_text(),
        "Dockerfile": (ROOT / "Dockerfile").read_text(),
    }
    checked = 0
    for name, text in sources.items():
        joined = text.replace("\\\n", " ")
        for line in joined.splitlines():
            if "docker run" in line and "--demo" in line:
                checked += 1
                assert "--web.listen-address=0.0.0.0:" in line, f"{name}: {line.strip()}"
    assert checked >= 3

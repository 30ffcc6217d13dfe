"""The Helm chart: lint, render with every ci/ value set, validate against Kubernetes schemas, check what it embeds.

Needs a real `helm` (fetched into .tools/bin by tools/get-helm when missing) and `kubernetes-validate`.
Locally a missing tool skips; under CI=true it fails (see tests/conftest.py).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

import exporter
from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "bifrost-batch-exporter"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
RECORDING = ROOT / "deploy" / "prometheus" / "rules.yaml"
DASHBOARDS = ROOT / "dashboards"
GET_HELM = ROOT / "tools" / "get-helm"
LOCAL_HELM = ROOT / ".tools" / "bin" / "helm"
# Oldest and a current Kubernetes minor release known to kubernetes-validate.
K8S_VERSIONS = ("1.31.0", "1.34.0")
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
VALUE_SETS = sorted(p.name for p in (CHART / "ci").glob("*.yaml"))
SHARD_LABEL = "bifrost-batch-exporter/shard"

Doc = dict[str, Any]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def helm() -> str:
    """The helm binary: .tools/bin/helm, installed there by get-helm when absent; else helm on PATH."""
    if not LOCAL_HELM.exists() and GET_HELM.exists():
        try:
            subprocess.run(
                [str(GET_HELM), str(LOCAL_HELM.parent)], check=True, capture_output=True, timeout=600
            )
        except (subprocess.SubprocessError, OSError) as e:
            print(f"get-helm failed: {e}", file=sys.stderr)
    if LOCAL_HELM.exists():
        return str(LOCAL_HELM)
    return require_tool("helm")


@pytest.fixture(scope="session")
def kubernetes_validate() -> str:
    beside_python = Path(sys.executable).parent / "kubernetes-validate"
    if beside_python.exists():
        return str(beside_python)
    return require_tool("kubernetes-validate")


def run_helm(helm: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([helm, *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def template_text(helm: str, *args: str) -> str:
    return run_helm(helm, "template", "rel", str(CHART), "--namespace", "monitoring", *args).stdout


def refused_text(helm: str, *args: str, chart: Path = CHART) -> str:
    """`helm template` of `chart` with `args`, which must fail: its stderr (the chart's `fail` or schema message)."""
    proc = run_helm(helm, "template", "rel", str(chart), *args, check=False)
    assert proc.returncode != 0, proc.stderr
    return proc.stderr


def docs_of(text: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all(text) if d]


def values_args(value_set: str) -> list[str]:
    return ["-f", str(CHART / "ci" / value_set)]


@pytest.fixture(scope="session")
def rendered(helm: str) -> dict[str, str]:
    """Rendered manifests per ci/ value set."""
    return {name: template_text(helm, *values_args(name)) for name in VALUE_SETS}


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Doc], kind: str) -> Doc:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(deployment: Doc) -> Doc:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def env_of(deployment: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container(deployment).get("env", [])}


def load_values(value_set: str) -> Doc:
    return dict(yaml.safe_load((CHART / "ci" / value_set).read_text()) or {})


def dashboard_files() -> list[Path]:
    files = sorted(DASHBOARDS.glob("*.json"))
    if not files:
        message = "no dashboards/*.json yet"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return files


# --- chart metadata ----------------------------------------------------------------------------------------------------


def test_chart_versions_follow_the_package() -> None:
    """One version: the chart and the exporter it deploys are released together under the package's version."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == chart["version"] == exporter.__version__
    assert chart["apiVersion"] == "v2"


def test_value_sets_present() -> None:
    assert set(VALUE_SETS) >= {
        "default-values.yaml",
        "sharded-values.yaml",
        "all-optional-on-values.yaml",
        "existing-secret-values.yaml",
        "persistence-values.yaml",
    }


def test_embedded_dashboards_are_current_copies() -> None:
    """files/dashboards holds copies (helm warns about a symlink, and a packaged chart must stand alone).

    The rules come from files/mixin-rules.yaml, generated from the mixin like deploy/prometheus/*.yaml."""
    embedded = CHART / "files" / "dashboards"
    assert not embedded.is_symlink()
    copies = {p.name: p.read_bytes() for p in sorted(embedded.iterdir())}
    sources = {p.name: p.read_bytes() for p in dashboard_files()}
    assert copies == sources, "the chart's dashboards are stale: run `make dashboards`"


def test_every_value_is_documented() -> None:
    """Each key of values.yaml has a comment right above it, or sits inside a block whose key has one."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    ancestors: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    for i, line in enumerate(lines):
        stripped = line.strip()
        match = re.match(r"([A-Za-z_][A-Za-z0-9_]*):(.*)$", stripped)
        if not match or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        while ancestors and ancestors[-1][0] >= indent:
            ancestors.pop()
        commented = i > 0 and lines[i - 1].strip().startswith("#")
        inherited = any(documented for _, documented in ancestors)
        is_container = match[2].strip() == ""
        if not (commented or inherited or is_container):
            undocumented.append(f"{i + 1}: {stripped}")
        ancestors.append((indent, commented))
    assert not undocumented, "values without a comment:\n" + "\n".join(undocumented)


# --- the chart's README, generated from values.yaml -------------------------------------------------------------------

GEN_README = ROOT / "tools" / "gen-chart-readme.py"
REPO_BLOB = "https://github.com/bifrost-batch-exporter/bifrost-batch-exporter/blob/main/"


def gen_readme(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GEN_README), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_chart_readme_is_generated_from_the_current_values() -> None:
    proc = gen_readme("--check")
    assert proc.returncode == 0, proc.stderr + "\nrun: python3 tools/gen-chart-readme.py"


def test_chart_readme_check_fails_when_a_value_changes(scratch_chart: Path) -> None:
    values = scratch_chart / "values.yaml"
    values.write_text(values.read_text().replace("# -- Service port.", "# -- The Service's port."))
    proc = gen_readme("--check", "--chart", str(scratch_chart))
    assert proc.returncode == 1 and "out of date" in proc.stderr
    assert gen_readme("--chart", str(scratch_chart)).returncode == 0
    assert "The Service's port." in (scratch_chart / "README.md").read_text()
    assert gen_readme("--check", "--chart", str(scratch_chart)).returncode == 0


def test_chart_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key in values:
        assert f"`{key}" in readme, key
    for key in values["persistence"]:
        assert f"`persistence.{key}`" in readme


def test_documents_named_by_the_chart_exist() -> None:
    """Links (and docs/... mentions) in values.yaml and the chart README point at files of this repository."""
    for source in (CHART / "values.yaml", CHART / "README.md"):
        text = source.read_text()
        targets = [m.split("#")[0] for m in re.findall(re.escape(REPO_BLOB) + r"([\w./-]*[\w/-])", text)]
        targets += re.findall(r"(?<![\w/])(docs/[\w.-]+\.md)", text)
        assert targets, source
        missing = sorted({t for t in targets if not (ROOT / t).is_file()})
        assert not missing, f"{source.name} names documents that do not exist: {missing}"


def test_memory_limit_is_above_the_measured_peak_rss() -> None:
    """The limit follows docs/performance.md's RSS of the realistic mix at 1M batches (bench/memory.py's table
    of that name: MiB, peak included, after the first full list and after the steady hour), with at least 20%
    headroom over the higher peak."""
    text = (ROOT / "docs" / "performance.md").read_text()
    heading = re.search(r"^#+ .*Realistic mix.*$", text, re.MULTILINE)
    assert heading is not None, "docs/performance.md has no realistic-mix memory table"
    table = text[heading.end() :].split("\n\n", 2)[1]
    peaks = [
        float(m[1]) for m in re.finditer(r"^\|\s*1,000,000\s*\|\s*[\d.]+\s*\|\s*([\d.]+)\s*\|", table, re.M)
    ]
    assert peaks, "the realistic-mix table has no row for 1,000,000 batches"
    limit = yaml.safe_load((CHART / "values.yaml").read_text())["resources"]["limits"]["memory"]
    match = re.fullmatch(r"(\d+)Mi", limit)
    assert match is not None, limit
    assert int(match[1]) >= 1.2 * max(peaks), (limit, peaks)


# --- lint and Kubernetes schema validation ---------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_lint_strict(helm: str, value_set: str) -> None:
    proc = run_helm(helm, "lint", "--strict", str(CHART), *values_args(value_set), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_kubernetes_validate_strict(
    rendered: dict[str, str], kubernetes_validate: str, value_set: str, k8s_version: str
) -> None:
    text = rendered[value_set]
    docs = docs_of(text)
    proc = subprocess.run(
        [kubernetes_validate, "--strict", "-k", k8s_version, "-"],
        input=text,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "ERROR" not in output, output
    assert "FATAL" not in output, output
    # Only the Prometheus Operator CRDs may go unvalidated (their shape is checked below); every core object passed.
    core = [d for d in docs if d["kind"] not in CRD_KINDS]
    assert output.count(" passed for resource ") == len(core), output
    unknown = set(re.findall(r"find schema for kind (\w+)", output))
    assert unknown <= CRD_KINDS, output


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_crd_objects_have_the_operator_shape(rendered: dict[str, str], value_set: str) -> None:
    docs = docs_of(rendered[value_set])
    services = of_kind(docs, "Service")
    for sm in of_kind(docs, "ServiceMonitor"):
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(sm) == {"apiVersion", "kind", "metadata", "spec"}
        spec = sm["spec"]
        assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "targetLabels"}
        assert spec["namespaceSelector"] == {"matchNames": ["monitoring"]}
        selector = spec["selector"]["matchLabels"]
        matched = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
        assert len(matched) == 1, f"ServiceMonitor {sm['metadata']['name']} selects {len(matched)} Services"
        port_names = {p["name"] for p in matched[0]["spec"]["ports"]}
        for endpoint in spec["endpoints"]:
            assert endpoint["port"] in port_names
            assert endpoint["path"] == "/metrics"
            assert endpoint["scheme"] in {"http", "https"}
            assert re.fullmatch(r"([0-9]+(ms|s|m|h))+", endpoint["interval"])
            assert re.fullmatch(r"([0-9]+(ms|s|m|h))+", endpoint.get("scrapeTimeout", "0s"))
            assert isinstance(endpoint["honorLabels"], bool)
            for relabeling in endpoint.get("relabelings", []) + endpoint.get("metricRelabelings", []):
                assert isinstance(relabeling, dict)
    for rule in of_kind(docs, "PrometheusRule"):
        assert rule["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(rule["spec"]) == {"groups"}
        for group in rule["spec"]["groups"]:
            assert isinstance(group["name"], str)
            assert group["rules"]
            for r in group["rules"]:
                assert ("alert" in r) != ("record" in r)
                assert isinstance(r["expr"], str)


def test_a_scrape_interval_alone_gives_a_scrape_config_prometheus_accepts(helm: str, tmp_path: Path) -> None:
    """serviceMonitor.interval below 10s once kept a default scrapeTimeout of 10s: Prometheus refuses a timeout above
    the interval (the Operator drops the ServiceMonitor) and the exporter was never scraped. Without a timeout of its
    own the chart renders none, and Prometheus takes min(global scrape_timeout, interval)."""
    promtool = require_tool("promtool")
    for interval in ("5s", "30s"):
        text = template_text(
            helm, "--set", "serviceMonitor.enabled=true", "--set", f"serviceMonitor.interval={interval}"
        )
        (endpoint,) = one(docs_of(text), "ServiceMonitor")["spec"]["endpoints"]
        assert endpoint["interval"] == interval and "scrapeTimeout" not in endpoint
        # The scrape config the Operator generates from this endpoint, checked by Prometheus' own config loader.
        job = {"job_name": "rel", "scrape_interval": endpoint["interval"], "metrics_path": endpoint["path"],
               "static_configs": [{"targets": ["127.0.0.1:9877"]}]}  # fmt: skip
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump({"global": {"scrape_timeout": "10s"}, "scrape_configs": [job]}))
        check = subprocess.run(
            [promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60
        )
        assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize(
    ("interval", "timeout", "refused"),
    [
        ("5s", "10s", True),
        ("1m", "1m0s500ms", True),
        ("30s", "2m", True),
        ("1m", "1m", False),
        ("1m30s", "1m", False),
    ],
)
def test_a_scrape_timeout_above_the_interval_fails_the_render(
    helm: str, interval: str, timeout: str, refused: bool
) -> None:
    args = ["--set", "serviceMonitor.enabled=true", "--set", f"serviceMonitor.interval={interval}",
            "--set", f"serviceMonitor.scrapeTimeout={timeout}"]  # fmt: skip
    if refused:
        message = refused_text(helm, *args)
        assert (
            f"serviceMonitor.scrapeTimeout ({timeout}) must not exceed serviceMonitor.interval ({interval})"
            in message
        )
    else:
        (endpoint,) = one(docs_of(template_text(helm, *args)), "ServiceMonitor")["spec"]["endpoints"]
        assert (endpoint["interval"], endpoint["scrapeTimeout"]) == (interval, timeout)


# --- what the chart renders --------------------------------------------------------------------------------------------


def test_default_render(rendered: dict[str, str]) -> None:
    docs = docs_of(rendered["default-values.yaml"])
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "Deployment", "Service", "ServiceAccount"]
    deployment = one(docs, "Deployment")
    c = container(deployment)
    assert c["image"].endswith(f":{exporter.__version__}")
    assert c["ports"] == [{"name": "http-metrics", "containerPort": 9877, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["resources"]["requests"]
    assert c["resources"]["limits"]
    assert "env" not in c  # all providers from the ConfigMap, no credentials
    config = yaml.safe_load(one(docs, "ConfigMap")["data"]["config.yaml"])
    assert config["listen_address"] == ":9877"  # IPv4 and IPv6: the pod's IP may be either
    assert config["providers"] == ["openai", "anthropic", "azure", "bedrock", "gemini", "vertex"]
    assert "web_config_file" not in config


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_pods_are_locked_down(rendered: dict[str, str], value_set: str) -> None:
    for deployment in of_kind(docs_of(rendered[value_set]), "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        # No <SERVICE>_* variables: a Service named bifrost-exporter… would put BIFROST_EXPORTER_* names there.
        assert pod["enableServiceLinks"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 65532
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        sc = container(deployment)["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["runAsNonRoot"] is True
        assert sc["runAsUser"] == 65532
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert {"checksum/config", "checksum/secret", "checksum/web-config"} <= set(annotations)


def test_sharded_render(rendered: dict[str, str]) -> None:
    docs = docs_of(rendered["sharded-values.yaml"])
    shards = load_values("sharded-values.yaml")["shards"]
    deployments = {d["metadata"]["labels"][SHARD_LABEL]: d for d in of_kind(docs, "Deployment")}
    assert sorted(deployments) == sorted(s["name"] for s in shards)
    for shard in shards:
        deployment = deployments[shard["name"]]
        assert deployment["metadata"]["name"] == f"rel-bifrost-batch-exporter-{shard['name']}"
        assert env_of(deployment)["BIFROST_EXPORTER_PROVIDERS"]["value"] == ",".join(shard["providers"])
        assert deployment["spec"]["replicas"] == shard.get("replicas", 1)
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        # Its Service selects its pods and nobody else's.
        services = [
            s for s in of_kind(docs, "Service") if s["spec"]["selector"].items() <= pod_labels.items()
        ]
        assert [s["metadata"]["name"] for s in services] == [deployment["metadata"]["name"]]
        other_pods = [
            d["spec"]["template"]["metadata"]["labels"] for n, d in deployments.items() if n != shard["name"]
        ]
        assert not any(services[0]["spec"]["selector"].items() <= labels.items() for labels in other_pods)
    assert len(of_kind(docs, "Service")) == len(shards)
    assert len(of_kind(docs, "ServiceMonitor")) == len(shards)
    assert len(of_kind(docs, "PodDisruptionBudget")) == len(shards)
    assert len(of_kind(docs, "ConfigMap")) == 1  # one config, each shard overrides providers by env
    polled = [p for s in shards for p in s["providers"]]
    assert len(polled) == len(set(polled))


def test_a_provider_in_two_shards_is_refused(helm: str) -> None:
    stderr = refused_text(
        helm,
        "--set",
        "shards[0].name=a,shards[0].providers={openai},shards[1].name=b,shards[1].providers={openai}",
    )
    assert 'provider "openai" is in shard "a" and in shard "b"' in stderr


def test_prometheus_rule_equals_the_alerts_and_recording_rules(helm: str, rendered: dict[str, str]) -> None:
    """With the generic files' selector, the chart renders exactly deploy/prometheus/*.yaml (one mixin source)."""
    alerts = yaml.safe_load(ALERTS.read_text())
    recording = yaml.safe_load(RECORDING.read_text())
    slos = yaml.safe_load((ALERTS.parent / "slos.yaml").read_text())
    generic = docs_of(
        template_text(
            helm,
            "--set",
            "prometheusRule.enabled=true",
            "--set-string",
            'prometheusRule.selector=job=~"bifrost-batch-exporter.*"',
        )
    )
    expected = alerts["groups"] + recording["groups"] + slos["groups"]
    assert one(generic, "PrometheusRule")["spec"]["groups"] == expected
    rule = one(docs_of(rendered["all-optional-on-values.yaml"]), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    # default: this release's targets, by the namespace and job the Operator gives them
    assert any('namespace="monitoring", job=~"rel-bifrost-batch-exporter"' in e for e in exprs)


def test_dashboard_configmap_equals_the_dashboards(rendered: dict[str, str]) -> None:
    files = dashboard_files()
    cm = one(
        [
            d
            for d in docs_of(rendered["all-optional-on-values.yaml"])
            if "grafana_dashboard" in d["metadata"]["labels"]
        ],
        "ConfigMap",
    )
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Bifrost"}
    # The dashboards as written, with the mixin's default job matcher replaced by this release's (the rules' one).
    default = 'job=~\\"bifrost-batch-exporter.*\\"'
    release = 'namespace=\\"monitoring\\", job=~\\"rel-bifrost-batch-exporter\\"'
    assert cm["data"] == {f.name: f.read_text().replace(default, release) for f in files}
    for body in cm["data"].values():
        json.loads(body)


def test_the_shipped_dashboards_select_the_targets_the_rules_select(helm: str) -> None:
    """The Prometheus Operator names a release's targets' job after its Service (`<release>-bifrost-batch-exporter`),
    which the mixin's default matcher (`job=~"bifrost-batch-exporter.*"`, anchored) does not select: every panel
    reading the exporter's own series was empty for a release named anything else."""
    for args, matcher in (
        ((), 'namespace="default", job=~"prod-bifrost-batch-exporter"'),
        (("--set", 'prometheusRule.selector=job="batches"'), 'job="batches"'),
    ):
        text = run_helm(
            helm, "template", "prod", str(CHART), "--set", "grafanaDashboard.enabled=true",
            "--set", "prometheusRule.enabled=true", *args,
        ).stdout  # fmt: skip
        docs = docs_of(text)
        rule_exprs = [r["expr"] for g in one(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
        assert any(matcher in e for e in rule_exprs)
        cm = next(d for d in of_kind(docs, "ConfigMap") if "grafana_dashboard" in d["metadata"]["labels"])
        for body in cm["data"].values():
            dashboard = json.loads(body)
            exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
            exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
            own = [e for e in exprs if "bifrost_batch_exporter_" in e and ":" not in e.split("{")[0]]
            assert own and all(matcher in e for e in own), [e for e in own if matcher not in e][:2]
            assert not [e for e in exprs if 'job=~"bifrost-batch-exporter.*"' in e]


def test_package_carries_the_embedded_files(helm: str, tmp_path: Path) -> None:
    files = dashboard_files()
    packaged = run_helm(helm, "package", str(CHART), "--destination", str(tmp_path))
    assert packaged.stderr == "", f"helm package warned: {packaged.stderr}"
    (package,) = tmp_path.glob(f"bifrost-batch-exporter-{exporter.__version__}.tgz")
    with tarfile.open(package) as tar:
        names = set(tar.getnames())

        def read(name: str) -> str:
            member = tar.extractfile(name)
            assert member is not None, f"{name} is not a regular file in the package"
            return member.read().decode()

        rules = CHART / "files" / "mixin-rules.yaml"
        assert read("bifrost-batch-exporter/files/mixin-rules.yaml") == rules.read_text()
        for f in files:
            assert read(f"bifrost-batch-exporter/files/dashboards/{f.name}") == f.read_text()
    assert not [n for n in names if n.endswith((".py", ".pyc"))]
    assert "bifrost-batch-exporter/README.md" in names  # .helmignore must not drop the chart's documentation


def test_credentials_stay_in_secrets(rendered: dict[str, str]) -> None:
    for value_set in VALUE_SETS:
        auth = load_values(value_set).get("auth", {})
        not_flat = {
            "existingSecret",
            "existingSecretKeys",
            "virtualKeys",
            "virtualKeysSecret",
            "extraHeaders",
        }
        secrets = [v for k, v in auth.items() if k not in not_flat and v]
        tenant_keys = auth.get("virtualKeys") or {}
        headers = auth.get("extraHeaders") or {}
        docs = docs_of(rendered[value_set])
        not_secret = yaml.safe_dump([d for d in docs if d["kind"] != "Secret"])
        for secret in [*secrets, *tenant_keys.values(), *headers.values()]:
            assert secret not in not_secret, f"{value_set}: a credential leaked out of the Secret"
        if tenant_keys:
            (keys_secret,) = [
                d for d in of_kind(docs, "Secret") if d["metadata"]["name"].endswith("-virtual-keys")
            ]
            decoded_keys = {k: base64.b64decode(v).decode() for k, v in keys_secret["data"].items()}
            assert decoded_keys == tenant_keys
        if secrets and not auth.get("existingSecret"):
            auth_secret = one(
                [d for d in of_kind(docs, "Secret") if d["metadata"]["name"].endswith("-auth")], "Secret"
            )
            decoded = {k: base64.b64decode(v).decode() for k, v in auth_secret["data"].items()}
            if headers:
                assert json.loads(decoded.pop("extra-headers")) == headers
            assert set(decoded.values()) == set(secrets)


AUTH_DIR = "/etc/bifrost-batch-exporter/auth"


def auth_volume(deployment: Doc) -> Doc | None:
    pod = deployment["spec"]["template"]["spec"]
    volumes = [v for v in pod["volumes"] if v["name"] == "auth"]
    mounts = [m for m in container(deployment)["volumeMounts"] if m["name"] == "auth"]
    if not volumes:
        assert not mounts
        return None
    (mount,) = mounts
    assert mount == {
        "name": "auth",
        "mountPath": AUTH_DIR,
        "readOnly": True,
    }  # whole volume: rotations reach it
    return dict(volumes[0]["secret"])


def config_of(docs: list[Doc]) -> Doc:
    config_map = one([d for d in of_kind(docs, "ConfigMap") if "config.yaml" in d["data"]], "ConfigMap")
    return dict(yaml.safe_load(config_map["data"]["config.yaml"]))


def test_credentials_reach_the_exporter_as_files(rendered: dict[str, str]) -> None:
    docs = docs_of(rendered["all-optional-on-values.yaml"])
    deployment = one(docs, "Deployment")
    volume = auth_volume(deployment)
    assert volume == {
        "secretName": "rel-bifrost-batch-exporter-auth",
        "defaultMode": 0o440,
        "items": [{"key": "basic-auth-password", "path": "basic-auth-password"}],
    }
    config = config_of(docs)
    assert config["basic_auth_password_file"] == f"{AUTH_DIR}/basic-auth-password"
    assert "virtual_key_file" not in config and "bearer_token_file" not in config  # not configured
    env = env_of(deployment)
    # The user name is not a *_file setting: it stays an env var from the same Secret. No secret value is in env.
    assert env["BIFROST_EXPORTER_BASIC_AUTH_USERNAME"]["valueFrom"]["secretKeyRef"] == {
        "name": "rel-bifrost-batch-exporter-auth",
        "key": "basic-auth-username",
    }
    for name in ("VIRTUAL_KEY", "BASIC_AUTH_PASSWORD", "BEARER_TOKEN"):
        assert f"BIFROST_EXPORTER_{name}" not in env
    sharded = docs_of(rendered["sharded-values.yaml"])
    for shard in of_kind(sharded, "Deployment"):
        assert auth_volume(shard) == {
            "secretName": "rel-bifrost-batch-exporter-auth",
            "defaultMode": 0o440,
            "items": [{"key": "virtual-key", "path": "virtual-key"}],
        }
    assert config_of(sharded)["virtual_key_file"] == f"{AUTH_DIR}/virtual-key"
    assert auth_volume(one(docs_of(rendered["default-values.yaml"]), "Deployment")) is None


def test_existing_secret(rendered: dict[str, str]) -> None:
    docs = docs_of(rendered["existing-secret-values.yaml"])
    assert not of_kind(docs, "Secret")
    deployment = one(docs, "Deployment")
    # Only the credentials whose key is named in existingSecretKeys are mounted (a named key must exist).
    assert auth_volume(deployment) == {
        "secretName": "bifrost-gateway-credentials",
        "defaultMode": 0o440,
        "items": [
            {"key": "vk", "path": "virtual-key"},
            {"key": "password", "path": "basic-auth-password"},
        ],
    }
    config = config_of(docs)
    assert config["virtual_key_file"] == f"{AUTH_DIR}/virtual-key"
    assert config["basic_auth_password_file"] == f"{AUTH_DIR}/basic-auth-password"
    assert "bearer_token_file" not in config
    ref = env_of(deployment)["BIFROST_EXPORTER_BASIC_AUTH_USERNAME"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "bifrost-gateway-credentials", "key": "username"}


def test_an_existing_secret_without_any_key_named_is_refused(helm: str) -> None:
    """0.1.0's existingSecretKeys had defaults; values written for it would now mount nothing, and the exporter
    would poll without a credential (auth failures, or a keyless view of the whole account)."""
    stderr = refused_text(helm, "--set", "auth.existingSecret=gw-creds")
    assert (
        'auth.existingSecret "gw-creds" is set, but auth.existingSecretKeys names none of its keys' in stderr
    ), stderr
    assert "auth.existingSecretKeys.virtualKey" in stderr


@pytest.mark.parametrize(
    ("args", "ref"),
    [
        (["--set-string", "auth.extraHeaders.X-Api-Key=sk-proxy-123456"],
         {"name": "rel-bifrost-batch-exporter-auth", "key": "extra-headers"}),
        (["--set", "auth.existingSecret=gw", "--set", "auth.existingSecretKeys.virtualKey=vk",
          "--set", "auth.existingSecretKeys.extraHeaders=headers"],
         {"name": "gw", "key": "headers"}),
    ],
)  # fmt: skip
def test_extra_headers_travel_in_the_secret(helm: str, args: list[str], ref: Doc, tmp_path: Path) -> None:
    """The exporter treats every header value as a secret (a proxy's API key): a ConfigMap is readable with
    `get configmaps` alone, so the headers go into the Secret and reach the pod as BIFROST_EXPORTER_EXTRA_HEADERS."""
    docs = docs_of(template_text(helm, *args))
    assert "sk-proxy-123456" not in yaml.safe_dump([d for d in docs if d["kind"] != "Secret"])
    assert "extra_headers" not in config_of(docs)
    env = env_of(one(docs, "Deployment"))["BIFROST_EXPORTER_EXTRA_HEADERS"]
    assert env == {"name": "BIFROST_EXPORTER_EXTRA_HEADERS", "valueFrom": {"secretKeyRef": ref}}
    secrets = [d for d in of_kind(docs, "Secret") if d["metadata"]["name"] == ref["name"]]
    if secrets:  # rendered by the chart: the JSON object the exporter reads from that variable
        value = base64.b64decode(one(secrets, "Secret")["data"][ref["key"]]).decode()
        assert json.loads(value) == {"X-Api-Key": "sk-proxy-123456"}
        environ = {k: v for k, v in os.environ.items() if not k.startswith("BIFROST_EXPORTER_")}
        proc = subprocess.run(
            [sys.executable, "-m", "exporter", "--check-config"],
            capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
            env=environ | {"BIFROST_EXPORTER_EXTRA_HEADERS": value},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert yaml.safe_load(proc.stdout)["extra_headers"] == {"X-Api-Key": "**********"}


# --- persistence: the ledger in state_dir ---------------------------------------------------------------------------


def test_persistence_pvc_one_claim_and_one_writer_per_deployment(rendered: dict[str, str]) -> None:
    docs = docs_of(rendered["persistence-values.yaml"])
    deployments = of_kind(docs, "Deployment")
    claims = {c["metadata"]["name"]: c for c in of_kind(docs, "PersistentVolumeClaim")}
    assert len(deployments) == len(claims) == 2
    state_dir = config_of(docs)["state_dir"]
    assert state_dir == "/var/lib/bifrost-batch-exporter"
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"] == {
            "type": "Recreate"
        }  # the old pod stops before the new one writes
        (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "state"]
        assert volume == {"name": "state", "persistentVolumeClaim": {"claimName": f"{name}-state"}}
        (mount,) = [m for m in container(deployment)["volumeMounts"] if m["name"] == "state"]
        assert mount["mountPath"] == state_dir and not mount.get("readOnly")
        claim = claims[f"{name}-state"]
        assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
        assert claim["spec"]["storageClassName"] == "fast-ssd"
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert claim["metadata"]["labels"][SHARD_LABEL] == deployment["metadata"]["labels"][SHARD_LABEL]


def test_persistence_empty_dir_allows_an_ha_pair(rendered: dict[str, str]) -> None:
    docs = docs_of(rendered["all-optional-on-values.yaml"])
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert "strategy" not in deployment["spec"]
    assert not of_kind(docs, "PersistentVolumeClaim")
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "state"]
    assert volume == {"name": "state", "emptyDir": {"sizeLimit": "256Mi"}}
    assert config_of(docs)["state_dir"] == "/var/lib/bifrost-batch-exporter"
    assert "state_dir" not in config_of(docs_of(rendered["default-values.yaml"]))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "persistence.enabled=true,replicaCount=2"], "persistence.type=pvc needs 1 replica per Deployment"),
        (
            ["--set", "persistence.enabled=true,persistence.existingClaim=mine",
             "--set", "shards[0].name=a,shards[0].providers={openai},shards[1].name=b,shards[1].providers={azure}"],
            "persistence.existingClaim is one volume",
        ),
    ],
)  # fmt: skip
def test_persistence_refuses_two_writers_on_one_volume(helm: str, args: list[str], message: str) -> None:
    assert message in refused_text(helm, *args)


def test_existing_claim_is_used_as_is(helm: str) -> None:
    docs = docs_of(template_text(helm, "--set", "persistence.enabled=true,persistence.existingClaim=ledger"))
    assert not of_kind(docs, "PersistentVolumeClaim")
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "state", "persistentVolumeClaim": {"claimName": "ledger"}} in volumes


def test_web_config_tls_and_basic_auth(rendered: dict[str, str]) -> None:
    docs = docs_of(rendered["all-optional-on-values.yaml"])
    web_secret = one(
        [d for d in of_kind(docs, "Secret") if d["metadata"]["name"].endswith("-web-config")], "Secret"
    )
    web = yaml.safe_load(web_secret["stringData"]["web-config.yml"])
    assert web["tls_server_config"]["cert_file"] == "/etc/bifrost-batch-exporter/tls/tls.crt"
    assert web["tls_server_config"]["min_version"] == "TLS13"
    assert set(web["basic_auth_users"]) == {"prometheus"}
    config = yaml.safe_load(
        one([d for d in of_kind(docs, "ConfigMap") if "config.yaml" in d["data"]], "ConfigMap")["data"][
            "config.yaml"
        ]
    )
    assert config["web_config_file"] == "/etc/bifrost-batch-exporter/web/web-config.yml"
    deployment = one(docs, "Deployment")
    mounts = {m["mountPath"] for m in container(deployment)["volumeMounts"]}
    assert {"/etc/bifrost-batch-exporter/web", "/etc/bifrost-batch-exporter/tls"} <= mounts
    assert container(deployment)["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert one(docs, "ServiceMonitor")["spec"]["endpoints"][0]["scheme"] == "https"


def test_network_policy_and_pdb(rendered: dict[str, str]) -> None:
    docs = docs_of(rendered["all-optional-on-values.yaml"])
    policy = one(docs, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": "http-metrics", "protocol": "TCP"}]
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1  # with 2 replicas
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_a_pdb_never_forbids_every_eviction(helm: str) -> None:
    """minAvailable at or above a Deployment's replicas allows no eviction at all: a node drain hangs (the chart's
    PVC mode runs one replica, and the default used to be minAvailable 1)."""
    pdb = one(
        docs_of(template_text(helm, "--set", "podDisruptionBudget.enabled=true")), "PodDisruptionBudget"
    )
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": pdb["spec"]["selector"]}
    refused = refused_text(
        helm, "--set", "podDisruptionBudget.enabled=true",
        "--set", "podDisruptionBudget.maxUnavailable=", "--set", "podDisruptionBudget.minAvailable=1",
    )  # fmt: skip
    assert "forbids every eviction" in refused


def test_config_changes_roll_the_pods(helm: str) -> None:
    def annotations(*args: str) -> dict[str, str]:
        docs = docs_of(template_text(helm, *args))
        return dict(one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"])

    base = annotations()
    changed_config = annotations("--set", "config.poll_interval_seconds=60")
    changed_secret = annotations("--set", "auth.virtualKey=sk-new")
    assert changed_config["checksum/config"] != base["checksum/config"]
    assert changed_config["checksum/secret"] == base["checksum/secret"]
    assert changed_secret["checksum/secret"] != base["checksum/secret"]


@pytest.mark.parametrize(
    ("args", "listen"),
    [
        ([], ":9877"),
        (["--set", "containerPort=9100"], ":9100"),
        (["--set", "config.listen_address=0.0.0.0:9877"], "0.0.0.0:9877"),  # IPv4 only, by choice
        (["--set-string", "config.listen_address=[::]:9100", "--set", "containerPort=9100"], "[::]:9100"),
    ],
)
def test_the_listen_address_serves_both_families_on_the_container_port(
    helm: str, args: list[str], listen: str
) -> None:
    """`:PORT` answers on the pod's IPv4 and IPv6 address (tests/test_server.py shows it on loopback)."""
    docs = docs_of(template_text(helm, *args))
    assert config_of(docs)["listen_address"] == listen
    assert container(one(docs, "Deployment"))["ports"][0]["containerPort"] == int(listen.rsplit(":", 1)[1])


def test_a_listen_address_off_the_container_port_is_refused(helm: str) -> None:
    stderr = refused_text(helm, "--set", "config.listen_address=:9100")
    assert 'config.listen_address ":9100" must end in :9877, the containerPort' in stderr, stderr


# --- the schema rejects wrong values --------------------------------------------------------------------------------

BAD_VALUES: list[tuple[str, Doc, str]] = [
    ("replicas-not-int", {"replicaCount": "two"}, "replicaCount"),
    ("interval-not-number", {"config": {"poll_interval_seconds": "30s"}}, "poll_interval_seconds"),
    ("providers-not-list", {"config": {"providers": "openai,anthropic"}}, "providers"),
    ("bool-as-string", {"serviceMonitor": {"enabled": "yes"}}, "enabled"),
    ("shard-providers-string", {"shards": [{"name": "a", "providers": "openai"}]}, "providers"),
    ("shard-without-name", {"shards": [{"providers": ["openai"]}]}, "name"),
    ("secret-in-configmap", {"config": {"virtual_key": "sk-oops"}}, "virtual_key"),
    ("unknown-key", {"replicas": 2}, "replicas"),
    ("bad-log-level", {"config": {"log_level": "verbose"}}, "log_level"),
    ("port-out-of-range", {"containerPort": 70000}, "containerPort"),
    ("listen-address-without-port", {"config": {"listen_address": "0.0.0.0"}}, "listen_address"),
]


@pytest.mark.parametrize(("values", "mentions"), [pytest.param(v, m, id=i) for i, v, m in BAD_VALUES])
def test_schema_rejects_bad_values(helm: str, tmp_path: Path, values: Doc, mentions: str) -> None:
    bad = tmp_path / "bad-values.yaml"
    bad.write_text(yaml.safe_dump(values))
    proc = run_helm(helm, "template", "rel", str(CHART), "-f", str(bad), check=False)
    assert proc.returncode != 0, f"accepted {values}"
    assert "don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert mentions in proc.stderr
    lint = run_helm(helm, "lint", "--strict", str(CHART), "-f", str(bad), check=False)
    assert lint.returncode != 0


@pytest.fixture
def scratch_chart(tmp_path: Path) -> Path:
    """A copy of the chart with the embedded files dereferenced (as in the packaged chart)."""
    copy = tmp_path / "chart"
    shutil.copytree(CHART, copy, symlinks=False)
    return copy


def test_missing_rules_file_fails_loudly(helm: str, scratch_chart: Path) -> None:
    (scratch_chart / "files" / "mixin-rules.yaml").unlink()
    assert "files/mixin-rules.yaml" in refused_text(
        helm, "--set", "prometheusRule.enabled=true", chart=scratch_chart
    )


# --- the chart's config against the exporter itself ---------------------------------------------------------------

CHART_OWNED = {
    "web_config_file",
    "state_dir",
    "virtual_key_file",
    "virtual_key_dir",
    "basic_auth_password_file",
    "bearer_token_file",
}
# The exporter treats extra_headers values as secrets too: auth.extraHeaders puts them into the Secret.
SECRETS = {"virtual_key", "basic_auth_username", "basic_auth_password", "bearer_token", "extra_headers"}


def test_schema_takes_the_provider_ids_the_exporter_takes() -> None:
    """A custom provider's id may hold upper case and dots: the chart must not refuse what the exporter accepts."""
    from exporter.settings import _PROVIDER_RE

    schema = json.loads((CHART / "values.schema.json").read_text())
    patterns = {
        schema["properties"]["config"]["properties"]["providers"]["items"]["pattern"],
        schema["properties"]["shards"]["items"]["properties"]["providers"]["items"]["pattern"],
    }
    assert patterns == {_PROVIDER_RE.pattern}


@pytest.mark.parametrize(
    ("setting", "value"),
    [("log_level", "INFO"), ("log_level", " Warn "), ("log_level", "WARNING"), ("log_level", "verbose"),
     ("log_format", "JSON"), ("log_format", "Console"), ("log_format", "xml"),
     ("poll_mode", "FULL"), ("poll_mode", "Incremental"), ("poll_mode", " full"), ("poll_mode", "fast"),
     ("bifrost_url", "HTTP://bifrost:8080"), ("bifrost_url", "Https://bifrost"), ("bifrost_url", "ftp://bifrost")],
)  # fmt: skip
def test_schema_takes_the_spellings_the_exporter_takes(
    helm: str, tmp_path: Path, setting: str, value: str
) -> None:
    """The exporter reads these in any case (log names also with spaces around): the chart must neither refuse
    what it accepts nor render what it refuses."""
    from exporter.settings import ConfigError, load_settings

    try:
        load_settings({setting: value})
        exporter_takes = True
    except ConfigError:
        exporter_takes = False
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"config": {setting: value}}))
    proc = run_helm(helm, "template", "rel", str(CHART), "-f", str(values), check=False)
    assert (proc.returncode == 0) == exporter_takes, proc.stderr


def test_schema_knows_every_exporter_setting() -> None:
    """config.* in values.schema.json = the exporter's settings minus secrets (env from a Secret) and chart-owned ones."""
    from exporter.settings import Settings

    schema = json.loads((CHART / "values.schema.json").read_text())
    allowed = set(schema["properties"]["config"]["properties"])
    # extra_headers is known so that the chart can refuse it with a message that says where headers go
    assert allowed == set(Settings.model_fields) - SECRETS - CHART_OWNED | {"extra_headers"}


def test_extra_headers_under_config_are_refused_naming_where_they_go(helm: str) -> None:
    stderr = refused_text(helm, "--set-string", "config.extra_headers.X-Api-Key=sk-proxy-1")
    assert "config.extra_headers would be written into a ConfigMap" in stderr
    assert "auth.extraHeaders" in stderr and "sk-proxy-1" not in stderr


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_rendered_config_passes_check_config(
    rendered: dict[str, str], value_set: str, tmp_path: Path
) -> None:
    """The exporter accepts each Deployment's ConfigMap + env, as it would in the pod.

    Mounted files only exist in the pod: the secret files get stand-ins with a value (so the combination of
    credentials is checked too), state_dir a scratch directory, env from a Secret a stand-in value.
    """
    docs = docs_of(rendered[value_set])
    config = config_of(docs)
    for key in ("web_config_file", "ca_file"):  # checked elsewhere
        config.pop(key, None)
    for key in ("virtual_key_file", "basic_auth_password_file", "bearer_token_file"):
        if key in config:
            assert config[key].startswith(AUTH_DIR + "/")
            stand_in = tmp_path / Path(config[key]).name
            # A virtual key where one goes: in bearer_token_file it is refused (the gateway would read it as a key).
            stand_in.write_text(("sk-bf-" if key == "virtual_key_file" else "") + "stand-in-value\n")
            config[key] = str(stand_in)
    if "state_dir" in config:
        config["state_dir"] = str(tmp_path / "state")
    if "virtual_key_dir" in config:
        # The per-tenant Secret is mounted whole there in the pod: the same entries as stand-in files.
        assert config["virtual_key_dir"] == "/etc/bifrost-batch-exporter/virtual-keys"
        (keys_secret,) = [
            d for d in of_kind(docs, "Secret") if d["metadata"]["name"].endswith("-virtual-keys")
        ]
        key_dir = tmp_path / "virtual-keys"
        key_dir.mkdir()
        for tenant in keys_secret["data"]:
            (key_dir / tenant).write_text(f"sk-bf-stand-in-{tenant}\n")
        config["virtual_key_dir"] = str(key_dir)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    rendered_secrets = {
        d["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in d.get("data", {}).items()}
        for d in of_kind(docs, "Secret")
    }
    for deployment in of_kind(docs, "Deployment"):
        # From a Secret the chart renders: its value; from an existingSecret: a stand-in of the right shape.
        from_secrets: dict[str, str] = {}
        for name, e in env_of(deployment).items():
            if "valueFrom" in e:
                ref = e["valueFrom"]["secretKeyRef"]
                fallback = '{"X-Stand-In": "v"}' if name.endswith("_EXTRA_HEADERS") else "stand-in-user"
                from_secrets[name] = rendered_secrets.get(ref["name"], {}).get(ref["key"], fallback)
        plain_env = {name: e["value"] for name, e in env_of(deployment).items() if "value" in e}
        env = {k: v for k, v in os.environ.items() if not k.startswith("BIFROST_EXPORTER_")} | plain_env
        env |= from_secrets
        proc = subprocess.run(
            [sys.executable, "-m", "exporter", "--check-config", "--config", str(path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            cwd=ROOT,
        )
        assert proc.returncode == 0, proc.stderr
        effective = yaml.safe_load(proc.stdout)
        if "BIFROST_EXPORTER_PROVIDERS" in plain_env:
            assert effective["providers"] == plain_env["BIFROST_EXPORTER_PROVIDERS"].split(",")
        assert effective["listen_address"] == ":9877"


def test_rendered_web_config_is_accepted_by_the_exporter(rendered: dict[str, str], tmp_path: Path) -> None:
    from exporter.webconfig import parse_web_config

    docs = docs_of(rendered["all-optional-on-values.yaml"])
    web_secret = one(
        [d for d in of_kind(docs, "Secret") if d["metadata"]["name"].endswith("-web-config")], "Secret"
    )
    web = yaml.safe_load(web_secret["stringData"]["web-config.yml"])
    # The certificate files are mounted from the TLS Secret in the pod; stand-ins here.
    tls = web["tls_server_config"]
    for key in ("cert_file", "key_file"):
        stand_in = tmp_path / Path(tls[key]).name
        stand_in.write_text("stand-in\n")
        tls[key] = str(stand_in)
    parsed = parse_web_config(web, tmp_path / "web-config.yml")
    assert parsed.tls is not None
    assert set(parsed.users) == {"prometheus"}


def test_virtual_keys_per_tenant_are_mounted_as_the_key_directory(rendered: dict[str, str]) -> None:
    docs = docs_of(rendered["virtual-keys-values.yaml"])
    (secret,) = [d for d in of_kind(docs, "Secret") if d["metadata"]["name"].endswith("-virtual-keys")]
    assert sorted(secret["data"]) == ["team-ads", "team-search"]
    (deployment,) = of_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "virtual-keys"]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"] and "items" not in volume["secret"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "virtual-keys"]
    assert mount == {
        "name": "virtual-keys",
        "mountPath": "/etc/bifrost-batch-exporter/virtual-keys",
        "readOnly": True,
    }
    assert config_of(docs)["virtual_key_dir"] == mount["mountPath"]
    assert "virtual_key_file" not in config_of(docs)


def test_one_key_and_per_tenant_keys_together_are_refused(helm: str) -> None:
    result = subprocess.run(
        [helm, "template", "t", str(CHART), "--set", "auth.virtualKey=sk-bf-one",
         "--set", "auth.virtualKeys.team-a=sk-bf-two"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode != 0 and "cannot be combined with a single virtual key" in result.stderr


def kubelet_service_links(services: list[Doc]) -> dict[str, str]:
    """The variables the kubelet puts into every container of the namespace for these Services when a pod leaves
    enableServiceLinks on (kubelet pkg/kubelet/envvars: FromServices, makeLinkVariables); every other Service an
    IPv6 cluster IP, which the kubelet writes in brackets in the URLs."""
    env: dict[str, str] = {}
    for i, service in enumerate(services):
        name = service["metadata"]["name"].upper().replace("-", "_")
        ip = f"10.96.0.{10 + i}" if i % 2 == 0 else f"fd00:10:96::{10 + i}"
        host = ip if ":" not in ip else f"[{ip}]"
        ports = service["spec"]["ports"]
        env[f"{name}_SERVICE_HOST"] = ip
        env[f"{name}_SERVICE_PORT"] = str(ports[0]["port"])
        for port in ports:
            if port.get("name"):
                env[f"{name}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(port["port"])
        for j, port in enumerate(ports):
            proto = port.get("protocol", "TCP")
            url = f"{proto.lower()}://{host}:{port['port']}"
            if j == 0:
                env[f"{name}_PORT"] = url
            prefix = f"{name}_PORT_{port['port']}_{proto}"
            env |= {prefix: url, f"{prefix}_PROTO": proto.lower(), f"{prefix}_PORT": str(port["port"])}
            env[f"{prefix}_ADDR"] = ip
    return env


@pytest.mark.parametrize(
    ("release", "args"),
    [
        ("bifrost-exporter", []),
        ("bifrost-exporter-prod", []),
        ("x", ["--set", "fullnameOverride=bifrost-exporter", "--set", "shards[0].name=openai",
               "--set", "shards[0].providers={openai}"]),
    ],
)  # fmt: skip
def test_the_service_links_of_a_bifrost_exporter_service_are_not_settings(
    helm: str, release: str, args: list[str], tmp_path: Path
) -> None:
    """A release (or neighbour) whose Service is named bifrost-exporter… makes the kubelet inject
    BIFROST_EXPORTER_…_SERVICE_HOST, _PORT… into pods that keep service links on (the chart's own turn them off:
    test_pods_are_locked_down): a pod outside the chart, or a Docker link, must still start with them."""
    docs = docs_of(run_helm(helm, "template", release, str(CHART), *args).stdout)
    links = kubelet_service_links(of_kind(docs, "Service"))
    assert any(name.startswith("BIFROST_EXPORTER_") and name.endswith("_SERVICE_HOST") for name in links)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_of(docs)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIFROST_EXPORTER_")} | links
    for deployment in of_kind(docs, "Deployment"):
        env |= {name: e["value"] for name, e in env_of(deployment).items() if "value" in e}
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "--check-config", "--config", str(path)],
        capture_output=True, text=True, env=env, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


CROSS_FIELD = [
    ("stale-below-poll", {"stale_after_seconds": 10}, "config.stale_after_seconds (10) must be >="),
    ("resync-below-poll", {"poll_interval_seconds": 120, "resync_interval_seconds": 100}, "resync_interval"),
    ("reserved-path", {"telemetry_path": "/healthz"}, 'config.telemetry_path "/healthz" is served'),
]


@pytest.mark.parametrize(("config", "says"), [pytest.param(c, s, id=i) for i, c, s in CROSS_FIELD])
def test_settings_the_exporter_refuses_together_fail_the_render(
    helm: str, tmp_path: Path, config: Doc, says: str
) -> None:
    """Values that pass the schema one by one but that the exporter refuses together (it would exit 2 at every
    start: CrashLoopBackOff) fail `helm install` with the exporter's own reason."""
    from exporter.settings import ConfigError, load_settings

    with pytest.raises(ConfigError):
        load_settings(config)
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"config": config}))
    stderr = refused_text(helm, "-f", str(values))
    assert says in stderr, stderr
    fine = tmp_path / "fine.yaml"
    fine.write_text(yaml.safe_dump({"config": {"poll_mode": "full", "resync_interval_seconds": 10}}))
    run_helm(helm, "template", "rel", str(CHART), "-f", str(fine))

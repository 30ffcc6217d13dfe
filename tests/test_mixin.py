"""The monitoring mixin (deploy/mixin/): the generated rule files are current, and its _config really drives them."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parent.parent
GENERATE = ROOT / "deploy" / "mixin" / "generate.py"
CHART_RULES = ROOT / "deploy" / "helm" / "bifrost-batch-exporter" / "files" / "mixin-rules.yaml"


def load_generate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mixin_generate", GENERATE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generate() -> ModuleType:
    return load_generate()


def test_generated_files_are_up_to_date(generate: ModuleType) -> None:
    for path, text in generate.render().items():
        assert path.read_text() == text, (
            f"{path.relative_to(ROOT)} is stale: run `python deploy/mixin/generate.py`"
        )


def test_check_mode_passes_on_the_committed_files() -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATE), "--check"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "up to date" in result.stdout


def _groups(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {rule.get("alert") or rule["record"]: rule for group in groups for rule in group["rules"]}


def test_config_changes_selector_labels_thresholds_and_disabled_alerts(generate: ModuleType) -> None:
    config = {
        "selector": 'namespace="llm"',
        "groupLabels": ["cluster"],
        "metadataLabels": ["team"],
        "disabledAlerts": ["BifrostBatchProviderUnsupported"],
        "runbookUrlPattern": "https://wiki.example.com/bifrost#%s",
        "alerts": {
            **generate.default_config()["alerts"],
            "BifrostBatchStuck": {
                "severity": "critical",
                "for": "1h",
                "thresholdSeconds": 180000,
            },
        },
    }
    alerts, rules = generate.rule_groups(config)
    by_name = _groups(alerts)
    assert "BifrostBatchProviderUnsupported" not in by_name
    stuck = by_name["BifrostBatchStuck"]
    assert "> 180000" in stuck["expr"]
    assert stuck["for"] == "1h"
    assert stuck["labels"] == {"severity": "critical"}
    assert stuck["annotations"]["runbook_url"] == "https://wiki.example.com/bifrost#bifrostbatchstuck"
    failed = by_name["BifrostBatchFailed"]
    assert "max by (cluster, provider, metadata_team, class) (" in failed["expr"]
    # the first full list is joined on the configured group labels, provider and replica labels
    for waiting in ("BifrostBatchStuck", "BifrostBatchAtRisk"):
        assert (
            "unless on (cluster, provider, instance, pod)\n"
            'bifrost_batch_exporter_first_sync_complete{namespace="llm"} == 0'
        ) in re.sub(r"\n\s+", "\n", by_name[waiting]["expr"]), by_name[waiting]["expr"]
    for rule in [*by_name.values(), *_groups(rules).values()]:
        selectors = re.findall(r"\{([^}]*)\}", rule["expr"])
        assert selectors, rule
        # the exporter's series by the selector; the SLO records (which keep no namespace) by the one they were made from
        scoped = ('namespace="llm"', 'slo_selector=`namespace="llm"`')
        assert all(s.startswith(scoped) for s in selectors), rule["expr"]
        assert "job=~" not in rule["expr"]
    assert set(_groups(rules)) == {
        name.replace("cluster_namespace_job_provider", "cluster_provider")
        for name in _groups(generate.rule_groups()[1])
    }


METADATA_TEST = """
rule_files: [alerts.yaml]
evaluation_interval: 1m
tests:
  - name: a failed batch is routed by its owner's metadata label
    interval: 1m
    input_series:
      - series: 'bifrost_batch_failures_total{job="bifrost-batch-exporter", instance="a", provider="openai", status="failed", code="token_limit_exceeded", class="provider", metadata_team="ml"}'
        values: '0 0 1x10'
      - series: 'bifrost_batch_failures_total{job="bifrost-batch-exporter", instance="a", provider="openai", status="failed", code="none", class="unknown", metadata_team="search"}'
        values: '0x12'
      - series: 'bifrost_batch_last_failure_info{job="bifrost-batch-exporter", instance="a", provider="openai", status="failed", batch_id="batch_ml_1", code="token_limit_exceeded", class="provider"}'
        values: '_ _ 1x10'
    alert_rule_test:
      - eval_time: 8m
        alertname: BifrostBatchFailed
        exp_alerts:
          - exp_labels: {severity: warning, job: bifrost-batch-exporter, provider: openai, metadata_team: ml, class: provider}
            exp_annotations:
              summary: "Bifrost batch failed on provider openai (provider) (metadata_team ml)"
              description: '1 failure(s) of class provider (capacity, quota or a fault of the provider) among the batches of provider openai, metadata_team ml, job bifrost-batch-exporter in the last 15m (one per distinct error code a batch carries). Failure codes: token_limit_exceeded (1). Last failed batch of this class (on the provider, of any owner): batch_ml_1 (code token_limit_exceeded).'
              runbook_url: "https://github.com/bifrost-batch-exporter/bifrost-batch-exporter/blob/main/docs/runbook.md#bifrostbatchfailed"
"""


def test_metadata_labels_route_a_failed_batch_to_its_owner(generate: ModuleType, tmp_path: Path) -> None:
    """With metadataLabels: [team], promtool proves the alert carries metadata_team (one alert per owning team)."""
    promtool = require_tool("promtool")
    alerts, _ = generate.rule_groups({"metadataLabels": ["team"]})
    (tmp_path / "alerts.yaml").write_text(yaml.safe_dump({"groups": alerts}, sort_keys=False))
    (tmp_path / "test.yaml").write_text(METADATA_TEST)
    result = subprocess.run(
        [promtool, "test", "rules", "test.yaml"], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr


WAITING_TEST = """
rule_files: [alerts.yaml]
evaluation_interval: 1m
tests:
  - name: a team's batch at risk waits for the first full list of the replica that shows it
    interval: 1m
    input_series:
      - series: 'bifrost_batch_at_risk{cluster="eu1", pod="bbe-0", provider="openai", metadata_team="ml"}'
        values: '1x60'
      - series: 'bifrost_batch_at_risk_requests{cluster="eu1", pod="bbe-0", provider="openai", metadata_team="ml"}'
        values: '50x60'
      - series: 'bifrost_batch_exporter_first_sync_complete{cluster="eu1", pod="bbe-0", provider="openai"}'
        values: '0x20 1x40'
    alert_rule_test:
      - eval_time: 25m
        alertname: BifrostBatchAtRisk
        exp_alerts: []
      - eval_time: 30m
        alertname: BifrostBatchAtRisk
        exp_alerts:
          - exp_labels: {severity: warning, cluster: eu1, provider: openai, metadata_team: ml}
            exp_annotations:
              summary: "Bifrost batches of provider openai will miss their expiry (metadata_team ml)"
              description: "1 active batch(es) of provider openai, metadata_team ml, cluster eu1 are expected to finish after they expire: 50 pending requests are lost if they do. Why: per-batch series off (per_batch_metrics). The provider's soonest batch expiry is unknown. The alert waits for the first full list: a replica whose first full list of the provider is still running (bifrost_batch_exporter_first_sync_complete 0) shows only part of the account and is left out until the list completes."
              runbook_url: "https://github.com/bifrost-batch-exporter/bifrost-batch-exporter/blob/main/docs/runbook.md#bifrostbatchatrisk"
"""


def test_first_full_list_is_joined_on_the_configured_labels(generate: ModuleType, tmp_path: Path) -> None:
    """With other group, replica and metadata labels and selector, promtool proves the wait still holds (the join
    ignores the metadata labels the first-list series does not carry) and ends with the first full list."""
    promtool = require_tool("promtool")
    config = {
        "metadataLabels": ["team"],
        "groupLabels": ["cluster"],
        "replicaLabels": ["pod"],
        "selector": 'cluster!=""',
    }
    alerts, _ = generate.rule_groups(config)
    (tmp_path / "alerts.yaml").write_text(yaml.safe_dump({"groups": alerts}, sort_keys=False))
    (tmp_path / "test.yaml").write_text(WAITING_TEST)
    result = subprocess.run(
        [promtool, "test", "rules", "test.yaml"], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_chart_rule_file_has_a_placeholder_for_every_parameter() -> None:
    """Each alert parameter reaches the rule (so a chart override has an effect) and no default is baked in."""
    source = yaml.safe_load(CHART_RULES.read_text())
    alerts = [rule for group in source["groups"] for rule in group["rules"] if "alert" in rule]
    assert alerts
    tokens: dict[str, set[str]] = {}  # per alert name: the SLO alert is one rule per SLO and window pair
    for rule in alerts:
        text = yaml.safe_dump({k: v for k, v in rule.items() if k != "params"})
        tokens.setdefault(rule["alert"], set()).update(
            set(re.findall(r"__([A-Za-z]+)__", text)) - {"SELECTOR", "RUNBOOK"}
        )
        assert "__SELECTOR__" in rule["expr"], rule["alert"]
        assert rule["annotations"]["runbook_url"] == "__RUNBOOK__" + rule["alert"].lower()
    for rule in alerts:
        assert tokens[rule["alert"]] == set(rule["params"]), rule["alert"]
    for group in source["groups"]:
        for rule in group["rules"]:
            assert "bifrost-batch-exporter.*" not in yaml.safe_dump(rule), rule


def test_slo_alerts_follow_their_recording_rules_in_one_group() -> None:
    """Prometheus evaluates a group's rules in order and groups concurrently: in one group, recording rules first,
    every burn-rate alert reads the events recorded in the same evaluation (tests/rules/slo_test.yaml relies on it)."""
    groups = yaml.safe_load((ROOT / "deploy" / "prometheus" / "slos.yaml").read_text())["groups"]
    assert [g["name"] for g in groups] == ["bifrost-batch-exporter.slos"]
    kinds = ["record" if "record" in rule else "alert" for rule in groups[0]["rules"]]
    assert kinds == sorted(kinds, key=lambda kind: kind == "alert") and kinds.count("alert") == 8
    chart = yaml.safe_load(CHART_RULES.read_text())["groups"]
    assert [g["name"] for g in chart][-1] == "bifrost-batch-exporter.slos"


DOC_EXAMPLE_TEST = """
rule_files: [alerts.yaml, rules.yaml]
evaluation_interval: 1m
tests:
  - name: the SLO pages fire with the docs' selector, which names a label the recorded series do not keep (job)
    interval: 1m
    input_series:
      # Half of the batches of namespace llm expire for 90 minutes.
      - series: 'bifrost_batch_finished_total{job="bifrost-batch-exporter", namespace="llm", instance="a:9877", provider="openai", status="completed"}'
        values: '0+1x100'
      - series: 'bifrost_batch_finished_total{job="bifrost-batch-exporter", namespace="llm", instance="a:9877", provider="openai", status="expired"}'
        values: '0+1x100'
      - series: 'process_start_time_seconds{job="bifrost-batch-exporter", namespace="llm", instance="a:9877"}'
        values: '1x100'
      # Another deployment's exporter, outside the selector (namespace staging), burning too: never this mixin's alert.
      - series: 'bifrost_batch_finished_total{job="bifrost-batch-exporter", namespace="staging", instance="s:9877", provider="openai", status="expired"}'
        values: '0+5x100'
      - series: 'process_start_time_seconds{job="bifrost-batch-exporter", namespace="staging", instance="s:9877"}'
        values: '1x100'
    promql_expr_test:
      - expr: cluster_namespace_provider:bifrost_batch_slo_bad:increase1h
        eval_time: 90m
        exp_samples:
          - labels: 'cluster_namespace_provider:bifrost_batch_slo_bad:increase1h{namespace="llm", provider="openai", slo="batches", slo_selector="job=\\"bifrost-batch-exporter\\", namespace=\\"llm\\""}'
            value: 60
    alert_rule_test:
      - eval_time: 90m
        alertname: BifrostBatchErrorBudgetBurn
        exp_alerts:
          - exp_labels: {severity: critical, namespace: llm, provider: openai, slo: batches, long_window: 1h, short_window: 5m}
            exp_annotations:
              summary: Provider openai burns the error budget of its batches SLO 14.4 times too fast
              description: '50% of the batches of provider openai, namespace llm that finished in the last 1h were bad, and in the last 5m too: a burn rate of at least 14.4 (the objective 0.99 allows 1 - 0.99 bad), over at least 20 batches. At this rate the error budget of 30d lasts 30d / 14.4.'
              runbook_url: https://wiki.example.com/runbooks/bifrost#bifrostbatcherrorbudgetburn
          - exp_labels: {severity: critical, namespace: llm, provider: openai, slo: batches, long_window: 6h, short_window: 30m}
            exp_annotations:
              summary: Provider openai burns the error budget of its batches SLO 6 times too fast
              description: '50% of the batches of provider openai, namespace llm that finished in the last 6h were bad, and in the last 30m too: a burn rate of at least 6 (the objective 0.99 allows 1 - 0.99 bad), over at least 20 batches. At this rate the error budget of 30d lasts 30d / 6.'
              runbook_url: https://wiki.example.com/runbooks/bifrost#bifrostbatcherrorbudgetburn
          - exp_labels: {severity: warning, namespace: llm, provider: openai, slo: batches, long_window: 1d, short_window: 2h}
            exp_annotations:
              summary: Provider openai burns the error budget of its batches SLO 3 times too fast
              description: '50% of the batches of provider openai, namespace llm that finished in the last 1d were bad, and in the last 2h too: a burn rate of at least 3 (the objective 0.99 allows 1 - 0.99 bad), over at least 20 batches. At this rate the error budget of 30d lasts 30d / 3.'
              runbook_url: https://wiki.example.com/runbooks/bifrost#bifrostbatcherrorbudgetburn
"""


def _doc_jsonnet_example() -> str:
    """The jsonnet example of docs/mixin.md, verbatim (the first ```jsonnet block)."""
    text = (ROOT / "docs" / "mixin.md").read_text()
    match = re.search(r"```jsonnet\n(.*?)```", text, re.DOTALL)
    assert match, "docs/mixin.md has no jsonnet example"
    return match.group(1)


def test_the_docs_jsonnet_example_pages_on_its_slos(tmp_path: Path) -> None:
    """docs/mixin.md's own example (a selector naming `job`, groupLabels without it) evaluated as a user would, from a
    vendored copy, into its alerts.yaml and rules.yaml: promtool proves the SLO pages (and the 1d ticket) fire for the
    selected namespace,
    and none for a namespace outside the selector (the recorded series keep no `job` nor any label the selector names
    outside groupLabels, so the burn-rate alerts must not apply the selector to them)."""
    import _jsonnet  # type: ignore[import-untyped]  # the jsonnet package ships no type information

    promtool = require_tool("promtool")
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    (vendor / "bifrost-batch-exporter").symlink_to(ROOT, target_is_directory=True)
    source = tmp_path / "my-bifrost-mixin.jsonnet"
    source.write_text(_doc_jsonnet_example())
    out = _jsonnet.evaluate_file(str(source), jpathdir=[str(vendor)])
    for name, text in yaml.safe_load(out).items():
        (tmp_path / name).write_text(text)
    # alerts.yaml stands alone; the burn-rate alerts follow the records they read, in their group of rules.yaml
    alert_groups = yaml.safe_load((tmp_path / "alerts.yaml").read_text())["groups"]
    assert "bifrost_batch_slo_" not in yaml.safe_dump(alert_groups)
    (slos,) = [
        g
        for g in yaml.safe_load((tmp_path / "rules.yaml").read_text())["groups"]
        if g["name"].endswith(".slos")
    ]
    kinds = ["record" if "record" in rule else "alert" for rule in slos["rules"]]
    assert kinds == sorted(kinds, key=lambda kind: kind == "alert") and kinds.count("alert") == 8, kinds
    (tmp_path / "test.yaml").write_text(DOC_EXAMPLE_TEST)
    result = subprocess.run(
        [promtool, "test", "rules", "test.yaml"], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr

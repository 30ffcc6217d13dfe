"""The chart's PrometheusRule, rendered by the real helm: the mixin's rules, tuned by values, never copied."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "bifrost-batch-exporter"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
RECORDING = ROOT / "deploy" / "prometheus" / "rules.yaml"
SLOS = ROOT / "deploy" / "prometheus" / "slos.yaml"
MIXIN_SELECTOR = 'job=~"bifrost-batch-exporter.*"'


@pytest.fixture(scope="module")
def helm() -> str:
    bundled = ROOT / ".tools" / "bin" / "helm"
    if bundled.exists() and os.access(bundled, os.X_OK):
        return str(bundled)
    return require_tool("helm")


def render(helm: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            helm,
            "template",
            "rel",
            str(CHART),
            "--show-only",
            "templates/prometheusrule.yaml",
            "--set",
            "prometheusRule.enabled=true",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
    )


def spec_groups(helm: str, *args: str) -> list[dict[str, Any]]:
    document = yaml.safe_load(render(helm, *args).stdout)
    assert document["kind"] == "PrometheusRule"
    groups: list[dict[str, Any]] = document["spec"]["groups"]
    return groups


def rules_by_name(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {rule.get("alert") or rule["record"]: rule for group in groups for rule in group["rules"]}


def values_file(tmp_path: Path, values: dict[str, Any]) -> str:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({"prometheusRule": {"enabled": True, **values}}))
    return str(path)


def test_chart_renders_exactly_the_generated_rule_files(helm: str) -> None:
    """With the mixin's selector and no overrides, the chart's rules are deploy/prometheus/*.yaml, rule for rule."""
    groups = spec_groups(helm, "--set-string", f"prometheusRule.selector={MIXIN_SELECTOR}")
    expected = [g for path in (ALERTS, RECORDING, SLOS) for g in yaml.safe_load(path.read_text())["groups"]]
    assert groups == expected


def test_default_selector_is_this_releases_job(helm: str) -> None:
    """The Prometheus Operator names a ServiceMonitor target's job after its Service (<fullname>[-<shard>]) and gives
    it the Service's namespace: the default selector names exactly those, never a prefix of other releases' names."""
    shards = "shards[0].name=a,shards[0].providers={openai},shards[1].name=b,shards[1].providers={anthropic}"
    for args, selector in (
        ((), 'namespace="default", job=~"rel-bifrost-batch-exporter"'),
        (
            ("-n", "llm", "--set", shards),
            'namespace="llm", job=~"rel-bifrost-batch-exporter-a|rel-bifrost-batch-exporter-b"',
        ),
    ):
        rules = rules_by_name(spec_groups(helm, *args))
        for name, rule in rules.items():
            assert selector in rule["expr"], name
            assert "__" not in yaml.safe_dump(rule).replace("__name__", ""), f"{name}: a placeholder is left"


def release_rules(helm: str, tmp_path: Path, release: str, namespace: str, *args: str) -> Path:
    """The PrometheusRule of `release` in `namespace` (alerts labelled team=<namespace>), as a plain rule file.
    Annotations are left out: promtool compares them too, and these tests are about which series an alert selects."""
    proc = subprocess.run(
        [helm, "template", release, str(CHART), "-n", namespace, "--show-only", "templates/prometheusrule.yaml",
         "--set", "prometheusRule.enabled=true", "--set", f"prometheusRule.additionalRuleLabels.team={namespace}",
         *args],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    groups = yaml.safe_load(proc.stdout)["spec"]["groups"]
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    path = tmp_path / f"{release}.{namespace}.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


# Release "bifrost-batch-exporter" (the README's name) in namespace team-a, beside the same release name installed by
# another team in team-b and a release in team-a whose name starts with this one's, all under one Prometheus.
NEIGHBOURS_TEST = """
rule_files: [own.rules.yaml]
evaluation_interval: 1m
tests:
  - name: another release's target is down; this release's alerts stay silent
    interval: 1m
    input_series:
      - series: 'up{job="bifrost-batch-exporter", namespace="team-a", instance="a:9877"}'
        values: '1x20'
      - series: 'up{job="bifrost-batch-exporter", namespace="team-b", instance="b:9877"}'
        values: '0x20'
      - series: 'up{job="bifrost-batch-exporter-staging", namespace="team-a", instance="s:9877"}'
        values: '0x20'
    alert_rule_test:
      - eval_time: 10m
        alertname: BifrostBatchExporterDown
        exp_alerts: []
  - name: this release is never scraped while its neighbours are up; its absent() clause still fires
    interval: 1m
    input_series:
      - series: 'up{job="bifrost-batch-exporter", namespace="team-b", instance="b:9877"}'
        values: '1x20'
      - series: 'up{job="bifrost-batch-exporter-staging", namespace="team-a", instance="s:9877"}'
        values: '1x20'
    alert_rule_test:
      - eval_time: 10m
        alertname: BifrostBatchExporterDown
        exp_alerts:
          - exp_labels: {severity: critical, team: team-a, namespace: team-a}
"""

# A sharded release: every shard's Service is a job the default selector names.
SHARDS_TEST = """
rule_files: [own.rules.yaml]
evaluation_interval: 1m
tests:
  - name: one shard of two is down
    interval: 1m
    input_series:
      - series: 'up{job="bifrost-batch-exporter-a", namespace="team-a", instance="a:9877"}'
        values: '1x20'
      - series: 'up{job="bifrost-batch-exporter-b", namespace="team-a", instance="b:9877"}'
        values: '0x20'
    alert_rule_test:
      - eval_time: 10m
        alertname: BifrostBatchExporterDown
        exp_alerts:
          - exp_labels: {severity: critical, team: team-a, namespace: team-a, job: bifrost-batch-exporter-b}
"""


@pytest.mark.parametrize(
    ("args", "test"),
    [
        ((), NEIGHBOURS_TEST),
        (
            (
                "--set",
                "shards[0].name=a,shards[0].providers={openai},shards[1].name=b,shards[1].providers={anthropic}",
            ),
            SHARDS_TEST,
        ),
    ],
    ids=["neighbour-releases", "shards"],
)
def test_default_selector_alerts_on_this_release_only(
    helm: str, tmp_path: Path, args: tuple[str, ...], test: str
) -> None:
    """The default selector once was job=~"<fullname>.*": the other team's release and the -staging one paged team-a,
    and their `up` series kept team-a's absent() clause quiet while team-a's release was not scraped at all."""
    promtool = require_tool("promtool")
    release_rules(helm, tmp_path, "bifrost-batch-exporter", "team-a", *args).rename(
        tmp_path / "own.rules.yaml"
    )
    (tmp_path / "test.yaml").write_text(test)
    result = subprocess.run(
        [promtool, "test", "rules", "test.yaml"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_disabled_alerts_are_left_out(helm: str, tmp_path: Path) -> None:
    values = values_file(
        tmp_path, {"disabled": {"BifrostBatchProviderUnsupported": True, "BifrostBatchStuck": False}}
    )
    rules = rules_by_name(spec_groups(helm, "-f", values))
    assert "BifrostBatchProviderUnsupported" not in rules
    assert "BifrostBatchStuck" in rules
    assert "BifrostBatchFailed" in rules


def test_per_alert_parameters_go_through_the_mixin_expression(helm: str, tmp_path: Path) -> None:
    values = values_file(
        tmp_path,
        {
            "alerts": {
                "BifrostBatchStuck": {"thresholdSeconds": 180000, "for": "30m"},
                "BifrostBatchExpired": {"window": "3h", "keepFiringFor": "0m"},
                "BifrostBatchFailed": {"severity": "critical", "for": "2m", "keepFiringFor": "1h"},
                "BifrostBatchExporterDown": {"for": "0m"},
                "BifrostBatchErrorBudgetBurn": {
                    "batchesObjective": 0.995,
                    "requestsMinEvents": 5000,
                    "pageSeverity": "warning",
                },
            }
        },
    )
    rules = rules_by_name(spec_groups(helm, "-f", values))
    stuck = rules["BifrostBatchStuck"]
    assert stuck["expr"].rstrip().endswith("> 180000")
    assert stuck["for"] == "30m"
    assert "180000 s" in stuck["annotations"]["description"]
    expired = rules["BifrostBatchExpired"]
    assert expired["expr"].count("[3h]") == 1 and "offset 3h" in expired["expr"]
    assert "last 3h" in expired["annotations"]["description"]
    assert "keep_firing_for" not in expired
    failed = rules["BifrostBatchFailed"]
    assert failed["labels"]["severity"] == "critical"
    assert failed["for"] == "2m"
    assert failed["keep_firing_for"] == "1h"
    # the SLO alert: every window pair takes the overridden objective, minimum and severity
    burns = [
        r
        for g in spec_groups(helm, "-f", values)
        for r in g["rules"]
        if r.get("alert") == "BifrostBatchErrorBudgetBurn"
    ]
    assert len(burns) == 8
    for burn in burns:
        slo = burn["labels"]["slo"]
        assert ("(1 - 0.995)" in burn["expr"]) == (slo == "batches")
        assert (">= 5000" in burn["expr"]) == (slo == "requests")
        assert (
            burn["labels"]["severity"] == "warning"
        )  # the page pairs' overridden severity; tickets' default
    assert "for" not in rules["BifrostBatchExporterDown"]
    # untouched alerts keep the mixin's defaults
    defaults = rules_by_name(yaml.safe_load(ALERTS.read_text())["groups"])
    assert rules["BifrostBatchAtRisk"]["for"] == defaults["BifrostBatchAtRisk"]["for"]


def test_additional_labels_and_runbook_prefix(helm: str, tmp_path: Path) -> None:
    values = values_file(
        tmp_path,
        {
            "additionalRuleLabels": {"team": "llm-platform", "severity": "page"},
            "runbookUrlPrefix": "https://wiki.example.com/runbooks/bifrost#",
        },
    )
    rules = rules_by_name(spec_groups(helm, "-f", values))
    for name, rule in rules.items():
        if "alert" not in rule:
            # recording rules keep only their own labels (the SLO records their `slo` and the selector they read),
            # never the alerts' extra ones
            assert set(rule.get("labels", {})) <= {"slo", "slo_selector"}, name
            continue
        assert rule["labels"]["team"] == "llm-platform", name
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, "a rule's own severity wins"
        assert (
            rule["annotations"]["runbook_url"] == f"https://wiki.example.com/runbooks/bifrost#{name.lower()}"
        )


def test_extra_rules_get_their_own_group(helm: str, tmp_path: Path) -> None:
    extra = {
        "alert": "MyBatchBacklog",
        "expr": 'sum(bifrost_batches{status="validating"}) > 100',
        "for": "1h",
    }
    values = values_file(tmp_path, {"extraRules": [extra]})
    groups = spec_groups(helm, "-f", values)
    assert groups[-1] == {"name": "rel-bifrost-batch-exporter.extra", "rules": [extra]}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"disabled": {"BifrostBatchExpiringSoon": True}},
            "prometheusRule.disabled.BifrostBatchExpiringSoon: no such alert",
        ),
        (
            {"alerts": {"BifrostBatchStuck": {"threshold": 1}}},
            "prometheusRule.alerts.BifrostBatchStuck.threshold: no such parameter",
        ),
    ],
)
def test_unknown_alerts_and_parameters_fail_the_render(
    helm: str, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    proc = render(helm, "-f", values_file(tmp_path, values), check=False)
    assert proc.returncode != 0
    assert message in proc.stderr


def test_schema_rejects_a_malformed_override(helm: str, tmp_path: Path) -> None:
    proc = render(
        helm, "-f", values_file(tmp_path, {"alerts": {"BifrostBatchFailed": {"for": "soon"}}}), check=False
    )
    assert proc.returncode != 0
    assert "for" in proc.stderr


def test_rendered_rules_with_overrides_pass_promtool(helm: str, tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    values = values_file(
        tmp_path,
        {
            "selector": 'namespace="llm", job="batch-exporter"',
            "disabled": {"BifrostBatchProviderUnsupported": True},
            "alerts": {
                "BifrostBatchStuck": {"thresholdSeconds": 180000},
                "BifrostBatchAtRisk": {"for": "1h"},
            },
            "additionalRuleLabels": {"team": "llm-platform"},
            "extraRules": [{"record": "job:bifrost_batches:sum", "expr": "sum by (job) (bifrost_batches)"}],
        },
    )
    rules_file = tmp_path / "rendered.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": spec_groups(helm, "-f", values)}, sort_keys=False))
    result = subprocess.run(
        [promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_missing_rule_source_fails_loudly(helm: str, tmp_path: Path) -> None:
    copy = tmp_path / "chart"
    shutil.copytree(CHART, copy, symlinks=False)
    (copy / "files" / "mixin-rules.yaml").unlink()
    proc = subprocess.run(
        [helm, "template", "rel", str(copy), "--set", "prometheusRule.enabled=true"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0
    assert "files/mixin-rules.yaml" in proc.stderr


SERVICE_SELECTOR_TEST = """
rule_files: [rendered.yaml]
evaluation_interval: 1m
tests:
  - name: the SLO pages fire with a selector on the Service's label, which the recorded series do not keep
    interval: 1m
    input_series:
      # Half of the batches of this release's targets expire for 90 minutes.
      - series: 'bifrost_batch_finished_total{job="rel-bifrost-batch-exporter", service="rel-bifrost-batch-exporter", namespace="llm", instance="a:9877", pod="p", provider="openai", status="completed"}'
        values: '0+1x100'
      - series: 'bifrost_batch_finished_total{job="rel-bifrost-batch-exporter", service="rel-bifrost-batch-exporter", namespace="llm", instance="a:9877", pod="p", provider="openai", status="expired"}'
        values: '0+1x100'
      - series: 'process_start_time_seconds{job="rel-bifrost-batch-exporter", service="rel-bifrost-batch-exporter", namespace="llm", instance="a:9877", pod="p"}'
        values: '1x100'
    alert_rule_test:
      - eval_time: 90m
        alertname: BifrostBatchErrorBudgetBurn
        exp_alerts:
          - exp_labels: {severity: critical, namespace: llm, job: rel-bifrost-batch-exporter, provider: openai, slo: batches, long_window: 1h, short_window: 5m}
            exp_annotations:
              summary: Provider openai burns the error budget of its batches SLO 14.4 times too fast
              description: '50% of the batches of provider openai, namespace llm, job rel-bifrost-batch-exporter that finished in the last 1h were bad, and in the last 5m too: a burn rate of at least 14.4 (the objective 0.99 allows 1 - 0.99 bad), over at least 20 batches. At this rate the error budget of 30d lasts 30d / 14.4.'
              runbook_url: https://github.com/bifrost-batch-exporter/bifrost-batch-exporter/blob/main/docs/runbook.md#bifrostbatcherrorbudgetburn
          - exp_labels: {severity: critical, namespace: llm, job: rel-bifrost-batch-exporter, provider: openai, slo: batches, long_window: 6h, short_window: 30m}
            exp_annotations:
              summary: Provider openai burns the error budget of its batches SLO 6 times too fast
              description: '50% of the batches of provider openai, namespace llm, job rel-bifrost-batch-exporter that finished in the last 6h were bad, and in the last 30m too: a burn rate of at least 6 (the objective 0.99 allows 1 - 0.99 bad), over at least 20 batches. At this rate the error budget of 30d lasts 30d / 6.'
              runbook_url: https://github.com/bifrost-batch-exporter/bifrost-batch-exporter/blob/main/docs/runbook.md#bifrostbatcherrorbudgetburn
          - exp_labels: {severity: warning, namespace: llm, job: rel-bifrost-batch-exporter, provider: openai, slo: batches, long_window: 1d, short_window: 2h}
            exp_annotations:
              summary: Provider openai burns the error budget of its batches SLO 3 times too fast
              description: '50% of the batches of provider openai, namespace llm, job rel-bifrost-batch-exporter that finished in the last 1d were bad, and in the last 2h too: a burn rate of at least 3 (the objective 0.99 allows 1 - 0.99 bad), over at least 20 batches. At this rate the error budget of 30d lasts 30d / 3.'
              runbook_url: https://github.com/bifrost-batch-exporter/bifrost-batch-exporter/blob/main/docs/runbook.md#bifrostbatcherrorbudgetburn
"""


def test_slo_alerts_fire_with_a_selector_on_a_label_the_records_do_not_keep(
    helm: str, tmp_path: Path
) -> None:
    """prometheusRule.selector on the ServiceMonitor's `service` label (not a group label, so the SLO recording rules
    drop it): promtool proves the burn-rate pages still fire, reading the records by the selector they were made
    from."""
    promtool = require_tool("promtool")
    values = values_file(tmp_path, {"selector": 'service="rel-bifrost-batch-exporter"'})
    rules_file = tmp_path / "rendered.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": spec_groups(helm, "-f", values)}, sort_keys=False))
    (tmp_path / "test.yaml").write_text(SERVICE_SELECTOR_TEST)
    result = subprocess.run(
        [promtool, "test", "rules", "test.yaml"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr

"""Prometheus rule files: promtool-clean, every alert unit-tested and annotated, on the metrics contract."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require_tool
from tests.harness import BATCH_GAUGES

ROOT = Path(__file__).resolve().parent.parent
ALERTS_FILE = ROOT / "deploy" / "prometheus" / "alerts.yaml"
RULES_FILE = ROOT / "deploy" / "prometheus" / "rules.yaml"
SLOS_FILE = ROOT / "deploy" / "prometheus" / "slos.yaml"
RULE_TESTS_DIR = ROOT / "tests" / "rules"
RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_URL_BASE = (
    "https://github.com/bifrost-batch-exporter/bifrost-batch-exporter/blob/main/docs/runbook.md#"
)

# Metric families of the metrics contract (v2). Histograms are listed by their base name.
CONTRACT_METRICS: frozenset[str] = frozenset(
    {
        "bifrost_batches",
        "bifrost_batch_requests",
        "bifrost_batch_oldest_created_timestamp_seconds",
        "bifrost_batch_next_expiry_timestamp_seconds",
        "bifrost_batch_finished_total",
        "bifrost_batch_finished_requests_total",
        "bifrost_batch_failures_total",
        "bifrost_batch_last_failure_info",
        "bifrost_batch_last_finished_timestamp_seconds",
        "bifrost_batch_duration_seconds",
        "bifrost_batch_upstream_latency_seconds",
        "bifrost_batch_cache_lookups_total",
        "bifrost_batch_cache_hits_total",
        "bifrost_batch_cache_similarity",
        "bifrost_batch_job_info",
        "bifrost_batch_job_requests",
        "bifrost_batch_job_created_timestamp_seconds",
        "bifrost_batch_job_expires_timestamp_seconds",
        "bifrost_batch_job_progress_ratio",
        "bifrost_batch_job_projected_completion_timestamp_seconds",
        "bifrost_batch_job_at_risk_info",
        "bifrost_batch_at_risk",
        "bifrost_batch_at_risk_requests",
        "bifrost_batch_stage_duration_seconds",
        "bifrost_batch_exporter_up",
        "bifrost_batch_exporter_last_success_timestamp_seconds",
        "bifrost_batch_exporter_poll_duration_seconds",
        "bifrost_batch_exporter_polls_total",
        "bifrost_batch_exporter_poll_errors_total",
        "bifrost_batch_exporter_requests_total",
        "bifrost_batch_exporter_last_resync_timestamp_seconds",
        "bifrost_batch_exporter_provider_supported",
        "bifrost_batch_exporter_truncated",
        "bifrost_batch_exporter_coverage",
        "bifrost_batch_exporter_view_keys",
        "bifrost_batch_exporter_per_batch_dropped",
        "bifrost_batch_exporter_build_info",
        # The first full list (v3, README "Polling"): what the batch-data alerts wait for, and the dashboard shows
        "bifrost_batch_exporter_first_sync_complete",
        "bifrost_batch_exporter_first_sync_batches",
        "bifrost_batch_exporter_first_sync_pages",
        "bifrost_batch_exporter_first_sync_estimated_completion_timestamp_seconds",
        # What batches cost (v3, cost_metrics; deploy/mixin/cost.libsonnet)
        "bifrost_batch_cost_dollars_total",
        "bifrost_batch_tokens_total",
        "bifrost_batch_settled_requests_total",
        "bifrost_batch_settlements_total",
        "bifrost_batch_exporter_cost_up",
        "bifrost_batch_exporter_settlements_awaited",
    }
)
# v1 names that v2 removed: nothing may read them any more.
REMOVED_V1_METRICS = frozenset(
    {"bifrost_batch_request_counts", "bifrost_batch_job_request_counts", "bifrost_batch_exporter_pages_total"}
)
HISTOGRAMS = frozenset(
    {
        "bifrost_batch_duration_seconds",
        "bifrost_batch_upstream_latency_seconds",
        "bifrost_batch_cache_similarity",
        "bifrost_batch_stage_duration_seconds",
    }
)
CONTRACT_LABELS = frozenset(
    {
        "provider",
        "status",
        "outcome",
        "reason",
        "code",
        "class",
        "hit_type",
        "stage",
        "endpoint",
        "le",
        "batch_id",
    }
    | {"model", "type", "result", "awaiting"}  # the cost families
)
# Labels the SLO recording rules add (which SLO a recorded series belongs to); never from the exporter.
RULE_LABELS = frozenset({"slo"})
# Labels the rules add from the scrape (the mixin's default group and replica labels); never from the exporter.
TARGET_LABELS = frozenset({"cluster", "namespace", "job", "instance", "pod"})

EXPECTED_ALERTS = {
    "BifrostBatchExporterDown",
    "BifrostBatchExporterPollFailing",
    "BifrostBatchCredentialsRejected",
    "BifrostBatchExporterDataStale",
    "BifrostBatchFirstSyncSlow",
    "BifrostBatchProviderTruncated",
    "BifrostBatchProviderUnsupported",
    "BifrostBatchFailed",
    "BifrostBatchInputRejected",
    "BifrostBatchExpired",
    "BifrostBatchStuck",
    "BifrostBatchAtRisk",
    "BifrostBatchErrorBudgetBurn",
    "BifrostBatchSettlementsMissing",  # deploy/mixin/cost.libsonnet
    "BifrostBatchCostLookupsFailing",
}
# Retired: ExpiringSoon in favour of BifrostBatchAtRisk (issue 14: it fired for every batch in its last hour, done or
# not); HighRequestFailureRatio in favour of the request SLO's burn-rate alert (issue 21).
RETIRED_ALERTS = {"BifrostBatchExpiringSoon", "BifrostBatchHighRequestFailureRatio"}
# The SLO alerts live in slos.yaml beside the recording rules they read.
SLO_ALERTS = {"BifrostBatchErrorBudgetBurn"}
# Gauges of the batches a poll shows: while a provider's first full list runs they cover only the part listed so
# far, not refreshed until the list ends (README "Polling"). An alert reading one waits for the first full list.
ACCOUNT_GAUGES = BATCH_GAUGES | frozenset(
    {
        "bifrost_batch_job_info",
        "bifrost_batch_job_requests",
        "bifrost_batch_job_created_timestamp_seconds",
        "bifrost_batch_job_expires_timestamp_seconds",
        "bifrost_batch_job_progress_ratio",
        "bifrost_batch_job_projected_completion_timestamp_seconds",
        "bifrost_batch_job_at_risk_info",
    }
)
# The alerts that read them today (a new one joins this list deliberately, with its promtool tests).
WAITING_ALERTS = {"BifrostBatchStuck", "BifrostBatchAtRisk"}
_FIRST_SYNC_GATE = re.compile(
    r"unless on \(cluster, namespace, job, provider, instance, pod\)\s+"
    r"bifrost_batch_exporter_first_sync_complete\{[^}]*\} == 0"
)

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^}]*\}")
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """Series names a PromQL expression reads: `bifrost…` and recording-rule names (`lvl:metric:ops`)."""
    stripped = _MATCHERS.sub(" ", _STRING.sub(" ", expr))
    return {name for name in _NAME.findall(stripped) if "bifrost" in name}


def family(name: str) -> str:
    """The contract family of a series name (histogram `_bucket`/`_sum`/`_count` map to their base)."""
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and base in HISTOGRAMS:
            return base
    return name


def load_rules(path: Path) -> list[dict[str, Any]]:
    data = yaml.safe_load(path.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule: alerts.yaml's and slos.yaml's (several rules may share a name: the burn-rate pairs)."""
    return [r for path in (ALERTS_FILE, SLOS_FILE) for r in load_rules(path) if "alert" in r]


def alert_names() -> list[str]:
    return sorted({r["alert"] for r in alert_rules()})


def recording_rule_names() -> set[str]:
    return {r["record"] for path in (RULES_FILE, SLOS_FILE) for r in load_rules(path) if "record" in r}


def runbook_anchors() -> set[str]:
    """GitHub's heading anchors of docs/runbook.md (lower case, spaces to dashes, punctuation dropped)."""
    anchors = set()
    for line in RUNBOOK.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-"))
    return anchors


def rule_test_files() -> list[Path]:
    return sorted(RULE_TESTS_DIR.glob("*.yaml"))


def test_promtool_check_rules_is_clean() -> None:
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, "check", "rules", str(ALERTS_FILE), str(RULES_FILE), str(SLOS_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNING" not in output.upper(), output
    assert output.count("SUCCESS") == 3, output


def test_there_are_promtool_unit_tests() -> None:
    assert rule_test_files(), "no promtool unit tests in tests/rules/"


# One test per file: the workers run them side by side, and no single promtool run nears its timeout on a busy
# machine (the alert tests alone evaluate hours of series at one-minute steps).
@pytest.mark.parametrize("path", rule_test_files(), ids=lambda path: path.name)
def test_promtool_unit_tests_pass(path: Path) -> None:
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, "test", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("SUCCESS") == 1, output


def test_the_alerts_are_the_listed_ones_and_the_retired_ones_are_gone() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert names == EXPECTED_ALERTS
    assert not names & RETIRED_ALERTS


def test_rule_files_are_loaded_by_the_unit_tests() -> None:
    loaded: set[Path] = set()
    for path in rule_test_files():
        for rule_file in yaml.safe_load(path.read_text())["rule_files"]:
            loaded.add((path.parent / rule_file).resolve())
    assert loaded == {ALERTS_FILE.resolve(), RULES_FILE.resolve(), SLOS_FILE.resolve()}


def _unit_test_cases() -> list[tuple[str, str, list[Any]]]:
    """(test name, alertname, exp_alerts) for every alert_rule_test of every unit-test file."""
    return [(name, alertname, exp) for name, alertname, _, exp in _timed_cases()]


def _timed_cases() -> list[tuple[str, str, float, list[Any]]]:
    """(test name, alertname, eval time in seconds, exp_alerts) for every alert_rule_test."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    cases = []
    for path in rule_test_files():
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                at = sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smhd])", str(case["eval_time"])))
                cases.append((test["name"], case["alertname"], float(at), case.get("exp_alerts") or []))
    return cases


@pytest.mark.parametrize("alert", alert_names())
def test_every_alert_resolves_when_its_cause_goes_away(alert: str) -> None:
    """No alert that only a silence can stop: a test named "... resolves ..." shows it firing, then gone later in the
    same series (the cause went away or was acknowledged by configuration)."""
    resolving = [
        (name, at, exp)
        for name, alertname, at, exp in _timed_cases()
        if alertname == alert and "resolves" in name
    ]
    assert resolving, f"{alert}: no unit test named '... resolves ...'"

    def fires_then_resolves(test: str) -> bool:
        firing = [at for name, at, exp in resolving if name == test and exp]
        silent = [at for name, at, exp in resolving if name == test and not exp]
        return bool(firing and silent and max(silent) > min(firing))

    assert any(fires_then_resolves(test) for test in {name for name, _, _ in resolving}), alert


@pytest.mark.parametrize("alert", alert_names())
def test_every_alert_is_unit_tested_firing_healthy_and_across_restart(alert: str) -> None:
    cases = [(name, exp) for name, alertname, exp in _unit_test_cases() if alertname == alert]
    firing = [exp for _, exp in cases if exp]
    assert firing, f"{alert}: no unit test shows it firing"
    for exp in firing:
        for expected in exp:
            # exact labels and all three annotations are asserted
            assert expected["exp_labels"]["severity"], alert
            assert set(expected["exp_annotations"]) == {"summary", "description", "runbook_url"}, alert
    silent_names = [name for name, exp in cases if not exp]
    assert any("healthy" in name for name in silent_names), f"{alert}: no unit test on healthy input"
    assert any("restart" in name for name in silent_names), (
        f"{alert}: no unit test across an exporter restart"
    )


@pytest.mark.parametrize(
    "rule", alert_rules(), ids=lambda r: r["alert"] + str(r["labels"].get("long_window", ""))
)
def test_alert_labels_and_annotations(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook_url"}
    if rule["alert"] != "BifrostBatchExporterDown":  # about the scrape target, not a provider
        assert "$labels.provider" in annotations["summary"]
        assert "$labels.provider" in annotations["description"]
    assert "$value" in annotations["description"]
    url = annotations["runbook_url"]
    assert url.startswith(RUNBOOK_URL_BASE)
    anchor = url.removeprefix(RUNBOOK_URL_BASE)
    assert anchor == rule["alert"].lower()
    assert anchor in runbook_anchors(), f"docs/runbook.md has no section #{anchor}"


def _outer_by(expr: str) -> list[str]:
    """Labels of the first `by (...)` of an expression: the aggregation that sets the alert's labels."""
    match = re.search(r"\bby\s*\(([^)]*)\)", expr)
    assert match, expr
    return [label.strip() for label in match.group(1).split(",")]


@pytest.mark.parametrize(
    "rule", alert_rules(), ids=lambda r: r["alert"] + str(r["labels"].get("long_window", ""))
)
def test_alerts_aggregate_by_the_group_labels_and_provider(rule: dict[str, Any]) -> None:
    """Two clusters or namespaces never collapse into one alert; HA replicas (instance, pod) do."""
    by = _outer_by(rule["expr"])
    assert by[:3] == ["cluster", "namespace", "job"], by
    if rule["alert"] != "BifrostBatchExporterDown":
        assert "provider" in by, by
    assert not {"instance", "pod"} & set(by), by


def test_slos_read_only_recent_transitions_and_page_on_two_windows() -> None:
    """The SLIs are increases of the transition counters (a bad day last week does not burn today's budget), and
    every burn-rate rule needs its long and its short window and a minimum of events."""
    records = [r for r in load_rules(SLOS_FILE) if "record" in r]
    assert records
    for rule in records:
        assert (
            "increase(bifrost_batch_finished" in rule["expr"]
            or "increase(bifrost_batch_failures" in rule["expr"]
        )
        assert "bifrost_batch_requests{" not in rule["expr"]  # the gauge of every listed batch: all history
        assert rule["labels"]["slo"] in ("batches", "requests")
    burns = [r for r in alert_rules() if r["alert"] == "BifrostBatchErrorBudgetBurn"]
    pairs = {(r["labels"]["slo"], r["labels"]["long_window"], r["labels"]["short_window"]) for r in burns}
    expected_pairs = {("1h", "5m"), ("6h", "30m"), ("1d", "2h"), ("3d", "6h")}
    assert pairs == {(slo, long, short) for slo in ("batches", "requests") for long, short in expected_pairs}
    for rule in burns:
        long, short = rule["labels"]["long_window"], rule["labels"]["short_window"]
        assert f"increase{long}" in rule["expr"] and f"increase{short}" in rule["expr"]
        assert ">=" in rule["expr"]  # the low-volume guard
        assert rule["labels"]["severity"] == ("critical" if long in ("1h", "6h") else "warning")


def _gauge_reads(expr: str) -> list[str]:
    """Each account gauge selector an expression reads, with what follows it up to the next selector."""
    return [
        m.group(0)
        for m in re.finditer(
            r"\b([a-z_:]+)\{[^}]*\}(?:\s+unless on \([^)]*\)\s+[a-z_]+\{[^}]*\} == 0)?", expr
        )
        if m.group(1) in ACCOUNT_GAUGES
    ]


@pytest.mark.parametrize(
    "rule", alert_rules(), ids=lambda r: r["alert"] + str(r["labels"].get("long_window", ""))
)
def test_alerts_on_account_gauges_wait_for_the_first_full_list(rule: dict[str, Any]) -> None:
    """Every read of an account gauge, in the expression and in the description's queries, leaves out each replica
    whose first full list of the provider is still running (per replica: an HA pair's complete replica still
    alerts); the description says so. Counter alerts read transitions, which a partial list does not invent."""
    description = rule["annotations"]["description"]
    reads = _gauge_reads(rule["expr"]) + [
        r for query in re.findall(r"`([^`]*)`", description) for r in _gauge_reads(query)
    ]
    if rule["alert"] not in WAITING_ALERTS:
        assert not reads, f"{rule['alert']} reads {reads}: add it to WAITING_ALERTS, gated"
        assert not re.search(
            r"unless on \([^)]*\)\s+bifrost_batch_exporter_first_sync_complete", rule["expr"]
        ), f"{rule['alert']} reads no account gauge: it need not wait for the first full list"
        return
    assert reads, rule["alert"]
    for read in reads:
        assert _FIRST_SYNC_GATE.search(read), (
            f"{rule['alert']}: {read!r} does not wait for the first full list"
        )
    assert "waits for the first full list" in description
    assert "bifrost_batch_exporter_first_sync_complete" in description


@pytest.mark.parametrize("alert", sorted(WAITING_ALERTS))
def test_waiting_alerts_are_unit_tested_silent_while_the_first_list_runs_then_firing(alert: str) -> None:
    """A promtool case in which the alert's condition holds while first_sync_complete is 0 (no alert), then fires
    once it is 1."""
    cases = [(name, at, exp) for name, alertname, at, exp in _timed_cases() if alertname == alert]
    waiting = {name for name, _, _ in cases if "waits for the first full list" in name}
    assert waiting, f"{alert}: no unit test named '... waits for the first full list ...'"
    for test in waiting:
        timeline = sorted((at, bool(exp)) for name, at, exp in cases if name == test)
        assert timeline[0] == (timeline[0][0], False) and timeline[-1][1], (test, timeline)


def test_exporter_down_covers_down_and_absent_targets() -> None:
    (rule,) = [r for r in alert_rules() if r["alert"] == "BifrostBatchExporterDown"]
    assert "up{" in rule["expr"]
    assert "absent(up{" in rule["expr"]


@pytest.mark.parametrize("alert", ["BifrostBatchFailed", "BifrostBatchInputRejected", "BifrostBatchExpired"])
def test_failure_descriptions_name_the_code_and_the_last_batch(alert: str) -> None:
    """The unit tests' expected descriptions carry the batch id and code of the input's last_failure_info (of the
    alert's failure class, where it has one; else they say that the provider's latest failure is another class's)."""
    (rule,) = [r for r in alert_rules() if r["alert"] == alert]
    assert "bifrost_batch_last_failure_info" in rule["annotations"]["description"]
    assert "bifrost_batch_failures_total" in rule["annotations"]["description"]
    checked = 0
    for path in rule_test_files():
        for test in yaml.safe_load(path.read_text())["tests"]:
            infos = [
                dict(re.findall(r'(\w+)="([^"]*)"', s["series"]))
                for s in test.get("input_series", [])
                if s["series"].startswith("bifrost_batch_last_failure_info{")
            ]
            for case in test.get("alert_rule_test", []):
                if case["alertname"] != alert:
                    continue
                for expected in case.get("exp_alerts") or []:
                    description = expected["exp_annotations"]["description"]
                    labels = expected["exp_labels"]
                    mine = [
                        i
                        for i in infos
                        if i.get("cluster", "") == labels.get("cluster", "")
                        and i.get("class", "") == labels.get("class", i.get("class", ""))
                    ]
                    if not mine and "class" in labels:
                        assert "not the latest failure of the provider" in description, description
                        continue
                    assert mine, f"{test['name']}: no bifrost_batch_last_failure_info input"
                    assert any(i["batch_id"] in description and i["code"] in description for i in mine), (
                        description
                    )
                    checked += 1
    assert checked, f"{alert}: no firing unit test"


def _read_series(expr: str) -> set[str]:
    """metric_names() plus `up`, the one series the rules read that the exporter does not expose."""
    stripped = _STRING.sub(" ", expr)
    return metric_names(expr) | ({"up"} if re.search(r"\bup\{", stripped) else set())


@pytest.mark.parametrize("path", [ALERTS_FILE, RULES_FILE, SLOS_FILE], ids=lambda p: p.name)
def test_rules_read_only_contract_metrics(path: Path) -> None:
    allowed = CONTRACT_METRICS | recording_rule_names() | {"up"}
    for rule in load_rules(path):
        names = _read_series(rule["expr"]) | metric_names(str(rule.get("annotations", {})))
        assert names, rule
        unknown = {n for n in names if family(n) not in allowed}
        assert not unknown, (
            f"{rule.get('alert') or rule.get('record')}: not in the metrics contract: {unknown}"
        )
        for labels in re.findall(r"(?:by|on|without|ignoring)\s*\(([^)]*)\)", rule["expr"]):
            for label in (x.strip() for x in labels.split(",") if x.strip()):  # `on ()`: no label to check
                assert label in CONTRACT_LABELS | TARGET_LABELS | RULE_LABELS, label


def test_no_v1_name_is_left_in_rules_tests_or_runbook() -> None:
    texts = [ALERTS_FILE, RULES_FILE, SLOS_FILE, RUNBOOK, *rule_test_files()]
    for path in texts:
        text = path.read_text()
        for name in REMOVED_V1_METRICS:
            assert name not in text, f"{path.name} still names {name}"


def test_alert_files_do_not_depend_on_each_other() -> None:
    """alerts.yaml can be loaded alone (no alert reads a recorded series); slos.yaml holds the SLO recording rules
    its burn-rate alerts read, and reads nothing rules.yaml records."""
    recorded = recording_rule_names()
    for rule in load_rules(ALERTS_FILE):
        assert not metric_names(rule["expr"]) & recorded, rule["alert"]
    own = {r["record"] for r in load_rules(SLOS_FILE) if "record" in r}
    for rule in load_rules(SLOS_FILE):
        assert not (metric_names(rule["expr"]) & recorded) - own, rule.get("alert") or rule.get("record")
    assert {r["alert"] for r in load_rules(SLOS_FILE) if "alert" in r} == SLO_ALERTS


def test_recording_rule_names_follow_the_convention() -> None:
    """level:metric:operations, the level naming the labels kept (the mixin's group labels and provider)."""
    for name in recording_rule_names():
        level, metric, operation = name.split(":")
        assert level.startswith("cluster_namespace_job_provider"), name
        assert metric.startswith("bifrost_batch"), name
        assert operation, name

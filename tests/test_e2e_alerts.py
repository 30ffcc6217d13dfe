"""End to end with real parts: simulator → exporter (subprocess) → Prometheus (rules) → Alertmanager.

1. a batch made to fail in the simulator makes BifrostBatchFailed reach Alertmanager with its provider and class;
2. the simulator answering 500 makes BifrostBatchExporterPollFailing fire and reach Alertmanager;
3. the SLOs: batches that complete and expire in the simulator are recorded as good and bad events by the SLO
   recording rules (the ratio checked by hand), and the batch SLO's 14.4x burn-rate alert reaches Alertmanager.

Test override (and the only one): Prometheus loads copies of deploy/prometheus/alerts.yaml and slos.yaml in which
every `for:` duration is rewritten to 1s by `alerts_with_short_for()` below, so that PollFailing fires within seconds
instead of after 5 minutes. The expressions, labels and annotations are the shipped ones; `test_override_changes_only_for`
proves it. rules.yaml is loaded unchanged. Waits poll the APIs with deadlines; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.simulator import Simulator
from tests.conftest import require_tool
from tests.promstack import (
    Alertmanager,
    ManagedProcess,
    Prometheus,
    alertmanager_binary,
    start_exporter,
    static_scrape,
    wait_until,
)
from tests.test_rules import ALERTS_FILE, RULES_FILE, SLOS_FILE

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
SUPPORTED = ["openai", "anthropic", "azure", "bedrock", "gemini", "vertex"]
UNSUPPORTED = ["cohere", "mistral"]
JOB = "bifrost-batch-exporter"
SHORT_FOR = "1s"
ALERT_DEADLINE = 60.0


def alerts_with_short_for(source: Path, target: Path, duration: str = SHORT_FOR) -> Path:
    """A copy of an alert rule file with every `for:` set to `duration`; nothing else changes."""
    data = yaml.safe_load(source.read_text())
    for group in data["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = duration
    target.write_text(yaml.safe_dump(data, sort_keys=False))
    return target


@dataclass
class Stack:
    sim: Simulator
    exporter: ManagedProcess
    exporter_url: str
    prom: Prometheus
    am: Alertmanager
    alerts_file: Path
    slos_file: Path

    def diagnostics(self) -> str:
        return "\n".join([self.exporter.log_tail(), self.prom.diagnostics(), self.am.diagnostics()])

    def am_alerts(self, alertname: str, provider: str) -> list[dict[str, Any]]:
        self.exporter.ensure_alive()
        return [
            a
            for a in self.am.alerts(alertname=alertname, provider=provider)
            if a.get("status", {}).get("state") == "active"
        ]


def _complete_one_batch(sim: Simulator, provider: str) -> None:
    """A batch that finishes after the exporter started, so the duration histogram gets an observation."""
    now = int(time.time())
    # Created now, as a real batch would be: on the newest page, where an incremental poll looks for new batches.
    batch = sim.add_batch(provider, status="in_progress", created_at=now, expires_at=now + 20 * 3600)
    sim.set_status(provider, batch["id"], "completed")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prom_bin = require_tool("prometheus")
    am_bin = alertmanager_binary() or require_tool("prometheus-alertmanager")
    tmp = tmp_path_factory.mktemp("e2e-alerts")
    alerts_file = alerts_with_short_for(ALERTS_FILE, tmp / "alerts-short-for.yaml")
    slos_file = alerts_with_short_for(SLOS_FILE, tmp / "slos-short-for.yaml")

    with contextlib.ExitStack() as cleanup:
        # No automatic lifecycle: the start-up mix (active, finished, with request counts and cache_debug) is
        # populated once and stays, so the only failures are the ones the tests cause.
        sim = Simulator(seed=7, lifecycle=False, latency_ms=80)
        sim.populate()
        sim.start()
        cleanup.callback(sim.stop)

        settings = {
            "bifrost_url": sim.url,
            "providers": SUPPORTED + UNSUPPORTED,
            "poll_interval_seconds": 1,
            "request_timeout_seconds": 2,
            "max_retries": 0,
            "log_level": "warning",
            "log_format": "json",
        }
        exporter, exporter_url = start_exporter(tmp, settings, root=ROOT)
        cleanup.callback(exporter.stop)
        port = int(exporter_url.rsplit(":", 1)[1])

        am = Alertmanager(am_bin, tmp / "alertmanager").start()
        cleanup.callback(am.stop)
        prom = Prometheus(
            prom_bin,
            tmp / "prometheus",
            scrape_configs=[static_scrape(JOB, f"127.0.0.1:{port}")],
            rule_files=[alerts_file, RULES_FILE, slos_file],
            alertmanagers=[am.address],
            scrape_interval="1s",
            evaluation_interval="1s",
        ).start()
        cleanup.callback(prom.stop)
        prom.wait_for_targets_up(timeout=30, job=JOB)

        _complete_one_batch(sim, "openai")
        yield Stack(sim, exporter, exporter_url, prom, am, alerts_file, slos_file)


def test_override_changes_only_for(stack: Stack) -> None:
    for source, copy in ((ALERTS_FILE, stack.alerts_file), (SLOS_FILE, stack.slos_file)):
        shipped = yaml.safe_load(source.read_text())
        loaded = yaml.safe_load(copy.read_text())
        for group in (*shipped["groups"], *loaded["groups"]):
            for rule in group["rules"]:
                rule.pop("for", None)
        assert loaded == shipped
    names = {g["name"] for g in stack.prom.rule_groups()}
    assert names == {
        "bifrost-batch-exporter.alerts",
        "bifrost-batch-exporter.rules",
        "bifrost-batch-exporter.slos",
        "bifrost-batch-exporter.cost.alerts",  # deploy/mixin/cost.libsonnet
        "bifrost-batch-exporter.cost.rules",
    }


def test_failed_batch_reaches_alertmanager(stack: Stack) -> None:
    provider = "bedrock"
    assert not stack.am_alerts("BifrostBatchFailed", provider), "fired before any batch failed"
    now = int(time.time())
    # Created and failed between two polls, on a provider whose list items carry no end time (Bedrock): counted
    # because it was created after the exporter started.
    batch = stack.sim.add_batch(provider, status="in_progress", created_at=now, expires_at=now + 86_000)
    stack.sim.set_status(provider, batch["id"], "failed")

    alerts = wait_until(
        lambda: stack.am_alerts("BifrostBatchFailed", provider),
        timeout=ALERT_DEADLINE,
        what=f"BifrostBatchFailed for {provider} in Alertmanager",
        diagnostics=lambda: f"prometheus alerts: {stack.prom.alerts()}\n{stack.diagnostics()}",
    )
    assert len(alerts) == 1
    alert = alerts[0]
    # the group labels the mixin aggregates by (here only `job`: no cluster or namespace in this scrape), and the
    # failure class: Bedrock carries no error code through Bifrost, so it is `unknown` (routed as the platform's)
    assert alert["labels"] == {
        "alertname": "BifrostBatchFailed",
        "job": JOB,
        "provider": provider,
        "class": "unknown",
        "severity": "warning",
    }
    assert alert["annotations"]["summary"] == f"Bifrost batch failed on provider {provider} (unknown)"
    description = alert["annotations"]["description"]
    # increase() over the window, extrapolated at its end: one failure can read as up to 2 (the batch id is exact)
    count = re.match(
        rf"(\d+) failure\(s\) of class unknown .* among the batches of provider {provider},", description
    )
    assert count is not None and int(count[1]) in (1, 2), description
    assert f"Last failed batch of this class: {batch['id']} (code none)" in description  # the batch, named
    assert alert["annotations"]["runbook_url"].endswith("docs/runbook.md#bifrostbatchfailed")
    # Only the provider whose batch failed.
    others = [
        a for a in stack.am.alerts(alertname="BifrostBatchFailed") if a["labels"]["provider"] != provider
    ]
    assert not others


def test_server_errors_fire_poll_failing(stack: Stack) -> None:
    provider = "azure"
    assert not stack.am_alerts("BifrostBatchExporterPollFailing", provider)
    stack.sim.set_fault("server_error", provider=provider)
    try:
        alerts = wait_until(
            lambda: stack.am_alerts("BifrostBatchExporterPollFailing", provider),
            timeout=ALERT_DEADLINE,
            what=f"BifrostBatchExporterPollFailing for {provider} in Alertmanager",
            diagnostics=lambda: f"prometheus alerts: {stack.prom.alerts()}\n{stack.diagnostics()}",
        )
    finally:
        stack.sim.set_fault(None, provider=provider)
    labels = alerts[0]["labels"]
    assert labels["provider"] == provider
    assert labels["severity"] == "warning"
    assert labels["job"] == JOB
    assert "instance" not in labels  # HA replicas are one alert: the rules aggregate the replica labels away
    errors = stack.prom.query(
        f'bifrost_batch_exporter_poll_errors_total{{provider="{provider}", reason="server_error"}} > 0'
    )
    assert errors, "the exporter did not classify the 500s as server_error"
    # Unsupported providers never count as failing polls (they have their own info alert).
    for unsupported in UNSUPPORTED:
        assert not stack.am_alerts("BifrostBatchExporterPollFailing", unsupported)


def test_slo_events_are_recorded_and_a_fast_burn_pages(stack: Stack) -> None:
    """30 batches complete and 10 expire on one provider (created after the exporter started, so each is counted at
    its transition): the SLO recording rules see 10 bad of 40 batches in their 5-minute window — 25 %, over the 14.4 %
    a 99 % objective allows at a burn rate of 14.4 — and the 1h/5m pair of BifrostBatchErrorBudgetBurn reaches
    Alertmanager as a page. (A provider with one key: a new batch on a later key is found by the next full list only,
    README "Polling".)"""
    provider = "vertex"
    now = int(time.time())
    # One burst, all at once: a poll in the middle of the loop would count part of it, and the alert would fire
    # (rightly) on that part's ratio, which its description then reports.
    with stack.sim.atomically():
        for i in range(40):
            batch = stack.sim.add_batch(
                provider, status="in_progress", created_at=now, expires_at=now + 86_400
            )
            # Terminal timestamps are whole seconds: one a little ahead is surely after the exporter's last poll.
            stack.sim.set_status(provider, batch["id"], "expired" if i % 4 == 0 else "completed", at=now + 2)
    record = "cluster_namespace_job_provider:bifrost_batch_slo_{}:increase5m"

    def events() -> tuple[float, float] | None:
        good = stack.prom.query(f'{record.format("good")}{{provider="{provider}", slo="batches"}}')
        bad = stack.prom.query(f'{record.format("bad")}{{provider="{provider}", slo="batches"}}')
        if not good or not bad or float(bad[0]["value"][1]) < 1:
            return None
        return float(good[0]["value"][1]), float(bad[0]["value"][1])

    good, bad = wait_until(
        events,
        timeout=ALERT_DEADLINE,
        what="SLO events recorded",
        diagnostics=lambda: (
            f"good: {stack.prom.query(record.format('good'))}\nbad: {stack.prom.query(record.format('bad'))}\n"
            f"finished: {stack.prom.query('bifrost_batch_finished_total > 0')}\n{stack.diagnostics()}"
        ),
    )
    # increase() extrapolates both series alike (same scrapes), so their ratio is exact: 10 of 40
    assert bad / (good + bad) == pytest.approx(0.25, abs=0.01), (good, bad)

    def pages() -> list[dict[str, Any]]:
        return [
            a
            for a in stack.am_alerts("BifrostBatchErrorBudgetBurn", provider)
            if a["labels"].get("slo") == "batches" and a["labels"].get("long_window") == "1h"
        ]

    (alert,) = wait_until(
        pages,
        timeout=ALERT_DEADLINE,
        what="BifrostBatchErrorBudgetBurn (batches, 1h/5m) in Alertmanager",
        diagnostics=lambda: f"prometheus alerts: {stack.prom.alerts()}\n{stack.diagnostics()}",
    )
    assert alert["labels"]["severity"] == "critical"
    assert alert["labels"]["short_window"] == "5m"
    # The description names the 1h window's ratio when the alert fired: increase() extrapolates each series by its
    # own samples, so under a loaded scrape it need not be 25 % to the digit (a CI run read 20 %); the exact ratio is
    # the 5m records' above. It is over the burn threshold, or the alert would not fire.
    described = re.match(
        rf"([\d.]+)% of the batches of provider {provider},", alert["annotations"]["description"]
    )
    assert described is not None, alert["annotations"]["description"]
    assert 14.4 < float(described[1]) <= 100

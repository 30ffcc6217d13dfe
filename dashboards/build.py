"""The Grafana dashboard for bifrost-batch-exporter, as code.

Usage:
    python dashboards/build.py            # (re)writes dashboards/bifrost-batches.json
    python dashboards/build.py --check    # exits 1 when the committed JSON differs from what this file produces
    python dashboards/build.py --mixin my-mixin.libsonnet --output my.json   # from your own mixin _config

Built with grafana-foundation-sdk pinned to its Grafana 11.6 build (`1769699379!11.6.0`, schemaVersion 41). The
output is deterministic (sorted keys, fixed panel ids), so the committed JSON can be compared byte for byte.

The settings come from the monitoring mixin (deploy/mixin/, docs/mixin.md): the selector, the group labels (one
variable each), the metadata labels (one variable each, and the "owner" of the at-risk panels), the dashboard's uid
and tags, and the names of the recording rules some panels read (deploy/prometheus/rules.yaml: load it with
alerts.yaml).
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _jsonnet  # type: ignore[import-untyped]  # the jsonnet package ships no type information
from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard as dashboard_builder
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common, dashboard
from grafana_foundation_sdk.models import prometheus as prometheus_model

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = Path(__file__).resolve().parent / "bifrost-batches.json"
MIXIN = ROOT / "deploy" / "mixin" / "mixin.libsonnet"

DATASOURCE = dashboard.DataSourceRef(type_val="prometheus", uid="${datasource}")
ACTIVE = "validating|in_progress|finalizing|cancelling"


@dataclass(frozen=True)
class Settings:
    """What the dashboard takes from the mixin's _config."""

    selector: str
    group_labels: list[str]
    replica_labels: list[str]
    metadata_labels: list[str]  # label names, metadata_<key>
    uid: str
    title: str
    tags: list[str]
    refresh: str
    time_from: str
    records: dict[str, str]  # recording-rule names by role
    slo_records: dict[str, dict[str, str]]  # SLO recording-rule names by kind (good, bad) and window
    objectives: dict[str, float]  # per SLO (batches, requests)
    slo_period: str

    @classmethod
    def from_mixin(cls, path: Path = MIXIN) -> Settings:
        snippet = (
            f"local m = import {json.dumps(str(path))}; "
            "{config: m._config, records: m.recordNames + m.costRecordNames, slo: m.sloRecordNames}"
        )
        # A user's mixin file may import this one as jsonnet-bundler vendors it (vendor/ next to the file).
        search = [str(path.parent / "vendor"), str(path.parent)]
        out: dict[str, Any] = json.loads(_jsonnet.evaluate_snippet("dashboard", snippet, jpathdir=search))
        config = out["config"]
        return cls(
            selector=config["selector"],
            group_labels=list(config["groupLabels"]),
            replica_labels=list(config["replicaLabels"]),
            metadata_labels=[f"metadata_{key}" for key in config["metadataLabels"]],
            uid=config["dashboard"]["uid"],
            title=config["dashboard"]["title"],
            tags=list(config["dashboard"]["tags"]),
            refresh=config["dashboard"]["refresh"],
            time_from=config["dashboard"]["from"],
            records=dict(out["records"]),
            slo_records={kind: dict(names) for kind, names in out["slo"].items()},
            objectives={
                slo: float(config["alerts"]["BifrostBatchErrorBudgetBurn"][f"{slo}Objective"])
                for slo in ("batches", "requests")
            },
            slo_period=str(config["sloPeriod"]),
        )

    def filters(self, *, metadata: bool = False, selector: bool = True) -> str:
        """The label matchers of a panel: the selector, one per variable (metadata ones only for series that carry
        them), and the provider."""
        labels = [*self.group_labels, "provider", *(self.metadata_labels if metadata else [])]
        matchers = [f'{label}=~"${label}"' for label in labels]
        return ", ".join(([self.selector] if selector else []) + matchers)

    def dedup(self, expr: str) -> str:
        """One replica's value of an HA pair (replicas see the same gateway)."""
        return f"max without ({', '.join(self.replica_labels)}) ({expr})"

    def owner_by(self) -> str:
        return ", ".join(["provider", *self.metadata_labels])

    def owner_legend(self) -> str:
        return " ".join(["{{provider}}", *("{{" + label + "}}" for label in self.metadata_labels)])


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str


def _steps(*steps: tuple[float | None, str]) -> dashboard_builder.ThresholdsConfig:
    return (
        dashboard_builder.ThresholdsConfig()
        .mode(dashboard.ThresholdsMode.ABSOLUTE)
        .steps([dashboard.Threshold(value=value, color=color) for value, color in steps])
    )


NO_THRESHOLDS = _steps((None, "green"))


def _targets(
    targets: list[Target], *, instant: bool = False
) -> list[cogbuilder.Builder[cogvariants.Dataquery]]:
    queries: list[cogbuilder.Builder[cogvariants.Dataquery]] = []
    for index, target in enumerate(targets):
        query = (
            prometheus.Dataquery()
            .datasource(DATASOURCE)
            .expr(target.expr)
            .legend_format(target.legend)
            .ref_id(chr(ord("A") + index))
        )
        queries.append(query.instant() if instant else query.range())
    return queries


class Ids:
    """Fixed, increasing panel ids, so the JSON is stable."""

    def __init__(self) -> None:
        self._next = 0

    def __call__(self) -> int:
        self._next += 1
        return self._next


def _timeseries(
    ids: Ids,
    title: str,
    description: str,
    unit: str,
    targets: list[Target],
    *,
    width: int = 12,
    thresholds: dashboard_builder.ThresholdsConfig = NO_THRESHOLDS,
    stacked: bool = False,
    bars: bool = False,
    min_value: float | None = None,
    max_value: float | None = None,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .id(ids())
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(8)
        .span(width)
        .targets(_targets(targets))
        .thresholds(thresholds)
        .legend(
            common_builder.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(
            common_builder.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
        .fill_opacity(10)
    )
    if thresholds is not NO_THRESHOLDS:
        panel = panel.thresholds_style(
            common_builder.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.LINE)
        )
    if stacked:
        panel = panel.stacking(common_builder.StackingConfig().mode(common.StackingMode.NORMAL)).fill_opacity(
            40
        )
    if bars:
        panel = panel.draw_style(common.GraphDrawStyle.BARS).fill_opacity(60)
    if min_value is not None:
        panel = panel.min(min_value)
    if max_value is not None:
        panel = panel.max(max_value)
    return panel


def _stat(
    ids: Ids,
    title: str,
    description: str,
    unit: str,
    targets: list[Target],
    *,
    width: int,
    thresholds: dashboard_builder.ThresholdsConfig,
    mappings: list[dashboard.ValueMapping] | None = None,
    height: int = 8,
    no_value: str | None = None,
) -> stat.Panel:
    panel = (
        stat.Panel()
        .id(ids())
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(height)
        .span(width)
        .targets(_targets(targets, instant=True))
        .thresholds(thresholds)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if mappings:
        panel = panel.mappings(mappings)
    if no_value is not None:
        panel = panel.no_value(no_value)
    return panel


def _quantiles(bucket_selector: str, window: str) -> list[Target]:
    return [
        Target(
            f"histogram_quantile({q}, sum by (le) (rate({bucket_selector}[{window}])))", f"p{round(q * 100)}"
        )
        for q in (0.5, 0.9, 0.99)
    ]


def _value_map(options: dict[str, tuple[str, str]]) -> list[dashboard.ValueMapping]:
    return [
        dashboard.ValueMap(
            options={
                value: dashboard.ValueMappingResult(text=text, color=color, index=index)
                for index, (value, (text, color)) in enumerate(sorted(options.items()))
            }
        )
    ]


def _table(ids: Ids, title: str, description: str, targets: list[Target], *, width: int) -> table.Panel:
    """An instant query shown as rows of labels (the value column, always 1 for info metrics, is hidden)."""
    queries: list[cogbuilder.Builder[cogvariants.Dataquery]] = [
        prometheus.Dataquery()
        .datasource(DATASOURCE)
        .expr(target.expr)
        .legend_format(target.legend)
        .ref_id(chr(ord("A") + index))
        .instant()
        .format(prometheus_model.PromQueryFormat.TABLE)
        for index, target in enumerate(targets)
    ]
    return (
        table.Panel()
        .id(ids())
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit("short")
        .height(8)
        .span(width)
        .targets(queries)
        .thresholds(NO_THRESHOLDS)
        .with_transformation(
            dashboard.DataTransformerConfig(
                id_val="organize", options={"excludeByName": {"Time": True, "Value": True}}
            )
        )
    )


def _variable(
    name: str, label: str, description: str, query: str, *, match_all: bool = True
) -> dashboard_builder.QueryVariable:
    """`match_all`: "All" is `.*` (a label some targets lack still matches); otherwise it is the values found, which
    scopes panels on recorded series (those carry no selector) as the raw panels' selector does: `job`, so another
    exporter in the same Prometheus is not summed into this one's recorded panels."""
    variable = (
        dashboard_builder.QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(dashboard.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .current(dashboard.VariableOption(selected=True, text=["All"], value=["$__all"]))
    )
    return variable.all_value(".*") if match_all else variable


def build(settings: Settings | None = None) -> dashboard.Dashboard:
    """The whole dashboard model."""
    s = settings or Settings.from_mixin()
    ids = Ids()
    # The label matchers of the panels, kept short so the queries stay readable: F for every series, FM for the
    # series that carry the metadata labels, FR for recorded series (they keep only the group labels).
    F = s.filters()
    FM = s.filters(metadata=True)
    FR = s.filters(selector=False)
    rec = s.records
    builder = (
        dashboard_builder.Dashboard(s.title)
        .uid(s.uid)
        .description("Batch jobs behind a Bifrost LLM gateway, from bifrost-batch-exporter.")
        .tags(s.tags)
        .editable()
        .timezone("browser")
        .time(s.time_from, "now")
        .refresh(s.refresh)
        .tooltip(dashboard.DashboardCursorSync.CROSSHAIR)
        .annotation(
            dashboard_builder.AnnotationQuery()
            .name("Annotations & Alerts")
            .datasource(dashboard.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
            .enable(True)
            .hide(True)
            .icon_color("rgba(0, 211, 255, 1)")
            .type("dashboard")
            .built_in(1)
        )
        .with_variable(
            dashboard_builder.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
    )
    # Each variable's values are narrowed by the ones before it (a namespace list for the chosen cluster, …).
    chosen: list[str] = []
    for label in [*s.group_labels, "provider"]:
        matchers = ", ".join([s.selector, *(f'{c}=~"${c}"' for c in chosen)])
        builder = builder.with_variable(
            _variable(
                label,
                label.capitalize(),
                "Bifrost provider ids polled by the exporter"
                if label == "provider"
                else f"The {label} label of the exporter's targets (empty matches all)",
                f"label_values(bifrost_batch_exporter_up{{{matchers}}}, {label})",
                match_all=label != "job",
            )
        )
        chosen.append(label)
    for label in s.metadata_labels:
        builder = builder.with_variable(
            _variable(
                label,
                label.removeprefix("metadata_").capitalize(),
                f"The batches' metadata key {label.removeprefix('metadata_')!r} (the exporter's metadata_labels)",
                f"label_values(bifrost_batches{{{s.selector}}}, {label})",
            )
        )

    # ------------------------------------------------------------------ Overview
    builder = _first_list(builder.with_row(dashboard_builder.Row("Overview").id(ids())), ids, s)
    builder = (
        builder.with_panel(
            _timeseries(
                ids,
                "Batches by status",
                "Batches the gateway lists now, by status (last successful poll).",
                "short",
                [Target(f"sum by (status) ({s.dedup(f'bifrost_batches{{{FM}}}')})", "{{status}}")],
                stacked=True,
            )
        )
        .with_panel(
            _stat(
                ids,
                "Active batches now",
                "Batches in validating, in_progress, finalizing or cancelling.",
                "short",
                [Target(f"sum({rec['active']}{{{FR}}})", "active")],
                width=4,
                thresholds=_steps((None, "blue")),
            )
        )
        .with_panel(
            _stat(
                ids,
                "Failed / expired in the last hour",
                "Batches that reached failed or expired during the last hour.",
                "short",
                [
                    Target(
                        f'sum by (status) ({rec["finished"]}{{{FR}, status=~"failed|expired"}})', "{{status}}"
                    )
                ],
                width=8,
                thresholds=_steps((None, "green"), (1, "red")),
            )
        )
        .with_panel(
            _timeseries(
                ids,
                "Finished per hour by status",
                "Batches that reached a terminal status during the preceding hour.",
                "short",
                [Target(f"sum by (status) ({rec['finished']}{{{FR}}})", "{{status}}")],
                width=24,
                bars=True,
            )
        )
    )

    # ------------------------------------------------------------------ Why batches fail
    builder = (
        builder.with_row(dashboard_builder.Row("Why batches fail").id(ids()))
        .with_panel(
            _timeseries(
                ids,
                "Failures by code (per hour)",
                "Batches that reached failed or expired during the preceding hour, by the error code they carried "
                "(errors.data[].code; none when they carried none) and its class: input (the owner fixes the batch: "
                "BifrostBatchInputRejected), provider, auth or unknown (the platform acts: BifrostBatchFailed; "
                "expiries: BifrostBatchExpired). docs/runbook.md, Failure classes.",
                "short",
                [
                    Target(
                        f"sum by (provider, status, code, class) ({rec['failures']}{{{FR}}})",
                        "{{provider}} {{status}} {{code}} ({{class}})",
                    )
                ],
                bars=True,
            )
        )
        .with_panel(
            _table(
                ids,
                "Last failed batch",
                "The most recent batch per provider that reached failed or expired, with its code: look it up with "
                "GET /v1/batches/{batch_id}?provider=<provider>.",
                [
                    Target(
                        f"max by (provider, status, batch_id, code, class) (bifrost_batch_last_failure_info{{{F}}})",
                        "{{batch_id}}",
                    )
                ],
                width=12,
            )
        )
        .with_panel(
            _timeseries(
                ids,
                "Recent request failure ratio",
                "Failed / all requests of the batches that finished during the preceding hour (each batch counted once "
                "at its transition, so old batches age out). The request SLO (SLOs row) judges it against its "
                "objective.",
                "percent",
                [Target(f"100 * {rec['failureRatio']}{{{FR}}}", "{{provider}}")],
                thresholds=_steps((None, "green"), (5, "orange"), (10, "red")),
                min_value=0,
                max_value=100,
            )
        )
        .with_panel(
            _timeseries(
                ids,
                "Requests of finished batches per hour by outcome",
                "Requests of the batches that reached a terminal status during the preceding hour, by outcome.",
                "short",
                [Target(f"sum by (outcome) ({rec['finishedRequests']}{{{FR}}})", "{{outcome}}")],
                stacked=True,
            )
        )
    )

    # ------------------------------------------------------------------ Requests
    builder = builder.with_row(dashboard_builder.Row("Requests").id(ids())).with_panel(
        _timeseries(
            ids,
            "Requests by outcome",
            "Requests of the listed batches by outcome (succeeded, failed, expired, cancelled, pending). The outcomes "
            "are disjoint: stacked, they add up to the batches' request_counts.total.",
            "short",
            [Target(f"sum by (outcome) ({s.dedup(f'bifrost_batch_requests{{{FM}}}')})", "{{outcome}}")],
            width=24,
            stacked=True,
        )
    )

    # ------------------------------------------------------------------ SLOs
    slo = s.slo_records
    period = s.slo_period

    def events(kind: str, window: str, name: str, over: str | None = None) -> str:
        series = f'{slo[kind][window]}{{{FR}, slo="{name}"}}'
        return f"sum by (provider) ({f'sum_over_time({series}[{over}])' if over else series})"

    def burn(name: str) -> str:
        bad, good = events("bad", "1h", name), events("good", "1h", name)
        return f"{bad} / ({good} + {bad}) / (1 - {s.objectives[name]:g})"

    def budget_left(name: str) -> str:
        bad, good = events("bad", "5m", name, period), events("good", "5m", name, period)
        return f"1 - ({bad} / ({good} + {bad})) / (1 - {s.objectives[name]:g})"

    builder = (
        builder.with_row(dashboard_builder.Row("SLOs").id(ids()))
        .with_panel(
            _timeseries(
                ids,
                "Error budget burn rate (1 h)",
                "The bad share of the batches (expired, or failed for any class but input) and of the requests (failed, "
                "expired) that finished in the preceding hour, divided by what the objective allows (batches "
                f"{s.objectives['batches']:g}, requests {s.objectives['requests']:g}): 1 spends the budget of the period "
                "exactly; BifrostBatchErrorBudgetBurn pages at 14.4 (and 6 over 6 h), tickets at 3 and 1. docs/runbook.md, "
                "SLOs.",
                "short",
                [
                    Target(burn("batches"), "{{provider}} batches"),
                    Target(burn("requests"), "{{provider}} requests"),
                ],
                thresholds=_steps((None, "green"), (1, "yellow"), (3, "orange"), (14.4, "red")),
                min_value=0,
            )
        )
        .with_panel(
            _timeseries(
                ids,
                f"Error budget left ({period})",
                f"Share of the {period} error budget left: 1 - (bad / all events over {period}) / (1 - objective), from "
                "the 5-minute SLO recordings. Below 0 the objective is missed for the period.",
                "percentunit",
                [
                    Target(budget_left("batches"), "{{provider}} batches"),
                    Target(budget_left("requests"), "{{provider}} requests"),
                ],
                thresholds=_steps((None, "red"), (0, "orange"), (0.25, "green")),
                max_value=1,
            )
        )
    )

    # ------------------------------------------------------------------ Early warning
    at_risk = s.dedup(f"bifrost_batch_at_risk{{{FM}}}")
    at_risk_requests = s.dedup(f"bifrost_batch_at_risk_requests{{{FM}}}")
    owner = "provider and owner" if s.metadata_labels else "provider"
    builder = (
        builder.with_row(dashboard_builder.Row("Early warning").id(ids()))
        .with_panel(
            _stat(
                ids,
                "Batches at risk now",
                "Active batches the early warning expects to finish after their expires_at (recent rate with gates, "
                "or nothing done past the provider's calibrated point, each counted once that has held for 20 minutes: "
                "docs/early-warning.md; BifrostBatchAtRisk fires above 0 for 5 minutes).",
                "short",
                [Target(f"sum({at_risk})", "at risk")],
                width=6,
                thresholds=_steps((None, "green"), (1, "red")),
            )
        )
        .with_panel(
            _stat(
                ids,
                "Requests at risk now",
                "Pending requests of the batches at risk: what is lost if they do miss their expiry.",
                "short",
                [Target(f"sum({at_risk_requests})", "requests")],
                width=6,
                thresholds=_steps((None, "green"), (1, "red")),
            )
        )
        .with_panel(
            _timeseries(
                ids,
                f"Batches at risk by {owner}",
                "Active batches expected to miss their expiry, by provider"
                + (f" and {', '.join(s.metadata_labels)}" if s.metadata_labels else "")
                + ".",
                "short",
                [Target(f"sum by ({s.owner_by()}) ({at_risk})", s.owner_legend())],
                width=6,
            )
        )
        .with_panel(
            _timeseries(
                ids,
                f"Requests at risk by {owner}",
                "Pending requests of the batches at risk, by provider"
                + (f" and {', '.join(s.metadata_labels)}" if s.metadata_labels else "")
                + ".",
                "short",
                [Target(f"sum by ({s.owner_by()}) ({at_risk_requests})", s.owner_legend())],
                width=6,
            )
        )
    )

    # ------------------------------------------------------------------ Timing
    builder = (
        builder.with_row(dashboard_builder.Row("Timing").id(ids()))
        .with_panel(
            _timeseries(
                ids,
                "Oldest active batch age",
                "Age of the oldest batch still active. BifrostBatchStuck fires above 25 h.",
                "s",
                [Target(f"{rec['oldestAge']}{{{FR}}}", "{{provider}}")],
                width=8,
                thresholds=_steps((None, "green"), (86400, "orange"), (90000, "red")),
            )
        )
        .with_panel(
            _timeseries(
                ids,
                "Time to next expiry",
                "Time until the soonest active batch reaches expires_at (whether or not it will finish in time: "
                "see the Early warning row for the batches that will not).",
                "s",
                [Target(f"{rec['timeToExpiry']}{{{FR}}}", "{{provider}}")],
                width=8,
                thresholds=_steps((None, "red"), (3600, "orange"), (7200, "green")),
            )
        )
        .with_panel(
            _timeseries(
                ids,
                "Batch duration percentiles (completed)",
                "created_at → terminal time of batches that completed (completed, or ended for Anthropic) in the "
                "preceding hour, from the bifrost_batch_duration_seconds histogram.",
                "s",
                _quantiles(f'bifrost_batch_duration_seconds_bucket{{{F}, status=~"completed|ended"}}', "1h"),
                width=8,
            )
        )
        .with_panel(
            _timeseries(
                ids,
                "Stage durations by provider (p50, p90)",
                "Where batch time goes, for the batches that finished in the preceding hour: queued (created → "
                "in_progress), processing (in_progress → finalizing or end), finalizing (finalizing → completed). "
                "A provider shows only the stages whose timestamps it fills (docs/providers.md, stage timestamps).",
                "s",
                [
                    Target(
                        f"histogram_quantile({q}, sum by (provider, stage, le) "
                        f"(rate(bifrost_batch_stage_duration_seconds_bucket{{{F}}}[1h])))",
                        "{{provider}} {{stage}} " + f"p{round(q * 100)}",
                    )
                    for q in (0.5, 0.9)
                ],
                width=24,
            )
        )
    )

    # ------------------------------------------------------------------ Gateway
    builder = (
        builder.with_row(dashboard_builder.Row("Gateway").id(ids()))
        .with_panel(
            _timeseries(
                ids,
                "Gateway requests per second by provider",
                "Requests the exporter sends to the gateway (list and retrieve, retries included), summed over "
                "replicas: the exporter's cost on Bifrost and on the provider's rate limit behind it.",
                "reqps",
                [
                    Target(
                        "sum by (provider, endpoint) "
                        f"(rate(bifrost_batch_exporter_requests_total{{{F}}}[$__rate_interval]))",
                        "{{provider}} {{endpoint}}",
                    )
                ],
                width=8,
            )
        )
        .with_panel(
            _timeseries(
                ids,
                "Upstream latency percentiles",
                "Latency of the provider calls behind the gateway's batch list and retrieve responses (extra_fields.latency).",
                "s",
                _quantiles(f"bifrost_batch_upstream_latency_seconds_bucket{{{F}}}", "$__rate_interval"),
                width=8,
            )
        )
        .with_panel(
            _timeseries(
                ids,
                "Cache lookups and hits",
                "Batch responses and items carrying Bifrost's extra_fields.cache_debug, and those that were cache "
                "hits, by hit type. Current Bifrost never sets cache_debug on batch responses (its semantic cache "
                "skips batch requests), so these stay at zero there; they count only with a gateway that reports it.",
                "short",
                [
                    Target(
                        "sum by (provider) ("
                        + s.dedup(f"increase(bifrost_batch_cache_lookups_total{{{F}}}[$__rate_interval])")
                        + ")",
                        "{{provider}} lookups",
                    ),
                    Target(
                        "sum by (provider, hit_type) ("
                        + s.dedup(f"increase(bifrost_batch_cache_hits_total{{{F}}}[$__rate_interval])")
                        + ")",
                        "{{provider}} {{hit_type}} hits",
                    ),
                ],
                width=8,
            )
        )
    )

    # ------------------------------------------------------------------ Exporter health
    builder = (
        builder.with_row(dashboard_builder.Row("Exporter health").id(ids()))
        .with_panel(
            _stat(
                ids,
                "Exporter up per provider",
                "1 when the last poll's lists succeeded and, if it retrieved batches, one retrieve answered. "
                "BifrostBatchExporterPollFailing fires after 5 "
                "minutes at 0 on every replica.",
                "short",
                [Target(f"min by (provider) (bifrost_batch_exporter_up{{{F}}})", "{{provider}}")],
                width=8,
                thresholds=_steps((None, "red"), (1, "green")),
                mappings=_value_map({"0": ("down", "red"), "1": ("up", "green")}),
            )
        )
        .with_panel(
            _timeseries(
                ids,
                "Poll duration",
                "Wall time of the last poll per provider; above the poll interval, polls fall behind.",
                "s",
                [
                    Target(
                        f"max by (provider) (bifrost_batch_exporter_poll_duration_seconds{{{F}}})",
                        "{{provider}}",
                    )
                ],
                width=8,
                thresholds=_steps((None, "green"), (10, "orange"), (30, "red")),
            )
        )
        .with_panel(
            _timeseries(
                ids,
                "Time since last successful poll",
                "BifrostBatchExporterDataStale fires after 10 minutes (+5 minutes pending).",
                "s",
                [
                    Target(
                        f"time() - max by (provider) (bifrost_batch_exporter_last_success_timestamp_seconds{{{F}}})",
                        "{{provider}}",
                    )
                ],
                width=8,
                thresholds=_steps((None, "green"), (150, "orange"), (600, "red")),
            )
        )
        .with_panel(
            _timeseries(
                ids,
                "Poll errors by reason",
                "Failed requests (after retries) and early stops, per reason (auth: the gateway refused the exporter; "
                "upstream_auth: the provider refused Bifrost's key; cursor_ignored, cursor_loop, max_pages: early "
                "stops; cursor_refused: a cursor sent was refused and the walk restarted).",
                "short",
                [
                    Target(
                        "sum by (reason) ("
                        + s.dedup(
                            f"increase(bifrost_batch_exporter_poll_errors_total{{{F}}}[$__rate_interval])"
                        )
                        + ")",
                        "{{reason}}",
                    )
                ],
                width=16,
                thresholds=_steps((None, "green"), (1, "red")),
                bars=True,
            )
        )
        .with_panel(
            _stat(
                ids,
                "Truncated polls",
                "1 when the last poll stopped early (cursor loop, ignored cursor, max_pages; a full list whose "
                "cursors the gateway keeps refusing) and saw only part of the list.",
                "short",
                [Target(f"max by (provider) (bifrost_batch_exporter_truncated{{{F}}})", "{{provider}}")],
                width=8,
                thresholds=_steps((None, "green"), (1, "red")),
                mappings=_value_map({"0": ("complete", "green"), "1": ("truncated", "red")}),
            )
        )
        .with_panel(
            _table(
                ids,
                "Batch list coverage",
                "How the last full list of each provider ended: complete; cursor_ignored (the gateway does not forward "
                "the cursor for this provider, so only its first page is listed: a known limitation, no alert; in "
                "incremental mode the batches it knows stay current by retrieve); cursor_loop, cursor_refused (its "
                "cursors refused 3 times in a row) or max_pages (unexpected: BifrostBatchProviderTruncated); pending "
                "(no full list finished yet).",
                [
                    Target(
                        f"max by (provider, reason) (bifrost_batch_exporter_coverage{{{F}}}) == 1",
                        "{{provider}} {{reason}}",
                    )
                ],
                width=12,
            )
        )
        .with_panel(
            _table(
                ids,
                "Who the exporter sees",
                "Virtual keys each provider is listed with (bifrost_batch_exporter_view_keys): 0 = none sent, the "
                "whole account where the gateway allows keyless requests; 1 = one tenant's batches and the unowned "
                "ones only (Bifrost's governance narrows every list to the key's own batches); N = the union over N "
                "tenants' keys (virtual_key_dir), each batch counted once.",
                [Target(f"max by (provider) (bifrost_batch_exporter_view_keys{{{F}}})", "{{provider}}")],
                width=12,
            )
        )
    )
    builder = _cost_row(builder, ids, s)
    return builder.build()


def _first_list(builder: dashboard_builder.Dashboard, ids: Ids, s: Settings) -> dashboard_builder.Dashboard:
    """The first full list of each provider (after a start, or a SIGHUP that changed the virtual keys): until it
    completes, every batch panel below shows only the part of the account listed so far, and the alerts on those
    gauges wait. First on the dashboard, since it qualifies everything under it. Replicas of an HA pair list on
    their own: the panels show the one furthest behind."""
    F = s.filters()
    return (
        builder.with_panel(
            _stat(
                ids,
                "First full list",
                "Whether each provider's first full list has completed on every replica "
                "(bifrost_batch_exporter_first_sync_complete). While it runs, the batch panels show only the part "
                "of the account listed so far, and BifrostBatchStuck and BifrostBatchAtRisk wait for it "
                "(docs/runbook.md, The first full list). It runs after a start and after a SIGHUP that changed "
                "the virtual keys, and takes about pages / max_requests_per_second; BifrostBatchFirstSyncSlow "
                "fires when no replica has completed it in 2 hours.",
                "short",
                [
                    Target(
                        f"min by (provider) (bifrost_batch_exporter_first_sync_complete{{{F}}})",
                        "{{provider}}",
                    )
                ],
                width=8,
                height=5,
                thresholds=_steps((None, "orange"), (1, "green")),
                mappings=_value_map({"0": ("running", "orange"), "1": ("complete", "green")}),
            )
        )
        .with_panel(
            _stat(
                ids,
                "Listed by the first full list",
                "Batches and list pages the first full list has fetched so far (all of them once it is complete), "
                "on the replica furthest behind. Their pace is the guide to the end where no estimate is shown.",
                "short",
                [
                    Target(
                        f"min by (provider) (bifrost_batch_exporter_first_sync_batches{{{F}}})",
                        "{{provider}} batches",
                    ),
                    Target(
                        f"min by (provider) (bifrost_batch_exporter_first_sync_pages{{{F}}})",
                        "{{provider}} pages",
                    ),
                ],
                width=8,
                height=5,
                thresholds=_steps((None, "blue")),
            )
        )
        .with_panel(
            _stat(
                ids,
                "First full list ends",
                "When the running first full list should complete at its pace so far, on the replica that ends "
                "last (bifrost_batch_exporter_first_sync_estimated_completion_timestamp_seconds). Shown only while "
                "a list runs whose length the exporter can tell: after a change of keys (it knew the account's "
                "size); Bifrost does not report the length, so a first start has no estimate.",
                "dateTimeFromNow",
                [
                    Target(
                        "1000 * max by (provider) "
                        f"(bifrost_batch_exporter_first_sync_estimated_completion_timestamp_seconds{{{F}}})",
                        "{{provider}}",
                    )
                ],
                width=8,
                height=5,
                thresholds=_steps((None, "blue")),
                no_value="no estimate (complete, or length unknown)",
            )
        )
    )


def _cost_row(builder: dashboard_builder.Dashboard, ids: Ids, s: Settings) -> dashboard_builder.Dashboard:
    """What batches cost (the exporter's cost_metrics; deploy/mixin/cost.libsonnet): spend per day by provider, owner
    and model, cost per thousand requests, tokens, and the settlements themselves. The recorded cost series keep the
    metadata labels, so the owner variables filter them."""
    F = s.filters()
    FR = s.filters(metadata=True, selector=False)
    rec = s.records
    daily = f"{rec['costDaily']}{{{FR}}}"
    owner = "provider and owner" if s.metadata_labels else "provider"
    return (
        builder.with_row(dashboard_builder.Row("Cost").id(ids()))
        .with_panel(
            _stat(
                ids,
                "Spend in the last 24 hours",
                "US dollars of the batches settled during the preceding 24 hours (Bifrost's own batch accounting, "
                "each batch counted once when its settlement is read with a cost).",
                "currencyUSD",
                [Target(f"sum({daily})", "spend")],
                width=6,
                thresholds=NO_THRESHOLDS,
            )
        )
        .with_panel(
            _timeseries(
                ids,
                f"Spend per day by {owner}",
                "US dollars of the batches settled during the preceding 24 hours, by provider"
                + (f" and {', '.join(s.metadata_labels)}" if s.metadata_labels else "")
                + " (the batch's own metadata when it finished).",
                "currencyUSD",
                [Target(f"sum by ({s.owner_by()}) ({daily})", s.owner_legend())],
                width=9,
            )
        )
        .with_panel(
            _timeseries(
                ids,
                "Spend per day by model",
                "US dollars of the batches settled during the preceding 24 hours, by the model their settlement "
                "names (mixed: batches spanning several models; other: models beyond the first 20 of a provider).",
                "currencyUSD",
                [Target(f"sum by (provider, model) ({daily})", "{{provider}} {{model}}")],
                width=9,
            )
        )
        .with_panel(
            _timeseries(
                ids,
                "Spend per hour by model",
                "US dollars of the batches settled during each preceding hour, stacked by model.",
                "currencyUSD",
                [
                    Target(
                        f"sum by (provider, model) ({rec['costHourly']}{{{FR}}})",
                        "{{provider}} {{model}}",
                    )
                ],
                stacked=True,
            )
        )
        .with_panel(
            _timeseries(
                ids,
                "Cost per 1,000 requests by model",
                "US dollars per thousand billed requests of the batches settled during the preceding 24 hours "
                "(absent without settled requests).",
                "currencyUSD",
                [
                    Target(
                        f"1000 * sum by (provider, model) ({daily}) "
                        f"/ (sum by (provider, model) ({rec['requestsDaily']}{{{FR}}}) > 0)",
                        "{{provider}} {{model}}",
                    )
                ],
            )
        )
        .with_panel(
            _timeseries(
                ids,
                "Tokens per hour by model",
                "Prompt and completion tokens of the batches settled during each preceding hour (unpriced ones "
                "included: their usage is known, only their price is not).",
                "short",
                [
                    Target(
                        f"sum by (provider, model, type) ({rec['tokensHourly']}{{{FR}}})",
                        "{{provider}} {{model}} {{type}}",
                    )
                ],
            )
        )
        .with_panel(
            _timeseries(
                ids,
                "Settlements per hour by result",
                "Finished batches by settlement result during each preceding hour: priced; unpriced (a row but no "
                "cost by cost_horizon_seconds); missing (no row by then: BifrostBatchSettlementsMissing).",
                "short",
                [
                    Target(
                        f"sum by (result) ({rec['settlementsHourly']}{{{FR}}})",
                        "{{result}}",
                    )
                ],
                stacked=True,
                bars=True,
            )
        )
        .with_panel(
            _stat(
                ids,
                "Settlement look-ups up",
                "1 when the exporter's last settlement look-ups of the provider succeeded (the gateway's logs API "
                "with the admin login). BifrostBatchCostLookupsFailing fires after 30 minutes at 0 on every replica.",
                "short",
                [Target(f"min by (provider) (bifrost_batch_exporter_cost_up{{{F}}})", "{{provider}}")],
                width=6,
                thresholds=_steps((None, "red"), (1, "green")),
                mappings=_value_map({"0": ("failing", "red"), "1": ("up", "green")}),
            )
        )
        .with_panel(
            _timeseries(
                ids,
                "Settlements awaited",
                "Finished batches whose settlement is still looked up: awaiting the row (Bifrost's sweeper settles "
                "within minutes) or a cost for it (a model without a price).",
                "short",
                [
                    Target(
                        "sum by (provider, awaiting) ("
                        + s.dedup(f"bifrost_batch_exporter_settlements_awaited{{{F}}}")
                        + ")",
                        "{{provider}} {{awaiting}}",
                    )
                ],
                width=18,
            )
        )
    )


def render(settings: Settings | None = None) -> str:
    """The dashboard as the JSON text that is committed (sorted keys, 2-space indent, final newline)."""
    return json.dumps(build(settings), cls=JSONEncoder, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail when the committed JSON is out of date")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"where to write (default {OUTPUT.name})")
    parser.add_argument(
        "--mixin", type=Path, default=MIXIN, help="jsonnet file evaluating to the mixin whose _config to use"
    )
    args = parser.parse_args(argv)
    text = render(Settings.from_mixin(args.mixin.resolve()))
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            diff = difflib.unified_diff(
                current.splitlines(keepends=True),
                text.splitlines(keepends=True),
                fromfile=f"{args.output} (committed)",
                tofile=f"{args.output} (generated)",
                n=1,
            )
            sys.stderr.writelines(list(diff)[:80])
            sys.stderr.write(f"\n{args.output} is out of date: run `python dashboards/build.py`\n")
            return 1
        print(f"{args.output} is up to date")
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The Grafana dashboard for bifrost-batch-exporter, as code.

Usage:
    python dashboards/build.py            # (re)writes dashboards/bifrost-batches.json
    python dashboards/build.py --check    # exits 1 when the committed JSON differs from what this file produces

Built with grafana-foundation-sdk pinned to its Grafana 11.6 build (`1769699379!11.6.0`, schemaVersion 41). The
output is deterministic (sorted keys, fixed panel ids), so the committed JSON can be compared byte for byte.

Panels read the metrics of the metrics contract and the recording rules of deploy/prometheus/rules.yaml; load that
rule file into Prometheus together with alerts.yaml.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard as dashboard_builder
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common, dashboard

OUTPUT = Path(__file__).resolve().parent / "bifrost-batches.json"
UID = "bifrost-batches"
TITLE = "Bifrost batches"

DATASOURCE = dashboard.DataSourceRef(type_val="prometheus", uid="${datasource}")
P = '{provider=~"$provider"}'  # the provider filter every panel applies
ACTIVE = "validating|in_progress|finalizing|cancelling"


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
) -> stat.Panel:
    panel = (
        stat.Panel()
        .id(ids())
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(8)
        .span(width)
        .targets(_targets(targets, instant=True))
        .thresholds(thresholds)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if mappings:
        panel = panel.mappings(mappings)
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


def build() -> dashboard.Dashboard:
    """The whole dashboard model."""
    ids = Ids()
    builder = (
        dashboard_builder.Dashboard(TITLE)
        .uid(UID)
        .description("Batch jobs behind a Bifrost LLM gateway, from bifrost-batch-exporter.")
        .tags(["bifrost", "batch", "llm"])
        .editable()
        .timezone("browser")
        .time("now-24h", "now")
        .refresh("1m")
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
        .with_variable(
            dashboard_builder.QueryVariable("provider")
            .label("Provider")
            .description("Bifrost provider ids polled by the exporter")
            .datasource(DATASOURCE)
            .query("label_values(bifrost_batch_exporter_up, provider)")
            .refresh(dashboard.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dashboard.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(dashboard.VariableOption(selected=True, text=["All"], value=["$__all"]))
        )
    )

    # ------------------------------------------------------------------ Overview
    builder = (
        builder.with_row(dashboard_builder.Row("Overview").id(ids()))
        .with_panel(
            _timeseries(
                ids,
                "Batches by status",
                "Batches the gateway lists now, by status (last successful poll).",
                "short",
                [Target(f"sum by (status) (bifrost_batches{P})", "{{status}}")],
                stacked=True,
            )
        )
        .with_panel(
            _stat(
                ids,
                "Active batches now",
                "Batches in validating, in_progress, finalizing or cancelling.",
                "short",
                [Target(f"sum(provider:bifrost_batches_active:sum{P})", "active")],
                width=4,
                thresholds=_steps((None, "blue")),
            )
        )
        .with_panel(
            _stat(
                ids,
                "Failed / expired in the time range",
                "Batches that reached failed or expired during the dashboard's time range.",
                "short",
                [
                    Target(
                        "sum by (status) (increase(bifrost_batch_finished_total"
                        '{provider=~"$provider", status=~"failed|expired"}[$__range]))',
                        "{{status}}",
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
                [
                    Target(
                        f"sum by (status) (provider_status:bifrost_batch_finished:increase1h{P})",
                        "{{status}}",
                    )
                ],
                width=24,
                bars=True,
            )
        )
    )

    # ------------------------------------------------------------------ Requests
    builder = (
        builder.with_row(dashboard_builder.Row("Requests").id(ids()))
        .with_panel(
            _timeseries(
                ids,
                "Request counts by kind",
                "Sum of request_counts.<kind> over the listed batches. The kinds overlap (total = completed + failed "
                "+ …), so compare them, do not add them.",
                "short",
                [Target(f"sum by (kind) (bifrost_batch_request_counts{P})", "{{kind}}")],
            )
        )
        .with_panel(
            _timeseries(
                ids,
                "Request failure ratio (finished batches)",
                "Failed / total requests of the finished batches listed now. The alert "
                "BifrostBatchHighRequestFailureRatio fires above 10 %.",
                "percent",
                [Target(f"100 * provider:bifrost_batch_request_failure_ratio:ratio{P}", "{{provider}}")],
                thresholds=_steps((None, "green"), (5, "orange"), (10, "red")),
                min_value=0,
                max_value=100,
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
                [Target(f"provider:bifrost_batch_oldest_active_age_seconds:max{P}", "{{provider}}")],
                width=8,
                thresholds=_steps((None, "green"), (86400, "orange"), (90000, "red")),
            )
        )
        .with_panel(
            _timeseries(
                ids,
                "Time to next expiry",
                "Time until the next active batch reaches expires_at. BifrostBatchExpiringSoon fires below 1 h.",
                "s",
                [Target(f"provider:bifrost_batch_time_to_expiry_seconds:min{P}", "{{provider}}")],
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
                _quantiles(
                    'bifrost_batch_duration_seconds_bucket{provider=~"$provider", status=~"completed|ended"}',
                    "1h",
                ),
                width=8,
            )
        )
    )

    # ------------------------------------------------------------------ Gateway
    cache_hits = f"sum by (provider) (rate(bifrost_batch_cache_hits_total{P}[$__rate_interval]))"
    cache_lookups = f"sum by (provider) (rate(bifrost_batch_cache_lookups_total{P}[$__rate_interval]))"
    builder = (
        builder.with_row(dashboard_builder.Row("Gateway").id(ids()))
        .with_panel(
            _timeseries(
                ids,
                "Upstream latency percentiles",
                "Latency of the provider calls behind the gateway's batch list responses (extra_fields.latency).",
                "s",
                _quantiles(f"bifrost_batch_upstream_latency_seconds_bucket{P}", "$__rate_interval"),
            )
        )
        .with_panel(
            _timeseries(
                ids,
                "Cache hit ratio",
                "Hits / lookups of Bifrost's cache on batch responses (extra_fields.cache_debug); 0 when there were "
                "lookups but no hits, no value while there were no lookups.",
                "percent",
                [
                    Target(
                        f"100 * ({cache_hits} or 0 * {cache_lookups}) / ({cache_lookups} > 0)", "{{provider}}"
                    )
                ],
                min_value=0,
                max_value=100,
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
                "1 when every request of the last poll succeeded. BifrostBatchExporterPollFailing fires after 5 "
                "minutes at 0.",
                "short",
                [Target(f"min by (provider) (bifrost_batch_exporter_up{P})", "{{provider}}")],
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
                        f"max by (provider) (bifrost_batch_exporter_poll_duration_seconds{P})", "{{provider}}"
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
                        f"time() - max by (provider) (bifrost_batch_exporter_last_success_timestamp_seconds{P})",
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
                "Failed requests (after retries) and early stops, per reason.",
                "short",
                [
                    Target(
                        "sum by (reason) (increase(bifrost_batch_exporter_poll_errors_total"
                        f"{P}[$__rate_interval]))",
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
                "1 when the last poll stopped early (cursor loop, max_pages) and saw only part of the list.",
                "short",
                [Target(f"max by (provider) (bifrost_batch_exporter_truncated{P})", "{{provider}}")],
                width=8,
                thresholds=_steps((None, "green"), (1, "red")),
                mappings=_value_map({"0": ("complete", "green"), "1": ("truncated", "red")}),
            )
        )
    )
    return builder.build()


def render() -> str:
    """The dashboard as the JSON text that is committed (sorted keys, 2-space indent, final newline)."""
    return json.dumps(build(), cls=JSONEncoder, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail when the committed JSON is out of date")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"where to write (default {OUTPUT.name})")
    args = parser.parse_args(argv)
    text = render()
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

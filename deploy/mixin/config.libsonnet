// Settings of the bifrost-batch-exporter monitoring mixin: the one place the alert rules, recording rules and the
// dashboard take their selector, labels, thresholds and links from. Override with
//   (import 'mixin.libsonnet') + { _config+:: { groupLabels: ['cluster', 'namespace'] } }
// and see docs/mixin.md for every field.
{
  _config+:: {
    // PromQL label matchers that select the exporter's series; every rule and dashboard query applies them.
    selector: 'job=~"bifrost-batch-exporter.*"',

    // Labels that tell deployments apart (target labels or labels added by relabelling). Rules aggregate by these
    // plus `provider`, so staging and prod, or two clusters, give separate alerts that carry labels to route on.
    // A label a series does not carry is simply empty: the defaults are harmless where there is one cluster.
    groupLabels: ['cluster', 'namespace', 'job'],

    // Labels that differ between replicas of one exporter (HA pairs scrape the same gateway). Rules first take each
    // replica's own figure, then the max across replicas, so a pair gives one alert with one replica's count.
    replicaLabels: ['instance', 'pod'],

    // Keys of the exporter's `metadata_labels` setting to keep in the batch-data alerts and as dashboard variables,
    // e.g. ['team'] keeps `metadata_team`, so Alertmanager can route a failed batch to the team that owns it.
    // Keys are sanitised as the exporter does (metrics contract: "Grouping by the batch's own metadata").
    metadataLabels: [],

    // runbook_url of each alert: the pattern's %s is the alert name in lower case (the runbook's heading anchor).
    runbookUrlPattern: 'https://github.com/bifrost-batch-exporter/bifrost-batch-exporter/blob/main/docs/runbook.md#%s',

    // Rule group names are '<prefix>.alerts' and '<prefix>.rules'.
    ruleGroupPrefix: 'bifrost-batch-exporter',

    // Alerts left out of the generated rules, by name (e.g. ['BifrostBatchProviderUnsupported']).
    disabledAlerts: [],

    // Per alert: severity, `for` ('0m' = fire at once), `keepFiringFor` (how long it stays firing after its condition
    // clears, so one event is one notification) and the alert's own parameters. Windows are PromQL durations,
    // thresholds plain numbers (seconds, ratios or counts as named).
    alerts: {
      // vanishedWindow: how long a job whose targets all vanished (a shard scaled to 0, pods Pending: no target, so
      // no up series) is still reported; absent() cannot see one job of several go.
      BifrostBatchExporterDown: { severity: 'critical', 'for': '5m', vanishedWindow: '1h' },
      BifrostBatchExporterPollFailing: { severity: 'warning', 'for': '5m', window: '10m' },
      // window: how far back a refused poll counts while the replica's polls keep failing (bifrost_batch_exporter_up 0;
      // the first successful poll resolves it). Auth refusals are not retried, so the counter rises once per poll: the
      // window must be longer than poll_interval_seconds plus a scrape interval, or the alert cannot fire.
      BifrostBatchCredentialsRejected: { severity: 'critical', 'for': '10m', window: '1h' },
      BifrostBatchExporterDataStale: { severity: 'critical', 'for': '5m', thresholdSeconds: 600 },
      // Only unexpected early stops (cursor_loop, cursor_refused, max_pages): a gateway that ignores a provider's cursor is a state
      // (bifrost_batch_exporter_coverage{reason="cursor_ignored"}, on the dashboard), not a page.
      BifrostBatchProviderTruncated: { severity: 'warning', 'for': '15m', window: '30m' },
      BifrostBatchProviderUnsupported: { severity: 'info', 'for': '15m' },
      // No first full list completed on any replica during `window`, the exporter scraped since its start (gaps under
      // 10 minutes allowed: a crash loop that restarts the list is seen too). Stuck and AtRisk wait for the list, so
      // they are blind for the provider meanwhile. 2h at the default 10 requests/s and page_size 100 is 72,000 pages
      // (7.2M batches per key). It fires `window` - 10m + `for` (2h) after a list starts that never ends.
      BifrostBatchFirstSyncSlow: { severity: 'warning', 'for': '10m', window: '2h' },
      // Failures the platform team acts on (class provider, auth or unknown: docs/runbook.md, "Failure classes").
      BifrostBatchFailed: { severity: 'warning', 'for': '5m', keepFiringFor: '15m', window: '15m' },
      // Failures the batch's owner fixes (class input): info, or off with disabledAlerts.
      BifrostBatchInputRejected: { severity: 'info', 'for': '5m', keepFiringFor: '15m', window: '15m' },
      BifrostBatchExpired: { severity: 'warning', 'for': '0m', keepFiringFor: '15m', window: '15m' },
      BifrostBatchStuck: { severity: 'warning', 'for': '15m', thresholdSeconds: 90000 },
      // `for` is on the provider's sum, which any flagged batch holds above 0, so it cannot debounce one batch: the
      // exporter counts a batch only once its verdict has held 20 minutes (exporter/risk.py, CONFIRM), and this
      // `for` only rides out a single evaluation. Chosen on bench/alert_quality.py (docs/early-warning.md).
      BifrostBatchAtRisk: { severity: 'warning', 'for': '5m' },
      // The two SLOs (docs/runbook.md, "SLOs"): multi-window, multi-burn-rate alerts (the SRE workbook's 14.4x/6x
      // paging, 3x/1x ticket pairs). An objective is the share of good events; minEvents is the fewest events the
      // long window must hold before its ratio can alert (one failure of three batches is not a burn rate).
      BifrostBatchErrorBudgetBurn: {
        pageSeverity: 'critical',
        ticketSeverity: 'warning',
        // batches finished within their window: completed (or Anthropic's ended) are good; expired and failures of
        // every class but input are bad; cancelled and input failures do not count.
        batchesObjective: 0.99,
        batchesMinEvents: 20,
        // requests of the batches that ran to their end (completed, ended, expired): succeeded are good; failed and
        // expired are bad; cancelled do not count.
        requestsObjective: 0.99,
        requestsMinEvents: 1000,
      },
    },

    // The period the SLO objectives are stated over: the dashboard's error-budget panel and the burn-rate alerts'
    // "budget gone in" use it.
    sloPeriod: '30d',

    // The Grafana dashboard (dashboards/build.py reads these).
    dashboard: {
      uid: 'bifrost-batches',
      title: 'Bifrost batches',
      tags: ['bifrost', 'batch', 'llm'],
      refresh: '1m',
      from: 'now-24h',
    },
  },
}

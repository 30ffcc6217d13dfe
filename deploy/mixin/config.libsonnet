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

    // Per alert: severity, `for` ('0m' = fire at once) and the alert's own parameters. Windows are PromQL durations,
    // thresholds plain numbers (seconds, ratios or counts as named).
    alerts: {
      BifrostBatchExporterDown: { severity: 'critical', 'for': '5m' },
      BifrostBatchExporterPollFailing: { severity: 'warning', 'for': '5m', window: '10m' },
      BifrostBatchCredentialsRejected: { severity: 'critical', 'for': '10m', window: '5m' },
      BifrostBatchExporterDataStale: { severity: 'critical', 'for': '5m', thresholdSeconds: 600 },
      BifrostBatchProviderTruncated: { severity: 'warning', 'for': '15m', window: '30m' },
      BifrostBatchProviderUnsupported: { severity: 'info', 'for': '15m' },
      BifrostBatchFailed: { severity: 'warning', 'for': '0m', window: '15m' },
      BifrostBatchExpired: { severity: 'warning', 'for': '0m', window: '15m' },
      BifrostBatchHighRequestFailureRatio: {
        severity: 'warning',
        'for': '15m',
        window: '1h',
        threshold: 0.1,
        minRequests: 100,
      },
      BifrostBatchStuck: { severity: 'warning', 'for': '15m', thresholdSeconds: 90000 },
      BifrostBatchAtRisk: { severity: 'warning', 'for': '10m' },
    },

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

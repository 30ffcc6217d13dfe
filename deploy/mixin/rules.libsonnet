// Recording rules: what the dashboard reads for long time ranges, per group labels and provider (HA replicas
// deduplicated the same way as the alerts). Names follow level:metric:operations, the level being the labels kept.
local lib = import 'lib.libsonnet';
local join(xs) = std.join(', ', xs);
local active = 'validating|in_progress|finalizing|cancelling';

local build(c) =
  local p = c.groupLabels + ['provider'];
  local r = c.replicaLabels;
  local level = std.join('_', p);
  local v = { sel: c.selector, by: join(p), byR: join(p + r), active: active };
  // The last hour's increase of a counter, seeing series born in it too (lib.recentIncrease).
  local hour(series) = lib.indent(lib.recentIncrease(c, series % v, '1h'), 4);
  {
    names:: {
      active: level + ':bifrost_batches_active:sum',
      oldestAge: level + ':bifrost_batch_oldest_active_age_seconds:max',
      timeToExpiry: level + ':bifrost_batch_time_to_expiry_seconds:min',
      finished: level + '_status:bifrost_batch_finished:increase1h',
      failures: level + '_status_code_class:bifrost_batch_failures:increase1h',
      finishedRequests: level + '_outcome:bifrost_batch_finished_requests:increase1h',
      failureRatio: level + ':bifrost_batch_finished_requests_failed:ratio_increase1h',
      atRisk: level + ':bifrost_batch_at_risk:sum',
      atRiskRequests: level + ':bifrost_batch_at_risk_requests:sum',
    },
    rules: [
      {
        // Batches in an active status.
        record: $.names.active,
        expr: |||
          max by (%(by)s) (sum by (%(byR)s) (bifrost_batches{%(sel)s, status=~"%(active)s"}))
        ||| % v,
      },
      {
        // Age of the oldest active batch (absent when there is none).
        record: $.names.oldestAge,
        expr: |||
          time() - min by (%(by)s) (bifrost_batch_oldest_created_timestamp_seconds{%(sel)s})
        ||| % v,
      },
      {
        // Time until the soonest active batch expires (negative once overdue; absent without active batches).
        record: $.names.timeToExpiry,
        expr: |||
          min by (%(by)s) (bifrost_batch_next_expiry_timestamp_seconds{%(sel)s}) - time()
        ||| % v,
      },
      {
        // Batches that reached each terminal status during the last hour.
        record: $.names.finished,
        expr: |||
          max by (%(by)s, status) (
            sum by (%(byR)s, status) (
              %(increase)s
            )
          )
        ||| % (v + { increase: hour('bifrost_batch_finished_total{%(sel)s}') }),
      },
      {
        // Batches that reached failed or expired during the last hour, by failure code and its class.
        record: $.names.failures,
        expr: |||
          max by (%(by)s, status, code, class) (
            sum by (%(byR)s, status, code, class) (
              %(increase)s
            )
          )
        ||| % (v + { increase: hour('bifrost_batch_failures_total{%(sel)s}') }),
      },
      {
        // Requests of the batches that finished during the last hour, by outcome.
        record: $.names.finishedRequests,
        expr: |||
          max by (%(by)s, outcome) (
            sum by (%(byR)s, outcome) (
              %(increase)s
            )
          )
        ||| % (v + { increase: hour('bifrost_batch_finished_requests_total{%(sel)s}') }),
      },
      {
        // Failed / all requests of the batches that finished during the last hour, 0..1 (absent without any).
        record: $.names.failureRatio,
        expr: |||
          max by (%(by)s) (
              sum by (%(byR)s) (
                %(failed)s
              )
            /
              (
                sum by (%(byR)s) (
                  %(all)s
                )
                > 0
              )
          )
        ||| % (v + {
          failed: lib.indent(hour('bifrost_batch_finished_requests_total{%(sel)s, outcome="failed"}'), 2),
          all: lib.indent(hour('bifrost_batch_finished_requests_total{%(sel)s}'), 4),
        }),
      },
      {
        // Active batches projected to miss their expiry, and their pending requests.
        record: $.names.atRisk,
        expr: |||
          max by (%(by)s) (sum by (%(byR)s) (bifrost_batch_at_risk{%(sel)s}))
        ||| % v,
      },
      {
        record: $.names.atRiskRequests,
        expr: |||
          max by (%(by)s) (sum by (%(byR)s) (bifrost_batch_at_risk_requests{%(sel)s}))
        ||| % v,
      },
    ],
    // The SLOs' good and bad events per window (lib.slis): what the burn-rate alerts and the error-budget panel read.
    // Several selectors of one kind are united with `or` (their status labels differ), so one absent does not
    // empty the sum.
    sloRules: [
      {
        record: lib.sloRecord(c, kind, window),
        expr: |||
          max by (%(by)s) (
            sum by (%(byR)s) (
              %(increase)s
            )
          )
        ||| % (v + {
          increase: lib.indent(std.join('\nor\n', [
            '(\n  ' + lib.indent(lib.recentIncrease(c, series, window), 2) + '\n)'
            for series in sli[kind]
          ]), 4),
        }),
        // lib.sloSelectorLabel: what the burn-rate alerts select these series by.
        labels: { slo: name, [lib.sloSelectorLabel]: c.selector },
      }
      for name in ['batches', 'requests']
      for window in lib.sloWindows
      for kind in ['good', 'bad']
      for sli in [lib.slis(c)[name]]
    ],
  };

{
  // The recording rules for a given config (used by the generator with placeholders).
  recordingRules(config):: build(config).rules,
  sloRecordingRules(config):: build(config).sloRules,
  // Names of the recorded series for the current config (dashboards/build.py reads them), the SLO ones by
  // kind and window (sloRecordNames.good['1h']).
  recordNames:: build($._config).names,
  sloRecordNames:: { [kind]: { [w]: lib.sloRecord($._config, kind, w) for w in lib.sloWindows } for kind in ['good', 'bad'] },

  prometheusRules+:: {
    groups+: [
      {
        name: $._config.ruleGroupPrefix + '.rules',
        rules: $.recordingRules($._config),
      },
      {
        // The burn-rate alerts (alerts.libsonnet) after the records they read: Prometheus evaluates a group's rules
        // in order and groups concurrently, so in one group every alert reads the events of the same evaluation,
        // and whoever loads prometheusRules gets the SLO alerts with the records they need.
        name: $._config.ruleGroupPrefix + '.slos',
        rules: $.sloRecordingRules($._config) + $.sloAlertRules($._config),
      },
    ],
  },
}

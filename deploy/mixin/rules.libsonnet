// Recording rules: what the dashboard reads for long time ranges, per group labels and provider (HA replicas
// deduplicated the same way as the alerts). Names follow level:metric:operations, the level being the labels kept.
local join(xs) = std.join(', ', xs);
local active = 'validating|in_progress|finalizing|cancelling';

local build(c) =
  local p = c.groupLabels + ['provider'];
  local r = c.replicaLabels;
  local level = std.join('_', p);
  local v = { sel: c.selector, by: join(p), byR: join(p + r), active: active };
  {
    names:: {
      active: level + ':bifrost_batches_active:sum',
      oldestAge: level + ':bifrost_batch_oldest_active_age_seconds:max',
      timeToExpiry: level + ':bifrost_batch_time_to_expiry_seconds:min',
      finished: level + '_status:bifrost_batch_finished:increase1h',
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
          max by (%(by)s, status) (sum by (%(byR)s, status) (increase(bifrost_batch_finished_total{%(sel)s}[1h])))
        ||| % v,
      },
      {
        // Failed / all requests of the batches that finished during the last hour, 0..1 (absent without any).
        record: $.names.failureRatio,
        expr: |||
          max by (%(by)s) (
              sum by (%(byR)s) (increase(bifrost_batch_finished_requests_total{%(sel)s, outcome="failed"}[1h]))
            /
              (sum by (%(byR)s) (increase(bifrost_batch_finished_requests_total{%(sel)s}[1h])) > 0)
          )
        ||| % v,
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
  };

{
  // The recording rules for a given config (used by the generator with placeholders).
  recordingRules(config):: build(config).rules,
  // Names of the recorded series for the current config (dashboards/build.py reads them).
  recordNames:: build($._config).names,

  prometheusRules+:: {
    groups+: [{
      name: $._config.ruleGroupPrefix + '.rules',
      rules: $.recordingRules($._config),
    }],
  },
}

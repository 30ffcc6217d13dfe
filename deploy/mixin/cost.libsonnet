// What batches cost (the exporter's `cost_metrics: true`; metrics contract, "What batches cost"): recording rules
// for spend per hour and per day by provider, model and the metadata labels kept (the team), and the alerts on the
// settlements themselves. In rule groups of their own ('<prefix>.cost.alerts', '<prefix>.cost.rules'): without
// cost_metrics their series do not exist, the rules record nothing and the alerts never fire.
local lib = import 'lib.libsonnet';
local join(xs) = std.join(', ', xs);

local build(c) =
  local g = c.groupLabels;
  local m = ['metadata_' + k for k in c.metadataLabels];
  local r = c.replicaLabels;
  local p = g + ['provider'];
  // The level names the group labels and provider; the series also keep the metadata labels of the config (the
  // team), so a dashboard or a query reads the same name whatever metadataLabels is.
  local level = std.join('_', p);
  local num(x) = if std.isString(x) then x else if x == std.floor(x) then '%d' % x else '%g' % x;
  local a = std.mapWithKey(function(_, params) std.mapWithKey(function(_, x) num(x), params), c.alerts);
  local v = { sel: c.selector, by: join(p), byR: join(p + r), byM: join(p + m), byMR: join(p + m + r) };
  local scope(labels) = std.join('', ['{{ with index $labels "%s" }}, %s {{ . }}{{ end }}' % [l, l] for l in labels]);
  local provider = 'provider {{ $labels.provider }}' + scope(g);
  // Each replica's own increase (series born in the window included, lib.recentIncrease), then the max across
  // replicas: an HA pair reads the same gateway, so its spend counts once.
  local increase(series, labels, window) =
    |||
      max by (%(by)s) (
        sum by (%(byR)s) (
          %(increase)s
        )
      )
    ||| % {
      by: join(p + m + labels),
      byR: join(p + m + labels + r),
      increase: lib.indent(lib.recentIncrease(c, series % v, window), 4),
    };
  local names = {
    costHourly: level + '_model:bifrost_batch_cost_dollars:increase1h',
    costDaily: level + '_model:bifrost_batch_cost_dollars:increase1d',
    tokensHourly: level + '_model_type:bifrost_batch_tokens:increase1h',
    requestsDaily: level + '_model:bifrost_batch_settled_requests:increase1d',
    settlementsHourly: level + '_result:bifrost_batch_settlements:increase1h',
  };
  local rule(name, expr, summary, description) = {
    alert: name,
    expr: expr,
    [if a[name]['for'] != '0m' then 'for']: a[name]['for'],
    labels: { severity: a[name].severity },
    annotations: {
      summary: summary,
      description: description,
      runbook_url: c.runbookUrlPattern % std.asciiLower(name),
    },
  };
  {
    names: names,
    rules: [
      {
        // US dollars of the batches settled during the last hour, by model (as the settlement names it).
        record: names.costHourly,
        expr: increase('bifrost_batch_cost_dollars_total{%(sel)s}', ['model'], '1h'),
      },
      {
        // The same over the last day: spend per day.
        record: names.costDaily,
        expr: increase('bifrost_batch_cost_dollars_total{%(sel)s}', ['model'], '1d'),
      },
      {
        // Tokens of the batches settled during the last hour, by model and type (prompt, completion).
        record: names.tokensHourly,
        expr: increase('bifrost_batch_tokens_total{%(sel)s}', ['model', 'type'], '1h'),
      },
      {
        // Billed requests of the batches settled during the last day (cost per thousand requests divides by it).
        record: names.requestsDaily,
        expr: increase('bifrost_batch_settled_requests_total{%(sel)s}', ['model'], '1d'),
      },
      {
        // Finished batches by settlement result during the last hour (priced, unpriced, missing).
        record: names.settlementsHourly,
        expr: increase('bifrost_batch_settlements_total{%(sel)s}', ['result'], '1h'),
      },
    ],
    // Neither alert waits for the first full list: settlements are looked up for the batches counted as finished
    // (transitions, which a partial list does not invent), and the look-ups' health is the exporter's own.
    alerts: [
      rule(
        'BifrostBatchSettlementsMissing',
        |||
          max by (%(by)s) (
            sum by (%(byR)s) (
              %(recent)s
            )
          ) > 0
        ||| % (v + {
          recent: lib.indent(lib.recentIncrease(c, 'bifrost_batch_settlements_total{%s, result="missing"}' % c.selector, a.BifrostBatchSettlementsMissing.window), 4),
        }),
        'Finished batches of provider {{ $labels.provider }} have no settlement (cost unknown)',
        '{{ $value | printf "%.0f" }} finished batch(es) of ' + provider + ' counted as missing in the last ' +
        a.BifrostBatchSettlementsMissing.window + ': the gateway wrote no settlement row for them within the ' +
        'exporter\'s cost_horizon_seconds, so their cost is not in bifrost_batch_cost_dollars_total. The gateway\'s ' +
        'batch accounting is off or broken (logging plugin, config store, model catalog, sweeper), or the batches ' +
        'were created outside the gateway.',
      ),
      rule(
        'BifrostBatchCostLookupsFailing',
        |||
          max by (%(by)s) (bifrost_batch_exporter_cost_up{%(sel)s}) == 0
        ||| % v,
        'Settlement look-ups of provider {{ $labels.provider }} are failing',
        'The exporter cannot read settlements of ' + provider + ' from the gateway\'s logs API on any replica ' +
        '(bifrost_batch_exporter_cost_up = {{ $value }}) for ' + a.BifrostBatchCostLookupsFailing['for'] + ': the ' +
        'admin login is refused, or the logs API is unreachable or failing. Batch metrics are not affected; costs ' +
        'are counted once look-ups work again, if within cost_horizon_seconds of each batch\'s end.',
      ),
    ],
  };

{
  _config+:: {
    alerts+: {
      BifrostBatchSettlementsMissing: { severity: 'info', 'for': '0m', window: '6h' },
      BifrostBatchCostLookupsFailing: { severity: 'warning', 'for': '30m' },
    },
  },

  // The cost rules for a given config (used by the generator with placeholders).
  costAlertRules(config):: [r for r in build(config).alerts if !std.member(config.disabledAlerts, r.alert)],
  costRecordingRules(config):: build(config).rules,
  // Names of the recorded cost series for the current config (dashboards/build.py reads them).
  costRecordNames:: build($._config).names,

  prometheusAlerts+:: {
    groups+: [{
      name: $._config.ruleGroupPrefix + '.cost.alerts',
      rules: $.costAlertRules($._config),
    }],
  },
  prometheusRules+:: {
    groups+: [{
      name: $._config.ruleGroupPrefix + '.cost.rules',
      rules: $.costRecordingRules($._config),
    }],
  },
}

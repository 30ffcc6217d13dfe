// Alerting rules. Built by a function of the config, so that deploy/mixin/generate.py can also build them with
// placeholders for the Helm chart (one source: a chart user changes values, never copies a rule).
local lib = import 'lib.libsonnet';
local join(xs) = std.join(', ', xs);

local build(c) =
  local g = c.groupLabels;
  local m = ['metadata_' + k for k in c.metadataLabels];
  local r = c.replicaLabels;
  local p = g + ['provider'];
  // Numbers as PromQL writes them (0.1, not 0.10000000000000001); placeholders (strings) pass through.
  local num(x) = if std.isString(x) then x else if x == std.floor(x) then '%d' % x else '%g' % x;
  local a = std.mapWithKey(function(_, params) std.mapWithKey(function(_, x) num(x), params), c.alerts);
  local v = { sel: c.selector, by: join(p), byM: join(p + m), byMR: join(p + m + r), byR: join(p + r), g: join(g) };

  // Annotation helpers (Go templates evaluated by Prometheus when the alert fires).
  // ", cluster eu1, namespace batch, job bifrost-batch-exporter": the alert's own labels that are set.
  local scope(labels) = std.join('', ['{{ with index $labels "%s" }}, %s {{ . }}{{ end }}' % [l, l] for l in labels]);
  local provider = 'provider {{ $labels.provider }}' + scope(m + g);
  local owner = std.join('', ['{{ with index $labels "%s" }} (%s {{ . }}){{ end }}' % [l, l] for l in m]);
  // A PromQL query, run from the annotation, restricted to the series of the alert's own group; `fmt` writes the
  // matchers as %(m)s. The result is piped into `body` (a template that ranges over it).
  local esc(s) = std.strReplace(s, '%', '%%');
  local query(fmt, labels) =
    local matchers = join([esc(c.selector)] + ['%s=%%q' % l for l in labels]);
    local args = std.join(' ', ['(index $labels "%s")' % l for l in labels]);
    local uses = std.length(std.findSubstr('%(m)s', fmt));  // printf wants the arguments once per use
    'printf `' + (fmt % { m: matchers }) + '` ' + std.join(' ', std.repeat([args], uses)) + ' | query';
  // "token_limit_exceeded (2), invalid_json_line (1)" or "none recorded".
  local codes(status, window) =
    local series = 'bifrost_batch_failures_total{%(m)s, status="' + status + '"}';
    '{{ range $i, $s := ' + query(
      'sort_desc(max by (code) (sum by (code, ' + join(r) + ') (' +
      std.strReplace(lib.recentIncrease(c { selector: esc(c.selector) }, series, window), '\n', ' ') + ')) > 0)',
      p + m
    ) + ' }}{{ if $i }}, {{ end }}{{ label "code" $s }} ({{ value $s | printf "%.0f" }}){{ else }}none recorded{{ end }}';
  local lastBatch(status) =
    '{{ with ' + query('max by (batch_id, code) (bifrost_batch_last_failure_info{%(m)s, status="' + status + '"})', p) +
    ' }}{{ with first . }}{{ label "batch_id" . }} (code {{ label "code" . }}){{ end }}{{ else }}unknown{{ end }}';
  local reasons(re, window) =
    '{{ range $i, $s := ' + query(
      'sort_desc(max by (reason) (increase(bifrost_batch_exporter_poll_errors_total{%(m)s, reason=~"' + re + '"}[' + window + '])) > 0)',
      p
    ) + ' }}{{ if $i }}, {{ end }}{{ label "reason" $s }} ({{ value $s | printf "%.0f" }}){{ else }}none counted{{ end }}';

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

  [
    rule(
      'BifrostBatchExporterDown',
      |||
        max by (%(g)s) (up{%(sel)s}) == 0
        or
        absent(up{%(sel)s})
      ||| % v,
      'bifrost-batch-exporter is not scraped or down',
      'No target selected by `' + c.selector + '`' + scope(g) +
      ' is up: {{ if eq $value 1.0 }}Prometheus scrapes none (absent){{ else }}every one is down{{ end }}. ' +
      'No batch alert can fire while the exporter is not scraped.',
    ),
    rule(
      'BifrostBatchExporterPollFailing',
      |||
        max by (%(by)s) (bifrost_batch_exporter_up{%(sel)s}) == 0
        unless on (%(by)s)
        min by (%(by)s) (bifrost_batch_exporter_provider_supported{%(sel)s}) == 0
      ||| % v,
      'bifrost-batch-exporter cannot poll provider {{ $labels.provider }}',
      'The polls of ' + provider + ' have failed for ' + a.BifrostBatchExporterPollFailing['for'] +
      ' on every replica (bifrost_batch_exporter_up = {{ $value }}). Errors in the last ' +
      a.BifrostBatchExporterPollFailing.window + ': ' + reasons('.+', a.BifrostBatchExporterPollFailing.window) + '.',
    ),
    rule(
      'BifrostBatchCredentialsRejected',
      |||
        max by (%(by)s, reason) (
          increase(bifrost_batch_exporter_poll_errors_total{%(sel)s, reason=~"auth|upstream_auth"}[%(window)s])
        ) > 0
      ||| % (v + a.BifrostBatchCredentialsRejected),
      'Credentials refused while polling provider {{ $labels.provider }} ({{ $labels.reason }})',
      '{{ if eq $labels.reason "auth" }}The gateway refused the exporter\'s credentials (virtual key, basic auth or bearer token)' +
      '{{ else }}The provider refused the key Bifrost uses for it{{ end }}: ' +
      '{{ $value | printf "%.0f" }} poll error(s) of ' + provider + ' in the last ' +
      a.BifrostBatchCredentialsRejected.window + ', for ' + a.BifrostBatchCredentialsRejected['for'] + '.',
    ),
    rule(
      'BifrostBatchExporterDataStale',
      // `> 0` ignores the value an exporter shows before its first complete poll (a restart must not page).
      |||
        time() - max by (%(by)s) (bifrost_batch_exporter_last_success_timestamp_seconds{%(sel)s} > 0) > %(thresholdSeconds)s
        unless on (%(by)s)
        min by (%(by)s) (bifrost_batch_exporter_provider_supported{%(sel)s}) == 0
      ||| % (v + a.BifrostBatchExporterDataStale),
      'Batch data of provider {{ $labels.provider }} is stale',
      'The last complete poll of ' + provider + ' finished {{ $value | humanizeDuration }} ago on every replica ' +
      '(threshold ' + a.BifrostBatchExporterDataStale.thresholdSeconds + ' s); its batch metrics are no longer current.',
    ),
    rule(
      'BifrostBatchProviderTruncated',
      |||
        max by (%(by)s) (bifrost_batch_exporter_truncated{%(sel)s}) == 1
      ||| % v,
      'Batch list of provider {{ $labels.provider }} is truncated',
      'The polls of ' + provider + ' stop early and see only part of the batch list (bifrost_batch_exporter_truncated = ' +
      '{{ $value }}). Early stops in the last ' + a.BifrostBatchProviderTruncated.window + ': ' +
      reasons('cursor_loop|cursor_ignored|max_pages', a.BifrostBatchProviderTruncated.window) + '.',
    ),
    rule(
      'BifrostBatchProviderUnsupported',
      |||
        min by (%(by)s) (bifrost_batch_exporter_provider_supported{%(sel)s}) == 0
      ||| % v,
      'Provider {{ $labels.provider }} does not support batch listing',
      'The gateway answered unsupported_operation for ' + provider +
      ' (bifrost_batch_exporter_provider_supported = {{ $value }}); remove it from the exporter\'s providers.',
    ),
    rule(
      'BifrostBatchFailed',
      // Each replica's own increase, then the max across replicas (an HA pair counts a failure once).
      |||
        max by (%(byM)s) (
          sum by (%(byMR)s) (
            %(recent)s
          )
        ) > 0
      ||| % (v + a.BifrostBatchFailed + {
        recent: lib.indent(lib.recentIncrease(c, 'bifrost_batch_finished_total{%s, status="failed"}' % c.selector, a.BifrostBatchFailed.window), 4),
      }),
      'Bifrost batch failed on provider {{ $labels.provider }}' + owner,
      '{{ $value | printf "%.0f" }} batch(es) of ' + provider + ' reached status "failed" in the last ' +
      a.BifrostBatchFailed.window + '. Failure codes: ' + codes('failed', a.BifrostBatchFailed.window) +
      '. Last failed batch: ' + lastBatch('failed') + '.',
    ),
    rule(
      'BifrostBatchExpired',
      |||
        max by (%(byM)s) (
          sum by (%(byMR)s) (
            %(recent)s
          )
        ) > 0
      ||| % (v + a.BifrostBatchExpired + {
        recent: lib.indent(lib.recentIncrease(c, 'bifrost_batch_finished_total{%s, status="expired"}' % c.selector, a.BifrostBatchExpired.window), 4),
      }),
      'Bifrost batch expired on provider {{ $labels.provider }}' + owner,
      '{{ $value | printf "%.0f" }} batch(es) of ' + provider + ' reached status "expired" (not finished within ' +
      'their completion window) in the last ' + a.BifrostBatchExpired.window + '; their pending requests are lost. ' +
      'Codes: ' + codes('expired', a.BifrostBatchExpired.window) + '. Last expired batch: ' + lastBatch('expired') + '.',
    ),
    rule(
      'BifrostBatchHighRequestFailureRatio',
      // Requests of the batches that finished within the window (counted once, at their transition), so an old
      // bad day ages out of the ratio; at least minRequests requests so that one small batch does not page.
      |||
        max by (%(byM)s) (
            sum by (%(byMR)s) (
              %(failed)s
            )
          /
            sum by (%(byMR)s) (
              %(all)s
            )
        ) > %(threshold)s
        and on (%(byM)s)
        max by (%(byM)s) (
          sum by (%(byMR)s) (
            %(all)s
          )
        ) >= %(minRequests)s
      ||| % (v + a.BifrostBatchHighRequestFailureRatio + {
        local w = a.BifrostBatchHighRequestFailureRatio.window,
        failed: lib.indent(lib.recentIncrease(c, 'bifrost_batch_finished_requests_total{%s, outcome="failed"}' % c.selector, w), 6),
        all: lib.indent(lib.recentIncrease(c, 'bifrost_batch_finished_requests_total{%s}' % c.selector, w), 6),
      }),
      'High request failure ratio in batches of provider {{ $labels.provider }}' + owner,
      '{{ $value | humanizePercentage }} of the requests of the batches of ' + provider + ' that finished in the last ' +
      a.BifrostBatchHighRequestFailureRatio.window + ' failed (threshold ' +
      a.BifrostBatchHighRequestFailureRatio.threshold + ', at least ' + a.BifrostBatchHighRequestFailureRatio.minRequests +
      ' requests).',
    ),
    rule(
      'BifrostBatchStuck',
      |||
        time() - min by (%(byM)s, status) (bifrost_batch_oldest_created_timestamp_seconds{%(sel)s}) > %(thresholdSeconds)s
      ||| % (v + a.BifrostBatchStuck),
      'Bifrost batch stuck in {{ $labels.status }} on provider {{ $labels.provider }}' + owner,
      'The oldest batch of ' + provider + ' in status {{ $labels.status }} was created {{ $value | humanizeDuration }} ' +
      'ago (threshold ' + a.BifrostBatchStuck.thresholdSeconds + ' s).',
    ),
    rule(
      'BifrostBatchAtRisk',
      // bifrost_batch_at_risk is the exporter's projection (metrics contract, "Early warning"): active batches whose
      // linear projection ends after their expires_at. It replaces BifrostBatchExpiringSoon (retired).
      |||
        max by (%(byM)s) (sum by (%(byMR)s) (bifrost_batch_at_risk{%(sel)s})) > 0
      ||| % v,
      'Bifrost batches of provider {{ $labels.provider }} will miss their expiry' + owner,
      '{{ $value | printf "%.0f" }} active batch(es) of ' + provider + ' are projected to finish after they expire: ' +
      '{{ with ' + query('max(sum by (' + join(r) + ') (bifrost_batch_at_risk_requests{%(m)s}))', p + m) +
      ' }}{{ . | first | value | printf "%.0f" }}{{ else }}an unknown number of{{ end }} pending requests are lost ' +
      'if the projection holds. The provider\'s soonest batch expiry is ' +
      '{{ with ' + query('min(bifrost_batch_next_expiry_timestamp_seconds{%(m)s})', p) +
      ' }}{{ . | first | value | humanizeTimestamp }}{{ else }}unknown{{ end }}' +
      '{{ with ' + query('min(bifrost_batch_next_expiry_timestamp_seconds{%(m)s}) - time()', p) +
      ' }} (in {{ . | first | value | humanizeDuration }}){{ end }}.',
    ),
  ];

{
  // The alert rules for a given config (used by the generator with placeholders).
  alertRules(config):: [r for r in build(config) if !std.member(config.disabledAlerts, r.alert)],

  prometheusAlerts+:: {
    groups+: [{
      name: $._config.ruleGroupPrefix + '.alerts',
      rules: $.alertRules($._config),
    }],
  },
}

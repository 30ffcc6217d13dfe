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
  // bifrost_batch_last_failure_info carries no metadata labels: with them, the batch named is the provider's, of any
  // owner, which the description must say (an owner's page must not send its on-call to another team's batch).
  local anyOwner = if m == [] then '' else ' (on the provider, of any owner)';
  // A PromQL query, run from the annotation, restricted to the series of the alert's own group; `fmt` writes the
  // matchers as %(m)s. The result is piped into `body` (a template that ranges over it).
  // `fmt` may also write %(s)s, the selector alone (no printf argument).
  local esc(s) = std.strReplace(s, '%', '%%');
  local query(fmt, labels) =
    local matchers = join([esc(c.selector)] + ['%s=%%q' % l for l in labels]);
    local args = std.join(' ', ['(index $labels "%s")' % l for l in labels]);
    local uses = std.length(std.findSubstr('%(m)s', fmt));  // printf wants the arguments once per use
    'printf `' + (fmt % { m: matchers, s: esc(c.selector) }) + '` ' + std.join(' ', std.repeat([args], uses)) + ' | query';
  // The series `series` of the replicas whose first full list of the provider is complete. A replica still in
  // its first full list (after a start, or after a SIGHUP that changed its virtual keys) shows only the part of
  // the account it has listed so far, and does not refresh those batches until the list ends (no retrieve runs
  // meanwhile; after a change of keys it also still shows what the old keys listed): gauges of the whole account
  // read from it can show a batch as active, old or slow that is not. Each replica is judged on its own, so an HA
  // pair whose other replica is complete still alerts. An exporter without the series (before v3) is never left out.
  // `sep` joins the three parts (a new line in a rule's expression, a space in an annotation's query).
  local listed(series, sel=c.selector, sep='\n') =
    std.join(sep, [series, 'unless on (%s)' % join(p + r), 'bifrost_batch_exporter_first_sync_complete{%s} == 0' % sel]);
  local inQuery(series) = listed(series, '%(s)s', ' ');
  local waits = ' The alert waits for the first full list: a replica whose first full list of the provider is still ' +
                'running (bifrost_batch_exporter_first_sync_complete 0) shows only part of the account and is left ' +
                'out until the list completes.';
  // "token_limit_exceeded (2), invalid_json_line (1)" or "none recorded"; `extra` are labels of the alert that also
  // narrow the query (the failure class).
  local codes(status, window, extra=[]) =
    local series = 'bifrost_batch_failures_total{%(m)s, status="' + status + '"}';
    '{{ range $i, $s := ' + query(
      'sort_desc(max by (code) (sum by (code, ' + join(r) + ') (' +
      std.strReplace(lib.recentIncrease(c { selector: esc(c.selector) }, series, window), '\n', ' ') + ')) > 0)',
      p + m + extra
    ) + ' }}{{ if $i }}, {{ end }}{{ label "code" $s }} ({{ value $s | printf "%.0f" }}){{ else }}none recorded{{ end }}';
  local lastBatch(status, extra=[]) =
    '{{ with ' + query('max by (batch_id, code) (bifrost_batch_last_failure_info{%(m)s, status="' + status + '"})', p + extra) +
    ' }}{{ with first . }}{{ label "batch_id" . }} (code {{ label "code" . }}){{ end }}{{ else }}' +
    (if extra == [] then 'unknown' else 'not the latest failure of the provider (see bifrost_batch_last_failure_info)') +
    '{{ end }}';
  local reasons(re, window) =
    '{{ range $i, $s := ' + query(
      'sort_desc(max by (reason) (increase(bifrost_batch_exporter_poll_errors_total{%(m)s, reason=~"' + re + '"}[' + window + '])) > 0)',
      p
    ) + ' }}{{ if $i }}, {{ end }}{{ label "reason" $s }} ({{ value $s | printf "%.0f" }}){{ else }}none counted{{ end }}';

  local rule(name, expr, summary, description) = {
    alert: name,
    expr: expr,
    [if a[name]['for'] != '0m' then 'for']: a[name]['for'],
    [if std.objectHas(a[name], 'keepFiringFor') && a[name].keepFiringFor != '0m' then 'keep_firing_for']:
      a[name].keepFiringFor,
    labels: { severity: a[name].severity },
    annotations: {
      summary: summary,
      description: description,
      runbook_url: c.runbookUrlPattern % std.asciiLower(name),
    },
  };

  // A failed batch's failure codes by class (docs/runbook.md, "Failure classes"): one alert per class, with the
  // codes and the provider's last failed batch of that class. Counters of transitions need not wait for the first
  // full list: a partial list makes no transition up (the ledger counts a batch once, only when it ends after the
  // exporter's start or, with state_dir, after the previous process' watermark), it can only count one later, when
  // the list reaches the batch; an alert then is for a batch that really failed.
  local failedByClass(name, classes, summary, kind) = rule(
    name,
    // Each replica's own increase, then the max across replicas (an HA pair counts a failure once).
    |||
      max by (%(byM)s, class) (
        sum by (%(byMR)s, class) (
          %(recent)s
        )
      ) > 0
    ||| % (v + a[name] + {
      recent: lib.indent(lib.recentIncrease(c, 'bifrost_batch_failures_total{%s, status="failed", %s}' % [c.selector, classes], a[name].window), 4),
    }),
    summary,
    '{{ $value | printf "%.0f" }}' + kind + provider + ' in the last ' + a[name].window +
    ' (one per distinct error code a batch carries). Failure codes: ' + codes('failed', a[name].window, ['class']) +
    '. Last failed batch of this class' + anyOwner + ': ' + lastBatch('failed', ['class']) + '.',
  );

  [
    rule(
      'BifrostBatchExporterDown',
      // Three cases, told apart by the value: 0 every target down, 2 a job scraped within vanishedWindow that has no
      // target now (one shard of several gone: absent() sees the others), 1 no target at all and none within
      // vanishedWindow (absent; before that, the vanished jobs are reported with their labels instead).
      |||
        max by (%(g)s) (up{%(sel)s}) == 0
        or
        (max by (%(g)s) (max_over_time(up{%(sel)s}[%(vanishedWindow)s])) * 0 + 2 unless max by (%(g)s) (up{%(sel)s}))
        or
        (absent(up{%(sel)s}) unless on () count(max_over_time(up{%(sel)s}[%(vanishedWindow)s])))
      ||| % (v + a.BifrostBatchExporterDown),
      'bifrost-batch-exporter is not scraped or down',
      'No target selected by `' + c.selector + '`' + scope(g) +
      ' is up: {{ if eq $value 1.0 }}Prometheus scrapes none (absent){{ else if eq $value 2.0 }}its targets ' +
      'vanished (scraped within the last ' + a.BifrostBatchExporterDown.vanishedWindow + ', none now: pods ' +
      'Pending, scaled to 0, or the service discovery lost them){{ else }}every one is down{{ end }}. ' +
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
      // Per replica: polls refused for credentials within `window`, while that replica's last poll failed. Auth
      // refusals are not retried, so the counter rises once per poll: a window shorter than two poll intervals (the
      // old 5m with poll_interval_seconds 600) is empty half the time and `for` never completes. Holding the condition
      // on bifrost_batch_exporter_up (a gauge, steady between polls) lets the window be long without delaying the
      // resolution: the first successful poll ends it. The last part leaves out a replica whose polls failed for
      // another reason (the gateway unreachable, timing out) after its last refusal: a refusal fixed within the
      // window, then an outage, is not a page to rotate keys (PollFailing says what it is).
      |||
        max by (%(by)s, reason) (
          increase(bifrost_batch_exporter_poll_errors_total{%(sel)s, reason=~"auth|upstream_auth"}[%(window)s]) > 0
          and on (%(byR)s)
          bifrost_batch_exporter_up{%(sel)s} == 0
          unless on (%(byR)s)
          (
              max by (%(byR)s) (max_over_time(timestamp(changes(bifrost_batch_exporter_poll_errors_total{%(sel)s, reason=~"%(otherFailures)s"}[2m]) > 0)[%(window)s:1m]))
            > on (%(byR)s)
              max by (%(byR)s) (max_over_time(timestamp(changes(bifrost_batch_exporter_poll_errors_total{%(sel)s, reason=~"auth|upstream_auth"}[2m]) > 0)[%(window)s:1m]))
          )
        )
      ||| % (v + a.BifrostBatchCredentialsRejected + {
        otherFailures: 'timeout|connection|rate_limited|server_error|client_error|invalid_response',
      }),
      'Credentials refused while polling provider {{ $labels.provider }} ({{ $labels.reason }})',
      '{{ if eq $labels.reason "auth" }}The gateway refused the exporter\'s credentials (virtual key, basic auth or bearer token)' +
      '{{ else }}The provider refused the key Bifrost uses for it{{ end }}: ' +
      '{{ $value | printf "%.0f" }} poll(s) of ' + provider + ' refused in the last ' +
      a.BifrostBatchCredentialsRejected.window + ', and the polls still fail (for ' +
      a.BifrostBatchCredentialsRejected['for'] + '). Errors in the last ' + a.BifrostBatchCredentialsRejected.window +
      ': ' + reasons('.+', a.BifrostBatchCredentialsRejected.window) + '. It resolves with the first successful poll.',
    ),
    rule(
      'BifrostBatchExporterDataStale',
      // `> 0` ignores the value an exporter shows before its first complete poll (a restart must not page). Every
      // successful poll of a first full list that spans several polls sets the timestamp: no wait needed.
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
      'BifrostBatchFirstSyncSlow',
      // No replica's first full list of the provider complete at any point of `window` (each replica's own list gates
      // its own Stuck and AtRisk; while one replica is complete, those alerts still see the account through it). A
      // range, not `for` on the instant value: a replica OOM-killed before its list ends (the usual cause) misses a
      // scrape at each restart, Prometheus marks its series stale, and an instant expression would restart `for`
      // every time. The other two parts make sure the window really spans `window` of the exporter's life, so that a
      // list that started recently (a new provider, a new deployment, the end of a long outage) is not judged on part
      // of it: the series was seen within 10 minutes of the window's start, and within the 10 minutes before every
      // minute of it since (subqueries per minute, against vector(1)'s minutes). Gaps under 10 minutes (a restart,
      // CrashLoopBackOff, whose back-off tops out at 5 minutes while a run is killed within minutes) do not matter;
      // a replica scraped for less than half of each restart cycle is still seen. It fires `window` - 10m + `for` after the start of a list that never completes. A list whose
      // polls fail also alerts here (PollFailing says why). An unsupported provider reports 1.
      |||
        max by (%(by)s) (max_over_time(bifrost_batch_exporter_first_sync_complete{%(sel)s}[%(window)s])) == 0
        and on (%(by)s)
        min_over_time(timestamp(max by (%(by)s) (bifrost_batch_exporter_first_sync_complete{%(sel)s}))[%(window)s:1m])
          - scalar(min_over_time(timestamp(vector(1))[%(window)s:1m])) < 600
        and on (%(by)s)
        count_over_time((max by (%(by)s) (max_over_time(bifrost_batch_exporter_first_sync_complete{%(sel)s}[10m])))[%(window)s:1m])
          >= scalar(count_over_time(vector(1)[%(window)s:1m])) - 10
      ||| % (v + a.BifrostBatchFirstSyncSlow),
      'First full list of provider {{ $labels.provider }} still running',
      'No first full list of ' + provider + ' has completed on any replica in the last ' + a.BifrostBatchFirstSyncSlow.window +
      ' (bifrost_batch_exporter_first_sync_complete stayed {{ $value }}, restarts included): it has listed ' +
      '{{ with ' + query('max(bifrost_batch_exporter_first_sync_batches{%(m)s})', p) +
      ' }}{{ . | first | value | printf "%.0f" }}{{ else }}an unknown number of{{ end }} batches in ' +
      '{{ with ' + query('max(bifrost_batch_exporter_first_sync_pages{%(m)s})', p) +
      ' }}{{ . | first | value | printf "%.0f" }}{{ else }}an unknown number of{{ end }} pages so far; estimated end ' +
      '{{ with ' + query('min(bifrost_batch_exporter_first_sync_estimated_completion_timestamp_seconds{%(m)s})', p) +
      ' }}{{ . | first | value | humanizeTimestamp }}{{ else }}unknown (the gateway does not say how long the list is){{ end }}. ' +
      'BifrostBatchStuck and BifrostBatchAtRisk wait for this list and are blind for the provider until it completes.',
    ),
    rule(
      'BifrostBatchProviderTruncated',
      // Unexpected early stops only: a cursor that repeats, a full list whose continuation cursors the gateway keeps
      // refusing (a proxy that mangles them), or a list longer than its page budget. A gateway that ignores the
      // provider's cursor (reason cursor_ignored) is a known limitation shown by the coverage series.
      // The coverage is that of the last full list that ended (pending while the first one runs): no wait needed.
      |||
        max by (%(by)s, reason) (bifrost_batch_exporter_coverage{%(sel)s, reason=~"cursor_loop|cursor_refused|max_pages"}) == 1
      ||| % v,
      'Batch list of provider {{ $labels.provider }} stops early ({{ $labels.reason }})',
      'The last full list of ' + provider + ' stopped early ({{ $labels.reason }}; bifrost_batch_exporter_coverage = ' +
      '{{ $value }}) and saw only part of the batches, so its counts under-report. Early stops in the last ' +
      a.BifrostBatchProviderTruncated.window + ': ' +
      reasons('cursor_loop|cursor_refused|max_pages', a.BifrostBatchProviderTruncated.window) + '.',
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
    failedByClass(
      'BifrostBatchFailed',
      'class!="input"',
      'Bifrost batch failed on provider {{ $labels.provider }} ({{ $labels.class }})' + owner,
      ' failure(s) of class {{ $labels.class }} (' +
      '{{ if eq $labels.class "auth" }}the provider refused the credentials Bifrost uses{{ else if eq $labels.class "provider" }}' +
      'capacity, quota or a fault of the provider{{ else }}no code the failure table knows{{ end }}) among the batches of ',
    ),
    failedByClass(
      'BifrostBatchInputRejected',
      'class="input"',
      'Bifrost batch input rejected on provider {{ $labels.provider }}' + owner,
      ' failure(s) of class input (the batch\'s own file or request is wrong: its owner resubmits it fixed) among the ' +
      'batches of ',
    ),
    rule(
      'BifrostBatchExpired',
      // A counter of transitions: no wait for the first full list, as for failedByClass.
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
      'Codes: ' + codes('expired', a.BifrostBatchExpired.window) + '. Last expired batch' + anyOwner + ': ' + lastBatch('expired') + '.',
    ),
    rule(
      'BifrostBatchStuck',
      // A gauge of the whole account: waits for the first full list (listed()).
      |||
        time() - min by (%(byM)s, status) (
          %(oldest)s
        ) > %(thresholdSeconds)s
      ||| % (v + a.BifrostBatchStuck + {
        oldest: lib.indent(listed('bifrost_batch_oldest_created_timestamp_seconds{%s}' % c.selector), 2),
      }),
      'Bifrost batch stuck in {{ $labels.status }} on provider {{ $labels.provider }}' + owner,
      'The oldest batch of ' + provider + ' in status {{ $labels.status }} was created {{ $value | humanizeDuration }} ' +
      'ago (threshold ' + a.BifrostBatchStuck.thresholdSeconds + ' s).' + waits,
    ),
    rule(
      'BifrostBatchAtRisk',
      // bifrost_batch_at_risk is the exporter's early warning (docs/early-warning.md): active batches whose recent
      // rate, past its gates, misses their expires_at, or that show nothing done past their provider's calibrated
      // point of the window, each counted once its verdict has held 20 minutes (the `for` is on the provider's sum,
      // which a batch joins at once while the alert fires). It replaces BifrostBatchExpiringSoon (retired). A gauge
      // of the whole account, and a rate that no retrieve refreshes while the first full list runs: waits for it
      // (listed()), in the figures of the description too.
      |||
        max by (%(byM)s) (
          sum by (%(byMR)s) (
            %(atRisk)s
          )
        ) > 0
      ||| % (v + { atRisk: lib.indent(listed('bifrost_batch_at_risk{%s}' % c.selector), 4) }),
      'Bifrost batches of provider {{ $labels.provider }} will miss their expiry' + owner,
      '{{ $value | printf "%.0f" }} active batch(es) of ' + provider + ' are expected to finish after they expire: ' +
      '{{ with ' + query('max(sum by (' + join(r) + ') (' + inQuery('bifrost_batch_at_risk_requests{%(m)s}') + '))', p + m) +
      ' }}{{ . | first | value | printf "%.0f" }}{{ else }}an unknown number of{{ end }} pending requests are lost ' +
      'if they do. Why: ' +
      '{{ range $i, $s := ' + query('sort_desc(count by (reason) (max by (reason, batch_id) (' + inQuery('bifrost_batch_job_at_risk_info{%(m)s}') + ')))', p) +
      ' }}{{ if $i }}, {{ end }}{{ label "reason" $s }} ({{ value $s | printf "%.0f" }}){{ else }}per-batch series off (per_batch_metrics){{ end }}. ' +
      'The provider\'s soonest batch expiry is ' +
      '{{ with ' + query('min(' + inQuery('bifrost_batch_next_expiry_timestamp_seconds{%(m)s}') + ')', p) +
      ' }}{{ . | first | value | humanizeTimestamp }}{{ else }}unknown{{ end }}' +
      '{{ with ' + query('min(' + inQuery('bifrost_batch_next_expiry_timestamp_seconds{%(m)s}') + ') - time()', p) +
      ' }} (in {{ . | first | value | humanizeDuration }}){{ end }}.' + waits,
    ),
  ];

// The SLOs' multi-window, multi-burn-rate alerts (the SRE workbook's, as kubernetes-mixin writes them): one rule per
// SLO and window pair, all named BifrostBatchErrorBudgetBurn, labelled slo, long_window, short_window. They read the
// SLO recording rules (rules.libsonnet), which is why both are in one group of prometheusRules ('<prefix>.slos', and
// slos.yaml), recording rules first: an alert reads the events recorded in the same evaluation. Their events are counted transitions, good and bad
// alike, so they need not wait for the first full list (see failedByClass): it can delay events, not invent them.
local sloAlerts(c) =
  local num(x) = if std.isString(x) then x else if x == std.floor(x) then '%d' % x else '%g' % x;
  local a = std.mapWithKey(function(_, x) num(x), c.alerts.BifrostBatchErrorBudgetBurn);
  local by = std.join(', ', c.groupLabels + ['provider', 'slo']);
  local scope = std.join('', ['{{ with index $labels "%s" }}, %s {{ . }}{{ end }}' % [l, l] for l in c.groupLabels]);
  // The recorded series keep only the group labels, `provider` and `slo`, so they are selected by the label the
  // recording rules add (lib.sloSelectorMatcher), never by the selector itself, which may name any label.
  local sel(name) = '{%s, slo="%s"}' % [lib.sloSelectorMatcher(c), name];
  local ratio(name, window) =
    local good = lib.sloRecord(c, 'good', window) + sel(name);
    local bad = lib.sloRecord(c, 'bad', window) + sel(name);
    'max by (%s) (%s / (%s + %s))' % [by, bad, good, bad];
  local events(name, window) =
    'max by (%s) (%s%s + %s%s)' % [
      by, lib.sloRecord(c, 'good', window), sel(name), lib.sloRecord(c, 'bad', window), sel(name),
    ];
  [
    local objective = a[name + 'Objective'];
    local threshold = '(%s * (1 - %s))' % [num(pair.factor), objective];
    {
      alert: 'BifrostBatchErrorBudgetBurn',
      expr: |||
        %(long)s > %(threshold)s
        and on (%(by)s)
        %(short)s > %(threshold)s
        and on (%(by)s)
        %(events)s >= %(min)s
      ||| % {
        long: ratio(name, pair.long),
        short: ratio(name, pair.short),
        events: events(name, pair.long),
        threshold: threshold,
        by: by,
        min: a[name + 'MinEvents'],
      },
      'for': pair['for'],
      labels: {
        severity: if pair.page then a.pageSeverity else a.ticketSeverity,
        slo: name,
        long_window: pair.long,
        short_window: pair.short,
      },
      annotations: {
        summary: 'Provider {{ $labels.provider }} burns the error budget of its ' + name + ' SLO ' + num(pair.factor) +
                 ' times too fast',
        description: '{{ $value | humanizePercentage }} of the ' + lib.slis(c)[name].what + ' of provider ' +
                     '{{ $labels.provider }}' + scope + ' that finished in the last ' + pair.long + ' were bad, and in the last ' +
                     pair.short + ' too: a burn rate of at least ' + num(pair.factor) + ' (the objective ' + objective +
                     ' allows 1 - ' + objective + ' bad), over at least ' + a[name + 'MinEvents'] + ' ' +
                     lib.slis(c)[name].what + '. At this rate the error budget of ' + c.sloPeriod + ' lasts ' + c.sloPeriod +
                     ' / ' + num(pair.factor) + '.',
        runbook_url: c.runbookUrlPattern % 'bifrostbatcherrorbudgetburn',
      },
    }
    for name in ['batches', 'requests']
    for pair in lib.burnRates
  ];

{
  // The alert rules for a given config (used by the generator with placeholders).
  alertRules(config):: [r for r in build(config) if !std.member(config.disabledAlerts, r.alert)],
  // The burn-rate alerts are not in prometheusAlerts: they read the SLO recording rules, so rules.libsonnet puts
  // them in the same group (prometheusRules, '<prefix>.slos'), after the records. prometheusAlerts stays
  // self-contained, and an alert reads the events recorded in the same evaluation.
  sloAlertRules(config):: [r for r in sloAlerts(config) if !std.member(config.disabledAlerts, r.alert)],

  prometheusAlerts+:: {
    groups+: [
      {
        name: $._config.ruleGroupPrefix + '.alerts',
        rules: $.alertRules($._config),
      },
    ],
  },
}

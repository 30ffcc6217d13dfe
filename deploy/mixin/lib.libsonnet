// PromQL building blocks shared by the alerts and the recording rules.
{
  // The increase over `window` of the counter series `series` (a selector), per series, that also sees series born
  // during the window. increase() cannot see a series' first value, and the exporter creates a series at a batch's
  // transition when its label set is new (a new metadata_<key> value or failure code): the first failed batch of a
  // team would never alert. So a series absent `window` ago counts with its whole value, but only while the
  // exporter's process is the same one as `window` ago (same process_start_time_seconds): a restarted exporter that
  // restores its counters from state_dir, or a gap in the scrapes, adds nothing.
  recentIncrease(c, series, window)::
    local target = std.join(', ', c.groupLabels + c.replicaLabels);
    local process = 'process_start_time_seconds{%s}' % c.selector;
    std.join('\n', [
      '(',
      '    ((%s unless %s offset %s) * 1)' % [series, series, window],
      '  and on (%s)' % target,
      '    (%s == %s offset %s)' % [process, process, window],
      ')',
      'or',
      'increase(%s[%s])' % [series, window],
    ]),

  // The SLIs of the two SLOs, as selectors of good and bad events (counters, counted once per batch at its
  // transition; the bad events are the sum of the selectors listed). batches: finished within their window; bad =
  // expired batches, and failures the platform team acts on (every class but input: exporter/failure_classes.py; a
  // failure carrying two codes counts twice, as the counter does). requests: of the batches that ran to their end,
  // succeeded against failed and expired (a failed batch's requests are its batch's event, so a user's invalid file
  // burns neither SLO); cancelled requests count for neither.
  slis(c):: {
    batches: {
      good: ['bifrost_batch_finished_total{%s, status=~"completed|ended"}' % c.selector],
      bad: [
        'bifrost_batch_finished_total{%s, status="expired"}' % c.selector,
        'bifrost_batch_failures_total{%s, status="failed", class!="input"}' % c.selector,
      ],
      what: 'batches',
    },
    requests: {
      good: ['bifrost_batch_finished_requests_total{%s, status=~"completed|ended|expired", outcome="succeeded"}' % c.selector],
      bad: ['bifrost_batch_finished_requests_total{%s, status=~"completed|ended|expired", outcome=~"failed|expired"}' % c.selector],
      what: 'requests',
    },
  },

  // The windows the SLO recording rules keep, and the SRE workbook's multi-window, multi-burn-rate pairs.
  sloWindows:: ['5m', '30m', '1h', '2h', '6h', '1d', '3d'],
  burnRates:: [
    { long: '1h', short: '5m', factor: 14.4, 'for': '2m', page: true },
    { long: '6h', short: '30m', factor: 6, 'for': '15m', page: true },
    { long: '1d', short: '2h', factor: 3, 'for': '1h', page: false },
    { long: '3d', short: '6h', factor: 1, 'for': '3h', page: false },
  ],

  // Names of the SLO recording rules: good and bad events per group, provider and SLO (label `slo`) over `window`.
  sloRecord(c, kind, window)::
    std.join('_', c.groupLabels + ['provider']) + ':bifrost_batch_slo_' + kind + ':increase' + window,

  // The label the SLO recording rules add to every series they record: the selector they read, verbatim. The
  // recorded series keep only the group labels and `provider` (plus `slo`), so the selector cannot be applied to
  // them: a matcher on any other label (`service`, `namespace` outside groupLabels, ...) would select nothing, and the
  // burn-rate alerts would never fire. Matching this label instead selects exactly the series recorded from this
  // selector, whatever labels it names, and keeps apart the SLOs of two mixins with different selectors loaded into
  // one Prometheus. Its value is a PromQL raw string (backticks: no escaping of the selector's quotes).
  sloSelectorLabel:: 'slo_selector',
  sloSelectorMatcher(c)::
    assert std.length(std.findSubstr('`', c.selector)) == 0 : 'selector must not contain a backtick (`)';
    '%s=`%s`' % [self.sloSelectorLabel, c.selector],

  // `text` indented by `n` spaces on every line but the first (to nest a multi-line expression).
  indent(text, n)::
    std.join('\n' + std.repeat(' ', n), std.split(text, '\n')),
}

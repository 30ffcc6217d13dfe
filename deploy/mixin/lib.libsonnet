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

  // `text` indented by `n` spaces on every line but the first (to nest a multi-line expression).
  indent(text, n)::
    std.join('\n' + std.repeat(' ', n), std.split(text, '\n')),
}

"""Provider states → exposition bytes (and the landing page), as a pure function.

Rendering happens once per state change, not per scrape: the result holds every variant a client may ask for
(Prometheus text 0.0.4 and OpenMetrics 1.0.0, each plain and gzip-compressed), so a scrape is a dictionary lookup
and a socket write. Metric families (prometheus_client's types) are built fresh from immutable states each time,
in the style of its custom collectors, then encoded by exposition.py; nothing global and mutable holds batch data.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from . import __version__, presence
from .exposition import encode
from .failure_classes import failure_class
from .ledger import ENDPOINTS, FAILURE_STATUSES, HIT_TYPES, STAGES, Group, HistogramView
from .models import KNOWN_STATUSES, TERMINAL_STATUSES
from .outcomes import OUTCOMES
from .runtime import Prerendered
from .snapshot import COVERAGE_REASONS, ProviderState
from .version import build_info

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
_CACHED = " (from the last successful poll)"
_V = TypeVar("_V")


@dataclass(frozen=True, slots=True)
class Rendered:
    """One consistent view of every provider, in every encoding a scrape may pick."""

    text: bytes
    text_gzip: bytes
    openmetrics: bytes
    openmetrics_gzip: bytes
    landing: bytes
    ready: bool
    rendered_at: float
    # The same expositions ready to have the runtime series appended per scrape (runtime.py); None in a Rendered
    # built by hand, which then serves the bytes above as they are.
    text_pre: Prerendered | None = None
    openmetrics_pre: Prerendered | None = None
    # Providers whose first full list has not completed: /readyz is 200 (serving what it has) and says which.
    first_sync_running: tuple[str, ...] = ()
    # Providers whose counter series this render shows (from a first successful poll on, or a restored one): a
    # scrape of it has seen their values, which ends the poller's start-up hold (Poller.counters_scraped).
    counting: tuple[str, ...] = ()


def is_fresh(state: ProviderState, now: float, stale_after: float) -> bool:
    """Batch data is shown until `stale_after` has passed since the provider's last successful poll."""
    last = state.health.last_success
    return state.snapshot is not None and last is not None and now - last <= stale_after


def _go_float(value: float) -> str:
    """Bucket bounds as Go's strconv prints them, so `le` labels match other exporters ("60.0" → "60.0")."""
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text


def _histogram(family: HistogramMetricFamily, labels: list[str], view: HistogramView) -> None:
    buckets = [(_go_float(b), c) for b, c in zip(view.buckets, view.cumulative, strict=False)]
    buckets.append(("+Inf", view.cumulative[-1]))
    family.add_metric(labels, buckets, view.sum)


def _group_sort(item: tuple[tuple[str, Group], object]) -> tuple[int, str, Group]:
    (status, group), _ = item
    return (_STATUS_ORDER.get(status, len(_STATUS_ORDER)), status, group)


def _with_zeros(
    values: Mapping[tuple[str, Group], _V], statuses: Sequence[str], groups: Iterable[Group], zero: _V
) -> list[tuple[tuple[str, Group], _V]]:
    """Every (status, group) present, plus a zero for each of `statuses` in each of `groups`."""
    merged = dict(values)
    for group in groups:
        for status in statuses:
            merged.setdefault((status, group), zero)
    return sorted(merged.items(), key=_group_sort)


def _batch_families(
    fresh: Sequence[ProviderState], counted: Sequence[ProviderState], group_labels: Sequence[str]
) -> Iterator[Metric]:
    """The list's picture (gauges) for `fresh` providers; the ledger's events (counters, histograms, the last
    failure and finish) for every provider in `counted`, stale ones included.

    A counter that vanishes with stale data and comes back with its lifetime total reads, to any rule that counts a
    series born since its window ("X unless X offset w"), as that many new events: every failure ever counted would
    page again after a gateway outage. What a stale provider's counters say is still true; only the gauges are not.
    """
    g = list(group_labels)
    empty: Group = ("",) * len(g)
    batches = GaugeMetricFamily(
        "bifrost_batches",
        "Batches listed by the gateway, by status" + _CACHED,
        labels=["provider", "status", *g],
    )
    requests = GaugeMetricFamily(
        "bifrost_batch_requests",
        "Requests of the batches in that status by outcome; outcomes are disjoint and sum to request_counts.total"
        + _CACHED,
        labels=["provider", "status", "outcome", *g],
    )
    oldest = GaugeMetricFamily(
        "bifrost_batch_oldest_created_timestamp_seconds",
        "Smallest created_at among batches in that active status" + _CACHED,
        labels=["provider", "status", *g],
    )
    expiry = GaugeMetricFamily(
        "bifrost_batch_next_expiry_timestamp_seconds",
        "Smallest expires_at among active batches" + _CACHED,
        labels=["provider"],
    )
    at_risk = GaugeMetricFamily(
        "bifrost_batch_at_risk",
        "Active batches the early warning expects to miss their expires_at (recent rate, gates, calibration)"
        + _CACHED,
        labels=["provider", *g],
    )
    at_risk_requests = GaugeMetricFamily(
        "bifrost_batch_at_risk_requests",
        "Pending requests of the batches projected to miss their expires_at" + _CACHED,
        labels=["provider", *g],
    )
    finished = CounterMetricFamily(
        "bifrost_batch_finished",
        "Batches seen reaching a terminal status, once per batch id; batches that finished before the exporter "
        "started (or before the last complete poll of a restored state) are not counted",
        labels=["provider", "status", *g],
    )
    finished_requests = CounterMetricFamily(
        "bifrost_batch_finished_requests",
        "Requests of the batches counted in bifrost_batch_finished_total, by outcome, added at the transition",
        labels=["provider", "status", "outcome", *g],
    )
    failures = CounterMetricFamily(
        "bifrost_batch_failures",
        "Batches reaching failed or expired, once per distinct error code they carry (code none when none); class "
        "says who must act: input, provider, auth or unknown",
        labels=["provider", "status", "code", "class", *g],
    )
    last_failure = GaugeMetricFamily(
        "bifrost_batch_last_failure_info",
        "The most recent batch that reached failed or expired, with its first error code and that code's class",
        labels=["provider", "status", "batch_id", "code", "class"],
    )
    last_finished = GaugeMetricFamily(
        "bifrost_batch_last_finished_timestamp_seconds",
        "Newest terminal timestamp seen for that status" + _CACHED,
        labels=["provider", "status"],
    )
    duration = HistogramMetricFamily(
        "bifrost_batch_duration_seconds",
        "Time from created_at to the terminal timestamp, observed once per batch id with bifrost_batch_finished_total",
        labels=["provider", "status"],
    )
    stages = HistogramMetricFamily(
        "bifrost_batch_stage_duration_seconds",
        "Time a finished batch spent queued, processing and finalizing, observed once per batch id at its transition",
        labels=["provider", "stage"],
    )
    latency = HistogramMetricFamily(
        "bifrost_batch_upstream_latency_seconds",
        "Gateway-reported upstream latency (extra_fields.latency) of each list or retrieve response",
        labels=["provider"],
    )
    lookups = CounterMetricFamily(
        "bifrost_batch_cache_lookups",
        "List responses and batch items (once per id) carrying extra_fields.cache_debug (never set on batch "
        "responses by current Bifrost)",
        labels=["provider"],
    )
    hits = CounterMetricFamily(
        "bifrost_batch_cache_hits",
        "Cache lookups with cache_hit true, by hit type",
        labels=["provider", "hit_type"],
    )
    similarity = HistogramMetricFamily(
        "bifrost_batch_cache_similarity",
        "cache_debug.similarity of semantic cache hits",
        labels=["provider"],
    )
    zero_outcomes = (0,) * len(OUTCOMES)
    for state in fresh:
        p = state.provider
        snap = state.snapshot
        assert snap is not None
        # Gauges get zeros for the "" group only (contract).
        for (status, group), n in _with_zeros(snap.counts, KNOWN_STATUSES, (empty,), 0):
            batches.add_metric([p, status, *group], n)
        for (status, group), values in _with_zeros(snap.requests, KNOWN_STATUSES, (empty,), zero_outcomes):
            for outcome, value in zip(OUTCOMES, values, strict=True):
                requests.add_metric([p, status, outcome, *group], value)
        for (status, group), ts in sorted(snap.oldest_created.items(), key=_group_sort):
            oldest.add_metric([p, status, *group], ts)
        if snap.next_expiry is not None:
            expiry.add_metric([p], snap.next_expiry)
        risk_groups = sorted({empty, *snap.at_risk})
        for group in risk_groups:
            at_risk.add_metric([p, *group], snap.at_risk.get(group, 0))
            at_risk_requests.add_metric([p, *group], snap.at_risk_requests.get(group, 0))
    for state in counted:
        p = state.provider
        snap = state.snapshot
        led = state.ledger
        # Counters for every group listed by the last successful poll (before this process's first one, those its
        # restored ledger knows), so that a team's first failure is an increase from 0 that increase() can see, not
        # a series born at 1; one no render could foresee is held at 0 a while (exporter/presence.py).
        listed_groups = presence.listed_groups(state, empty)
        held = led.held
        for (status, group), n in _with_zeros(led.finished, TERMINAL_STATUSES, listed_groups, 0):
            finished.add_metric([p, status, *group], held.get((status, group), n))
        for (status, group), values in _with_zeros(
            led.finished_requests, TERMINAL_STATUSES, listed_groups, zero_outcomes
        ):
            shown_values = (
                led.held_requests.get((status, group), zero_outcomes) if (status, group) in held else values
            )
            for outcome, value in zip(OUTCOMES, shown_values, strict=True):
                finished_requests.add_metric([p, status, outcome, *group], value)
        fail_items = dict(led.failures)
        # `none` per group and the failure table's codes from 0: a code's first failure is an increase the
        # class-routed alerts see, also in an exporter's first minutes.
        for key in presence.seeded_failures(listed_groups, empty):
            fail_items.setdefault(key, 0)
        for (status, code, group), n in sorted(fail_items.items()):
            shown_n = held.get((status, code, group), n)
            failures.add_metric([p, status, code, failure_class(status, code), *group], shown_n)
        for status in FAILURE_STATUSES:
            last = led.last_failure.get(status)
            if last is not None:
                last_failure.add_metric(
                    [p, status, last.batch_id, last.code, failure_class(status, last.code)], 1
                )
        for status in TERMINAL_STATUSES:
            if status in led.last_finished:
                last_finished.add_metric([p, status], led.last_finished[status])
            _histogram(duration, [p, status], led.durations[status])
        for stage in STAGES:
            _histogram(stages, [p, stage], led.stages[stage])
        _histogram(latency, [p], led.latency)
        lookups.add_metric([p], led.cache_lookups)
        for hit_type in HIT_TYPES:
            hits.add_metric([p, hit_type], led.cache_hits.get(hit_type, 0))
        _histogram(similarity, [p], led.similarity)
    yield from (
        batches,
        requests,
        oldest,
        expiry,
        at_risk,
        at_risk_requests,
        finished,
        finished_requests,
        failures,
        last_failure,
        last_finished,
        duration,
        stages,
        latency,
        lookups,
        hits,
        similarity,
    )


_STATUS_ORDER = {s: i for i, s in enumerate(KNOWN_STATUSES)}


def _job_families(fresh: Sequence[ProviderState]) -> Iterator[Metric]:
    info = GaugeMetricFamily(
        "bifrost_batch_job_info",
        "One active batch (per-batch series, capped by per_batch_limit)" + _CACHED,
        labels=["provider", "batch_id", "status", "endpoint", "completion_window"],
    )
    requests = GaugeMetricFamily(
        "bifrost_batch_job_requests",
        "Requests of one active batch by outcome (disjoint; they sum to request_counts.total)" + _CACHED,
        labels=["provider", "batch_id", "outcome"],
    )
    created = GaugeMetricFamily(
        "bifrost_batch_job_created_timestamp_seconds",
        "created_at of one active batch" + _CACHED,
        labels=["provider", "batch_id"],
    )
    expires = GaugeMetricFamily(
        "bifrost_batch_job_expires_timestamp_seconds",
        "expires_at of one active batch" + _CACHED,
        labels=["provider", "batch_id"],
    )
    progress = GaugeMetricFamily(
        "bifrost_batch_job_progress_ratio",
        "Requests no longer pending / total, or Gemini progress/100, of one active batch" + _CACHED,
        labels=["provider", "batch_id"],
    )
    projected = GaugeMetricFamily(
        "bifrost_batch_job_projected_completion_timestamp_seconds",
        "When one active batch will finish at its recent rate (absent while nothing is visibly done)"
        + _CACHED,
        labels=["provider", "batch_id"],
    )
    at_risk = GaugeMetricFamily(
        "bifrost_batch_job_at_risk_info",
        "One active batch the early warning flags, with why: overdue, not_started, no_progress, slow or stalled"
        + _CACHED,
        labels=["provider", "batch_id", "reason"],
    )
    for state in fresh:
        assert state.snapshot is not None
        p = state.provider
        for job in state.snapshot.jobs:
            if job.risk_reason is not None:
                at_risk.add_metric([p, job.batch_id, job.risk_reason], 1)
            info.add_metric([p, job.batch_id, job.status, job.endpoint, job.completion_window], 1)
            for outcome, value in zip(OUTCOMES, job.requests, strict=False):
                requests.add_metric([p, job.batch_id, outcome], value)
            if job.created is not None:
                created.add_metric([p, job.batch_id], job.created)
            if job.expires is not None:
                expires.add_metric([p, job.batch_id], job.expires)
            if job.progress is not None:
                progress.add_metric([p, job.batch_id], job.progress)
            if job.projected_completion is not None:
                projected.add_metric([p, job.batch_id], job.projected_completion)
    yield from (info, requests, created, expires, progress, projected, at_risk)


def _health_families(states: Sequence[ProviderState], reasons: Sequence[str]) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "bifrost_batch_exporter_up",
        "1 when the last poll's lists of the provider succeeded (after retries) and, when it retrieved batches, at least "
        "one retrieve answered; else 0",
        labels=["provider"],
    )
    last_success = GaugeMetricFamily(
        "bifrost_batch_exporter_last_success_timestamp_seconds",
        "When the last complete poll of the provider (its lists succeeded) finished (0 before the first)",
        labels=["provider"],
    )
    duration = GaugeMetricFamily(
        "bifrost_batch_exporter_poll_duration_seconds", "Wall time of the last poll", labels=["provider"]
    )
    polls = CounterMetricFamily("bifrost_batch_exporter_polls", "Polls started", labels=["provider"])
    errors = CounterMetricFamily(
        "bifrost_batch_exporter_poll_errors",
        "Polls that failed or stopped early, by reason",
        labels=["provider", "reason"],
    )
    requests = CounterMetricFamily(
        "bifrost_batch_exporter_requests",
        "Requests sent to the gateway (retries included), by endpoint: the exporter's cost on the gateway",
        labels=["provider", "endpoint"],
    )
    last_resync = GaugeMetricFamily(
        "bifrost_batch_exporter_last_resync_timestamp_seconds",
        "When the last complete full list of the provider finished; 0 before the first (or when the gateway "
        "has no batch list for it)",
        labels=["provider"],
    )
    supported = GaugeMetricFamily(
        "bifrost_batch_exporter_provider_supported",
        "0 after the gateway answered unsupported_operation for the provider's batch list",
        labels=["provider"],
    )
    truncated = GaugeMetricFamily(
        "bifrost_batch_exporter_truncated",
        "1 when the batch data covers only part of the list: the last full list stopped early (cursor loop, "
        "ignored cursor, max_pages) or the first full list is still running",
        labels=["provider"],
    )
    view_keys = GaugeMetricFamily(
        "bifrost_batch_exporter_view_keys",
        "Virtual keys the provider is listed with: 0 = none sent (the whole account, where the gateway allows "
        "it), 1 = one tenant's batches and unowned ones, N = the union over N tenants",
        labels=["provider"],
    )
    coverage = GaugeMetricFamily(
        "bifrost_batch_exporter_coverage",
        "1 for how the last full list of the provider ended, 0 for the other reasons: complete, cursor_ignored (the "
        "gateway does not forward the cursor for this provider, only the first page is listed: a known limitation), "
        "cursor_loop, cursor_refused or max_pages (unexpected early stops), pending (no full list finished yet; for "
        "good when the gateway has no batch list for the provider)",
        labels=["provider", "reason"],
    )
    dropped = GaugeMetricFamily(
        "bifrost_batch_exporter_per_batch_dropped",
        "Active batches left out of the per-batch series by per_batch_limit",
        labels=["provider"],
    )
    sync_complete = GaugeMetricFamily(
        "bifrost_batch_exporter_first_sync_complete",
        "1 once the provider's first full list has completed (the batch data covers the whole list, unless "
        "truncated says otherwise); 0 while it runs and the batch data shows only what it has listed so far",
        labels=["provider"],
    )
    sync_batches = GaugeMetricFamily(
        "bifrost_batch_exporter_first_sync_batches",
        "Batches the provider's first full list has listed so far (all of them once it is complete)",
        labels=["provider"],
    )
    sync_pages = GaugeMetricFamily(
        "bifrost_batch_exporter_first_sync_pages",
        "List pages the provider's first full list has fetched so far (all of them once it is complete)",
        labels=["provider"],
    )
    sync_eta = GaugeMetricFamily(
        "bifrost_batch_exporter_first_sync_estimated_completion_timestamp_seconds",
        "When the provider's first full list should complete at its pace so far; absent once complete, and "
        "while the list's length is unknown (the gateway does not report it)",
        labels=["provider"],
    )
    for state in states:
        p = state.provider
        h = state.health
        up.add_metric([p], 1 if h.up else 0)
        last_success.add_metric([p], h.last_success or 0.0)
        duration.add_metric([p], h.poll_duration)
        polls.add_metric([p], state.ledger.polls)
        for reason in reasons:
            errors.add_metric([p, reason], state.ledger.errors.get(reason, 0))
        for endpoint in ENDPOINTS:
            requests.add_metric([p, endpoint], state.ledger.requests.get(endpoint, 0))
        if state.cost is not None:
            requests.add_metric([p, "settlement"], state.cost.lookups)
        last_resync.add_metric([p], state.ledger.last_resync or 0.0)
        supported.add_metric([p], 1 if h.supported else 0)
        truncated.add_metric([p], 1 if h.truncated else 0)
        view_keys.add_metric([p], h.view_keys)
        for reason in COVERAGE_REASONS:
            coverage.add_metric([p, reason], 1 if h.coverage == reason else 0)
        dropped.add_metric([p], state.snapshot.jobs_dropped if state.snapshot is not None else 0)
        first = h.first_sync
        sync_complete.add_metric([p], 1 if first.complete else 0)
        sync_batches.add_metric([p], first.batches)
        sync_pages.add_metric([p], first.pages)
        if not first.complete and first.estimated_completion is not None:
            sync_eta.add_metric([p], first.estimated_completion)
    info = build_info().labels()
    build = GaugeMetricFamily(
        "bifrost_batch_exporter_build_info",
        "A metric with a constant '1' value labeled by version, revision, branch, build_date and python_version "
        "from which the exporter was built",
        labels=list(info),
    )
    build.add_metric(list(info.values()), 1)
    yield from (
        up,
        last_success,
        duration,
        polls,
        errors,
        requests,
        last_resync,
        supported,
        truncated,
        view_keys,
        coverage,
        dropped,
        sync_complete,
        sync_batches,
        sync_pages,
        sync_eta,
        build,
    )


def _cost_families(states: Sequence[ProviderState], group_labels: Sequence[str]) -> Iterator[Metric]:
    """cost_metrics: what settled batches cost (exporter/cost.py). Counters, shown whatever the batch data's
    freshness: they move only by settlement look-ups, which do not depend on the list polls."""
    g = list(group_labels)
    dollars = CounterMetricFamily(
        "bifrost_batch_cost_dollars",
        "US dollars of settled batches, added once per batch id when its settlement row is first read with a cost",
        labels=["provider", "model", *g],
    )
    tokens = CounterMetricFamily(
        "bifrost_batch_tokens",
        "Token usage of settled batches (prompt, completion), added with their settlement",
        labels=["provider", "model", "type", *g],
    )
    settled_requests = CounterMetricFamily(
        "bifrost_batch_settled_requests",
        "Requests of priced settled batches, added with their dollars (the settlement's per-model request counts)",
        labels=["provider", "model", *g],
    )
    settlements = CounterMetricFamily(
        "bifrost_batch_settlements",
        "Finished batches by settlement result, once per batch id: priced, unpriced (no cost by the horizon), "
        "missing (no settlement row by the horizon)",
        labels=["provider", "result", *g],
    )
    cost_up = GaugeMetricFamily(
        "bifrost_batch_exporter_cost_up",
        "1 when the last settlement look-ups of the provider succeeded (404 for a batch not settled yet "
        "included), 0 on auth, connection or server errors",
        labels=["provider"],
    )
    awaited = GaugeMetricFamily(
        "bifrost_batch_exporter_settlements_awaited",
        "Finished batches whose settlement is still looked up: awaiting its row, or a cost for its row",
        labels=["provider", "awaiting"],
    )
    for state in states:
        view = state.cost
        if view is None:
            continue
        p = state.provider
        for (model, group), value in sorted(view.dollars.items()):
            dollars.add_metric([p, model, *group], view.shown("dollars", (model, group), value))
        for (model, kind, group), n in sorted(view.tokens.items()):
            tokens.add_metric([p, model, kind, *group], view.shown("tokens", (model, kind, group), n))
        for (model, group), n in sorted(view.requests.items()):
            settled_requests.add_metric([p, model, *group], view.shown("requests", (model, group), n))
        for (result, group), n in sorted(view.settlements.items()):
            settlements.add_metric([p, result, *group], view.shown("settlements", (result, group), n))
        if view.up is not None:
            cost_up.add_metric([p], 1 if view.up else 0)
        for awaiting, n in view.awaited.items():
            awaited.add_metric([p, awaiting], n)
    yield from (dollars, tokens, settled_requests, settlements, cost_up, awaited)


def _landing(
    states: Sequence[ProviderState], now: float, stale_after: float, metrics_path: str = "/metrics"
) -> bytes:
    rows = []
    for state in states:
        h = state.health
        fresh = is_fresh(state, now, stale_after)
        last = (
            datetime.fromtimestamp(h.last_success, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            if h.last_success
            else "never"
        )
        if not h.supported:
            counts = "batch listing not supported by the gateway"
        elif fresh and state.snapshot is not None:
            counts = (
                ", ".join(f"{s}: {n}" for s, n in state.snapshot.status_counts().items() if n) or "no batches"
            )
        else:
            counts = "no fresh data"
        rows.append(
            f"<tr><td>{html.escape(state.provider)}</td><td>{'up' if h.up else 'DOWN' if h.attempted else 'pending'}"
            f"</td><td>{last}</td><td>{html.escape(counts)}</td></tr>"
        )
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Bifrost batch exporter</title></head><body>"
        f"<h1>Bifrost batch exporter</h1><p>Version {html.escape(__version__)}. "
        f"<a href='{html.escape(metrics_path, quote=True)}'>Metrics</a> · <a href='/healthz'>healthz</a> · <a href='/readyz'>readyz</a></p>"
        "<table border='1' cellpadding='4'><tr><th>provider</th><th>poll</th><th>last success</th>"
        "<th>batches by status</th></tr>" + "".join(rows) + "</table></body></html>\n"
    )
    return page.encode("utf-8")


def render(
    states: Sequence[ProviderState],
    *,
    now: float,
    stale_after: float,
    reasons: Sequence[str],
    per_batch: bool,
    group_labels: Sequence[str] = (),
    extra: Sequence[Metric] = (),
    metrics_path: str = "/metrics",
) -> Rendered:
    """Every encoding of the exposition plus the landing page, from one consistent set of states."""
    fresh = [s for s in states if is_fresh(s, now, stale_after)]
    # Counters from a restored state too (a poll succeeded before the restart, none yet since): held back until the
    # gateway answers again, they would come back with their lifetime totals as new series, and every failure ever
    # counted would page as one of the last 15 minutes.
    counted = [s for s in states if s.health.last_success is not None]
    families: list[Metric] = list(_batch_families(fresh, counted, group_labels))
    if per_batch:
        families.extend(_job_families(fresh))
    families.extend(_health_families(states, reasons))
    families.extend(_cost_families(states, group_labels))
    families.extend(extra)
    families = [f for f in families if f.samples]
    text, openmetrics = encode(families)
    text_pre = Prerendered(text, openmetrics=False)
    openmetrics_pre = Prerendered(openmetrics, openmetrics=True)
    return Rendered(
        text=text,
        # The batch exposition alone, gzipped: finishing the streams started above costs no second compression.
        text_gzip=b"".join(text_pre.chunks(b"", gzip=True)),
        openmetrics=openmetrics,
        openmetrics_gzip=b"".join(openmetrics_pre.chunks(b"", gzip=True)),
        landing=_landing(states, now, stale_after, metrics_path),
        ready=all(s.health.attempted for s in states),
        rendered_at=now,
        text_pre=text_pre,
        openmetrics_pre=openmetrics_pre,
        first_sync_running=tuple(s.provider for s in states if not s.health.first_sync.complete),
        counting=tuple(s.provider for s in states if s.health.last_success is not None),
    )

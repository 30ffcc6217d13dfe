"""Provider states → exposition bytes (and the landing page), as a pure function.

Rendering happens once per state change, not per scrape: the result holds every variant a client may ask for
(Prometheus text 0.0.4 and OpenMetrics 1.0.0, each plain and gzip-compressed), so a scrape is a dictionary lookup
and a socket write. Metric families (prometheus_client's types) are built fresh from immutable states each time,
in the style of its custom collectors, then encoded by exposition.py; nothing global and mutable holds batch data.
"""

from __future__ import annotations

import gzip
import html
import platform
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from . import __version__
from .exposition import encode
from .ledger import HIT_TYPES, HistogramView
from .models import ACTIVE_STATUSES, KNOWN_STATUSES, TERMINAL_STATUSES
from .snapshot import ProviderState

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
_CACHED = " (from the last successful poll)"
_GZIP_LEVEL = 6


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


def _batch_families(fresh: Sequence[ProviderState]) -> Iterator[Metric]:
    batches = GaugeMetricFamily(
        "bifrost_batches", "Batches listed by the gateway, by status" + _CACHED, labels=["provider", "status"]
    )
    request_counts = GaugeMetricFamily(
        "bifrost_batch_request_counts",
        "Sum of request_counts.<kind> over the batches in that status; kinds overlap, do not sum over kind"
        + _CACHED,
        labels=["provider", "status", "kind"],
    )
    oldest = GaugeMetricFamily(
        "bifrost_batch_oldest_created_timestamp_seconds",
        "Smallest created_at among batches in that active status" + _CACHED,
        labels=["provider", "status"],
    )
    expiry = GaugeMetricFamily(
        "bifrost_batch_next_expiry_timestamp_seconds",
        "Smallest expires_at among active batches" + _CACHED,
        labels=["provider"],
    )
    finished = CounterMetricFamily(
        "bifrost_batch_finished",
        "Batches seen reaching a terminal status, once per batch id; batches that finished before the exporter "
        "started are not counted",
        labels=["provider", "status"],
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
    latency = HistogramMetricFamily(
        "bifrost_batch_upstream_latency_seconds",
        "Gateway-reported upstream latency (extra_fields.latency) of each list page response",
        labels=["provider"],
    )
    lookups = CounterMetricFamily(
        "bifrost_batch_cache_lookups",
        "List responses and batch items (once per id) carrying extra_fields.cache_debug",
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
    for state in fresh:
        p = state.provider
        snap = state.snapshot
        assert snap is not None
        led = state.ledger
        statuses = list(KNOWN_STATUSES) + sorted(s for s in snap.counts if s not in KNOWN_STATUSES)
        for status in statuses:
            batches.add_metric([p, status], snap.counts.get(status, 0))
        for (status, kind), value in sorted(snap.request_counts.items(), key=_status_kind_order):
            request_counts.add_metric([p, status, kind], value)
        for status in ACTIVE_STATUSES:
            if status in snap.oldest_created:
                oldest.add_metric([p, status], snap.oldest_created[status])
        for status in sorted(s for s in snap.oldest_created if s not in ACTIVE_STATUSES):
            oldest.add_metric([p, status], snap.oldest_created[status])
        if snap.next_expiry is not None:
            expiry.add_metric([p], snap.next_expiry)
        for status in TERMINAL_STATUSES:
            finished.add_metric([p, status], led.finished.get(status, 0))
            if status in led.last_finished:
                last_finished.add_metric([p, status], led.last_finished[status])
            _histogram(duration, [p, status], led.durations[status])
        _histogram(latency, [p], led.latency)
        lookups.add_metric([p], led.cache_lookups)
        for hit_type in HIT_TYPES:
            hits.add_metric([p, hit_type], led.cache_hits.get(hit_type, 0))
        _histogram(similarity, [p], led.similarity)
    yield from (
        batches,
        request_counts,
        oldest,
        expiry,
        finished,
        last_finished,
        duration,
        latency,
        lookups,
        hits,
    )
    yield similarity


_STATUS_ORDER = {s: i for i, s in enumerate(KNOWN_STATUSES)}
_KIND_ORDER = {
    k: i
    for i, k in enumerate(("total", "completed", "failed", "succeeded", "expired", "canceled", "pending"))
}


def _status_kind_order(item: tuple[tuple[str, str], int]) -> tuple[int, str, int]:
    (status, kind), _ = item
    return (_STATUS_ORDER.get(status, len(_STATUS_ORDER)), status, _KIND_ORDER.get(kind, 99))


def _job_families(fresh: Sequence[ProviderState]) -> Iterator[Metric]:
    info = GaugeMetricFamily(
        "bifrost_batch_job_info",
        "One active batch (per-batch series, capped by per_batch_limit)" + _CACHED,
        labels=["provider", "batch_id", "status", "endpoint", "completion_window"],
    )
    counts = GaugeMetricFamily(
        "bifrost_batch_job_request_counts",
        "request_counts.<kind> of one active batch" + _CACHED,
        labels=["provider", "batch_id", "kind"],
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
        "(completed+failed)/total, or Gemini progress/100, of one active batch" + _CACHED,
        labels=["provider", "batch_id"],
    )
    for state in fresh:
        assert state.snapshot is not None
        p = state.provider
        for job in state.snapshot.jobs:
            info.add_metric([p, job.batch_id, job.status, job.endpoint, job.completion_window], 1)
            for kind, value in job.request_counts:
                counts.add_metric([p, job.batch_id, kind], value)
            if job.created is not None:
                created.add_metric([p, job.batch_id], job.created)
            if job.expires is not None:
                expires.add_metric([p, job.batch_id], job.expires)
            if job.progress is not None:
                progress.add_metric([p, job.batch_id], job.progress)
    yield from (info, counts, created, expires, progress)


def _health_families(states: Sequence[ProviderState], reasons: Sequence[str]) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "bifrost_batch_exporter_up",
        "1 when every request of the last poll of the provider succeeded (after retries), else 0",
        labels=["provider"],
    )
    last_success = GaugeMetricFamily(
        "bifrost_batch_exporter_last_success_timestamp_seconds",
        "When the last complete poll of the provider finished (0 before the first)",
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
    pages = CounterMetricFamily("bifrost_batch_exporter_pages", "List pages fetched", labels=["provider"])
    supported = GaugeMetricFamily(
        "bifrost_batch_exporter_provider_supported",
        "0 after the gateway answered unsupported_operation for the provider's batch list",
        labels=["provider"],
    )
    truncated = GaugeMetricFamily(
        "bifrost_batch_exporter_truncated",
        "1 when the last poll stopped early (cursor loop, max_pages) and saw only part of the list",
        labels=["provider"],
    )
    dropped = GaugeMetricFamily(
        "bifrost_batch_exporter_per_batch_dropped",
        "Active batches left out of the per-batch series by per_batch_limit",
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
        pages.add_metric([p], state.ledger.pages)
        supported.add_metric([p], 1 if h.supported else 0)
        truncated.add_metric([p], 1 if h.truncated else 0)
        dropped.add_metric([p], state.snapshot.jobs_dropped if state.snapshot is not None else 0)
    build = GaugeMetricFamily(
        "bifrost_batch_exporter_build_info",
        "Version of the exporter and of the Python running it",
        labels=["version", "python_version"],
    )
    build.add_metric([__version__, platform.python_version()], 1)
    yield from (up, last_success, duration, polls, errors, pages, supported, truncated, dropped, build)


def _landing(states: Sequence[ProviderState], now: float, stale_after: float) -> bytes:
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
            counts = ", ".join(f"{s}: {n}" for s, n in state.snapshot.counts.items() if n) or "no batches"
        else:
            counts = "no fresh data"
        rows.append(
            f"<tr><td>{html.escape(state.provider)}</td><td>{'up' if h.up else 'DOWN' if h.attempted else 'pending'}"
            f"</td><td>{last}</td><td>{html.escape(counts)}</td></tr>"
        )
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Bifrost batch exporter</title></head><body>"
        f"<h1>Bifrost batch exporter</h1><p>Version {html.escape(__version__)}. "
        "<a href='/metrics'>Metrics</a> · <a href='/healthz'>healthz</a> · <a href='/readyz'>readyz</a></p>"
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
) -> Rendered:
    """Every encoding of the exposition plus the landing page, from one consistent set of states."""
    fresh = [s for s in states if is_fresh(s, now, stale_after)]
    families: list[Metric] = list(_batch_families(fresh))
    if per_batch:
        families.extend(_job_families(fresh))
    families.extend(_health_families(states, reasons))
    families = [f for f in families if f.samples]
    text, openmetrics = encode(families)
    return Rendered(
        text=text,
        text_gzip=gzip.compress(text, _GZIP_LEVEL, mtime=0),
        openmetrics=openmetrics,
        openmetrics_gzip=gzip.compress(openmetrics, _GZIP_LEVEL, mtime=0),
        landing=_landing(states, now, stale_after),
        ready=all(s.health.attempted for s in states),
        rendered_at=now,
    )

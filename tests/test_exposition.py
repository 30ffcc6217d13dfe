"""Our encoder against prometheus_client's: both parsers must read our bytes exactly as they read its bytes."""

from __future__ import annotations

import math
from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.registry import Collector

from exporter.exposition import encode


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def families() -> list[Metric]:
    gauge = GaugeMetricFamily(
        "bifrost_batches", 'Help with "quotes", a \\ and\na newline', labels=["provider", "status"]
    )
    gauge.add_metric(["openai", "in_progress"], 3)
    gauge.add_metric(['we"ird\\name\nx', "JOB_STATE_QUEUED"], 0)
    gauge.add_metric(["ünïcödé", "ended"], 1.5e-7)
    gauge.add_metric(["big", "completed"], 1.7954436294e9)
    gauge.add_metric(["inf", "failed"], math.inf)
    counter = CounterMetricFamily("bifrost_batch_finished", "Counter help", labels=["provider", "status"])
    counter.add_metric(["openai", "failed"], 7)
    plain = GaugeMetricFamily("bifrost_batch_exporter_build_info", "No labels here")
    plain.add_metric([], 1)
    hist = HistogramMetricFamily("bifrost_batch_duration_seconds", "Histogram", labels=["provider", "status"])
    hist.add_metric(["openai", "completed"], [("60.0", 1), ("300.0", 4), ("+Inf", 9)], 1234.5)
    return [gauge, counter, plain, hist]


def _samples(parsed: Iterable[Metric]) -> list[tuple[str, str, str, list[tuple[str, dict[str, str], float]]]]:
    return [
        (f.name, f.type, f.documentation, [(s.name, dict(s.labels), s.value) for s in f.samples])
        for f in parsed
    ]


def test_text_format_reads_the_same() -> None:
    ours, _ = encode(families())
    theirs = generate_latest(_Fixed(families()))
    assert _samples(parse_text(ours.decode())) == _samples(parse_text(theirs.decode()))


def test_openmetrics_reads_the_same() -> None:
    _, ours = encode(families())
    theirs: bytes = generate_openmetrics(_Fixed(families()))  # type: ignore[no-untyped-call]
    assert ours.endswith(b"# EOF\n")
    parsed_ours = _samples(parse_openmetrics(ours.decode()))  # type: ignore[no-untyped-call]
    parsed_theirs = _samples(parse_openmetrics(theirs.decode()))  # type: ignore[no-untyped-call]
    assert parsed_ours == parsed_theirs


def test_counter_names_per_format() -> None:
    text, om = encode(families())
    assert b"# TYPE bifrost_batch_finished_total counter\n" in text
    assert b"# TYPE bifrost_batch_finished counter\n" in om
    assert b'bifrost_batch_finished_total{provider="openai",status="failed"} 7.0\n' in text + om

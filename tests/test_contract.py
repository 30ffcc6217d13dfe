"""The metrics contract, end to end: simulator → real HTTP → exporter → real HTTP → parsed exposition.

Each scenario is built exactly in a non-lifecycle simulator, so every expected value is known in advance.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from exporter.client import REASONS
from exporter.models import ACTIVE_STATUSES, KNOWN_STATUSES, TERMINAL_STATUSES
from exporter.outcomes import OUTCOMES
from exporter.simulator import ProviderSpec, Simulator
from tests.conftest import require_tool
from tests.harness import ExporterThread, make_settings, series, value

STYLES = [
    pytest.param(
        ProviderSpec("openai", style="cursor", keys=3, empty_keys=(1,)), id="next_cursor-across-keys"
    ),
    pytest.param(ProviderSpec("openai", style="legacy", flavor="azure"), id="first_id-last_id"),
]


@pytest.fixture
def now() -> int:
    return int(time.time())


def _scenario(sim: Simulator, p: str, now: int) -> None:
    """Eight batches: two in_progress, one validating, one finished before the exporter, odd spellings."""
    sim.add_batch(
        p,
        batch_id="b1",
        status="in_progress",
        created_at=now - 3600,
        expires_at=now + 82800,
        request_counts={"total": 100, "completed": 40, "failed": 2},
        extra_fields={"latency": 5, "cache_debug": {"cache_hit": True, "hit_type": "direct"}},
    )
    sim.add_batch(
        p,
        batch_id="b2",
        status="in_progress",
        created_at=now - 600,
        expires_at=now + 85800,
        request_counts={"total": 10, "completed": 1, "failed": 0},
        extra_fields={
            "latency": 5,
            "cache_debug": {"cache_hit": True, "hit_type": "semantic", "similarity": 0.93},
        },
    )
    sim.add_batch(
        p,
        batch_id="b3",
        status="validating",
        created_at=now - 120,
        expires_at=now + 86280,
        request_counts={"total": 5, "completed": 0, "failed": 0},
        extra_fields={"latency": 5, "cache_debug": {"cache_hit": False}},
    )
    sim.add_batch(
        p,
        batch_id="b4",
        status="failed",
        created_at=now - 7200,
        failed_at=now - 50,
        request_counts={"total": 20, "completed": 0, "failed": 20},
    )
    sim.add_batch(
        p,
        batch_id="b5",
        status="canceled",
        created_at=now - 5000,
        cancelled_at=now - 4000,
        request_counts={"total": 7, "completed": 3, "failed": 0},
    )
    sim.add_batch(
        p,
        batch_id="b6",
        status="JOB_STATE_QUEUED",
        created_at=now - 30,
        request_counts={"total": 1, "completed": 0, "failed": 0},
    )
    sim.add_batch(
        p,
        batch_id="b7",
        status="completed",
        created_at=now - 9000,
        completed_at=now - 8000,
        request_counts={"total": 50, "completed": 50, "failed": 0},
    )
    sim.add_batch(
        p,
        batch_id="b8",
        status="finalizing",
        created_at=now - 4000,
        expires_at=now + 1000,
        request_counts={"total": 30, "completed": 30, "failed": 0},
    )


@pytest.fixture(params=STYLES)
def world(request: pytest.FixtureRequest, now: int) -> Iterator[tuple[Simulator, ExporterThread]]:
    spec: ProviderSpec = request.param
    with Simulator(providers=[spec], lifecycle=False, latency_ms=250) as sim:
        _scenario(sim, "openai", now)
        settings = make_settings(sim.url, ["openai"], page_size=2, per_batch_metrics=True)
        with ExporterThread(settings) as exp:
            yield sim, exp


def test_first_poll_exposes_exact_aggregates(world: tuple[Simulator, ExporterThread], now: int) -> None:
    _, exp = world
    exp.poll()
    s = exp.samples()
    p = "openai"
    expected_counts = dict.fromkeys(KNOWN_STATUSES, 0)
    expected_counts.update(in_progress=2, validating=1, failed=1, cancelled=1, completed=1, finalizing=1)
    for status, n in expected_counts.items():
        assert value(s, "bifrost_batches", provider=p, status=status) == n, status
    assert value(s, "bifrost_batches", provider=p, status="JOB_STATE_QUEUED") == 1

    # requests by disjoint outcome, summed per status; every outcome present; they add up to request_counts.total
    def requests(status: str, outcome: str) -> float | None:
        return value(s, "bifrost_batch_requests", provider=p, status=status, outcome=outcome)

    assert requests("in_progress", "succeeded") == 41
    assert requests("in_progress", "failed") == 2
    assert requests("in_progress", "pending") == 67
    assert sum(requests("in_progress", o) or 0 for o in OUTCOMES) == 110
    assert requests("failed", "failed") == 20
    # a terminal batch has nothing pending: a cancelled batch's remainder was cancelled
    assert requests("cancelled", "succeeded") == 3 and requests("cancelled", "cancelled") == 4
    assert requests("cancelled", "pending") == 0
    for status in KNOWN_STATUSES:
        for outcome in OUTCOMES:
            assert requests(status, outcome) is not None
    # oldest created per active status, next expiry among active batches
    assert (
        value(s, "bifrost_batch_oldest_created_timestamp_seconds", provider=p, status="in_progress")
        == now - 3600
    )
    assert (
        value(s, "bifrost_batch_oldest_created_timestamp_seconds", provider=p, status="validating")
        == now - 120
    )
    assert (
        value(s, "bifrost_batch_oldest_created_timestamp_seconds", provider=p, status="finalizing")
        == now - 4000
    )
    assert value(s, "bifrost_batch_oldest_created_timestamp_seconds", provider=p, status="cancelling") is None
    assert value(s, "bifrost_batch_next_expiry_timestamp_seconds", provider=p) == now + 1000
    # batches that finished before the exporter started are not counted, but their timestamps are shown
    for status in TERMINAL_STATUSES:
        assert value(s, "bifrost_batch_finished_total", provider=p, status=status) == 0
        assert value(s, "bifrost_batch_duration_seconds_count", provider=p, status=status) == 0
    assert value(s, "bifrost_batch_last_finished_timestamp_seconds", provider=p, status="failed") == now - 50
    assert (
        value(s, "bifrost_batch_last_finished_timestamp_seconds", provider=p, status="cancelled")
        == now - 4000
    )
    assert (
        value(s, "bifrost_batch_last_finished_timestamp_seconds", provider=p, status="completed")
        == now - 8000
    )
    # paging: 8 batches at limit 2
    pages = value(s, "bifrost_batch_exporter_requests_total", provider=p, endpoint="list")
    assert pages is not None and pages >= 4
    assert value(s, "bifrost_batch_exporter_requests_total", provider=p, endpoint="retrieve") == 0
    assert value(s, "bifrost_batch_upstream_latency_seconds_count", provider=p) == pages
    # cache: item lookups counted once per id (3 items) plus any list responses carrying cache_debug
    lookups = value(s, "bifrost_batch_cache_lookups_total", provider=p)
    assert lookups is not None and lookups >= 3
    assert value(s, "bifrost_batch_cache_hits_total", provider=p, hit_type="direct") is not None
    assert value(s, "bifrost_batch_cache_hits_total", provider=p, hit_type="unknown") is not None
    semantic_hits = value(s, "bifrost_batch_cache_hits_total", provider=p, hit_type="semantic")
    assert semantic_hits is not None and semantic_hits >= 1
    assert value(s, "bifrost_batch_cache_similarity_count", provider=p) == semantic_hits
    assert value(s, "bifrost_batch_cache_similarity_bucket", provider=p, le="0.9") is not None
    # health
    assert value(s, "bifrost_batch_exporter_up", provider=p) == 1
    assert value(s, "bifrost_batch_exporter_polls_total", provider=p) == 1
    assert value(s, "bifrost_batch_exporter_truncated", provider=p) == 0
    assert value(s, "bifrost_batch_exporter_provider_supported", provider=p) == 1
    for reason in REASONS:
        assert value(s, "bifrost_batch_exporter_poll_errors_total", provider=p, reason=reason) == 0
    last = value(s, "bifrost_batch_exporter_last_success_timestamp_seconds", provider=p)
    assert last is not None and abs(last - time.time()) < 30
    # per-batch series: active batches only, newest first
    jobs = {lbl["batch_id"]: lbl for lbl, _ in series(s, "bifrost_batch_job_info", provider=p)}
    assert set(jobs) == {"b1", "b2", "b3", "b8"}
    assert jobs["b1"]["status"] == "in_progress"
    assert value(s, "bifrost_batch_job_progress_ratio", provider=p, batch_id="b1") == pytest.approx(0.42)
    assert value(s, "bifrost_batch_job_requests", provider=p, batch_id="b1", outcome="succeeded") == 40
    assert value(s, "bifrost_batch_job_requests", provider=p, batch_id="b1", outcome="pending") == 58
    assert value(s, "bifrost_batch_job_created_timestamp_seconds", provider=p, batch_id="b3") == now - 120
    assert value(s, "bifrost_batch_job_expires_timestamp_seconds", provider=p, batch_id="b8") == now + 1000
    assert value(s, "bifrost_batch_exporter_per_batch_dropped", provider=p) == 0


def test_transitions_are_counted_once_with_duration(
    world: tuple[Simulator, ExporterThread], now: int
) -> None:
    sim, exp = world
    exp.poll()
    sim.set_status("openai", "b1", "completed")
    sim.set_status("openai", "b3", "expired")
    exp.poll()
    exp.poll()  # seeing the same finished batches again must not count them twice
    s = exp.samples()
    p = "openai"
    assert value(s, "bifrost_batch_finished_total", provider=p, status="completed") == 1
    assert value(s, "bifrost_batch_finished_total", provider=p, status="expired") == 1
    assert value(s, "bifrost_batch_finished_total", provider=p, status="failed") == 0
    # b1 ran ~3600 s: outside le=3600 (a second or two past), inside le=7200
    assert value(s, "bifrost_batch_duration_seconds_count", provider=p, status="completed") == 1
    assert value(s, "bifrost_batch_duration_seconds_bucket", provider=p, status="completed", le="1800.0") == 0
    assert value(s, "bifrost_batch_duration_seconds_bucket", provider=p, status="completed", le="7200.0") == 1
    duration_sum = value(s, "bifrost_batch_duration_seconds_sum", provider=p, status="completed")
    assert duration_sum is not None and 3600 <= duration_sum < 3700
    assert (
        value(s, "bifrost_batch_duration_seconds_bucket", provider=p, status="expired", le="60.0") == 0
    )  # ran ~120 s
    assert value(s, "bifrost_batch_duration_seconds_bucket", provider=p, status="expired", le="300.0") == 1
    assert value(s, "bifrost_batches", provider=p, status="in_progress") == 1
    assert value(s, "bifrost_batch_exporter_polls_total", provider=p) == 3
    last_completed = value(s, "bifrost_batch_last_finished_timestamp_seconds", provider=p, status="completed")
    assert last_completed is not None and last_completed >= now


def test_restart_adds_nothing_for_batches_finished_before_start(now: int) -> None:
    spec = ProviderSpec("openai", style="cursor", keys=2)
    with Simulator(providers=[spec], lifecycle=False) as sim:
        _scenario(sim, "openai", now)
        settings = make_settings(sim.url, ["openai"], page_size=3)
        with ExporterThread(settings) as first:
            first.poll()
            sim.set_status("openai", "b1", "completed")
            sim.set_status("openai", "b2", "failed")
            first.poll()
            s = first.samples()
            assert value(s, "bifrost_batch_finished_total", provider="openai", status="completed") == 1
            assert value(s, "bifrost_batch_finished_total", provider="openai", status="failed") == 1
        time.sleep(1.1)  # terminal timestamps have one-second resolution; the restart must be strictly later
        with ExporterThread(settings) as second:
            second.poll()
            second.poll()
            s = second.samples()
            for status in TERMINAL_STATUSES:
                assert value(s, "bifrost_batch_finished_total", provider="openai", status=status) == 0, status
            sim.set_status("openai", "b3", "cancelled")
            second.poll()
            s = second.samples()
            assert value(s, "bifrost_batch_finished_total", provider="openai", status="cancelled") == 1


def test_anthropic_and_gemini_shapes(now: int) -> None:
    specs = [ProviderSpec("anthropic", flavor="anthropic"), ProviderSpec("gemini", flavor="gemini")]
    with Simulator(providers=specs, lifecycle=False) as sim:
        sim.add_batch(
            "anthropic",
            batch_id="msgbatch_1",
            status="in_progress",
            created_at=now - 100,
            request_counts={"total": 0, "completed": 0, "failed": 0, "pending": 9, "succeeded": 1},
        )
        sim.add_batch(
            "gemini",
            batch_id="batches/1",
            status="in_progress",
            created_at=now - 100,
            progress=40,
            request_counts={"total": 10, "completed": 1, "failed": 0},
        )
        sim.add_batch("gemini", batch_id="batches/2", status="in_progress", created_at=now - 50)
        settings = make_settings(sim.url, ["anthropic", "gemini"], per_batch_metrics=True)
        with ExporterThread(settings) as exp:
            exp.poll()
            sim.set_status("anthropic", "msgbatch_1", "ended")
            # Gemini `deleted` carries no terminal timestamp: counted only because we saw it active before
            sim.set_status("gemini", "batches/2", "deleted")
            sim.add_batch("gemini", batch_id="batches/3", status="deleted", created_at=now - 10)
            exp.poll()
            s = exp.samples()
    assert value(s, "bifrost_batch_finished_total", provider="anthropic", status="ended") == 1
    assert value(s, "bifrost_batch_duration_seconds_count", provider="anthropic", status="ended") == 1
    # Anthropic's explicit pending is nothing pending once the batch ended: it counts as failed (the remainder)
    ended = {
        o: value(s, "bifrost_batch_requests", provider="anthropic", status="ended", outcome=o)
        for o in OUTCOMES
    }
    assert ended == {"succeeded": 1, "failed": 9, "expired": 0, "cancelled": 0, "pending": 0}
    assert value(s, "bifrost_batch_finished_total", provider="gemini", status="deleted") == 1
    assert value(s, "bifrost_batch_duration_seconds_count", provider="gemini", status="deleted") == 0
    assert value(s, "bifrost_batches", provider="gemini", status="deleted") == 2
    assert value(
        s, "bifrost_batch_job_progress_ratio", provider="gemini", batch_id="batches/1"
    ) == pytest.approx(0.4)


def test_per_batch_cap_and_unknown_status_cap(now: int) -> None:
    with Simulator(providers=[ProviderSpec("openai")], lifecycle=False) as sim:
        for i in range(30):
            sim.add_batch("openai", batch_id=f"a{i:02d}", status="in_progress", created_at=now - 1000 + i)
        for i in range(25):
            sim.add_batch("openai", batch_id=f"u{i:02d}", status=f"WEIRD_{i:02d}", created_at=now - 10)
        settings = make_settings(
            sim.url, ["openai"], per_batch_metrics=True, per_batch_limit=10, page_size=100
        )
        with ExporterThread(settings) as exp:
            exp.poll()
            s = exp.samples()
    jobs = sorted(lbl["batch_id"] for lbl, _ in series(s, "bifrost_batch_job_info", provider="openai"))
    assert jobs == [f"a{i:02d}" for i in range(20, 30)]  # the ten newest
    assert value(s, "bifrost_batch_exporter_per_batch_dropped", provider="openai") == 20
    unknown = {lbl["status"] for lbl, _ in series(s, "bifrost_batches", provider="openai")} - set(
        KNOWN_STATUSES
    )
    assert len(unknown) == 21 and "other" in unknown  # 20 passed through, the rest folded into "other"
    assert value(s, "bifrost_batches", provider="openai", status="other") == 5


def test_active_statuses_absent_timestamps_when_no_active_batches(now: int) -> None:
    with Simulator(providers=[ProviderSpec("openai")], lifecycle=False) as sim:
        sim.add_batch(
            "openai", batch_id="done", status="completed", created_at=now - 100, completed_at=now - 90
        )
        with ExporterThread(make_settings(sim.url, ["openai"])) as exp:
            exp.poll()
            s = exp.samples()
    for status in ACTIVE_STATUSES:
        assert (
            value(s, "bifrost_batch_oldest_created_timestamp_seconds", provider="openai", status=status)
            is None
        )
    assert value(s, "bifrost_batch_next_expiry_timestamp_seconds", provider="openai") is None
    assert value(s, "bifrost_batches", provider="openai", status="completed") == 1


def test_two_long_ids_sharing_their_first_256_characters_are_two_per_batch_series(now: int) -> None:
    """A batch_id label is at most 256 characters; ids longer than that which share that much stay two series (a
    hash of the whole id ends the label), never two identical series of which Prometheus keeps one."""
    prefix = "batch_" + "x" * 294
    with Simulator(providers=[ProviderSpec("openai", keys=1)], lifecycle=False) as sim:
        for tail in ("a", "b"):
            sim.add_batch("openai", batch_id=prefix + tail, status="in_progress", created_at=now - 600)
        settings = make_settings(sim.url, ["openai"], per_batch_metrics=True)
        with ExporterThread(settings) as exp:
            exp.poll()
            samples = exp.samples()
            lint = subprocess.run(
                [require_tool("promtool"), "check", "metrics"], input=exp.get().content, capture_output=True
            )
            # The last failure names the batch as its per-batch series did (one query joins the two).
            sim.set_status("openai", prefix + "a", "failed", now - 5)
            exp.poll()
            after = exp.samples()
    assert lint.returncode == 0, lint.stdout + lint.stderr
    ids = [labels["batch_id"] for labels, _ in series(samples, "bifrost_batch_job_info", provider="openai")]
    assert len(ids) == 2 and len(set(ids)) == 2
    assert all(len(i) == 256 and i.startswith(prefix[:200]) for i in ids)
    last = list(series(after, "bifrost_batch_last_failure_info", provider="openai", status="failed"))
    assert len(last) == 1 and last[0][0]["batch_id"] in ids


def test_a_camel_case_metadata_key_becomes_a_snake_case_label(now: int) -> None:
    """`metadata_labels: [teamName]` (JSON metadata is often camelCase): the label is `metadata_team_name`, which
    `promtool check metrics` accepts (it refuses camelCase label names), with the key's values."""
    with Simulator(providers=[ProviderSpec("openai", keys=1)], lifecycle=False) as sim:
        sim.add_batch(
            "openai", batch_id="t0", status="in_progress", created_at=now - 600, metadata={"teamName": "ml"}
        )
        settings = make_settings(sim.url, ["openai"], metadata_labels=["teamName"])
        with ExporterThread(settings) as exp:
            exp.poll()
            samples = exp.samples()
            lint = subprocess.run(
                [require_tool("promtool"), "check", "metrics"], input=exp.get().content, capture_output=True
            )
    assert lint.returncode == 0 and lint.stdout + lint.stderr == b"", lint.stdout + lint.stderr
    assert (
        value(samples, "bifrost_batches", provider="openai", status="in_progress", metadata_team_name="ml")
        == 1
    )


def test_metadata_labels_route_by_owner(now: int) -> None:
    """`metadata_labels: [team]`: the owner's label on the batch-data series; zeros for known statuses in the ""
    group only; counters present from 0 for every team listed, so a team's first failure is an increase."""
    with Simulator(providers=[ProviderSpec("openai", keys=1)], lifecycle=False) as sim:
        for i, team in enumerate(("ml", "ml", "search")):
            sim.add_batch(
                "openai",
                batch_id=f"t{i}",
                status="in_progress",
                created_at=now - 72_000,
                expires_at=now + 14_400,
                request_counts={"total": 100, "completed": 0, "failed": 0},
                metadata={"team": team},
            )
        sim.add_batch(
            "openai", batch_id="anon", status="completed", created_at=now - 50, completed_at=now - 10
        )
        settings = make_settings(sim.url, ["openai"], metadata_labels=["team"], per_batch_metrics=True)
        with ExporterThread(settings) as exp:
            exp.poll()
            before = exp.samples()
            sim.set_status("openai", "t2", "failed")
            exp.poll()
            after = exp.samples()
            lint = subprocess.run(
                [require_tool("promtool"), "check", "metrics"], input=exp.get().content, capture_output=True
            )
    assert lint.returncode == 0 and lint.stdout + lint.stderr == b"", lint.stdout + lint.stderr
    p = "openai"
    assert value(before, "bifrost_batches", provider=p, status="in_progress", metadata_team="ml") == 2
    assert value(before, "bifrost_batches", provider=p, status="in_progress", metadata_team="search") == 1
    assert value(before, "bifrost_batches", provider=p, status="validating", metadata_team="") == 0
    assert value(before, "bifrost_batches", provider=p, status="validating", metadata_team="ml") is None
    # nothing done in 20 h of a 24 h window: both teams' batches are at risk, and say whose they are
    assert value(before, "bifrost_batch_at_risk", provider=p, metadata_team="ml") == 2
    assert value(before, "bifrost_batch_at_risk_requests", provider=p, metadata_team="search") == 100
    assert value(before, "bifrost_batch_at_risk", provider=p, metadata_team="") == 0
    assert (
        value(before, "bifrost_batch_finished_total", provider=p, status="failed", metadata_team="search")
        == 0
    )
    assert (
        value(after, "bifrost_batch_finished_total", provider=p, status="failed", metadata_team="search") == 1
    )
    assert (
        value(
            after,
            "bifrost_batch_failures_total",
            provider=p,
            status="failed",
            code="none",
            metadata_team="search",
            **{"class": "unknown"},
        )
        is not None
    )
    assert value(after, "bifrost_batch_oldest_created_timestamp_seconds", provider=p, status="in_progress",
                 metadata_team="ml") == now - 72_000  # fmt: skip

"""Every simulator fault: the exporter stays up, reports the right reason, keeps the last good data, recovers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from exporter.simulator import ProviderSpec, Simulator
from exporter.snapshot import COVERAGE_REASONS
from tests.conftest import free_port
from tests.harness import ExporterThread, Samples, make_settings, series, value, wait_until

P = "openai"

FAILURES = [
    ("server_error", {}, "server_error"),
    ("bad_gateway", {}, "server_error"),
    ("rate_limit", {"retry_after": 1}, "rate_limited"),
    ("slow", {"delay": 3}, "timeout"),
    ("malformed_json", {}, "invalid_response"),
    ("html", {}, "invalid_response"),
    ("not_list", {}, "invalid_response"),
    ("auth", {}, "auth"),
    ("forbidden", {}, "auth"),
    # the provider refused the gateway's own key: its 401/403 is kept, not a Bifrost error
    ("upstream_auth", {}, "upstream_auth"),
    ("upstream_forbidden", {}, "upstream_auth"),
    # no key of the provider is enabled for batch APIs: a status-less core error, sent as 400
    ("no_batch_keys", {}, "client_error"),
]
# fault → the reason it is reported as. A page of ids already seen under a fresh cursor is not a loop (keys of one
# account repeat each other's batches): paging goes on while the cursor moves, up to max_pages.
TRUNCATIONS = {"cursor_loop": "cursor_loop", "repeat_page": "max_pages", "no_cursor": "cursor_loop"}


@pytest.fixture
def world(request: pytest.FixtureRequest) -> Iterator[tuple[Simulator, ExporterThread]]:
    """The gateway and an exporter in `incremental` mode, or in the mode a test names through indirect params."""
    mode = getattr(request, "param", "incremental")
    now = int(time.time())
    spec = ProviderSpec(P, style="cursor", keys=2)
    with Simulator(providers=[spec, ProviderSpec("azure", style="legacy")], lifecycle=False) as sim:
        for i in range(6):
            sim.add_batch(P, batch_id=f"b{i}", status="in_progress", created_at=now - 100 * i)
            sim.add_batch("azure", batch_id=f"z{i}", status="completed", created_at=now - 100 * i)
        settings = make_settings(
            sim.url, [P, "azure"], page_size=2, request_timeout_seconds=1, poll_mode=mode
        )
        with ExporterThread(settings) as exp:
            exp.poll()
            s = exp.samples()
            assert value(s, "bifrost_batch_exporter_up", provider=P) == 1
            assert value(s, "bifrost_batches", provider=P, status="in_progress") == 6
            yield sim, exp


@pytest.mark.parametrize(("fault", "params", "reason"), FAILURES, ids=[f[0] for f in FAILURES])
def test_failure_keeps_last_good_data_and_recovers(
    world: tuple[Simulator, ExporterThread], fault: str, params: dict[str, Any], reason: str
) -> None:
    sim, exp = world
    sim.set_fault(fault, provider=P, **params)
    exp.poll()
    s = exp.samples()
    assert value(s, "bifrost_batch_exporter_up", provider=P) == 0
    assert value(s, "bifrost_batch_exporter_poll_errors_total", provider=P, reason=reason) == 1
    others = [
        v
        for (n, lbl), v in s.items()
        if n == "bifrost_batch_exporter_poll_errors_total"
        and ("provider", P) in lbl
        and ("reason", reason) not in lbl
    ]
    assert others and all(v == 0 for v in others)
    # last good data still served; the other provider is unaffected
    assert value(s, "bifrost_batches", provider=P, status="in_progress") == 6
    assert value(s, "bifrost_batch_exporter_up", provider="azure") == 1
    assert exp.get("/healthz").status_code == 200
    sim.set_fault(None)
    sim.set_status(P, "b0", "completed")
    exp.poll()
    s = exp.samples()
    assert value(s, "bifrost_batch_exporter_up", provider=P) == 1
    assert value(s, "bifrost_batches", provider=P, status="in_progress") == 5
    assert value(s, "bifrost_batch_finished_total", provider=P, status="completed") == 1
    assert value(s, "bifrost_batch_exporter_poll_errors_total", provider=P, reason=reason) == 1


def coverage(samples: Samples, provider: str) -> str:
    """The one reason bifrost_batch_exporter_coverage sets to 1 (every reason is present, the others 0)."""
    values = dict(
        (lbl["reason"], v) for lbl, v in series(samples, "bifrost_batch_exporter_coverage", provider=provider)
    )
    assert set(values) == set(COVERAGE_REASONS), values
    (reason,) = [r for r, v in values.items() if v == 1]
    assert sum(values.values()) == 1
    return reason


# In `full` mode every poll lists everything, so a cursor defect truncates the poll it hits; in `incremental` mode
# only a full list (or newest pages still showing new batches) can hit it: tests/test_incremental.py covers that.
@pytest.mark.parametrize("world", ["full"], indirect=True)
@pytest.mark.parametrize("fault", TRUNCATIONS)
def test_cursor_defects_truncate_without_looping(world: tuple[Simulator, ExporterThread], fault: str) -> None:
    sim, exp = world
    before = value(exp.samples(), "bifrost_batch_exporter_requests_total", provider=P, endpoint="list") or 0
    sim.set_fault(fault, provider=P)
    started = time.monotonic()
    exp.poll()
    assert time.monotonic() - started < 5
    s = exp.samples()
    # the gateway answered every request: up stays 1, the data is partial and says so
    assert value(s, "bifrost_batch_exporter_up", provider=P) == 1
    assert value(s, "bifrost_batch_exporter_truncated", provider=P) == 1
    errors = {
        lbl["reason"]: v for lbl, v in series(s, "bifrost_batch_exporter_poll_errors_total", provider=P) if v
    }
    assert errors == {TRUNCATIONS[fault]: 1}
    assert coverage(s, P) == TRUNCATIONS[fault]  # why the list is partial, as one series set to 1
    pages = value(s, "bifrost_batch_exporter_requests_total", provider=P, endpoint="list")
    assert pages is not None and pages - before <= 200  # never beyond max_pages
    sim.set_fault(None)
    exp.poll()
    s = exp.samples()
    assert value(s, "bifrost_batch_exporter_truncated", provider=P) == 0
    assert coverage(s, P) == "complete"
    assert value(s, "bifrost_batches", provider=P, status="in_progress") == 6


def test_max_pages_truncates(world: tuple[Simulator, ExporterThread]) -> None:
    sim, _ = world
    settings = make_settings(sim.url, ["azure"], page_size=2, max_pages=2, poll_mode="full")
    with ExporterThread(settings) as strict:
        strict.poll()
        s = strict.samples()
    assert value(s, "bifrost_batch_exporter_truncated", provider="azure") == 1
    assert value(s, "bifrost_batch_exporter_up", provider="azure") == 1
    assert value(s, "bifrost_batch_exporter_poll_errors_total", provider="azure", reason="max_pages") == 1
    assert coverage(s, "azure") == "max_pages"
    assert value(s, "bifrost_batch_exporter_requests_total", provider="azure", endpoint="list") == 2
    assert value(s, "bifrost_batches", provider="azure", status="completed") == 4  # 2 pages of 2 of the 6


def test_unsupported_provider_is_not_a_failure(world: tuple[Simulator, ExporterThread]) -> None:
    sim, _ = world
    settings = make_settings(sim.url, [P, "cohere"])
    with ExporterThread(settings) as other:
        other.poll()
        s = other.samples()
        assert other.get("/readyz").status_code == 200
    assert value(s, "bifrost_batch_exporter_provider_supported", provider="cohere") == 0
    assert value(s, "bifrost_batch_exporter_up", provider="cohere") == 1
    assert value(s, "bifrost_batches", provider="cohere", status="completed") is None
    assert all(
        v == 0
        for (n, lbl), v in s.items()
        if n == "bifrost_batch_exporter_poll_errors_total" and ("provider", "cohere") in lbl
    )
    assert value(s, "bifrost_batch_exporter_provider_supported", provider=P) == 1


def test_retries_hide_transient_faults(world: tuple[Simulator, ExporterThread]) -> None:
    sim, _ = world
    settings = make_settings(sim.url, [P], page_size=2, max_retries=3)
    with structlog.testing.capture_logs() as logs, ExporterThread(settings) as exp:
        sim.set_fault("server_error", provider=P, times=2)
        exp.poll()
        s = exp.samples()
        assert value(s, "bifrost_batch_exporter_up", provider=P) == 1
        assert value(s, "bifrost_batch_exporter_poll_errors_total", provider=P, reason="server_error") == 0
        # Absorbed, but said: the info summary counts the requests sent again (a gateway that needs retries on
        # every request looked healthy until the last retry failed; audit 11).
        (summary,) = [e for e in logs if e["event"] == "polls_summary"]
        assert summary["retries"] == 2
        # Retry-After is honoured: the retry waits at least that long
        sim.set_fault("rate_limit", provider=P, times=1, retry_after=1)
        started = time.monotonic()
        exp.poll()
        assert time.monotonic() - started >= 1.0
        assert value(exp.samples(), "bifrost_batch_exporter_up", provider=P) == 1


def test_gateway_down_is_connection_error() -> None:
    settings = make_settings(f"http://127.0.0.1:{free_port()}", [P])
    with ExporterThread(settings) as exp:
        exp.poll()
        s = exp.samples()
        assert exp.get("/readyz").status_code == 200  # a failed first attempt still counts as attempted
    assert value(s, "bifrost_batch_exporter_up", provider=P) == 0
    assert value(s, "bifrost_batch_exporter_poll_errors_total", provider=P, reason="connection") == 1
    assert value(s, "bifrost_batch_exporter_last_success_timestamp_seconds", provider=P) == 0
    assert value(s, "bifrost_batches", provider=P, status="in_progress") is None


def test_unsupported_provider_is_asked_again_only_every_10_intervals(
    world: tuple[Simulator, ExporterThread],
) -> None:
    sim, _ = world
    settings = make_settings(sim.url, [P, "cohere"], poll_interval_seconds=1)
    with ExporterThread(settings, auto_poll=True) as exp:
        wait_until(lambda: (value(exp.samples(), "bifrost_batch_exporter_polls_total", provider=P) or 0) >= 4)
        s = exp.samples()
    assert value(s, "bifrost_batch_exporter_polls_total", provider="cohere") == 1
    assert value(s, "bifrost_batch_exporter_provider_supported", provider="cohere") == 0

"""Disjoint request outcomes: for every provider shape Bifrost produces (docs/providers.md, "Request outcomes"),
`sum without (outcome)` is the batches' request_counts.total — in the mapping itself and on a real scrape."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.models import KNOWN_STATUSES, TERMINAL_STATUSES, RequestCounts, normalize_status
from exporter.outcomes import MAX_COUNT, OUTCOMES, outcomes
from exporter.simulator import DEFAULT_PROVIDERS, Simulator
from tests.harness import ExporterThread, make_settings, series

# (provider shape, status, request_counts as Bifrost serialises them, expected outcomes s/f/e/c/p)
SHAPES: list[tuple[str, str, dict[str, int], tuple[int, int, int, int, int]]] = [
    ("openai active", "in_progress", {"total": 100, "completed": 40, "failed": 2}, (40, 2, 0, 0, 58)),
    ("openai completed", "completed", {"total": 100, "completed": 97, "failed": 3}, (97, 3, 0, 0, 0)),
    ("openai expired", "expired", {"total": 100, "completed": 60, "failed": 1}, (60, 1, 39, 0, 0)),
    ("openai cancelled", "cancelled", {"total": 10, "completed": 3, "failed": 0}, (3, 0, 0, 7, 0)),
    ("openai failed (validation)", "failed", {"total": 0, "completed": 0, "failed": 0}, (0, 0, 0, 0, 0)),
    (
        "anthropic processing",
        "in_progress",
        {"total": 30, "completed": 10, "failed": 2, "succeeded": 10, "pending": 18},
        (10, 2, 0, 0, 18),
    ),
    (
        "anthropic ended",
        "ended",
        {"total": 30, "completed": 20, "failed": 2, "succeeded": 20, "expired": 5, "canceled": 3},
        (20, 2, 5, 3, 0),
    ),
    ("bedrock list (no counts)", "in_progress", {"total": 0, "completed": 0, "failed": 0}, (0, 0, 0, 0, 0)),
    ("bedrock retrieve", "in_progress", {"total": 50, "completed": 20, "failed": 5}, (20, 5, 0, 0, 25)),
    ("bedrock PartiallyCompleted", "failed", {"total": 50, "completed": 40, "failed": 5}, (40, 10, 0, 0, 0)),
    (
        "gemini retrieve",
        "in_progress",
        {"total": 40, "completed": 25, "failed": 5, "succeeded": 20, "pending": 15},
        (20, 5, 0, 0, 15),
    ),
    (
        "gemini retrieve, zero succeeded omitted",
        "in_progress",
        {"total": 40, "completed": 25, "failed": 25, "pending": 15},
        (0, 25, 0, 0, 15),
    ),
]


@pytest.mark.parametrize(("shape", "status", "counts", "expected"), SHAPES, ids=[s[0] for s in SHAPES])
def test_each_provider_shape_maps_to_disjoint_outcomes_summing_to_total(
    shape: str, status: str, counts: dict[str, int], expected: tuple[int, ...]
) -> None:
    o = outcomes(RequestCounts.model_validate(counts), status)
    assert o[:5] == expected
    assert o.total == counts["total"]
    assert not o.overflow and not o.clamped


def test_parts_beyond_total_count_by_the_parts() -> None:
    o = outcomes(RequestCounts(total=5, succeeded=4, failed=3), "in_progress")
    assert o[:5] == (4, 3, 0, 0, 0) and o.overflow
    # OpenAI's shape with parts beyond the total is the gateway's error: counted by the parts (and logged), not
    # read in another provider's meaning
    o = outcomes(RequestCounts(total=10, completed=8, failed=5), "in_progress")
    assert o[:5] == (8, 5, 0, 0, 0) and o.overflow
    # Gemini's finished shape (nothing pending, zero `succeeded` omitted): `completed` is the total, all finished
    o = outcomes(RequestCounts(total=5, completed=5, failed=5), "completed")
    assert o[:5] == (0, 5, 0, 0, 0) and not o.overflow


@given(
    values=st.lists(st.one_of(st.none(), st.integers(-(10**30), 10**30)), min_size=7, max_size=7),
    status=st.sampled_from([*KNOWN_STATUSES, "weird"]),
)
def test_outcomes_are_never_negative_and_bounded(values: list[int | None], status: str) -> None:
    names = ("total", "completed", "failed", "succeeded", "expired", "canceled", "pending")
    o = outcomes(RequestCounts.model_validate(dict(zip(names, values, strict=True))), status)
    assert all(0 <= v <= 5 * MAX_COUNT for v in o[:5])
    if status in TERMINAL_STATUSES:
        assert o.pending == 0


def _listed_totals(sim: Simulator, provider: str) -> dict[str, int]:
    """request_counts.total per status of what the gateway lists (not its internal objects: Bedrock's and
    Gemini's list items carry no counts)."""
    items: dict[str, dict[str, Any]] = {}
    params = {"provider": provider, "limit": "100"}
    cursors: set[str] = set()
    while True:
        body = httpx.get(f"{sim.url}/v1/batches", params=params, timeout=10).json()
        for batch in body["data"]:
            items.setdefault(batch["id"], batch)
        cursor = body.get("next_cursor") or body.get("last_id")
        if not body.get("has_more") or not cursor or cursor in cursors:
            break
        cursors.add(cursor)
        params["after"] = cursor
    out: dict[str, int] = {}
    for batch in items.values():
        rc: dict[str, Any] = batch.get("request_counts") or {}
        status = normalize_status(batch.get("status"))
        out[status] = out.get(status, 0) + int(rc.get("total") or 0)
    return out


@pytest.mark.parametrize("provider", ["openai", "anthropic", "azure", "bedrock", "gemini"])
def test_scrape_sums_to_the_listed_totals(provider: str) -> None:
    """Through the simulator's shape for the provider, HTTP and the exporter: per status, the outcomes of
    bifrost_batch_requests add up to the request_counts.total of the batches the gateway lists."""
    specs = [s for s in DEFAULT_PROVIDERS if s.name == provider]
    assert specs, provider
    settings = dict(poll_mode="full", page_size=1000, max_pages=1000)
    now = time.time()
    with (
        # A stopped clock: the batches must not move between the exporter's poll and the listing compared with it.
        Simulator(providers=specs, seed=7, initial_batches=60, max_batches=80, clock=lambda: now) as sim,
        ExporterThread(make_settings(sim.url, [provider], **settings)) as exp,
    ):
        exp.poll()
        samples = exp.samples()
        expected = _listed_totals(sim, provider)
    got: dict[str, float] = {}
    for labels, v in series(samples, "bifrost_batch_requests", provider=provider):
        got[labels["status"]] = got.get(labels["status"], 0) + v
        assert labels["outcome"] in OUTCOMES, labels
    for status, total in expected.items():
        assert got.get(status) == total, (status, got, expected)


def test_outcome_label_values_spell_cancelled_as_the_status_does() -> None:
    """One spelling across labels: the outcome of a cancelled batch's lost requests is `cancelled`, as Bifrost's Go
    code spells the status (`status="cancelled"`), never Azure's documentation spelling `canceled`."""
    assert OUTCOMES == ("succeeded", "failed", "expired", "cancelled", "pending")
    assert "cancelled" in KNOWN_STATUSES
    o = outcomes(RequestCounts(total=10, completed=3, failed=0), "cancelled")
    assert dict(zip(OUTCOMES, o[:5], strict=True)) == {
        "succeeded": 3,
        "failed": 0,
        "expired": 0,
        "cancelled": 7,
        "pending": 0,
    }

"""Failure classes: one table (code → who must act), documented with its sources, exposed as a label of the failure
counters and derived at render time, so the ledger and its state file need no change."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.failure_classes import CLASSES, TABLE, failure_class
from exporter.simulator import ProviderSpec, Simulator
from tests.harness import ExporterThread, make_settings, series, value

ROOT = Path(__file__).resolve().parent.parent
RUNBOOK = ROOT / "docs" / "runbook.md"


def terminal_at(status: str, at: int) -> dict[str, Any]:
    """The batch's terminal timestamp field for `status` (`failed_at`, `expired_at`), as add_batch takes fields."""
    return {f"{status}_at": at}


def test_expired_is_always_the_providers_and_unknown_codes_are_unknown() -> None:
    assert failure_class("expired", "none") == "provider"
    assert (
        failure_class("expired", "invalid_json_line") == "provider"
    )  # it did not run in time, whatever it says
    assert failure_class("failed", "invalid_json_line") == "input"
    assert failure_class("failed", "token_limit_exceeded") == "provider"
    assert failure_class("failed", "invalid_api_key") == "auth"
    for code in ("none", "other", "invalid", "something_new"):
        assert failure_class("failed", code) == "unknown"


def test_every_class_has_codes_and_every_code_one_class() -> None:
    assert set(TABLE.values()) == set(CLASSES) - {"unknown"}
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", code) for code in TABLE)


def test_the_runbook_table_is_the_module_table_with_a_source_per_code() -> None:
    """docs/runbook.md's "Failure classes" table lists exactly the module's codes, each with its class and a source."""
    text = RUNBOOK.read_text()
    section = text[text.index("## Failure classes") :]
    section = section[: section.index("\n## ", 4)]
    rows = re.findall(r"^\| `([a-z0-9_]+)` \| (\w+) \| ([^|]+) \|", section, re.MULTILINE)
    documented = {code: cls for code, cls, _ in rows}
    assert documented == dict(TABLE)
    assert all(source.strip() for _, _, source in rows)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(providers=[ProviderSpec("openai")], lifecycle=False) as running:
        yield running


def test_scrape_labels_each_failure_with_its_class(sim: Simulator) -> None:
    with ExporterThread(make_settings(sim.url, ["openai"], poll_mode="full")) as exp:
        exp.poll()
        zeros = exp.samples()
        # Taken once the exporter runs: a batch first seen terminal counts only if it ended after the exporter
        # started, and a `now` read before the start, truncated, can be a second behind it.
        now = math.ceil(time.time())
        for batch_id, status, code in [
            ("input", "failed", "invalid_json_line"),
            ("capacity", "failed", "token_limit_exceeded"),
            ("late", "expired", "batch_expired"),
        ]:
            sim.add_batch(
                "openai",
                batch_id=batch_id,
                status=status,
                created_at=now - 600,
                **terminal_at(status, now + 1),
                request_counts={"total": 10, "completed": 4, "failed": 6},
                error_code=code,
            )
        exp.poll()
        after = exp.samples()
    # before any failure: `none` for both statuses and every code of the table for `failed`, from 0, each with the
    # class its (status, code) has, so that a code's first failure is an increase an alert sees
    labels = {"provider": "openai", "status": "failed", "code": "none", "class": "unknown"}
    assert value(zeros, "bifrost_batch_failures_total", **labels) == 0
    seeded = {
        (lbl["status"], lbl["code"]): lbl["class"] for lbl, _ in series(zeros, "bifrost_batch_failures_total")
    }
    assert seeded == {
        ("failed", "none"): "unknown",
        ("expired", "none"): "provider",
        **{("failed", code): cls for code, cls in TABLE.items()},
    }
    assert all(v == 0 for _, v in series(zeros, "bifrost_batch_failures_total"))
    got = {
        (lbl["status"], lbl["code"]): lbl["class"]
        for lbl, v in series(after, "bifrost_batch_failures_total", provider="openai")
        if v
    }
    assert got == {
        ("failed", "invalid_json_line"): "input",
        ("failed", "token_limit_exceeded"): "provider",
    }
    # A series no render foresaw (expired's codes are not seeded) is shown at 0 first, its count after a hold
    # (exporter/presence.py; tests/test_held_counters.py): a first count that increase() can see.
    held = {"provider": "openai", "status": "expired", "code": "batch_expired", "class": "provider"}
    assert value(after, "bifrost_batch_failures_total", **held) == 0
    (last_expired,) = [
        lbl
        for lbl, _ in series(after, "bifrost_batch_last_failure_info", provider="openai", status="expired")
    ]
    assert last_expired["batch_id"] == "late" and last_expired["class"] == "provider"

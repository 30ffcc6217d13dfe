"""Spend by day through a real Prometheus: simulator (Bifrost's batch accounting) → exporter (a process, cost_metrics
on) → Prometheus with the mixin's cost rules (metadataLabels: team) → the dashboard's Cost row.

What is proved: the raw counters Prometheus scraped equal the simulator's ground truth exactly; the recorded spend
per day by provider, team and model equals it up to Prometheus' own extrapolation of increase() over a series younger
than the window (under 2 % here, and shrinking as the series ages); every Cost panel returns data, unpriced and
missing settlements included.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from exporter.simulator import Accounting, ProviderSpec, Simulator
from tests.conftest import require_tool
from tests.promstack import Prometheus, wait_until
from tests.test_dashboard import (
    load_build_module,
    panels,
    rows,
    scraped_exporter,
    substitute,
    wait_for_every_query,
)

ROOT = Path(__file__).resolve().parent.parent
LOGIN = ("admin", "pw")
MINI = "gpt-4o-mini-2024-07-18"
FOUR_O = "gpt-4o-2024-08-06"
TEAMS = {"s1": "search", "s2": "search", "a1": "ads", "a2": "ads"}


@dataclass
class Scene:
    prom: Prometheus
    sim: Simulator
    dashboard: dict[str, Any]


def _generate_rules(directory: Path) -> list[Path]:
    """The mixin's rules with metadataLabels: ['team'] (what an operator routing spend by team configures)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mixin_generate", ROOT / "deploy" / "mixin" / "generate.py")
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    alerts, rules = generate.rule_groups({"metadataLabels": ["team"]})
    paths = [directory / "alerts.yaml", directory / "rules.yaml"]
    for path, groups in zip(paths, (alerts, rules), strict=True):
        path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return paths


def _dashboard(directory: Path) -> dict[str, Any]:
    module = load_build_module()
    mixin = directory / "team-mixin.libsonnet"
    mixin.write_text(
        f"(import {json.dumps(str(ROOT / 'deploy' / 'mixin' / 'mixin.libsonnet'))})"
        " + { _config+:: { metadataLabels: ['team'] } }"
    )
    built: dict[str, Any] = json.loads(module.render(module.Settings.from_mixin(mixin)))
    return built


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    prom_bin = require_tool("prometheus")
    tmp = tmp_path_factory.mktemp("cost")
    with contextlib.ExitStack() as cleanup:
        sim = Simulator(
            providers=[ProviderSpec("openai", flavor="openai")],
            lifecycle=False,
            accounting=Accounting(),
            basic_auth=LOGIN,
            latency_ms=5,
        )
        sim.start()
        cleanup.callback(sim.stop)
        now = int(time.time())
        models = {"s1": (MINI,), "s2": (MINI, FOUR_O), "a1": (FOUR_O,), "a2": ("model-y",)}
        for bid, team in TEAMS.items():
            sim.add_batch(
                "openai",
                batch_id=bid,
                status="in_progress",
                created_at=now - 700,
                request_counts={"total": 50, "completed": 45, "failed": 5},
                metadata={"team": team},
                models=models[bid],
            )
        # created outside the gateway: no job row, never settled -> missing
        sim.add_batch(
            "openai",
            batch_id="x1",
            status="in_progress",
            created_at=now - 700,
            request_counts={"total": 5, "completed": 5},
            metadata={"team": "ads"},
            external=True,
        )
        settings = {
            "bifrost_url": sim.url,
            "providers": ["openai"],
            "poll_interval_seconds": 1,
            "max_retries": 0,
            "log_level": "warning",
            "metadata_labels": ["team"],
            "cost_metrics": True,
            "basic_auth_username": LOGIN[0],
            "basic_auth_password": LOGIN[1],
            # A short horizon decides unpriced and missing within the test: the one look-up of each batch is due
            # 20 s after it finished, and is final (the ledger's timing is tested in tests/test_cost.py).
            "cost_horizon_seconds": 20,
        }
        _, prom = scraped_exporter(cleanup, prom_bin, tmp, settings, rule_files=_generate_rules(tmp))
        prom.wait_for_series('sum(bifrost_batches{provider="openai", status="in_progress"}) == 5')
        # They finish now (seen active first, so each counts once); their owners fetch the results, which settles
        # them at once (Bifrost's inline settlement, with an echo row each), all but x1.
        finished = int(time.time())
        for bid in [*TEAMS, "x1"]:
            sim.set_status("openai", bid, "completed", at=finished)
        for bid in TEAMS:
            r = httpx.get(f"{sim.url}/v1/batches/{bid}/results", params={"provider": "openai"}, auth=LOGIN)
            assert r.status_code == 200, r.text
        yield Scene(prom, sim, _dashboard(tmp))


def _value(prom: Prometheus, expr: str) -> float | None:
    result = prom.query(expr)
    return float(result[0]["value"][1]) if result else None


@pytest.mark.e2e
def test_the_scraped_counters_equal_the_gateways_settlements(scene: Scene) -> None:
    truth = scene.sim.accounting_truth()
    assert len(truth.settlements) == 4  # x1 has no row
    settled = 'sum(bifrost_batch_settlements_total{result="priced"})'
    wait_until(lambda: _value(scene.prom, settled) == 3, timeout=60, what="three priced settlements")
    # Held at 0 for a minute (so that increase() sees the first amount), then exact.
    for model in (MINI, "mixed", FOUR_O):
        expr = f'sum(bifrost_batch_cost_dollars_total{{model="{model}"}})'
        expected = truth.cost("openai", model)

        def exact(expr: str = expr, expected: float = expected) -> bool:
            return _value(scene.prom, expr) == pytest.approx(expected, rel=1e-12)

        wait_until(
            exact,
            timeout=120,
            what=f"{model} dollars equal to the gateway's",
        )
    # Unpriced and missing are decided at the horizon (20 s after the end), within the priced ones' hold on a
    # quick host; waited for all the same, so a slow one reads them when they are.
    for expr in (
        'sum(bifrost_batch_settlements_total{result="unpriced"})',
        'sum(bifrost_batch_settlements_total{result="missing", metadata_team="ads"})',
    ):

        def decided(expr: str = expr) -> bool:
            return _value(scene.prom, expr) == 1

        wait_until(decided, timeout=60, what=expr)
    assert _value(scene.prom, 'sum(bifrost_batch_cost_dollars_total{model="model-y"})') == 0
    # The unpriced settlement is decided at the horizon, after the priced ones: its (model-y) series starts its own
    # hold then, so its tokens join the sum up to a minute after the dollars above were exact.
    for kind in ("prompt", "completion"):
        expr = f'sum(bifrost_batch_tokens_total{{type="{kind}"}})'
        tokens = truth.tokens("openai", None, kind)

        def counted(expr: str = expr, tokens: int = tokens) -> bool:
            return _value(scene.prom, expr) == tokens

        wait_until(
            counted,
            timeout=120,
            what=f"{kind} tokens equal to the gateway's",
        )


@pytest.mark.e2e
def test_spend_per_day_by_team_and_model_from_the_recording_rules(scene: Scene) -> None:
    truth = scene.sim.accounting_truth()
    daily = "cluster_namespace_job_provider_model:bifrost_batch_cost_dollars:increase1d"
    for team in ("search", "ads"):
        expected = sum(s.cost or 0.0 for s in truth.settlements if TEAMS[s.batch_id] == team)
        assert expected > 0
        expr = f'sum({daily}{{cluster="eu1", provider="openai", metadata_team="{team}"}})'

        def close(expr: str = expr, expected: float = expected) -> float | None:
            v = _value(scene.prom, expr)
            return v if v is not None and abs(v - expected) <= 0.02 * expected else None

        got = wait_until(
            close,
            timeout=150,
            what=f"spend per day of team {team}",
        )
        assert got >= expected * (1 - 1e-9)  # increase() extrapolates forward only: never less than spent
    by_model = {
        r["metric"]["model"]: float(r["value"][1]) for r in scene.prom.query(f"sum by (model) ({daily})")
    }
    assert set(by_model) == {MINI, "mixed", FOUR_O, "model-y"}
    assert by_model["model-y"] == 0
    assert by_model["mixed"] == pytest.approx(truth.cost("openai", "mixed"), rel=0.02)


@pytest.mark.e2e
def test_every_cost_panel_returns_data(scene: Scene) -> None:
    cost_panels = rows(scene.dashboard)["Cost"]
    titles = [p["title"] for p in cost_panels]
    assert "Spend per day by provider and owner" in titles
    assert {p["title"] for p in panels(scene.dashboard)} >= set(titles)
    pending = {substitute(t["expr"]): p["title"] for p in cost_panels for t in p["targets"]}
    wait_for_every_query(scene.prom, pending, timeout=150)
    results = {
        r["metric"]["result"]: float(r["value"][1])
        for r in scene.prom.query(
            substitute(
                next(
                    t["expr"]
                    for p in cost_panels
                    if p["title"] == "Settlements per hour by result"
                    for t in p["targets"]
                )
            )
        )
    }
    assert results["missing"] > 0 and results["unpriced"] > 0 and results["priced"] > 0

"""The README and docs/ tell the truth about the program: its metric names, its settings, its links."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exporter.settings import Settings
from exporter.simulator import ProviderSpec, Simulator
from tests.harness import ExporterThread, make_settings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
V1_NAMES = (
    "bifrost_batch_request_counts",
    "bifrost_batch_job_request_counts",
    "bifrost_batch_exporter_pages_total",
)
_METRIC_ROW = re.compile(r"^\| `((?:bifrost|process|python)_[a-z_*]+)`", re.MULTILINE)


def readme_metrics() -> set[str]:
    return set(_METRIC_ROW.findall(README.read_text()))


@pytest.fixture(scope="module")
def exposed() -> set[str]:
    """Family names a real exporter exposes after polling the simulator, per-batch series on."""
    with Simulator(providers=[ProviderSpec("openai"), ProviderSpec("anthropic")], seed=11) as sim:
        settings = make_settings(sim.url, ["openai", "anthropic"], per_batch_metrics=True)
        with ExporterThread(settings) as running:
            running.poll()
            text = running.get().text
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            names.add(name.removesuffix("_total") + "_total" if kind == "counter" else name)
    return names


def test_readme_has_no_v1_metric_names() -> None:
    text = README.read_text()
    for name in V1_NAMES:
        assert re.search(rf"`{name}[{{`]", text) is None, name


def test_every_exposed_bifrost_family_is_in_the_readme(exposed: set[str]) -> None:
    documented = readme_metrics()
    missing = sorted(n for n in exposed if n.startswith("bifrost_") and n not in documented)
    assert not missing, f"exposed but not in the README's metric tables: {missing}"


def test_every_readme_metric_is_exposed_or_conditional(exposed: set[str]) -> None:
    """A documented name the demo poll does not show must be one that needs data it lacks (or runtime wiring)."""
    conditional = {
        "bifrost_batch_last_failure_info",  # only after a batch failed or expired
        "bifrost_batch_oldest_created_timestamp_seconds",
        "bifrost_batch_next_expiry_timestamp_seconds",
        "bifrost_batch_job_projected_completion_timestamp_seconds",
        "bifrost_batch_job_at_risk_info",  # only for a batch the early warning flags
        "bifrost_batch_cache_similarity",
        "bifrost_batch_exporter_first_sync_estimated_completion_timestamp_seconds",  # a list of known length
        "process_*",  # the runtime row stands for the collectors' families
        # cost_metrics (off in this fixture; tests/test_cost_e2e.py exposes every one of them)
        "bifrost_batch_cost_dollars_total",
        "bifrost_batch_tokens_total",
        "bifrost_batch_settled_requests_total",
        "bifrost_batch_settlements_total",
        "bifrost_batch_exporter_cost_up",
        "bifrost_batch_exporter_settlements_awaited",
    }
    unexplained = sorted(n for n in readme_metrics() - exposed if n not in conditional)
    assert not unexplained, f"in the README but never exposed: {unexplained}"


def test_relative_links_in_readme_and_docs_resolve() -> None:
    broken = []
    for doc in [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "CHANGELOG.md"]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} → {target}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_configuration_reference_lists_every_setting() -> None:
    reference = (ROOT / "docs" / "configuration.md").read_text()
    rows = "\n".join(line for line in reference.splitlines() if line.startswith("| `"))
    missing = [name for name in Settings.model_fields if f"`{name}`" not in rows]
    assert not missing, f"settings missing from docs/configuration.md: {missing}"


def test_readme_test_command_is_make_test() -> None:
    assert "make test" in README.read_text()
    assert re.search(r"^test:", (ROOT / "Makefile").read_text(), re.MULTILINE)

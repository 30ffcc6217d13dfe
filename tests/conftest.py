"""Shared test plumbing: free ports, the CI rule that a missing tool fails rather than skips, and the two test tiers.

Tiers (the one place that decides them; CONTRIBUTING.md explains how to use it):

- fast (`make test`, minutes, run before every commit): every test, unless listed below or marked;
- e2e (`make test-e2e`, run by CI too): tests marked `e2e`, `image` or `slow`, and the modules and tests in
  `E2E_TESTS` — real Prometheus/Alertmanager, the container image, soak runs, the web-config matrix, anything that
  takes many seconds.

`pytest --tier fast|e2e|all` selects; plain `pytest` (no --tier) runs everything, so `pytest tests/test_x.py`
always runs what it names. Under pytest-xdist, run with `--dist loadgroup` (the Makefile does) so that the modules in
`SAME_WORKER` stay in one process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

TIERS = ("fast", "e2e", "all")
E2E_MARKERS = ("e2e", "image", "slow")

# Tests in the e2e tier without a marker in their own file: a module path, or a node id prefix, → why it is slow
# (seconds are of the serial suite on a 2-core machine, see CONTRIBUTING.md).
E2E_TESTS: dict[str, str] = {
    "tests/test_property.py": "hypothesis, 1,000 examples per property (530 s)",
    "tests/test_soak.py": "1,000 poll cycles of a real process (300 s)",
    "tests/test_rules.py::test_promtool_unit_tests_pass": "promtool runs every rule unit test (60 s)",
    "tests/test_state.py::test_truncated_at_every_byte_is_one_line_and_a_fresh_start": "a restore per byte (120 s)",
    "tests/test_state.py::test_garbage_state_never_crashes": "hypothesis, an exporter started per example (40 s)",
    "tests/test_untrusted.py::test_any_numbers_render_finite_and_counters_only_grow": "hypothesis, 150 polls (100 s)",
    "tests/test_incremental.py::test_incremental_equals_full_after_every_full_list": "hypothesis, two exporters",
    "tests/test_bench_smoke.py": "runs every benchmark once, wrk included (30 s)",
    "tests/test_webconfig_conformance.py": "the exporter-toolkit web-config matrix: TLS handshakes per cell",
    "tests/test_release.py": "builds the wheel and sdist in a fresh build env, installs the wheel, packages the chart",
    "tests/test_counted_once.py::test_any_interleaving_of_polls_restarts_and_transitions_counts_each_batch_once": (
        "hypothesis, exporters restarted per example (100 s)"
    ),
    "tests/test_counted_once.py::test_clock_steps_never_count_a_batch_twice_or_drop_one": (
        "hypothesis, an exporter per example (40 s)"
    ),
    "tests/test_state_dir.py::test_a_write_failing_at_any_step_leaves_no_stray_file_and_the_last_good_state": (
        "27 exporters, each restarted (30 s)"
    ),
    "tests/test_mixin.py::test_the_docs_jsonnet_example_pages_on_its_slos": "promtool runs a day of SLO rules (25 s)",
}

# Modules whose tests must run in one process, in file order (pytest-xdist `--dist loadgroup`), → why.
SAME_WORKER: dict[str, str] = {
    "tests/test_property.py": "test_examples_ran checks the examples the module's other tests ran in this process",
}


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_tool(name: str) -> str:
    """Path of an external tool; skip locally when absent, but fail under CI=true so CI cannot go green by skipping."""
    path = shutil.which(name)
    if path is None:
        message = f"required tool {name!r} is not installed"
        if in_ci():
            pytest.fail(message + " (CI=true: missing tools fail the run)")
        pytest.skip(message)
    return path


@contextlib.contextmanager
def _logging_restored() -> Iterator[None]:
    """Put back the process-wide logging configuration (structlog's, the stdlib root's and logger levels, the
    exporter's redactor) as it was: a test that calls exporter.logs.configure (directly, through the CLI, or in a
    fixture) must not change what a later test in the same worker process captures or prints."""
    saved = structlog.get_config()
    saved["processors"] = list(saved["processors"])
    root = logging.getLogger()
    root_state = (list(root.handlers), root.level)
    levels = {
        name: logger.level
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    logs_module = sys.modules.get("exporter.logs")
    redactor = getattr(logs_module, "_redactor", None)
    try:
        yield
    finally:
        structlog.configure(**saved)
        root.handlers[:] = root_state[0]
        root.setLevel(root_state[1])
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if logs_module is not None and redactor is not None:
            logs_module._redactor = redactor  # type: ignore[attr-defined]


@pytest.fixture(autouse=True, scope="module")
def _module_logging_isolated() -> Iterator[None]:
    """Module-scoped fixtures may configure logging for their module (test_property silences it); not beyond."""
    with _logging_restored():
        yield


@pytest.fixture(autouse=True)
def _logging_isolated() -> Iterator[None]:
    with _logging_restored():
        yield


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--tier",
        choices=TIERS,
        default="all",
        help="run the fast tier (make test), the e2e tier (make test-e2e) or all tests (default)",
    )


def tier_of(item: pytest.Item) -> str:
    if any(item.get_closest_marker(m) is not None for m in E2E_MARKERS):
        return "e2e"
    # A module, a test in it, or a parametrized case of a test (`test_x[a-b]`) named by its test.
    if any(item.nodeid == key or item.nodeid.startswith((key + "::", key + "[")) for key in E2E_TESTS):
        return "e2e"
    return "fast"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadgroup`, with each SAME_WORKER module as one group.

    Our own scheduler rather than xdist_group markers: pytest-xdist 3.8 groups by a suffix it writes into
    item._nodeid, which pytest 9.2 no longer reads, so marked tests were silently spread over workers."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling  # type: ignore[import-untyped]  # xdist ships no type information

    class SameWorkerScheduling(LoadGroupScheduling):  # type: ignore[misc]  # untyped base
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in SAME_WORKER else super()._split_scope(nodeid)

    return SameWorkerScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = config.getoption("--tier")
    if wanted == "all":
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        (keep if tier_of(item) == wanted else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# A fast-tier test slower than this is reported at the end of the run as a candidate for the e2e tier (reported,
# never failed: durations on a shared machine are not a test result).
SLOW_FAST_TEST_SECONDS = 20.0


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if config.getoption("--tier") != "fast":
        return
    slow = sorted(
        (
            (report.duration, report.nodeid)
            for reports in terminalreporter.stats.values()
            for report in reports
            if isinstance(report, pytest.TestReport)
            and report.when == "call"
            and report.duration > SLOW_FAST_TEST_SECONDS
        ),
        reverse=True,
    )
    if slow:
        terminalreporter.section(f"fast-tier tests slower than {SLOW_FAST_TEST_SECONDS:.0f} s")
        for duration, nodeid in slow:
            terminalreporter.line(f"{duration:7.1f}s {nodeid}")
        terminalreporter.line("move them to the e2e tier (tests/conftest.py E2E_TESTS or @pytest.mark.slow)")

"""One log stream: stdlib and library records come out as our JSON lines, through the same redaction."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog

from exporter.logs import REDACTED, add_secrets, configure
from exporter.simulator import ProviderSpec, Simulator

SECRET = "sk-bf-LOGSECRET-7d1c0e"
ROTATED = "sk-bf-ROTATED-55aa01"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure("info", "json", [SECRET], stream=out)
    yield out
    configure("info", "json", [], stream=io.StringIO())


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    text = stream.getvalue()
    assert text.endswith("\n") or not text
    return [json.loads(line) for line in text.splitlines()]


def test_stdlib_warning_is_one_json_line_with_the_secret_redacted(stream: io.StringIO) -> None:
    logging.getLogger("some.library").warning("could not reach %s with key %s", "gw:8080", SECRET)
    (line,) = lines(stream)
    assert line["event"] == f"could not reach gw:8080 with key {REDACTED}"
    assert line["level"] == "warning"
    assert line["logger"] == "some.library"
    assert line["timestamp"].endswith("Z")
    assert SECRET not in stream.getvalue()


def test_ours_and_the_libraries_share_one_shape(stream: io.StringIO) -> None:
    structlog.get_logger("exporter").warning("poll_failed", provider="openai", detail=f"key {SECRET}")
    logging.getLogger("asyncio").error("Task exception was never retrieved: %s", SECRET)
    ours, theirs = lines(stream)
    assert set(theirs) == {"event", "level", "logger", "timestamp"}
    assert set(theirs) <= set(ours)
    assert ours["logger"] == "exporter" and theirs["logger"] == "asyncio"
    assert ours["detail"] == f"key {REDACTED}"
    assert SECRET not in stream.getvalue()


def test_a_traceback_stays_on_one_line_and_is_redacted(stream: io.StringIO) -> None:
    try:
        raise RuntimeError(f"gateway echoed {SECRET}")
    except RuntimeError:
        logging.getLogger("some.library").exception("request failed")
    (line,) = lines(stream)
    assert "RuntimeError: gateway echoed " + REDACTED in line["exception"]
    assert line["level"] == "error"
    assert SECRET not in stream.getvalue()


def test_level_filters_stdlib_and_httpx_stays_quiet(stream: io.StringIO) -> None:
    logging.getLogger("some.library").info("kept")
    logging.getLogger("some.library").debug("dropped: below log_level")

    with Simulator(providers=[ProviderSpec("openai")], latency_ms=1) as sim:
        # httpx logs each request at info; describing requests (and their headers) is not our log's job.
        httpx.get(sim.url + "/v1/batches?provider=openai", headers={"x-bf-vk": SECRET}, timeout=10)
    assert [line["event"] for line in lines(stream)] == ["kept"]


def test_a_rotated_secret_is_redacted_too_and_the_old_one_stays(stream: io.StringIO) -> None:
    add_secrets([ROTATED])
    logging.getLogger("x").warning("old %s new %s", SECRET, ROTATED)
    structlog.get_logger("exporter").info("event", value=[ROTATED, {"k": SECRET}])
    first, second = lines(stream)
    assert first["event"] == f"old {REDACTED} new {REDACTED}"
    assert second["value"] == [REDACTED, {"k": REDACTED}]


def test_configure_twice_keeps_one_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure("info", "json", [], stream=first)
    configure("info", "json", [], stream=second)
    logging.getLogger("x").warning("once")
    assert first.getvalue() == ""
    assert len(second.getvalue().splitlines()) == 1


def test_console_format_for_people() -> None:
    out = io.StringIO()
    configure("info", "console", [SECRET], stream=out)
    logging.getLogger("some.library").warning("key %s", SECRET)
    text = out.getvalue()
    assert not text.startswith("{") and "some.library" in text and REDACTED in text and SECRET not in text

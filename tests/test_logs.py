"""One log stream in promslog's shape: stdlib and library records come out as our lines, through the same redaction."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from exporter.logs import REDACTED, add_secrets, configure, render_logfmt
from exporter.simulator import ProviderSpec, Simulator

SECRET = "sk-bf-LOGSECRET-7d1c0e"
ROTATED = "sk-bf-ROTATED-55aa01"
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


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


def parse_logfmt(line: str) -> dict[str, str]:
    """A strict logfmt reader (go-logfmt's grammar): bare values up to a space, quoted values with escapes."""
    out: dict[str, str] = {}
    i = 0
    while i < len(line):
        eq = line.index("=", i)
        key = line[i:eq]
        assert key and " " not in key and '"' not in key, line
        i = eq + 1
        if line.startswith('"', i):
            value, i = _quoted(line, i + 1)
        else:
            end = line.find(" ", i)
            end = len(line) if end < 0 else end
            value = line[i:end]
            assert '"' not in value and "=" not in value and "\\" not in value, line
            i = end
        assert key not in out, f"{key} twice in {line}"
        out[key] = value
        if i < len(line):
            assert line[i] == " ", line
            i += 1
    return out


def _quoted(line: str, i: int) -> tuple[str, int]:
    escapes = {'"': '"', "\\": "\\", "n": "\n", "r": "\r", "t": "\t"}
    chars: list[str] = []
    while line[i] != '"':
        if line[i] == "\\":
            if line[i + 1] in "uU":
                digits = 4 if line[i + 1] == "u" else 8
                chars.append(chr(int(line[i + 2 : i + 2 + digits], 16)))
                i += 2 + digits
                continue
            chars.append(escapes[line[i + 1]])
            i += 2
            continue
        chars.append(line[i])
        i += 1
    return "".join(chars), i + 1


def test_stdlib_warning_is_one_json_line_in_promslog_shape_with_the_secret_redacted(
    stream: io.StringIO,
) -> None:
    logging.getLogger("some.library").warning("could not reach %s with key %s", "gw:8080", SECRET)
    (line,) = lines(stream)
    assert list(line) == ["ts", "level", "caller", "msg", "logger"]
    assert line["msg"] == f"could not reach gw:8080 with key {REDACTED}"
    assert line["level"] == "warn"
    assert line["logger"] == "some.library"
    assert line["caller"].startswith("test_logs.py:")
    assert TS_RE.match(line["ts"]), line["ts"]
    assert SECRET not in stream.getvalue()


def test_ours_and_the_libraries_share_one_shape(stream: io.StringIO) -> None:
    structlog.get_logger("exporter").warning("poll_failed", provider="openai", detail=f"key {SECRET}")
    logging.getLogger("asyncio").error("Task exception was never retrieved: %s", SECRET)
    ours, theirs = lines(stream)
    assert list(ours)[:4] == ["ts", "level", "caller", "msg"] and list(ours)[-1] == "logger"
    assert set(theirs) == {"ts", "level", "caller", "msg", "logger"}
    assert ours["logger"] == "exporter" and theirs["logger"] == "asyncio"
    assert ours["level"] == "warn" and theirs["level"] == "error"
    # caller is where the line was logged: this file, for both
    assert ours["caller"].startswith("test_logs.py:") and theirs["caller"].startswith("test_logs.py:")
    assert ours["detail"] == f"key {REDACTED}"
    assert SECRET not in stream.getvalue()


def test_an_event_key_named_like_a_head_key_does_not_overwrite_it(stream: io.StringIO) -> None:
    structlog.get_logger("exporter").info("event", msg="theirs", ts="theirs", caller="theirs")
    (line,) = lines(stream)
    assert line["msg"] == "event" and line["msg_"] == "theirs" and line["ts_"] == "theirs"
    assert TS_RE.match(line["ts"])


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
    assert [line["msg"] for line in lines(stream)] == ["kept"]


@pytest.mark.parametrize(("level", "shown"), [("warn", ["warn", "error"]), ("warning", ["warn", "error"]),
                                              ("error", ["error"]), ("debug", ["debug", "info", "warn", "error"])])  # fmt: skip
def test_levels_are_promslogs_four(level: str, shown: list[str]) -> None:
    out = io.StringIO()
    configure(level, "json", [], stream=out)
    log = structlog.get_logger("exporter")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    logging.getLogger("x").critical("c")
    levels = [line["level"] for line in lines(out)]
    assert levels == [*shown, "error"]


def test_a_rotated_secret_is_redacted_too_and_the_old_one_stays(stream: io.StringIO) -> None:
    add_secrets([ROTATED])
    logging.getLogger("x").warning("old %s new %s", SECRET, ROTATED)
    structlog.get_logger("exporter").info("event", value=[ROTATED, {"k": SECRET}])
    first, second = lines(stream)
    assert first["msg"] == f"old {REDACTED} new {REDACTED}"
    assert second["value"] == [REDACTED, {"k": REDACTED}]


def test_configure_twice_keeps_one_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure("info", "json", [], stream=first)
    configure("info", "json", [], stream=second)
    logging.getLogger("x").warning("once")
    assert first.getvalue() == ""
    assert len(second.getvalue().splitlines()) == 1


def test_logfmt_is_the_default_shape_for_people_and_machines() -> None:
    out = io.StringIO()
    configure("info", "logfmt", [SECRET], stream=out)
    structlog.get_logger("exporter").info(
        "poll_finished",
        provider="openai",
        pages=2,
        duration_seconds=0.25,
        truncated=False,
        detail=f"a {SECRET}",
        providers=["openai", "azure"],
        nested={"a": [1, "b c"]},
    )
    logging.getLogger("some.library").warning("key %s", SECRET)
    first, second = out.getvalue().splitlines()
    assert re.match(r"^ts=\S+ level=info caller=test_logs\.py:\d+ msg=poll_finished provider=openai ", first)
    parsed = parse_logfmt(first)
    assert parsed["pages"] == "2" and parsed["duration_seconds"] == "0.25" and parsed["truncated"] == "false"
    assert parsed["detail"] == f"a {REDACTED}" and parsed["logger"] == "exporter"
    assert parsed["providers"] == "openai,azure" and json.loads(parsed["nested"]) == {"a": [1, "b c"]}
    assert parse_logfmt(second)["msg"] == f"key {REDACTED}" and parse_logfmt(second)["level"] == "warn"
    assert SECRET not in out.getvalue()


@pytest.mark.parametrize(("old", "shape"), [("console", "logfmt"), ("auto", "json")])
def test_v2_format_names_still_work(old: str, shape: str) -> None:
    out = io.StringIO()
    configure("info", old, [], stream=out)
    logging.getLogger("x").warning("hello")
    text = out.getvalue()
    assert text.startswith("{") == (shape == "json")


@given(
    st.dictionaries(
        st.from_regex(r"[a-z_][a-z0-9_]{0,7}", fullmatch=True).filter(
            lambda k: k not in ("ts", "level", "caller", "msg", "logger")
        ),
        st.one_of(st.text(max_size=40), st.integers(), st.booleans(), st.none()),
        max_size=4,
    ),
    st.text(max_size=40),
)
def test_any_value_stays_on_its_line_and_reads_back(values: dict[str, Any], message: str) -> None:
    """logfmt's escaping is lossless and keeps every event on one line, whatever characters a value holds."""
    event = {"ts": "2026-01-01T00:00:00.000Z", "level": "info", "msg": message, **values}
    line = render_logfmt(None, "info", event)
    assert "\n" not in line and "\r" not in line
    parsed = parse_logfmt(line)
    assert parsed["msg"] == message
    for key, value in values.items():
        expected = (
            "null"
            if value is None
            else ("true" if value is True else "false" if value is False else str(value))
        )
        assert parsed[key] == expected


def test_an_odd_key_is_made_safe_instead_of_losing_the_line() -> None:
    line = render_logfmt(None, "info", {"msg": "m", 'a b="c"': "v", "": 1})
    assert parse_logfmt(line) == {"msg": "m", "a_b__c_": "v", "_": "1"}

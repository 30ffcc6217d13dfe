"""The configuration reference, the README and --help say the same thing: one sentence and one default per setting.

The settings table of docs/configuration.md is checked cell by cell against the Settings fields, whose descriptions
are the flags' --help sentences (tests/test_cli.py checks --help shows them); every flag and environment variable
the README or the docs mention must exist, so a renamed flag cannot live on in an example.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exporter.cli import _parser, default_text, flag_names
from exporter.settings import CONFIG_ENV, ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "configuration.md"
DOCS = [ROOT / "README.md", REFERENCE]
# Flags of the other commands the docs show (docker, helm, kubectl, ruff, mypy, pip), and the misspelt flag the
# reference shows being refused.
OTHER_TOOLS_FLAGS = frozenset(
    {"--require-hashes", "--build-arg", "--read-only", "--cap-drop", "--restart", "--name", "--security-opt", "--rm",
     "--from-literal", "--install", "--namespace", "--check", "--strict", "--web.listen-adress", "--abbrev-ref"}
)  # fmt: skip


def _table_rows() -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    in_table = False
    for line in REFERENCE.read_text().splitlines():
        if line.startswith("| setting | flag | default | meaning |"):
            in_table = True
            continue
        if in_table and not line.startswith("|"):
            break
        if in_table and not line.startswith("|---"):
            cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
            assert len(cells) == 4, line
            name = cells[0].strip("`")
            assert name not in rows, f"{name} twice in the table"
            rows[name] = cells[1:]
    return rows


def _plain(cell: str) -> str:
    return cell.replace("`", "")


def test_the_table_has_one_row_per_setting_in_order() -> None:
    assert list(_table_rows()) == list(Settings.model_fields)


@pytest.mark.parametrize("name", list(Settings.model_fields))
def test_each_row_says_what_the_flag_help_says(name: str) -> None:
    flags, default, meaning = _table_rows()[name]
    field = Settings.model_fields[name]
    expected_flags = flag_names(name)
    if field.annotation is bool:
        expected_flags = [f"--[no-]{flag.removeprefix('--')}" for flag in expected_flags]
    assert [_plain(f.strip()) for f in flags.split(",")] == expected_flags
    shown = default_text(name)
    assert default == ("unset" if shown is None else f"`{shown}`")
    assert _plain(meaning) == field.description


def _known_flags() -> set[str]:
    parser = _parser()
    return {s for action in parser._actions for s in action.option_strings}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_flag_mentioned_exists(doc: Path) -> None:
    known = _known_flags()
    text = doc.read_text()
    mentioned = set(re.findall(r"(?<![\w-])--(?:\[no-\])?[a-z][a-z0-9.-]*[a-z0-9]", text))
    deprecated = {"--log-level", "--log-format"}
    unknown = {
        flag
        for flag in mentioned
        if flag.replace("[no-]", "") not in known
        and flag not in deprecated
        and not flag.startswith("--set")
        and flag not in OTHER_TOOLS_FLAGS
    }
    assert not unknown, f"{doc.name} mentions flags the exporter does not have: {sorted(unknown)}"
    if doc.name == "README.md":
        assert not mentioned & deprecated, "the README shows a deprecated spelling"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_environment_variable_mentioned_exists(doc: Path) -> None:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | {CONFIG_ENV}
    mentioned = set(re.findall(rf"{ENV_PREFIX}[A-Z0-9_]*[A-Z0-9]", doc.read_text()))
    # the docs show the refusal of a misspelt one, and the service-link variables that are left alone
    examples = {
        "BIFROST_EXPORTER_WEB_LISTEN_ADDRESS",
        "BIFROST_EXPORTER_SERVICE_HOST",
        "BIFROST_EXPORTER_PORT",
    }
    assert mentioned - known - examples == set()

"""YAML files the operator gives us (the settings file, the web config), read strictly and reported safely.

Why not `yaml.safe_load` and `str(exc)`: PyYAML's message quotes the offending line (a snippet with a caret), and
often a piece of it (an anchor, an alias, a tag), so a typo next to `virtual_key:` or an inline TLS key put the
secret on stderr or in a reload log line. Here an error is `FILE:LINE:COLUMN: problem`, like a compiler's, with
PyYAML's own problem text kept only where it quotes nothing longer than one character. Duplicate keys are refused,
as Go's `yaml.UnmarshalStrict` (exporter-toolkit, Prometheus) refuses them: the last one winning silently is how a
fix in the wrong place goes unnoticed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

MAX_YAML_BYTES = 4 * 1024 * 1024
# A quoted piece of a PyYAML problem kept as is: one (escaped) character, or a token name such as '<block end>'.
_SAFE_QUOTE_RE = re.compile(r"^(?:\\?.|\\x[0-9a-fA-F]{2}|<[a-z ]+>)$")
_QUOTED_RE = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"")
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlFileError(ValueError):
    """A YAML file that cannot be used; str() is one line: `FILE[:LINE:COLUMN]: problem`, never the file's text."""


@dataclass(frozen=True, slots=True)
class YamlDocument:
    """A parsed document and where each key of its top-level mapping is (1-based line and column)."""

    value: Any
    key_positions: Mapping[str, tuple[int, int]] = field(default_factory=lambda: MappingProxyType({}))


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (merge keys `<<` may still be overridden), and
    remembers which node a constructor failed on: PyYAML's constructors raise bare ValueError/KeyError/TypeError
    (and AttributeError, …) for values that parse but cannot be built (`2024-02-30`, `0x_`, `!!int sk-…`), with the
    value in the message and no position, so the position is all we may report."""

    failed_at: yaml.Mark | None = None
    failed_tag: str | None = None

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except Exception:
            if self.failed_at is None:  # the innermost node is the first to see the error
                self.failed_at = node.start_mark
                self.failed_tag = node.tag
            raise

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    "found a key given twice in one mapping",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> YamlDocument:
    """The document in `path`, or YamlFileError naming the file, the line and column, and the problem."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise YamlFileError(f"{path}: cannot read: {exc.strerror or type(exc).__name__}") from None
    if len(data) > MAX_YAML_BYTES:
        raise YamlFileError(f"{path}: larger than {MAX_YAML_BYTES} bytes")
    try:
        text = data.decode("utf-8-sig")  # a BOM (saved by some editors) is not part of the document
    except UnicodeDecodeError as exc:
        line, column = _position(data, exc.start)
        raise YamlFileError(f"{path}:{line}:{column}: not UTF-8 text") from None
    try:
        loader = _StrictLoader(text)  # the reader checks every character here, before any parsing
    except yaml.reader.ReaderError as exc:
        line, column = _position(text, exc.position)
        raise YamlFileError(
            f"{path}:{line}:{column}: character U+{exc.character:04X} is not allowed in YAML"
        ) from None
    try:
        node = loader.get_single_node()
        value = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        raise YamlFileError(_describe(path, exc)) from None
    except yaml.reader.ReaderError as exc:
        line, column = _position(text, exc.position)
        raise YamlFileError(
            f"{path}:{line}:{column}: character U+{exc.character:04X} is not allowed in YAML"
        ) from None
    except yaml.YAMLError as exc:  # pragma: no cover - every PyYAML error is one of the above
        raise YamlFileError(f"{path}: not valid YAML ({type(exc).__name__})") from None
    except Exception as exc:
        # Not a YAMLError: a constructor refused a value it parsed. Its message quotes the value (a tagged secret
        # ends up there), so only where it is and what it was to become are said.
        raise YamlFileError(_unbuildable(path, loader, exc)) from None
    finally:
        loader.dispose()
    positions: dict[str, tuple[int, int]] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                positions.setdefault(
                    str(key_node.value), (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                )
    return YamlDocument(value, MappingProxyType(positions))


def _unbuildable(path: Path, loader: _StrictLoader, exc: Exception) -> str:
    mark, tag = loader.failed_at, loader.failed_tag or ""
    if mark is None:  # not a constructor's (a document nested too deeply for the composer, say)
        return f"{path}: cannot be read ({type(exc).__name__})"
    kind = tag.rsplit(":", 1)[-1] if tag.startswith("tag:yaml.org,2002:") else "its tag"
    return f"{path}:{mark.line + 1}:{mark.column + 1}: a value that cannot be read as {kind}"


def _position(text: str | bytes, offset: int) -> tuple[int, int]:
    newline: Any = b"\n" if isinstance(text, bytes) else "\n"
    before = text[:offset]
    return before.count(newline) + 1, offset - (before.rfind(newline) + 1) + 1


def _describe(path: Path, exc: yaml.MarkedYAMLError) -> str:
    """`FILE:LINE:COLUMN: problem (context at LINE:COLUMN)` from the marks and texts PyYAML gives, no snippet."""
    mark = exc.problem_mark or exc.context_mark
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = _scrub(exc.problem or exc.context or "not valid YAML")
    text = f"{where}: {problem}"
    if exc.problem and exc.context:
        context = _scrub(exc.context)
        cmark = exc.context_mark
        if cmark is not None and mark is not None and (cmark.line, cmark.column) != (mark.line, mark.column):
            context += f" at {cmark.line + 1}:{cmark.column + 1}"
        text += f" ({context})"
    return text


def _scrub(text: str) -> str:
    """PyYAML's text with every quoted piece longer than one character (an anchor, alias, tag) left out."""

    def keep(match: re.Match[str]) -> str:
        inner = match.group(1) if match.group(1) is not None else match.group(2)
        return match.group(0) if _SAFE_QUOTE_RE.match(inner) else "'…'"

    return " ".join(_QUOTED_RE.sub(keep, text).split())

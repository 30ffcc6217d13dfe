#!/usr/bin/env python3
"""Print CHANGELOG.md's section of one release, for the GitHub release the tag's workflow creates.

    python3 tools/release-notes.py 0.2.0 > notes.md

Fails (exit 1) when the version has no section, or its heading carries no release date: a tag must not publish
a release whose changelog still calls it unreleased.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

CHANGELOG = Path(__file__).resolve().parent.parent / "CHANGELOG.md"
HEADING = re.compile(r"^## \[(?P<name>[^\]]+)\](?P<rest>.*)$", re.MULTILINE)


def section(text: str, version: str) -> str:
    """The body under `## [version] - YYYY-MM-DD`, up to the next release heading or the link references."""
    headings = list(HEADING.finditer(text))
    for i, match in enumerate(headings):
        if match["name"] != version:
            continue
        if not re.fullmatch(r" - \d{4}-\d{2}-\d{2}", match["rest"]):
            raise ValueError(
                f"CHANGELOG.md: [{version}] has no release date (want '## [{version}] - YYYY-MM-DD')"
            )
        end = headings[i + 1].start() if i + 1 < len(headings) else len(text)
        body = text[match.end() : end]
        body = re.split(r"^\[[^\]]+\]: ", body, maxsplit=1, flags=re.MULTILINE)[0]
        return body.strip() + "\n"
    raise ValueError(f"CHANGELOG.md has no section [{version}]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("version", help="e.g. 0.2.0 (without the tag's v)")
    parser.add_argument("--changelog", type=Path, default=CHANGELOG)
    args = parser.parse_args(argv)
    try:
        sys.stdout.write(section(args.changelog.read_text(), args.version))
    except ValueError as err:
        print(f"release-notes: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

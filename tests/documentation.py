"""The documentation as the tests read it: the README and the site's pages (docs/*.md)
as one text, and the keys of a ``--json`` document that the text must name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCS = "\n".join(
    path.read_text(encoding="utf-8") for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
)
"""The README and every page of the documentation site: the option tables, the JSON
fields, the exit codes and the environment variables are on the site's pages."""


def json_keys(value: Any) -> Iterator[str]:
    """Every key of a JSON document, nested ones too."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield key
            yield from json_keys(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from json_keys(inner)

#!/usr/bin/env python3
"""Print the configuration reference (every key, its default and meaning) as a Markdown table.

The README's "Configuration" table is this output; tests/test_readme.py fails when the two drift apart.
``--write`` replaces the table in README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import BaseModel

from vehicle.config import Config

BEGIN = "<!-- config-reference:begin -->"
END = "<!-- config-reference:end -->"


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, f in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows += _rows(ann, f"{key}.")
            continue
        default = f.get_default(call_default_factory=True)
        shown = f"`{default!r}`".replace("|", "\\|")
        desc = (f.description or "").replace("|", "\\|")
        rows.append(f"| `{key}` | {shown} | {desc} |")
    return rows


def reference() -> str:
    """The Markdown table, between its begin/end markers."""
    lines = [BEGIN, "| key | default | meaning |", "|---|---|---|", *_rows(Config, ""), END]
    return "\n".join(lines) + "\n"


README = Path(__file__).resolve().parent.parent / "README.md"


def write_readme(readme: Path = README) -> None:
    """Replace the table between the markers in ``readme`` with the current reference."""
    text = readme.read_text(encoding="utf-8")
    start, end = text.index(BEGIN), text.index(END) + len(END) + 1
    readme.write_text(text[:start] + reference() + text[end:], encoding="utf-8")


if __name__ == "__main__":
    if "--write" in sys.argv[1:]:
        write_readme()
    else:
        sys.stdout.write(reference())

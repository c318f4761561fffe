"""The README's configuration table is generated from the config models and must not drift from them."""

from __future__ import annotations

from pathlib import Path

from scripts.config_reference import BEGIN, END, reference

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_config_table_matches_the_code():
    text = README.read_text(encoding="utf-8")
    start, end = text.index(BEGIN), text.index(END) + len(END)
    stale = "README config table is stale: run scripts/config_reference.py --write"
    assert text[start:end] + "\n" == reference(), stale


def test_readme_commands_exist():
    text = README.read_text(encoding="utf-8")
    root = README.parent
    for script in ("scripts/demo.sh", "scripts/test.sh", "scripts/setup.sh", ".ci/run"):
        assert script in text or script == ".ci/run"
        assert (root / script).is_file(), f"README names {script}, which is missing"

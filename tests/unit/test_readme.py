"""The README's module table matches the tree: every module named, every name a module."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _table_cells() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("| module | what it holds |")
    rows = text[start:].split("\n\n", 1)[0].splitlines()[2:]
    return [row.split("|")[1] + "|" + row.split("|")[2] for row in rows]


def _named_paths() -> set[str]:
    """Paths the table names: `a/b.py`, and `c.py` inside a cell that opens with a folder `a/`."""
    named: set[str] = set()
    for cell in _table_cells():
        first, _, rest = cell.partition("|")
        folders = re.findall(r"`((?:egress|sft_agent)/[\w/]*/)`", first)
        for path in re.findall(r"`((?:egress|sft_agent)/[\w/]+\.py)`", cell):
            named.add(path)
        for folder in folders:
            for name in re.findall(r"`([\w]+\.py)`", rest):
                named.add(folder + name)
            for sub in re.findall(r"`([\w]+/)`", rest):
                named.add(folder + sub)
    return named


def _modules() -> set[str]:
    return {
        str(path.relative_to(ROOT))
        for package in ("egress", "sft_agent")
        for path in (ROOT / package).rglob("*.py")
        if path.name != "__init__.py"
    }


def test_every_module_is_in_the_readme_table() -> None:
    named = _named_paths()
    missing = sorted(
        module
        for module in _modules()
        if module not in named and not any(module.startswith(p) for p in named if p.endswith("/"))
    )
    assert missing == []


def test_every_module_the_readme_names_exists() -> None:
    gone = sorted(path for path in _named_paths() if not (ROOT / path).exists())
    assert gone == []


def test_every_worker_variable_is_in_the_readme() -> None:
    from egress.settings import environment_variables

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = sorted(
        name
        for name in environment_variables()
        if f"`{name}`" not in text and not (name.endswith("_MAX_SECONDS") and "`_MAX_SECONDS`" in text)
    )
    assert missing == []

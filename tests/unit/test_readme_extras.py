"""The README lists every extra of pyproject.toml, and each extra's packages, truly."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The development extras share one install row: `pip install '.[test,dev]'`.
DEVELOPMENT = ("test", "dev")


def extras() -> dict[str, set[str]]:
    """Return each extra's package names (normalised: lower case, no version, no extras)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {
        name: {normalise(re.split(r"[^A-Za-z0-9._-]", spec, maxsplit=1)[0]) for spec in specs}
        for name, specs in project["optional-dependencies"].items()
    }


def normalise(name: str) -> str:
    return re.sub(r"[._]", "-", name.lower())


def section(title: str) -> str:
    """Return a README section's text, from its heading to the next heading of its level."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text.split(f"\n{title}\n", 1)[1].split("\n## ", 1)[0]


def dependency_cell(extra: str) -> set[str]:
    """Return the words of the "Dependencies and why" first cell that names ``extra``."""
    rows = [
        line.split("|")[1]
        for line in section("## Dependencies and why").splitlines()
        if line.startswith("|") and f"(extra `{extra}`)" in line.split("|")[1]
    ]
    assert len(rows) == 1, f"no single 'Dependencies and why' row for the extra {extra!r}"
    return {normalise(word) for word in re.findall(r"[A-Za-z0-9._-]+", rows[0])}


def test_the_install_table_has_a_row_per_extra() -> None:
    table = section("## Installing it elsewhere")
    for name in extras():
        command = "'.[test,dev]'" if name in DEVELOPMENT else f"'.[{name}]'"
        assert f"| `pip install {command}` |" in table, f"no install row for the extra {name!r}"


def test_dependencies_and_why_names_every_package_of_every_extra() -> None:
    found = extras()
    for name, packages in found.items():
        words = dependency_cell(name)
        # The test extra may name a runtime extra ("the tracing ... extras") for its packages.
        named = set().union(
            *(found[other] for other in found if other not in DEVELOPMENT and other in words)
        )
        missing = sorted(p for p in packages if p not in words and p not in named)
        assert not missing, f"'Dependencies and why' does not name {missing} (extra {name!r})"

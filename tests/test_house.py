"""The direction of every import, as docs/house.md states it.

The table at the end of docs/house.md says, for each folder, which of the house's modules (the
three packages, torch, and tools/) its Python files may import. Every import statement is read
with `ast`, those inside functions too (an import hidden in a method is still a dependency).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HOUSE = REPO / "docs" / "house.md"
TOOL_MODULES = {p.stem for p in (REPO / "tools").rglob("*.py")}


def rules() -> list[tuple[Path, str, set[str]]]:
    """(folder, module, allowed) for each row of house.md's import table, deepest folder first."""
    rows = []
    for line in HOUSE.read_text().splitlines():
        m = re.fullmatch(r"\| `([^`]+)` \| `([^`]+)` \| (.+) \|", line.strip())
        if m:
            allowed = set(re.findall(r"`([^`]+)`", m[3]))
            assert allowed or m[3].strip() == "nothing", line
            rows.append((REPO / m[1], m[2], allowed))
    return sorted(rows, key=lambda row: -len(row[0].parts))


def house_module(name: str) -> str | None:
    """The house's module a dotted import name belongs to, or None for the standard library and
    other third-party libraries."""
    top = name.split(".")[0]
    if name == "toygrad.tensor" or name.startswith("toygrad.tensor."):
        return "toygrad.tensor"
    if top in ("toygpt", "toygrad", "toykernels", "torch"):
        return top
    if top in TOOL_MODULES:
        return "tools"
    return None


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every absolute import in a file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            # `from toygrad import tensor` imports the submodule toygrad.tensor
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names
                      if node.module == "toygrad" and alias.name == "tensor"]
    return found


def owner(path: Path, table) -> tuple[str, set[str]] | None:
    for folder, module, allowed in table:
        if folder in path.parents:
            return module, allowed
    return None


def test_house_md_states_a_rule_for_every_package_and_tools():
    modules = {module for _, module, _ in rules()}
    assert modules == {"toykernels", "toygrad", "toygrad.tensor", "toygpt", "tools", "tests"}


def test_every_import_runs_the_way_house_md_says():
    table = rules()
    bad = []
    for path in sorted(REPO.glob("packages/*/src/**/*.py")) + sorted(REPO.glob("tools/**/*.py")) + sorted(
            REPO.glob("tests/**/*.py")):
        rule = owner(path, table)
        assert rule is not None, f"{path.relative_to(REPO)}: no row of docs/house.md covers it"
        module, allowed = rule
        for line, name in imports(path):
            target = house_module(name)
            if target is None or target == module or target in allowed:
                continue
            bad.append(f"{path.relative_to(REPO)}:{line}: {module} imports {name} ({target})")
    assert not bad, "imports against docs/house.md:\n" + "\n".join(bad)


@pytest.mark.parametrize("name", ["toykernels", "toygrad", "toygpt"])
def test_no_package_finds_tools_on_the_import_path(name):
    """A package that imported a tools/ module would work here (tests run from the repository)
    and fail once installed: tools/ must not be on sys.path while the tests run."""
    __import__(name)
    tools = REPO / "tools"
    assert not [p for p in sys.path if p and (Path(p).resolve() == tools or tools in Path(p).resolve().parents)]


def test_the_rule_catches_a_wrong_import(tmp_path):
    """The checker itself can fail: toykernels importing toygpt, inside a function, is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from toygpt.model import GPT\n    import emulate\n")
    assert [house_module(name) for _, name in imports(bad)] == ["toygpt", "tools"]
    toykernels_rule = next(allowed for _, module, allowed in rules() if module == "toykernels")
    assert "toygpt" not in toykernels_rule and "tools" not in toykernels_rule

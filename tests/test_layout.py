"""The floor plan holds: import contracts (a back-edge breaks them), no import cycles, no private names borrowed
across modules, no registration by side-effect import, no oversized modules."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from harness.paths import ROOT

LINT = Path(sys.executable).with_name("lint-imports")
SOURCES = sorted([*(ROOT / "harness").rglob("*.py"), *(ROOT / "methods").glob("*.py")])
needs_linter = pytest.mark.skipif(not LINT.exists(), reason=f"lint-imports not installed beside {sys.executable}")


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root,
                          env={"PYTHONPATH": str(root), "PATH": ""}, capture_output=True, text=True, timeout=300)


@needs_linter
@pytest.mark.parametrize("back_edge, broken", [
    ("harness/nn/batching.py", "each layer imports only the layers below it"),  # nn reaching up to the referee
    ("harness/board/tables.py", "board) never imports the write side"),         # the read side importing run/
    ("methods/pop.py", "Methods import only the contract"),                     # a method importing the referee
])
def test_import_contracts_hold_and_a_back_edge_breaks_them(tmp_path, back_edge, broken):
    for part in ("harness", "methods"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    clean = lint(tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    target = tmp_path / back_edge
    target.write_text(target.read_text() + "\nfrom harness.run import referee  # noqa: E402,F401\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    assert f"{broken}" in result.stdout and "BROKEN" in result.stdout, result.stdout


def test_no_import_cycle_among_harness_modules():
    graph = grimp.build_graph("harness", "methods")
    modules = sorted(m for m in graph.modules if m.startswith("harness"))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(module: str) -> None:  # Tarjan's strongly connected components over direct imports
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if not imported.startswith("harness"):
                continue
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in modules:
        if module not in index:
            visit(module)
    assert not cycles, f"import cycles: {cycles}"


def test_no_module_imports_a_private_name_of_another():
    borrowed = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("harness", "methods"):
                borrowed += [f"{path.relative_to(ROOT)}: {node.module}.{a.name}" for a in node.names
                             if a.name.startswith("_") and not a.name.startswith("__")]
    assert not borrowed, borrowed


def test_registration_never_depends_on_a_side_effect_import():
    lines = [f"{p.relative_to(ROOT)}:{n}" for p in SOURCES for n, line in enumerate(p.read_text().splitlines(), 1)
             if "noqa" in line and "registers" in line]
    assert not lines, lines


def test_modules_stay_small_except_a_paper_that_needs_one_large_file():
    allowed = {ROOT / "methods" / "dig.py"}
    large = {str(p.relative_to(ROOT)): n for p in SOURCES if p not in allowed
             and (n := len(p.read_text().splitlines())) > 350}
    assert not large, large

"""The import graph of the core points one way, and imports hide inside functions only for a reason.

An import cycle works in Python as long as someone defers one side into a function, which is how
the cycles this test exists for (suite <-> claims, runner <-> report) were hidden. So the graph
is read from the source (``ast``), with the imports inside functions counted like any other,
and must be acyclic. An import inside a function is there to keep a slow import (torch, MLflow,
matplotlib, scipy) off a path that does not need it; each says so in a comment on its line or
the line above.
"""

from __future__ import annotations

import ast
import graphlib
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "harness"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _targets(node, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The harness modules one import statement names (a ``from pkg import sub`` names ``sub``)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in known}
    package = module if is_package else module.rpartition(".")[0]
    base = node.module or ""
    if node.level:
        base = importlib.util.resolve_name("." * node.level + base, package)
    found = {base} if base in known else set()
    found |= {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        deps: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps |= _targets(node, name, path.name == "__init__.py", set(modules))
        graph[name] = deps - {name}
    return graph


def test_the_graph_is_read():
    graph = _graph()
    assert "harness.cli" in graph and "harness.runner" in graph["harness.cli"]


def test_no_import_cycle():
    try:
        graphlib.TopologicalSorter(_graph()).prepare()
    except graphlib.CycleError as err:
        raise AssertionError("import cycle: " + " -> ".join(err.args[1])) from None


def _function_imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    yield node


def _explained(lines: list[str], lineno: int) -> bool:
    """A comment on the import's line, on another line of the block of imports it stands in,
    or on the line above that block."""
    first = lineno - 1
    while first > 0 and lines[first - 1].strip().startswith(("import ", "from ")):
        first -= 1
    last = lineno - 1
    while last + 1 < len(lines) and lines[last + 1].strip().startswith(("import ", "from ")):
        last += 1
    block = lines[first:last + 1]
    return any("#" in line for line in block) or (first > 0 and lines[first - 1].strip().startswith("#"))


def test_imports_inside_functions_say_why():
    unexplained = []
    for name, path in _modules().items():
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in _function_imports(path):
            if not _explained(lines, node.lineno):
                unexplained.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: "
                                   f"{lines[node.lineno - 1].strip()}")
    assert not unexplained, "imports inside functions without a reason:\n" + "\n".join(unexplained)

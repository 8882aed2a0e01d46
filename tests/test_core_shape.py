"""The core stays readable and plugin-blind: no module over 600 lines, no function over 60, and
no built-in plugin's name used in its code (docstrings may name them; the defaults a suite gets
come from ``plugins/defaults.py`` through ``harness_suite_defaults``)."""

from __future__ import annotations

import ast
from pathlib import Path

from harness.plugins import KINDS, Plugins

ROOT = Path(__file__).resolve().parent.parent / "harness"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60
#: strings that are a plugin's name by accident: the standard deviation of a paper's reference
NOT_PLUGIN_NAMES = {("claims.py", "std")}


def _files():
    return sorted(ROOT.rglob("*.py"))


def test_no_module_over_600_lines():
    long = {str(f.relative_to(ROOT)): n for f in _files()
            if (n := len(f.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, long


def test_no_function_over_60_lines():
    long = []
    for f in _files():
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def _docstrings(tree) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def test_the_core_names_no_built_in_plugin():
    plugins = Plugins(autoload=False)
    names = {name for kind in KINDS for name in plugins.registry(kind).names()}
    assert {"std", "accuracy", "inline"} <= names
    found = []
    for f in _files():
        tree = ast.parse(f.read_text(encoding="utf-8"))
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and id(node) not in docs and node.value.removeprefix("final_") in names | {"test_acc"}
                    and (f.name, node.value) not in NOT_PLUGIN_NAMES):
                found.append(f"{f.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not found, found

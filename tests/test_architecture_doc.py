"""ARCHITECTURE.md stays true: every path it names exists, every core module has its place in
the layer table, and every import points down that table (the graph test_import_graph reads)."""

from __future__ import annotations

import re

from test_import_graph import ROOT as HARNESS
from test_import_graph import _graph

PROJECT = HARNESS.parent
TEXT = (PROJECT / "ARCHITECTURE.md").read_text()
PATH = re.compile(r"(?<![\w/.])((?:harness|plugins|tests|suites|reports)/[\w/.-]*[\w/])")


def _layers() -> list[tuple[str, list[str]]]:
    """(layer, the paths its row names), top of the table first."""
    table = TEXT.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|") for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| layer")]
    return [(cells[1].strip(), re.findall(r"`(harness/[\w/.]+)`", cells[2])) for cells in rows]


def _layer_of(module: str, layers) -> int | None:
    """The row of the most specific path naming ``module`` (a file, or a package above it)."""
    path, best = module.replace(".", "/"), None
    for i, (_, paths) in enumerate(layers):
        for named in paths:
            named = named.rstrip("/").removesuffix(".py")
            if (path == named or path.startswith(named + "/")) and (best is None or len(named) > best[1]):
                best = (i, len(named))
    return None if best is None else best[0]


def test_every_path_it_names_exists():
    missing = sorted({p for p in PATH.findall(TEXT) if not (PROJECT / p).exists()})
    assert not missing, missing


def test_it_stays_short():
    assert len(TEXT.splitlines()) < 250


def test_every_module_has_a_layer_and_imports_point_down():
    layers = _layers()
    assert len(layers) >= 8
    graph = _graph()
    unplaced = [m for m in graph if m not in ("harness", "harness.__main__")
                and _layer_of(m, layers) is None]
    assert not unplaced, f"modules ARCHITECTURE.md's layer table does not place: {unplaced}"
    upward = [f"{m} ({layers[a][0]}) imports {d} ({layers[b][0]})"
              for m, deps in graph.items() if (a := _layer_of(m, layers)) is not None
              for d in deps if (b := _layer_of(d, layers)) is not None and b < a]
    assert not upward, upward

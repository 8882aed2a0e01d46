"""Expanding a suite: each setting's grid x seeds x stage DAG into ``StageRun``s.

A stage depends on a grid axis when it takes that axis's value (it does not name its own
dataset, architecture or method) or when a stage upstream of it does; stage runs that do not
depend on an axis are shared across its values instead of re-run (the from-scratch Std_B
baseline runs once per seed, not once per method). Seeds derive from names by hash, and run
keys, names and rows are what identities, the store's tags and the report's tables use, so a
change here moves all of them.
"""

from __future__ import annotations

import hashlib
import itertools

from ..dag import in_order
from .model import PluginRef, Setting, StageDecl, StageRun, Suite
from .schema import AXES


def topological(stages: dict[str, StageDecl]) -> list[str]:
    """Stage names, each after the stages it starts from or refers to, else as declared."""
    return in_order(stages, {name: st.upstream() for name, st in stages.items()})


def own_architecture(stages: dict[str, StageDecl], name: str) -> PluginRef | None:
    """The architecture a stage names, or inherits from its ``from:`` stage (whose weights it
    starts from, so it must be the same network); None when it takes the grid's."""
    st = stages[name]
    if st.architecture is not None:
        return st.architecture
    if st.from_stage is not None:
        return own_architecture(stages, st.from_stage)
    return None


def stage_axes(stages: dict[str, StageDecl], grid: dict) -> dict[str, tuple[str, ...]]:
    """Which grid axes each stage's runs vary with: its own, plus every upstream stage's."""
    deps: dict[str, tuple[str, ...]] = {}
    for name in topological(stages):
        st = stages[name]
        own = {axis for axis in AXES if getattr(st, axis) is None and axis in grid
               and not (axis == "architecture" and st.from_stage)}
        for up in st.upstream():
            own |= set(deps[up])
        deps[name] = tuple(a for a in AXES if a in own)
    return deps


def derive_seed(*parts) -> int:
    """A 31-bit seed from names, stable across machines and Python versions (unlike hash())."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


def stage_rows(setting: Setting) -> dict[str, list[str]]:
    """The row labels each stage's runs are filed under, as ``expand`` names them: the grid's
    method labels for a stage that depends on the method axis, else the rows of the stage it
    starts from, else its own method's label. Claims, references and sweeps name these."""
    deps = stage_axes(setting.stages, setting.grid)
    rows: dict[str, list[str]] = {}
    for name in topological(setting.stages):
        st = setting.stages[name]
        if "method" in deps[name]:
            rows[name] = [ref.label for ref in setting.grid["method"]]
        elif st.from_stage is not None:
            rows[name] = list(rows[st.from_stage])
        else:
            method = st.method or setting.grid["method"][0]
            rows[name] = [method.label]
    return {name: rows[name] for name in setting.stages}


def expand(suite: Suite) -> list[StageRun]:
    """All stage runs of all settings, upstream before downstream, shared runs once."""
    runs: dict[tuple, StageRun] = {}
    multi_setting = len(suite.settings) > 1
    for setting in suite.settings:
        deps = stage_axes(setting.stages, setting.grid)
        order = topological(setting.stages)
        axes = [a for a in AXES if a in setting.grid]
        for values in itertools.product(*(setting.grid[a] for a in axes)):
            cell = dict(zip(axes, values))
            for replicate in setting.seeds:
                for stname in order:
                    st = setting.stages[stname]
                    key = _key(setting.name, stname, deps[stname], cell, replicate)
                    if key in runs:
                        continue
                    labels = {a: cell[a].label for a in deps[stname]}
                    dataset = (st.dataset or cell["dataset"]).with_options(st.data).for_replicate(replicate)
                    architecture = own_architecture(setting.stages, stname) or cell["architecture"]
                    method = st.method or cell["method"]
                    # the row a run belongs to: the grid's method, or the method of the stage it
                    # starts from (AB of RR6 is an RR6 result even though AB trains with std)
                    from_key = (_key(setting.name, st.from_stage, deps[st.from_stage], cell,
                                     replicate) if st.from_stage else None)
                    if "method" in labels:
                        row = labels["method"]
                    elif from_key is not None:
                        row = runs[from_key].row
                    else:
                        row = method.label
                    name_parts = [stname, row, *_own_label(st, row, setting.grid)]
                    for a in ("dataset", "architecture"):
                        if a in deps[stname] and len(setting.grid.get(a, [])) > 1:
                            name_parts.append(labels[a])
                    name_parts.append(f"seed{replicate}")
                    name = "/".join(name_parts)
                    if multi_setting:
                        name = f"{setting.name}:{name}"
                    runs[key] = StageRun(
                        key=key, suite=suite.name, setting=setting.name, stage=stname,
                        replicate=replicate,
                        seed=derive_seed(suite.name, setting.name, stname,
                                         sorted(labels.items()), replicate),
                        cell=labels, row=row, dataset=dataset, architecture=architecture, method=method,
                        run=dict(st.run),
                        evaluate=st.evaluate if st.evaluate is not None else setting.evaluate,
                        from_key=from_key,
                        refs={r: _key(setting.name, s, deps[s], cell, replicate)
                              for r, s in st.refs.items()},
                        name=name, expected_failure=setting.expect_failure.get((stname, row), ""))
    return list(runs.values())


def _own_label(st: StageDecl, row: str, grid: dict) -> list[str]:
    """The label a suite gives a stage's own method (``label: EWC``), for its run names, where
    the row does not say it: a phase II with EWC of the Std row is ``AB_ewc/Std/EWC/seed0``, not
    ``AB_ewc/Std/seed0`` as if it were the Std cell's own phase II. A method without a label of
    its own, or labelled as one of the grid's rows (the transfer suites' phase II with Std), is
    named by its row alone, as it always was."""
    if st.method is None or not st.method.labelled or st.method.label == row:
        return []
    if st.method.label in {ref.label for ref in grid.get("method", [])}:
        return []
    return [st.method.label]


def _key(setting: str, stage: str, axes: tuple[str, ...], cell: dict, replicate: int) -> tuple:
    return (setting, stage, tuple((a, cell[a].label) for a in axes), replicate)


"""Which stage runs train together as one stacked network (``harness.train.stacking``), and why.

Stage runs stack when they would perform the same operations on different numbers: the same
method with the same options, the same network, the same run settings and evaluators, and
data of the same shapes; they may differ in seed, in the upstream run they start from
(``from:``) and in their data's contents. A run with frozen references (``refs:``) trains alone
(the stacked step would read the first replica's references for all). Groups respect the DAG:
only runs at the same depth among the runs to do are grouped (a run's depth is one more than
its deepest upstream run still to do), so a group never waits for one of its own members, and
its members' upstream runs are all in earlier groups.

The run setting ``stack`` decides: ``off`` trains every run alone, ``N`` stacks at most N, and
``auto`` stacks where it is measured to be faster, by the multiply-accumulates of a training
batch as ``threads: auto`` decides (``STACK_BATCH_MACS``), at most ``AUTO_LARGEST`` together,
and splits a level's groups while fewer than the executor's workers would be busy. ``stack`` is
not part of a run's identity: a replica trained stacked is the run trained alone (to rounding).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .dag import in_order
from .engine import resolve_device
from .meters import macs_per_sample
from .suite import StageRun
from .train.build import build_model

__all__ = ["Unit", "form_groups", "describe", "STACK_BATCH_MACS", "AUTO_LARGEST", "stack_pays"]

#: multiply-accumulates per training batch below which ``stack: auto`` stacks. Measured on this
#: 2-core CPU, one thread (tests/benchmarks/test_stacking_bench.py, reports/benchmarks.md),
#: speedup of a stacked step over the same replicas stepped one after another at R = 5 / 20:
#: the MI network (0.13 M per batch of 512) 1.7x / 2.4x; small_cnn on digits (5.4 M per batch of
#: 64) 1.2x / 1.4x; the Table 9 CNN narrowed to 8 channels (11 M) 1.05x / 0.9x; the Table 9 CNN
#: (490 M) 0.5x / 0.4x: there arithmetic, not dispatch, bounds a step. Not calibrated on a GPU,
#: where the same rule is kept (it errs towards training alone).
STACK_BATCH_MACS = 8_000_000
#: the most stage runs ``stack: auto`` puts in one group (the gain flattens beyond tens)
AUTO_LARGEST = 64
#: ``auto`` splits a group to keep workers busy, never into groups smaller than this
SMALLEST_SPLIT = 4


@dataclass
class Unit:
    """What an executor dispatches: one stage run, or a group of them trained stacked."""

    keys: list[tuple]
    names: list[str]
    reason: str = ""  # why stacked, or why this run trains alone although it could have had company
    depth: int = 0

    @property
    def stacked(self) -> bool:
        return len(self.keys) > 1


@dataclass
class _Candidate:
    runs: list[StageRun] = field(default_factory=list)
    reason: str = ""
    cap: int = 1


def stack_pays(macs_batch: int, device: str) -> tuple[bool, str]:
    """Whether ``stack: auto`` stacks a network with this many multiply-accumulates per batch."""
    if macs_batch < STACK_BATCH_MACS:
        return True, (f"{macs_batch:,} multiply-accumulates per batch, below {STACK_BATCH_MACS:,}: "
                      f"a step is mostly dispatch, which stacking pays once ({device})")
    return False, (f"{macs_batch:,} multiply-accumulates per batch, at least {STACK_BATCH_MACS:,}: "
                   f"arithmetic bounds a step, stacking would be slower ({device})")


def form_groups(plan, todo: list[StageRun], plugins, jobs: int = 1) -> list[Unit]:
    """The units of ``todo`` in plan order (a group where its first member is)."""
    keys = {r.key for r in todo}
    depth: dict[tuple, int] = {}
    for r in todo:  # plan order: upstream first
        depth[r.key] = 1 + max((depth[k] for k in r.upstream_keys() if k in keys), default=-1)
    candidates: dict[str, _Candidate] = {}
    order: list[str] = []
    macs: dict[str, tuple] = {}
    for r in todo:
        key, reason, cap = _compatibility(plan, r, plugins, macs)
        group_key = json.dumps([depth[r.key], key], sort_keys=True, default=str)
        if group_key not in candidates:
            candidates[group_key] = _Candidate(reason=reason, cap=cap)
            order.append(group_key)
        candidates[group_key].runs.append(r)
    units = []
    for group_key in order:
        c = candidates[group_key]
        runs, d = c.runs, depth[c.runs[0].key]
        for start in range(0, len(runs), max(1, c.cap)):
            chunk = runs[start:start + max(1, c.cap)]
            units.append(Unit([r.key for r in chunk], [r.name for r in chunk],
                              c.reason if len(chunk) > 1 or c.cap <= 1 else "", d))
    if jobs > 1:
        units = _balance(units, jobs, plan)
    first = {r.key: i for i, r in enumerate(todo)}
    units.sort(key=lambda u: first[u.keys[0]])
    # each after the units its members' upstream runs are in (the inline executor runs them
    # in this order), else in plan order
    unit_of = {k: i for i, u in enumerate(units) for k in u.keys}
    by_key = {r.key: r for r in todo}
    deps = {i: {unit_of[k] for m in u.keys for k in by_key[m].upstream_keys() if k in unit_of}
            - {i} for i, u in enumerate(units)}
    return [units[i] for i in in_order(range(len(units)), deps)]


def _compatibility(plan, run: StageRun, plugins, macs: dict) -> tuple[object, str, int]:
    """(what a run must share with the runs it stacks with, the reason, the largest group)."""
    setting = run.run.get("stack", "auto")
    if setting == "off" or setting == 1:
        return ["alone", run.key], f"stack: {setting}", 1
    method = plugins.get("methods", run.method.name).obj
    if not getattr(method, "stackable", False):
        return ["alone", run.key], f"method {run.method.name!r} does not declare itself stackable", 1
    if run.refs:
        return ["alone", run.key], "it reads frozen references (refs:)", 1
    data = plan.stage_data(run)
    main = data.main
    device = str(resolve_device(str(run.run["device"])))
    spec = json.dumps([run.architecture.spec(), list(main.input_shape), main.num_classes],
                      sort_keys=True, default=str)
    if spec not in macs:
        model = build_model(plugins, run.architecture.spec(), main.input_shape, main.num_classes)
        buffers = next(iter(model.buffers()), None) is not None
        macs[spec] = (macs_per_sample(model, main.input_shape), buffers)
    per_sample, buffers = macs[spec]
    if buffers:
        return ["alone", run.key], "its network has buffers (batch-norm statistics)", 1
    settings = {k: v for k, v in run.run.items() if k not in ("stack", "download")}
    key = [run.method.spec(), spec, settings, [e.spec() for e in run.evaluate], sorted(data.roles),
           len(main.train), main.train.y is None, setting, device]
    if setting == "auto":
        pays, reason = stack_pays(per_sample * int(run.run["batch_size"]), device)
        if not pays:
            return ["alone", run.key], reason, 1
        return key, reason, AUTO_LARGEST
    return key, f"stack: {setting}", int(setting)


def _balance(units: list[Unit], jobs: int, plan) -> list[Unit]:
    """Split ``auto`` groups in halves while a depth has fewer units than workers."""
    auto = {r.key for r in plan.runs if r.run.get("stack", "auto") == "auto"}
    for d in sorted({u.depth for u in units}):
        while True:
            level = [u for u in units if u.depth == d]
            splittable = [u for u in level if len(u.keys) >= 2 * SMALLEST_SPLIT
                          and all(k in auto for k in u.keys)]
            if len(level) >= jobs or not splittable:
                break
            big = max(splittable, key=lambda u: len(u.keys))
            half = len(big.keys) // 2
            i = units.index(big)
            units[i:i + 1] = [Unit(big.keys[:half], big.names[:half], big.reason, d),
                              Unit(big.keys[half:], big.names[half:], big.reason, d)]
    return units


def describe(units: list[Unit]) -> list[str]:
    """``harness plan``'s lines on stacking: each group, and why runs that could have had
    company train alone."""
    lines = []
    for u in units:
        if u.stacked:
            lines.append(f"  {len(u.keys)} stacked: {_names(u.names)}  ({u.reason})")
    alone: dict[str, list[str]] = {}
    for u in units:
        if not u.stacked and u.reason:
            alone.setdefault(u.reason, []).extend(u.names)
    for reason, names in alone.items():
        lines.append(f"  alone: {_names(names)}  ({reason})")
    return (["stacking (run setting `stack`):"] + lines) if lines else []


def _names(names: list[str]) -> str:
    """Run names with the seeds of each stage and row together: ``AB/Std/seed0-4``."""
    seeds: dict[str, list[str]] = {}
    for name in names:
        prefix, _, last = name.rpartition("/")
        if last.startswith("seed") and prefix:
            seeds.setdefault(prefix, []).append(last[4:])
        else:
            seeds.setdefault(name, [])
    parts = [f"{p}/seed{_span(s)}" if s else p for p, s in seeds.items()]
    return ", ".join(parts)


def _span(numbers: list[str]) -> str:
    values = [int(n) for n in numbers if n.isdigit()]
    if len(values) == len(numbers) and values == list(range(values[0], values[0] + len(values))):
        return str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"
    return ",".join(numbers)

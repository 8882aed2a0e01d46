"""What ``harness plan`` prints: the stage runs a ``run`` would execute (and which are stale,
saved, running elsewhere, waiting for others), the finished ones, and an estimate of the time.

The estimate is the median wall time per epoch of finished stage runs in the store with the
same data, network, method, batch size, device and evaluators (marked ``~`` where only another
method's speed on the same data and network is known), summed one after another and scheduled
on N workers as the executors dispatch (``harness.dag``). A run with no recorded speed counts 0,
so the sum is "at least".
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from .codeid import stale_runs
from .dag import InOrder
from .plan import Plan, resume_progress, run_params
from .tracking import TAG, Tracker, search_all

_COST_RUN_KEYS = ("run.batch_size", "run.device", "run.threads", "evaluate")


def _cost_key(params: dict[str, str], *, with_method: bool = True) -> str:
    """What the speed of an epoch depends on: data, network, method, batch, device, evaluators."""
    prefixes = ("dataset.", "architecture.") + (("method.",) if with_method else ())
    keep = {k: v for k, v in params.items()
            if (k.startswith(prefixes) and k != "method.label") or k in _COST_RUN_KEYS}
    if not with_method:
        keep.pop("evaluate", None)
    return json.dumps(keep, sort_keys=True)


def _seconds(value: float | None) -> str:
    if value is None:
        return "?"
    if value < 90:
        return f"{value:.0f} s"
    if value < 5400:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def recorded_speeds(tracker: Tracker | None) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall seconds per epoch (training, evaluators and bookkeeping) of every finished stage run
    in the store, by cost key with and without the method."""
    exact: dict[str, list[float]] = {}
    loose: dict[str, list[float]] = {}
    if tracker is None:
        return exact, loose
    experiments = [e.experiment_id for e in tracker.client.search_experiments()]
    runs = search_all(tracker.client, experiments,
                      f"tags.`{TAG}identity` != '' and attributes.status = 'FINISHED'")
    for r in runs:
        params = r.data.params
        try:
            epochs = int(params["run.epochs"]) - int(params.get("measured.resumed_from_epoch", 0))
        except (KeyError, ValueError):
            continue
        if epochs <= 0 or not r.info.end_time or not r.info.start_time:
            continue
        per_epoch = (r.info.end_time - r.info.start_time) / 1000 / epochs
        # a replica of a stacked group spans the group's wall time: its own cost is its share
        per_epoch /= max(1, int(params.get("measured.stacked_with", 1) or 1))
        exact.setdefault(_cost_key(params), []).append(per_epoch)
        loose.setdefault(_cost_key(params, with_method=False), []).append(per_epoch)
    return exact, loose


def expected_seconds(runs, tracker: Tracker | None) -> dict[str, float]:
    """Each stage run's expected wall seconds, by name, from the store's recorded speeds (as
    ``harness plan`` estimates): what the live progress bar weighs it by. A run with no
    recorded speed gets the median epoch time of those with one, so that every weight is in
    seconds; with none recorded at all, the weights are the epochs."""
    exact, loose = recorded_speeds(tracker)
    per_epoch = {}
    for r in runs:
        params = run_params(r)
        speeds = exact.get(_cost_key(params)) or loose.get(_cost_key(params, with_method=False))
        if speeds:
            per_epoch[r.name] = statistics.median(speeds)
    fallback = statistics.median(per_epoch.values()) if per_epoch else 1.0
    return {r.name: per_epoch.get(r.name, fallback) * int(r.run["epochs"]) for r in runs}


def makespan(order: list[tuple], deps: dict[tuple, list[tuple]], cost: dict[tuple, float],
             workers: int) -> float:
    """Greedy list scheduling, as the parallel executors dispatch: in order, when the upstream
    runs finished and a worker is free."""
    done: dict[tuple, float] = {}
    free = [0.0] * max(1, workers)
    walk = InOrder(order, deps)
    while walk:
        job = walk.pop()
        w = min(range(len(free)), key=free.__getitem__)
        start = max([free[w]] + [done.get(d, 0.0) for d in deps[job]])
        done[job] = free[w] = start + cost[job]
        walk.done(job)
    return max(done.values(), default=0.0)


def _estimate_line(order: list[tuple], deps: dict, cost: dict[tuple, float], jobs: int,
                   unknown: int) -> str:
    """The time of what is to run; a stage run with no recorded speed counts as 0, so the sum
    is "at least", and "unknown" when no stage run has one ("0 s" would be a wrong answer)."""
    if unknown == len(order):
        return "estimated time: unknown (no recorded speeds in the store yet)"
    at_least = "at least " if unknown else ""
    text = f"estimated time: {at_least}{_seconds(sum(cost.values()))} one after another"
    if jobs > 1:
        text += f", {at_least or 'about '}{_seconds(makespan(order, deps, cost, jobs))} with -j {jobs}"
    if unknown:
        text += f"; unknown for {unknown} of {len(order)} stage runs (no recorded speed yet)"
    return text


class _Store:
    """What the store says about a plan: finished and running identities, recorded speeds,
    stale runs."""

    def __init__(self, plan: Plan, tracker: Tracker | None):
        self.finished = tracker.finished() if tracker is not None else {}
        self.running: set[str] = set()
        if tracker is not None:
            self.running = {r.data.tags.get(f"{TAG}identity") for r in tracker.runs("RUNNING")}
        self.exact, self.loose = recorded_speeds(tracker)
        self.stale = stale_runs(plan, tracker)

    def speed(self, params: dict[str, str]) -> tuple[list[float] | None, str]:
        """The recorded epoch times of the same cost key, else ``~`` and another method's."""
        speeds = self.exact.get(_cost_key(params))
        if speeds:
            return speeds, ""
        return self.loose.get(_cost_key(params, with_method=False)), "~"


def plan_text(plan: Plan, tracker: Tracker | None, home: Path, jobs: int) -> str:
    """What ``harness plan`` prints: the stage runs a ``run`` would execute, those finished, and
    an estimate of the time from the speeds recorded in the store."""
    store = _Store(plan, tracker)
    todo = plan.todo(store.finished)
    todo_keys = {r.key for r in todo}
    profile = f", profile {plan.suite.profile!r}" if plan.suite.profile else ""
    lines = [f"suite {plan.suite.name!r}{profile}: {len(plan.runs)} stage runs, "
             f"{len(plan.runs) - len(todo)} finished, {len(todo)} to run"
             + (f" ({len(store.stale)} of them stale: finished with other code)"
                if store.stale else "")]
    cost: dict[tuple, float] = {}
    unknown = approx = 0
    if todo:
        lines.append("to run:")
        width = max(len(r.name) for r in todo)
        by_key = {r.key: r for r in plan.runs}
        for r in todo:
            line, estimate, mark = _todo_line(plan, store, home, r, by_key, todo_keys, width)
            lines.append(line)
            cost[r.key] = estimate or 0.0
            unknown += estimate is None
            approx += bool(estimate is not None and mark)
    done_runs = [r for r in plan.runs if r.key not in todo_keys]
    if done_runs:
        lines.append("finished:")
        width = max(len(r.name) for r in done_runs)
        for r in done_runs:
            lines.append(f"  {r.name:<{width}}  MLflow run "
                         f"{store.finished[plan.identities[r.key]].run_id}")
    if todo:
        deps = {r.key: [k for k in r.upstream_keys() if k in todo_keys] for r in todo}
        lines.append(_estimate_line([r.key for r in todo], deps, cost, jobs, unknown))
        if approx:
            lines.append("~: from the speed of the same data, network and batch size with another "
                         "method")
    return "\n".join(lines)


def _todo_line(plan: Plan, store: _Store, home: Path, r, by_key: dict, todo_keys: set,
               width: int) -> tuple[str, float | None, str]:
    """One stage run to run: its line, its estimated seconds (None: unknown) and its mark."""
    epochs = int(r.run["epochs"])
    ident = plan.identities[r.key]
    saved = resume_progress(home, ident)
    left = epochs - (saved["epoch"] if saved else 0)
    speeds, mark = store.speed(run_params(r))
    estimate = statistics.median(speeds) * left if speeds else None
    notes = [f"stale: {store.stale[r.key]}"] if r.key in store.stale else []
    if saved:
        notes.append(f"saved at epoch {saved['epoch']}: --resume does the last {left}")
    if ident in store.running:
        notes.append("marked RUNNING in the store")
    after = [by_key[k].name for k in r.upstream_keys() if k in todo_keys]
    if after:
        notes.append("after " + ", ".join(after))
    est = f"{mark}{_seconds(estimate)}" if estimate is not None else "unknown"
    line = (f"  {r.name:<{width}}  epochs {epochs:>6}  {est:>9}"
            + (f"  ({'; '.join(notes)})" if notes else ""))
    return line, estimate, mark


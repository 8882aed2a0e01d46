"""A group of stage runs trained as one stacked network: ``run_group``, the engine's ``run_stage``
for a group (``harness.groups`` forms the groups, ``harness.train.stacking`` steps them).

Each member stays a stage run in everything that leaves the group: it is built, restored from
its own resume state, evaluated, saved for ``--resume`` and checkpointed by the engine's own
functions on its own ``EpochLoop``, exactly as alone, and gets its own ``StageResult``, hooks and
epoch rows. Only the steps are shared. A member whose loss becomes non-finite fails alone (the
group goes on without it); a member that fails to build fails alone. When the members cannot be
stacked after all (a method that is not stackable, buffers, members resumed at different epochs)
they train one after another in the same job, as ``harness run`` would train them.

What a member records of the group: ``stacked_with`` (how many replicas trained together),
its share of the group's training time (``epoch_seconds`` and ``train_seconds`` are the group's
divided by the replicas then training: what the run cost) and the group's memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import plugins as plugin_mod
from .api import StageInfo, StageResult
from .engine import (StageTask, end_stage, finish, guarded, make_loop, resolve_device, restore,
                     save_resume, start_stage, train_loop)
from .meters import PeakMemory, choose_threads
from .train.build import StageData
from .train.loop import EpochLoop, due, non_finite
from .train.stacking import StackedLoop, refusal, stack_loops

__all__ = ["GroupTask", "GroupResult", "run_group"]


@dataclass
class GroupTask:
    """Stage runs to train stacked, picklable as a ``StageTask`` is; an executor treats it as
    one task (the attributes it reads are the first member's)."""

    tasks: list[StageTask]
    #: why they are stacked (``harness.groups``), recorded with each member
    reason: str = ""

    @property
    def name(self) -> str:
        return f"{self.tasks[0].name} (+{len(self.tasks) - 1} stacked)"

    @property
    def artifact_dir(self) -> str:
        return self.tasks[0].artifact_dir

    @property
    def max_threads(self) -> int:
        return self.tasks[0].max_threads

    @property
    def run(self) -> dict:
        return self.tasks[0].run

    @property
    def plugin_modules(self) -> tuple[str, ...]:
        return self.tasks[0].plugin_modules


@dataclass
class GroupResult:
    """One ``StageResult`` per member, in the order of ``GroupTask.tasks``."""

    results: list[StageResult] = field(default_factory=list)


@dataclass
class _Member:
    task: StageTask
    info: StageInfo
    result: StageResult
    data: object
    on_epoch: Callable | None
    loop: EpochLoop | None = None
    start: int = 0
    row: dict = field(default_factory=dict)


def run_group(group: GroupTask, plugins=None, *, data: list | None = None,
              on_epoch: Callable[[int, dict[str, dict]], None] | None = None) -> GroupResult:
    """Train a group's members stacked. ``on_epoch(epoch, {identity: metrics})`` sees each
    epoch's rows of the members that trained it. Never raises for a failure of a member."""
    plugins = plugins or plugin_mod.load(group.plugin_modules)
    datas = data or [None] * len(group.tasks)
    members = []
    for task, d in zip(group.tasks, datas):
        info, result = start_stage(task, plugins)
        result.params["stack_reason"] = group.reason
        members.append(_Member(task, info, result, d, _member_epoch(on_epoch, task.identity)))
    device = resolve_device(group.tasks[0].run["device"])
    for m in members:
        guarded(m.result, lambda m=m: _build(m, plugins, device), status=None)
    ready = [m for m in members if m.result.error is None]
    why = refusal([m.loop for m in ready]) if len(ready) > 1 else "one member left"
    if why is None and len({m.start for m in ready}) > 1:
        why = "its members resumed from different epochs"
    if why is not None:
        for m in ready:
            m.result.params.update({"stacked_with": 1, "stack_refused": why})
            guarded(m.result, lambda m=m: train_loop(m.task, plugins, m.loop, m.info, m.result,
                                                     m.on_epoch, m.start))
    elif ready:
        _train_stacked(ready, plugins, device)
    return GroupResult([end_stage(plugins, m.info, m.result) for m in members])


def _member_epoch(on_epoch, identity: str):
    if on_epoch is None:
        return None
    return lambda epoch, metrics: on_epoch(epoch, {identity: metrics})


def _build(m: _Member, plugins, device) -> None:
    m.loop = make_loop(m.task, plugins, m.data, device, m.result)
    m.start = restore(m.task, m.loop, m.result, m.on_epoch)


def _train_stacked(members: list[_Member], plugins, device) -> None:
    """Train the members stacked to their last epoch; record each as alone."""
    task = members[0].task
    macs = sum(int(m.result.params.get("macs_per_batch", 0)) for m in members)
    threads = choose_threads(task.run["threads"], macs, task.max_threads)
    torch.set_num_threads(threads)
    for m in members:
        m.result.params.update({"stacked_with": len(members), "threads": threads})
    alive = list(members)
    failure = StageResult(status="FAILED")
    meter = PeakMemory(device).start()
    try:
        ok = guarded(failure, lambda: _epochs(alive, plugins), status=None)
    finally:
        memory = meter.stop()
    if not ok:  # the stacked step itself failed (a plugin raised): every member it trained
        for m in alive:
            m.result.error, m.result.traceback = failure.error, failure.traceback
        return
    for m in alive:
        guarded(m.result, lambda m=m: finish(m.task, m.loop, m.result, memory))


def _epochs(alive: list[_Member], plugins) -> None:
    """The stacked epochs; ``alive`` ends as the members that trained to the end."""
    first = alive[0].task
    epochs, start = alive[0].loop.epochs, alive[0].start
    group = stack_loops([m.loop for m in alive], first.run)
    slots = alive[0].loop.evaluators
    last_save = time.monotonic()
    epoch_hook = plugins.pm.hook.harness_epoch_finished
    for epoch in range(start, epochs):
        common = group.train_epoch(epoch)
        failed = _take_rows(alive, group, common, epoch)
        if failed:
            group.unstack()
            alive[:] = [m for m in alive if m not in failed]
            if not alive:
                return
            group = stack_loops([m.loop for m in alive], first.run)
        if any(due(s.every, epoch, epochs) for s in slots):
            group.unstack(optimizers=False)
        for m in alive:
            m.loop.evaluate(epoch, m.row)
            m.result.history.append(m.row)
        if (first.resume_dir and epoch < epochs - 1
                and time.monotonic() - last_save >= first.checkpoint_every):
            group.unstack()
            for m in alive:
                save_resume(m.task, m.loop, m.result, epoch)
            last_save = time.monotonic()
        for m in alive:
            epoch_hook(info=m.info, epoch=epoch + 1, metrics=m.row)
            if m.on_epoch is not None:
                m.on_epoch(epoch + 1, m.row)
    group.unstack()


def _take_rows(alive: list[_Member], group: StackedLoop, common: dict, epoch: int) -> list:
    """Each member's metrics of the epoch (its share of the time); the members whose loss
    became non-finite fail, with the message they would fail with alone."""
    share = common["epoch_seconds"] / len(alive)
    failed = []
    for m, row in zip(alive, group.rows):
        terms = {k.removeprefix("loss_"): v for k, v in row.items() if k.startswith("loss_")}
        message = non_finite(epoch, terms, row["loss"])
        if message:
            m.result.error = message
            failed.append(m)
            continue
        m.loop.train_seconds += share
        m.row = {**common, **row, "epoch_seconds": share,
                 "train_samples_per_s": m.loop.streams.primary.n / share if share > 0
                 else float("nan")}
    return failed

"""Where stage runs execute. The driver owns tracking; an executor only decides placement.

An executor is registered through ``harness_register_executors`` and built as
``cls(jobs=N, **options)``. Its ``run`` receives the stage runs in dependency order and three
callbacks, all of which must be called in the driver process:

- ``prepare(job) -> StageTask | None``: call once all of ``job.deps`` were finished; ``None``
  means the driver recorded the job as skipped (an upstream run failed).
- ``execute_here(task) -> StageResult``: run the task in this process (the inline way).
- ``finish(job, result)``: hand the result back for recording.

An executor that ships tasks elsewhere runs ``run_task(task)`` there instead of
``execute_here`` (the engine's ``run_stage`` plus a per-process cache of the data sets), and
may pass the epochs its workers report to ``self.on_epoch(job, epoch, metrics)`` in the driver,
which the driver sets before ``run``: the progress line and the MLflow curves of a long stage
then move while it runs instead of jumping at its end.

``Ready`` is the bookkeeping every parallel executor needs: which jobs may start now.

A job may be a group of stage runs trained stacked (``harness.groups``): ``prepare`` then gives
a ``GroupTask`` and ``finish`` takes its ``GroupResult``; ``execute_here`` and ``run_task`` run
either, so an executor that hands tasks over unopened supports groups as it is (``stacks``).
An executor that looks inside a task (Ray ships its upstream checkpoints) says ``stacks =
False``, and the driver gives it single stage runs only.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

from . import plugins as plugin_mod
from .api import StageResult
from .dag import InOrder
from .engine import StageTask, run_stage
from .placement import Placement
from .stacked_run import GroupResult, GroupTask, run_group
from .tracking import process_alive, process_started
from .train.build import StageData, build_stage_data


@dataclass
class Job:
    key: tuple
    name: str
    deps: list[tuple] = field(default_factory=list)


class Executor(ABC):
    """Base class: documents the interface and the default parallelism."""

    #: set by the driver: ``on_epoch(job, epoch, metrics)``, to be called in the driver process
    on_epoch: Callable[[Job, int, dict], None] | None = None
    #: set by the CLI: which GPU each worker is pinned to (no GPUs: every worker on the CPU)
    placement: Placement = Placement()
    #: whether ``prepare`` may give a ``GroupTask`` (see the module docstring)
    stacks: bool = True

    def __init__(self, jobs: int = 1):
        self.jobs = max(1, int(jobs))

    def threads_per_job(self, cores: int) -> int:
        """Cores each concurrent stage run may use (an upper bound; tiny models take one)."""
        return max(1, cores // self.jobs)

    @abstractmethod
    def run(self, jobs: list[Job], prepare: Callable[[Job], StageTask | None],
            execute_here: Callable[[StageTask], StageResult],
            finish: Callable[[Job, StageResult], None]) -> None:
        """Execute every job whose dependencies finished, calling back as described above."""


class Ready:
    """Which job may start next: the first, in the order given (the plan's dependency order),
    whose dependencies among the given jobs are all done (``harness.dag.InOrder``).

    A job that was skipped or failed counts as done here; the driver's ``prepare`` then records
    its dependents as skipped. Taking jobs in plan order means a phase II stage run goes before
    the phase I runs of later cells as soon as its own phase I finished, so that complete cells
    (and their results) come early, as with the inline executor.
    """

    def __init__(self, jobs: list[Job]):
        self.jobs = {job.key: job for job in jobs}
        self.walk = InOrder(self.jobs, {job.key: job.deps for job in jobs})

    def pop(self) -> Job | None:
        """The next job that may start (removed from the waiting ones), or None."""
        key = self.walk.pop()
        return None if key is None else self.jobs[key]

    def done(self, key: tuple) -> None:
        self.walk.done(key)

    def __bool__(self) -> bool:
        return bool(self.walk)


def cores_here() -> int:
    """The cores this process may run on (the affinity mask, not the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def driver_context() -> dict:
    """What a worker must share with the driver for plugins to load the same way there: the
    ``HARNESS_*`` environment and ``sys.path`` (a forkserver or a Ray worker froze both when it
    started, possibly before ``--plugin`` or a test changed them), and who the driver is."""
    return {"env": {k: v for k, v in os.environ.items() if k.startswith("HARNESS_")},
            "sys_path": list(sys.path), "driver": (os.getpid(), process_started(os.getpid()))}


def die_with(pid: int, started: str, interval: float = 0.5) -> None:
    """In a worker on the driver's machine: SIGKILL this process once the driver is gone, so
    that a killed ``harness run`` leaves nothing training (and writing resume state) behind.

    A watch thread rather than ``PR_SET_PDEATHSIG``: a forkserver's workers are the server's
    children, and the server outlives the driver as long as any worker holds its pipe."""
    def watch() -> None:
        while process_alive(pid, started):
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="harness-driver-watch", daemon=True).start()


def adopt(context: dict) -> None:
    """In a worker, before ``run_task``: take on the driver's ``driver_context()``."""
    for k in [k for k in os.environ if k.startswith("HARNESS_")]:
        if k not in context["env"]:
            del os.environ[k]
    os.environ.update(context["env"])
    for entry in reversed(context["sys_path"]):
        if entry not in sys.path:
            sys.path.insert(0, entry)


_data_cache: dict[str, StageData] = {}
DATA_CACHE_SIZE = 4


def run_task(task: StageTask | GroupTask, on_epoch=None) -> StageResult | GroupResult:
    """A stage run (or a stacked group) in a worker: the plugins and each data set are loaded
    once per process."""
    plugins = plugin_mod.load(task.plugin_modules)
    if isinstance(task, GroupTask):
        data = [_cached_data(plugins, t) for t in task.tasks]
        return run_group(task, plugins, data=data, on_epoch=on_epoch)
    return run_stage(task, plugins, data=_cached_data(plugins, task), on_epoch=on_epoch)


def _cached_data(plugins, task: StageTask) -> StageData:
    download = bool(task.run.get("download"))
    key = json.dumps([task.dataset, task.data_root, download], sort_keys=True, default=str)
    if key not in _data_cache:
        # the oldest goes: workers live for a grid
        while len(_data_cache) >= DATA_CACHE_SIZE:
            _data_cache.pop(next(iter(_data_cache)))
        _data_cache[key] = build_stage_data(plugins, task.dataset, task.data_root, download)
    return _data_cache[key]

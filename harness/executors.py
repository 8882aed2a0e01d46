"""Where stage runs execute. The driver owns tracking; an executor only decides placement.

An executor is registered through ``harness_register_executors`` and built as
``cls(jobs=N, **options)``. Its ``run`` receives the stage runs in dependency order and three
callbacks, all of which must be called in the driver process:

- ``prepare(job) -> StageTask | None``: call once all of ``job.deps`` were finished; ``None``
  means the driver recorded the job as skipped (an upstream run failed).
- ``execute_here(task) -> StageResult``: run the task in this process (the inline way).
- ``finish(job, result)``: hand the result back for recording.

An executor that ships tasks elsewhere runs ``harness.engine.run_stage(task)`` there instead of
``execute_here``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

from .api import StageResult
from .engine import StageTask


@dataclass
class Job:
    key: tuple
    name: str
    deps: list[tuple] = field(default_factory=list)


class Executor(ABC):
    """Base class: documents the interface and the default parallelism."""

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

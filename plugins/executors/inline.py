"""The default executor: stage runs one after another in the driver process."""

from __future__ import annotations

from harness.api import hookimpl
from harness.executors import Executor


class Inline(Executor):
    """Runs every stage run in this process, in dependency order. The simplest to debug: a
    breakpoint in a plugin just works."""

    def run(self, jobs, prepare, execute_here, finish):
        for job in jobs:
            task = prepare(job)
            if task is not None:
                finish(job, execute_here(task))


@hookimpl
def harness_register_executors(register):
    register("inline", Inline)

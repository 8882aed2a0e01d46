"""Faults on demand for tests/test_faults.py and tests/test_executors.py (``--plugin
harness_test_faults``).

``HARNESS_TEST_FAULT="RUN_NAME:EPOCH:ACTION:FILE"`` acts once the stage run RUN_NAME finished
epoch EPOCH, in whichever process trains it:

- ``kill``: SIGKILL this process (with the inline executor: the driver, mid-grid);
- ``block``: write this process's pid to FILE, then sleep until a signal ends it (the test then
  kills or interrupts whom it wants, knowing the stage run is mid-way);
- ``fill``: fill the filesystem that holds FILE (a small tmpfs the test mounted) to the last byte.

Methods: ``sleepy`` (plain training that sleeps ``pause`` seconds per step, so that runs overlap
in time observably), ``suicide`` (its worker process SIGKILLs itself in the first step) and
``poisoned`` (stackable; a NaN loss in the stage runs ``HARNESS_TEST_POISON`` names).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from harness.api import Method, hookimpl

ENV = "HARNESS_TEST_FAULT"
POISON = "HARNESS_TEST_POISON"


class Sleepy(Method):
    def __init__(self, model, ctx, *, pause: float = 0.05):
        super().__init__(model, ctx)
        self.pause = pause

    def loss(self, batch):
        time.sleep(self.pause)
        return {"task": F.cross_entropy(self.model(batch.x), batch.y)}


class Suicide(Method):
    """Dies at the end of its first training step (not in ``loss``, which the preflight calls
    once in the driver process to check what it returns)."""

    def loss(self, batch):
        return {"task": F.cross_entropy(self.model(batch.x), batch.y)}

    def step_finished(self, step):
        os.kill(os.getpid(), signal.SIGKILL)


@hookimpl
def harness_register_methods(register):
    register("sleepy", Sleepy)
    register("suicide", Suicide)
    register("poisoned", Poisoned)


@hookimpl
def harness_epoch_finished(info, epoch, metrics):
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, at, action, marker = spec.split(":", 3)
    if info.name != name or epoch != int(at):
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "block":
        Path(marker).write_text(str(os.getpid()))
        while True:
            time.sleep(0.1)
    elif action == "fill":
        _fill(Path(marker))


def _fill(folder: Path) -> None:
    """Unbuffered, so that no write is left to fail at close, after this hook returned."""
    for name, block in (("filler", 2**16), ("filler2", 1)):  # then the bytes a block did not fit
        with contextlib.suppress(OSError), open(folder / name, "wb", buffering=0) as out:
            while True:
                out.write(b"\0" * block)


class Poisoned(Method):
    """Plain training, stackable, whose loss becomes NaN from epoch ``after`` (1-based) in the
    stage runs ``HARNESS_TEST_POISON`` names as ``STAGE:SEED`` (comma-separated). The NaN comes
    from a parameter, not from Python state, so that under stacking it reaches that replica
    only, as a diverging network's would."""

    stackable = True

    def __init__(self, model, ctx, *, after: int = 2):
        super().__init__(model, ctx)
        chosen = f"{ctx.stage}:{ctx.seed}" in os.environ.get(POISON, "").split(",")
        self.poison = torch.nn.Parameter(torch.tensor(float("nan") if chosen else 0.0),
                                         requires_grad=False)
        self.after, self.epoch = after, 0

    def epoch_started(self, epoch):
        self.epoch = epoch
        return {}

    def loss(self, batch):
        task = F.cross_entropy(self.model(batch.x), batch.y)
        return {"task": task + self.poison if self.epoch + 1 >= self.after else task}

"""Imported once by the ``processes`` executor's forkserver, before it forks any worker: the
imports every worker would otherwise repeat (torch's compiler stack, which building an optimizer
imports, and every plugin module with its matplotlib or torchvision), several seconds each on a
busy two-core machine. Never raises: a plugin that fails to load fails in the worker, where the
error is reported properly."""

import contextlib

with contextlib.suppress(Exception):  # reported by the worker that loads it again
    import torch._dynamo  # noqa: F401

    from harness.plugins import load

    load(())

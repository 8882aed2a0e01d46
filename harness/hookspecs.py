"""Every hook the core calls. Each hook's contract is its docstring; plugins implement them with
``harness.api.hookimpl``.

Registration hooks receive a ``register`` callback instead of returning values (as ``llm`` does), so
that a name registered twice is caught in one place, with both plugins named.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("harness")


@hookspec
def harness_register_datasets(register):
    """Register datasets: ``register(name, factory, description=None)``.

    ``factory(ctx, **options) -> harness.api.DataBundle``. ``ctx`` is a ``DatasetContext`` (data
    root, whether downloading is allowed). The factory must be deterministic: the same options give
    the same tensors, because the data's fingerprint is part of every stage run's identity. Options
    are the keys a suite writes beside the name, e.g. ``{name: mnist5k, blur: 5}``; unknown options
    are refused before anything runs, by the factory's signature.
    """


@hookspec
def harness_register_architectures(register):
    """Register architectures: ``register(name, factory, description=None)``.

    ``factory(input_shape, num_classes, **options) -> torch.nn.Module``: the network adapts to the
    data's ``(channels, height, width)`` or ``(features,)`` shape and its class count. Networks
    should be ``nn.Sequential``-like with named children, so that methods can split them by name.
    """


@hookspec
def harness_register_methods(register):
    """Register training methods and regularizers: ``register(name, cls, description=None)``.

    ``cls`` subclasses ``harness.api.Method``; it is built as ``cls(model, ctx, **options)`` and
    returns named loss terms per step. Extra modules it owns are trained and checkpointed with it.
    """


@hookspec
def harness_register_evaluators(register):
    """Register evaluators: ``register(name, cls, description=None)``.

    ``cls`` subclasses ``harness.api.Evaluator``; built as ``cls(**options)``. Its class attribute
    ``every`` (an epoch interval, or ``"end"``) is the default the suite's ``every:`` overrides.
    """


@hookspec
def harness_register_executors(register):
    """Register executors: ``register(name, cls, description=None)``.

    ``cls(jobs=..., **options)`` has ``run(tasks, execute, on_result)``; it decides where stage runs
    execute (in this process, worker processes, a cluster). See ``harness.executors``.
    """


@hookspec
def harness_suite_defaults():
    """What a suite gets for what it leaves out, as a mapping with any of these keys:

    - ``evaluate``: the evaluators of a setting without ``evaluate:`` (a list as a suite writes it);
    - ``baseline``: the method whose rows the report's cost table divides by, and ``metric``: the
      headline metric of every table, claim and reference (``report: {baseline:, metric:}``);
    - ``metric_titles``: ``{metric: words}``, how the report's headings name a headline metric;
    - ``executors``: ``{"one": name, "several": name}``, what ``harness run`` uses without
      ``--executor`` for one job at a time and for several;
    - ``scaffold``: the plugins the suite ``harness new`` writes puts a new plugin among
      (``baseline``, ``dataset``, ``dataset_note``, ``architecture``, ``vector_architecture``,
      ``evaluator``, ``metric``; see ``harness.scaffold.scaffold``).

    The core names no plugin, so these come from plugins (the built-ins' are
    ``plugins/defaults.py``); where several answer, the plugin registered last wins, key by key.
    """


@hookspec
def harness_stage_started(info):
    """A stage run is about to train. ``info`` is a ``harness.api.StageInfo``.

    Called in the process that runs the stage (a worker, for parallel executors). Observers only:
    the return value is ignored and an exception fails the stage run.
    """


@hookspec
def harness_epoch_finished(info, epoch, metrics):
    """An epoch ended; ``metrics`` maps names to floats (losses, evaluator results, meters).

    Called in the process that runs the stage, once per epoch: keep it cheap.
    """


@hookspec
def harness_stage_finished(info, result):
    """A stage run ended; ``result`` is a ``harness.api.StageResult`` (status FINISHED or FAILED)."""

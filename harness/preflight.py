"""The preflight: every distinct network and method of a plan built once, untrained, on the CPU,
before anything is recorded.

Option values a signature cannot check (an activation name, a network that does not fit the
data's shape, a CUDA device on a machine without one, a method that needs a layer the network
lacks, a stream over a split the data does not have, a ``loss()`` that returns a bare tensor:
``harness.train.terms``) then fail as bad input, exit 2, with the suite's key, instead of as
FAILED stage runs half-way through a grid. Only ``UserError`` counts here: anything else a
plugin raises is left for the stage run to record, with its traceback.
"""

from __future__ import annotations

import json

import torch

from .engine import resolve_device
from .errors import UserError
from .suite import StageRun, Suite
from .train.build import StageData, build_method, build_model
from .train.streams import resolve_streams
from .train.terms import TERMS_HINT, probe_loss


def preflight(suite: Suite, plugins, runs: list[StageRun], stage_data) -> None:
    """Build what ``runs`` train (``stage_data(run)`` gives a run's data); see the module
    docstring. A method is built once per (method, network, data, references) it has."""
    by_key = {r.key: r for r in runs}
    methods: dict[str, object] = {}

    def method_of(run: StageRun):
        key = json.dumps([run.method.spec(), run.architecture.spec(), run.dataset.spec(),
                          sorted((r, by_key[k].method.spec(), by_key[k].architecture.spec())
                                 for r, k in run.refs.items())], sort_keys=True, default=str)
        if key in methods:
            return methods[key]
        methods[key] = None  # anything but a UserError: the stage run records it
        upstream = {}
        for r, k in run.refs.items():
            upstream[r] = method_of(by_key[k])
            if upstream[r] is None:
                return None
        methods[key] = _build_untrained(suite, plugins, run, stage_data(run), upstream)
        return methods[key]

    for run in runs:
        try:
            resolve_device(str(run.run["device"]))
        except UserError as err:
            raise UserError(err.message, file=suite.path, key=f"stages.{run.stage}.device",
                            hint=err.hint) from None
        method_of(run)


def _build_untrained(suite: Suite, plugins, run: StageRun, stage_data: StageData, upstream):
    """The stage run's method, untrained on the CPU; None when it fails other than as bad input."""
    main = stage_data.main
    try:
        model = build_model(plugins, run.architecture.spec(), main.input_shape, main.num_classes)
    except UserError as err:
        raise err.under(run.architecture.key, file=suite.path, own=("architecture",)) from None
    except Exception:  # noqa: BLE001  the stage run will record it, traceback and all
        return None
    try:
        method = build_method(plugins, run.method.spec(), run.architecture.spec(),
                              data=stage_data, input_shape=main.input_shape,
                              num_classes=main.num_classes, stage=run.stage, seed=run.seed,
                              epochs=int(run.run["epochs"]), device=torch.device("cpu"),
                              upstream=upstream, run=run.run, model=model)
        resolve_streams(method.streams(), stage_data.roles, int(run.run["batch_size"]))
    except UserError as err:
        if err.key == "dataset":
            raise err.under(run.dataset.key, file=suite.path, own=("dataset",)) from None
        raise err.under(run.method.key, file=suite.path, own=("method", run.method.name)) from None
    except Exception:  # noqa: BLE001  as above
        return None
    problem = probe_loss(method, stage_data.roles, int(run.run["batch_size"]))
    if problem:
        raise UserError(f"method {run.method.name!r}: {problem}", file=suite.path,
                        key=run.method.key, hint=TERMS_HINT)
    method.eval()
    method.requires_grad_(False)
    return method

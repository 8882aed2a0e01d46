"""MLflow's own records of a stage run: its data sets as dataset inputs, its network as a model.

The MLflow UI's Dataset column and filter, and its Models column, read these records, and
``mlflow.pytorch.load_model("runs:/<id>/model")`` gives the network back. The harness's own
checkpoint (``checkpoint.pt``, which ``from:``/``refs:`` and resume read) is kept beside them.

Datasets: one input per split the stage trains or tests on, named after the data set (its name
carries the variants: ``mnist5k+labels50``), with the data fingerprint as the digest, the plugin
spec as the source, and the split's role as MLflow's context tag (``train``, ``test``,
``unlabelled``; with several data sets, the role the suite gave each, e.g. ``source``).

The model: the method's primary network (``method.model``), rebuilt from the checkpoint in the
driver (the only process that writes to the store). ``pickle`` (the default) loads back as the
same ``nn.Module`` class (so its code must be importable where it is loaded; MLflow warns that
unpickling runs code) and costs about 0.2 s per stage run on CPU; ``pt2`` (torch.export, the
format MLflow calls safe) loads back as a graph module and cost about 5 s per stage run here.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager

import torch

from .train.build import StageData
from .train.checkpoint import ModelSource, load_method

__all__ = ["MODEL_FORMATS", "dataset_inputs", "log_network"]

MODEL_FORMATS = ("pickle", "pt2", "off")
URI_ENV = "MLFLOW_TRACKING_URI"


def _input(name: str, digest: str, spec: dict, context: str, samples: int, shape, classes):
    from mlflow.entities import Dataset, DatasetInput, InputTag  # MLflow: once a record is written

    profile = {"samples": samples, "input_shape": list(shape), "num_classes": classes}
    dataset = Dataset(name=name, digest=digest, source_type="harness",
                      source=json.dumps(spec, sort_keys=True, default=str),
                      profile=json.dumps(profile))
    return DatasetInput(dataset=dataset, tags=[InputTag("mlflow.data.context", context)])


def dataset_inputs(data: StageData, spec: dict) -> list:
    """The dataset inputs of a stage run (see the module docstring)."""
    specs = spec["roles"] if "roles" in spec else {data.primary: spec}
    several = len(data.roles) > 1
    out = []
    for role, bundle in data.roles.items():
        digest = bundle.fingerprint()
        splits = [("train", bundle.train)] + list(bundle.extra.items())
        if role == data.primary:
            splits.append(("test", bundle.test))
        for split, values in splits:
            context = split if not several else (role if split == "train" else f"{role}_{split}")
            # one name per split: MLflow keeps one input per (name, digest) of a run
            name = f"{bundle.name or specs[role].get('name', role)}/{split}"
            out.append(_input(name, digest, specs[role], context, len(values),
                              bundle.input_shape, bundle.num_classes))
    return out


def log_network(plugins, tracking_uri: str, run_id: str, source: ModelSource,
                example: torch.Tensor, fmt: str) -> str | None:
    """Log the primary network of a finished stage run (its checkpoint and those of its
    references, in ``source``) as the MLflow model ``model``; return its model URI (None when
    ``fmt`` is ``off``)."""
    if fmt == "off":
        return None
    # MLflow's model flavours import much of MLflow: only when a model is logged
    import mlflow
    import mlflow.pytorch

    method = load_method(plugins, source, torch.device("cpu"))
    network = method.model
    version = torch.__version__.split("+")[0]
    quiet = logging.getLogger("mlflow.pytorch")  # its warning about pickle, once per stage run
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with _fluent_store(tracking_uri), mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(network, name="model", serialization_format=fmt,
                                            input_example=example.cpu().numpy(),
                                            pip_requirements=[f"torch=={version}"])
    finally:
        quiet.setLevel(level)
    return info.model_uri


@contextmanager
def _fluent_store(uri: str):
    """MLflow's model logging is fluent (it needs an active run, on the global tracking URI),
    and ``mlflow.set_tracking_uri`` also sets ``MLFLOW_TRACKING_URI`` in the environment, which
    the harness reads as the user's choice of store: left set, it would send the next suite of
    this process to this store. Both are put back as they were."""
    import mlflow  # as above

    env = os.environ.get(URI_ENV)
    before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)
        if env is None:
            os.environ.pop(URI_ENV, None)
        else:
            os.environ[URI_ENV] = env

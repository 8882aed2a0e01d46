"""Contracts of dataset factories, architectures and evaluators, checked on the kit's data."""

from __future__ import annotations

import math
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..api import DataBundle, DatasetContext, EvalContext
from ..train.build import StageData, build_method
from .method_checks import CheckFailed
from .tiny import KIT_METHOD, KIT_NET, kit_plugins, tiny_data

__all__ = ["dataset_checks", "architecture_checks", "evaluator_checks"]


def _bundle(factory, options, root) -> DataBundle:
    bundle = factory(DatasetContext(root=Path(root), download=False), **options)
    if not isinstance(bundle, DataBundle):
        raise CheckFailed(f"the factory returned {type(bundle).__name__}, not a DataBundle")
    return bundle


def check_dataset_is_deterministic(factory, options: dict[str, Any]) -> None:
    """Two builds give the same tensors, so the same fingerprint (part of every identity)."""
    with tempfile.TemporaryDirectory() as root:
        a, b = _bundle(factory, options, root), _bundle(factory, options, root)
    if a.fingerprint() != b.fingerprint():
        raise CheckFailed("two builds of the data set differ: draw splits and noise from a fixed "
                          "seed, never from the global generator")


def check_dataset_is_consistent(factory, options: dict[str, Any]) -> None:
    """Train and test have one input shape, labels are integers in [0, num_classes)."""
    with tempfile.TemporaryDirectory() as root:
        b = _bundle(factory, options, root)
    if tuple(b.test.x.shape[1:]) != b.input_shape:
        raise CheckFailed(f"train inputs are {b.input_shape} but test inputs "
                          f"{tuple(b.test.x.shape[1:])}")
    for name in ("train", "test"):
        y = b.split(name).y
        if y is None or y.dtype != torch.int64:
            raise CheckFailed(f"the {name} labels must be an int64 tensor")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= b.num_classes):
            raise CheckFailed(f"{name} labels leave [0, {b.num_classes})")
    if not b.train.x.is_floating_point():
        raise CheckFailed("inputs must be floating point")


def check_architecture_fits(factory, options: dict[str, Any], shapes, classes) -> None:
    """The network builds for every input shape and class count it claims, answers with one
    logit per class, and is the same network for the same seed."""
    for shape in shapes:
        for n in classes:
            torch.manual_seed(0)
            a = factory(tuple(shape), n, **options)
            torch.manual_seed(0)
            b = factory(tuple(shape), n, **options)
            a.eval()
            with torch.no_grad():
                out = a(torch.rand(3, *shape))
            if tuple(out.shape) != (3, n):
                raise CheckFailed(f"for inputs {tuple(shape)} and {n} classes the output has "
                                  f"shape {tuple(out.shape)}, not (3, {n})")
            sa, sb = a.state_dict(), b.state_dict()
            if any(not torch.equal(sa[k], sb[k]) for k in sa):
                raise CheckFailed("the same seed built different initial weights")


def check_evaluator_returns_finite_floats(cls, options: dict[str, Any],
                                          method_spec: dict[str, Any] | None = None) -> None:
    """On a fresh network of ``method_spec`` (default plain cross-entropy) the evaluator
    returns named finite floats, and it pickles (the resume state keeps evaluators that collect
    points across epochs)."""
    plugins = kit_plugins()
    data = StageData({"target": tiny_data()})
    main = data.main
    method = build_method(plugins, method_spec or {"name": KIT_METHOD}, {"name": KIT_NET}, data=data,
                          input_shape=main.input_shape, num_classes=main.num_classes, stage="kit",
                          seed=0, epochs=1, device=torch.device("cpu"))
    evaluator = cls(**options)
    with tempfile.TemporaryDirectory() as folder:
        ctx = EvalContext(data=main, epoch=1, final=True, device=torch.device("cpu"),
                          artifact_dir=Path(folder), roles=data.roles)
        metrics = evaluator.evaluate(method, ctx)
    if not isinstance(metrics, dict) or not metrics:
        raise CheckFailed("evaluate() must return a non-empty {name: float} mapping")
    bad = {k: v for k, v in metrics.items()
           if not isinstance(k, str) or not isinstance(v, (int, float)) or not math.isfinite(v)}
    if bad:
        raise CheckFailed(f"metrics that are not finite floats: {bad}")
    try:
        pickle.dumps(evaluator)
    except Exception as exc:  # noqa: BLE001  whatever fails to pickle
        raise CheckFailed(f"the evaluator does not pickle ({exc}); resume would restart it empty")


def dataset_checks():
    return [check_dataset_is_deterministic, check_dataset_is_consistent]


def architecture_checks():
    return [check_architecture_fits]


def evaluator_checks():
    return [check_evaluator_returns_finite_floats]

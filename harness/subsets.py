"""Seeded, stratified choices of samples: a fraction of a split, N labelled samples, a long tail.

Semi-supervised and small-data protocols (50 MNIST labels, CIFAR-10-s's 20% of the training set)
and long-tailed variants all choose samples per class. The choice depends only on the labels and
a seed, never on a library's shuffling, so that the same suite picks the same samples on every
machine and the data fingerprint of a stage run pins them down.
"""

from __future__ import annotations

import numpy as np

__all__ = ["proportional_counts", "long_tail_counts", "take_per_class"]


def proportional_counts(y: np.ndarray, total: int) -> np.ndarray:
    """How many samples of each class (in ``np.unique`` order) make ``total`` in proportion.

    Largest remainders get the rounding; ties go to the class listed first, so the counts are
    deterministic and sum to ``total`` exactly.
    """
    _, counts = np.unique(y, return_counts=True)
    ideal = total * counts / counts.sum()
    take = np.floor(ideal).astype(np.int64)
    short = total - int(take.sum())
    order = np.argsort(-(ideal - take), kind="stable")
    take[order[:short]] += 1
    return take


def long_tail_counts(counts: np.ndarray, ratio: float) -> np.ndarray:
    """The class sizes of a long-tailed version: class c keeps ``n_max * ratio**(-c/(C-1))``.

    The exponential profile of Cao et al. (2019, LDAM) and of long-tailed CIFAR: the first class
    keeps the size of the largest class and the last one ``ratio`` times fewer. A class that has
    fewer samples than its share keeps all it has (then the realised ratio is smaller).
    """
    classes = len(counts)
    if classes < 2:
        return counts.copy()
    shares = counts.max() * float(ratio) ** (-np.arange(classes) / (classes - 1))
    return np.minimum(counts, np.maximum(1, np.floor(shares + 1e-9).astype(np.int64)))


def take_per_class(y: np.ndarray, take: np.ndarray, seed: int, stream: int) -> np.ndarray:
    """Ascending indices with ``take[i]`` random members of the i-th class of ``np.unique(y)``.

    ``stream`` separates the draws of different choices made from one seed (a fraction, then
    labels), so that changing one choice does not move the samples of another.
    """
    rng = np.random.default_rng([int(seed), int(stream)])
    chosen = []
    for cls, n in zip(np.unique(y), take):
        members = np.flatnonzero(y == cls)
        chosen.append(members[rng.permutation(len(members))[:int(n)]])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)

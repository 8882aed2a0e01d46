"""Are two networks' components compatible? Head swapping and feature correlation (paper 001).

Both evaluators work on any method whose ``networks()`` offers two networks (``a`` and ``b`` by
default) of one ``nn.Sequential``-like architecture with named children, split at a named child:
the evaluator's ``split:`` option, else the method's ``split`` attribute (``aux_heads`` sets it).
The feature extractor is every child up to and including the split, the head the rest.

- ``head_swap``: test accuracy of f_a + h_a, f_b + h_b, f_a + h_b and f_b + h_a, their means
  ``unswapped_acc`` and ``swapped_acc``, and ``swap_gap`` (unswapped minus swapped). Each run
  also logs ``split_depth``, the split's position among the children, so that a report can
  order a split-point sweep (paper 001, Fig. 4) without knowing layer names.
- ``feature_correlation``: Pearson correlation of each channel of f_a with each channel of f_b
  over the test set (every sample and spatial position is one observation, as in Li et al.
  2016, "Convergent learning"). ``feature_corr`` is the mean over channels with the same index,
  ``feature_corr_matched`` the mean after matching channels one to one with the Hungarian
  algorithm (``scipy.optimize.linear_sum_assignment``, maximising the summed correlation).
  A channel that is constant over the test set (a dead ReLU) has no correlation; it counts as 0.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from harness.api import Evaluator, UserError, hookimpl


def _split_position(net: nn.Module, split: str) -> int:
    names = [name for name, _ in net.named_children()]
    if split not in names[:-1]:
        raise UserError(f"cannot split the network at {split!r}", key="split",
                        hint=f"name one of its children but the last: {', '.join(names[:-1])}")
    return names.index(split)


def _parts(net: nn.Module, split: str) -> tuple[nn.Sequential, nn.Sequential]:
    """(feature extractor, head) as views sharing the network's modules."""
    children = list(net.children())
    index = _split_position(net, split)
    return nn.Sequential(*children[:index + 1]), nn.Sequential(*children[index + 1:])


class _Pair:
    """The two networks an evaluator compares, resolved from the method and the options."""

    def __init__(self, method, split: str | None, nets: tuple[str, str]):
        available = method.networks()
        missing = [n for n in nets if n not in available]
        if missing:
            raise ValueError(f"the method offers the networks {sorted(available)}, not "
                             f"{', '.join(missing)}: head swapping needs two networks (in "
                             "incremental training, evaluate the second stage)")
        split = split if split is not None else getattr(method, "split", None)
        if not isinstance(split, str):
            raise UserError("the evaluator needs the layer the networks are split at",
                            key="split", hint="add `split: <layer name>` to the evaluator")
        self.split = split
        self.depth = _split_position(available[nets[0]], split) + 1
        self.f = {}
        self.h = {}
        for name in nets:
            self.f[name], self.h[name] = _parts(available[name], split)
        self.names = nets


def _batches(x: torch.Tensor, size: int):
    for i in range(0, len(x), size):
        yield x[i:i + size]


class _NetworksEval:
    """Every network the method offers (upstream references included) in eval mode, restored
    afterwards."""

    def __init__(self, method):
        self.nets = [method, *method.networks().values()]

    def __enter__(self):
        self.modes = [n.training for n in self.nets]
        for n in self.nets:
            n.eval()

    def __exit__(self, *exc):
        for n, mode in zip(self.nets, self.modes):
            n.train(mode)


class _PairEvaluator(Evaluator):
    """An evaluator of two networks of a method, split into feature extractor and head at
    ``split`` (default: the method's own split)."""

    def __init__(self, *, split: str | None = None, nets: list[str] = ("a", "b")):
        self.split = split
        self.nets = tuple(nets)
        if len(self.nets) != 2:
            raise UserError(f"nets names two networks, got {list(nets)!r}", key="nets",
                            hint="e.g. `nets: [a, b]`")


class HeadSwap(_PairEvaluator):
    """Test accuracy with each network's own head and with the other's (see module doc)."""

    every = "end"

    @torch.no_grad()
    def evaluate(self, method, ctx):
        pair = _Pair(method, self.split, self.nets)
        a, b = pair.names
        test = ctx.data.test
        correct = {(fa, hb): 0 for fa in (a, b) for hb in (a, b)}
        with _NetworksEval(method):
            for x, y in zip(_batches(test.x, ctx.batch_size), _batches(test.y, ctx.batch_size)):
                for f_name in (a, b):
                    z = pair.f[f_name](x)
                    for h_name in (a, b):
                        pred = pair.h[h_name](z).argmax(dim=1)
                        correct[(f_name, h_name)] += int((pred == y).sum())
        n = len(test)
        acc = {k: v / n for k, v in correct.items()}
        out = {f"acc_f{f}_h{h}": v for (f, h), v in acc.items()}
        out["unswapped_acc"] = (acc[(a, a)] + acc[(b, b)]) / 2
        out["swapped_acc"] = (acc[(a, b)] + acc[(b, a)]) / 2
        out["swap_gap"] = out["unswapped_acc"] - out["swapped_acc"]
        out["split_depth"] = float(pair.depth)
        return out


# --------------------------------------------------------------------------------------------
# Correlation of channels
# --------------------------------------------------------------------------------------------
class CorrelationAccumulator:
    """Pearson correlations between every channel of two feature maps, accumulated batch by
    batch in float64 so a whole test set never has to sit in memory."""

    def __init__(self):
        self.n = 0
        self.sa = self.sb = self.saa = self.sbb = self.sab = None

    @staticmethod
    def _flat(z: torch.Tensor) -> torch.Tensor:
        """(observations, channels): a channel is dim 1, every other position an observation."""
        z = z.detach().double()
        if z.ndim == 2:
            return z
        return z.movedim(1, -1).reshape(-1, z.shape[1])

    def add(self, za: torch.Tensor, zb: torch.Tensor) -> None:
        a, b = self._flat(za), self._flat(zb)
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"the two feature maps differ in shape: {tuple(za.shape)} vs "
                             f"{tuple(zb.shape)}")
        stats = (a.sum(0), b.sum(0), (a * a).sum(0), (b * b).sum(0), a.T @ b)
        if self.sa is None:
            self.sa, self.sb, self.saa, self.sbb, self.sab = stats
        else:
            for name, value in zip(("sa", "sb", "saa", "sbb", "sab"), stats):
                setattr(self, name, getattr(self, name) + value)
        self.n += a.shape[0]

    def matrix(self) -> np.ndarray:
        """corr[i, j] between channel i of a and channel j of b (0 where one is constant)."""
        n = self.n
        cov = self.sab / n - torch.outer(self.sa / n, self.sb / n)
        va = (self.saa / n - (self.sa / n) ** 2).clamp_min(0)
        vb = (self.sbb / n - (self.sb / n) ** 2).clamp_min(0)
        # a variance within rounding error of the channel's second moment means "constant"
        live_a = va > 1e-10 * (self.saa / n) + 1e-300
        live_b = vb > 1e-10 * (self.sbb / n) + 1e-300
        live = live_a[:, None] & live_b[None, :]
        denom = torch.outer(va.sqrt(), vb.sqrt())
        corr = torch.where(live, cov / torch.where(live, denom, torch.ones_like(denom)),
                           torch.zeros_like(cov))
        return corr.clamp(-1, 1).cpu().numpy()


def matched_correlation(corr: np.ndarray) -> tuple[np.ndarray, float]:
    """The one-to-one channel matching that maximises the summed correlation: ``perm[i]`` is
    the channel of b matched to channel i of a; and the mean correlation of matched pairs."""
    rows, cols = linear_sum_assignment(corr, maximize=True)
    perm = np.full(corr.shape[0], -1, dtype=np.int64)
    perm[rows] = cols
    return perm, float(corr[rows, cols].mean())


class FeatureCorrelation(_PairEvaluator):
    """Mean per-channel correlation of f_a and f_b on the test set, raw and Hungarian-matched."""

    every = "end"

    @torch.no_grad()
    def evaluate(self, method, ctx):
        pair = _Pair(method, self.split, self.nets)
        a, b = pair.names
        acc = CorrelationAccumulator()
        with _NetworksEval(method):
            for x in _batches(ctx.data.test.x, ctx.batch_size):
                acc.add(pair.f[a](x), pair.f[b](x))
        corr = acc.matrix()
        if corr.shape[0] != corr.shape[1]:
            raise ValueError(f"f_a has {corr.shape[0]} channels and f_b {corr.shape[1]}: "
                             "channel correlation needs equal widths")
        _, matched = matched_correlation(corr)
        return {"feature_corr": float(np.mean(np.diag(corr))), "feature_corr_matched": matched,
                "split_depth": float(pair.depth)}


@hookimpl
def harness_register_evaluators(register):
    register("head_swap", HeadSwap,
             "paper 001: test accuracy of f_a+h_a, f_b+h_b and the swapped f_a+h_b, f_b+h_a")
    register("feature_correlation", FeatureCorrelation,
             "paper 001: mean per-channel correlation of f_a and f_b, raw and Hungarian-matched")

"""Fisher information of a network's parameters, from per-sample gradients (torch.func).

EWC (Kirkpatrick et al. 2017) and CETL's generalized Fisher information (paper 003) weigh each
parameter by the diagonal of the empirical Fisher information: the mean over samples of the
squared gradient of the sample's loss. A Python loop over samples costs one backward per sample;
``torch.func.vmap(grad(...))`` computes the same per-sample gradients in one vectorised call,
in chunks so that memory stays at ``chunk`` x the parameter count.

The network is evaluated as it is (call ``eval()`` first when batch norm or dropout must not
couple or perturb the samples: per-sample gradients through batch statistics are not per-sample).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

__all__ = ["fisher_diagonal", "fisher_samples", "normalize_max", "per_sample_grads"]


def per_sample_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     loss_fn: Callable = F.cross_entropy, params: list[str] | None = None,
                     chunk: int = 256):
    """Yield, per chunk of samples, {parameter name: gradients of shape (chunk, *param.shape)}
    of ``loss_fn(model(x_i), y_i)`` for each sample i."""
    named = dict(model.named_parameters())
    names = params if params is not None else [n for n, p in named.items() if p.requires_grad]
    trained = {n: named[n].detach() for n in names}
    fixed = {n: p.detach() for n, p in named.items() if n not in trained}
    buffers = dict(model.named_buffers())

    def sample_loss(weights, xi, yi):
        out = functional_call(model, {**weights, **fixed, **buffers}, (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    for start in range(0, len(x), chunk):
        yield per_sample(trained, x[start:start + chunk], y[start:start + chunk])


def fisher_diagonal(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                    loss_fn: Callable = F.cross_entropy, params: list[str] | None = None,
                    chunk: int = 256, normalize: str = "none") -> dict[str, torch.Tensor]:
    """{parameter name: mean over samples of the squared per-sample gradient}.

    ``y`` are the labels the loss uses (the empirical Fisher; pass the network's own sampled
    predictions for the true Fisher). ``normalize="max"`` divides every entry by the largest
    entry over all parameters, as paper 003 does, so that the values lie in [0, 1].
    """
    if normalize not in ("none", "max"):
        raise ValueError("normalize is 'none' or 'max'")
    total: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for grads in per_sample_grads(model, x, y, loss_fn, params, chunk):
            for name, g in grads.items():
                sq = g.pow(2).sum(0)
                total[name] = total[name] + sq if name in total else sq
    fisher = {name: t / max(1, len(x)) for name, t in total.items()}
    return normalize_max(fisher) if normalize == "max" else fisher


def normalize_max(fisher: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every entry divided by the largest entry over all parameters (paper 003's F_i in [0, 1]);
    an all-zero Fisher is returned as it is."""
    top = max(float(f.max()) for f in fisher.values()) if fisher else 0.0
    return {name: f / top for name, f in fisher.items()} if top > 0 else fisher


def fisher_samples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batches: int,
                   loss_fn: Callable = F.cross_entropy, params: list[str] | None = None,
                   chunk: int = 256) -> dict[str, torch.Tensor]:
    """{parameter name: K x param.shape}: the Fisher diagonal of each of ``batches`` (K) equal,
    consecutive groups of the samples (a remainder is dropped).

    Why: a Fisher value per parameter is one number, but paper 003's relative Fisher (the mutual
    information of two tasks' Fisher values for parameter i) needs a sample of them, and the
    paper's reading is one Fisher per batch. The mean over the K rows is ``fisher_diagonal`` of
    the K * (len(x) // K) samples used.
    """
    k = int(batches)
    size = len(x) // k if k > 0 else 0
    if size < 1:
        raise ValueError(f"fisher_samples needs at least one sample per batch: {len(x)} samples, "
                         f"{batches} batches")
    rows: list[dict[str, torch.Tensor]] = []
    for b in range(k):
        part = slice(b * size, (b + 1) * size)
        rows.append(fisher_diagonal(model, x[part], y[part], loss_fn=loss_fn, params=params,
                                    chunk=chunk))
    return {name: torch.stack([r[name] for r in rows]) for name in rows[0]}

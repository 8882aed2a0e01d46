"""The network inversion of paper 004 on held-out data: J^T z against the input, for any model.

J^T z (z the logits, J = dz/dx) is what a spline network "reconstructs" from its own output
(paper 004, eqs. 5-7), whatever trained it: so the supervised-only baseline is measured the
same way as an inversion-trained network, and the gap between them is the effect of the
reconstruction term. The metric ``inv_recon_mse`` is ||J^T z - x||^2 averaged over elements
and samples (``pixels: mean``; ``sum`` sums over the elements of a sample), on ``split`` (test
by default), at most ``limit`` samples spread evenly over it. For image data a PNG grid of
``images`` inputs (top row) and their J^T z (bottom row), the paper's Figs. 1 and 3, goes to
``inversion/epoch<NNNNN>.png`` under the artifact folder (J^T z clipped to the inputs' value
range for display only).

The model runs in eval mode with gradients on (the VJP needs them) but no graph is kept.
"""

from __future__ import annotations

from pathlib import Path

import torch

from harness.api import Evaluator, UserError, check_choice, hookimpl

from ..methods.spline_inversion import invert, squared_error
from .reconstruction import network_of, save_grid

__all__ = ["InversionReconstruction"]


def _whole(value, key: str, allow_zero: bool = False, allow_none: bool = False):
    if value is None and allow_none:
        return None
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{key} must be a whole number >= {low}, got {value!r}", key=key)
    return value


class InversionReconstruction(Evaluator):
    """``inv_recon_mse`` of J^T z against x on a split, and an image grid of both."""

    every = "end"

    def __init__(self, *, split: str = "test", network: str = "model", images: int = 8,
                 limit: int | None = 1000, pixels: str = "mean"):
        self.split = check_choice(split, "split", ("test", "train"))
        self.network = network
        self.images = _whole(images, "images", allow_zero=True)
        self.limit = _whole(limit, "limit", allow_none=True)
        self.pixels = check_choice(pixels, "pixels", ("mean", "sum"))

    def evaluate(self, method, ctx):
        model = network_of(method, self.network)
        x = getattr(ctx.data, self.split).x
        if self.limit is not None and len(x) > self.limit:
            x = x[torch.linspace(0, len(x) - 1, self.limit).round().long()]
        shown = torch.linspace(0, len(x) - 1, min(self.images, len(x))).round().long().tolist()
        was_training = method.training
        method.eval()
        total, recon = 0.0, []
        try:
            for i in range(0, len(x), ctx.batch_size):
                inv = invert(model, x[i:i + ctx.batch_size], create_graph=False)
                r = inv.recon.detach()
                total += float(squared_error(r, inv.x.detach(), self.pixels).sum())
                recon.append(r[[j - i for j in shown if i <= j < i + len(r)]])
        finally:
            method.train(was_training)
        out = {"inv_recon_mse": total / max(1, len(x))}
        if shown and x.ndim == 4 and x.shape[1] in (1, 3):
            save_grid(x[shown], torch.cat(recon),
                      Path(ctx.artifact_dir) / "inversion" / f"epoch{ctx.epoch:05d}.png",
                      f"epoch {ctx.epoch}: input (top) and J^T z (bottom), "
                      f"MSE {out['inv_recon_mse']:.4g}")
        return out


@hookimpl
def harness_register_evaluators(register):
    register("inversion", InversionReconstruction,
             "paper 004: J^T z (the network's spline inverse) against the input, MSE and an "
             "image grid, for any model")

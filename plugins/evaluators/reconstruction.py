"""How well a model's weights, run backwards, regenerate its input (paper 000, Fig. 5).

The paper's point is that a racecar-trained network keeps the input's information in its
features, while a plainly trained (or orthogonality-trained) one discards it, so the same
reverse construction largely fails on it. The measure therefore has to work for *any* model:
it builds the racecar reverse pass (``plugins.reverse.ReverseNet``, racecar's parameters) from the model's
declared trunk, whatever method trained it. A racecar method is measured with its own reverse
pass (its constrained depth, start and input batch norm) unless ``layers`` is given; any other
method with the whole trunk.

Metrics on the chosen split: ``recon_mse`` (mean squared error of the regenerated input I' against
I, per element) and ``recon_mse_L<m>`` for each compared intermediate L_m (m >= 2). For image
data (N x C x H x W with 1 or 3 channels) a PNG grid of ``images`` originals spread evenly over
the split (top row) and their regenerations (bottom row) goes to
``reconstruction/epoch<NNNNN>.png`` under the artifact folder; regenerations are clipped to the
originals' value range for display only. ``limit`` caps the samples measured (evenly spaced
over the split).

``rule: rnl`` measures paper 002's reverse instead (its Fig. 2: a plainly trained network cannot
regenerate its input, a reversibly trained one can): the whole network run back from its softmax
output with the previous layer's bias (``plugins.methods.rnl.output_reverse``), for any model;
an ``rnl`` method is measured with its own reverse. Only ``recon_mse`` then.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from harness.api import Evaluator, UserError, check_choice, hookimpl

from ..methods.racecar import STARTS, Racecar
from ..methods.rnl import RNL, output_reverse, reconstruct
from ..reverse import ReverseNet

RULES = ("racecar", "rnl")

__all__ = ["Reconstruction", "save_grid"]


def save_grid(originals: torch.Tensor, regenerated: torch.Tensor, path: Path, title: str = "") -> None:
    """Originals on top, regenerations below, one column per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(originals)
    lo, hi = float(originals.min()), float(originals.max())
    fig, axes = plt.subplots(2, n, figsize=(1.3 * n, 2.9), squeeze=False)
    for row, images in enumerate((originals, regenerated.clamp(lo, hi))):
        for col in range(n):
            img = images[col].detach().cpu()
            ax = axes[row][col]
            if img.shape[0] == 1:
                ax.imshow(img[0].numpy(), cmap="gray", vmin=lo, vmax=hi)
            else:
                ax.imshow(((img - lo) / max(hi - lo, 1e-12)).permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row][0].set_ylabel("input" if row == 0 else "regenerated", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)



def network_of(method, name: str):
    """The method's network an evaluator was asked to measure (``network:``), or a UserError
    naming the networks it has."""
    nets = method.networks()
    if name not in nets:
        raise UserError(f"method has no network {name!r}", key="network",
                        hint=f"one of {', '.join(nets)}")
    return nets[name]

class Reconstruction(Evaluator):
    """Input regenerated through the reverse pass vs the input (MSE), plus an image grid."""

    every = "end"

    def __init__(self, *, split: str = "test", layers: int | None = None, start: str | None = None,
                 network: str = "model", images: int = 8, limit: int | None = 2000,
                 trunk=None, rule: str = "racecar"):
        check_choice(rule, "rule", RULES, hint="racecar (paper 000's reverse) or rnl (paper 002's, "
                                               "from the softmax output)")
        if split not in ("test", "train"):
            raise UserError(f"unknown split {split!r}", key="split", hint="test or train")
        if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int)
                                   or layers < 1):
            raise UserError(f"layers must be a positive whole number, got {layers!r}", key="layers")
        if start is not None and start not in STARTS:
            raise UserError(f"unknown start {start!r}", key="start", hint=" or ".join(STARTS))
        if isinstance(images, bool) or not isinstance(images, int) or images < 0:
            raise UserError(f"images must be a whole number >= 0, got {images!r}", key="images")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise UserError(f"limit must be a positive whole number or null, got {limit!r}",
                            key="limit")
        self.split, self.layers, self.start = split, layers, start
        self.network, self.images, self.limit, self.trunk = network, images, limit, trunk
        self.rule = rule
        self._reverse: ReverseNet | None = None  # built once per model, for non-racecar methods

    def __getstate__(self):
        # the cached reverse pass references a model: rebuilt on demand, never pickled with us
        return {**self.__dict__, "_reverse": None}

    def _reverse_pass(self, method, model) -> tuple[ReverseNet, int, str]:
        own = getattr(method, "reverse", None)
        if self.rule == "rnl":
            if isinstance(method, RNL) and own.model is model and self.trunk is None:
                return own, 1, "rnl"
            if self._reverse is None or self._reverse.model is not model:
                device = next((p.device for p in model.parameters()), torch.device("cpu"))
                self._reverse = output_reverse(model, trunk=self.trunk).to(device)
            return self._reverse, 1, "rnl"
        if isinstance(method, Racecar) and isinstance(own, ReverseNet) and own.model is model \
                and self.trunk is None:
            layers = self.layers if self.layers is not None else method.layers
            return own, layers, self.start or method.start
        if self._reverse is None or self._reverse.model is not model:
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            self._reverse = ReverseNet(model, trunk=self.trunk).to(device)
        depth = self._reverse.depth
        return self._reverse, self.layers if self.layers is not None else depth, \
            self.start or "constrained"

    @staticmethod
    def _regenerate(reverse: ReverseNet, xb: torch.Tensor, layers: int, start: str):
        """(I', [L_1..], [L'_1..]) by racecar's reverse, or (x_bar, [], []) by paper 002's."""
        if start != "rnl":
            return reverse.regenerate_input(xb, layers, start)
        cap = reverse.capture(xb)
        return reconstruct(reverse, cap, F.softmax(cap.output, dim=1)), [], []

    @torch.no_grad()
    def evaluate(self, method, ctx):
        model = network_of(method, self.network)
        reverse, layers, start = self._reverse_pass(method, model)
        if layers > reverse.depth:
            raise UserError(f"layers {layers} is deeper than the trunk ({reverse.depth} layers)",
                            key="layers")
        split = getattr(ctx.data, self.split)
        x = split.x
        if self.limit is not None and len(x) > self.limit:  # evenly spaced, as for the grid
            x = x[torch.linspace(0, len(x) - 1, self.limit).round().long()]
        # images spread evenly over the split: data sets stored in class order show every class
        shown = torch.linspace(0, len(x) - 1, min(self.images, len(x))).round().long().tolist()
        kept: dict[int, torch.Tensor] = {}
        was_training = method.training
        method.eval()
        try:
            sums = [0.0] * layers
            counts = [0] * layers
            for i in range(0, len(x), ctx.batch_size):
                xb = x[i:i + ctx.batch_size]
                image, inputs, regenerated = self._regenerate(reverse, xb, layers, start)
                sums[0] += float((image - xb).pow(2).sum())
                counts[0] += xb.numel()
                for m in range(1, layers):
                    sums[m] += float((inputs[m] - regenerated[m]).pow(2).sum())
                    counts[m] += inputs[m].numel()
                kept.update({j: image[j - i] for j in shown if i <= j < i + len(xb)})
        finally:
            method.train(was_training)
        out = {"recon_mse": sums[0] / max(1, counts[0])}
        out.update({f"recon_mse_L{m + 1}": sums[m] / max(1, counts[m]) for m in range(1, layers)})
        if shown and x.ndim == 4 and x.shape[1] in (1, 3):
            save_grid(x[shown], torch.stack([kept[j] for j in shown]),
                      Path(ctx.artifact_dir) / "reconstruction" / f"epoch{ctx.epoch:05d}.png",
                      f"epoch {ctx.epoch}: regenerated through "
                      f"{'the whole network (paper 002)' if start == 'rnl' else f'{layers} layer(s)'}, "
                      f"MSE {out['recon_mse']:.4g}")
        return out


@hookimpl
def harness_register_evaluators(register):
    register("reconstruction", Reconstruction,
             "input regenerated through the racecar reverse pass vs the input (MSE), with an "
             "image grid for image data (paper 000 Fig. 5)")

"""The information plane (paper 000, Figs. 2-4; Shwartz-Ziv and Tishby 2017): I(X;L) and I(L;Y)
for every layer L at chosen epochs, estimated by binning the activations.

Each layer's activations are cut into ``bins`` (30) equal bins over their observed range at that
epoch (reading: Shwartz-Ziv and Tishby bin tanh units over [-1, 1]; ``range: [-1, 1]`` gives that
exactly); a sample's vector of bin indices is the discrete variable T. Since T is a deterministic
function of X, I(X;T) = H(T), and I(T;Y) = H(T) + H(Y) - H(T,Y), all under the empirical
distribution of the chosen samples, in bits. On ``ib12`` with ``split: all`` the samples are all
4096 patterns, each once, so X is exactly uniform and the estimate is exact for the binned T.

The layers are the outputs of the model's activation modules plus its last module (the 5 hidden
layers and the output of the MI network), or the children named in ``layers``. The evaluator
keeps the values of every epoch it measured and, at the final epoch, draws the plane coloured by
epoch (black early, yellow late, as in the paper) into ``mi_plane.png`` and writes the numbers to
``mi_plane.json`` in the artifact folder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from harness.api import Evaluator, UserError, hookimpl

__all__ = ["MiPlane", "entropy_bits", "binned_mi", "plot_plane"]

_ACTIVATIONS = (nn.Tanh, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Sigmoid, nn.ELU, nn.GELU, nn.SiLU,
                nn.Softplus)


def entropy_bits(ids: np.ndarray) -> float:
    """Entropy (bits) of the empirical distribution of the integer labels ``ids``."""
    _, counts = np.unique(ids, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def _row_ids(codes: np.ndarray) -> np.ndarray:
    """An integer id per distinct row of a 2-D array of small integers."""
    codes = np.ascontiguousarray(codes)
    rows = codes.view(np.dtype((np.void, codes.dtype.itemsize * codes.shape[1]))).ravel()
    _, ids = np.unique(rows, return_inverse=True)
    return ids.ravel()


def binned_mi(activations: np.ndarray, y: np.ndarray, bins: int = 30,
              value_range: tuple[float, float] | None = None) -> tuple[float, float]:
    """(I(X;T), I(T;Y)) in bits for T = the binned ``activations`` (N x features) of N samples."""
    a = activations.reshape(len(activations), -1).astype(np.float64)
    lo, hi = value_range if value_range is not None else (float(a.min()), float(a.max()))
    if hi <= lo:  # a constant layer carries no information
        codes = np.zeros((len(a), 1), dtype=np.uint8)
    else:
        edges = np.linspace(lo, hi, bins + 1)
        codes = np.clip(np.digitize(a, edges[1:-1]), 0, bins - 1)
        codes = codes.astype(np.uint8 if bins <= 256 else np.int32)
    t = _row_ids(codes)
    y = np.asarray(y).astype(np.int64)
    h_t = entropy_bits(t)
    joint = t.astype(np.int64) * (int(y.max()) + 1) + y
    return h_t, h_t + entropy_bits(y) - entropy_bits(joint)


def plot_plane(history: list[dict], layers: list[str], path: Path, title: str = "") -> None:
    """One point per (epoch, layer); each epoch's layers joined by a line, colour = epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    norm = colors.Normalize(vmin=min(epochs), vmax=max(max(epochs), min(epochs) + 1))
    cmap = plt.get_cmap("inferno")
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for h in history:
        colour = cmap(norm(h["epoch"]))
        ax.plot(h["ixl"], h["ily"], "-", color=colour, alpha=0.35, linewidth=0.8)
        ax.scatter(h["ixl"], h["ily"], color=colour, s=14, zorder=3)
    last = history[-1]
    for k, (xv, yv) in enumerate(zip(last["ixl"], last["ily"])):
        ax.annotate(f"{k + 1}", (xv, yv), textcoords="offset points", xytext=(4, 3), fontsize=7)
    bar = fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="epoch")
    bar.locator = MaxNLocator(integer=True)  # epochs are whole numbers: no tick at 1.5
    bar.update_ticks()
    ax.set_xlabel("I(X;L) [bits]")
    ax.set_ylabel("I(L;Y) [bits]")
    ax.set_title(title or "information plane; layers " + ", ".join(
        f"{k + 1}={n}" for k, n in enumerate(layers)), fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


class MiPlane(Evaluator):
    """Per-layer I(X;L) and I(L;Y) (metrics ``mi_ixl_<layer>``, ``mi_ily_<layer>``) by binning."""

    every = 1

    def __init__(self, *, epochs=None, bins: int = 30, layers=None, split: str = "all",
                 range=None, network: str = "model", limit: int | None = None,
                 plot: bool = True):
        if epochs is not None and not (isinstance(epochs, list) and all(
                isinstance(e, int) and not isinstance(e, bool) and e > 0 for e in epochs)):
            raise UserError(f"epochs must be a list of positive epoch numbers, got {epochs!r}",
                            key="epochs", hint="e.g. epochs: [1, 10, 100, 1000]; leave it out to "
                                               "measure whenever `every:` says")
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
            raise UserError(f"bins must be a whole number >= 2, got {bins!r}", key="bins")
        if split not in ("all", "train", "test"):
            raise UserError(f"unknown split {split!r}", key="split", hint="all, train or test")
        if range is not None and not (isinstance(range, (list, tuple)) and len(range) == 2
                                      and float(range[0]) < float(range[1])):
            raise UserError(f"range must be [low, high], got {range!r}", key="range",
                            hint="e.g. range: [-1.0, 1.0] for tanh layers; leave it out for the "
                                 "observed range")
        self.epochs = set(epochs) if epochs is not None else None
        self.bins, self.layers, self.split, self.network = bins, layers, split, network
        self.range = (float(range[0]), float(range[1])) if range is not None else None
        self.limit, self.plot = limit, plot
        self.history: list[dict] = []

    def _layers(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        children = list(model.named_children())
        if not children:
            raise UserError("mi_plane needs a model with named children (layers) to measure",
                            key="layers")
        if self.layers is not None:
            by_name = dict(children)
            missing = [n for n in self.layers if n not in by_name]
            if missing:
                raise UserError(f"no layer(s) {missing} in the model", key="layers",
                                hint=f"children are: {', '.join(by_name)}")
            return [(n, by_name[n]) for n in self.layers]
        chosen = [(n, m) for n, m in children if isinstance(m, _ACTIVATIONS)]
        if children[-1][1] not in [m for _, m in chosen]:
            chosen.append(children[-1])
        return chosen

    def _data(self, ctx):
        if self.split == "all":
            x = torch.cat([ctx.data.train.x, ctx.data.test.x])
            y = torch.cat([ctx.data.train.y, ctx.data.test.y])
        else:
            split = getattr(ctx.data, self.split)
            x, y = split.x, split.y
        if self.limit is not None:
            x, y = x[:self.limit], y[:self.limit]
        return x, y

    @torch.no_grad()
    def evaluate(self, method, ctx):
        if self.epochs is not None and ctx.epoch not in self.epochs and not ctx.final:
            return {}
        nets = method.networks()
        if self.network not in nets:
            raise UserError(f"method has no network {self.network!r}", key="network",
                            hint=f"one of {', '.join(nets)}")
        model = nets[self.network]
        layers = self._layers(model)
        x, y = self._data(ctx)
        captured: dict[str, list[torch.Tensor]] = {n: [] for n, _ in layers}
        handles = [m.register_forward_hook(
            lambda _m, _i, out, _n=n: captured[_n].append(out.detach().flatten(1).cpu()))
            for n, m in layers]
        was_training = method.training
        method.eval()
        try:
            for i in range(0, len(x), ctx.batch_size):
                model(x[i:i + ctx.batch_size])
        finally:
            method.train(was_training)
            for h in handles:
                h.remove()
        labels = y.cpu().numpy()
        row = {"epoch": ctx.epoch, "ixl": [], "ily": []}
        out = {}
        for name, _ in layers:
            acts = torch.cat(captured[name]).numpy()
            ixl, ily = binned_mi(acts, labels, self.bins, self.range)
            row["ixl"].append(ixl)
            row["ily"].append(ily)
            out[f"mi_ixl_{name}"], out[f"mi_ily_{name}"] = ixl, ily
        self.history = [h for h in self.history if h["epoch"] != ctx.epoch] + [row]
        if ctx.final:
            self._write(Path(ctx.artifact_dir), [n for n, _ in layers], labels)
        return out

    def _write(self, folder: Path, names: list[str], labels: np.ndarray) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        h_y = entropy_bits(labels)
        (folder / "mi_plane.json").write_text(json.dumps(
            {"layers": names, "bins": self.bins, "split": self.split, "H_Y_bits": h_y,
             "log2_samples": math.log2(len(labels)), "history": self.history}, indent=1))
        if self.plot:
            plot_plane(self.history, names, folder / "mi_plane.png")


@hookimpl
def harness_register_evaluators(register):
    register("mi_plane", MiPlane, "I(X;L) and I(L;Y) per layer by binning (information plane, "
                                  "paper 000 Figs. 2-4), with a plot coloured by epoch")

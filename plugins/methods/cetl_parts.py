"""The networks CETL couples (paper 003, Sec. 3.1): the decoder T1, the source features, the
adapter between them, and T1 o T2 as one module.

- T1 is the reverse of the target network T2 (``plugins.reverse`` with ``weights: own``: a decoder
  whose weights are its own, initialised as copies of T2's and trained apart from it). It starts
  in the output space of T2's layer ``target_layer`` (default: the last weight layer, the
  logits, as the paper's T1 reverses CI-CNN's three FCs) and ends in the input space. Each
  reverse step is act_{k-1}(W_k^T (r - b_k)) (``bias: subtract_own``, so every bias of T1 takes
  part), convolutions as the conv2d of the flipped kernel, pooling undone by nearest
  upsampling; the last step (to the image) is linear, since the data need not lie in an
  activation's range. The sizes the reverse needs (each block's input, the pooled sizes) are
  read once from a forward pass of one dummy sample, so T1 runs on codes alone (from S or T2).
- The source features S(x) are the output of one child of the frozen source network
  (``source_layer``): ``output`` (its logits: the soft targets of distillation), ``penultimate``
  (the input of its last weight layer, the paper's "features before the last fully connected
  layer" of AlexNet), or a child's name. Where their size differs from T1's input, a linear
  ``adapter`` (trained with T1 on L_r^s) maps them there.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch import nn

from harness.api import UserError

from ..reverse import Capture, ReverseNet, weight_layers

__all__ = ["Decoder", "Coupled", "SourceFeatures", "make_adapter", "recon_loss"]


def recon_loss(out: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
    """||out - target||^2 per sample summed over its elements and averaged over the batch
    (``sum``, the paper's |.|^2), or the mean over every element (``mean``)."""
    sq = (out - target).pow(2)
    return sq.reshape(len(out), -1).sum(1).mean() if reduction == "sum" else sq.mean()


class Decoder(nn.Module):
    """T1: from T2's code at ``target_layer`` back to an image (see the module docstring)."""

    def __init__(self, target: nn.Module, input_shape, target_layer: str | None = None):
        super().__init__()
        layers = weight_layers(target)
        if target_layer is None:
            target_layer = layers[-1] if layers else None
        if target_layer not in layers:
            raise UserError(f"target_layer {target_layer!r} is not a weight layer of the target "
                            "network", key="target_layer",
                            hint=f"its weight layers: {', '.join(layers) or 'none'}")
        trunk = layers[:layers.index(target_layer) + 1]
        self.reverse = ReverseNet(target, trunk=trunk, bias="subtract_own",
                                  input_activation=False, weights="own", conv="flipped")
        device = next(target.parameters()).device
        with torch.no_grad():
            cap = self.reverse.capture(torch.zeros(1, *input_shape, device=device))
        self._inputs = [SimpleNamespace(shape=t.shape) for t in cap.inputs]
        self._shapes = dict(cap.shapes)
        self.end = self.reverse.spec.blocks[-1].end  # child index where T2's code is taken
        self.code_shape = tuple(cap.outputs[-1].shape[1:])

    def code(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """T2's output at the top of the reversed trunk (its logits by default)."""
        h = x
        for i, (_, mod) in enumerate(model.named_children()):
            h = mod(h)
            if i == self.end:
                return h
        return h

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        cap = Capture(None, self._inputs, [], self._shapes)
        levels = self.reverse.run(z, self.reverse.depth - 1, cap, keep=1)
        return self.reverse.to_image(levels[0], cap)


class Coupled(nn.Module):
    """T1 o T2 as one module (what L_r^t differentiates, and the Fisher of it is taken of)."""

    def __init__(self, target: nn.Module, decoder: Decoder):
        super().__init__()
        self.t2, self.decoder = target, decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.decoder.code(self.t2, x))


class SourceFeatures:
    """x -> the frozen source network's output at ``layer`` (no gradients, never trained)."""

    CHOICES = ("output", "penultimate")

    def __init__(self, source: nn.Module, layer: str):
        children = list(source.named_children())
        names = [n for n, _ in children]
        if layer == "output":
            self.stop = len(children) - 1
        elif layer == "penultimate":
            last = [i for i, (_, m) in enumerate(children) if isinstance(m, (nn.Linear, nn.Conv2d))]
            if not last:
                raise UserError("the source network has no weight layer to take the features "
                                "before", key="source_layer", hint="use source_layer: output")
            self.stop = last[-1] - 1
        elif layer in names:
            self.stop = names.index(layer)
        else:
            raise UserError(f"source_layer {layer!r} is not a child of the source network",
                            key="source_layer",
                            hint=f"output, penultimate, or one of: {', '.join(names)}")
        self.children = [m for _, m in children[:self.stop + 1]]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for mod in self.children:
            h = mod(h)
        return h


def make_adapter(feature_shape, code_shape) -> nn.Module:
    """Identity where S's features already have T1's input shape, else a Linear map between
    the flattened sizes (reshaped to T1's input)."""
    if tuple(feature_shape) == tuple(code_shape):
        return nn.Identity()
    return _Linear(math.prod(feature_shape), tuple(code_shape))


class _Linear(nn.Module):
    def __init__(self, n_in: int, code_shape: tuple[int, ...]):
        super().__init__()
        self.code_shape = code_shape
        self.linear = nn.Linear(n_in, math.prod(code_shape))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(h.flatten(1)).reshape(len(h), *self.code_shape)

"""Racecar training (paper 000): a reverse pass that reuses the forward weights must regenerate
the input and the intermediate activations, so the features keep information about the input
instead of specialising on the task.

The reverse pass is derived from the architecture, never written per network, by the shared
construction of ``plugins.reverse`` (racecar's parameters: ``bias: subtract_own``, weights
shared). An architecture declares its *reversible trunk*: the names of its first weight layers
(``model.reversible_trunk``, or the method option ``trunk:``), children of an ``nn.Sequential``.
Reverse step m subtracts block m's bias, applies W^T (Linear: ``x @ W``; Conv2d:
``conv_transpose2d`` with the same weight), then the batch norm and activation of block m-1,
giving L'_m, compared with L_m *before* the nearest upsampling that undoes block m-1's pooling.
A layer the construction cannot reverse is refused with a ``UserError`` that names it.

Readings, each an option with the default METHODS.md names:

- ``loss_form: half_sq`` -- lambda_m * 1/2 * sum of squared differences over batch and features,
  as the authors' code does; ``l2`` is the norm the paper prints (its lambdas only make sense
  with the squared form).
- ``start: constrained`` -- RR^s starts the reverse pass from the output of layer s (after its
  activation, before its pooling) and regenerates L'_s .. L'_1; ``trunk`` starts from the end of
  the whole trunk and constrains only the first s. (The paper's low RR^1_A accuracy on the MI
  task, Table 1, fits ``trunk`` better; METHODS.md names ``constrained``.)
- ``input_activation: true`` -- the regenerated input gets the activation Tables 7/9/11 give it
  (the first block's activation type; with a batch norm of its own, owned by this method, when
  the first block has one); ``false`` leaves it linear.
- ``reverse_bn: batch`` -- the reverse pass shares gamma/beta of the forward batch norm of layer
  m-1 but normalises with the reverse tensor's own batch statistics, leaving the forward running
  statistics alone; ``running`` is the authors' TF behaviour: in training the forward running
  averages are updated by the reverse tensors too, and in eval mode they are used.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from harness.api import Method, UserError, check_choice, hookimpl

from ..reverse import (REVERSE_BN, TRUNK_ATTRIBUTE, ReverseNet, declared_trunk, parse_trunk,
                       transpose_linear_part, unpool)

__all__ = ["Racecar", "ReversePass", "TRUNK_ATTRIBUTE", "declared_trunk", "transpose_linear_part",
           "unpool", "parse_trunk", "LOSS_FORMS", "STARTS", "REVERSE_BN"]

#: racecar's reverse pass is the shared construction with its defaults (subtract the layer's own
#: bias, shared weights); the name stays for code written against it
ReversePass = ReverseNet
LOSS_FORMS = ("half_sq", "l2")
STARTS = ("constrained", "trunk")


# ------------------------------------------------------------------------------------------------
# The method
# ------------------------------------------------------------------------------------------------
class Racecar(Method):
    """RR^s: cross-entropy plus the racecar loss on L_1..L_s (``layers``, default all of the
    trunk) with weights lambda (``weight``: one value, or one per constrained layer).

    Stackable: the reverse pass reads the forward layers' weights at each call and draws
    nothing."""

    stackable = True

    def __init__(self, model, ctx, *, layers: int | None = None, weight: Any = 1e-2,
                 loss_form: str = "half_sq", start: str = "constrained",
                 input_activation: bool = True, reverse_bn: str = "batch", trunk=None):
        super().__init__(model, ctx)
        self.reverse = ReverseNet(model, trunk=trunk, bias="subtract_own",
                                  input_activation=input_activation, reverse_bn=reverse_bn)
        depth = self.reverse.depth
        if layers is None:
            layers = depth
        if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= depth:
            raise UserError(f"layers must be a whole number from 1 to {depth} (the trunk's "
                            f"depth: {', '.join(b.name for b in self.reverse.spec.blocks)}), got "
                            f"{layers!r}", key="layers")
        self.layers = layers
        weights = list(weight) if isinstance(weight, (list, tuple)) else [weight] * layers
        if len(weights) != layers or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights):
            raise UserError(f"weight must be a non-negative number or a list of {layers} of them, "
                            f"got {weight!r}", key="weight",
                            hint="YAML reads 1e-2 as a string: write 1.0e-2")
        self.weights = [float(w) for w in weights]
        self.loss_form = check_choice(loss_form, "loss_form", LOSS_FORMS,
                                      hint="half_sq (authors' code) or l2 (the paper's printed norm)")
        self.start = check_choice(start, "start", STARTS,
                                  hint="constrained (from layer s) or trunk (from the trunk's end)")

    def racecar_loss(self, inputs, regenerated) -> torch.Tensor:
        total = inputs[0].new_zeros(())
        for lam, a, b in zip(self.weights, inputs, regenerated):
            diff = a - b
            sq = (diff * diff).sum()
            total = total + lam * (0.5 * sq if self.loss_form == "half_sq" else torch.sqrt(sq))
        return total

    def loss(self, batch):
        logits, inputs, outputs, shapes = self.reverse.capture(batch.x)
        regenerated = self.reverse.regenerate(inputs, outputs, shapes, self.layers, self.start)
        return {"task": F.cross_entropy(logits, batch.y),
                "racecar": self.racecar_loss(inputs, regenerated)}


@hookimpl
def harness_register_methods(register):
    register("racecar", Racecar,
             "racecar training RR^s of paper 000: a weight-sharing reverse pass regenerates "
             "the input and the first s activations")

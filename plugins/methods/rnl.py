"""Reversible network learning with latent hard-sample generation (paper 002, Yu).

A plain classifier loses the information needed to run it backwards (the paper's Fig. 2); RNL
trains it to stay reversible, and uses the reverse to *generate* latent features of hard samples
(likelihoods pushed towards a wrong class) which the last layer must still classify correctly.
The paper's claim is that this improves the mapping, most of all on biased, long-tailed data.

Per batch (Algorithm 1), with o = softmax(f(x)):

- L_ff = CE(f(x), y)                                     (Eq. 2; term ``task``)
- x_bar = the reverse of the whole network from o (Eq. 3-5): each step
  gamma(o W_t^T + b_{t-1}) -- the *previous* layer's bias, unlike racecar -- convolutions as
  transposed convolutions with the same weights, pooling undone by nearest upsampling, a
  flatten by a reshape (``plugins.reverse`` with ``bias: add_previous``, shared weights);
- L_fb = sum over pixels of (x - x_bar)^2 per sample    (Eq. 6; term ``feedback``, times
  ``weight``);
- alpha_hat = gamma(tr(o) W_last^T + b_{last-1})       (Eq. 8), pushed through the last layer
  again: CE(last(alpha_hat), y)                        (term ``hard``, times ``hard_weight``).

Readings (METHODS.md's where it names one), each an option with its default:

- ``entries: 1`` -- how many non-target entries tr(o) raises, chosen uniformly at random per
  sample among the classes other than the label (the label's entry is never touched);
- ``closeness: 0.95`` -- the raised entries are set to ``closeness * max(o)`` ("a value which is
  similar to the maximum likelihood");
- ``renormalise: true`` -- tr(o) is divided by its sum so it is a distribution again;
- ``hard_grad: full`` -- gradients of the hard-sample CE flow through tr(o) into the forward
  pass, through the reverse step into W_last and b_{last-1}, and through the last layer (what
  autograd does with Algorithm 1 as written); ``latent`` treats tr(o) as a constant (no
  gradient into the forward pass that produced o); ``none`` detaches alpha_hat too, so the term
  trains only the last layer;
- ``reduction: sum`` -- L_fb is the per-sample sum over pixels (and channels) of Eq. 6, averaged
  over the batch as the CE is; ``mean`` is the per-pixel mean (a 1/(C H W) smaller term);
- ``weight: 1`` -- Eq. 7 adds L_fb unweighted; ``hard_weight: 1`` -- Algorithm 1 adds the two
  CEs; ``hard: false`` drops the hard-sample term (RN without generation: L_ff + L_fb);
- ``input_activation: false`` -- the last reverse step (to the input) is linear: the paper
  gives no activation for x_bar and the data need not lie in an activation's range; ``true``
  gives it the first layer's activation.

The reverse runs through every weight layer of the network (``trunk`` names them otherwise),
so the network must end in its last weight layer (the logits), as Table 1's does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.api import Method, UserError, check_choice, check_non_negative, hookimpl

from ..reverse import Capture, ReverseNet, weight_layers

__all__ = ["RNL", "transform_likelihood", "feedback_loss", "output_reverse", "reconstruct",
           "REDUCTIONS", "HARD_GRADS"]

REDUCTIONS = ("sum", "mean")
HARD_GRADS = ("full", "latent", "none")


def transform_likelihood(o: torch.Tensor, y: torch.Tensor, *, entries: int = 1,
                         closeness: float = 0.95, renormalise: bool = True,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """tr(o) of Algorithm 1: ``entries`` random non-target entries of each row of ``o`` set to
    ``closeness`` times the row's maximum, then (``renormalise``) rows divided by their sums.

    The choice is uniform among the other classes: random scores with the label's forced below
    every other, and the top ``entries`` of them taken."""
    scores = torch.rand(o.shape, generator=generator, device=o.device) if generator is None \
        else torch.rand(o.shape, generator=generator).to(o.device)
    scores.scatter_(1, y.view(-1, 1), -1.0)
    chosen = scores.topk(entries, dim=1).indices
    peak = o.max(dim=1, keepdim=True).values * closeness
    t = o.scatter(1, chosen, peak.expand(-1, entries))
    return t / t.sum(dim=1, keepdim=True) if renormalise else t


def feedback_loss(x: torch.Tensor, x_bar: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Eq. 6: squared error summed over each sample's pixels, averaged over the batch (``sum``),
    or the mean over every element (``mean``)."""
    sq = (x - x_bar).pow(2)
    return sq.reshape(len(x), -1).sum(dim=1).mean() if reduction == "sum" else sq.mean()


def output_reverse(model, *, trunk=None, input_activation: bool = False) -> ReverseNet:
    """Paper 002's reverse of a whole network: every weight layer, the previous layer's bias,
    shared weights, convolutions' W^T as conv2d of the flipped kernel (the fast form on CPU,
    see ``plugins.reverse``). Refused (UserError) when layers follow the last weight layer."""
    reverse = ReverseNet(model, trunk=trunk or weight_layers(model), bias="add_previous",
                         input_activation=input_activation, conv="flipped")
    last = reverse.spec.blocks[-1]
    if last.end != len(reverse.spec.children) - 1:
        tail = [n for n, _ in reverse.spec.children[last.end + 1:]]
        raise UserError(f"paper 002's reverse runs from the network's output, but layers {tail} "
                        f"follow the last reversed layer {last.name!r}", key="trunk",
                        hint="use a network that ends in its last weight layer (the logits), or "
                             "name every weight layer in `trunk:`")
    return reverse


def reconstruct(reverse: ReverseNet, cap: Capture, o: torch.Tensor) -> torch.Tensor:
    """x_bar: the reverse of the whole network from the likelihoods ``o`` (Eq. 3)."""
    levels = reverse.run(o, reverse.depth - 1, cap, keep=1)
    return reverse.to_image(levels[0], cap)


class RNL(Method):
    """L_ff + weight * L_fb (+ hard_weight * the hard-sample CE); see the module docstring."""

    def __init__(self, model, ctx, *, weight: float = 1.0, reduction: str = "sum",
                 hard: bool = True, hard_weight: float = 1.0, entries: int = 1,
                 closeness: float = 0.95, renormalise: bool = True, hard_grad: str = "full",
                 input_activation: bool = False, trunk=None):
        super().__init__(model, ctx)
        self.weight = check_non_negative(weight, "weight")
        self.hard_weight = check_non_negative(hard_weight, "hard_weight")
        self.reduction = check_choice(reduction, "reduction", REDUCTIONS,
                                      hint="sum (Eq. 6, per sample) or mean (per pixel)")
        self.hard_grad = check_choice(hard_grad, "hard_grad", HARD_GRADS,
                                      hint="full, latent (tr(o) constant) or none (alpha_hat "
                                           "constant)")
        for name, value in (("hard", hard), ("renormalise", renormalise)):
            if not isinstance(value, bool):
                raise UserError(f"{name} must be true or false, got {value!r}", key=name)
        self.hard, self.renormalise = hard, renormalise
        classes = ctx.num_classes
        if isinstance(entries, bool) or not isinstance(entries, int) or not 1 <= entries < classes:
            raise UserError(f"entries must be a whole number from 1 to {classes - 1} (the "
                            f"non-target classes), got {entries!r}", key="entries")
        if isinstance(closeness, bool) or not isinstance(closeness, (int, float)) \
                or not 0 < closeness <= 1:
            raise UserError(f"closeness must be a number in (0, 1], got {closeness!r}",
                            key="closeness", hint="0.95: 95% of the row's maximum")
        self.entries, self.closeness = entries, float(closeness)
        self.reverse = output_reverse(model, trunk=trunk, input_activation=input_activation)

    def hard_logits(self, cap: Capture, o: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The last layer applied to the latent generated from tr(o) (Eq. 8)."""
        top = self.reverse.depth - 1
        t = transform_likelihood(o if self.hard_grad == "full" else o.detach(), y,
                                 entries=self.entries, closeness=self.closeness,
                                 renormalise=self.renormalise)
        alpha_hat = self.reverse.step(top, t, cap.inputs[top].shape)
        if self.hard_grad == "none":
            alpha_hat = alpha_hat.detach()
        return self.reverse.forward_from(top, alpha_hat)

    def loss(self, batch):
        cap = self.reverse.capture(batch.x)
        o = F.softmax(cap.output, dim=1)
        x_bar = reconstruct(self.reverse, cap, o)
        terms = {"task": F.cross_entropy(cap.output, batch.y),
                 "feedback": self.weight * feedback_loss(batch.x, x_bar, self.reduction)}
        if self.hard:
            terms["hard"] = self.hard_weight * F.cross_entropy(
                self.hard_logits(cap, o, batch.y), batch.y)
        return terms


@hookimpl
def harness_register_methods(register):
    register("rnl", RNL,
             "reversible network learning of paper 002: the input regenerated from the softmax "
             "through the network's own weights, plus a CE on generated hard-sample latents")

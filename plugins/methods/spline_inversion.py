"""Semi-supervised learning by network inversion (paper 004, Balestriero et al.).

A network f read as a linear spline, f(x) = A[x] x + b[x], has the inverse A[x]^T f(x) with
A[x] = J = df/dx (eqs. 5-7). So with z = f(x) the pre-softmax output, the reconstruction of x
is J^T z, and J^T z is the gradient of 1/2 ||z||^2 with respect to x: one vector-Jacobian
product. Because J depends on the weights, that gradient is taken with ``create_graph=True``
and the training step backpropagates through it (a double backward). Terms:

- R(x) = ||J^T z - x||^2 (eq. 8), on every sample, labelled or not;
- E(x) = -sum_c p_c log p_c of p = softmax(z) (eq. 9), on unlabelled samples only;
- CE on labelled samples only;
- eq. 10: 1[labelled] alpha CE + (1 - alpha) (beta R + (1 - beta) E 1[unlabelled]).

The terms are returned apart, each with its weight applied (``ce``, ``recon``, ``entropy``),
so the engine logs them as ``loss_ce``, ``loss_recon`` and ``loss_entropy``. A term whose
weight is zero is not computed at all: the supervised-only baseline (alpha = 1) costs one
plain cross-entropy step, and beta = 0 skips the double backward.

Readings of what the paper leaves open (each an option; the defaults are ../shared/METHODS.md's):

- ``pixels: mean`` (default) or ``sum``: the reduction of ||J^T z - x||^2 over the elements of
  one sample. The paper says "we use the mean squared error" under eq. 8, so mean; ``sum`` is
  the literal squared norm (784 times larger on MNIST, which moves the useful beta).
- Batch composition (the paper gives none): a labelled and an unlabelled stream. The labelled
  stream gives ``labelled_batch`` samples per step (default: the run's ``batch_size``), always
  full (``exact``), so 50 labelled samples under a batch of 64 are oversampled, each seen
  about once per step; the unlabelled stream gives ``unlabelled_ratio`` times the run's batch
  size (default 1: equal halves) and defines the epoch (one pass over the unlabelled samples,
  as an epoch over the training set is in the paper, minus 50). ``unlabelled_ratio: 0`` drops
  the unlabelled stream: R as a supervised regulariser on labelled data only (Sec. 3.2).
- ``average: term`` (default): each term is the mean over the samples it applies to (CE over
  the labelled batch, E over the unlabelled one, R over both), so that alpha is the ratio of
  the supervised to the unsupervised loss, as the paper describes it, whatever the batch
  composition. ``average: batch``: eq. 10 read per sample and averaged over the whole mixed
  batch (each term summed over its samples and divided by the number of samples of the step).
- ``layers: {NAME: gamma, ...}``: the per-layer extension (eqs. 11-12). NAME is a module name
  of the network (``input`` for x itself, z^(0)); every chosen output z_l is an input of the
  same gradient call as x, giving (df/dz_l)^T f, and R_l = ||(df/dz_l)^T f - z_l||^2 (reduced
  like R, returned as ``recon_<NAME>``). The loss is then eq. 11 as written: alpha CE 1[lab] +
  beta E 1[unl] + sum_l gamma_l R_l (alpha and beta enter directly, not as eq. 10's convex
  weights).
- Batch norm in training mode normalises with the batch's statistics, so sample i's J^T z
  would depend on the other samples (appendix A.2: no model of the paper used it). A network
  with any batch-norm layer is refused, naming the layer, before a grid starts.
"""

from __future__ import annotations

import difflib
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from harness.api import Batch, Method, Stream, UserError, check_choice, hookimpl

__all__ = ["Inversion", "invert", "entropy", "squared_error", "check_no_batch_norm",
           "SplineInversion"]

INPUT = "input"


@dataclass
class Inversion:
    """One forward and the reconstruction gradient call: the logits ``z``, the input ``x``
    (a leaf that required grad), J^T z as ``recon``, and per chosen layer (z_l, (df/dz_l)^T z)."""

    z: torch.Tensor
    x: torch.Tensor
    recon: torch.Tensor
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


@contextmanager
def _captured(model: nn.Module, names):
    """The outputs of the named modules during one forward, by name."""
    modules = dict(model.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        handles.append(modules[name].register_forward_hook(
            lambda _m, _i, out, name=name: outputs.__setitem__(name, out)))
    try:
        yield outputs
    finally:
        for h in handles:
            h.remove()


def invert(model: nn.Module, x: torch.Tensor, layers=(), create_graph: bool = True) -> Inversion:
    """z = model(x) and J^T z = d(1/2 ||z||^2)/dx in one gradient call, with every chosen
    layer's output z_l an input of the same call. ``create_graph`` keeps the call
    differentiable in the weights (training); False for measuring only. Samples stay
    independent only without batch-mixing layers (see ``check_no_batch_norm``)."""
    inner = [n for n in layers if n != INPUT]
    # a view of the leaf, not the leaf itself: the same gradient, and autograd.grad with a leaf
    # input is refused under module backward hooks (torch's FlopCounterMode, the benchmark's)
    x = x.detach().requires_grad_(True).view_as(x)
    with torch.enable_grad(), _captured(model, inner) as outputs:
        z = model(x)
        missing = [n for n in inner if n not in outputs]
        if missing:
            raise RuntimeError(f"layers {missing} did not run in the forward pass")
        grads = torch.autograd.grad(0.5 * z.pow(2).sum(), [x, *(outputs[n] for n in inner)],
                                    create_graph=create_graph)
    per_layer = {n: (outputs[n], g) for n, g in zip(inner, grads[1:])}
    if INPUT in layers:
        per_layer[INPUT] = (x, grads[0])
    return Inversion(z=z, x=x, recon=grads[0], layers=per_layer)


def squared_error(estimate: torch.Tensor, target: torch.Tensor, pixels: str = "mean") -> torch.Tensor:
    """Per-sample ||estimate - target||^2, averaged (``mean``) or summed over the elements."""
    err = (estimate - target).flatten(1).pow(2)
    return err.mean(1) if pixels == "mean" else err.sum(1)


def entropy(z: torch.Tensor) -> torch.Tensor:
    """Per-sample Shannon entropy of softmax(z) (eq. 9), from log-softmax for stability."""
    logp = F.log_softmax(z, dim=1)
    return -(logp.exp() * logp).sum(1)


def check_no_batch_norm(model: nn.Module) -> None:
    """Refuse a network with batch norm, naming the first such layer (appendix A.2)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise UserError(
                f"layer {name!r} ({type(module).__name__}) is batch norm: in training mode it "
                "normalises with the batch's statistics, so one sample's reconstruction J^T z "
                "would depend on the other samples of the batch (paper 004, appendix A.2)",
                key="architecture", hint="use a network without batch norm, e.g. inv_small_cnn, "
                "inv_large_cnn, inv_resnet2_32 or inv_resnet3_16")


def _nearest(name: str, known) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.5)
    return ("did you mean " + " or ".join(map(repr, close)) + "?") if close else \
        "its layers: " + ", ".join(sorted(known))


def _fraction(value, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise UserError(f"{key} must be a number in [0, 1], got {value!r}", key=key)
    return float(value)


class SplineInversion(Method):
    """Eq. 10 (or eq. 11 with ``layers``) on a labelled and an unlabelled stream."""

    amp_safe = False  # J^T z - x in bfloat16 loses the reconstruction error it measures
    primary_stream = "unlabelled"

    def __init__(self, model, ctx, *, alpha: float = 0.7, beta: float = 0.2,
                 pixels: str = "mean", average: str = "term", layers: dict | None = None,
                 labelled_batch: int | None = None, unlabelled_ratio: float = 1.0):
        super().__init__(model, ctx)
        check_no_batch_norm(model)
        self.alpha, self.beta = _fraction(alpha, "alpha"), _fraction(beta, "beta")
        self.pixels = check_choice(pixels, "pixels", ("mean", "sum"))
        self.average = check_choice(average, "average", ("term", "batch"))
        self.layers = self._check_layers(model, layers)
        if labelled_batch is not None and (isinstance(labelled_batch, bool)
                                           or not isinstance(labelled_batch, int)
                                           or labelled_batch < 1):
            raise UserError(f"labelled_batch must be a positive whole number or null, got "
                            f"{labelled_batch!r}", key="labelled_batch")
        if isinstance(unlabelled_ratio, bool) or not isinstance(unlabelled_ratio, (int, float)) \
                or unlabelled_ratio < 0:
            raise UserError(f"unlabelled_ratio must be a number >= 0, got {unlabelled_ratio!r}",
                            key="unlabelled_ratio")
        self.labelled_batch, self.unlabelled_ratio = labelled_batch, float(unlabelled_ratio)
        if self.unlabelled_ratio == 0:
            self.primary_stream = "labelled"

    @staticmethod
    def _check_layers(model: nn.Module, layers) -> dict[str, float]:
        if layers is None:
            return {}
        if not isinstance(layers, dict) or not layers:
            raise UserError(f"layers must map layer names to gammas, got {layers!r}",
                            key="layers", hint="e.g. {input: 0.1, conv3: 0.5}")
        known = {n for n, _ in model.named_modules() if n} | {INPUT}
        out = {}
        for name, gamma in layers.items():
            if name not in known:
                raise UserError(f"the network has no layer {name!r}", key="layers",
                                hint=_nearest(str(name), known))
            if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or gamma < 0:
                raise UserError(f"gamma of layer {name!r} must be a number >= 0, got {gamma!r}",
                                key=f"layers.{name}")
            out[str(name)] = float(gamma)
        return out

    def streams(self):
        labelled = Stream(split="train", batch_size=self.labelled_batch, exact=True)
        if self.unlabelled_ratio == 0:
            return {"labelled": labelled}
        return {"labelled": labelled,
                "unlabelled": Stream(split="unlabelled", ratio=self.unlabelled_ratio)}

    def weights(self) -> dict[str, float]:
        """The weight of each term: eq. 10's convex combination, or eq. 11's with ``layers``."""
        if self.layers:
            w = {"ce": self.alpha, "entropy": self.beta}
            w.update({f"recon_{n}": g for n, g in self.layers.items()})
            return w
        return {"ce": self.alpha, "recon": (1 - self.alpha) * self.beta,
                "entropy": (1 - self.alpha) * (1 - self.beta)}

    def loss(self, batches):
        lab, unl = (batches, None) if isinstance(batches, Batch) else \
            (batches["labelled"], batches.get("unlabelled"))
        w = {k: v for k, v in self.weights().items() if v > 0}
        if unl is None:
            w.pop("entropy", None)
        needs_unl = any(k != "ce" for k in w)
        x = torch.cat([lab.x, unl.x]) if (needs_unl and unl is not None) else lab.x
        n_lab, n = len(lab.x), len(x)
        layers = tuple(self.layers) if self.layers else ()
        if any(k.startswith("recon") for k in w):
            inv = invert(self.model, x, layers=layers, create_graph=True)
            z = inv.z
        else:
            inv, z = None, self.model(x)
        # "term": each term the mean over its own samples; "batch": the sum over the step's n
        reduce = (lambda v: v.mean()) if self.average == "term" else (lambda v: v.sum() / n)
        per_sample = {"ce": lambda: F.cross_entropy(z[:n_lab], lab.y, reduction="none"),
                      "entropy": lambda: entropy(z[n_lab:]),
                      "recon": lambda: squared_error(inv.recon, inv.x.detach(), self.pixels)}
        for name, (z_l, g_l) in (inv.layers.items() if inv is not None else ()):
            target = z_l.detach() if name == INPUT else z_l
            per_sample[f"recon_{name}"] = lambda g=g_l, t=target: squared_error(g, t, self.pixels)
        return {k: weight * reduce(per_sample[k]()) for k, weight in w.items()}


@hookimpl
def harness_register_methods(register):
    register("spline_inversion", SplineInversion,
             "paper 004: cross-entropy + reconstruction ||J^T z - x||^2 (double backward) + "
             "entropy on unlabelled samples (eq. 10), per-layer option (eqs. 11-12)")

"""Generalized Fisher information (paper 003, Sec. 3.2): relative Fisher, GFI masks, DWA loss.

Two tasks that share parameters (L_r^s and L_r^t share the decoder T1; L_r^t and L_c^t share the
target network T2) overwrite each other's weights. EWC keeps every weight with a large Fisher
value F_i in place, which can leave a new task nothing to learn with; GFI decides per parameter
whether the two tasks should *share* it:

- F_i: the diagonal Fisher (mean squared per-sample gradient) of the previous task's loss at the
  anchor weights theta*, normalised by its maximum (``harness.api.fisher_diagonal``);
- RF_i = I(F_1,i ; F_2,i), the mutual information of the two tasks' Fisher values for parameter
  i, normalised into [0, 1] (Eq. 9). A Fisher value per parameter is one number, so the two
  random variables are sampled as K per-batch Fisher values of each task
  (``harness.api.fisher_samples``; METHODS.md's reading). Estimators, an option:
  ``quantile`` (default): each task's K values binned into ``bins`` equal-count bins (ranks),
  I from the joint histogram, normalised by sqrt(H_1 H_2) (the usual NMI; 0 where either
  variable is constant, e.g. a dead unit's all-zero gradients);
  ``gaussian``: the Gaussian proxy I = -1/2 log(1 - rho^2) of the Pearson correlation rho of the
  K pairs, normalised as Linfoot's informational coefficient sqrt(1 - exp(-2 I)) = |rho|;
- GFI_i (Eq. 10): with u = 0.5 and p = 0.9, F_i is kept with probability p where RF_i >= u (the
  tasks share theta_i: hold it) and with probability 1 - p where RF_i < u (free it for the new
  task); otherwise 0. The draws come from a generator seeded by the caller, so a run and its
  resumed copy draw the same masks;
- DWA = sum_i lambda / 2 GFI_i (theta_i - theta*_i)^2 (Eq. 11). The paper gives no lambda; with
  F normalised to a maximum of 1 its scale is lost, so ``DWA.penalty(weight=None)`` takes lambda
  = that maximum (the raw Fisher's largest entry): with every F_i kept the DWA is then EWC's
  quadratic estimate of how much the previous task's mean loss grows, whatever the loss's units.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["RF_ESTIMATORS", "relative_fisher", "gfi_mask", "generalized_fisher", "DWA"]

RF_ESTIMATORS = ("quantile", "gaussian")


def _ranks_to_bins(values: torch.Tensor, bins: int) -> torch.Tensor:
    """Equal-count bin index (0..bins-1) of each of the K values per column (dim 0 is K);
    ties share the lowest rank of their group, so a constant column falls into one bin."""
    k = values.shape[0]
    order = values.argsort(dim=0, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(0, order, torch.arange(k, device=values.device).unsqueeze(1).expand_as(order))
    sorted_vals = values.gather(0, order)
    same = torch.zeros_like(sorted_vals, dtype=torch.bool)
    same[1:] = sorted_vals[1:] == sorted_vals[:-1]
    # propagate each tie group's first rank down the group
    first = torch.arange(k, device=values.device).unsqueeze(1).expand_as(order).clone()
    first[same] = 0
    first = first.cummax(dim=0).values
    tied = torch.empty_like(ranks)
    tied.scatter_(0, order, first)
    return (tied * bins) // k


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1)


def _quantile_nmi(a: torch.Tensor, b: torch.Tensor, bins: int) -> torch.Tensor:
    k = a.shape[0]
    ia, ib = _ranks_to_bins(a, bins), _ranks_to_bins(b, bins)
    joint = torch.zeros(a.shape[1], bins * bins, dtype=torch.float64, device=a.device)
    joint.scatter_add_(1, (ia * bins + ib).T, torch.ones_like(ia.T, dtype=torch.float64))
    joint = (joint / k).view(-1, bins, bins)
    pa, pb = joint.sum(2), joint.sum(1)
    ha, hb = _entropy(pa), _entropy(pb)
    mi = ha + hb - _entropy(joint.flatten(1))
    norm = (ha * hb).sqrt()
    return torch.where(norm > 1e-12, (mi / norm.clamp_min(1e-12)).clamp(0, 1),
                       torch.zeros_like(mi)).float()


def _gaussian_nmi(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.double() - a.double().mean(0), b.double() - b.double().mean(0)
    cov = (a * b).mean(0)
    sd = (a.pow(2).mean(0) * b.pow(2).mean(0)).sqrt()
    rho = torch.where(sd > 1e-30, cov / sd.clamp_min(1e-30), torch.zeros_like(cov)).clamp(-1, 1)
    return rho.abs().float()  # sqrt(1 - exp(-2 I)) with I = -1/2 log(1 - rho^2)


def relative_fisher(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor], *,
                    estimator: str = "quantile", bins: int = 4) -> dict[str, torch.Tensor]:
    """RF per parameter from two tasks' per-batch Fisher samples ({name: K x shape} each, the
    same K): the normalised mutual information of the K pairs, in [0, 1]."""
    if estimator not in RF_ESTIMATORS:
        raise ValueError(f"estimator is one of {RF_ESTIMATORS}")
    out = {}
    for name, a in first.items():
        b = second[name]
        shape = a.shape[1:]
        a2, b2 = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        rf = _quantile_nmi(a2, b2, bins) if estimator == "quantile" else _gaussian_nmi(a2, b2)
        out[name] = rf.reshape(shape)
    return out


def gfi_mask(rf: torch.Tensor, *, u: float = 0.5, p: float = 0.9,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Eq. 10's keep mask (1.0 = GFI_i = F_i): probability ``p`` where RF >= u, 1 - p below."""
    keep = torch.where(rf >= u, torch.full_like(rf, p), torch.full_like(rf, 1 - p))
    draws = torch.rand(rf.shape, generator=generator, dtype=torch.float32)
    return (draws.to(rf.device) < keep).float()


def generalized_fisher(fisher: dict[str, torch.Tensor], rf: dict[str, torch.Tensor] | None, *,
                       u: float = 0.5, p: float = 0.9, seed: int = 0) -> dict[str, torch.Tensor]:
    """GFI per parameter: ``fisher`` masked by Eq. 10 (``rf`` None: plain Fisher, variant fi).
    Parameters are drawn in name order from one generator seeded with ``seed``."""
    if rf is None:
        return dict(fisher)
    generator = torch.Generator().manual_seed(int(seed) % (2**63))
    return {name: f * gfi_mask(rf[name], u=u, p=p, generator=generator)
            for name, f in sorted(fisher.items())}


class DWA(nn.Module):
    """The dynamic weight allocation loss of one stage: GFI and anchor weights as buffers (so
    they are checkpointed and ``--resume`` restores them), zero until ``set`` activates it."""

    def __init__(self, params: dict[str, nn.Parameter]):
        super().__init__()
        self.names = list(params)
        for i, p in enumerate(params.values()):
            self.register_buffer(f"gfi_{i}", torch.zeros_like(p, requires_grad=False))
            self.register_buffer(f"anchor_{i}", p.detach().clone())
        self.register_buffer("active", torch.zeros((), dtype=torch.bool))
        #: the largest raw Fisher entry the GFI was normalised by (lambda's ``auto`` value)
        self.register_buffer("scale", torch.zeros((), dtype=torch.float32))

    def anchor_at(self, params: dict[str, nn.Parameter]) -> None:
        """theta* = the current ``params`` (by name), without changing the GFI."""
        with torch.no_grad():
            for i, name in enumerate(self.names):
                getattr(self, f"anchor_{i}").copy_(params[name].detach())

    def anchors(self) -> dict[str, torch.Tensor]:
        """theta* by parameter name."""
        return {name: getattr(self, f"anchor_{i}") for i, name in enumerate(self.names)}

    def set(self, gfi: dict[str, torch.Tensor], params: dict[str, nn.Parameter],
            scale: float = 1.0) -> None:
        """Anchor at the current ``params`` with weights ``gfi`` (both by name), and activate;
        ``scale`` is the raw Fisher's maximum, kept for ``penalty(weight=None)``."""
        self.anchor_at(params)
        with torch.no_grad():
            for i, name in enumerate(self.names):
                getattr(self, f"gfi_{i}").copy_(gfi[name])
            self.active.fill_(True)
            self.scale.fill_(float(scale))

    def penalty(self, params: dict[str, nn.Parameter], weight: float | None) -> torch.Tensor:
        """sum_i weight / 2 GFI_i (theta_i - theta*_i)^2 over the parameters it was built on;
        ``weight`` None: lambda = ``scale``, so that with GFI = F (all kept) the DWA is EWC's
        quadratic (Laplace) estimate of how much the previous task's mean loss grows."""
        if weight is None:
            weight = self.scale
        total = None
        for i, name in enumerate(self.names):
            term = (getattr(self, f"gfi_{i}") * (params[name] - getattr(self, f"anchor_{i}"))
                    .pow(2)).sum()
            total = term if total is None else total + term
        return total * (weight / 2)

    def kept_fraction(self) -> float:
        """The share of parameters whose GFI is non-zero (logged: how much the mask holds)."""
        kept = sum(int((getattr(self, f"gfi_{i}") > 0).sum()) for i in range(len(self.names)))
        size = sum(getattr(self, f"gfi_{i}").numel() for i in range(len(self.names)))
        return kept / max(1, size)

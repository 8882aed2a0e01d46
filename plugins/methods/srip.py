"""SRIP orthogonality regularisation (Bansal et al. 2018), the ``Ort`` baseline of paper 000.

Paper 000 compares racecar training with a network whose weights are pushed towards orthogonal
(near-isometric) maps, which also claims better-conditioned, more general features. For every
weight with ndim >= 2 the matrix W is reshaped to [out, in * k * k]; the smaller Gram matrix
(W W^T when out <= in, else W^T W) minus the identity, M, is penalised:

- ``variant: srip`` (default): the spectral norm of M by power iteration from a random vector,
  as the reference code does: v = M b / ||M b||, penalty ||M v||^2 (sigma squared after one step,
  with the gradient flowing through v too). ``power_iterations`` more steps bring it closer to
  sigma_max(M)^2; ``squared: false`` gives sigma itself, the form paper 000 prints (eq. 2).
- ``variant: so``: soft orthogonality ||M||_F^2, the cheaper variant of the same paper.

The starting vectors come from the stage run's generator ``power_iteration`` (uniform in [0, 1) as in
the reference code), so runs repeat exactly. They are drawn in ``draw()`` and the weights are
read through the modules at each call, never kept: so SRIP is stackable, and a replica trained
stacked draws and penalises what it would alone. ``weight`` is beta; ``schedule: reference`` applies
the reference code's decay (beta x1 up to epoch 20, x1e-3 to 50, x1e-4 to 70, x1e-6 to 120, then
0; epochs counted from 1) through ``Method.epoch_started``; paper 000 gives no beta and its
racecar code used 0.1, our default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.api import Method, UserError, check_choice, check_non_negative, hookimpl

__all__ = ["Srip", "gram_residual", "srip_penalty", "so_penalty", "reference_decay"]

VARIANTS = ("srip", "so")
SCHEDULES = ("constant", "reference")


def gram_residual(weight: torch.Tensor, eye: torch.Tensor | None = None) -> torch.Tensor:
    """M = (the smaller Gram matrix of W reshaped to [out, rest]) - I."""
    w = weight.reshape(weight.shape[0], -1)
    rows, cols = w.shape
    gram = w.t() @ w if rows > cols else w @ w.t()
    if eye is None:
        eye = torch.eye(gram.shape[0], dtype=w.dtype, device=w.device)
    return gram - eye


def srip_penalty(weight: torch.Tensor, start: torch.Tensor, iterations: int = 1,
                 squared: bool = True, eye: torch.Tensor | None = None) -> torch.Tensor:
    """Power-iteration estimate of sigma_max(M) (squared by default) from ``start`` (a vector of
    M's size)."""
    m = gram_residual(weight, eye)
    v = start.reshape(-1).to(dtype=m.dtype, device=m.device)
    for _ in range(iterations):
        v = torch.mv(m, v)
        v = v / v.norm().clamp_min(1e-12)
    sq = torch.mv(m, v).pow(2).sum()
    return sq if squared else torch.sqrt(sq + 1e-24)


def so_penalty(weight: torch.Tensor) -> torch.Tensor:
    """Soft orthogonality: ||M||_F^2."""
    return gram_residual(weight).pow(2).sum()


def reference_decay(epoch: int) -> float:
    """The reference code's multiplier of beta during 1-based ``epoch``."""
    if epoch > 120:
        return 0.0
    if epoch > 70:
        return 1e-6
    if epoch > 50:
        return 1e-4
    if epoch > 20:
        return 1e-3
    return 1.0


class Srip(Method):
    """Cross-entropy plus beta times the orthogonality penalty of every weight with ndim >= 2."""

    stackable = True

    def __init__(self, model, ctx, *, weight: float = 0.1, variant: str = "srip",
                 schedule: str = "constant", power_iterations: int = 1, squared: bool = True):
        super().__init__(model, ctx)
        check_non_negative(weight, "weight", hint="YAML reads 1e-1 as a string: write 1.0e-1")
        check_choice(variant, "variant", VARIANTS,
                     hint="srip (spectral norm) or so (Frobenius soft orthogonality)")
        check_choice(schedule, "schedule", SCHEDULES,
                     hint="constant, or reference (the SRIP code's decay of beta)")
        if isinstance(power_iterations, bool) or not isinstance(power_iterations, int) \
                or power_iterations < 1:
            raise UserError(f"power_iterations must be a positive whole number, got "
                            f"{power_iterations!r}", key="power_iterations")
        self.beta = float(weight)
        self.variant, self.schedule = variant, schedule
        self.iterations, self.squared = power_iterations, bool(squared)
        self.factor = 1.0
        self.generator = ctx.generator("power_iteration")  # checkpointed by the engine
        names = [n for n, p in model.named_parameters() if p.ndim >= 2]
        if not names:
            raise UserError("the model has no weight with two or more dimensions to orthogonalise",
                            key="method")
        # (module, attribute) of each weight, read at every call: a tensor kept here would stay
        # this module's own when functional_call swaps in a stacked replica's parameters
        owners = [n.rpartition(".") for n in names]
        self._owners = [(n, model.get_submodule(mod), leaf) for n, (mod, _, leaf) in zip(names, owners)]
        self._sizes = [min(p.shape[0], p[0].numel()) for _, p in self.weights]
        self._eyes: dict[tuple, torch.Tensor] = {}

    @property
    def weights(self) -> list[tuple[str, torch.Tensor]]:
        """(name, weight) of every penalised weight, as the network holds it now."""
        return [(n, getattr(mod, leaf)) for n, mod, leaf in self._owners]

    def get_extra_state(self):
        """The decay factor, so that a resumed run's first step uses this epoch's (the
        generator's state is the engine's to save)."""
        return {"factor": self.factor}

    def set_extra_state(self, state) -> None:
        self.factor = float(state["factor"])

    def epoch_started(self, epoch: int) -> dict[str, float]:
        self.factor = reference_decay(epoch + 1) if self.schedule == "reference" else 1.0
        return {"srip_beta": self.beta * self.factor}

    def _eye(self, size: int, like: torch.Tensor) -> torch.Tensor:
        key = (size, like.dtype, like.device)
        if key not in self._eyes:
            self._eyes[key] = torch.eye(size, dtype=like.dtype, device=like.device)
        return self._eyes[key]

    def draw(self) -> dict[str, torch.Tensor]:
        """The power iteration's start vectors of one step (none when nothing is penalised):
        one draw for all weights, split per weight in ``penalty``, the same stream as drawing
        them one by one at a fraction of the calls."""
        if self.variant != "srip" or self.beta * self.factor <= 0:
            return {}
        return {"starts": torch.rand(sum(self._sizes), generator=self.generator)}

    def penalty(self) -> torch.Tensor:
        if self.variant == "so":
            return sum(so_penalty(w) for _, w in self.weights)
        starts = self.draws()["starts"].split(self._sizes)
        total = None
        for (_, w), size, start in zip(self.weights, self._sizes, starts):
            term = srip_penalty(w, start, self.iterations, self.squared, self._eye(size, w))
            total = term if total is None else total + term
        return total

    def loss(self, batch):
        terms = {"task": F.cross_entropy(self.model(batch.x), batch.y)}
        coefficient = self.beta * self.factor
        if coefficient > 0:
            # float32 even under the engine's bfloat16 autocast: the penalty is a small
            # difference (W W^T - I) that bfloat16's 8 mantissa bits would round away
            with torch.autocast(batch.x.device.type, enabled=False):
                terms["ortho"] = coefficient * self.penalty()
        else:  # keep the term (and its logged curve) without paying for the power iteration
            terms["ortho"] = terms["task"].new_zeros(())
        return terms


@hookimpl
def harness_register_methods(register):
    register("srip", Srip, "SRIP / soft orthogonality regularisation (Bansal et al. 2018): the "
                           "Ort baseline of paper 000")

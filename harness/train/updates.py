"""Named optimizers with their schedules, and ``update()``: the one place an optimizer steps.

A method asks for an update by name with its loss terms; this module sums them, backpropagates
(outside autocast, into the optimizer's own parameters only when a method has several), clips
the gradient norm when the run asks for it, steps the optimizer and keeps the terms for the
epoch's log. Because nothing else may step an optimizer (a pre-step hook refuses it), the NaN
guard, autocast, metering and bit-exact resume hold for every method, however many updates it
makes. DomainBed lets ``update()`` step its own optimizers and loses their state on resume;
here every optimizer and scheduler is the engine's, so it is checkpointed.

Schedules are torch.optim.lr_scheduler's, one scheduler per optimizer, stepped once per epoch.

Stacked replicas (``harness.train.stacking``) go through the same ``update()``: there each term
is a vector with one value per replica, the backward is of their sum (the gradient of a sum
reaches each replica's parameters from its own loss alone), clipping is per replica, and the
epoch's means are per replica.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from ..api import DEFAULT_OPTIMIZER, Method, OptimizerSpec
from ..errors import UserError
from .observe import OBSERVERS, notify
from .terms import TERMS_HINT, LossTermsError, terms_problem

__all__ = ["make_optimizer", "make_scheduler", "Updates", "DirectStepRefused", "clip_per_replica"]


class DirectStepRefused(RuntimeError):
    """A method stepped an engine optimizer itself instead of asking for ``update()``."""


def make_optimizer(params, run: dict[str, Any]) -> torch.optim.Optimizer:
    """The run's optimizer, with PyTorch's fused kernel where it has one.

    Why fused: on the MI network the default (per-tensor) Adam issued about ten small kernels per
    parameter tensor per step and was a third of the step's time; the fused kernel updates all
    tensors in one call and made the whole step 20-25% faster on CPU (reports/benchmarks.md).
    Its results differ from the unfused ones in the last bits only, and are deterministic.
    """
    name, lr, wd = run["optimizer"], float(run["lr"]), float(run["weight_decay"])
    if name == "sgd":
        cls, kwargs = torch.optim.SGD, {"momentum": float(run["momentum"])}
    elif name == "adam":
        cls, kwargs = torch.optim.Adam, {}
    elif name == "adamw":
        cls, kwargs = torch.optim.AdamW, {}
    else:
        raise UserError(f"unknown optimizer {name!r}", key="optimizer")
    params = list(params)
    try:
        return cls(params, lr=lr, weight_decay=wd, fused=True, **kwargs)
    except (RuntimeError, ValueError, TypeError):  # a dtype or device without a fused kernel
        return cls(params, lr=lr, weight_decay=wd, **kwargs)


def make_scheduler(optimizer, schedule: dict[str, Any], epochs: int):
    """The run's schedule for one optimizer, or None for a constant learning rate.

    ``cosine`` anneals to ``min_lr`` (a learning rate, default 0) over the run's epochs.
    """
    name = schedule["name"]
    gamma = float(schedule.get("gamma", 0.1))
    sched = torch.optim.lr_scheduler
    if name == "constant":
        return None
    if name == "step":
        return sched.StepLR(optimizer, step_size=int(schedule["step_size"]), gamma=gamma)
    if name == "multistep":
        return sched.MultiStepLR(optimizer, milestones=list(schedule["milestones"]), gamma=gamma)
    if name == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=max(1, epochs),
                                       eta_min=float(schedule.get("min_lr", 0.0)))
    raise UserError(f"unknown schedule {name!r}", key="schedule")


def _specs(method: Method, run: dict[str, Any]) -> dict[str, tuple[list, dict[str, Any]]]:
    """Name -> (parameters or param groups, run settings) of each optimizer a method declares."""
    out = {}
    for name, spec in method.optimizers().items():
        settings = dict(run)
        if isinstance(spec, OptimizerSpec):
            for key in ("optimizer", "lr", "momentum", "weight_decay"):
                if getattr(spec, key) is not None:
                    settings[key] = getattr(spec, key)
            spec = spec.params
        params = list(spec)
        if not params:
            raise UserError(f"optimizer {name!r} of the method has no parameters", key="method",
                            hint="leave it out of optimizers(), or give it parameters to train")
        out[name] = (params, settings)
    return out


def _params_of(groups: list) -> list[torch.Tensor]:
    if groups and isinstance(groups[0], dict):
        return [p for g in groups for p in g["params"]]
    return groups


class Updates:
    """The optimizers of a stage run and the ``update`` a method's step calls."""

    def __init__(self, method: Method, run: dict[str, Any], epochs: int, device: torch.device,
                 amp: bool, replicas: int = 0):
        specs = _specs(method, run)
        self.optimizers = {n: make_optimizer(p, s) for n, (p, s) in specs.items()}
        self.schedulers = {n: make_scheduler(o, run["schedule"], epochs)
                           for n, o in self.optimizers.items()}
        self.params = {n: _params_of(p) for n, (p, _) in specs.items()}
        # one optimizer and the default step: the plain path, logged as it always was
        self.plain = list(specs) == [DEFAULT_OPTIMIZER] and type(method).step is Method.step
        self.prefix = {n: "" if self.plain else f"{n}_" for n in specs}
        # the default optimizer holds every trainable parameter: backward into all of them
        # (the cheapest call); declared optimizers: only into the updated one's parameters, so
        # that a part kept out of every optimizer never even gets a gradient
        self.backward_all = type(method).optimizers is Method.optimizers
        self.clip = float(run["grad_clip"]) if run.get("grad_clip") else 0.0
        self.amp = amp
        #: 0 alone; R when every parameter is R replicas' stacked and every term an R-vector
        self.replicas = replicas
        self.no_autocast = partial_autocast_off(device.type)
        #: per term: the values of this epoch's updates, and the primary batch size of each
        self.log: dict[str, list[torch.Tensor]] = {}
        self.sizes: dict[str, list[int]] = {}
        self.norms: dict[str, list[torch.Tensor]] = {}
        #: the primary stream's batch size of the current step (the loop sets it)
        self.batch_size = 0
        self._stepping = False
        guard = _step_guard(weakref.ref(self))
        for optimizer in self.optimizers.values():
            optimizer.register_step_pre_hook(guard)
        self._last_total: torch.Tensor | None = None  # the last summed loss (see __call__)
        self._checked: set[str] = set()  # updates whose terms were checked (their first call)
        self._method = type(method).__name__
        object.__setattr__(method, "_updater", self)  # what method.update() calls
        if OBSERVERS:
            notify("updates_built", self, method)

    def __call__(self, name: str, terms: dict[str, torch.Tensor]) -> None:
        optimizer = self.optimizers.get(name)
        if optimizer is None:
            raise UserError(f"update({name!r}): the method has no optimizer {name!r}",
                            key="method", hint=f"its optimizers: {', '.join(self.optimizers)}")
        if OBSERVERS:  # before the engine's own check: the kit reports what it saw
            notify("update", self, name, terms)
        if name not in self._checked:  # once per update: a step of the MI network is ~1 ms
            self._check(name, terms)
        values = iter(terms.values())
        total = next(values)  # not sum(): its leading 0 + t is one more autograd op per step
        for value in values:
            total = total + value
        if self.replicas:  # one backward for all: each replica's gradient is its own loss's
            total = total.sum()
        optimizer.zero_grad(set_to_none=True)
        if self.amp:
            with self.no_autocast():
                self._backward(name, total)
        else:  # no amp: not even an empty context (a step of the MI network is ~1 ms)
            self._backward(name, total)
        prefix, log, sizes = self.prefix[name], self.log, self.sizes
        if self.clip:
            norm = (clip_per_replica(self.params[name], self.clip) if self.replicas
                    else torch.nn.utils.clip_grad_norm_(self.params[name], self.clip))
            self.norms.setdefault(f"grad_norm{'_' + name if prefix else ''}", []).append(norm)
        self._stepping = True
        try:
            optimizer.step()
        finally:
            self._stepping = False
        size = self.batch_size
        for k, v in terms.items():
            key = prefix + k
            if key in log:
                log[key].append(v.detach())
                sizes[key].append(size)
            else:
                log[key], sizes[key] = [v.detach()], [size]
        # kept until this update's next call, as a hand-written loop keeps its `loss` through
        # the next forward pass: autograd caches each parameter's gradient accumulator only
        # while some graph refers to it, so dropping the graph here made every step build them
        # again (on the MI network 2% more instructions a step, counted with callgrind). Only
        # after a backward into everything: one restricted to an optimizer's parameters leaves
        # the other branches' saved activations in the graph, and keeping those would hold a
        # second step's activations in memory
        if self.backward_all:
            self._last_total = total

    def _check(self, name: str, terms) -> None:
        where = (f"{self._method}.loss()" if self.plain
                 else f"the terms {self._method}.step() gave update({name!r})")
        problem = terms_problem(terms, where)
        if problem:
            raise LossTermsError(f"{problem} ({TERMS_HINT})")
        self._checked.add(name)

    def _backward(self, name: str, total: torch.Tensor) -> None:
        if self.backward_all:
            total.backward()
        else:
            torch.autograd.backward(total, inputs=self.params[name])

    def epoch_finished(self) -> None:
        for scheduler in self.schedulers.values():
            if scheduler is not None:
                scheduler.step()

    def lrs(self) -> dict[str, float]:
        """``lr`` (the first optimizer's) and, with several optimizers, ``lr_<name>`` each."""
        first = next(iter(self.optimizers.values()))
        out = {"lr": float(first.param_groups[0]["lr"])}
        if len(self.optimizers) > 1:
            out.update({f"lr_{n}": float(o.param_groups[0]["lr"])
                        for n, o in self.optimizers.items()})
        return out

    def epoch_means(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(term -> its mean over the epoch's samples, grad norm -> its mean over the updates),
        and a fresh log for the next epoch. One host-device transfer per term per epoch.
        Stacked: a list of the replicas' means each, every one computed as its replica's alone
        would be (the same 1-D reduction over its own values), so they agree bitwise."""
        terms = {}
        for key, values in self.log.items():
            sizes = self.sizes[key]
            weights = torch.tensor(sizes, dtype=torch.float64) / sum(sizes)
            stacked = torch.stack(values).double().cpu()
            if self.replicas:
                terms[key] = [float((col * weights).sum()) for col in stacked.t().contiguous()]
            else:
                terms[key] = float((stacked * weights).sum())
        norms = {}
        for key, values in self.norms.items():
            stacked = torch.stack(values).double().cpu()
            norms[key] = ([float(col.mean()) for col in stacked.t().contiguous()] if self.replicas
                          else float(stacked.mean()))
        self.log, self.sizes, self.norms = {}, {}, {}
        return terms, norms

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
                "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()
                               if s is not None}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for n, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][n])
        for n, s in self.schedulers.items():
            if s is not None:
                s.load_state_dict(state["schedulers"][n])


def clip_per_replica(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` for each replica of stacked parameters (dimension 0): each replica's
    gradient norm over all its tensors, each clipped by its own coefficient, as it would be
    trained alone (a replica whose gradient is not finite changes no other). The replicas'
    norms, an R-vector."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(0)
    norms = torch.stack([torch.linalg.vector_norm(g.reshape(g.shape[0], -1), 2, dim=1)
                         for g in grads])
    total = torch.linalg.vector_norm(norms, 2, dim=0)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.ndim - 1))))
    return total


def _step_guard(updates_ref):
    """The optimizers' pre-step hook, refusing a step that ``update()`` did not make. It holds
    the ``Updates`` weakly: a bound method would close a cycle (optimizer -> hook -> Updates ->
    optimizer), and every stage run's network, gradients and optimizer state (GPU memory too)
    would then wait for Python's cycle collector instead of being freed when the run ends."""

    def guard(optimizer, args, kwargs):
        updates = updates_ref()
        if updates is None or not updates._stepping:
            raise DirectStepRefused("a method must not step an optimizer itself: return loss "
                                    "terms, or call self.update(name, terms) in step()")
    return guard


def partial_autocast_off(device_type: str):
    """Backward runs outside autocast, as PyTorch recommends; a context factory for it."""
    return lambda: torch.autocast(device_type, enabled=False)

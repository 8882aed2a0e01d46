"""Replicas trained as one batched network: the stacked step, on the engine's own loop pieces.

Stage runs that differ only in seed, initial weights and data perform the same operations on
different numbers; on a network as small as the MI task's a step is mostly dispatch, which R
replicas then pay once (issue 24: 2.2x at R = 5, 7.9x at R = 65 in plain PyTorch). Each
replica's parameters become one slice of a stacked tensor (``torch.stack`` along a new first
dimension), the method's ``loss`` is evaluated for all at once with ``torch.vmap`` on the
first replica's modules with each replica's parameters swapped in (as
``torch.func.functional_call`` does), and the engine's
``Updates`` does what it does for any run, on the stacked parameters: one backward of the sum of
the replicas' losses (so each replica's gradient is exactly its own loss's), a per-replica
gradient clip, one optimizer step (Adam, AdamW and SGD are elementwise, so each replica gets its
own update), the per-replica epoch means. ``EpochLoop.train_epoch`` runs the epoch unchanged.

What stays per replica, the same as trained alone: the data order (each replica's own stream,
seeded by its own seed), the method's random numbers (each replica's own ``draw()``, called
once per step outside the batched call, so a replica draws from its own generators in the
order it would alone; ``vmap(randomness="error")`` refuses any other random operation inside
the step, where a replica's numbers could not be its own), the clip norm, the loss terms and
their means. What is shared: the schedule (every replica has the same run settings), and the
process's global random generators, which a stackable method does not draw from in its step.
On CPU the result is then the replica's alone, weight for weight, to the last bit where the
arithmetic is the same (tests/test_stacking.py; clipping reduces a replica's norm in another
order, equal to about 1e-7).

Everything else a replica has (its evaluators, checkpoint, resume state, history) stays in its
own ``EpochLoop`` as built for it alone; ``StackedLoop.unstack`` copies the stacked state back
into those whenever they are read (an evaluator due, a resume save, the end).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..api import Batch, Method
from .loop import EpochLoop
from .updates import Updates

__all__ = ["StackedMethod", "StackedStreams", "StackedLoop", "refusal", "stack_loops",
           "stack_optimizer_states", "replica_optimizer_state"]


def refusal(loops: list[EpochLoop]) -> str | None:
    """Why these stage runs cannot train as one stacked network (None: they can)."""
    first = loops[0]
    cls = type(first.method)
    if not getattr(cls, "stackable", False):
        return f"method {cls.__name__} does not declare itself stackable"
    shapes = [(n, p.shape) for n, p in first.method.named_parameters()]
    for loop in loops:
        method = loop.method
        if type(method) is not cls:
            return "the stage runs train different methods"
        if not loop.plain or type(method).step_finished is not Method.step_finished:
            return "its step is not the plain one (loss terms, one optimizer, one stream)"
        if next(iter(method.buffers()), None) is not None:
            return "it has buffers (batch-norm statistics), which a stacked step cannot keep apart"
        if loop.streams.primary.split.y is None:
            return "it trains on an unlabelled split"
        if [(n, p.shape) for n, p in method.named_parameters()] != shapes:
            return "the networks' parameters differ in names or shapes"
        if (loop.streams.primary.n, loop.streams.primary.batch_size, loop.epochs, loop.device,
                loop.updates.amp) != (first.streams.primary.n, first.streams.primary.batch_size,
                                      first.epochs, first.device, first.updates.amp):
            return "the runs differ in training samples, batch size, epochs, device or amp"
    return None


def _slots(method: Method) -> tuple[list[tuple[nn.Module, str, int]], list[str]]:
    """Where each parameter of ``method`` lives, (module, attribute, i) for every name it has
    (a weight two modules share appears under both, with one i), and the distinct parameters'
    names in ``named_parameters()`` order (i indexes these)."""
    index: dict[int, int] = {}
    names = []
    for name, p in method.named_parameters():
        index[id(p)] = len(names)
        names.append(name)
    slots = []
    for name, p in method.named_parameters(remove_duplicate=False):
        owner, _, leaf = name.rpartition(".")
        slots.append((method.get_submodule(owner), leaf, index[id(p)]))
    return slots, names


class StackedMethod(Method):
    """R replicas of one stackable method as one: their parameters stacked (``stacked[i][r]`` is
    replica r's i-th parameter), ``loss`` giving each term as an R-vector. The first replica's
    modules compute it for all (with each replica's parameters swapped in);
    the replicas keep their own modules, for evaluation, draws and checkpoints."""

    def __init__(self, replicas: list[Method], stream: str = "train"):
        nn.Module.__init__(self)  # not Method.__init__: the replicas' networks are not ours
        base = replicas[0]
        slots, names = _slots(base)
        for name, value in (("ctx", base.ctx), ("_updater", None), ("model", base.model),
                            ("replicas", list(replicas)), ("_slots", slots), ("stream", stream),
                            ("_base_modules", tuple(base.modules()))):
            object.__setattr__(self, name, value)  # plain attributes: not trained, not saved
        self.names = names
        own = [dict(m.named_parameters()) for m in replicas]
        self.stacked = nn.ParameterList([
            nn.Parameter(torch.stack([o[n].detach() for o in own]), requires_grad=p.requires_grad)
            for n, p in base.named_parameters()])
        object.__setattr__(self, "_own", [[o[n] for n in self.names] for o in own])
        object.__setattr__(self, "_draws_nothing", type(base).draw is Method.draw)
        object.__setattr__(self, "_batched", torch.func.vmap(self._one, randomness="error"))
        self.extras: list[dict[str, float]] = [{} for _ in replicas]

    def _one(self, params, x, y, index, draws):
        """One replica's loss terms, under vmap: its slice of everything. Its parameters are
        put where the first replica's modules hold theirs for the call, as
        ``torch.func.functional_call`` does, without its per-call walks over the modules (a
        third of a stacked step of the MI network)."""
        base = self.replicas[0]
        kept = [mod._parameters[leaf] for mod, leaf, _ in self._slots]
        for mod, leaf, i in self._slots:
            mod._parameters[leaf] = params[i]
        object.__setattr__(base, "_draws", draws)
        try:
            return base.loss(Batch(x, y, index, self.stream))
        finally:
            object.__setattr__(base, "_draws", None)
            for (mod, leaf, _), p in zip(self._slots, kept):
                mod._parameters[leaf] = p

    def _draw(self) -> dict[str, torch.Tensor]:
        """Each replica's random numbers for this step, from its own generators, stacked."""
        if self._draws_nothing:
            return {}
        drawn = [m.draw() for m in self.replicas]
        return {k: torch.stack([d[k] for d in drawn]) for k in drawn[0]}

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self._batched(tuple(self.stacked), batch.x, batch.y, batch.index, self._draw())

    def epoch_started(self, epoch: int) -> dict[str, float]:
        """Every replica's own (their values are logged per replica, in ``extras``); the first
        one's Python state is what the stacked step reads."""
        self.extras = [m.epoch_started(epoch) or {} for m in self.replicas]
        if not all(m.training for m in self._base_modules):  # an evaluator left it in eval mode
            self.replicas[0].train()
        return {}

    @torch.no_grad()
    def unstack(self) -> None:
        """Copy each replica's slice into its own parameters."""
        for r, own in enumerate(self._own):
            for p, s in zip(own, self.stacked):
                p.copy_(s[r])


class _StackedStream:
    """The replicas' own streams read together: each gives its own indices (its own shuffle),
    and one gather takes every replica's samples from the (concatenated) distinct splits."""

    def __init__(self, parts: list):
        self.parts, self.name = parts, parts[0].name
        self.n, self.batch_size = parts[0].n, parts[0].batch_size
        splits: dict[int, Any] = {}
        for p in parts:
            splits.setdefault(id(p.split), p.split)
        starts, offset = {}, 0
        for key, split in splits.items():
            starts[key], offset = offset, offset + len(split)
        chosen = list(splits.values())
        self.x = chosen[0].x if len(chosen) == 1 else torch.cat([s.x for s in chosen])
        self.y = chosen[0].y if len(chosen) == 1 else torch.cat([s.y for s in chosen])
        self.offsets = None if len(chosen) == 1 else torch.tensor(
            [starts[id(p.split)] for p in parts], device=self.x.device).view(-1, 1)
        self.shape = tuple(self.x.shape[1:])

    @property
    def size(self) -> int:
        return self.parts[0].size

    @property
    def steps_per_pass(self) -> int:
        return self.parts[0].steps_per_pass

    def batch(self) -> Batch:
        index = torch.stack([p.next_index() for p in self.parts])
        flat = (index if self.offsets is None else index + self.offsets).reshape(-1)
        r, b = index.shape
        return Batch(self.x.index_select(0, flat).view(r, b, *self.shape),
                     self.y.index_select(0, flat).view(r, b), index, self.name)


class StackedStreams:
    """What the epoch loop reads of a ``StreamSet``, for the replicas' primary streams."""

    def __init__(self, parts: list):
        self.primary = _StackedStream(parts)
        self.streams = [self.primary]
        self.others: list = []

    @property
    def steps(self) -> int:
        return self.primary.steps_per_pass

    def seen(self) -> dict[str, int]:
        return {}


def stack_optimizer_states(states: list[dict]) -> dict:
    """One optimizer state for stacked parameters from the replicas' (same parameters in the
    same order): per-parameter tensors stacked, step counts (equal: they step together) kept."""
    first = states[0]
    out = {"param_groups": copy.deepcopy(first["param_groups"]), "state": {}}
    for i, entry in first["state"].items():
        out["state"][i] = {k: torch.stack([s["state"][i][k] for s in states])
                           if isinstance(v, torch.Tensor) and v.ndim > 0 else v
                           for k, v in entry.items()}
    return out


def replica_optimizer_state(state: dict, r: int) -> dict:
    """Replica r's optimizer state out of a stacked one, as its optimizer alone would hold it."""
    out = {"param_groups": copy.deepcopy(state["param_groups"]), "state": {}}
    for i, entry in state["state"].items():
        out["state"][i] = {k: (v[r] if v.ndim > 0 else v).clone()
                           if isinstance(v, torch.Tensor) else copy.deepcopy(v)
                           for k, v in entry.items()}
    return out


@dataclass
class StackedLoop(EpochLoop):
    """The engine's epoch loop over stacked replicas; ``rows[r]`` is replica r's part of the
    epoch's metrics (its loss terms, grad norm, its method's logged values)."""

    loops: list[EpochLoop] = field(default_factory=list)
    rows: list[dict[str, float]] = field(default_factory=list)

    def _log_losses(self, epoch: int, metrics: dict[str, float]) -> None:
        terms, norms = self.updates.epoch_means()
        self.rows = []
        for r in range(self.updates.replicas):
            row = dict(self.method.extras[r])
            total = 0.0
            for key, values in terms.items():
                row[f"loss_{key}"] = values[r]
                total += values[r]
            row["loss"] = total
            row.update({k: v[r] for k, v in norms.items()})
            self.rows.append(row)

    def unstack(self, optimizers: bool = True) -> None:
        """Each replica's parameters (and, with ``optimizers``, its optimizer and scheduler
        state) copied into its own loop, as if it had trained alone."""
        self.method.unstack()
        if not optimizers:
            return
        state = self.updates.state_dict()
        for r, loop in enumerate(self.loops):
            for name, opt in loop.updates.optimizers.items():
                opt.load_state_dict(replica_optimizer_state(state["optimizers"][name], r))
            for name, sched in loop.updates.schedulers.items():
                if sched is not None:
                    sched.load_state_dict(copy.deepcopy(state["schedulers"][name]))


def stack_loops(loops: list[EpochLoop], run: dict[str, Any]) -> StackedLoop:
    """One stacked loop from replicas' loops built (and perhaps restored) as if alone, each at
    the same epoch: their parameters, optimizer and scheduler states stacked."""
    first = loops[0]
    method = StackedMethod([loop.method for loop in loops], first.streams.primary.name)
    updates = Updates(method, run, first.epochs, first.device, first.updates.amp,
                      replicas=len(loops))
    for name, opt in updates.optimizers.items():
        states = [loop.updates.optimizers[name].state_dict() for loop in loops]
        if states[0]["state"]:
            opt.load_state_dict(stack_optimizer_states(states))
        sched, own = updates.schedulers[name], first.updates.schedulers[name]
        if sched is not None and own is not None:
            sched.load_state_dict(own.state_dict())
    return StackedLoop(method=method, updates=updates, streams=StackedStreams(
                           [loop.streams.primary for loop in loops]),
                       evaluators=[], data=first.data, epochs=first.epochs, device=first.device,
                       autocast=first.autocast, artifact_dir=first.artifact_dir,
                       eval_batch_size=first.eval_batch_size, loops=list(loops))

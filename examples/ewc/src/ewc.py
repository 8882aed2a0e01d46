"""Elastic weight consolidation (Kirkpatrick et al. 2017) as a harness method.

Phase II of a transfer protocol trains on task B from phase I's weights (``from: A``); EWC adds
``weight / 2 * sum_i F_i (theta_i - theta*_i)^2``, where theta* are phase I's trained weights
(the frozen upstream stage named under ``refs:``) and F the diagonal Fisher information of task
A's loss at theta*, on task A's training samples (a data role of this stage, ``dataset: {target:
task B, A: task A}``). ``harness.api.fisher_diagonal`` does the Fisher with torch.func.

Made with ``harness new method ewc``; the anchor and the Fisher are buffers, so they are in the
checkpoint and ``--resume`` needs nothing else.
"""

import torch
import torch.nn.functional as F

from harness.api import Method, UserError, fisher_diagonal, hookimpl


class EWC(Method):
    """Cross-entropy on the task plus the EWC penalty towards the ``anchor`` stage."""

    def __init__(self, model, ctx, *, weight: float = 100.0, anchor: str = "anchor",
                 role: str = "A", samples: int = 512):
        super().__init__(model, ctx)
        if anchor not in ctx.upstream:
            raise UserError(f"EWC needs the stage it anchors to under refs: {{{anchor}: STAGE}}",
                            key="anchor", hint="e.g. refs: {anchor: A}")
        self.weight = weight
        net = ctx.upstream[anchor].model
        fisher = {}
        if role in ctx.data:  # absent when rebuilt from a checkpoint: the buffers come from it
            data = ctx.data[role].train
            fisher = fisher_diagonal(net.eval(), data.x[:samples], data.y[:samples])
        elif ctx.data:
            raise UserError(f"no data role {role!r} to compute the Fisher on", key="role",
                            hint=f"name task A's data in the stage's dataset: {{{role}: ...}}")
        self.names = [n for n, _ in net.named_parameters()]
        for i, (name, p) in enumerate(net.named_parameters()):
            self.register_buffer(f"anchor_{i}", p.detach().clone())
            self.register_buffer(f"fisher_{i}", fisher.get(name, torch.zeros_like(p)))

    def loss(self, batch):
        params = dict(self.model.named_parameters())
        penalty = sum((getattr(self, f"fisher_{i}") * (params[n] - getattr(self, f"anchor_{i}"))
                       .pow(2)).sum() for i, n in enumerate(self.names))
        return {"task": F.cross_entropy(self.model(batch.x), batch.y),
                "ewc": self.weight / 2 * penalty}


@hookimpl
def harness_register_methods(register):
    register("ewc", EWC, "elastic weight consolidation (Kirkpatrick et al. 2017)")

"""Test plugins for the core's streams and named updates (``--plugin harness_test_updates``).

``mcd``: a method shaped like Maximum Classifier Discrepancy (Saito et al. 2018) on a source and
a target data set: the stage's network is the generator G, two linear heads C1 and C2 classify
its output. A step makes three updates on three optimizers: (A) everything on the source
cross-entropy, (B) the heads on source cross-entropy minus their discrepancy on target inputs,
(C) G on the discrepancy, ``k`` times. For the first ``warmup`` steps only (A) runs: a phase
cursor that changes inside an epoch and lives in ``get_extra_state``, so that resume across the
change of phase is tested.

``semi``: labelled and unlabelled streams (cross-entropy on the labelled batch, prediction
entropy on the unlabelled one) and an EMA copy of the network updated in ``step_finished``.
``peek`` tries to read the labels of an unlabelled batch; ``rogue`` steps an optimizer itself.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from harness.api import Method, OptimizerSpec, Stream, hookimpl


class MCD(Method):
    def __init__(self, model, ctx, *, k: int = 2, warmup: int = 3):
        super().__init__(model, ctx)
        self.c1 = nn.Linear(ctx.num_classes, ctx.num_classes)
        self.c2 = nn.Linear(ctx.num_classes, ctx.num_classes)
        self.k, self.warmup = k, warmup
        self.steps = 0
        self.phase = "warmup" if warmup else "adapt"

    def streams(self):
        return {"source": Stream(role="source"), "target": Stream(role="target", split="unlabelled")}

    def optimizers(self):
        heads = [*self.c1.parameters(), *self.c2.parameters()]
        return {"all": list(self.parameters()), "heads": OptimizerSpec(heads, lr=2e-3),
                "generator": list(self.model.parameters())}

    def forward(self, x):
        z = self.model(x)
        return self.c1(z) + self.c2(z)

    def discrepancy(self, x):
        z = self.model(x)
        return (F.softmax(self.c1(z), 1) - F.softmax(self.c2(z), 1)).abs().mean()

    def step(self, batches):
        src, tgt = batches["source"], batches["target"]

        def source_ce():
            z = self.model(src.x)
            return F.cross_entropy(self.c1(z), src.y) + F.cross_entropy(self.c2(z), src.y)

        self.update("all", {"ce": source_ce()})
        if self.phase == "warmup":
            return
        self.update("heads", {"ce": source_ce(), "disc": -self.discrepancy(tgt.x)})
        for _ in range(self.k):
            self.update("generator", {"disc": self.discrepancy(tgt.x)})

    def step_finished(self, step):
        self.steps += 1
        if self.steps >= self.warmup:
            self.phase = "adapt"

    def get_extra_state(self):
        return {"steps": self.steps, "phase": self.phase}

    def set_extra_state(self, state):
        self.steps, self.phase = int(state["steps"]), str(state["phase"])


class Semi(Method):
    def __init__(self, model, ctx, *, ratio: float = 2.0, decay: float = 0.9, weight: float = 0.5):
        super().__init__(model, ctx)
        self.ratio, self.decay, self.weight = ratio, decay, weight
        self.ema = copy.deepcopy(model).requires_grad_(False)
        self.seen_unlabelled = 0

    def streams(self):
        return {"labelled": Stream(exact=True),
                "unlabelled": Stream(split="unlabelled", ratio=self.ratio)}

    def loss(self, batches):
        lab, unl = batches["labelled"], batches["unlabelled"]
        self.seen_unlabelled += len(unl)
        p = F.softmax(self.model(unl.x), 1)
        entropy = -(p * p.clamp_min(1e-8).log()).sum(1).mean()
        return {"ce": F.cross_entropy(self.model(lab.x), lab.y), "entropy": self.weight * entropy}

    @torch.no_grad()
    def step_finished(self, step):
        for e, p in zip(self.ema.parameters(), self.model.parameters()):
            e.mul_(self.decay).add_(p, alpha=1 - self.decay)

    def networks(self):
        return {"model": self.model, "ema": self.ema}

    def get_extra_state(self):
        return {"seen_unlabelled": self.seen_unlabelled}

    def set_extra_state(self, state):
        self.seen_unlabelled = int(state["seen_unlabelled"])


class Peek(Semi):
    def loss(self, batches):
        return {"ce": F.cross_entropy(self.model(batches["unlabelled"].x), batches["unlabelled"].y)}


class Rogue(Method):
    def loss(self, batch):
        loss = F.cross_entropy(self.model(batch.x), batch.y)
        loss.backward()
        self._updater.optimizers["main"].step()
        return {"task": loss}


@hookimpl
def harness_register_methods(register):
    register("mcd", MCD, "test plugin: three updates per step on a source and a target")
    register("semi", Semi, "test plugin: labelled and unlabelled streams, an EMA copy")
    register("peek", Peek, "test plugin: reads labels it must not have")
    register("rogue", Rogue, "test plugin: steps an optimizer itself")

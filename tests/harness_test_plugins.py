"""A third-party-style plugin used by the tests: loaded with ``--plugin harness_test_plugins``.

``two_net`` proves the method interface for the coming multi-network methods: it owns a second
network (built by the core from the stage's architecture), optionally distils from a frozen
upstream model handed over by a stage's ``refs:``, and both networks are checkpointed.
``explode`` turns its loss into NaN after some epochs; ``boom`` raises inside the plugin.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from typing import Literal

from harness.api import Evaluator, Method, Stream, hookimpl

EVENTS: list[tuple] = []


class TwoNet(Method):
    """Trains the model and a second network; with a ``teacher`` ref, both also match its logits."""

    def __init__(self, model, ctx, *, distill: float = 0.0):
        super().__init__(model, ctx)
        self.second = ctx.build_model()
        self.distill = distill
        self.teacher = ctx.upstream.get("teacher")

    def streams(self):
        return {"train": Stream(), "second": Stream()}

    def loss(self, batches):
        batch, other = batches["train"], batches["second"]
        terms = {"task": F.cross_entropy(self.model(batch.x), batch.y),
                 "second": F.cross_entropy(self.second(other.x), other.y)}
        if self.teacher is not None and self.distill:
            with torch.no_grad():
                target = self.teacher(batch.x)
            terms["distill"] = self.distill * F.mse_loss(self.model(batch.x), target)
        return terms

    def networks(self):
        return {"model": self.model, "second": self.second}


class Explode(Method):
    def __init__(self, model, ctx, *, after: int = 1):
        super().__init__(model, ctx)
        self.after = after
        self.epoch = 0

    def epoch_started(self, epoch):
        self.epoch = epoch
        return {}

    def loss(self, batch):
        loss = F.cross_entropy(self.model(batch.x), batch.y)
        return {"task": loss * float("nan") if self.epoch >= self.after else loss}


class Boom(Method):
    def loss(self, batch):
        raise RuntimeError("boom from a plugin")


class Choosy(Method):
    """Options of every annotated kind the suite reader checks (as strings: this module uses
    ``from __future__ import annotations``)."""

    def __init__(self, model, ctx, *, pool: Literal["mean", "max"] = "mean", steps: int | None = None,
                 widths: list[int] = (4,), scale: float = 1.0, on: bool = True, tag: str = "x"):
        super().__init__(model, ctx)

    def loss(self, batch):
        return {"task": F.cross_entropy(self.model(batch.x), batch.y)}


class ParamCount(Evaluator):
    """Number of parameters of every network the method exposes (checks networks())."""

    every = "end"

    def evaluate(self, method, ctx):
        return {f"params_{name}": float(sum(p.numel() for p in net.parameters()))
                for name, net in method.networks().items()}


@hookimpl
def harness_register_methods(register):
    register("two_net", TwoNet)
    register("explode", Explode)
    register("boom", Boom)
    register("choosy", Choosy)


@hookimpl
def harness_register_evaluators(register):
    register("param_count", ParamCount)


@hookimpl
def harness_stage_started(info):
    EVENTS.append(("started", info.name))


@hookimpl
def harness_epoch_finished(info, epoch, metrics):
    EVENTS.append(("epoch", info.name, epoch))


@hookimpl
def harness_stage_finished(info, result):
    EVENTS.append(("finished", info.name, result.status))

"""Deliberately broken plugins: each breaks one contract that one check of harness.testing
must catch (a check that cannot fail is a defect). Used by tests/test_testing_kit.py."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from harness.api import Evaluator, Method, Stream


class _Plain(Method):
    def ce(self, batch):
        return F.cross_entropy(self.model(batch.x), batch.y)


class TakesAnything(_Plain):
    """**kwargs swallow every typo."""

    def __init__(self, model, ctx, **options):
        super().__init__(model, ctx)

    def loss(self, batch):
        return {"task": self.ce(batch)}


class DetachedTerm(_Plain):
    def loss(self, batch):
        return {"task": self.ce(batch), "logged": self.ce(batch).detach()}


class ChangingNames(_Plain):
    def __init__(self, model, ctx):
        super().__init__(model, ctx)
        self.calls = 0

    def loss(self, batch):
        self.calls += 1
        return {f"task{self.calls % 2}": self.ce(batch)}


class DeadHead(_Plain):
    """Declares a head that its loss never reaches."""

    def __init__(self, model, ctx):
        super().__init__(model, ctx)
        self.head = nn.Linear(4, 4)

    def loss(self, batch):
        return {"task": self.ce(batch)}


class LeakyFreeze(_Plain):
    """Keeps a part out of the optimizer, then backpropagates into it itself."""

    def __init__(self, model, ctx):
        super().__init__(model, ctx)
        self.fixed = nn.Linear(4, 4)

    def optimizers(self):
        return {"main": list(self.model.parameters())}

    def loss(self, batch):
        out = self.fixed(self.model(batch.x))
        self.fixed.weight.sum().backward()  # the engine's update() would never reach it
        return {"task": F.cross_entropy(out, batch.y)}


class Clock(_Plain):
    """Noise from the clock: not reproducible."""

    def loss(self, batch):
        return {"task": self.ce(batch) * (1 + (time.perf_counter_ns() % 997) / 1e4)}


class Forgetful(_Plain):
    """A counter that changes the loss but is not in the checkpoint."""

    def __init__(self, model, ctx):
        super().__init__(model, ctx)
        self.steps = 0

    def loss(self, batch):
        self.steps += 1
        return {"task": self.ce(batch) * (1 + 0.01 * self.steps)}


class Unpicklable(_Plain):
    def get_extra_state(self):
        return {"when": time}  # a module: the weights-only unpickler refuses it

    def set_extra_state(self, state):
        """Never reached with a value: the checkpoint of this state cannot be written."""

    def loss(self, batch):
        return {"task": self.ce(batch)}


class LabelReader(_Plain):
    def streams(self):
        return {"train": Stream(), "unlabelled": Stream(split="unlabelled")}

    def loss(self, batches):
        u = batches["unlabelled"]
        return {"task": self.ce(batches["train"]) + F.cross_entropy(self.model(u.x), u.y)}


class NotBfloat16(_Plain):
    """Claims amp_safe but needs float32: a determinant, whose LU kernel has no bfloat16 form
    on the CPU (autocast leaves it the bfloat16 product it is given)."""

    def loss(self, batch):
        z = self.model(batch.x)
        return {"task": self.ce(batch), "volume": torch.linalg.det(z.T @ z) * 1e-6}


class TouchesReference(_Plain):
    """Updates its frozen teacher in place."""

    def __init__(self, model, ctx):
        super().__init__(model, ctx)
        self.teacher = ctx.upstream["teacher"]

    def loss(self, batch):
        with torch.no_grad():
            for p in self.teacher.parameters():
                p.add_(0.01)
        return {"task": self.ce(batch)}


class KeepsItsWeights(_Plain):
    """Declares itself stackable but penalises the weights it kept at construction (what SRIP
    did before issue 24): stacked, every replica's penalty reads the first replica's."""

    stackable = True

    def __init__(self, model, ctx):
        super().__init__(model, ctx)
        self.kept = [p for p in model.parameters() if p.ndim >= 2]

    def loss(self, batch):
        return {"task": self.ce(batch), "decay": 0.1 * sum(w.pow(2).sum() for w in self.kept)}


class DrawsInLoss(_Plain):
    """Declares itself stackable but draws its noise inside loss() from its own generator."""

    stackable = True

    def __init__(self, model, ctx):
        super().__init__(model, ctx)
        self.generator = torch.Generator().manual_seed(ctx.seed)

    def get_extra_state(self):
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state):
        self.generator.set_state(state["generator"])

    def loss(self, batch):
        noise = torch.randn(batch.x.shape, generator=self.generator)
        return {"task": F.cross_entropy(self.model(batch.x + 0.1 * noise), batch.y)}


class NaNEvaluator(Evaluator):
    def evaluate(self, method, ctx):
        return {"score": float("nan")}


def shuffled_data(ctx):
    """A data set whose split moves on every build."""
    from harness.testing.tiny import tiny_data

    b = tiny_data()
    perm = torch.randperm(len(b.train.x))
    b.train.x = b.train.x[perm]
    return b


def wrong_width(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), 3))


class BareTensor(_Plain):
    """Returns the loss itself instead of named terms."""

    def loss(self, batch):
        return self.ce(batch)


class BareTensorStep(_Plain):
    """Its own step hands ``update`` the loss itself instead of named terms."""

    def step(self, batches):
        self.update("main", self.ce(batches["train"]))


class Untyped(_Plain):
    """An option without an annotation, used without a check: a suite's ``weight: "0.1"``
    would fail half-way through a grid."""

    def __init__(self, model, ctx, *, weight=1.0):
        super().__init__(model, ctx)
        self.weight = weight

    def loss(self, batch):
        return {"task": self.ce(batch) * self.weight}

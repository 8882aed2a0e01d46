"""Top-1 accuracy (and top-5 where there are at least 10 classes) on the train and test splits;
with ``errors: true`` also the top-1 error rate in percent (``test_err``), the number papers such
as 002 report, so a suite's claims and references can use it directly."""

from __future__ import annotations

import torch

from harness.api import Evaluator, UserError, hookimpl


@torch.no_grad()
def predict(method, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits for ``x`` in eval mode, batched so large test sets fit in memory."""
    was_training = method.training
    method.eval()
    try:
        return torch.cat([method(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    finally:
        method.train(was_training)


def topk_accuracy(logits: torch.Tensor, y: torch.Tensor, k: int) -> float:
    top = logits.topk(k, dim=1).indices
    return (top == y.unsqueeze(1)).any(dim=1).float().mean().item()


class Accuracy(Evaluator):
    """``test_acc`` and ``train_acc`` (top-1); ``test_top5`` where there are >= 10 classes;
    ``test_err`` / ``train_err`` (100 * (1 - top-1), percent) with ``errors``."""

    every = 1

    def __init__(self, *, splits=("test", "train"), errors: bool = False):
        if not isinstance(errors, bool):
            raise UserError(f"errors must be true or false, got {errors!r}", key="errors")
        self.splits = tuple(splits)
        self.errors = errors

    def evaluate(self, method, ctx):
        out = {}
        for split_name in self.splits:
            split = getattr(ctx.data, split_name)
            logits = predict(method, split.x, ctx.batch_size)
            out[f"{split_name}_acc"] = topk_accuracy(logits, split.y, 1)
            if self.errors:
                out[f"{split_name}_err"] = 100.0 * (1.0 - out[f"{split_name}_acc"])
            if ctx.data.num_classes >= 10 and split_name == "test":
                out[f"{split_name}_top5"] = topk_accuracy(logits, split.y, 5)
        return out


@hookimpl
def harness_register_evaluators(register):
    register("accuracy", Accuracy)

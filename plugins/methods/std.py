"""Plain training: cross-entropy on the labels, nothing else. The baseline of every paper."""

from __future__ import annotations

import torch.nn.functional as F

from harness.api import Method, hookimpl


class Std(Method):
    """Cross-entropy on the model's logits."""

    stackable = True

    def loss(self, batch):
        return {"task": F.cross_entropy(self.model(batch.x), batch.y)}


@hookimpl
def harness_register_methods(register):
    register("std", Std)

# expect: grid.method[0]: method 'bare_loss': BareLoss.loss() returned a tensor, not named loss terms
# suite: method: [bare_loss]
"""The first thing an author writes: ``loss()`` returning the loss itself, not ``{"task":
loss}``. Refused before anything trains (the preflight calls ``loss`` once), naming the method
and what ``loss()`` must return, instead of torch's error about sparse layouts mid-grid."""

import torch.nn.functional as F

from harness.api import Method, hookimpl


class BareLoss(Method):
    def loss(self, batch):
        return F.cross_entropy(self.model(batch.x), batch.y)


@hookimpl
def harness_register_methods(register):
    register("bare_loss", BareLoss)

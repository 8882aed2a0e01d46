# expect: grid.method[0].margin
# suite: method: [{name: margin_loss, margin: -1.0}]
"""A method that refuses a bad option value itself, with a UserError, when it is built: the
harness must report it before anything is recorded, naming the suite's key."""

import torch.nn.functional as F

from harness.api import Method, UserError, hookimpl


class MarginLoss(Method):
    def __init__(self, model, ctx, *, margin: float = 1.0):
        super().__init__(model, ctx)
        if margin <= 0:
            raise UserError(f"margin must be positive, got {margin}", key="margin",
                            hint="e.g. `margin: 1.0`")
        self.margin = margin

    def loss(self, batch):
        return {"task": F.multi_margin_loss(self.model(batch.x), batch.y, margin=self.margin)}


@hookimpl
def harness_register_methods(register):
    register("margin_loss", MarginLoss)

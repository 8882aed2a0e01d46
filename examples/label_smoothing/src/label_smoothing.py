"""Label smoothing (Szegedy et al. 2016) as a harness method: cross-entropy against targets
that put ``1 - smoothing`` on the true class and spread ``smoothing`` over all classes.

Made with ``harness new method label_smoothing``; the only edit is the loss.
"""

import torch.nn.functional as F

from harness.api import Method, UserError, hookimpl


class LabelSmoothing(Method):
    """Cross-entropy with smoothed targets; ``smoothing: 0`` is plain training."""

    def __init__(self, model, ctx, *, smoothing: float = 0.1):
        super().__init__(model, ctx)
        if not 0 <= smoothing < 1:  # the type is checked from the annotation; the range here
            raise UserError(f"smoothing must be in [0, 1), got {smoothing}", key="smoothing",
                            hint="e.g. smoothing: 0.1")
        self.smoothing = smoothing

    def loss(self, batch):
        logits = self.model(batch.x)
        return {"task": F.cross_entropy(logits, batch.y, label_smoothing=self.smoothing)}


@hookimpl
def harness_register_methods(register):
    register("label_smoothing", LabelSmoothing, "label smoothing (Szegedy et al. 2016)")

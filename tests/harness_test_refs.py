"""Methods that the kit cannot check with their defaults alone: one reads an upstream stage
through ``refs:`` (as EWC does: the name is its option's), one needs an option it has no
default for. Used by tests/test_testing_kit.py and ``harness plugins --check``."""

import torch.nn.functional as F

from harness.api import Method, UserError, hookimpl


class Anchored(Method):
    """Cross-entropy plus the distance to the anchor stage's weights, on data role ``A`` when
    the stage has it."""

    def __init__(self, model, ctx, *, anchor: str = "anchor", role: str = "A"):
        super().__init__(model, ctx)
        if anchor not in ctx.upstream:
            raise UserError(f"needs refs: {{{anchor}: STAGE}}", key="anchor")
        if ctx.data and role not in ctx.data:
            raise UserError(f"needs data role {role!r}", key="role")
        self.anchor = [p.detach().clone() for p in ctx.upstream[anchor].model.parameters()]

    def loss(self, batch):
        far = sum(((p - a) ** 2).sum() for p, a in zip(self.model.parameters(), self.anchor))
        return {"task": F.cross_entropy(self.model(batch.x), batch.y), "anchor": 0.01 * far}


class NeedsOption(Method):
    def __init__(self, model, ctx, *, margin: float):
        super().__init__(model, ctx)
        self.margin = margin

    def loss(self, batch):
        return {"task": F.multi_margin_loss(self.model(batch.x), batch.y, margin=self.margin)}


@hookimpl
def harness_register_methods(register):
    register("anchored", Anchored)
    register("needs_option", NeedsOption)

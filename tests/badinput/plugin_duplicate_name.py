# expect: plugin_duplicate_name
"""Registers the method name `std`, which a built-in plugin already owns."""

import torch.nn.functional as F

from harness.api import Method, hookimpl


class OtherStd(Method):
    def loss(self, batch):
        return {"task": F.cross_entropy(self.model(batch.x), batch.y)}


@hookimpl
def harness_register_methods(register):
    register("std", OtherStd)

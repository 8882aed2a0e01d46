"""The tiny data and network the conformance checks train on: seconds on a CPU, no files.

Four classes of 8x8 single-channel images (a bright quadrant per class, plus noise) are easy
enough that a few steps of any sensible method lower its loss, and small enough that a check
that trains a method four times takes well under a second.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..api import DataBundle, DatasetContext, Method, Split
from ..plugins import Entry, Plugins

__all__ = ["tiny_data", "tiny_net", "kit_plugins", "KIT_DATA", "KIT_NET", "KIT_METHOD"]

KIT_DATA = "kit_images"
KIT_NET = "kit_net"
KIT_METHOD = "kit_plain"
_BASE: Plugins | None = None


def _images(n: int, generator: torch.Generator) -> Split:
    y = torch.arange(n) % 4
    x = torch.rand(n, 1, 8, 8, generator=generator) * 0.3
    for c in range(4):
        r, q = divmod(c, 2)
        x[y == c, 0, r * 4:(r + 1) * 4, q * 4:(q + 1) * 4] += 0.7
    return Split(x, y)


def tiny_data(ctx: DatasetContext | None = None) -> DataBundle:
    """Deterministic: the same tensors on every call (a fixed generator, not the global one)."""
    g = torch.Generator().manual_seed(1234)
    return DataBundle(train=_images(96, g), test=_images(32, g), num_classes=4, name=KIT_DATA,
                      description="the conformance kit's tiny 8x8 images, 4 classes")


def tiny_net(input_shape, num_classes: int) -> nn.Sequential:
    """A conv, a pooling and two linear layers, declaring its reversible trunk as
    architectures do for racecar and the reconstruction evaluator."""
    channels, h, w = input_shape
    net = nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(4 * (h // 2) * (w // 2), 16), nn.ReLU(),
                        nn.Linear(16, num_classes))
    net.reversible_trunk = ("0", "4")  # what reverse-pass methods and evaluators reverse
    return net


class KitPlain(Method):
    """Plain cross-entropy: the network an evaluator is checked on, trained by no plugin in
    particular (the kit names no installed method)."""

    def loss(self, batch):
        return {"task": F.cross_entropy(self.model(batch.x), batch.y)}


def kit_plugins(extra: dict[str, dict[str, object]] | None = None) -> Plugins:
    """The built-in plugins plus the kit's data and network, and ``extra`` entries
    (``{"methods": {"name": cls}}``: the plugin under test, installed or not). Other installed
    packages are not loaded: one that is broken, or registers a name twice, must not fail
    another package's tests."""
    global _BASE
    if _BASE is None:
        _BASE = Plugins(autoload=False, environment=False)
    plugins = Plugins.__new__(Plugins)
    plugins.__dict__.update(_BASE.__dict__)
    plugins.registries = {kind: type(reg)(reg.kind, dict(reg.entries))
                          for kind, reg in _BASE.registries.items()}
    entries = {"datasets": {KIT_DATA: tiny_data}, "architectures": {KIT_NET: tiny_net},
               "methods": {KIT_METHOD: KitPlain}}
    for kind, named in (extra or {}).items():
        entries.setdefault(kind, {}).update(named)
    for kind, named in entries.items():
        for name, obj in named.items():
            plugins.registries[kind].entries[name] = Entry(kind, name, obj, "harness.testing", "0")
    return plugins

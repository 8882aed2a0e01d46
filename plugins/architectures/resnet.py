"""CIFAR-style residual networks (He et al. 2016, Sec. 4.2): ResNet-56 and small siblings.

Paper 001 splits ResNet-56 into a feature extractor and a task head at a named layer, and sweeps
that layer over the whole network (its Fig. 4). So every residual block is a direct, named child
of one flat ``nn.Sequential`` -- ``stem``, ``stage1_block1`` ... ``stage3_block9``, ``pool``,
``flatten``, ``fc`` -- and any child name is a split point: the extractor is everything up to and
including it. The network carries ``default_split`` (the last block of stage 2, paper 001's
default), which methods that split a network use when a suite names no split.

Shortcuts: where a block changes width or resolution (the first block of stages 2 and 3) it
projects with a strided 1x1 convolution and batch norm ("option B"). Paper 001 explains its
Fig. 4 by exactly this projection ("the first block of a stage ... linearly projects the
features"), so it is the default; ``shortcut: padding`` gives He et al.'s parameter-free
"option A" (subsample and pad with zero channels) used for their CIFAR table.
"""

from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import nn

from harness.api import UserError, hookimpl

_SHORTCUTS = ("projection", "padding")


class PadShortcut(nn.Module):
    """Option A: subsample spatially and append zero channels; no parameters."""

    def __init__(self, stride: int, extra_channels: int):
        super().__init__()
        self.stride = stride
        self.extra = extra_channels

    def forward(self, x):
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        elif shortcut == "projection":
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels))
        else:
            self.shortcut = PadShortcut(stride, out_channels - in_channels)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def cifar_resnet(input_shape, num_classes, *, blocks: int = 9, width: int = 16,
                 stem_stride: int = 1, shortcut: str = "projection") -> nn.Sequential:
    """ResNet-(6n+2): a 3x3 stem, three stages of ``blocks`` basic blocks with ``width``,
    2x and 4x channels (the second and third stage halve the resolution), global average
    pooling and a linear classifier. ``stem_stride: 2`` halves the input first (cheap 28x28)."""
    channels, height, width_px = _image_shape(input_shape)
    for key, value in (("blocks", blocks), ("width", width), ("stem_stride", stem_stride)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{key} must be a positive whole number, got {value!r}", key=key)
    if shortcut not in _SHORTCUTS:
        raise UserError(f"unknown shortcut {shortcut!r}", key="shortcut",
                        hint=f"one of {', '.join(_SHORTCUTS)}")
    layers: list[tuple[str, nn.Module]] = [("stem", nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(channels, width, 3, stride=stem_stride, padding=1, bias=False)),
        ("bn", nn.BatchNorm2d(width)), ("relu", nn.ReLU())])))]
    in_ch = width
    for stage in range(1, 4):
        out_ch = width * 2 ** (stage - 1)
        for b in range(1, blocks + 1):
            stride = 2 if (stage > 1 and b == 1) else 1
            layers.append((f"stage{stage}_block{b}", BasicBlock(in_ch, out_ch, stride, shortcut)))
            in_ch = out_ch
    layers += [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()),
               ("fc", nn.Linear(in_ch, num_classes))]
    net = nn.Sequential(OrderedDict(layers))
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    net.default_split = f"stage2_block{blocks}"
    return net


def resnet56(input_shape, num_classes, *, width: int = 16, shortcut: str = "projection"):
    """ResNet-56 of paper 001 for 32x32 inputs: 3 stages x 9 basic blocks (16/32/64 channels)."""
    return cifar_resnet(input_shape, num_classes, blocks=9, width=width, shortcut=shortcut)


def resnet20(input_shape, num_classes, *, width: int = 16, shortcut: str = "projection"):
    """ResNet-20: 3 stages x 3 basic blocks, the same family at a third of the depth."""
    return cifar_resnet(input_shape, num_classes, blocks=3, width=width, shortcut=shortcut)


def resnet_small(input_shape, num_classes, *, blocks: int = 1, width: int = 16,
                 stem_stride: int | None = None, shortcut: str = "projection"):
    """A ResNet-8 (one block per stage) for the offline data: digits (8x8) and mnist5k (28x28).

    The stem halves inputs of 16 pixels or more (``stem_stride`` overrides), so a 28x28 image
    costs about as much as a 14x14 one on two CPU cores while the named split points stay those
    of ResNet-56 (``stage1_block1`` ... ``stage3_block1``)."""
    _, height, width_px = _image_shape(input_shape)
    if stem_stride is None:
        stem_stride = 2 if min(height, width_px) >= 16 else 1
    return cifar_resnet(input_shape, num_classes, blocks=blocks, width=width,
                        stem_stride=stem_stride, shortcut=shortcut)


def _image_shape(input_shape):
    if len(input_shape) != 3:
        raise UserError(f"the ResNets need image inputs (channels, height, width), got shape "
                        f"{tuple(input_shape)}", key="architecture", hint="use mi_mlp for flat inputs")
    return tuple(int(s) for s in input_shape)


@hookimpl
def harness_register_architectures(register):
    register("resnet56", resnet56, "ResNet-56 for 32x32 inputs (paper 001), split points by block")
    register("resnet20", resnet20, "ResNet-20 for 32x32 inputs, split points by block")
    register("resnet_small", resnet_small,
             "ResNet-8 for digits/mnist5k (one block per stage), split points by block")
    register("cifar_resnet", cifar_resnet, "ResNet-(6n+2) with `blocks: n` per stage")

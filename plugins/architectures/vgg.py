"""The VGG-16-style CIFAR network of paper 000, Table 11.

Thirteen 3x3 convolutions (stride 1, padding 1), each followed by batch norm and ReLU, in stages
of 2, 2, 3, 3, 3 convolutions of 64, 128, 256, 512, 512 channels, with a 2x2 max pool after the
first four stages (32 -> 2 pixels; the table has no pool after the last stage), then FC 4096,
FC 4096 and FC to the classes, each with batch norm and ReLU as the table writes them (the ReLU
on the logits included; ``output_activation: false`` drops batch norm and ReLU of the last FC).

The 13 convolutions are the declared reversible trunk (the paper's RR^13). ``width`` scales the
channel counts (64 is the paper's) and ``fc_width`` the hidden FC layers (4096), so tests and
CPU users can run a thin copy of the same structure.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from harness.api import UserError, hookimpl

__all__ = ["vgg_cifar", "STAGES"]

#: (convolutions, channel multiple of ``width``) per stage; a max pool follows the first four
STAGES = ((2, 1), (2, 2), (3, 4), (3, 8), (3, 8))


def vgg_cifar(input_shape, num_classes, *, width: int = 64, fc_width: int = 4096,
              output_activation: bool = True):
    """Paper 000 Table 11: VGG-16-style with BN, 13 convs (the racecar trunk) and 3 FC layers."""
    if len(input_shape) != 3:
        raise UserError(f"vgg_cifar needs image inputs (channels, height, width), got shape "
                        f"{tuple(input_shape)}", key="architecture")
    channels, height, width_px = input_shape
    if height % 16 or width_px % 16:
        raise UserError(f"vgg_cifar pools four times, so the sides must divide by 16; got "
                        f"{height}x{width_px}", key="architecture", hint="use 32x32 images (CIFAR)")
    for key, value in (("width", width), ("fc_width", fc_width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{key} must be a positive whole number, got {value!r}", key=key)
    layers: list[tuple[str, nn.Module]] = []
    trunk = []
    c_in, k = channels, 0
    for stage, (convs, mult) in enumerate(STAGES, start=1):
        for _ in range(convs):
            k += 1
            c_out = width * mult
            layers += [(f"conv{k}", nn.Conv2d(c_in, c_out, 3, padding=1)),
                       (f"bn{k}", nn.BatchNorm2d(c_out)), (f"relu{k}", nn.ReLU())]
            trunk.append(f"conv{k}")
            c_in = c_out
        if stage < len(STAGES):
            layers.append((f"pool{stage}", nn.MaxPool2d(2)))
    layers.append(("flatten", nn.Flatten()))
    features = c_in * (height // 16) * (width_px // 16)
    sizes = [features, fc_width, fc_width, num_classes]
    for j, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=k + 1):
        layers.append((f"fc{j}", nn.Linear(n_in, n_out)))
        if j < k + 3 or output_activation:
            layers += [(f"bn{j}", nn.BatchNorm1d(n_out)), (f"relu{j}", nn.ReLU())]
    model = nn.Sequential(OrderedDict(layers))
    model.reversible_trunk = tuple(trunk)
    return model


@hookimpl
def harness_register_architectures(register):
    register("vgg_cifar", vgg_cifar, "paper 000 Table 11: VGG-16-style CIFAR net with BN "
                                     "(13 convs as the reversible trunk, FC 4096-4096-classes)")

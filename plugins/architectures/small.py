"""The small networks of paper 000 and one for 8x8 inputs.

All are ``nn.Sequential`` with named children so that methods can find layers by name (a split
point, a reversible trunk) without knowing the architecture. Each adapts to the data's channels,
spatial size and class count. ``model.reversible_trunk`` names the weight layers a reverse pass
(racecar, the reconstruction evaluator) runs back through, as the paper's tables do.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from torch import nn

from harness.api import UserError, hookimpl

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "sigmoid": nn.Sigmoid}


def _activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise UserError(f"unknown activation {name!r}", key="activation",
                        hint=f"one of {', '.join(sorted(_ACTIVATIONS))}") from None


def mi_mlp(input_shape, num_classes, *, widths=(10, 7, 5, 4, 3), activation="tanh",
           output_activation=True):
    """Paper 000 Table 7: 12-10-7-5-4-3-2 with tanh after every layer, the output included
    (294 weights on ib12). Inputs are flattened, so any shape works."""
    sizes = [math.prod(input_shape), *[int(w) for w in widths], num_classes]
    layers: list[tuple[str, nn.Module]] = []
    if len(input_shape) > 1:
        layers.append(("flatten", nn.Flatten()))
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        layers.append((f"fc{i}", nn.Linear(n_in, n_out)))
        last = i == len(sizes) - 1
        if not last or output_activation:
            layers.append((f"act{i}", _activation(activation)))
    model = nn.Sequential(OrderedDict(layers))
    model.reversible_trunk = tuple(f"fc{i}" for i in range(1, len(sizes)))  # every layer
    return model


def mnist_cnn(input_shape, num_classes, *, width=64):
    """Paper 000 Table 9: conv3x3 C->64, relu, maxpool, conv 64->64, relu, maxpool, conv 64->1,
    relu, then FC to the classes (38,645 weights on 28x28x1, 10 classes)."""
    channels, height, width_px = _image_shape(input_shape, "mnist_cnn")
    if height % 4 or width_px % 4:
        raise UserError(f"mnist_cnn needs inputs whose sides divide by 4, got {height}x{width_px}",
                        key="architecture", hint="use small_cnn, or resize the data")
    model = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(channels, width, 3, padding=1)), ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(width, width, 3, padding=1)), ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2)),
        ("conv3", nn.Conv2d(width, 1, 3, padding=1)), ("relu3", nn.ReLU()),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear((height // 4) * (width_px // 4), num_classes)),
    ]))
    model.reversible_trunk = ("conv1", "conv2", "conv3")  # the paper's racecar loss: the convs
    return model


def small_cnn(input_shape, num_classes, *, width=16):
    """A two-conv network for 8x8 inputs such as scikit-learn's digits (works for any size that
    divides by 4): conv C->w, relu, pool, conv w->2w, relu, pool, FC."""
    channels, height, width_px = _image_shape(input_shape, "small_cnn")
    if height % 4 or width_px % 4:
        raise UserError(f"small_cnn needs inputs whose sides divide by 4, got {height}x{width_px}",
                        key="architecture")
    model = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(channels, width, 3, padding=1)), ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(width, 2 * width, 3, padding=1)), ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(2 * width * (height // 4) * (width_px // 4), num_classes)),
    ]))
    model.reversible_trunk = ("conv1", "conv2")
    return model


def _image_shape(input_shape, name):
    if len(input_shape) != 3:
        raise UserError(f"{name} needs image inputs (channels, height, width), got shape "
                        f"{tuple(input_shape)}", key="architecture",
                        hint="use mi_mlp for flat inputs")
    return input_shape


@hookimpl
def harness_register_architectures(register):
    register("mi_mlp", mi_mlp)
    register("mnist_cnn", mnist_cnn)
    register("small_cnn", small_cnn)

"""The four networks of paper 004 (semi-supervised learning by network inversion), no batch norm.

The paper names SmallCNN, LargeCNN (after Patel et al. 2015), Resnet2-32 and Resnet3-16 and
gives only their parameter counts (appendix A: 131K, 1370K, 330K, 136K), each with a mean- and
a max-pooling variant. The readings below reproduce those counts on 28x28x1 MNIST with 10
classes (``tests/test_spline_inversion.py`` checks them):

- ``inv_small_cnn`` = Conv-Small of the ladder-network paper (Rasmus et al. 2015, the MNIST
  semi-supervised standard of the time): conv5x5 32, pool, conv3x3 64, conv3x3 64, pool,
  conv3x3 128, conv1x1 to the classes, global mean pool: 131,402 parameters (131K).
- ``inv_large_cnn`` = Conv-Large (Rasmus et al. 2015; the 9-layer network Patel et al. 2015
  use on CIFAR-10): 3 x conv3x3 96, pool, 3 x conv3x3 192, pool, conv3x3 192 (no padding),
  conv1x1 192, conv1x1 to the classes, global mean pool: 1,368,010 parameters on one channel
  (1,369,738 on three), the paper's 1370K.
- ``inv_resnet2_32`` and ``inv_resnet3_16``: "ResnetD-W" read as D residual layers per stage
  and W channels in the first of three stages (W, 2W, 4W, a pool between stages), each layer
  the paper's own spline form of a residual layer (eq. 3): z' = relu(C_in z + b_in) +
  C_out z + b_out, with C_in a 3x3 convolution and C_out a 1x1 convolution (the linear path
  eq. 3 gives every layer). A 3x3 stem to W channels, global mean pool and a linear layer to
  the classes: 330,186 (330K) and 137,162 (136K, +0.9%) parameters. The same two readings
  with the usual two-convolution blocks give 690K and 271K, twice the paper's counts.

``pool`` (``mean`` or ``max``) chooses the 2x2 pooling layers that halve the resolution, the
variant the paper's tables name SmallCNNmean / SmallCNNmax; the global pool before the
classifier is a mean in both (it is the classifier's average, not a downsampling choice).
``activation`` is ``relu`` (default), ``leaky_relu`` or ``sigmoid`` (the paper's CIFAR and SVHN
variants). No network has batch norm: the appendix says no model used it, and in training
mode it couples the samples of a batch inside the reconstruction's vector-Jacobian product.
None uses an in-place activation, so any layer's output can be an input of that gradient call
(the per-layer reconstruction of eqs. 11-12). The paper's inhibitor ("U") variants are not
built.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from harness.api import UserError, hookimpl

__all__ = ["inv_small_cnn", "inv_large_cnn", "inv_resnet", "inv_resnet2_32", "inv_resnet3_16",
           "ResidualLayer"]

_ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.1), "sigmoid": nn.Sigmoid}
_POOLS = {"mean": nn.AvgPool2d, "max": nn.MaxPool2d}


def _act(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise UserError(f"unknown activation {name!r}", key="activation",
                        hint=f"one of {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


def _pool(name: str) -> nn.Module:
    if name not in _POOLS:
        raise UserError(f"unknown pool {name!r}", key="pool", hint="mean or max")
    return _POOLS[name](2)


def _image(input_shape, name: str, min_side: int) -> int:
    """The channel count of C x H x W inputs whose sides are at least ``min_side``."""
    if len(input_shape) != 3 or min(input_shape[1:]) < min_side:
        raise UserError(f"{name} needs images (C x H x W) with sides >= {min_side}, got "
                        f"{tuple(input_shape)}", key="architecture",
                        hint="resize the data with `size:`, or use an MLP")
    return int(input_shape[0])


def _conv(c_in: int, c_out: int, k: int, pad: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, padding=k // 2 if pad else 0)


def inv_small_cnn(input_shape, num_classes, *, pool: str = "mean", activation: str = "relu"):
    """SmallCNN of paper 004, read as Conv-Small (Rasmus et al. 2015): 131,402 parameters on
    MNIST (the paper's 131K)."""
    c = _image(input_shape, "inv_small_cnn", 4)
    layers = [("conv1", _conv(c, 32, 5)), ("act1", _act(activation)), ("pool1", _pool(pool)),
              ("conv2", _conv(32, 64, 3)), ("act2", _act(activation)),
              ("conv3", _conv(64, 64, 3)), ("act3", _act(activation)), ("pool2", _pool(pool)),
              ("conv4", _conv(64, 128, 3)), ("act4", _act(activation)),
              ("conv5", _conv(128, num_classes, 1)),
              ("gap", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten())]
    return nn.Sequential(OrderedDict(layers))


def inv_large_cnn(input_shape, num_classes, *, pool: str = "mean", activation: str = "relu"):
    """LargeCNN of paper 004, read as Conv-Large (Rasmus et al. 2015, the network of Patel et
    al. 2015 on CIFAR-10): 1,368,010 parameters on MNIST, 1,369,738 on CIFAR (the paper's
    1370K). Dropout of the original is left out: the paper mentions none."""
    c = _image(input_shape, "inv_large_cnn", 12)
    layers: list[tuple[str, nn.Module]] = []
    for n, (c_in, c_out) in enumerate([(c, 96), (96, 96), (96, 96), (96, 192), (192, 192),
                                       (192, 192)], start=1):
        layers += [(f"conv{n}", _conv(c_in, c_out, 3)), (f"act{n}", _act(activation))]
        if n in (3, 6):
            layers.append((f"pool{n // 3}", _pool(pool)))
    layers += [("conv7", _conv(192, 192, 3, pad=False)), ("act7", _act(activation)),
               ("conv8", _conv(192, 192, 1)), ("act8", _act(activation)),
               ("conv9", _conv(192, num_classes, 1)),
               ("gap", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten())]
    return nn.Sequential(OrderedDict(layers))


class ResidualLayer(nn.Module):
    """One layer of eq. 3: relu(C_in z + b_in) + C_out z + b_out (C_in 3x3, C_out 1x1)."""

    def __init__(self, c_in: int, c_out: int, activation: str):
        super().__init__()
        self.c_in = _conv(c_in, c_out, 3)
        self.act = _act(activation)
        self.c_out = _conv(c_in, c_out, 1)

    def forward(self, z):
        return self.act(self.c_in(z)) + self.c_out(z)


def inv_resnet(input_shape, num_classes, *, depth: int = 2, width: int = 32, pool: str = "mean",
               activation: str = "relu"):
    """"Resnet{depth}-{width}": three stages of ``depth`` residual layers (eq. 3) with
    ``width``, 2 ``width`` and 4 ``width`` channels, a 2x2 pool between stages."""
    for key, value in (("depth", depth), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{key} must be a positive whole number, got {value!r}", key=key)
    c = _image(input_shape, "inv_resnet", 4)
    layers: list[tuple[str, nn.Module]] = [("stem", _conv(c, width, 3)),
                                           ("stem_act", _act(activation))]
    c_prev = width
    for stage in range(1, 4):
        if stage > 1:
            layers.append((f"pool{stage - 1}", _pool(pool)))
        c_stage = width * 2 ** (stage - 1)
        for i in range(1, depth + 1):
            layers.append((f"stage{stage}_layer{i}", ResidualLayer(c_prev, c_stage, activation)))
            c_prev = c_stage
    layers += [("gap", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()),
               ("fc", nn.Linear(c_prev, num_classes))]
    return nn.Sequential(OrderedDict(layers))


def inv_resnet2_32(input_shape, num_classes, *, pool: str = "mean", activation: str = "relu"):
    """Resnet2-32 of paper 004: 330,186 parameters on MNIST (the paper's 330K)."""
    return inv_resnet(input_shape, num_classes, depth=2, width=32, pool=pool, activation=activation)


def inv_resnet3_16(input_shape, num_classes, *, pool: str = "mean", activation: str = "relu"):
    """Resnet3-16 of paper 004: 137,162 parameters on MNIST (the paper's 136K, +0.9%)."""
    return inv_resnet(input_shape, num_classes, depth=3, width=16, pool=pool, activation=activation)


@hookimpl
def harness_register_architectures(register):
    register("inv_small_cnn", inv_small_cnn, "paper 004 SmallCNN (Conv-Small, 131K), no batch norm")
    register("inv_large_cnn", inv_large_cnn, "paper 004 LargeCNN (Conv-Large, 1370K), no batch norm")
    register("inv_resnet", inv_resnet, "paper 004 Resnet{depth}-{width}: eq. 3 residual layers")
    register("inv_resnet2_32", inv_resnet2_32, "paper 004 Resnet2-32 (330K), no batch norm")
    register("inv_resnet3_16", inv_resnet3_16, "paper 004 Resnet3-16 (136K), no batch norm")

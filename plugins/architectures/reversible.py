"""The baseline network of paper 002 (Table 1) and a small instance of it for offline data.

Table 1: six 5x5 convolutions 32-32-64-64-128-128, each with a leaky ReLU, max pooling after
every pair, then FC 2048 -> 256 (leaky ReLU) -> N. On 32x32 inputs the table's 2048 inputs of
Fc1 need a third pooling after the last pair (128 x 4 x 4), which the table omits; with it the
network has 1,323,562 parameters for N = 10, the "1.3M" of Table 2. Convolutions are padded
("same"), as the 2048 requires.

``rnl_nn`` generalises the pattern: after each pair of convolutions the sides are halved while
they are even (three times on 32x32, twice on 28x28: 7x7, three times on 8x8: 1x1), so the same
factory serves MNIST-sized and 8x8 data. ``rnl_small`` is that pattern narrowed (8-8-16-16-32-32
channels, 3x3 kernels, FC 64) for the 2-core CPU suites.

Every weight layer is in ``reversible_trunk``: paper 002's reverse runs from the output back to
the input. All children are Linear / Conv2d / LeakyReLU / MaxPool2d(2) / Flatten, which the
shared reverse construction (``plugins.reverse``) reverses exactly.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from harness.api import UserError, check_choice, hookimpl

TABLE1_WIDTHS = (32, 32, 64, 64, 128, 128)
TABLE1_PARAMETERS_C10 = 1_323_562  # counted by hand from Table 1 (with the third pooling)
INITS = ("he", "torch")


def _he_init(model: nn.Module, slope: float) -> None:
    """Kaiming-normal weights for the leaky ReLU (fan in), zero biases. PyTorch's default
    (uniform, a = sqrt(5)) shrinks the signal by about half per layer, and the eight-layer
    network without batch norm then sat at chance for epochs at the paper's lr 0.1."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, a=slope, nonlinearity="leaky_relu")
            nn.init.zeros_(m.bias)


def _positive_ints(value, key: str) -> tuple[int, ...]:
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                             for v in values):
        raise UserError(f"{key} must be positive whole numbers, got {value!r}", key=key)
    return values


def rnl_nn(input_shape, num_classes, *, widths=TABLE1_WIDTHS, kernel: int = 5,
           fc_width: int = 256, slope: float = 0.01, max_pools: int = 3,
           init: str = "he"):
    """Paper 002 Table 1 (defaults): convs in pairs with leaky ReLU (negative ``slope``), a 2x2
    max pool after each pair while the sides stay even (at most ``max_pools``), FC ``fc_width``
    with leaky ReLU, FC to the classes (logits; the softmax is the loss's)."""
    if len(input_shape) != 3:
        raise UserError(f"rnl_nn needs image inputs (channels, height, width), got shape "
                        f"{tuple(input_shape)}", key="architecture")
    widths = _positive_ints(widths, "widths")
    (kernel,), (fc_width,) = _positive_ints(kernel, "kernel"), _positive_ints(fc_width, "fc_width")
    if kernel % 2 == 0:
        raise UserError(f"kernel must be odd so that padding keeps the size, got {kernel}",
                        key="kernel")
    check_choice(init, "init", INITS, hint="he (Kaiming for the leaky ReLU) or torch (PyTorch's "
                                            "default)")
    channels, height, width = input_shape
    layers: list[tuple[str, nn.Module]] = []
    pools = 0
    for i, w in enumerate(widths, start=1):
        layers += [(f"conv{i}", nn.Conv2d(channels, w, kernel, padding=kernel // 2)),
                   (f"act{i}", nn.LeakyReLU(slope))]
        channels = w
        if i % 2 == 0 and pools < max_pools and height % 2 == 0 and width % 2 == 0:
            pools += 1
            layers.append((f"pool{pools}", nn.MaxPool2d(2)))
            height, width = height // 2, width // 2
    n = len(widths)
    layers += [("flatten", nn.Flatten()),
               ("fc1", nn.Linear(channels * height * width, fc_width)),
               (f"act{n + 1}", nn.LeakyReLU(slope)),
               ("fc2", nn.Linear(fc_width, num_classes))]
    model = nn.Sequential(OrderedDict(layers))
    if init == "he":
        _he_init(model, slope)
    model.reversible_trunk = tuple(name for name, m in layers if isinstance(m, (nn.Conv2d, nn.Linear)))
    return model


def rnl_small(input_shape, num_classes, *, widths=(8, 8, 16, 16, 32, 32), kernel: int = 3,
              fc_width: int = 64, slope: float = 0.01, max_pools: int = 3, init: str = "he"):
    """Table 1's pattern narrowed for CPU runs on 28x28 and 8x8 data (see the module doc)."""
    return rnl_nn(input_shape, num_classes, widths=widths, kernel=kernel, fc_width=fc_width,
                  slope=slope, max_pools=max_pools, init=init)


@hookimpl
def harness_register_architectures(register):
    register("rnl_nn", rnl_nn, "paper 002 Table 1: six 5x5 convs 32-32-64-64-128-128, leaky "
                               "ReLU, pooling, FC 2048-256-N (1.3M parameters on CIFAR-10)")
    register("rnl_small", rnl_small, "paper 002 Table 1's pattern narrowed (8-8-16-16-32-32, "
                                     "3x3, FC 64) for 28x28 and 8x8 data")

"""Paper 003's networks: CI-CNN (a reduced AlexNet), its small instance, and ResNet-26.

CI-CNN (Sec. 4.1.1): "five convolutional layers and three fully-connected layers, but the
numbers of kernels in each layer are all reduced to about 1/2 to 1/4 of the ones in AlexNet",
every kernel 3x3, under 10% of AlexNet's parameters (Sec. 4.2). The paper gives no widths, so
this module fixes one consistent instance (a reading): AlexNet's 96-256-384-384-256 kernels
halved to 48-128-192-192-128, 2x2 max pooling where AlexNet pools (after conv1, conv2 and conv5),
and FCs 1024-512-N in place of AlexNet's 4096-4096-1000. On 32x32x3 inputs with 10 classes that
is 3,459,530 parameters, 5.7% of AlexNet's 61.1M (torchvision's) (`CI_CNN_PARAMETERS_C10`).

``ci_cnn_small`` is the same pattern narrowed (8-16-24-24-16, FC 128-64) for 28x28 and 8x8
offline data on a 2-core CPU. Pooling happens only while the sides stay even (28 -> 14 -> 7,
32 -> 16 -> 8 -> 4, 8 -> 4 -> 2 -> 1), so one factory serves every size.

Every child is Conv2d / ReLU / MaxPool2d(2) / Flatten / Linear and every weight layer is in
``reversible_trunk``, so the shared reverse construction (``plugins.reverse``) builds the
mirrored decoder T1 of CETL: three FCs reversed, then alternating unpooling (nearest) and
deconvolution (the transposed convolutions), each with the forward layer's kernel count.

``resnet26`` is the distillation teacher of Table 4 (ResNet-26, after Yim et al. 2017): the
ResNet-(6n+2) of ``plugins.architectures.resnet`` with n = 4 blocks per stage.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from harness.api import UserError, check_choice, hookimpl

from .resnet import cifar_resnet

ALEXNET_WIDTHS = (96, 256, 384, 384, 256)
CI_CNN_WIDTHS = (48, 128, 192, 192, 128)
CI_CNN_FC = (1024, 512)
CI_CNN_PARAMETERS_C10 = 3_459_530
ALEXNET_PARAMETERS = 61_100_840  # torchvision's AlexNet, 1000 classes
#: after which convolutions AlexNet pools (1-based)
POOL_AFTER = (1, 2, 5)


def _widths(value, key: str, count: int) -> tuple[int, ...]:
    values = tuple(value) if isinstance(value, (list, tuple)) else ()
    if len(values) != count or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                       for v in values):
        raise UserError(f"{key} must be {count} positive whole numbers, got {value!r}", key=key)
    return values


def he_init(model: nn.Module) -> None:
    """Kaiming-normal weights for ReLU (fan in), zero biases. Why: PyTorch's default (uniform,
    a = sqrt(5)) shrinks the signal at every layer, and this eight-layer network without batch
    norm then sat at chance for whole runs in the pilots (a narrow student on digits: 0.10 test
    accuracy after 18 epochs), as paper 002's network did (plugins/architectures/reversible.py)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)


def ci_cnn(input_shape, num_classes, *, widths=CI_CNN_WIDTHS, fc=CI_CNN_FC, init: str = "he"):
    """Five 3x3 convolutions (ReLU; 2x2 max pooling after conv1, conv2, conv5 while the sides
    are even), then FC ``fc[0]`` -> FC ``fc[1]`` -> FC to the classes (the logits). ``init``:
    ``he`` (Kaiming normal, zero biases) or ``torch`` (PyTorch's default)."""
    check_choice(init, "init", ("he", "torch"), hint="he (Kaiming for ReLU) or torch (PyTorch's "
                                                      "default)")
    if len(input_shape) != 3:
        raise UserError(f"ci_cnn needs image inputs (channels, height, width), got shape "
                        f"{tuple(input_shape)}", key="architecture", hint="use mi_mlp for flat inputs")
    widths, fc = _widths(widths, "widths", 5), _widths(fc, "fc", 2)
    channels, height, width = (int(s) for s in input_shape)
    layers: list[tuple[str, nn.Module]] = []
    pools = 0
    for i, w in enumerate(widths, start=1):
        layers += [(f"conv{i}", nn.Conv2d(channels, w, 3, padding=1)), (f"relu{i}", nn.ReLU())]
        channels = w
        if i in POOL_AFTER and height % 2 == 0 and width % 2 == 0:
            pools += 1
            layers.append((f"pool{pools}", nn.MaxPool2d(2)))
            height, width = height // 2, width // 2
    layers += [("flatten", nn.Flatten()),
               ("fc1", nn.Linear(channels * height * width, fc[0])), ("relu6", nn.ReLU()),
               ("fc2", nn.Linear(fc[0], fc[1])), ("relu7", nn.ReLU()),
               ("fc3", nn.Linear(fc[1], num_classes))]
    model = nn.Sequential(OrderedDict(layers))
    if init == "he":
        he_init(model)
    model.reversible_trunk = tuple(n for n, m in layers if isinstance(m, (nn.Conv2d, nn.Linear)))
    return model


def ci_cnn_small(input_shape, num_classes, *, widths=(8, 16, 24, 24, 16), fc=(128, 64),
                 init: str = "he"):
    """CI-CNN's pattern narrowed for CPU runs on 28x28 and 8x8 data (see the module doc)."""
    return ci_cnn(input_shape, num_classes, widths=widths, fc=fc, init=init)


def resnet26(input_shape, num_classes, *, width: int = 16, stem_stride: int = 1):
    """ResNet-26: three stages of four basic blocks (16/32/64 channels); ``stem_stride: 2``
    halves 28x28 inputs first, as ``resnet_small`` does, to keep CPU runs short."""
    return cifar_resnet(input_shape, num_classes, blocks=4, width=width, stem_stride=stem_stride)


@hookimpl
def harness_register_architectures(register):
    register("ci_cnn", ci_cnn, "paper 003's CI-CNN: a reduced AlexNet, five 3x3 convs "
                               "48-128-192-192-128 and FCs 1024-512-N (3.46M parameters on CIFAR-10)")
    register("ci_cnn_small", ci_cnn_small, "CI-CNN's pattern narrowed (8-16-24-24-16, FC 128-64) "
                                           "for 28x28 and 8x8 data")
    register("resnet26", resnet26, "ResNet-26 (4 basic blocks per stage): paper 003's "
                                   "distillation teacher")

"""The shared reverse construction (plugins/reverse.py): every reverse operation is the adjoint of
its forward linear part, both bias rules against hand computation, a decoder with its own
weights, and racecar's numbers equal to the construction written out by hand."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.api import Batch, MethodContext, Split, UserError
from plugins.architectures.reversible import rnl_small
from plugins.architectures.small import mnist_cnn
from plugins.methods.racecar import Racecar
from plugins.reverse import (ReverseNet, add_channel_bias, parse_trunk, transpose_linear_part,
                             unpool, weight_layers)

pytestmark = pytest.mark.usefixtures("one_thread")


def seq(**layers):
    return nn.Sequential(OrderedDict(layers))


def inner(a, b):
    return float((a.detach().double() * b.detach().double()).sum())


def ctx_for(shape, classes=10):
    return MethodContext(stage="A", seed=0, epochs=1, num_classes=classes, input_shape=shape,
                         train=Split(torch.zeros(1, *shape), torch.zeros(1, dtype=torch.long)),
                         device=torch.device("cpu"))


# ------------------------------------------------------------------------------------------------
# Adjoints of every layer type: <A x, y> = <x, A^T y>
# ------------------------------------------------------------------------------------------------
def test_linear_and_a_given_weight_are_adjoints():
    torch.manual_seed(0)
    layer = nn.Linear(7, 5).double()
    other = torch.randn(5, 7, dtype=torch.float64)
    x, y = torch.randn(3, 7, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    assert inner(layer(x) - layer.bias, y) == pytest.approx(
        inner(x, transpose_linear_part(layer, y, x.shape)), rel=1e-12)
    # a decoder's own weight replaces the layer's: the adjoint of x -> x W'^T
    assert inner(x @ other.T, y) == pytest.approx(
        inner(x, transpose_linear_part(layer, y, x.shape, other)), rel=1e-12)


@pytest.mark.parametrize("conv_impl", ["transpose", "flipped"])
@pytest.mark.parametrize("k,stride,padding,dilation,size", [
    (5, 1, 2, 1, (32, 32)), (3, 2, 1, 1, (9, 10)), (5, 1, 2, 1, (7, 7)), (3, 1, 1, 1, (1, 1)),
    (3, 1, 0, 1, (6, 5)), (3, 1, 2, 2, (8, 8))])
def test_conv_transpose_is_the_adjoint(k, stride, padding, dilation, size, conv_impl):
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 4, k, stride=stride, padding=padding, dilation=dilation).double()
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    fx = conv(x) - conv.bias.view(1, -1, 1, 1)
    y = torch.randn_like(fx)
    back = transpose_linear_part(conv, y, x.shape, conv=conv_impl)
    assert back.shape == x.shape
    assert inner(fx, y) == pytest.approx(inner(x, back), rel=1e-10)
    own = torch.randn_like(conv.weight)
    assert inner(F.conv2d(x, own, None, stride, padding, dilation), y) == pytest.approx(
        inner(x, transpose_linear_part(conv, y, x.shape, own, conv_impl)), rel=1e-10)


def test_pooling_and_flatten_reverses_are_adjoints():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 8, 6, dtype=torch.float64)
    y = torch.randn(2, 3, 4, 3, dtype=torch.float64)
    assert inner(F.avg_pool2d(x, 2) * 4, y) == pytest.approx(inner(x, unpool(y, (8, 6))), rel=1e-12)
    flat = torch.randn(2, 3 * 8 * 6, dtype=torch.float64)
    assert inner(x.flatten(1), flat) == pytest.approx(inner(x, flat.reshape(x.shape)), rel=1e-12)


@pytest.mark.parametrize("bias", ["subtract_own", "add_previous"])
@pytest.mark.parametrize("weights", ["shared", "own"])
@pytest.mark.parametrize("conv_impl", ["transpose", "flipped"])
def test_whole_reverse_of_a_linear_network_is_its_adjoint(bias, weights, conv_impl):
    """Without biases and with identity activations every step is linear, so the reverse from
    the output must be the exact adjoint of the whole forward (average pools count 1/4)."""
    torch.manual_seed(3)
    model = seq(conv1=nn.Conv2d(2, 3, 5, padding=2, bias=False), act1=nn.Identity(),
                conv2=nn.Conv2d(3, 3, 3, padding=1, bias=False), act2=nn.Identity(),
                pool1=nn.AvgPool2d(2), flatten=nn.Flatten(),
                fc1=nn.Linear(3 * 4 * 4, 6, bias=False), act3=nn.Identity(),
                fc2=nn.Linear(6, 4, bias=False)).double()
    rev = ReverseNet(model, trunk=weight_layers(model), bias=bias, input_activation=False,
                     weights=weights, conv=conv_impl)
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    cap = rev.capture(x)
    assert torch.equal(cap.output, model(x))
    y = torch.randn_like(cap.output)
    image = rev.to_image(rev.run(y, rev.depth - 1, cap)[0], cap)
    assert image.shape == x.shape
    assert inner(cap.output, y) == pytest.approx(inner(x, image) / 4, rel=1e-10)


# ------------------------------------------------------------------------------------------------
# The bias rules, by hand
# ------------------------------------------------------------------------------------------------
def _two_layer():
    torch.manual_seed(4)
    model = seq(fc1=nn.Linear(3, 4), act1=nn.LeakyReLU(0.1), fc2=nn.Linear(4, 2)).double()
    p = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    return model, p


def _leaky(z, slope=0.1):
    return np.where(z > 0, z, slope * z)


def test_subtract_own_bias_by_hand():
    model, p = _two_layer()
    rev = ReverseNet(model, trunk=("fc1", "fc2"), bias="subtract_own", input_activation=True)
    x = torch.randn(5, 3, dtype=torch.float64)
    cap = rev.capture(x)
    y = np.random.default_rng(0).normal(size=(5, 2))
    out = rev.run(torch.tensor(y), 1, cap)
    l2 = _leaky((y - p["fc2.bias"]) @ p["fc2.weight"])          # act of the layer below
    l1 = _leaky((l2 - p["fc1.bias"]) @ p["fc1.weight"])         # the input: layer 1's act
    assert np.allclose(out[1].detach().numpy(), l2, rtol=1e-12) and np.allclose(out[0].detach().numpy(), l1, rtol=1e-12)


def test_add_previous_bias_by_hand():
    """Paper 002, Eq. 4: gamma(o W_t^T + b_{t-1}); the input step has no previous bias."""
    model, p = _two_layer()
    rev = ReverseNet(model, trunk=("fc1", "fc2"), bias="add_previous", input_activation=False)
    x = torch.randn(5, 3, dtype=torch.float64)
    cap = rev.capture(x)
    o = np.random.default_rng(1).dirichlet(np.ones(2), size=5)
    out = rev.run(torch.tensor(o), 1, cap)
    alpha = _leaky(o @ p["fc2.weight"] + p["fc1.bias"])
    assert np.allclose(out[1].detach().numpy(), alpha, rtol=1e-12)
    assert np.allclose(out[0].detach().numpy(), alpha @ p["fc1.weight"], rtol=1e-12)


def test_previous_conv_bias_is_per_channel_across_a_flatten():
    bias = torch.tensor([1.0, 10.0])
    z = torch.zeros(1, 2, 2, 2)
    assert torch.equal(add_channel_bias(z.flatten(1), bias).reshape(z.shape), add_channel_bias(z, bias))
    assert add_channel_bias(z.flatten(1), bias).tolist() == [[1, 1, 1, 1, 10, 10, 10, 10]]
    assert add_channel_bias(torch.zeros(1, 2), bias).tolist() == [[1, 10]]


def test_rnl_network_reverse_shapes_and_the_conv_bias_after_fc1():
    model = rnl_small((1, 28, 28), 20)
    rev = ReverseNet(model, trunk=weight_layers(model), bias="add_previous",
                     input_activation=False)
    assert [b.name for b in rev.spec.blocks] == [f"conv{i}" for i in range(1, 7)] + ["fc1", "fc2"]
    x = torch.rand(3, 1, 28, 28)
    cap = rev.capture(x)
    out = rev.run(F.softmax(cap.output, 1), rev.depth - 1, cap)
    assert [tuple(out[k].shape[1:]) for k in range(rev.depth)] == \
        [tuple(t.shape[1:]) for t in cap.inputs]
    # step fc1 -> conv6's space: W_fc1^T o' + b_conv6 per channel, then conv6's leaky ReLU
    fc1 = rev.depth - 2
    r = out[fc1 + 1]
    want = F.leaky_relu(add_channel_bias(r @ model.fc1.weight, model.conv6.bias), 0.01)
    assert torch.allclose(out[fc1], want)


# ------------------------------------------------------------------------------------------------
# A decoder with its own weights
# ------------------------------------------------------------------------------------------------
def test_decoder_with_own_weights_starts_equal_and_then_is_its_own():
    torch.manual_seed(5)
    model = rnl_small((1, 8, 8), 10)
    shared = ReverseNet(model, trunk=weight_layers(model), bias="add_previous")
    own = ReverseNet(model, trunk=weight_layers(model), bias="add_previous", weights="own")
    x = torch.rand(4, 1, 8, 8)
    cap = shared.capture(x)
    o = F.softmax(cap.output, 1)
    assert torch.equal(shared.run(o, 7, cap)[0], own.run(o, 7, cap)[0])
    # its parameters are its own: copies, in its state dict, and trained apart from the model
    assert len(list(own.parameters())) == 2 * 8 and not list(shared.parameters())
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(own.parameters(), model.parameters()))
    own.run(o.detach(), 7, cap)[0].sum().backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None for p in own.own_weight)
    with torch.no_grad():
        model.conv1.weight.mul_(2)
    assert not torch.equal(shared.run(o, 7, cap)[0], own.run(o, 7, cap)[0])


# ------------------------------------------------------------------------------------------------
# Racecar's numbers are the construction written out by hand
# ------------------------------------------------------------------------------------------------
def test_racecar_loss_on_mnist_cnn_equals_the_hand_written_reverse():
    torch.manual_seed(6)
    model = mnist_cnn((1, 28, 28), 10, width=4)
    rr = Racecar(model, ctx_for((1, 28, 28)), layers=3, weight=[1.0, 0.5, 0.25])
    x = torch.rand(3, 1, 28, 28)
    got = rr.loss(Batch(x, torch.tensor([1, 2, 3]), None))["racecar"]
    c1, c2, c3 = model.conv1, model.conv2, model.conv3
    l2 = F.max_pool2d(F.relu(c1(x)), 2)
    l3 = F.max_pool2d(F.relu(c2(l2)), 2)
    top = F.relu(c3(l3))
    r3 = F.relu(F.conv_transpose2d(top - c3.bias.view(1, -1, 1, 1), c3.weight, padding=1))
    r2 = F.relu(F.conv_transpose2d(unpool(r3, (14, 14)) - c2.bias.view(1, -1, 1, 1), c2.weight,
                                   padding=1))
    r1 = F.relu(F.conv_transpose2d(unpool(r2, (28, 28)) - c1.bias.view(1, -1, 1, 1), c1.weight,
                                   padding=1))
    want = 0.5 * (1.0 * (x - r1).pow(2).sum() + 0.5 * (l2 - r2).pow(2).sum()
                  + 0.25 * (l3 - r3).pow(2).sum())
    assert torch.equal(got, want)


def test_refusals_name_the_layer_and_the_options():
    with pytest.raises(UserError, match="cannot reverse layer 'drop'"):
        parse_trunk(seq(fc1=nn.Linear(4, 4), drop=nn.Dropout(0.1), fc2=nn.Linear(4, 2)),
                    ("fc1", "fc2"))
    model = seq(fc=nn.Linear(2, 2))
    for opts, key in (({"bias": "own"}, "bias"), ({"weights": "copy"}, "weights"),
                      ({"reverse_bn": "x"}, "reverse_bn"), ({"input_activation": 1}, "input_activation"),
                      ({"conv": "fft"}, "conv")):
        with pytest.raises(UserError) as err:
            ReverseNet(model, trunk=["fc"], **opts)
        assert err.value.key == key

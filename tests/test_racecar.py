"""Racecar: the derived reverse operations are adjoints, the loss matches hand computation, the
construction refuses what it cannot reverse, and training makes the input regenerable."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.api import Batch, MethodContext, Split, UserError
from plugins.architectures.small import mi_mlp, mnist_cnn
from plugins.architectures.vgg import vgg_cifar
from plugins.methods.racecar import Racecar, ReversePass, parse_trunk, transpose_linear_part, unpool


pytestmark = pytest.mark.usefixtures("one_thread")


def ctx_for(shape, classes=10, seed=0):
    return MethodContext(stage="A", seed=seed, epochs=1, num_classes=classes, input_shape=shape,
                         train=Split(torch.zeros(1, *shape), torch.zeros(1, dtype=torch.long)),
                         device=torch.device("cpu"))


def seq(**layers):
    return nn.Sequential(OrderedDict(layers))


def inner(a, b):
    return float((a.detach().double() * b.detach().double()).sum())


# ------------------------------------------------------------------------------------------------
# Adjoints: <f(x), y> = <x, f^T(y)> for the linear part of every derived reverse operation
# ------------------------------------------------------------------------------------------------
def test_linear_transpose_is_the_adjoint():
    torch.manual_seed(0)
    layer = nn.Linear(7, 5).double()
    x, y = torch.randn(3, 7, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    fx = layer(x) - layer.bias
    assert inner(fx, y) == pytest.approx(inner(x, transpose_linear_part(layer, y, x.shape)), rel=1e-12)


@pytest.mark.parametrize("cfg", [
    dict(k=3, stride=1, padding=1, dilation=1, groups=1, size=(28, 28)),
    dict(k=3, stride=2, padding=1, dilation=1, groups=1, size=(9, 10)),   # odd sizes: output_padding
    dict(k=5, stride=3, padding=2, dilation=1, groups=1, size=(17, 16)),
    dict(k=3, stride=1, padding=2, dilation=2, groups=2, size=(11, 11)),
    dict(k=(3, 1), stride=(2, 1), padding=(1, 0), dilation=1, groups=1, size=(12, 7)),
])
def test_conv_transpose_is_the_adjoint(cfg):
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, cfg["k"], stride=cfg["stride"], padding=cfg["padding"],
                     dilation=cfg["dilation"], groups=cfg["groups"]).double()
    x = torch.randn(2, 4, *cfg["size"], dtype=torch.float64)
    fx = conv(x) - conv.bias.view(1, -1, 1, 1)
    y = torch.randn_like(fx)
    back = transpose_linear_part(conv, y, x.shape)
    assert back.shape == x.shape
    assert inner(fx, y) == pytest.approx(inner(x, back), rel=1e-10)


def test_nearest_upsampling_is_the_adjoint_of_sum_pooling():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 8, 6, dtype=torch.float64)
    y = torch.randn(2, 3, 4, 3, dtype=torch.float64)
    sum_pool = F.avg_pool2d(x, 2) * 4
    assert inner(sum_pool, y) == pytest.approx(inner(x, unpool(y, (8, 6))), rel=1e-12)
    # and it is what undoes a max pool: every pixel of a window gets the window's value
    up = unpool(torch.tensor([[[[1.0, 2.0]]]]), (2, 4))
    assert up.tolist() == [[[[1, 1, 2, 2], [1, 1, 2, 2]]]]


def test_whole_linear_reverse_of_a_trunk_is_the_adjoint_of_its_forward():
    """With identity activations and no biases the trunk is linear (convs and average pools), so
    the reverse pass must be its exact adjoint end to end."""
    torch.manual_seed(3)
    model = seq(conv1=nn.Conv2d(2, 3, 3, padding=1, bias=False), act1=nn.Identity(),
                pool1=nn.AvgPool2d(2), conv2=nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False),
                flat=nn.Flatten(), fc=nn.Linear(4 * 3 * 3, 5, bias=False)).double()
    model.reversible_trunk = ("conv1", "conv2", "fc")
    rev = ReversePass(model, input_activation=False)
    x = torch.randn(2, 2, 12, 12, dtype=torch.float64)
    out, inputs, outputs, shapes = rev.capture(x)
    y = torch.randn_like(out)
    outputs = [*outputs[:-1], y]  # start the reverse from an arbitrary y at the top
    regenerated = rev.regenerate(inputs, outputs, shapes)
    # average pooling is sum pooling / 4, whose adjoint is nearest upsampling / 4
    assert inner(out, y) == pytest.approx(inner(x, regenerated[0]) / 4, rel=1e-10)


# ------------------------------------------------------------------------------------------------
# The loss
# ------------------------------------------------------------------------------------------------
def test_racecar_loss_by_hand_one_unit():
    """x = 1, w = 2, b = 0.5, relu: L2 = relu(2*1 + 0.5) = 2.5; the reverse is
    L'1 = relu(2 * (2.5 - 0.5)) = 4, so the loss is lambda * 1/2 * (1 - 4)^2 = 4.5 lambda."""
    model = seq(fc1=nn.Linear(1, 1), act1=nn.ReLU(), head=nn.Linear(1, 2))
    model.reversible_trunk = ("fc1",)
    with torch.no_grad():
        model.fc1.weight.fill_(2.0)
        model.fc1.bias.fill_(0.5)
    x = torch.ones(1, 1)
    rr = Racecar(model, ctx_for((1,), 2), weight=0.1)
    terms = rr.loss(Batch(x, torch.zeros(1, dtype=torch.long), torch.zeros(1)))
    assert terms["racecar"].item() == pytest.approx(0.45)
    assert terms["task"].item() == pytest.approx(F.cross_entropy(model(x), torch.tensor([0])).item())
    rr_l2 = Racecar(model, ctx_for((1,), 2), weight=0.1, loss_form="l2")
    assert rr_l2.loss(Batch(x, torch.zeros(1, dtype=torch.long), None))["racecar"].item() == \
        pytest.approx(0.3)


def _numpy_two_layer(x, w1, b1, w2, b2, lam, layers, start):
    h1 = np.tanh(x @ w1.T + b1)
    h2 = np.tanh(h1 @ w2.T + b2)
    if layers == 2 or start == "trunk":
        l2p = np.tanh((h2 - b2) @ w2)           # activation of the layer below (tanh of layer 1)
        r1 = l2p
    else:
        l2p, r1 = None, h1                       # RR^1 from layer 1's own output
    l1p = np.tanh((r1 - b1) @ w1)               # the input gets layer 1's activation (Table 7)
    loss = lam[0] * 0.5 * ((x - l1p) ** 2).sum()
    if layers == 2:
        loss += lam[1] * 0.5 * ((h1 - l2p) ** 2).sum()
    return loss


@pytest.mark.parametrize("layers,start", [(2, "constrained"), (1, "constrained"), (1, "trunk")])
def test_racecar_loss_against_numpy(layers, start):
    torch.manual_seed(4)
    model = mi_mlp((3,), 2, widths=(4,))  # 3-4-2 with tanh after both layers
    assert model.reversible_trunk == ("fc1", "fc2")
    lam = [0.3, 0.05][:layers]
    rr = Racecar(model, ctx_for((3,), 2), layers=layers, weight=lam, start=start)
    x = torch.rand(5, 3)
    got = rr.loss(Batch(x, torch.zeros(5, dtype=torch.long), None))["racecar"].item()
    p = {k: v.detach().numpy().astype(np.float64) for k, v in model.state_dict().items()}
    want = _numpy_two_layer(x.numpy().astype(np.float64), p["fc1.weight"], p["fc1.bias"],
                            p["fc2.weight"], p["fc2.bias"], lam, layers, start)
    assert got == pytest.approx(want, rel=1e-5)


def test_mnist_cnn_reverse_shapes_and_comparison_points():
    model = mnist_cnn((1, 28, 28), 10, width=8)
    rev = ReversePass(model)
    assert [b.name for b in rev.spec.blocks] == ["conv1", "conv2", "conv3"]
    x = torch.rand(4, 1, 28, 28)
    image, inputs, regenerated = rev.regenerate_input(x)
    assert image.shape == x.shape
    # L_2 and L_3 are compared after the pooling (at 14x14 and 7x7), as in Table 9
    assert [tuple(t.shape[1:]) for t in inputs] == [(1, 28, 28), (8, 14, 14), (8, 7, 7)]
    assert [t.shape for t in regenerated] == [t.shape for t in inputs]
    assert all(bool((t >= 0).all()) for t in regenerated)  # relu of the layer below
    assert torch.equal(inputs[0], x)


def test_racecar_gradient_reaches_every_trunk_weight():
    model = mnist_cnn((1, 28, 28), 10, width=4)
    rr = Racecar(model, ctx_for((1, 28, 28)), weight=1.0)
    terms = rr.loss(Batch(torch.rand(3, 1, 28, 28), torch.tensor([1, 2, 3]), None))
    terms["racecar"].backward()
    for name in ("conv1", "conv2", "conv3"):
        assert getattr(model, name).weight.grad.abs().sum() > 0
    assert model.fc.weight.grad is None  # the head is not in the racecar loss


def test_batch_norm_reverse_reading_and_its_option():
    torch.manual_seed(5)
    model = vgg_cifar((3, 32, 32), 10, width=2, fc_width=8)
    x = torch.rand(6, 3, 32, 32)
    rr = Racecar(model, ctx_for((3, 32, 32)), weight=1e-3)
    assert rr.reverse.depth == 13 and rr.reverse.input_bn is not None
    # the input BN is the method's own: trained and checkpointed with it, not with the model
    assert any(k.startswith("reverse.input_bn.") for k in rr.state_dict())
    assert not any(k.startswith("model.") and "input_bn" in k for k in rr.state_dict())
    _, inputs, outputs, shapes = rr.reverse.capture(x)
    before = model.bn1.running_mean.clone()
    rr.reverse.regenerate(inputs, outputs, shapes)
    assert torch.equal(model.bn1.running_mean, before)  # default: forward statistics untouched
    tf_like = Racecar(model, ctx_for((3, 32, 32)), reverse_bn="running")
    tf_like.reverse.regenerate(inputs, outputs, shapes)
    assert not torch.equal(model.bn1.running_mean, before)  # the authors' TF behaviour


def test_state_dict_has_no_duplicate_of_the_model():
    model = mi_mlp((12,), 2)
    rr = Racecar(model, ctx_for((12,), 2))
    assert set(rr.state_dict()) == {f"model.{k}" for k in model.state_dict()}


# ------------------------------------------------------------------------------------------------
# Refusals
# ------------------------------------------------------------------------------------------------
class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return x + self.fc(x)


@pytest.mark.parametrize("model,trunk,needle", [
    (seq(fc1=nn.Linear(4, 4), drop=nn.Dropout(0.1), fc2=nn.Linear(4, 2)), ("fc1", "fc2"), "'drop'"),
    (seq(fc1=nn.Linear(4, 4), res=Residual(), fc2=nn.Linear(4, 2)), ("fc1", "fc2"), "'res'"),
    (seq(c1=nn.Conv1d(1, 2, 3), fc=nn.Linear(2, 2)), ("c1",), "'c1'"),
    (seq(c1=nn.Conv2d(1, 2, 3), p=nn.MaxPool2d(3, 2), c2=nn.Conv2d(2, 2, 3)), ("c1", "c2"), "overlap"),
    (seq(c1=nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect")), ("c1",), "padding_mode"),
    (seq(fc1=nn.Linear(4, 4), fc2=nn.Linear(4, 2)), ("fc2",), "before trunk layer 'fc2'"),
    (seq(fc1=nn.Linear(4, 4), fc2=nn.Linear(4, 2)), ("fc1", "fc9"), "'fc9' is not a child"),
    (seq(fc1=nn.Linear(4, 4), a=nn.Tanh(), b=nn.ReLU(), fc2=nn.Linear(4, 2)), ("fc1", "fc2"), "'b'"),
])
def test_unsupported_trunks_are_refused_by_name(model, trunk, needle):
    with pytest.raises(UserError) as err:
        parse_trunk(model, trunk)
    assert needle in str(err.value) and err.value.key == "trunk"


def test_missing_trunk_and_non_sequential_are_refused():
    with pytest.raises(UserError, match="declares no reversible trunk"):
        ReversePass(seq(fc=nn.Linear(2, 2)))
    with pytest.raises(UserError, match="nn.Sequential"):
        ReversePass(Residual(), trunk=["fc"])
    # an undeclared Sequential can still be reversed by naming its trunk
    assert ReversePass(seq(fc=nn.Linear(2, 2), act=nn.Tanh()), trunk=["fc"]).depth == 1


def test_bad_method_options_are_user_errors():
    model = mi_mlp((12,), 2)
    for opts, key in (({"layers": 7}, "layers"), ({"layers": 0}, "layers"),
                      ({"layers": 2, "weight": [1.0]}, "weight"), ({"weight": "1e-2"}, "weight"),
                      ({"loss_form": "l1"}, "loss_form"), ({"start": "top"}, "start"),
                      ({"reverse_bn": "own"}, "reverse_bn")):
        with pytest.raises(UserError) as err:
            Racecar(model, ctx_for((12,), 2), **opts)
        assert err.value.key == key


# ------------------------------------------------------------------------------------------------
# Training effect
# ------------------------------------------------------------------------------------------------
def test_racecar_training_makes_the_input_regenerable():
    """Same data, seed and steps: the RR network regenerates digits far better than Std (Fig.
    5's effect; the transfer suite's smoke profile trains too few steps to show it)."""
    from harness.api import DatasetContext
    from plugins.architectures.small import small_cnn
    from plugins.datasets.offline import digits

    data = digits(DatasetContext(root="."))
    x, y, xt = data.train.x, data.train.y, data.test.x
    errors = {}
    for name in ("std", "rr"):
        torch.manual_seed(0)
        model = small_cnn((1, 8, 8), 10, width=8)
        rr = Racecar(model, ctx_for((1, 8, 8)), weight=1e-3)
        opt = torch.optim.Adam(rr.parameters(), 1e-3)
        for epoch in range(3):
            for i in range(0, len(x), 64):
                terms = rr.loss(Batch(x[i:i + 64], y[i:i + 64], None))
                loss = terms["task"] + (terms["racecar"] if name == "rr" else 0)
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            image, _, _ = rr.reverse.regenerate_input(xt)
            errors[name] = float((image - xt).pow(2).mean())
    blank = float(xt.pow(2).mean())  # the error of regenerating an empty image
    assert errors["rr"] < 0.5 * errors["std"], errors
    assert errors["rr"] < blank, (errors, blank)

"""RNL (paper 002): tr(o) changes exactly the entries it should, L_fb and the hard-sample CE
against hand computation, where gradients flow, the options refused, the Table 1 network's
parameter count, and training makes the input regenerable from the softmax."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.api import Batch, DatasetContext, EvalContext, MethodContext, Split, UserError
from plugins.architectures.reversible import TABLE1_PARAMETERS_C10, rnl_nn, rnl_small
from plugins.evaluators.reconstruction import Reconstruction
from plugins.methods.rnl import RNL, feedback_loss, transform_likelihood
from plugins.methods.std import Std

pytestmark = pytest.mark.usefixtures("one_thread")


def ctx_for(shape, classes=10):
    return MethodContext(stage="A", seed=0, epochs=1, num_classes=classes, input_shape=shape,
                         train=Split(torch.zeros(1, *shape), torch.zeros(1, dtype=torch.long)),
                         device=torch.device("cpu"))


def batch(x, y):
    return Batch(x, y, torch.arange(len(y)))


# ------------------------------------------------------------------------------------------------
# tr(o)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("entries", [1, 3])
def test_transform_raises_exactly_the_chosen_non_target_entries(entries):
    torch.manual_seed(0)
    o = F.softmax(torch.randn(200, 10) * 3, dim=1)
    y = torch.randint(0, 10, (200,))
    t = transform_likelihood(o, y, entries=entries, closeness=0.9, renormalise=False)
    changed = t != o
    assert (changed.sum(dim=1) == entries).all()          # exactly `entries` per row ...
    assert not changed.gather(1, y.view(-1, 1)).any()      # ... never the label's
    peak = o.max(dim=1, keepdim=True).values
    assert torch.allclose(t[changed], (0.9 * peak).expand_as(o)[changed])
    # every non-target class gets chosen sometimes (uniform among the others)
    counts = torch.zeros(10)
    for _ in range(20):
        c = transform_likelihood(o, y, entries=entries, renormalise=False) != o
        counts += c.sum(dim=0)
    assert (counts > 0).all()


def test_renormalised_transform_is_a_distribution_with_the_same_ratios():
    torch.manual_seed(1)
    o = F.softmax(torch.randn(50, 5), dim=1)
    y = torch.randint(0, 5, (50,))
    g = torch.Generator().manual_seed(3)
    raw = transform_likelihood(o, y, renormalise=False, generator=g)
    g = torch.Generator().manual_seed(3)
    t = transform_likelihood(o, y, renormalise=True, generator=g)
    assert torch.allclose(t.sum(dim=1), torch.ones(50))
    assert torch.allclose(t, raw / raw.sum(dim=1, keepdim=True))


def test_with_two_classes_the_wrong_class_reaches_0_95_of_the_max():
    o = torch.tensor([[0.8, 0.2], [0.3, 0.7]])
    t = transform_likelihood(o, torch.tensor([0, 1]), renormalise=False)
    assert torch.allclose(t, torch.tensor([[0.8, 0.76], [0.665, 0.7]]))


# ------------------------------------------------------------------------------------------------
# L_fb and the hard-sample CE by hand
# ------------------------------------------------------------------------------------------------
def test_feedback_loss_by_hand():
    x = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]], [[[0.0, 0.0], [0.0, 1.0]]]])
    x_bar = torch.tensor([[[[0.0, 0.0], [0.5, 1.5]]], [[[1.0, 1.0], [0.0, 1.0]]]])
    # per sample: 1 + 0 + 0 + 1 = 2 and 1 + 1 + 0 + 0 = 2; mean over the batch 2; per pixel 0.5
    assert feedback_loss(x, x_bar, "sum").item() == pytest.approx(2.0)
    assert feedback_loss(x, x_bar, "mean").item() == pytest.approx(0.5)


def _mlp():
    torch.manual_seed(2)
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(3, 4), act1=nn.LeakyReLU(0.2),
                                      fc2=nn.Linear(4, 2))).double()
    return model, {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _np_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _np_ce(logits, y):
    return float(-np.log(_np_softmax(logits)[np.arange(len(y)), y]).mean())


def test_rnl_terms_against_numpy():
    """Two classes, so tr(o) is deterministic: the wrong class set to 0.95 max, renormalised."""
    model, p = _mlp()
    leaky = lambda z: np.where(z > 0, z, 0.2 * z)  # noqa: E731
    x = np.random.default_rng(0).random((6, 3))
    y = np.array([0, 1, 1, 0, 1, 0])
    rnl = RNL(model, ctx_for((3,), 2), weight=0.5, hard_weight=2.0)
    terms = rnl.loss(batch(torch.tensor(x), torch.tensor(y)))
    logits = leaky(x @ p["fc1.weight"].T + p["fc1.bias"]) @ p["fc2.weight"].T + p["fc2.bias"]
    o = _np_softmax(logits)
    x_bar = leaky(o @ p["fc2.weight"] + p["fc1.bias"]) @ p["fc1.weight"]   # Eq. 4, then linear
    t = o.copy()
    t[np.arange(6), 1 - y] = 0.95 * o.max(axis=1)
    t /= t.sum(axis=1, keepdims=True)
    alpha_hat = leaky(t @ p["fc2.weight"] + p["fc1.bias"])                 # Eq. 8
    hard_logits = alpha_hat @ p["fc2.weight"].T + p["fc2.bias"]
    assert terms["task"].item() == pytest.approx(_np_ce(logits, y), rel=1e-10)
    assert terms["feedback"].item() == pytest.approx(0.5 * ((x - x_bar) ** 2).sum(1).mean(), rel=1e-10)
    assert terms["hard"].item() == pytest.approx(2.0 * _np_ce(hard_logits, y), rel=1e-10)
    assert set(RNL(model, ctx_for((3,), 2), hard=False).loss(
        batch(torch.tensor(x), torch.tensor(y)))) == {"task", "feedback"}


@pytest.mark.parametrize("mode,fc1_weight,fc1_bias", [("full", True, True), ("latent", False, True),
                                                     ("none", False, False)])
def test_where_the_hard_sample_gradient_flows(mode, fc1_weight, fc1_bias):
    model, _ = _mlp()
    rnl = RNL(model, ctx_for((3,), 2), hard_grad=mode)
    rnl.loss(batch(torch.rand(4, 3, dtype=torch.float64), torch.tensor([0, 1, 0, 1])))["hard"].backward()
    grad = lambda t: t.grad is not None and t.grad.abs().sum() > 0  # noqa: E731
    assert grad(model.fc1.weight) == fc1_weight   # through o into the forward pass
    assert grad(model.fc1.bias) == fc1_bias       # b_{t-1} of Eq. 8 (and the forward)
    assert grad(model.fc2.weight)                 # the last layer is always trained


def test_feedback_gradient_reaches_every_layer_of_the_conv_network():
    model = rnl_small((1, 28, 28), 20)
    rnl = RNL(model, ctx_for((1, 28, 28), 20))
    terms = rnl.loss(batch(torch.rand(3, 1, 28, 28), torch.tensor([1, 12, 19])))
    terms["feedback"].backward()
    for name, module in model.named_children():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert module.weight.grad.abs().sum() > 0, name
    assert set(rnl.state_dict()) == {f"model.{k}" for k in model.state_dict()}  # nothing duplicated


def test_bad_options_and_networks_are_refused():
    model = rnl_small((1, 8, 8), 10)
    for opts, key in (({"entries": 10}, "entries"), ({"entries": 0}, "entries"),
                      ({"closeness": 0}, "closeness"), ({"closeness": 1.5}, "closeness"),
                      ({"reduction": "l1"}, "reduction"), ({"hard_grad": "some"}, "hard_grad"),
                      ({"weight": -1}, "weight"), ({"hard": "yes"}, "hard")):
        with pytest.raises(UserError) as err:
            RNL(model, ctx_for((1, 8, 8)), **opts)
        assert err.value.key == key
    with pytest.raises(UserError, match=r"layers \['fc2'\] follow the last reversed layer"):
        RNL(_mlp()[0], ctx_for((3,), 2), trunk=["fc1"])  # the reverse must start at the logits


# ------------------------------------------------------------------------------------------------
# Architectures
# ------------------------------------------------------------------------------------------------
def test_table1_network_has_the_papers_parameter_count():
    model = rnl_nn((3, 32, 32), 10)
    n = sum(p.numel() for p in model.parameters())
    assert n == TABLE1_PARAMETERS_C10 and round(n / 1e6, 1) == 1.3   # Table 2: 1.3M
    assert model.fc1.in_features == 2048 and model.fc2.out_features == 10
    assert [m.kernel_size for m in model if isinstance(m, nn.Conv2d)] == [(5, 5)] * 6
    assert [m.out_channels for m in model if isinstance(m, nn.Conv2d)] == [32, 32, 64, 64, 128, 128]
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert sum(p.numel() for p in rnl_nn((3, 32, 32), 100).parameters()) == n + 90 * 257


def test_small_instance_fits_28x28_and_8x8():
    assert rnl_small((1, 28, 28), 20).fc1.in_features == 32 * 7 * 7   # two pools: 28 -> 7
    assert rnl_small((1, 8, 8), 10).fc1.in_features == 32              # three pools: 8 -> 1
    with pytest.raises(UserError):
        rnl_nn((3, 32, 32), 10, kernel=4)


# ------------------------------------------------------------------------------------------------
# Training effect (Fig. 2): the reversibly trained network regenerates its input from o
# ------------------------------------------------------------------------------------------------
def test_rnl_training_makes_the_input_regenerable_from_the_softmax(tmp_path):
    from plugins.datasets.offline import digits

    data = digits(DatasetContext(root="."))
    x, y = data.train.x, data.train.y
    errors = {}
    for name in ("std", "rnl"):
        torch.manual_seed(0)
        model = rnl_small((1, 8, 8), 10)
        method = Std(model, ctx_for((1, 8, 8))) if name == "std" else \
            RNL(model, ctx_for((1, 8, 8)), reduction="mean")
        opt = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9)
        for _ in range(3):
            for i in range(0, len(x), 128):
                loss = sum(method.loss(batch(x[i:i + 128], y[i:i + 128])).values())
                opt.zero_grad()
                loss.backward()
                opt.step()
        ev = Reconstruction(rule="rnl", images=0)
        errors[name] = ev.evaluate(method, EvalContext(data, 3, True, torch.device("cpu"),
                                                       tmp_path, 512))["recon_mse"]
    blank = float(data.test.x.pow(2).mean())
    assert errors["rnl"] < 0.5 * errors["std"] and errors["rnl"] < blank, (errors, blank)

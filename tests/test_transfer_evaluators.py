"""The reconstruction and information-plane evaluators: their numbers against references, their
files, and that they work for any method's model."""

from __future__ import annotations

import json
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from harness.api import DatasetContext, EvalContext, MethodContext, Split, UserError
from plugins.architectures.small import mi_mlp, mnist_cnn
from plugins.datasets.offline import ib12
from plugins.evaluators.mi_plane import MiPlane, binned_mi, entropy_bits
from plugins.evaluators.reconstruction import Reconstruction
from plugins.methods.racecar import Racecar
from plugins.methods.srip import Srip
from plugins.methods.std import Std


pytestmark = pytest.mark.usefixtures("one_thread")


def ctx_for(shape, classes=2):
    return MethodContext(stage="A", seed=0, epochs=1, num_classes=classes, input_shape=shape,
                         train=Split(torch.zeros(1, *shape), torch.zeros(1, dtype=torch.long)),
                         device=torch.device("cpu"))


def eval_ctx(data, tmp_path, epoch=1, final=True):
    return EvalContext(data=data, epoch=epoch, final=final, device=torch.device("cpu"),
                       artifact_dir=tmp_path, batch_size=512)


@pytest.fixture(scope="module")
def ib12_data():
    return ib12(DatasetContext(root="."))


def tiny_images(n=40, classes=10):
    from harness.api import DataBundle
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 28, 28, generator=g)
    y = torch.arange(n) % classes
    return DataBundle(train=Split(x, y), test=Split(x[:20], y[:20]), num_classes=classes)


# ------------------------------------------------------------------------------------------------
# Binned mutual information
# ------------------------------------------------------------------------------------------------
def test_entropy_and_mi_against_scipy_and_sklearn():
    from scipy.stats import entropy
    from sklearn.metrics import mutual_info_score

    rng = np.random.default_rng(0)
    acts = rng.normal(size=(500, 3))
    y = (acts[:, 0] + 0.5 * rng.normal(size=500) > 0).astype(int)
    ixl, ily = binned_mi(acts, y, bins=4)
    edges = np.linspace(acts.min(), acts.max(), 5)
    codes = np.clip(np.digitize(acts, edges[1:-1]), 0, 3)
    t = codes[:, 0] * 16 + codes[:, 1] * 4 + codes[:, 2]
    _, counts = np.unique(t, return_counts=True)
    assert ixl == pytest.approx(entropy(counts, base=2))
    assert ily == pytest.approx(mutual_info_score(t, y) / math.log(2))
    assert entropy_bits(np.array([0, 0, 1, 1])) == pytest.approx(1.0)


def test_mi_by_hand_and_limits():
    # two equally likely bin patterns, each holding one class: I(X;T) = I(T;Y) = 1 bit
    acts = np.array([[0.0], [0.0], [1.0], [1.0]])
    assert binned_mi(acts, np.array([0, 0, 1, 1]), bins=30) == pytest.approx((1.0, 1.0))
    # labels independent of T: I(T;Y) = 0
    assert binned_mi(acts, np.array([0, 1, 0, 1]), bins=30) == pytest.approx((1.0, 0.0))
    # a constant layer carries nothing
    assert binned_mi(np.ones((6, 3)), np.array([0, 1, 0, 1, 0, 1])) == pytest.approx((0.0, 0.0))
    # a fixed range: values outside it land in the edge bins
    assert binned_mi(np.array([[-5.0], [5.0]]), np.array([0, 1]), 30, (-1, 1)) == \
        pytest.approx((1.0, 1.0))


def test_exact_on_ib12_for_a_lossless_layer(ib12_data):
    """A layer that copies the 12 bits keeps all of X: I(X;L) = 12 bits and I(L;Y) = H(Y)."""
    x = torch.cat([ib12_data.train.x, ib12_data.test.x]).numpy()
    y = torch.cat([ib12_data.train.y, ib12_data.test.y]).numpy()
    ixl, ily = binned_mi(x, y, bins=30)
    p = 2118 / 4096
    assert ixl == pytest.approx(12.0)
    assert ily == pytest.approx(-(p * math.log2(p) + (1 - p) * math.log2(1 - p)))


# ------------------------------------------------------------------------------------------------
# mi_plane evaluator
# ------------------------------------------------------------------------------------------------
def test_mi_plane_records_every_layer_and_draws_the_plane(ib12_data, tmp_path):
    torch.manual_seed(0)
    method = Std(mi_mlp((12,), 2), ctx_for((12,)))
    ev = MiPlane(epochs=[1, 3])
    assert ev.evaluate(method, eval_ctx(ib12_data, tmp_path, epoch=2, final=False)) == {}
    first = ev.evaluate(method, eval_ctx(ib12_data, tmp_path, epoch=1, final=False))
    assert sorted(first) == sorted([f"mi_{k}_act{i}" for k in ("ixl", "ily") for i in range(1, 7)])
    assert all(0 <= v <= 12 + 1e-9 for v in first.values())
    assert all(first[f"mi_ily_act{i}"] <= first[f"mi_ixl_act{i}"] + 1e-9 for i in range(1, 7))
    assert not (tmp_path / "mi_plane.png").exists()
    with torch.no_grad():
        for p in method.model.parameters():
            p.mul_(3.0)
    last = ev.evaluate(method, eval_ctx(ib12_data, tmp_path, epoch=5, final=True))
    assert last != first
    assert [h["epoch"] for h in ev.history] == [1, 5]
    saved = json.loads((tmp_path / "mi_plane.json").read_text())
    assert saved["layers"] == [f"act{i}" for i in range(1, 7)] and len(saved["history"]) == 2
    assert (tmp_path / "mi_plane.png").stat().st_size > 1000


def test_mi_plane_named_layers_and_bad_options(ib12_data, tmp_path):
    method = Std(mi_mlp((12,), 2), ctx_for((12,)))
    out = MiPlane(layers=["fc1", "act6"], plot=False).evaluate(method, eval_ctx(ib12_data, tmp_path))
    assert sorted(out) == ["mi_ily_act6", "mi_ily_fc1", "mi_ixl_act6", "mi_ixl_fc1"]
    with pytest.raises(UserError, match="no layer"):
        MiPlane(layers=["fc9"]).evaluate(method, eval_ctx(ib12_data, tmp_path))
    for opts, key in (({"bins": 1}, "bins"), ({"epochs": [0]}, "epochs"), ({"split": "val"}, "split"),
                      ({"range": [1, -1]}, "range")):
        with pytest.raises(UserError) as err:
            MiPlane(**opts)
        assert err.value.key == key


# ------------------------------------------------------------------------------------------------
# reconstruction evaluator
# ------------------------------------------------------------------------------------------------
def test_reconstruction_is_exact_for_an_orthogonal_linear_trunk(tmp_path):
    q, _ = torch.linalg.qr(torch.randn(12, 12))
    layer = nn.Linear(12, 12, bias=True)
    with torch.no_grad():
        layer.weight.copy_(q)
        layer.bias.normal_()  # subtracted again by the reverse pass
    model = nn.Sequential(OrderedDict(fc1=layer, head=nn.Linear(12, 2)))
    model.reversible_trunk = ("fc1",)
    data_x = torch.rand(30, 12)
    from harness.api import DataBundle
    data = DataBundle(Split(data_x, torch.zeros(30, dtype=torch.long)),
                      Split(data_x, torch.zeros(30, dtype=torch.long)), 2)
    out = Reconstruction().evaluate(Std(model, ctx_for((12,))), eval_ctx(data, tmp_path))
    assert out["recon_mse"] == pytest.approx(0.0, abs=1e-10)
    assert not (tmp_path / "reconstruction").exists()  # not image data: no grid


def test_reconstruction_of_any_method_with_an_image_grid(tmp_path):
    data = tiny_images()
    for method in (Std(mnist_cnn((1, 28, 28), 10, width=4), ctx_for((1, 28, 28), 10)),
                   Srip(mnist_cnn((1, 28, 28), 10, width=4), ctx_for((1, 28, 28), 10))):
        out = Reconstruction(images=4).evaluate(method, eval_ctx(data, tmp_path, epoch=7))
        assert set(out) == {"recon_mse", "recon_mse_L2", "recon_mse_L3"}
        assert out["recon_mse"] > 0
    assert (tmp_path / "reconstruction" / "epoch00007.png").stat().st_size > 1000


def test_reconstruction_uses_a_racecar_methods_own_reverse_pass(tmp_path):
    data = tiny_images()
    model = mnist_cnn((1, 28, 28), 10, width=4)
    rr = Racecar(model, ctx_for((1, 28, 28), 10), layers=2)
    ev = Reconstruction(images=0)
    out = ev.evaluate(rr, eval_ctx(data, tmp_path))
    assert set(out) == {"recon_mse", "recon_mse_L2"}  # RR^2: regenerated from layer 2
    x = data.test.x
    with torch.no_grad():
        image, _, _ = rr.reverse.regenerate_input(x, 2)
    assert out["recon_mse"] == pytest.approx(float((image - x).pow(2).mean()), rel=1e-5)
    whole = Reconstruction(images=0, layers=3).evaluate(rr, eval_ctx(data, tmp_path))
    assert "recon_mse_L3" in whole and whole["recon_mse"] != out["recon_mse"]


def test_reconstruction_refuses_a_model_without_trunk(tmp_path):
    model = nn.Sequential(nn.Linear(12, 2))
    from harness.api import DataBundle
    data = DataBundle(Split(torch.rand(4, 12), torch.zeros(4, dtype=torch.long)),
                      Split(torch.rand(4, 12), torch.zeros(4, dtype=torch.long)), 2)
    with pytest.raises(UserError, match="no reversible trunk"):
        Reconstruction().evaluate(Std(model, ctx_for((12,))), eval_ctx(data, tmp_path))
    with pytest.raises(UserError):
        Reconstruction(split="val")

"""SRIP: the penalty against numpy's SVD and by hand, the schedule, and that it orthogonalises."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from harness.api import Batch, MethodContext, Split, UserError
from plugins.architectures.small import mi_mlp, mnist_cnn
from plugins.methods.srip import Srip, gram_residual, reference_decay, so_penalty, srip_penalty


pytestmark = pytest.mark.usefixtures("one_thread")


def ctx_for(shape, seed=0):
    return MethodContext(stage="A", seed=seed, epochs=1, num_classes=2, input_shape=shape,
                         train=Split(torch.zeros(1, *shape), torch.zeros(1, dtype=torch.long)),
                         device=torch.device("cpu"))


def np_residual(w: np.ndarray) -> np.ndarray:
    w = w.reshape(w.shape[0], -1)
    g = w.T @ w if w.shape[0] > w.shape[1] else w @ w.T
    return g - np.eye(len(g))


@pytest.mark.parametrize("shape", [(10, 12), (12, 10), (2, 3), (8, 4, 3, 3), (1, 64, 3, 3)])
def test_gram_residual_takes_the_smaller_gram(shape):
    w = torch.randn(*shape, dtype=torch.float64)
    m = gram_residual(w)
    rows, cols = shape[0], int(np.prod(shape[1:]))
    assert m.shape == (min(rows, cols),) * 2
    np.testing.assert_allclose(m.numpy(), np_residual(w.numpy()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(7, 5), (5, 9), (6, 3, 3, 3)])
def test_power_iteration_converges_to_the_largest_singular_value(shape):
    torch.manual_seed(0)
    w = torch.randn(*shape, dtype=torch.float64) * 0.4
    sigma = np.linalg.svd(np_residual(w.numpy()), compute_uv=False)[0]
    start = torch.rand(gram_residual(w).shape[0], dtype=torch.float64)
    assert float(srip_penalty(w, start, iterations=300)) == pytest.approx(sigma ** 2, rel=1e-6)
    assert float(srip_penalty(w, start, iterations=300, squared=False)) == pytest.approx(sigma, rel=1e-6)
    # one step (the reference code) never overestimates sigma^2
    assert float(srip_penalty(w, start, iterations=1)) <= sigma ** 2 * (1 + 1e-12)


def test_one_step_matches_the_reference_formula_by_hand():
    w = torch.tensor([[1.0, 0.0, 1.0], [0.0, 2.0, 0.0]], dtype=torch.float64)  # 2 x 3: W W^T
    # W W^T = [[2, 0], [0, 4]] -> M = [[1, 0], [0, 3]]; b = (1, 1): M b = (1, 3), v = (1, 3)/sqrt(10)
    # M v = (1, 9)/sqrt(10), ||M v||^2 = 82 / 10
    assert float(srip_penalty(w, torch.tensor([1.0, 1.0], dtype=torch.float64))) == pytest.approx(8.2)
    # M's largest singular value is 3: more steps approach 9 from below
    assert float(srip_penalty(w, torch.tensor([1.0, 1.0], dtype=torch.float64), 50)) == \
        pytest.approx(9.0, rel=1e-9)


def test_soft_orthogonality_is_the_frobenius_norm():
    w = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    assert float(so_penalty(w)) == pytest.approx(float((np_residual(w.numpy()) ** 2).sum()))
    q, _ = torch.linalg.qr(torch.randn(6, 4, dtype=torch.float64))
    assert float(so_penalty(q)) == pytest.approx(0.0, abs=1e-20)  # orthonormal columns


def test_every_weight_with_two_or_more_dims_is_penalised():
    model = mnist_cnn((1, 28, 28), 10, width=4)
    method = Srip(model, ctx_for((1, 28, 28)), weight=0.5, variant="so")
    assert [n for n, _ in method.weights] == ["conv1.weight", "conv2.weight", "conv3.weight",
                                              "fc.weight"]
    x = torch.rand(2, 1, 28, 28)
    terms = method.loss(Batch(x, torch.tensor([0, 1]), None))
    want = 0.5 * sum(float((np_residual(p.detach().numpy().astype(np.float64)) ** 2).sum())
                     for _, p in method.weights)
    assert terms["ortho"].item() == pytest.approx(want, rel=1e-5)
    assert set(terms) == {"task", "ortho"}


def test_reference_schedule():
    assert [reference_decay(e) for e in (1, 20, 21, 50, 51, 70, 71, 120, 121)] == \
        [1, 1, 1e-3, 1e-3, 1e-4, 1e-4, 1e-6, 1e-6, 0]
    method = Srip(mi_mlp((12,), 2), ctx_for((12,)), weight=1e-2, schedule="reference")
    assert method.epoch_started(0) == {"srip_beta": pytest.approx(1e-2)}
    assert method.epoch_started(20) == {"srip_beta": pytest.approx(1e-5)}  # epoch 21
    method.epoch_started(120)  # epoch 121: switched off
    terms = method.loss(Batch(torch.rand(3, 12), torch.tensor([0, 1, 0]), None))
    assert float(terms["ortho"]) == 0.0
    constant = Srip(mi_mlp((12,), 2), ctx_for((12,)), weight=1e-2)
    assert constant.epoch_started(500) == {"srip_beta": pytest.approx(1e-2)}


def test_same_seed_same_penalties_and_different_seed_differs():
    def penalties(seed):
        torch.manual_seed(0)
        method = Srip(mi_mlp((12,), 2), ctx_for((12,), seed=seed))
        return [method.penalty().item() for _ in range(3)]
    assert penalties(1) == penalties(1)
    assert penalties(1) != penalties(2)


def test_minimising_srip_makes_a_layer_orthogonal():
    torch.manual_seed(3)
    layer = nn.Linear(5, 8)  # 8 x 5: W^T W should become I
    method = Srip(nn.Sequential(layer), ctx_for((5,)), weight=1.0)
    opt = torch.optim.Adam(layer.parameters(), lr=2e-2)

    def worst():
        s = torch.linalg.svdvals(layer.weight.detach())
        return float((s ** 2 - 1).abs().max())

    start = worst()
    for _ in range(150):
        loss = method.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert worst() < 0.05 < start


def test_bad_options_are_user_errors():
    for opts, key in (({"weight": -1}, "weight"), ({"weight": "0.1"}, "weight"),
                      ({"variant": "svd"}, "variant"), ({"schedule": "cosine"}, "schedule"),
                      ({"power_iterations": 0}, "power_iterations")):
        with pytest.raises(UserError) as err:
            Srip(mi_mlp((12,), 2), ctx_for((12,)), **opts)
        assert err.value.key == key

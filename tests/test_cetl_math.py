"""The mathematics of CETL (paper 003): per-batch Fisher samples against a per-sample loop, the
Fisher of T1 o T2 through the reverse construction, the relative Fisher estimators, the GFI
masks' probabilities (a binomial test at a fixed seed) and the DWA loss."""

from __future__ import annotations

import time

import pytest
import torch
from scipy import stats
from torch import nn

from harness.api import fisher_diagonal, fisher_samples, normalize_max
from plugins.architectures.ci_cnn import ci_cnn_small
from plugins.methods.cetl_parts import Coupled, Decoder
from plugins.methods.gfi import DWA, generalized_fisher, gfi_mask, relative_fisher


def _sq(out, target):
    return (out - target).pow(2).sum()


def _loop(model, x, y, loss_fn):
    """One backward per sample: the definition the vectorised Fisher must equal."""
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for xi, yi in zip(x, y):
        model.zero_grad()
        loss_fn(model(xi[None]), yi[None]).backward()
        for n, p in model.named_parameters():
            total[n] += p.grad.pow(2)
    return {n: t / len(x) for n, t in total.items()}


def _tiny_target():
    torch.manual_seed(0)
    return ci_cnn_small((1, 8, 8), 4, widths=[2, 3, 3, 3, 2], fc=[6, 5])


def test_fisher_samples_of_the_coupled_decoder_equal_a_per_sample_loop(one_thread):
    """L_r^t's Fisher on T1 o T2 (the reverse construction under vmap): every batch's Fisher
    equals the loop over its samples to 1e-6, and their mean is fisher_diagonal."""
    t2 = _tiny_target()
    coupled = Coupled(t2, Decoder(t2, (1, 8, 8)))
    x, target = torch.rand(12, 1, 8, 8), torch.rand(12, 1, 8, 8)
    per_batch = fisher_samples(coupled, x, target, batches=3, loss_fn=_sq, chunk=3)
    for b in range(3):
        slow = _loop(coupled, x[4 * b:4 * b + 4], target[4 * b:4 * b + 4], _sq)
        assert per_batch.keys() == slow.keys()
        for n in slow:
            assert torch.allclose(per_batch[n][b], slow[n], atol=1e-6, rtol=1e-5), n
    whole = fisher_diagonal(coupled, x, target, loss_fn=_sq)
    for n in whole:
        assert torch.allclose(per_batch[n].mean(0), whole[n], atol=1e-6, rtol=1e-5)
    assert {n.split(".")[0] for n in per_batch} == {"t2", "decoder"}


def test_normalize_max_puts_the_largest_entry_at_one():
    f = normalize_max({"a": torch.tensor([1.0, 4.0]), "b": torch.tensor([[2.0]])})
    assert float(f["a"][1]) == 1.0 and float(f["b"][0, 0]) == 0.5
    zero = {"a": torch.zeros(3)}
    assert torch.equal(normalize_max(zero)["a"], zero["a"])


def test_vmap_fisher_is_faster_than_the_loop_on_the_28x28_network(one_thread):
    torch.manual_seed(0)
    model = ci_cnn_small((1, 28, 28), 10)
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    ce = nn.functional.cross_entropy

    def best(fn):
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    fast = best(lambda: fisher_diagonal(model, x, y, chunk=64))
    slow = best(lambda: _loop(model, x, y, ce))
    assert fast < slow, (fast, slow)


def test_relative_fisher_is_one_for_equal_samples_and_small_for_independent_ones():
    torch.manual_seed(0)
    a = torch.rand(16, 5000)
    same = relative_fisher({"w": a}, {"w": 3 * a + 1})["w"]
    other = relative_fisher({"w": a}, {"w": torch.rand(16, 5000)})["w"]
    assert torch.allclose(same, torch.ones_like(same))
    assert float(other.mean()) < 0.35 and float((other >= 0.5).float().mean()) < 0.05
    assert 0 <= float(other.min()) and float(other.max()) <= 1
    const = relative_fisher({"w": torch.zeros(16, 3)}, {"w": a[:, :3]})["w"]
    assert torch.equal(const, torch.zeros(3))  # no information in a constant (a dead unit)


def test_gaussian_relative_fisher_is_the_absolute_correlation():
    torch.manual_seed(1)
    a, noise = torch.randn(200, 1), torch.randn(200, 1)
    b = 0.6 * a + 0.8 * noise
    rf = relative_fisher({"w": a}, {"w": b}, estimator="gaussian")["w"]
    rho = stats.pearsonr(a[:, 0].numpy(), b[:, 0].numpy()).statistic
    assert float(rf) == pytest.approx(abs(rho), abs=1e-5)


def test_gfi_masks_keep_with_the_stated_probabilities():
    """Eq. 10 with u = 0.5, p = 0.9: F kept with probability 0.9 where RF >= u (RF = u
    included), 0.1 below. Two-sided binomial tests at a fixed seed."""
    n = 20000
    rf = torch.cat([torch.full((n,), 0.5), torch.full((n,), 0.7), torch.full((n,), 0.49)])
    g = torch.Generator().manual_seed(123)
    mask = gfi_mask(rf, u=0.5, p=0.9, generator=g)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    for part, p in ((mask[:n], 0.9), (mask[n:2 * n], 0.9), (mask[2 * n:], 0.1)):
        kept = int(part.sum())
        assert stats.binomtest(kept, n, p).pvalue > 1e-3, (kept, p)
    fisher = {"w": torch.rand(3 * n)}
    gfi = generalized_fisher(fisher, {"w": rf}, seed=5)["w"]
    assert torch.all((gfi == 0) | (gfi == fisher["w"]))
    again = generalized_fisher(fisher, {"w": rf}, seed=5)["w"]
    assert torch.equal(gfi, again)                              # the same seed, the same draw
    assert torch.equal(generalized_fisher(fisher, None)["w"], fisher["w"])   # variant fi


def test_dwa_is_half_lambda_gfi_times_the_squared_distance():
    w = nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    dwa = DWA({"w": w})
    assert not bool(dwa.active)
    dwa.set({"w": torch.tensor([1.0, 0.0, 0.5])}, {"w": w})
    with torch.no_grad():
        w.add_(torch.tensor([1.0, 1.0, 2.0]))
    value = dwa.penalty({"w": w}, weight=4.0)
    assert float(value.detach()) == pytest.approx(4.0 / 2 * (1 * 1 + 0 * 1 + 0.5 * 4))
    value.backward()
    assert torch.allclose(w.grad, torch.tensor([4.0, 0.0, 4.0]))   # lambda GFI (theta - theta*)
    assert dwa.kept_fraction() == pytest.approx(2 / 3)
    dwa.set({"w": torch.ones(3)}, {"w": w.detach() - 1}, scale=8.0)   # lambda = the raw max
    assert float(dwa.penalty({"w": w}, weight=None).detach()) == pytest.approx(8.0 / 2 * 3)
    assert {"gfi_0", "anchor_0", "active"} <= set(dwa.state_dict())


def test_paper_003s_networks_pass_the_kit_and_ci_cnn_has_its_parameter_count():
    from harness.testing import check_architecture
    from plugins.architectures.ci_cnn import (ALEXNET_PARAMETERS, CI_CNN_PARAMETERS_C10, ci_cnn,
                                              resnet26)

    for factory, shapes in ((ci_cnn_small, [(1, 8, 8), (1, 28, 28)]), (resnet26, [(1, 8, 8)]),
                            (ci_cnn, [(3, 32, 32)])):
        assert set(check_architecture(factory, shapes=shapes).values()) == {None}
    count = sum(p.numel() for p in ci_cnn((3, 32, 32), 10).parameters())
    assert count == CI_CNN_PARAMETERS_C10 and count < 0.1 * ALEXNET_PARAMETERS   # "under 10%"
    t2 = ci_cnn_small((1, 28, 28), 10)
    decoder = Decoder(t2, (1, 28, 28))
    assert decoder(torch.zeros(2, 10)).shape == (2, 1, 28, 28)      # T1 mirrors T2 to the image
    assert sum(p.numel() for p in decoder.parameters()) == sum(p.numel() for p in t2.parameters())

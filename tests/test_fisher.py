"""The Fisher utility: vmap'ed per-sample gradients equal a loop of one backward per sample."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fisher_reference import loop_fisher
from harness.fisher import fisher_diagonal


@pytest.mark.parametrize("chunk", [7, 256])
def test_fisher_equals_a_per_sample_loop(chunk):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4))
    x, y = torch.randn(20, 1, 8, 8), torch.randint(0, 4, (20,))
    fast, slow = fisher_diagonal(model, x, y, chunk=chunk), loop_fisher(model, x, y)
    assert fast.keys() == slow.keys()
    for n in fast:
        assert torch.allclose(fast[n], slow[n], atol=1e-6, rtol=1e-5), n
    scaled = fisher_diagonal(model, x, y, normalize="max")
    assert max(float(v.max()) for v in scaled.values()) == pytest.approx(1.0)
    top = max(float(v.max()) for v in slow.values())
    assert torch.allclose(scaled["3.weight"], slow["3.weight"] / top, atol=1e-6)


def test_fisher_of_chosen_parameters_only():
    model = nn.Sequential(nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2))
    f = fisher_diagonal(model, torch.randn(9, 5), torch.randint(0, 2, (9,)), params=["2.weight"])
    assert list(f) == ["2.weight"] and f["2.weight"].shape == (2, 3)

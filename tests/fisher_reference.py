"""The Fisher diagonal the slow, obvious way: one backward per sample. The reference the
torch.func version is tested against (tests/test_fisher.py) and timed against (the CETL
benchmark)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def loop_fisher(model, x, y) -> dict[str, torch.Tensor]:
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for xi, yi in zip(x, y):
        model.zero_grad()
        F.cross_entropy(model(xi[None]), yi[None]).backward()
        for n, p in model.named_parameters():
            total[n] += p.grad.pow(2)
    return {n: t / len(x) for n, t in total.items()}

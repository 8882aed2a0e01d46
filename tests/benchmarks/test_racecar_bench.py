"""What racecar costs: one training step of RR^3 vs std on the paper's MNIST network (Table 9,
batch 64), in time (pytest-benchmark), FLOPs (torch's FlopCounterMode, forward + backward) and
memory (bytes autograd keeps for the backward pass, exact, and the sampled peak RSS of a few
steps). The paper reports 5.675 vs 3.522 s per epoch (1.61x) on a GPU.

Run with ``tox -e bench`` (or ``pytest tests/benchmarks --benchmark-only --benchmark-enable``);
the ratios are printed and stored in each benchmark's ``extra_info``.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from harness.api import Batch, MethodContext, Split
from harness.meters import PeakMemory
from plugins.architectures.small import mnist_cnn
from plugins.methods.racecar import Racecar
from plugins.methods.std import Std

SHAPE = (1, 28, 28)
BATCH = 64


def build(kind: str):
    torch.manual_seed(0)
    model = mnist_cnn(SHAPE, 10)
    ctx = MethodContext(stage="A", seed=0, epochs=1, num_classes=10, input_shape=SHAPE,
                        train=Split(torch.zeros(1, *SHAPE), torch.zeros(1, dtype=torch.long)),
                        device=torch.device("cpu"))
    method = Racecar(model, ctx, layers=3, weight=1e-5) if kind == "racecar" else Std(model, ctx)
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    batch = Batch(torch.rand(BATCH, *SHAPE, generator=g), torch.randint(0, 10, (BATCH,), generator=g),
                  torch.arange(BATCH))

    def step():
        total = sum(method.loss(batch).values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
    return method, batch, step


def flops(kind: str) -> int:
    _, _, step = build(kind)
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def saved_bytes(kind: str) -> int:
    """Bytes of the tensors autograd saves for backward in one loss evaluation: the activation
    memory a step holds at its peak, independent of the allocator."""
    method, batch, _ = build(kind)
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sum(method.loss(batch).values())
    return total


def peak_rss_mb(kind: str, steps: int = 5) -> float:
    _, _, step = build(kind)
    step()  # allocator warm-up
    meter = PeakMemory(torch.device("cpu"), interval=0.005).start()
    for _ in range(steps):
        step()
    return meter.stop()["peak_rss_mb"]


_cost: dict[str, dict[str, float]] = {}


def cost(kind: str) -> dict[str, float]:
    if kind not in _cost:
        _cost[kind] = {"flops": float(flops(kind)), "saved_mb": saved_bytes(kind) / 2**20,
                       "peak_rss_mb": peak_rss_mb(kind)}
    return _cost[kind]


@pytest.mark.parametrize("kind", ["std", "racecar"])
def test_step_time_flops_and_memory(benchmark, kind):
    torch.set_num_threads(1)  # the threads a stage run of this network gets in the MNIST setting
    _, _, step = build(kind)
    for _ in range(2):
        step()
    benchmark.pedantic(step, rounds=15, iterations=1, warmup_rounds=1)
    mine, std = cost(kind), cost("std")
    info = {**mine, "flop_ratio_to_std": mine["flops"] / std["flops"],
            "saved_ratio_to_std": mine["saved_mb"] / std["saved_mb"],
            "batch": BATCH, "threads": 1}
    benchmark.extra_info.update(info)
    mean = benchmark.stats.stats.mean
    print(f"\n{kind}: {mean * 1e3:.1f} ms/step, {mine['flops'] / 1e9:.2f} GFLOP/step "
          f"({info['flop_ratio_to_std']:.2f}x std), autograd-saved {mine['saved_mb']:.1f} MB "
          f"({info['saved_ratio_to_std']:.2f}x std), peak RSS {mine['peak_rss_mb']:.0f} MB")
    assert mine["flops"] > 0

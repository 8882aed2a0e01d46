"""What racecar costs: one training step of RR^3 vs std on the paper's MNIST network (Table 9,
batch 64), in time (pytest-benchmark), FLOPs (torch's FlopCounterMode, forward + backward) and
memory (bytes autograd keeps for the backward pass, exact, and the sampled peak RSS of a few
steps). The paper reports 5.675 vs 3.522 s per epoch (1.61x) on a GPU.

Run with ``tox -e bench`` (or ``pytest tests/benchmarks --benchmark-only --benchmark-enable``);
the ratios are printed and stored in each benchmark's ``extra_info``. Where CUDA is available
the same steps are also timed there, in float32 and under the engine's bfloat16 autocast
(``amp``), with the peak CUDA memory of a few steps in place of the resident size.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from harness.api import Batch, MethodContext, Split
from harness.engine import make_optimizer
from harness.meters import PeakMemory
from plugins.architectures.small import mnist_cnn
from plugins.methods.racecar import Racecar
from plugins.methods.std import Std
from saved_memory import saved_tensor_bytes

SHAPE = (1, 28, 28)
BATCH = 64


DEVICES = [("cpu", False)] + ([("cuda", False), ("cuda", True)] if torch.cuda.is_available() else [])
RUN = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0}


def build(kind: str, device: str = "cpu", amp: bool = False):
    """The method and one training step as the engine takes it (fused Adam, autocast when
    ``amp``, a synchronise on CUDA so that the timer sees the kernels finish)."""
    dev = torch.device(device)
    torch.manual_seed(0)
    model = mnist_cnn(SHAPE, 10).to(dev)
    ctx = MethodContext(stage="A", seed=0, epochs=1, num_classes=10, input_shape=SHAPE,
                        train=Split(torch.zeros(1, *SHAPE), torch.zeros(1, dtype=torch.long)),
                        device=dev)
    method = Racecar(model, ctx, layers=3, weight=1e-5) if kind == "racecar" else Std(model, ctx)
    method.to(dev)
    optimizer = make_optimizer(method.parameters(), RUN)
    g = torch.Generator().manual_seed(1)
    batch = Batch(torch.rand(BATCH, *SHAPE, generator=g).to(dev),
                  torch.randint(0, 10, (BATCH,), generator=g).to(dev), torch.arange(BATCH))

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            total = sum(method.loss(batch).values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
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
    return saved_tensor_bytes(lambda: sum(method.loss(batch).values()))


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


def peak_cuda_mb(kind: str, amp: bool, steps: int = 5) -> float:
    _, _, step = build(kind, "cuda", amp)
    step()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        step()
    return torch.cuda.max_memory_allocated() / 2**20


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["std", "racecar"])
def test_cuda_step_time_and_memory(benchmark, kind, amp):
    torch.backends.cudnn.benchmark = True  # as the engine sets it on CUDA
    _, _, step = build(kind, "cuda", amp)
    for _ in range(10):
        step()
    benchmark.pedantic(step, rounds=200, iterations=1, warmup_rounds=10)
    mine, std = cost(kind), cost("std")
    info = {"flops": mine["flops"], "flop_ratio_to_std": mine["flops"] / std["flops"],
            "peak_cuda_mb": peak_cuda_mb(kind, amp), "amp": amp, "batch": BATCH,
            "device": torch.cuda.get_device_name()}
    benchmark.extra_info.update(info)
    mean = benchmark.stats.stats.mean
    print(f"\ncuda {kind} {'bf16' if amp else 'fp32'}: {mean * 1e3:.3f} ms/step "
          f"(median {benchmark.stats.stats.median * 1e3:.3f}), {mine['flops'] / 1e9:.2f} GFLOP/step "
          f"({info['flop_ratio_to_std']:.2f}x std), peak CUDA {info['peak_cuda_mb']:.1f} MB")
    assert mine["flops"] > 0

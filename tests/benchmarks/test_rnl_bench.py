"""What RNL costs: one training step of RN (the suite's trainable variant: L_ff + L_fb + the
hard-sample CE) against NN (plain CE) on the same network and batch, in time (pytest-benchmark),
FLOPs (torch's FlopCounterMode, forward + backward + optimizer) and memory (bytes autograd keeps
for the backward pass, exact, and the sampled peak RSS of a few steps).

The reverse pass costs about one more forward's worth of multiply-accumulates (transposed
convolutions of the same sizes) plus its backward, so the step should cost about the FLOP
ratio; the goal is a measured time ratio within 10% of it. Two networks: the suite's
``rnl_small`` on 28x28 (what suites/reversible.yaml runs) and the paper's Table 1 network
``rnl_nn`` on 32x32x3, both at the paper's batch 128, one thread.

Run with ``pytest tests/benchmarks/test_rnl_bench.py --benchmark-only --benchmark-enable -s``;
the ratios are printed and stored in each benchmark's ``extra_info``.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from harness.api import Batch, MethodContext, Split
from harness.engine import make_optimizer
from harness.meters import PeakMemory
from plugins.architectures.reversible import rnl_nn, rnl_small
from plugins.methods.rnl import RNL
from plugins.methods.std import Std
from saved_memory import saved_tensor_bytes

BATCH = 128
NETWORKS = {"rnl_small": (rnl_small, (1, 28, 28), 20, 15),   # factory, input, classes, rounds
            "rnl_nn": (rnl_nn, (3, 32, 32), 10, 3)}
RUN = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4}


def build(kind: str, net: str):
    """The method and one training step as the engine takes it (summed terms, SGD step)."""
    factory, shape, classes, _ = NETWORKS[net]
    torch.manual_seed(0)
    model = factory(shape, classes)
    ctx = MethodContext(stage="train", seed=0, epochs=1, num_classes=classes, input_shape=shape,
                        train=Split(torch.zeros(1, *shape), torch.zeros(1, dtype=torch.long)),
                        device=torch.device("cpu"))
    method = RNL(model, ctx, reduction="mean") if kind == "rnl" else Std(model, ctx)
    optimizer = make_optimizer(method.parameters(), RUN)
    g = torch.Generator().manual_seed(1)
    batch = Batch(torch.rand(BATCH, *shape, generator=g),
                  torch.randint(0, classes, (BATCH,), generator=g), torch.arange(BATCH))

    def step():
        total = sum(method.loss(batch).values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
    return method, batch, step


def saved_bytes(kind: str, net: str) -> int:
    """Bytes of the tensors autograd saves for backward in one loss evaluation."""
    method, batch, _ = build(kind, net)
    return saved_tensor_bytes(lambda: sum(method.loss(batch).values()))


def cost(kind: str, net: str, _cache={}) -> dict[str, float]:  # noqa: B006 (a cache on purpose)
    if (kind, net) not in _cache:
        _, _, step = build(kind, net)
        with FlopCounterMode(display=False) as counter:
            step()
        step()  # allocator warm-up
        meter = PeakMemory(torch.device("cpu"), interval=0.005).start()
        for _ in range(3):
            step()
        _cache[kind, net] = {"flops": float(counter.get_total_flops()),
                             "saved_mb": saved_bytes(kind, net) / 2**20,
                             "peak_rss_mb": meter.stop()["peak_rss_mb"]}
    return _cache[kind, net]


_times: dict[tuple[str, str], float] = {}


@pytest.mark.parametrize("net", list(NETWORKS))
@pytest.mark.parametrize("kind", ["std", "rnl"])
def test_step_time_flops_and_memory(benchmark, kind, net):
    torch.set_num_threads(1)  # what `threads: 1` gives a stage run of the suite
    _, _, step = build(kind, net)
    step()
    benchmark.pedantic(step, rounds=NETWORKS[net][3], iterations=1, warmup_rounds=1)
    _times[kind, net] = benchmark.stats.stats.median
    mine, std = cost(kind, net), cost("std", net)
    info = {**mine, "flop_ratio_to_std": mine["flops"] / std["flops"],
            "saved_ratio_to_std": mine["saved_mb"] / std["saved_mb"], "batch": BATCH,
            "threads": 1, "network": net}
    if ("std", net) in _times:
        info["time_ratio_to_std"] = _times[kind, net] / _times["std", net]
    benchmark.extra_info.update(info)
    ratio = f", time {info['time_ratio_to_std']:.2f}x std" if "time_ratio_to_std" in info else ""
    print(f"\n{net} {kind}: {_times[kind, net] * 1e3:.1f} ms/step (median){ratio}, "
          f"{mine['flops'] / 1e9:.2f} GFLOP/step ({info['flop_ratio_to_std']:.2f}x std), "
          f"autograd-saved {mine['saved_mb']:.1f} MB ({info['saved_ratio_to_std']:.2f}x std), "
          f"peak RSS {mine['peak_rss_mb']:.0f} MB")
    assert mine["flops"] > 0
    if kind == "rnl":
        assert 1.5 < info["flop_ratio_to_std"] < 3.5  # about one more forward + its backward


@pytest.mark.parametrize("net", list(NETWORKS))
def test_interleaved_time_ratio(benchmark, net):
    """RN and NN steps alternated in one process, so that a shared machine's load changes both
    alike: the median RN / NN ratio of the pairs is the step-cost ratio to set beside FLOPs."""
    torch.set_num_threads(1)
    steps = {kind: build(kind, net)[2] for kind in ("std", "rnl")}
    times: dict[str, list[float]] = {"std": [], "rnl": []}

    def pair():
        for kind, step in steps.items():
            start = time.perf_counter()
            step()
            times[kind].append(time.perf_counter() - start)

    pair()
    benchmark.pedantic(pair, rounds=NETWORKS[net][3], iterations=1, warmup_rounds=0)
    ratio = statistics.median(r / s for r, s in zip(times["rnl"][1:], times["std"][1:]))
    flop_ratio = cost("rnl", net)["flops"] / cost("std", net)["flops"]
    benchmark.extra_info.update({"time_ratio": ratio, "flop_ratio": flop_ratio, "network": net})
    print(f"\n{net} interleaved: RN/NN step time {ratio:.2f}x, FLOPs {flop_ratio:.2f}x "
          f"({(ratio / flop_ratio - 1) * 100:+.0f}%)")
    assert ratio > 1

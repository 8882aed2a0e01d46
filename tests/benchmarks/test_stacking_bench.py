"""What stacking buys (issue 24): training steps per second of R replicas trained as one stacked
network (``harness.train.stacking``) against the same R stage runs stepped one after another,
on the MI network (Table 7, batch 512) and the MNIST CNN (Table 9, batch 64), R = 1, 5, 20, 40.

Both sides are the engine's own objects: each replica's ``EpochLoop`` as ``harness run`` builds
it (fused Adam, its own stream), stepped through the plain path's calls (``Updates`` with the
method's terms); the stacked side is ``stack_loops`` of the same loops. Timed in alternating
rounds, one thread (what ``threads: auto`` gives networks this small), and the ratio is the
median sequential round over the median stacked round. The goals on this CPU: >= 2x at R = 5 and
>= 6x at R = 40 on the MI network; ``stack: auto`` must not stack where it is slower (the CNN).

Run with ``tox -e bench`` or ``pytest tests/benchmarks/test_stacking_bench.py --benchmark-only
--benchmark-enable -s``; on a CUDA machine the MI network is also timed there, R up to 64.
"""

from __future__ import annotations

import os
import statistics
import time

import pytest
import torch

from harness.api import StageResult
from harness.engine import StageTask, make_loop
from harness.groups import STACK_BATCH_MACS
from harness.meters import macs_per_sample
from harness.plugins import Plugins
from harness.suite import RUN_DEFAULTS
from harness.train.build import build_stage_data
from harness.train.stacking import stack_loops

NETS = {
    "mi_mlp": ({"name": "ib12"}, {"name": "mi_mlp"}, 512, 4e-4),
    "mnist_cnn": ({"name": "mnist5k"}, {"name": "mnist_cnn"}, 64, 1e-3),
}
METHODS = {"std": {"name": "std"}, "RR6": {"name": "racecar", "layers": 6, "weight": 1e-2}}
_data: dict = {}


def loops(net: str, method: str, replicas: int, device: str = "cpu"):
    """R stage runs of ``net`` as the engine builds them (own seeds, own streams)."""
    dataset, arch, batch, lr = NETS[net]
    plugins = Plugins()
    if net not in _data:
        _data[net] = build_stage_data(plugins, dataset, "/tmp/harness-bench-data", False)
    run = {**RUN_DEFAULTS, "optimizer": "adam", "lr": lr, "batch_size": batch, "epochs": 1,
           "threads": 1, "device": device}
    built = []
    for r in range(replicas):
        task = StageTask(name=f"r{r}", identity=f"r{r}", stage="A", seed=r, dataset=dataset,
                         architecture=arch, method=dict(METHODS[method]), run=run, evaluate=[],
                         config={}, artifact_dir="/tmp/harness-bench-art", data_root="/tmp")
        built.append(make_loop(task, plugins, _data[net], torch.device(device),
                               StageResult(status="FAILED", artifact_dir="/tmp/harness-bench-art")))
    torch.set_num_threads(1)
    return built, run


def step(loop) -> None:
    """One step of the engine's plain path (``EpochLoop._plain_steps``' calls)."""
    stream, update = loop.streams.primary, loop.updates
    batch = stream.batch()
    update.batch_size = stream.size
    update("main", loop.method.loss(batch))


def rounds(alone, group, steps: int, count: int) -> tuple[float, float]:
    """Median seconds per replica-step, sequential and stacked, in alternating rounds."""
    sync = torch.cuda.synchronize if group.device.type == "cuda" else (lambda: None)
    seq, stk = [], []
    for _ in range(count):
        t0 = time.perf_counter()
        for _ in range(steps):
            for loop in alone:
                step(loop)
        sync()
        seq.append((time.perf_counter() - t0) / (steps * len(alone)))
        t0 = time.perf_counter()
        for _ in range(steps):
            step(group)
        sync()
        stk.append((time.perf_counter() - t0) / (steps * len(alone)))
    return statistics.median(seq), statistics.median(stk)


CASES = [("mi_mlp", "std", r) for r in (1, 5, 20, 40)] + \
        [("mi_mlp", "RR6", r) for r in (5, 40)] + \
        [("mnist_cnn", "std", r) for r in (1, 5, 20, 40)]


@pytest.mark.parametrize("net, method, replicas", CASES)
def test_steps_per_second_stacked_vs_sequential(benchmark, net, method, replicas):
    alone, run = loops(net, method, replicas)
    group = stack_loops(alone, run)
    steps, count = (20, 9) if net == "mi_mlp" else (2, 3)
    for loop in [*alone, group]:  # warm-up: allocator, fused kernels' first calls
        step(loop)
    seq, stk = rounds(alone, group, steps, count)
    benchmark.pedantic(lambda: step(group), rounds=count, iterations=1)
    first = alone[0]
    macs = macs_per_sample(first.method.model, first.data.main.input_shape) * \
        first.streams.primary.batch_size
    info = {"replicas": replicas, "sequential_steps_per_s": 1 / seq,
            "stacked_steps_per_s": 1 / stk, "speedup": seq / stk, "macs_per_batch": macs,
            "auto_stacks": macs < STACK_BATCH_MACS, "threads": 1,
            "load_1min": round(os.getloadavg()[0], 2)}
    benchmark.extra_info.update(info)
    print(f"\n{net} {method} R={replicas}: sequential {1 / seq:.0f} steps/s, stacked "
          f"{1 / stk:.0f} steps/s: {seq / stk:.2f}x (auto stacks: {info['auto_stacks']}, "
          f"load {info['load_1min']})")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("replicas", [1, 8, 16, 32, 64])
@pytest.mark.parametrize("net", ["mi_mlp", "mnist_cnn"])
def test_cuda_steps_per_second_stacked_vs_sequential(benchmark, net, replicas):
    alone, run = loops(net, "std", replicas, "cuda")
    group = stack_loops(alone, run)
    for loop in [*alone, group]:
        step(loop)
    seq, stk = rounds(alone, group, 10 if net == "mi_mlp" else 2, 5)
    benchmark.pedantic(lambda: step(group), rounds=5, iterations=1)
    benchmark.extra_info.update({"replicas": replicas, "speedup": seq / stk,
                                 "device": torch.cuda.get_device_name()})
    print(f"\ncuda {net} R={replicas}: sequential {1 / seq:.0f} steps/s, stacked {1 / stk:.0f} "
          f"steps/s: {seq / stk:.2f}x")

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
    # between the two, for the threshold of `stack: auto` (harness.groups.STACK_BATCH_MACS)
    "small_cnn": ({"name": "digits"}, {"name": "small_cnn"}, 64, 1e-3),
    "mnist_cnn_w8": ({"name": "mnist5k"}, {"name": "mnist_cnn", "width": 8}, 64, 1e-3),
}
METHODS = {"std": {"name": "std"}, "RR6": {"name": "racecar", "layers": 6, "weight": 1e-2}}
_data: dict = {}


def loops(net: str, method: str, replicas: int, device: str = "cpu"):
    """R stage runs of ``net`` as the engine builds them (own seeds, own streams)."""
    dataset, arch, batch, lr = NETS[net]
    plugins = Plugins()
    key = dataset["name"]
    if key not in _data:
        _data[key] = build_stage_data(plugins, dataset, "/tmp/harness-bench-data", False)
    run = {**RUN_DEFAULTS, "optimizer": "adam", "lr": lr, "batch_size": batch, "epochs": 1,
           "threads": 1, "device": device}
    built = []
    for r in range(replicas):
        task = StageTask(name=f"r{r}", identity=f"r{r}", stage="A", seed=r, dataset=dataset,
                         architecture=arch, method=dict(METHODS[method]), run=run, evaluate=[],
                         config={}, artifact_dir="/tmp/harness-bench-art", data_root="/tmp")
        built.append(make_loop(task, plugins, _data[key], torch.device(device),
                               StageResult(status="FAILED", artifact_dir="/tmp/harness-bench-art")))
    torch.set_num_threads(1)
    return built, run


def step(loop) -> None:
    """One step of the engine's plain path (``EpochLoop._plain_steps``' calls)."""
    stream, update = loop.streams.primary, loop.updates
    batch = stream.batch()
    update.batch_size = stream.size
    update("main", loop.method.loss(batch))


def rounds(alone, group, steps: int, count: int) -> dict[str, float]:
    """Median seconds per replica-step, sequential and stacked, in alternating rounds, by the
    wall clock and by this process's CPU time (on a machine shared with other jobs the CPU
    time is the steadier of the two: a neighbour's load stretches the wall clock of whichever
    side it lands on)."""
    sync = torch.cuda.synchronize if group.device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {"seq": [], "stk": [], "seq_cpu": [], "stk_cpu": []}
    per = steps * len(alone)
    for _ in range(count):
        for side, run in (("seq", lambda: [step(loop) for loop in alone]),
                          ("stk", lambda: step(group))):
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(steps):
                run()
            sync()
            times[side].append((time.perf_counter() - t0) / per)
            times[side + "_cpu"].append((time.process_time() - c0) / per)
    return {k: statistics.median(v) for k, v in times.items()}


CASES = [("mi_mlp", "std", r) for r in (1, 5, 20, 40)] + \
        [("mi_mlp", "RR6", r) for r in (5, 40)] + \
        [("mnist_cnn", "std", r) for r in (1, 5, 20, 40)] + \
        [(net, "std", r) for net in ("small_cnn", "mnist_cnn_w8") for r in (5, 20)]


@pytest.mark.parametrize("net, method, replicas", CASES)
def test_steps_per_second_stacked_vs_sequential(benchmark, net, method, replicas):
    alone, run = loops(net, method, replicas)
    group = stack_loops(alone, run)
    steps, count = {"mi_mlp": (20, 9), "mnist_cnn": (2, 3)}.get(net, (5, 5))
    for loop in [*alone, group]:  # warm-up: allocator, fused kernels' first calls
        step(loop)
    t = rounds(alone, group, steps, count)
    benchmark.pedantic(lambda: step(group), rounds=count, iterations=1)
    first = alone[0]
    macs = macs_per_sample(first.method.model, first.data.main.input_shape) * \
        first.streams.primary.batch_size
    info = {"replicas": replicas, "sequential_steps_per_s": 1 / t["seq"],
            "stacked_steps_per_s": 1 / t["stk"], "speedup": t["seq"] / t["stk"],
            "speedup_cpu_time": t["seq_cpu"] / t["stk_cpu"], "macs_per_batch": macs,
            "auto_stacks": macs < STACK_BATCH_MACS, "threads": 1,
            "load_1min": round(os.getloadavg()[0], 2)}
    benchmark.extra_info.update(info)
    print(f"\n{net} {method} R={replicas}: sequential {1 / t['seq']:.0f} steps/s, stacked "
          f"{1 / t['stk']:.0f} steps/s: {info['speedup']:.2f}x wall, "
          f"{info['speedup_cpu_time']:.2f}x CPU time (auto stacks: {info['auto_stacks']}, "
          f"load {info['load_1min']})")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("replicas", [1, 8, 16, 32, 64])
@pytest.mark.parametrize("net", ["mi_mlp", "mnist_cnn"])
def test_cuda_steps_per_second_stacked_vs_sequential(benchmark, net, replicas):
    alone, run = loops(net, "std", replicas, "cuda")
    group = stack_loops(alone, run)
    for loop in [*alone, group]:
        step(loop)
    t = rounds(alone, group, 10 if net == "mi_mlp" else 2, 5)
    benchmark.pedantic(lambda: step(group), rounds=5, iterations=1)
    benchmark.extra_info.update({"replicas": replicas, "speedup": t["seq"] / t["stk"],
                                 "device": torch.cuda.get_device_name()})
    print(f"\ncuda {net} R={replicas}: sequential {1 / t['seq']:.0f} steps/s, stacked "
          f"{1 / t['stk']:.0f} steps/s: {t['seq'] / t['stk']:.2f}x")

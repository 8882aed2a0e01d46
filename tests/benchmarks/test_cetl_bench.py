"""What CETL costs (paper 003).

1. The Fisher diagonal by ``torch.func`` (vmap of per-sample gradients, ``harness.api.
   fisher_diagonal``) against one backward per sample, on the 28x28 network the offline suite
   runs (``ci_cnn_small``, 122,794 parameters), 256 samples, one thread. Goal: >= 5x.
2. One round of Algorithm 1 (stages 1, 2, 3: one epoch each, the two Fisher computations at the
   stage ends included) against one epoch of plain training (``std``) of the same network on the
   same data (digits at 28x28, the transfer setting's target without the fraction: 1438 images,
   batch 32), through the engine's own epoch loop. The loop's ``epoch_seconds`` leaves out
   ``epoch_started``, where CETL computes its Fisher, so the time here is taken around it.

Run with ``pytest tests/benchmarks/test_cetl_bench.py --benchmark-only --benchmark-enable -s``;
the ratios are printed and stored in each benchmark's ``extra_info``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from fisher_reference import loop_fisher
from harness.api import fisher_diagonal
from harness.engine import resolve_device
from harness.plugins import Plugins
from harness.suite import RUN_DEFAULTS
from harness.train.build import build_method, build_stage_data
from harness.train.loop import EpochLoop
from harness.train.streams import StreamSet, resolve_streams
from harness.train.updates import Updates
from plugins.architectures.ci_cnn import ci_cnn_small

SAMPLES = 256
DATA = {"name": "digits", "size": 28, "fit": "pad", "box": 20}
ARCH = {"name": "ci_cnn_small"}
RUN = {**RUN_DEFAULTS, "optimizer": "adam", "lr": 1e-3, "batch_size": 32, "epochs": 3,
       "threads": 1, "device": "cpu"}


@pytest.fixture(autouse=True)
def one_thread_bench():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _fisher_problem():
    torch.manual_seed(0)
    model = ci_cnn_small((1, 28, 28), 10)
    g = torch.Generator().manual_seed(1)
    return model, torch.rand(SAMPLES, 1, 28, 28, generator=g), torch.randint(0, 10, (SAMPLES,), generator=g)


_TIMES: dict[str, float] = {}


@pytest.mark.parametrize("kind", ["loop", "vmap"])
def test_fisher_vmap_vs_loop(benchmark, kind):
    model, x, y = _fisher_problem()
    fn = (lambda: loop_fisher(model, x, y)) if kind == "loop" else \
        (lambda: fisher_diagonal(model, x, y, chunk=64))
    benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=1)
    _TIMES[kind] = benchmark.stats.stats.median
    if len(_TIMES) == 2:
        ratio = _TIMES["loop"] / _TIMES["vmap"]
        benchmark.extra_info["speedup"] = ratio
        print(f"\nFisher of {SAMPLES} samples on ci_cnn_small 28x28: loop {_TIMES['loop']:.3f} s, "
              f"vmap {_TIMES['vmap']:.3f} s: {ratio:.1f}x")


def _loop(plugins, method_spec, upstream, data, tmp: Path) -> EpochLoop:
    device = resolve_device("cpu")
    main = data.main
    method = build_method(plugins, method_spec, ARCH, data=data, input_shape=main.input_shape,
                          num_classes=main.num_classes, stage="bench", seed=0, epochs=3,
                          device=device, upstream=upstream, run=RUN)
    streams = StreamSet(resolve_streams(method.streams(), data.roles, 32), method.primary_stream,
                        0, device)
    return EpochLoop(method=method, updates=Updates(method, RUN, 3, device, False),
                     streams=streams, evaluators=[], data=data, epochs=3, device=device,
                     autocast=__import__("contextlib").nullcontext, artifact_dir=tmp,
                     eval_batch_size=1024)


def test_cetl_round_vs_std_epoch(benchmark, tmp_path):
    plugins = Plugins()
    data = build_stage_data(plugins, DATA, str(tmp_path), False)
    torch.manual_seed(0)
    source = _loop(plugins, {"name": "std"}, {}, data, tmp_path).method.eval()
    source.requires_grad_(False)

    def std_epoch():
        loop = _loop(plugins, {"name": "std"}, {}, data, tmp_path)
        t0 = time.perf_counter()
        loop.train_epoch(0)
        return time.perf_counter() - t0

    def cetl_round():
        loop = _loop(plugins, {"name": "cetl", "variant": "gfi"}, {"source": source}, data, tmp_path)
        t0 = time.perf_counter()
        for epoch in range(3):
            loop.train_epoch(epoch)
        return time.perf_counter() - t0

    std = min(std_epoch() for _ in range(3))
    rounds = []
    benchmark.pedantic(lambda: rounds.append(cetl_round()), rounds=3, iterations=1)
    ratio = min(rounds) / std
    benchmark.extra_info.update({"std_epoch_s": std, "cetl_round_s": min(rounds), "ratio": ratio})
    print(f"\none CETL round (gfi, 3 epochs + 2 Fisher computations) {min(rounds):.2f} s, one std "
          f"epoch {std:.2f} s, on {len(data.main.train)} images: {ratio:.1f}x")

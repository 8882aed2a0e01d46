"""The engine: determinism, schedules, failures, weights from upstream, a two-network method."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from harness.api import load_matching
from harness.engine import StageTask, run_stage
from harness.meters import choose_threads, macs_per_sample
from harness.plugins import Plugins
from harness.suite import RUN_DEFAULTS
from harness.train.updates import make_scheduler


@pytest.fixture(scope="module")
def plugins():
    return Plugins(["harness_test_plugins"])


def task(tmp_path, method="std", epochs=3, **run):
    settings = {**RUN_DEFAULTS, "epochs": epochs, "batch_size": 512, "lr": 4e-3, "threads": 1, **run}
    return StageTask(name="t", identity="id", stage="A", seed=123, dataset={"name": "ib12"},
                     architecture={"name": "mi_mlp"},
                     method=method if isinstance(method, dict) else {"name": method},
                     run=settings, evaluate=[{"name": "accuracy"}], config={},
                     artifact_dir=str(tmp_path / "art"), data_root=str(tmp_path / "data"))


def test_same_task_gives_identical_metrics(tmp_path, plugins):
    first = run_stage(task(tmp_path / "a"), plugins)
    second = run_stage(task(tmp_path / "b"), plugins)
    assert first.ok and second.ok
    strip = lambda h: [{k: v for k, v in row.items() if "seconds" not in k and "per_s" not in k}
                       for row in h]
    assert strip(first.history) == strip(second.history)
    assert first.history[-1]["loss"] < first.history[0]["loss"]
    assert (tmp_path / "a" / "art" / "checkpoint.pt").is_file()
    for key in ("peak_rss_mb", "seconds_per_epoch", "train_samples_per_s", "test_acc"):
        assert key in first.summary
    assert first.params["model_params"] == 294 and first.params["threads"] == 1


def test_nan_loss_fails_the_run_with_the_epoch(tmp_path, plugins):
    result = run_stage(task(tmp_path, {"name": "explode", "after": 2}, epochs=5), plugins)
    assert result.status == "FAILED"
    assert "loss became nan in epoch 3" in result.error
    assert len(result.history) == 2


def test_plugin_exception_is_recorded_with_traceback(tmp_path, plugins):
    result = run_stage(task(tmp_path, "boom"), plugins)
    assert result.status == "FAILED" and "boom from a plugin" in result.error
    assert "Traceback" in (tmp_path / "art" / "traceback.txt").read_text()


def _lrs(schedule, epochs, at):
    """The learning rate torch's scheduler gives during each 0-based epoch in ``at``."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = make_scheduler(optimizer, schedule, epochs)
    lrs = []
    for epoch in range(max(at) + 1):
        if epoch in at:
            lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return lrs


def test_schedules():
    assert make_scheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0),
                          {"name": "constant"}, 100) is None
    ms = {"name": "multistep", "milestones": [80, 120], "gamma": 0.1}
    assert _lrs(ms, 180, [79, 80, 119, 120]) == pytest.approx([1, .1, .1, .01])
    assert _lrs({"name": "step", "step_size": 10, "gamma": 0.5}, 100, [25]) == [0.25]
    assert _lrs({"name": "cosine"}, 10, [0, 5]) == pytest.approx([1.0, 0.5])
    assert _lrs({"name": "cosine", "min_lr": 0.1}, 10, [0, 5]) == pytest.approx([1.0, 0.55])


def test_schedule_reaches_the_optimizer(tmp_path, plugins):
    result = run_stage(task(tmp_path, epochs=4, schedule={"name": "step", "step_size": 2,
                                                          "gamma": 0.1}), plugins)
    assert [row["lr"] for row in result.history] == pytest.approx([4e-3, 4e-3, 4e-4, 4e-4])


def test_load_matching_keeps_a_head_of_another_size():
    source = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 10))
    target = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 100))
    fresh_head = target[2].weight.clone()
    loaded, skipped = load_matching(target, source.state_dict())
    assert loaded == ["0.weight", "0.bias"] and skipped == ["2.weight", "2.bias"]
    assert torch.equal(target[0].weight, source[0].weight)
    assert torch.equal(target[2].weight, fresh_head)


def test_macs_and_threads(plugins):
    mlp = plugins.get("architectures", "mi_mlp").obj((12,), 2)
    assert macs_per_sample(mlp, (12,)) == 12 * 10 + 10 * 7 + 7 * 5 + 5 * 4 + 4 * 3 + 3 * 2
    cnn = plugins.get("architectures", "mnist_cnn").obj((1, 28, 28), 10)
    assert sum(p.numel() for p in cnn.parameters()) == 38645
    macs = macs_per_sample(cnn, (1, 28, 28))
    assert macs == 28 * 28 * 64 * 9 + 14 * 14 * 64 * 64 * 9 + 7 * 7 * 64 * 9 + 49 * 10
    # deliberately: the MI net on one thread, the MNIST CNN on every core it is given
    assert choose_threads("auto", 294 * 512, 2) == 1
    assert choose_threads("auto", macs * 64, 2) == 2
    assert choose_threads(3, 0, 2) == 3


def test_run_settings_cover_every_optimizer(tmp_path, plugins):
    for opt in ("sgd", "adam", "adamw"):
        result = run_stage(task(tmp_path / opt, epochs=1, optimizer=opt), plugins)
        assert result.ok and math.isfinite(result.summary["loss"])


def test_amp_choice_follows_device_size_and_method():
    from harness.engine import AMP_BATCH_MACS, choose_amp

    class Safe:
        amp_safe = True

    class Unsafe:
        amp_safe = False

    cuda, cpu, big = torch.device("cuda"), torch.device("cpu"), AMP_BATCH_MACS
    assert choose_amp("auto", cuda, Safe(), big) is torch.bfloat16
    assert choose_amp("auto", cuda, Safe(), big - 1) is None      # smaller steps: casts cost more
    assert choose_amp("auto", cuda, Unsafe(), big) is None        # the method says no
    assert choose_amp("auto", cpu, Safe(), big) is None           # CPU autocast rarely pays
    assert choose_amp(False, cuda, Safe(), big) is None
    assert choose_amp(True, cpu, Unsafe(), 1) is torch.bfloat16   # asked for: given


def test_amp_true_trains_under_bfloat16_autocast(tmp_path, plugins):
    seen = []  # the dtypes the Linear layers compute in
    result_plain = run_stage(task(tmp_path / "plain", epochs=2), plugins)
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda m, i, o: seen.append(o.dtype) if isinstance(m, nn.Linear) else None)
    try:
        result = run_stage(task(tmp_path / "amp", epochs=2, amp=True), plugins)
    finally:
        handle.remove()
    assert result.ok and result_plain.ok
    assert result.params["amp"] == "bfloat16" and result_plain.params["amp"] == "off"
    assert torch.bfloat16 in seen and torch.float32 in seen  # training in bf16, evaluation in fp32
    assert result.history[-1]["loss"] != result_plain.history[-1]["loss"]

"""GPUs as a scheduled resource, tested without GPUs: the assignment of workers to GPUs apart
from CUDA, workers that report the GPU they were pinned to, and Ray's GPU requests."""

from __future__ import annotations

import pytest

from harness.cli import main
from harness.errors import UserError
from harness.placement import Placement, visible_gpus

# `stack: off`: the placement of single stage runs over workers (stacked, the four seeds would
# be one group on one worker)
SUITE = """
suite: placement
seeds: 4
defaults: {optimizer: adam, lr: 4.0e-3, batch_size: 512, epochs: 2, threads: 1, device: auto,
           stack: off}
stages:
  A: {dataset: ib12, architecture: mi_mlp, method: std}
evaluate: [{name: accuracy, every: end}]
"""


def test_round_robin_over_gpus_before_any_gets_a_second():
    p = Placement(["0", "1", "2"], runs_per_gpu=2)
    assert p.capacity == 6
    assert [p.slot_gpu(s) for s in range(6)] == ["0", "1", "2", "0", "1", "2"]
    assert p.share == 0.5
    p.check_jobs(6)
    with pytest.raises(UserError, match="--runs-per-gpu"):
        p.check_jobs(7)
    assert "GPU 0: 2, GPU 1: 1, GPU 2: 1" in p.describe(4)
    assert Placement().slot_gpu(3) is None and "CPU" in Placement().describe(2)
    with pytest.raises(UserError, match="runs-per-gpu"):
        Placement(["0"], runs_per_gpu=0)


def test_visible_gpus(monkeypatch):
    assert visible_gpus("0, 3") == ["0", "3"]
    with pytest.raises(UserError):
        visible_gpus("1,1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert visible_gpus(None) == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus(None) == []


def _pinned(tmp_path):
    from mlflow.tracking import MlflowClient

    from harness.tracking import resolve_home, tracking_uri
    c = MlflowClient(tracking_uri=tracking_uri(resolve_home(None)))
    exp = c.get_experiment_by_name("placement")
    runs = [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("harness.identity")]
    return sorted(r.data.params.get("measured.cuda_visible_devices", "") for r in runs)


@pytest.mark.parametrize("args, gpus", [
    (["-j", "2", "--gpus", "0,1"], {"0", "1"}),
    (["-j", "2", "--gpus", "7", "--runs-per-gpu", "2"], {"7"}),
])
def test_workers_are_pinned_to_their_gpu(write_suite, tmp_path, args, gpus):
    """Each worker process sees only its GPU (CUDA_VISIBLE_DEVICES) and records it; on this
    machine without CUDA the stage runs then train on the CPU, as `device: auto` says.

    What is guaranteed: every run saw exactly one of the GPUs, and the first two runs went to
    the two workers (both are ready at the start), so each GPU served at least one. How the
    other runs split depends on which worker finishes first: not asserted."""
    suite = write_suite(SUITE)
    assert main(["run", str(suite), "--quiet", "--log-model", "off", *args]) == 0
    pinned = _pinned(tmp_path)
    assert len(pinned) == 4 and set(pinned) == gpus, pinned


def test_too_many_jobs_for_the_gpus_and_plan_shows_placement(write_suite, capsys):
    suite = write_suite(SUITE)
    assert main(["run", str(suite), "-j", "3", "--gpus", "0,1"]) == 2
    assert "--runs-per-gpu" in capsys.readouterr().err
    assert main(["plan", str(suite), "--gpus", "0,1", "--runs-per-gpu", "2", "-j", "4"]) == 0
    out = capsys.readouterr().out
    assert "placement: 4 worker(s)" in out and "GPU 0: 2, GPU 1: 2" in out
    # without -j, as `run` with the same flags: the one-job executor, one stage run at a time
    assert main(["plan", str(suite), "--gpus", "0,1", "--runs-per-gpu", "2"]) == 0
    assert "placement: 1 worker(s)" in capsys.readouterr().out


def test_ray_requests_a_share_of_a_gpu_and_refuses_cuda_without_gpus():
    from types import SimpleNamespace

    from plugins.executors.ray_cluster import RayExecutor

    ray = RayExecutor(jobs=4)
    ray.placement = Placement(["0"], runs_per_gpu=4)
    task = lambda device: SimpleNamespace(name="A/std/seed0", run={"device": device})  # noqa: E731
    ray.cluster_gpus = 2.0
    assert ray._gpus(task("auto")) == 0.25 and ray._gpus(task("cpu")) == 0
    ray.cluster_gpus = 0.0
    assert ray._gpus(task("auto")) == 0
    with pytest.raises(UserError, match="no GPU"):
        ray._gpus(task("cuda"))

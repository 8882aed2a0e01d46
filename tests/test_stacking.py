"""Replicas trained as one stacked network (issue 24) against the same stage runs trained alone.

What is guaranteed, and all these tests assert: each replica of a group ends with the parameters
and logs the metrics it would alone, within 1e-6 (PyTorch's batched kernels sum in another order
than the unbatched ones, so agreement is to rounding, not bitwise), also after a kill and
``--resume``; a replica whose loss becomes NaN fails alone; ``stack`` is not part of a run's
identity. Nothing here measures time (tests/benchmarks/test_stacking_bench.py does).
"""

from __future__ import annotations

import math
import signal
from pathlib import Path

import pytest
import torch

from fresh_store import seed_store
from harness.cli import main
from harness.engine import CHECKPOINT, ModelSource, StageTask, run_stage
from harness.plugins import Plugins
from harness.stacked_run import GroupTask, run_group
from harness.suite import RUN_DEFAULTS, expand, load_suite
from test_faults import checkpoint, client, harness, stage_runs

TOL = 1e-6
TIMING = ("second", "per_s", "rss", "cuda_mb")
PLUGINS = ["--plugin", "harness_test_faults"]
METHODS = {
    "std": {"name": "std"},
    "racecar": {"name": "racecar", "layers": 6, "weight": 1.0e-2},
    "srip": {"name": "srip", "weight": 0.1},
}


@pytest.fixture(scope="module")
def plugins():
    return Plugins(["harness_test_faults"])


def task(folder: Path, i: int, method: dict, epochs: int = 4, init_from=None, **run) -> StageTask:
    settings = {**RUN_DEFAULTS, "epochs": epochs, "batch_size": 512, "lr": 4e-3, "threads": 1,
                **run}
    return StageTask(name=f"r{i}", identity=f"id{i}", stage="A", seed=100 + i,
                     dataset={"name": "ib12_flipped" if i % 2 else "ib12"},
                     architecture={"name": "mi_mlp"}, method=dict(method), run=settings,
                     evaluate=[{"name": "accuracy", "every": 2}], config={},
                     artifact_dir=str(folder / f"r{i}"), data_root=str(folder / "data"),
                     init_from=init_from)


def close(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b)) or abs(a - b) <= TOL * max(1.0, abs(a))


def same_history(alone, stacked) -> None:
    strip = [[{k: v for k, v in row.items() if not any(t in k for t in TIMING)} for row in r.history]
             for r in (alone, stacked)]
    assert len(strip[0]) == len(strip[1]) and strip[0] and all(
        a.keys() == b.keys() for a, b in zip(*strip))
    bad = [(row["epoch"], k, row[k], other[k]) for row, other in zip(*strip) for k in row
           if not close(row[k], other[k])]
    assert not bad, bad[:5]


def same_weights(alone, stacked) -> None:
    a, b = (torch.load(Path(r.artifact_dir) / CHECKPOINT, weights_only=True)["state_dict"]
            for r in (alone, stacked))
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.allclose(a[k], b[k], rtol=TOL, atol=TOL), (k, (a[k] - b[k]).abs().max())


@pytest.mark.parametrize("name", list(METHODS))
def test_four_replicas_stacked_equal_the_four_trained_alone(tmp_path, plugins, one_thread, name):
    """Own seeds, own data (two data sets of one shape), own upstream weights; racecar also
    clips each replica's gradient by its own norm."""
    upstream = []
    for u in range(2):
        up = run_stage(task(tmp_path / "up", 10 + u, METHODS["std"], epochs=1), plugins)
        assert up.ok
        upstream.append(ModelSource(str(Path(up.artifact_dir) / CHECKPOINT)))
    run = {"grad_clip": 0.5} if name == "racecar" else {}
    tasks = lambda where: [task(tmp_path / where, i, METHODS[name], init_from=upstream[i // 2],
                                **run) for i in range(4)]
    alone = [run_stage(t, plugins) for t in tasks("alone")]
    group = run_group(GroupTask(tasks("stacked"), "test"), plugins).results
    for a, s in zip(alone, group):
        assert a.ok and s.ok, (a.error, s.error, s.traceback)
        assert s.params["stacked_with"] == 4 and "stacked_with" not in a.params
        assert s.params["init_loaded_tensors"] == a.params["init_loaded_tensors"] > 0
        same_history(a, s)
        same_weights(a, s)
    if name == "racecar":
        assert "grad_norm" in group[0].history[-1]
    # the replicas did differ: the test compares four different runs, not one four times
    assert len({round(r.history[-1]["loss"], 6) for r in group}) == 4


def test_a_replica_whose_loss_becomes_nan_fails_alone(tmp_path, plugins, one_thread, monkeypatch):
    monkeypatch.setenv("HARNESS_TEST_POISON", "A:102")
    method = {"name": "poisoned", "after": 2}
    alone = [run_stage(task(tmp_path / "alone", i, method), plugins) for i in range(4)]
    group = run_group(GroupTask([task(tmp_path / "stacked", i, method) for i in range(4)]),
                      plugins).results
    assert [r.status for r in group] == [r.status for r in alone] == \
        ["FINISHED", "FINISHED", "FAILED", "FINISHED"]
    assert group[2].error == alone[2].error and "loss became nan in epoch 2" in group[2].error
    assert len(group[2].history) == 1 and not (Path(group[2].artifact_dir) / CHECKPOINT).exists()
    same_history(alone[2], group[2])
    for i in (0, 1, 3):  # the others went on, as if the failed one had never been there
        same_history(alone[i], group[i])
        same_weights(alone[i], group[i])


SUITE = """
suite: faults
seeds: 3
defaults: {optimizer: adam, lr: 4.0e-3, batch_size: 512, epochs: 8, threads: 1}
stages:
  A:  {dataset: ib12, architecture: mi_mlp, method: METHOD}
  AB: {from: A, dataset: ib12_flipped, method: std}
evaluate: [{name: accuracy, every: 2}]
profiles:
  alone: {stack: off}
"""


def results(home: Path, suite: str = "faults") -> dict[str, tuple[str, str, dict]]:
    return {r.info.run_name: (r.info.status, r.data.tags["harness.identity"],
                              {k: v for k, v in r.data.metrics.items()
                               if not any(t in k for t in TIMING)})
            for r in stage_runs(home, suite) if r.info.status == "FINISHED"}


def same_results(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        assert a[name][:2] == b[name][:2], name  # status and identity
        assert a[name][2].keys() == b[name][2].keys(), name
        bad = [k for k in a[name][2] if not close(a[name][2][k], b[name][2][k])]
        assert not bad, (name, bad)


def test_plan_shows_groups_and_stack_off_trains_alone(write_suite, tmp_path, capsys):
    suite = write_suite(SUITE.replace("METHOD", "std"))
    stacked, alone = seed_store(tmp_path / "stacked"), seed_store(tmp_path / "alone")
    assert main(["plan", str(suite), "--home", str(stacked)]) == 0
    out = capsys.readouterr().out
    assert "3 stacked: A/std/seed0-2  (134,656 multiply-accumulates per batch, below 8,000,000" in out
    assert "3 stacked: AB/std/seed0-2" in out
    assert main(["plan", str(suite), "--home", str(stacked), "--profile", "alone"]) == 0
    out = capsys.readouterr().out
    assert "stacked:" not in out and "alone: A/std/seed0-2, AB/std/seed0-2  (stack: off)" in out

    assert main(["run", str(suite), "--home", str(stacked), "--quiet"]) == 0
    assert main(["run", str(suite), "--home", str(alone), "--quiet", "--profile", "alone"]) == 0
    same_results(results(stacked), results(alone))
    params = {r.info.run_name: r.data.params for r in stage_runs(stacked)}
    assert {p["measured.stacked_with"] for p in params.values()} == {"3"}
    assert all("measured.stacked_with" not in r.data.params for r in stage_runs(alone))
    # a replica's identity does not say how it trained: finished either way, nothing re-runs
    capsys.readouterr()
    assert main(["run", str(suite), "--home", str(stacked), "--profile", "alone"]) == 0
    assert "all 6 stage runs of suite 'faults' already finished" in capsys.readouterr().err


@pytest.mark.slow
def test_a_group_killed_and_resumed_equals_one_never_interrupted(write_suite, tmp_path, capsys):
    suite = write_suite(SUITE.replace("METHOD", "{name: srip, weight: 0.1, label: srip}"))
    straight, resumed = seed_store(tmp_path / "straight"), seed_store(tmp_path / "resumed")
    assert main(["run", str(suite), "--home", str(straight), "--quiet", *PLUGINS]) == 0
    proc = harness("run", suite, "--home", resumed, "--quiet", "--checkpoint-every", "0",
                   *PLUGINS, fault="A/srip/seed1:5:kill:-")
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert len(list((resumed / "resume").glob("*/progress.json"))) == 3  # every replica saved
    capsys.readouterr()
    assert main(["run", str(suite), "--home", str(resumed), "--resume", *PLUGINS]) == 0
    assert "3 interrupted stage run(s) continue" in capsys.readouterr().err
    assert results(resumed) == results(straight)  # the same stacked arithmetic: bitwise
    alone = seed_store(tmp_path / "alone")  # and the runs trained alone, to rounding
    assert main(["run", str(suite), "--home", str(alone), "--quiet", "--profile", "alone",
                 *PLUGINS]) == 0
    same_results(results(resumed), results(alone))
    for name in ("A/srip/seed0", "A/srip/seed2", "AB/srip/seed1"):
        a, b = checkpoint(straight, name), checkpoint(resumed, name)
        assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor)), name
    runs = {r.info.run_name: r for r in stage_runs(resumed) if r.info.status == "FINISHED"}
    assert {runs[f"A/srip/seed{i}"].data.params["measured.resumed_from_epoch"] for i in range(3)} \
        == {"5"}
    curve = client(resumed).get_metric_history(runs["A/srip/seed2"].info.run_id, "loss_task")
    assert [m.step for m in curve] == list(range(1, 9))


def test_a_nan_replica_of_a_group_fails_alone_in_a_grid(write_suite, tmp_path, capsys,
                                                       monkeypatch):
    text = SUITE.replace("METHOD", "{name: poisoned, after: 3, label: P}")
    suite = write_suite(text)
    run = next(r for r in expand(load_suite(suite)) if r.name == "A/P/seed1")
    monkeypatch.setenv("HARNESS_TEST_POISON", f"A:{run.seed}")
    home = seed_store(tmp_path / "h")
    assert main(["run", str(suite), "--home", str(home), "-j", "2", "--executor", "processes",
                 *PLUGINS]) == 1
    assert "loss became nan in epoch 3" in capsys.readouterr().err
    runs = {r.info.run_name: r for r in stage_runs(home)}
    assert {n: r.info.status for n, r in runs.items()} == {
        "A/P/seed0": "FINISHED", "A/P/seed1": "FAILED", "A/P/seed2": "FINISHED",
        "AB/P/seed0": "FINISHED", "AB/P/seed1": "KILLED", "AB/P/seed2": "FINISHED"}
    assert "loss became nan in epoch 3" in runs["A/P/seed1"].data.tags["harness.error"]
    history = client(home).get_metric_history(runs["A/P/seed1"].info.run_id, "loss_task")
    assert [m.step for m in history] == [1, 2]
    assert runs["A/P/seed0"].data.params["measured.stacked_with"] == "3"

"""The CLI end to end in a temporary folder: run, skip, errors, tracking layout, the UI."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from harness.cli import main
from readme_tour import tour

TINY = """
suite: tiny
seeds: 2
defaults: {optimizer: adam, lr: 4.0e-3, batch_size: 512, epochs: 4, threads: 1}
grid:
  method: [std]
  dataset: [ib12]
  architecture: [mi_mlp]
evaluate: [{name: accuracy, every: 2}]
"""


def client(home: Path):
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")


def finished_runs(home: Path, suite: str = "tiny"):
    c = client(home)
    exp = c.get_experiment_by_name(suite)
    return c.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'")


def test_run_twice_reruns_nothing(write_suite, isolated_home, capsys):
    suite = write_suite(TINY)
    assert main(["run", str(suite)]) == 0
    first = finished_runs(isolated_home)
    assert len(first) == 3  # two stage runs and their invocation
    capsys.readouterr()
    assert main(["run", str(suite)]) == 0
    assert "all 2 stage runs of suite 'tiny' already finished" in capsys.readouterr().err
    assert len(finished_runs(isolated_home)) == len(first)


def test_tracking_layout(write_suite, isolated_home):
    suite = write_suite(TINY)
    assert main(["run", str(suite), "--quiet"]) == 0
    c = client(isolated_home)
    runs = finished_runs(isolated_home)
    parent = next(r for r in runs if r.data.tags.get("harness.kind") == "invocation")
    children = [r for r in runs if r is not parent]
    assert {r.info.run_name for r in children} == {"train/std/seed0", "train/std/seed1"}
    child = children[0]
    tags = child.data.tags
    assert tags["mlflow.parentRunId"] == parent.info.run_id
    for key in ("suite", "setting", "stage", "method", "dataset", "architecture", "seed",
                "identity", "git_commit", "versions"):
        assert tags[f"harness.{key}"], key
    assert json.loads(tags["harness.versions"])["torch"] == torch.__version__.split("+")[0] or True
    assert child.data.params["run.lr"] == "0.004" and child.data.params["method.name"] == "std"
    assert [m.step for m in c.get_metric_history(child.info.run_id, "loss_task")] == [1, 2, 3, 4]
    assert [m.step for m in c.get_metric_history(child.info.run_id, "test_acc")] == [2, 4]
    for key in ("final_test_acc", "final_peak_rss_mb", "final_seconds_per_epoch",
                "final_train_samples_per_s"):
        assert key in child.data.metrics
    artifacts = {a.path for a in c.list_artifacts(child.info.run_id)}
    assert {"config.json", "checkpoint.pt"} <= artifacts
    assert any(a.path == "suite" for a in c.list_artifacts(parent.info.run_id))
    # the artifact store sits under the home folder, with absolute URIs
    assert child.info.artifact_uri.startswith((isolated_home / "artifacts").as_uri())
    assert not (isolated_home / "staging").exists() or not any((isolated_home / "staging").iterdir())


def test_same_suite_twice_gives_identical_metrics(write_suite, tmp_path):
    suite = write_suite(TINY)
    results = []
    for name in ("h1", "h2"):
        home = tmp_path / name
        assert main(["run", str(suite), "--home", str(home), "--quiet"]) == 0
        results.append(sorted((r.info.run_name, {k: v for k, v in r.data.metrics.items()
                                                 if "second" not in k and "per_s" not in k
                                                 and "rss" not in k and k.startswith("final_")})
                              for r in finished_runs(home) if r.info.run_name.startswith("train")))
    assert results[0] == results[1]


@pytest.mark.empty_home
def test_unknown_method_is_one_line_exit_2(write_suite, isolated_home, harness_cli):
    suite = write_suite(TINY.replace("method: [std]", "method: [sdt]"))
    proc = harness_cli("run", suite)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(suite) in lines[0] and "grid.method[0]" in lines[0]
    assert "did you mean 'std'" in lines[0] and "Traceback" not in proc.stderr
    assert not isolated_home.exists()  # nothing was created, let alone recorded


def test_home_from_another_directory_lands_in_the_same_store(write_suite, tmp_path, monkeypatch):
    suite = write_suite(TINY)
    monkeypatch.delenv("HARNESS_HOME")
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(suite), "--quiet", "--home", "rel-home"]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("HARNESS_HOME", str(tmp_path / "rel-home"))
    assert main(["run", str(suite), "--quiet"]) == 0
    assert len(finished_runs(tmp_path / "rel-home")) == 3
    assert not (elsewhere / ".harness").exists()


def test_second_network_and_frozen_upstream(write_suite, isolated_home):
    suite = write_suite("""
suite: refs
defaults: {optimizer: adam, lr: 4.0e-3, batch_size: 512, epochs: 3, threads: 1}
stages:
  A: {dataset: ib12, architecture: mi_mlp, method: std}
  S: {dataset: ib12, architecture: mi_mlp, method: {name: two_net, distill: 1.0, label: student}, refs: {teacher: A}}
  F: {from: A, dataset: ib12_flipped, method: std}
evaluate: [accuracy, param_count]
""")
    assert main(["run", str(suite), "--plugin", "harness_test_plugins", "--quiet"]) == 0
    runs = {r.info.run_name: r for r in finished_runs(isolated_home, "refs")}
    c = client(isolated_home)

    def checkpoint(name):
        path = c.download_artifacts(runs[name].info.run_id, "checkpoint.pt", str(isolated_home))
        return torch.load(path, weights_only=True)["state_dict"]

    a, s = checkpoint("A/std/seed0"), checkpoint("S/student/seed0")
    # both networks are checkpointed; the frozen teacher is not part of the student's checkpoint
    assert {k.split(".")[0] for k in s} == {"model", "second"}
    assert runs["S/student/seed0"].data.metrics["final_params_second"] == 294
    assert "final_loss_distill" in runs["S/student/seed0"].data.metrics
    # phase II starts from A's weights (every tensor matched), the teacher stayed frozen
    assert runs["F/std/seed0"].data.params["measured.init_loaded_tensors"] == "12"
    assert runs["A/std/seed0"].data.params["measured.init_loaded_tensors"] == "0"
    after = checkpoint("A/std/seed0")
    assert all(torch.equal(a[k], after[k]) for k in a)


def test_failed_stage_skips_dependents_and_exits_1(write_suite, isolated_home, capsys):
    suite = write_suite("""
suite: fails
defaults: {batch_size: 512, epochs: 3, threads: 1}
stages:
  A: {dataset: ib12, architecture: mi_mlp, method: {name: explode, after: 1}}
  AB: {from: A, dataset: ib12_flipped, method: std}
  B: {dataset: ib12_flipped, architecture: mi_mlp, method: std}
""")
    assert main(["run", str(suite), "--plugin", "harness_test_plugins"]) == 1
    err = capsys.readouterr().err
    assert "1 finished, 1 failed, 1 skipped" in err
    c = client(isolated_home)
    exp = c.get_experiment_by_name("fails")
    status = {r.info.run_name: r.info.status for r in c.search_runs([exp.experiment_id])
              if r.data.tags.get("harness.identity")}
    assert status == {"A/explode-after1/seed0": "FAILED", "AB/explode-after1/seed0": "KILLED",
                      "B/std/seed0": "FINISHED"}


def test_validate_list_plugins_and_dry_run(write_suite, capsys):
    suite = write_suite(TINY)
    assert main(["validate", str(suite)]) == 0
    assert "is valid" in capsys.readouterr().out
    assert main(["list", "methods"]) == 0
    assert "std" in capsys.readouterr().out
    assert main(["plugins", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert any(p["registers"].get("datasets") for p in info)
    assert main(["run", str(suite), "--dry-run"]) == 0
    assert "2 stage runs" in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ui_serves_the_store(write_suite, isolated_home, harness_cli):
    suite = write_suite(TINY)
    assert main(["run", str(suite), "--quiet"]) == 0
    port, printed = _free_port(), isolated_home.parent / "ui.out"
    exe = Path(sys.executable).with_name("harness")
    with printed.open("w") as out:  # the README tour's command, on a port of the test's own
        proc = subprocess.Popen([str(exe), *tour("harness ui"), "--port", str(port)], stdout=out,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=tiny"
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    body = json.load(resp)
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    pytest.fail("the MLflow UI did not come up")
                time.sleep(1)
        assert body["experiment"]["name"] == "tiny"
        link = f"http://127.0.0.1:{port}/#/experiments/{body['experiment']['experiment_id']}" \
               "?workflowType=machine_learning"
        assert f"  tiny  {link}" in printed.read_text().splitlines()
    finally:
        import os
        import signal
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_version(capsys):
    from harness import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"harness {__version__}"


@pytest.mark.parametrize("flags, workers", [([], 1), (["-j", "2"], 2),
                                            (["--executor", "processes"], None)])
def test_plan_describes_the_workers_that_run_uses(write_suite, capsys, monkeypatch, flags, workers):
    """`plan` and `run` resolve -j and --executor through one function; without -j the one-job
    executor runs one stage run at a time, and a parallel executor one per core."""
    import harness.cli as cli
    from harness.executors import cores_here

    suite = write_suite(TINY)
    made = {}
    real = cli._executor

    def spy(args, plugins):
        made["jobs"] = real(args, plugins).jobs
        raise KeyboardInterrupt  # stop before anything runs

    monkeypatch.setattr(cli, "_executor", spy)
    assert main(["run", str(suite), *flags]) == 130
    assert main(["plan", str(suite), *flags]) == 0
    expected = workers or cores_here()
    assert made["jobs"] == expected
    assert f"placement: {expected} worker(s)" in capsys.readouterr().out


def test_the_ui_links_open_each_experiment_on_its_training_runs(write_suite, isolated_home):
    """MLflow 3.17's UI opens an experiment in its GenAI mode, on a traces overview, unless the
    address asks for the model-training view; the store's empty Default experiment gets none."""
    from harness.ui import experiment_links

    suite = write_suite(TINY.replace("epochs: 4", "epochs: 1"))
    assert main(["run", str(suite), "--quiet"]) == 0
    exp = client(isolated_home).get_experiment_by_name("tiny")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment_links(client(isolated_home), "http://h:1") == [
        ("tiny", f"http://h:1/#/experiments/{exp.experiment_id}?workflowType=machine_learning")]

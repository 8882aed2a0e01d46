"""Executors: scheduling, equality with inline, parallelism, dead workers, live epochs, Ray, and
tracking through a real MLflow server."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fresh_store import seed_store
from harness.cli import main
from harness.engine import StageTask
from harness.executors import Job, Ready
from harness.suite import RUN_DEFAULTS

GRID = """
suite: grid
seeds: 2
defaults: {optimizer: adam, lr: 4.0e-3, batch_size: 512, epochs: 4, threads: 1}
stages:
  A:  {dataset: ib12, architecture: mi_mlp, method: {name: sleepy, pause: 0.01, label: std}}
  AB: {from: A, dataset: ib12_flipped, method: std}
  B:  {dataset: ib12_flipped, architecture: mi_mlp, method: {name: sleepy, pause: 0.01, label: std}}
evaluate: [{name: accuracy, every: 2}]
"""
PLUGINS = ["--plugin", "harness_test_faults", "--plugin", "harness_test_plugins"]
TIMING = ("second", "per_s", "rss", "cuda_mb")


def client(uri: str):
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=uri)


def sqlite(home: Path) -> str:
    return f"sqlite:///{home / 'mlflow.db'}"


def stage_runs(uri: str, suite: str):
    c = client(uri)
    exp = c.get_experiment_by_name(suite)
    return [r for r in c.search_runs([exp.experiment_id], max_results=1000)
            if r.data.tags.get("harness.identity")]


def results(uri: str, suite: str = "grid") -> dict[str, dict[str, float]]:
    out = {}
    for r in stage_runs(uri, suite):
        assert r.info.status == "FINISHED", r.info.run_name
        assert r.info.run_name not in out, f"{r.info.run_name} ran twice"
        out[r.info.run_name] = {k: v for k, v in r.data.metrics.items()
                                if not any(t in k for t in TIMING)}
    return out


def test_ready_releases_a_job_when_its_upstream_jobs_are_done():
    a, b = Job(("A", 0), "A0"), Job(("A", 1), "A1")
    ab = Job(("AB", 0), "AB0", deps=[("A", 0)])
    both = Job(("C", 0), "C0", deps=[("A", 0), ("A", 1)])
    outside = Job(("D", 0), "D0", deps=[("finished-before", 0)])  # not among the jobs: no wait
    ready = Ready([a, b, ab, both, outside])
    assert ready.pop().name == "A0" and ready.pop().name == "A1"
    ready.done(("A", 0))
    assert ready.pop().name == "AB0"  # before D0: plan order among the jobs that may start
    assert ready.pop().name == "D0"
    assert ready.pop() is None and ready  # C0 still waits for A1
    ready.done(("A", 1))
    assert ready.pop().name == "C0"
    assert ready.pop() is None and not ready


@pytest.mark.slow
def test_processes_give_the_results_of_inline_and_overlap_in_time(write_suite, tmp_path):
    suite = write_suite(GRID)
    inline, parallel = seed_store(tmp_path / "inline"), seed_store(tmp_path / "parallel")
    assert main(["run", str(suite), "--home", str(inline), "--quiet", *PLUGINS]) == 0
    assert main(["run", str(suite), "--home", str(parallel), "--quiet", "-j", "2", *PLUGINS]) == 0
    expected = results(sqlite(inline))
    assert len(expected) == 6 and results(sqlite(parallel)) == expected
    runs = stage_runs(sqlite(parallel), "grid")
    spans = sorted((r.info.start_time, r.info.end_time) for r in runs)
    assert any(s2 < e1 for (_, e1), (s2, _) in zip(spans, spans[1:])), "no two runs overlapped"
    # AB/seed0 started only after A/seed0 ended
    by_name = {r.info.run_name: r.info for r in runs}
    assert by_name["AB/std/seed0"].start_time >= by_name["A/std/seed0"].end_time
    assert all(r.data.params["measured.threads"] == "1" for r in runs)


def test_a_dead_worker_fails_only_its_stage_run(write_suite, tmp_path, capsys):
    suite = write_suite("""
suite: grid
defaults: {batch_size: 512, epochs: 2, threads: 1}
stages:
  K:  {dataset: ib12, architecture: mi_mlp, method: suicide}
  KB: {from: K, dataset: ib12_flipped, method: std}
  B:  {dataset: ib12_flipped, architecture: mi_mlp, method: std}
  C:  {dataset: ib12, architecture: mi_mlp, method: std}
""")
    home = seed_store(tmp_path / "h")
    assert main(["run", str(suite), "--home", str(home), "--executor", "processes", "-j", "2",
                 *PLUGINS]) == 1
    assert "2 finished, 1 failed, 1 skipped" in capsys.readouterr().err
    runs = {r.info.run_name: r for r in stage_runs(sqlite(home), "grid")}
    assert {n: r.info.status for n, r in runs.items()} == {
        "K/suicide/seed0": "FAILED", "KB/suicide/seed0": "KILLED", "B/std/seed0": "FINISHED",
        "C/std/seed0": "FINISHED"}
    assert "killed by SIGKILL" in runs["K/suicide/seed0"].data.tags["harness.error"]


def test_workers_report_epochs_while_they_train(tmp_path):
    from plugins.executors.processes import Processes

    settings = {**RUN_DEFAULTS, "epochs": 4, "batch_size": 512, "threads": 1}
    task = StageTask(name="t", identity="id", stage="A", seed=1, dataset={"name": "ib12"},
                     architecture={"name": "mi_mlp"}, method={"name": "sleepy", "pause": 0.06},
                     run=settings, evaluate=[], config={}, artifact_dir=str(tmp_path / "art"),
                     data_root=str(tmp_path / "data"), plugin_modules=("harness_test_faults",))
    events = []
    executor = Processes(jobs=1)
    executor.on_epoch = lambda job, epoch, metrics: events.append(("epoch", epoch, metrics["lr"]))

    def finish(job, result):
        events.append(("finish", result.status, len(result.history)))

    executor.run([Job(("A",), "A")], lambda job: task, None, finish)
    assert events[-1] == ("finish", "FINISHED", 4)
    live = [e for e in events if e[0] == "epoch"]
    # some epochs arrived before the result did (which carries all four), in order
    assert live and [e[1] for e in live] == list(range(1, len(live) + 1))
    assert (tmp_path / "art" / "checkpoint.pt").is_file()


def test_executor_options_are_checked(write_suite, capsys):
    suite = write_suite(GRID)
    for args, where in ((["-j", "0"], "-j: -j must be at least 1"),
                        (["--executor", "proceses"], "--executor: unknown executor 'proceses' "
                                                     "(did you mean 'processes'?)"),
                        (["--executor", "processes", "--address", "ray://x:1"],
                         "--address: executor 'processes' has no option 'address'")):
        assert main(["run", str(suite), *args, *PLUGINS]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and where in err, err


@pytest.mark.slow
def test_ray_executor(write_suite, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    tests = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", tests)  # the Ray workers import the test plugins
    suite = write_suite(GRID.replace("seeds: 2", "seeds: 1"))
    inline, cluster = seed_store(tmp_path / "inline"), seed_store(tmp_path / "ray")
    assert main(["run", str(suite), "--home", str(inline), "--quiet", *PLUGINS]) == 0
    assert main(["run", str(suite), "--home", str(cluster), "--quiet", "--executor", "ray",
                 "-j", "2", *PLUGINS]) == 0
    assert results(sqlite(cluster)) == results(sqlite(inline))
    runs = {r.info.run_name: r for r in stage_runs(sqlite(cluster), "grid")}
    # AB read A's checkpoint, shipped to the Ray task; A's own checkpoint came back
    assert runs["AB/std/seed0"].data.params["measured.init_loaded_tensors"] == "12"
    artifacts = {a.path for a in client(sqlite(cluster)).list_artifacts(runs["A/std/seed0"].info.run_id)}
    assert "checkpoint.pt" in artifacts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real ``mlflow server`` on loopback with its own SQLite backend and artifact folder."""
    port = _free_port()
    folder = seed_store(tmp_path / "server")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", sqlite(folder),
         "--artifacts-destination", (folder / "artifacts").as_uri(), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    import urllib.request
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5):
                break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail("mlflow server did not come up")
            time.sleep(0.5)
    try:
        yield url
    finally:
        import os
        import signal
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.slow
def test_a_suite_against_a_real_mlflow_server(write_suite, tmp_path, monkeypatch, mlflow_server,
                                              capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    suite = write_suite(GRID.replace("seeds: 2", "seeds: 1"))
    home = tmp_path / "h"
    assert main(["run", str(suite), "--home", str(home), "--quiet", "-j", "2", *PLUGINS]) == 0
    assert not (home / "mlflow.db").exists()  # everything went to the server
    got = results(mlflow_server)
    assert set(got) == {"A/std/seed0", "AB/std/seed0", "B/std/seed0"}
    runs = {r.info.run_name: r for r in stage_runs(mlflow_server, "grid")}
    # AB's start from A went through the server's artifact store
    assert runs["AB/std/seed0"].data.params["measured.init_loaded_tensors"] == "12"
    c = client(mlflow_server)
    path = c.download_artifacts(runs["A/std/seed0"].info.run_id, "config.json", str(tmp_path))
    assert json.loads(Path(path).read_text())["stage"] == "A"
    assert [m.step for m in c.get_metric_history(runs["B/std/seed0"].info.run_id, "loss")] == [1, 2, 3, 4]
    capsys.readouterr()
    assert main(["run", str(suite), "--home", str(home), *PLUGINS]) == 0
    assert "already finished; nothing to run" in capsys.readouterr().err
    assert len(stage_runs(mlflow_server, "grid")) == 3

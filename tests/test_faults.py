"""Faults: NaN and plugin exceptions, a driver killed with SIGKILL mid-grid, ``--resume``, Ctrl-C.

Everything runs the real CLI on the MI network with a few epochs; the kills come from
``harness_test_faults`` (a hook that kills or blocks the process training a chosen stage run at a
chosen epoch), so that each test knows exactly where the grid stopped.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import subprocess_env
from fresh_store import seed_store
from harness.cli import main

# `stack: off`: these tests stop a grid at one stage run while another has finished, which needs
# the seeds trained one after another (a stacked group's faults: tests/test_stacking.py)
SUITE = """
suite: faults
seeds: 2
defaults: {optimizer: adam, lr: 4.0e-3, batch_size: 512, epochs: 8, threads: 1, stack: off}
stages:
  A:  {dataset: ib12, architecture: mi_mlp, method: std}
  AB: {from: A, dataset: ib12_flipped, method: std}
evaluate: [{name: accuracy, every: 2}]
"""
PLUGINS = ["--plugin", "harness_test_faults", "--plugin", "harness_test_plugins"]
TIMING = ("second", "per_s", "rss", "cuda_mb")  # metrics that measure the machine, not the result


def client(home: Path):
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")


def all_runs(home: Path, suite: str = "faults"):
    c = client(home)
    exp = c.get_experiment_by_name(suite)
    return c.search_runs([exp.experiment_id], max_results=1000)


def stage_runs(home: Path, suite: str = "faults"):
    return [r for r in all_runs(home, suite) if r.data.tags.get("harness.identity")]


def statuses(home: Path, suite: str = "faults") -> list[tuple[str, str]]:
    return sorted((r.info.run_name, r.info.status) for r in stage_runs(home, suite))


def results(home: Path) -> dict[str, dict[str, float]]:
    """Final metrics of the finished stage runs, without the ones that time the machine."""
    return {r.info.run_name: {k: v for k, v in r.data.metrics.items()
                              if not any(t in k for t in TIMING)}
            for r in stage_runs(home) if r.info.status == "FINISHED"}


def checkpoint(home: Path, name: str) -> dict[str, torch.Tensor]:
    run = next(r for r in stage_runs(home) if r.info.run_name == name and r.info.status == "FINISHED")
    path = client(home).download_artifacts(run.info.run_id, "checkpoint.pt", str(home))
    return torch.load(path, weights_only=True)["state_dict"]


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_harness_left_behind():
    """A test that fails half-way (a timeout) kills what it started, workers included, rather
    than leaving it to train beside the tests that follow."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):  # not a group leader, or gone
                proc.kill()
            proc.wait()


def harness(*args, fault: str | None = None, **popen):
    exe = Path(sys.executable).with_name("harness")
    env = subprocess_env({"HARNESS_TEST_FAULT": fault} if fault else {})
    proc = subprocess.Popen([str(exe), *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)
    _STARTED.append(proc)
    return proc


def wait_for_file(path: Path, proc, timeout: float = 120) -> str:
    deadline = time.time() + timeout
    while not path.exists() or not path.read_text():
        if proc.poll() is not None:
            pytest.fail(f"the run ended early ({proc.returncode}): {proc.stderr.read()}")
        if time.time() > deadline:
            pytest.fail("the stage run never reached the fault")
        time.sleep(0.1)
    return path.read_text()


def gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("executor", ["inline", "processes"])
def test_nan_and_plugin_exception_fail_their_runs_and_skip_dependents(write_suite, tmp_path, capsys,
                                                                      executor):
    suite = write_suite("""
suite: faults
defaults: {batch_size: 512, epochs: 3, threads: 1}
stages:
  N:  {dataset: ib12, architecture: mi_mlp, method: {name: explode, after: 1, label: nan}}
  NB: {from: N, dataset: ib12_flipped, method: std}
  E:  {dataset: ib12, architecture: mi_mlp, method: {name: boom, label: boom}}
  EB: {from: E, dataset: ib12_flipped, method: std}
  B:  {dataset: ib12_flipped, architecture: mi_mlp, method: std}
""")
    home = seed_store(tmp_path / "h")
    assert main(["run", str(suite), "--home", str(home), "--executor", executor, "-j", "2",
                 *PLUGINS]) == 1
    err = capsys.readouterr().err
    assert "1 finished, 2 failed, 2 skipped" in err
    assert "loss became nan in epoch 2" in err and "boom from a plugin" in err
    runs = {r.info.run_name: r for r in stage_runs(home)}
    assert {n: r.info.status for n, r in runs.items()} == {
        "N/nan/seed0": "FAILED", "NB/nan/seed0": "KILLED", "E/boom/seed0": "FAILED",
        "EB/boom/seed0": "KILLED", "B/std/seed0": "FINISHED"}
    assert "loss became nan in epoch 2" in runs["N/nan/seed0"].data.tags["harness.error"]
    assert "E/boom/seed0 did not finish" in runs["EB/boom/seed0"].data.tags["harness.skipped"]
    trace = client(home).download_artifacts(runs["E/boom/seed0"].info.run_id, "traceback.txt",
                                            str(tmp_path))
    text = Path(trace).read_text()
    assert "Traceback" in text and "RuntimeError: boom from a plugin" in text
    # the failed run kept what it measured before the NaN
    history = client(home).get_metric_history(runs["N/nan/seed0"].info.run_id, "loss_task")
    assert [m.step for m in history] == [1]
    parent = next(r for r in all_runs(home) if r.data.tags.get("harness.kind") == "invocation")
    assert parent.info.status == "FAILED"


@pytest.mark.slow
def test_sigkilled_driver_is_cleaned_up_and_rerun_without_duplicates(write_suite, tmp_path, capsys):
    suite = write_suite(SUITE)
    home = seed_store(tmp_path / "h")
    proc = harness("run", suite, "--home", home, "--quiet", *PLUGINS, fault="A/std/seed1:5:kill:-")
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert statuses(home) == [("A/std/seed0", "FINISHED"), ("A/std/seed1", "RUNNING"),
                              ("AB/std/seed0", "FINISHED")]
    first = {r.info.run_name: r.info.run_id for r in stage_runs(home)}

    assert main(["run", str(suite), "--home", str(home), *PLUGINS]) == 0
    err = capsys.readouterr().err
    assert "marked 1 stage run(s) left RUNNING by a harness run that died as KILLED" in err
    assert "2 of 4 stage runs already finished; running the other 2" in err
    assert statuses(home) == [("A/std/seed0", "FINISHED"), ("A/std/seed1", "FINISHED"),
                              ("A/std/seed1", "KILLED"), ("AB/std/seed0", "FINISHED"),
                              ("AB/std/seed1", "FINISHED")]
    runs = stage_runs(home)
    finished = [r.data.tags["harness.identity"] for r in runs if r.info.status == "FINISHED"]
    assert len(finished) == len(set(finished)) == 4  # no duplicate finished stage runs
    killed = next(r for r in runs if r.info.status == "KILLED")
    assert killed.info.run_id == first["A/std/seed1"]
    assert "died" in killed.data.tags["harness.orphaned"]
    # the finished runs of the killed invocation were kept, not re-run
    assert {r.info.run_id for r in runs if r.info.run_name in ("A/std/seed0", "AB/std/seed0")} == \
        {first["A/std/seed0"], first["AB/std/seed0"]}
    parents = sorted((r.info.start_time, r.info.status) for r in all_runs(home)
                     if r.data.tags.get("harness.kind") == "invocation")
    assert [s for _, s in parents] == ["KILLED", "FINISHED"]
    assert main(["run", str(suite), "--home", str(home), *PLUGINS]) == 0
    assert len(stage_runs(home)) == 5  # a third run changes nothing


@pytest.mark.slow
def test_sigkilled_driver_takes_its_workers_along(write_suite, tmp_path, capsys):
    suite = write_suite(SUITE)
    home, marker = seed_store(tmp_path / "h"), tmp_path / "blocked"
    proc = harness("run", suite, "--home", home, "-j", "2", "--quiet", *PLUGINS,
                   fault=f"A/std/seed1:3:block:{marker}")
    worker = int(wait_for_file(marker, proc))
    proc.kill()  # the driver only: its workers must not train on unrecorded
    proc.communicate(timeout=60)
    assert gone(worker), "a worker outlived its driver"
    assert main(["run", str(suite), "--home", str(home), "-j", "2", *PLUGINS]) == 0
    assert "left RUNNING by a harness run that died as KILLED" in capsys.readouterr().err
    finished = [r.data.tags["harness.identity"] for r in stage_runs(home)
                if r.info.status == "FINISHED"]
    assert len(finished) == len(set(finished)) == 4
    assert all(r.info.status != "RUNNING" for r in all_runs(home))


@pytest.mark.slow
def test_resume_after_sigkill_equals_an_uninterrupted_run(write_suite, tmp_path, capsys):
    suite = write_suite(SUITE)
    straight, resumed = seed_store(tmp_path / "straight"), seed_store(tmp_path / "resumed")
    assert main(["run", str(suite), "--home", str(straight), "--quiet", *PLUGINS]) == 0

    proc = harness("run", suite, "--home", resumed, "--quiet", "--checkpoint-every", "0", *PLUGINS,
                   fault="A/std/seed1:5:kill:-")
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    saved = list((resumed / "resume").glob("*/progress.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["epoch"] == 5

    capsys.readouterr()
    assert main(["plan", str(suite), "--home", str(resumed), "-j", "2", *PLUGINS]) == 0
    out = capsys.readouterr().out
    assert "4 stage runs, 2 finished, 2 to run" in out
    assert "saved at epoch 5: --resume does the last 3" in out
    assert "marked RUNNING in the store" in out and "after A/std/seed1" in out
    # seed 0 finished with the same data, network and method: both have an estimate
    assert "estimated time: " in out and "with -j 2" in out and "no recorded speed" not in out

    assert main(["run", str(suite), "--home", str(resumed), "--resume", *PLUGINS]) == 0
    assert "1 interrupted stage run(s) continue from their last saved epoch" in capsys.readouterr().err
    assert results(resumed) == results(straight)
    for name in ("A/std/seed1", "AB/std/seed1"):
        a, b = checkpoint(straight, name), checkpoint(resumed, name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    run = next(r for r in stage_runs(resumed)
               if r.info.run_name == "A/std/seed1" and r.info.status == "FINISHED")
    assert run.data.params["measured.resumed_from_epoch"] == "5"
    # the resumed run carries the whole curve, the epochs before the kill included
    c = client(resumed)
    curve = [(m.step, m.value) for m in c.get_metric_history(run.info.run_id, "loss_task")]
    other = next(r for r in stage_runs(straight) if r.info.run_name == "A/std/seed1")
    assert curve == [(m.step, m.value)
                     for m in client(straight).get_metric_history(other.info.run_id, "loss_task")]
    assert [s for s, _ in curve] == list(range(1, 9))
    assert not any((resumed / "resume").iterdir())  # recorded: the saved state is gone


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["inline", "processes"])
def test_ctrl_c_records_running_runs_as_killed_and_exits_130(write_suite, tmp_path, executor):
    suite = write_suite(SUITE)
    home, marker = seed_store(tmp_path / "h"), tmp_path / "blocked"
    proc = harness("run", suite, "--home", home, "--executor", executor, "-j", "2", *PLUGINS,
                   fault=f"A/std/seed0:3:block:{marker}", start_new_session=True)
    trainer = int(wait_for_file(marker, proc))
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert gone(trainer)
    runs = {r.info.run_name: r for r in stage_runs(home)}
    assert runs["A/std/seed0"].info.status == "KILLED"
    assert runs["A/std/seed0"].data.tags["harness.error"] == "interrupted (Ctrl-C)"
    assert all(r.info.status != "RUNNING" for r in all_runs(home))
    parent = next(r for r in all_runs(home) if r.data.tags.get("harness.kind") == "invocation")
    assert parent.info.status == "KILLED"
    if executor == "inline":  # the epochs it trained before Ctrl-C were flushed to the store
        history = client(home).get_metric_history(runs["A/std/seed0"].info.run_id, "loss_task")
        assert [m.step for m in history] == [1, 2]  # epoch 3 was interrupted in its hook


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["inline", "processes"])
def test_sigterm_records_runs_as_killed_keeps_their_epochs_and_exits_143(write_suite, tmp_path,
                                                                        executor):
    """A scheduler's time limit: SIGTERM to the whole job, handled as Ctrl-C is, with one line
    that says how to continue; the rerun it names continues the interrupted run."""
    suite = write_suite(SUITE)
    home, marker = seed_store(tmp_path / "h"), tmp_path / "blocked"
    proc = harness("run", suite, "--home", home, "--executor", executor, "-j", "2",
                   "--checkpoint-every", "0", *PLUGINS, fault=f"A/std/seed0:3:block:{marker}",
                   start_new_session=True)
    trainer = int(wait_for_file(marker, proc))
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "terminated by SIGTERM" in err
    assert f"continue with `harness run {suite} --home {home} --resume`" in err
    assert gone(trainer)
    runs = {r.info.run_name: r for r in stage_runs(home)}
    assert runs["A/std/seed0"].info.status == "KILLED"
    assert runs["A/std/seed0"].data.tags["harness.error"] == "terminated (SIGTERM)"
    assert all(r.info.status != "RUNNING" for r in all_runs(home))
    rerun = harness("run", suite, "--home", home, "--resume", "--executor", executor, *PLUGINS)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert "interrupted stage run(s) continue from their last saved epoch" in out + err


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs: a disk that can really fill up mid-run."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs",
                                            str(disk)], capture_output=True).returncode:
        pytest.skip("mounts a tmpfs: needs root (CI runs as root)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["inline", "processes"])
def test_a_disk_that_fills_mid_run_stops_with_one_line_and_exit_3(write_suite, small_disk,
                                                                  executor):
    """After room is made, the rerun the line names trains the rest: nothing finished twice.
    (A filesystem with files open for writing cannot be remounted read-only, so that case is
    tested on the errors it raises, in tests/test_storage.py.)"""
    suite = write_suite(SUITE)
    home = seed_store(small_disk / "h")
    proc = harness("run", suite, "--home", home, "--executor", executor, "-j", "2",
                   "--checkpoint-every", "0", *PLUGINS, fault=f"A/std/seed0:3:fill:{small_disk}")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 3, err
    assert "Traceback" not in err
    line = next(ln for ln in err.splitlines() if ln.startswith("harness: error:"))
    assert f"cannot write to {small_disk}" in line and "its filesystem is full" in line
    assert "free)" in line and f"`harness run {suite} --home {home} --resume` continues" in line
    (small_disk / "filler").unlink()
    (small_disk / "filler2").unlink(missing_ok=True)
    rerun = harness("run", suite, "--home", home, "--resume", "--executor", executor, *PLUGINS)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    finished = [r for r in stage_runs(home) if r.info.status == "FINISHED"]
    assert sorted(r.info.run_name for r in finished) == [
        "A/std/seed0", "A/std/seed1", "AB/std/seed0", "AB/std/seed1"]
    check = sqlite3.connect(home / "mlflow.db").execute("pragma integrity_check").fetchone()
    assert check == ("ok",)


def test_plan_of_a_suite_never_run_creates_nothing(write_suite, tmp_path, capsys):
    suite = write_suite(SUITE)
    home = tmp_path / "never"
    assert main(["plan", str(suite), "--home", str(home), "-j", "2"]) == 0
    out = capsys.readouterr().out
    assert "4 stage runs, 0 finished, 4 to run" in out
    assert "after A/std/seed0" in out and "no recorded speeds in the store yet" in out
    assert not home.exists()


def test_a_live_run_of_the_same_suite_is_refused_not_raced(write_suite, tmp_path, capsys):
    """A parent run left RUNNING by a process that is alive (this test's own) is not an orphan:
    a second ``harness run`` of the suite and profile refuses to start, and changes nothing."""
    import platform

    from harness.tracking import Tracker, process_started

    suite = write_suite(SUITE)
    home = seed_store(tmp_path / "h")
    tracker = Tracker(home, "faults")
    run = tracker.client.create_run(tracker.experiment_id, run_name="other", tags={
        "harness.kind": "invocation", "harness.suite": "faults", "harness.profile": "",
        "harness.host": platform.node(), "harness.pid": str(os.getpid()),
        "harness.pid_started": process_started(os.getpid())})
    capsys.readouterr()
    assert main(["run", str(suite), "--home", str(home)]) == 2
    err = capsys.readouterr().err
    assert "is already being run (pid" in err and "wait for it to end" in err
    assert [r.info.run_id for r in all_runs(home)] == [run.info.run_id]
    assert all_runs(home)[0].info.status == "RUNNING"

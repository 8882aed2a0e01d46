"""What a new user meets in the first hour at the command line: the UI, --plugin forms,
HARNESS_PLUGINS, --force, --only, and what `plan` says of times it cannot estimate."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import subprocess_env
from fresh_store import seed_store
from harness.cli import main

TINY = """suite: tiny
description: >
  A tiny suite
  to test with.
seeds: 1
defaults: {optimizer: adam, lr: 4.0e-3, batch_size: 512, epochs: 2, threads: 1}
grid:
  method: [std, {name: racecar, layers: 1, weight: 1.0e-2, label: RR1}]
  dataset: [ib12]
  architecture: [mi_mlp]
stages:
  A: {}
  AB: {from: A, method: std, dataset: ib12_flipped}
  B: {dataset: ib12_flipped, method: std}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


# -- harness ui --------------------------------------------------------------------------------
def test_ui_on_a_busy_port_is_exit_2(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["ui", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"port {port}" in err and "busy" in err and "--port N" in err


@pytest.mark.slow
def test_ui_sigterm_ends_the_server_and_its_workers(isolated_home):
    port = _free_port()
    exe = Path(sys.executable).with_name("harness")
    proc = subprocess.Popen([str(exe), "ui", "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=subprocess_env(), start_new_session=True)
    below: set[int] = set()
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                    break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    pytest.fail("the MLflow UI did not come up")
                time.sleep(1)
        below = _descendants(proc.pid)
        assert below, "the UI runs in child processes"
        proc.send_signal(signal.SIGTERM)  # to harness alone, as a service manager would
        proc.wait(timeout=60)
        deadline = time.time() + 30
        while time.time() < deadline and any(_alive(p) for p in below):
            time.sleep(0.2)
        assert not [p for p in below if _alive(p)], "MLflow processes outlived harness ui"
    finally:
        for pid in [proc.pid, *below]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_the_experiment_description_is_the_suites(write_suite, isolated_home):
    from mlflow.tracking import MlflowClient

    assert main(["run", str(write_suite(TINY)), "--quiet", "--only", "stage=B"]) == 0
    client = MlflowClient(tracking_uri=f"sqlite:///{isolated_home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    assert exp.tags["mlflow.note.content"] == "A tiny suite to test with."


# -- --plugin and HARNESS_PLUGINS --------------------------------------------------------------
PLUGIN = '''
from harness.api import hookimpl
from plugins.methods.std import Std


@hookimpl
def harness_register_methods(register):
    register("std_again", Std)
'''
USES = TINY.replace("method: [std, {name: racecar, layers: 1, weight: 1.0e-2, label: RR1}]",
                    "method: [std_again]")


@pytest.mark.parametrize("form", ["./my_plugin_file.py", "my_plugin_file.py", "ABSOLUTE",
                                  "my_plugin_file"])
def test_plugin_as_a_file_or_a_module_beside_the_suite(form, tmp_path, harness_cli):
    """Through the console script, whose sys.path does not hold the current folder."""
    (tmp_path / "my_plugin_file.py").write_text(PLUGIN)
    (tmp_path / "s.yaml").write_text(USES)
    plugin = str(tmp_path / "my_plugin_file.py") if form == "ABSOLUTE" else form
    done = harness_cli("validate", "s.yaml", "--plugin", plugin, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "is valid" in done.stdout and "warning" not in done.stderr


def test_a_plugin_file_that_does_not_exist(tmp_path, capsys):
    (tmp_path / "s.yaml").write_text(USES)
    assert main(["validate", "s.yaml", "--plugin", "./nope.py"]) == 2
    err = capsys.readouterr().err
    assert "--plugin: plugin file" in err and "does not exist" in err


def test_a_module_that_registers_nothing_is_a_warning(tmp_path, capsys, monkeypatch):
    (tmp_path / "empty_plugin_mod.py").write_text("X = 1\n")
    (tmp_path / "s.yaml").write_text(TINY)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["validate", "s.yaml", "--plugin", "empty_plugin_mod"]) == 0
    err = capsys.readouterr().err
    assert "warning: plugin module 'empty_plugin_mod' registers nothing" in err


def test_errors_of_harness_plugins_name_the_variable(tmp_path, capsys, monkeypatch):
    (tmp_path / "s.yaml").write_text(TINY)
    monkeypatch.setenv("HARNESS_PLUGINS", "no_such_module_anywhere")
    assert main(["validate", "s.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HARNESS_PLUGINS: plugin module 'no_such_module_anywhere'" in err


# -- --force and --only ------------------------------------------------------------------------
def _stage_runs(home):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    return client.search_runs([exp.experiment_id], "tags.`harness.identity` != ''")


def test_only_runs_a_subset_with_its_upstream_stages(write_suite, isolated_home, capsys):
    suite = str(write_suite(TINY))
    assert main(["run", suite, "--dry-run", "--only", "stage=AB,method=RR1"]) == 0
    assert "2 stage runs" in capsys.readouterr().out  # AB/RR1 and the A/RR1 it starts from
    assert main(["run", suite, "--quiet", "--only", "stage=AB,method=RR1"]) == 0
    names = sorted(r.info.run_name for r in _stage_runs(isolated_home))
    assert names == ["A/RR1/seed0", "AB/RR1/seed0"]
    assert main(["run", suite, "--quiet", "--only", "stage=B", "--only", "method=std"]) == 0
    assert len(_stage_runs(isolated_home)) == 5  # all of it now


@pytest.mark.empty_home
@pytest.mark.parametrize("only, expect", [
    ("stage=C", "no stage run has stage 'C'"), ("stag=A", "unknown --only key 'stag'"),
    ("stage", "is not key=value"), ("stage=B,method=RR1", "no stage run matches")])
def test_bad_only_is_exit_2(write_suite, capsys, only, expect, isolated_home):
    assert main(["run", str(write_suite(TINY)), "--only", only]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--only" in err and expect in err
    assert not isolated_home.exists()


def test_force_reruns_finished_runs_and_keeps_the_old_ones(write_suite, isolated_home, capsys):
    suite = str(write_suite(TINY))
    assert main(["run", suite, "--quiet", "--only", "method=RR1"]) == 0
    first = {r.info.run_name: r.info.run_id for r in _stage_runs(isolated_home)}
    assert set(first) == {"A/RR1/seed0", "AB/RR1/seed0"}
    assert main(["run", suite, "--quiet", "--force", "--only", "stage=AB,method=RR1"]) == 0
    runs = _stage_runs(isolated_home)
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    assert {r.info.run_id for r in runs} >= set(first.values())  # the old ones are kept
    # the forced AB waited for the forced A (its upstream in this invocation)
    latest = {name: max((r for r in runs if r.info.run_name == name), key=lambda r: r.info.start_time)
              for name in first}
    assert latest["A/RR1/seed0"].info.run_id != first["A/RR1/seed0"]
    assert latest["AB/RR1/seed0"].info.start_time >= latest["A/RR1/seed0"].info.end_time


# -- harness plan --------------------------------------------------------------------------------
def test_plan_says_unknown_not_zero_seconds(write_suite, tmp_path, capsys):
    assert main(["plan", str(write_suite(TINY)), "--home", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert "estimated time: unknown" in out and " 0 s" not in out
    assert "unknown" in out.splitlines()[2]  # each stage run's estimate


@pytest.mark.parametrize("before", [True, False], ids=["before-the-command", "after-it"])
def test_home_and_plugin_count_before_the_command_too(before, write_suite, tmp_path, capsys,
                                                      monkeypatch):
    """`harness --home X run` once used ./.harness: argparse copied the command's own (empty)
    --home over the one given before the command, and dropped the plugins given there."""
    suite = write_suite(TINY.replace("epochs: 2", "epochs: 1").replace(
        "[std, {name: racecar, layers: 1, weight: 1.0e-2, label: RR1}]", "[std]").split("  AB:")[0])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "harness_test_extra.py").write_text(
        "from harness.api import hookimpl\nfrom plugins.methods.std import Std\n\n"
        "@hookimpl\ndef harness_register_methods(register):\n    register('extra_std', Std)\n")
    home = seed_store(tmp_path / "elsewhere")
    opts = ["--home", str(home), "--plugin", "harness_test_extra"]
    argv = [*opts, "list", "methods"] if before else ["list", "methods", *opts]
    assert main(argv) == 0
    assert "extra_std" in capsys.readouterr().out
    argv = [*opts, "run", str(suite)] if before else ["run", str(suite), *opts]
    assert main(argv) == 0
    assert (home / "artifacts").is_dir() and not (tmp_path / ".harness").exists()

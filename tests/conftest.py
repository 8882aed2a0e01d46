"""Shared fixtures: every test gets its own harness home and no outside MLflow server."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from fresh_store import seed_store

# A test run started in the background by a non-interactive shell (`tox &`, nohup in a script)
# inherits SIGINT ignored, and so would every harness the Ctrl-C tests start: they would wait
# for an interrupt that never arrives. With Python's handler back, the children start with
# SIGINT at its default, as a terminal gives them.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


@pytest.fixture
def one_thread():
    """For tests of tiny tensors: one thread. Two threads on a busy 2-core machine were up to
    100x slower, and the paper's 294-weight network is 5x faster on one thread than on two."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def isolated_home(request, tmp_path, monkeypatch):
    """A harness home of the test's own. It holds an empty store, already migrated (copied:
    MLflow's migrations cost seconds a home, and most tests make one), unless the test is
    marked ``empty_home`` because store creation is what it tests."""
    home = tmp_path / "home"
    if request.node.get_closest_marker("empty_home") is None:
        seed_store(home)
    monkeypatch.setenv("HARNESS_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("HARNESS_PLUGINS", raising=False)
    monkeypatch.delenv("HARNESS_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    # MLflow's model record costs ~0.7 s a stage run; tests/test_records.py asks for it
    monkeypatch.setenv("HARNESS_LOG_MODEL", "off")
    monkeypatch.chdir(tmp_path)
    return home


@pytest.fixture
def write_suite(tmp_path):
    """Write a suite's YAML text into the test's folder and return its path."""

    def write(text: str, name: str = "suite.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def subprocess_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env.update(extra or {})
    return env


@pytest.fixture
def harness_cli():
    """Run the real ``harness`` console script in a subprocess."""
    import subprocess

    def run(*args, env=None, cwd=None):
        exe = Path(sys.executable).with_name("harness")
        return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True,
                              env=subprocess_env(env), cwd=cwd, timeout=600)

    return run


def pytest_collection_modifyitems(config, items):
    """The long end-to-end tests first: on two pytest-xdist workers the run ends when the last
    long test does, so starting them late leaves one core idle while the other finishes them.
    The sort is stable, so the order within each group stays the file order."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


REQUIRE_CUDA = "HARNESS_REQUIRE_CUDA"


def pytest_runtest_setup(item):
    """A ``cuda`` test without a GPU: skipped, or a failure where ``HARNESS_REQUIRE_CUDA=1``
    (scripts/cuda_check.py), so that a GPU check run on a CPU cannot pass."""
    if item.get_closest_marker("cuda") is None:
        return
    import torch  # only for the tests marked cuda: conftest itself stays light

    if torch.cuda.is_available():
        return
    if os.environ.get(REQUIRE_CUDA) == "1":
        pytest.fail(f"no CUDA GPU is visible, and {REQUIRE_CUDA}=1 asks for one", pytrace=False)
    pytest.skip("needs a CUDA GPU (scripts/cuda_check.py runs these on one)")

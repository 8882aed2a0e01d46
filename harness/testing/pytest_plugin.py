"""The harness's pytest plugin (entry point ``pytest11``): fixtures for a plugin package's tests,
so that they need no test helpers imported by path.

- ``harness_home``: a fresh harness home (its own MLflow store) for the test, set as
  ``HARNESS_HOME``, with no outside tracking server;
- ``run_suite(path, *args)``: ``harness run`` of a suite into that home, returning the exit code.

It also silences the deprecation warning MLflow's SQLAlchemy store gives on every tracked run
(MLflow's to fix, not the plugin author's), which would otherwise end every plugin package's
test run.
"""

from __future__ import annotations

import pytest


#: MLflow's SQLAlchemy store still uses a deprecated loader option (as in harness's own pyproject)
MLFLOW_WARNING = "ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning"


def pytest_configure(config):
    config.addinivalue_line("filterwarnings", MLFLOW_WARNING)


@pytest.fixture
def harness_home(tmp_path, monkeypatch):
    home = tmp_path / "harness-home"
    monkeypatch.setenv("HARNESS_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


@pytest.fixture
def run_suite(harness_home):
    from harness.cli import main  # pytest loads this plugin in every test run: the CLI only when used

    def run(path, *args) -> int:
        return main(["run", str(path), "--quiet", "--home", str(harness_home), *map(str, args)])

    return run

"""A newcomer's path end to end: ``harness new``, install, the package's own tests (the kit
through parametrize_with_checks, the pytest plugin's fixtures), its suite, ``harness plugins
--check``; and the two example packages in examples/, built the same way, with their tests."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main

ROOT = Path(__file__).resolve().parents[1]


def install(package: Path, target: Path) -> dict:
    """Install ``package`` (no dependencies: harness is here) into ``target``; return an
    environment that finds it, as an installed package is found (entry points included)."""
    # without build isolation where setuptools is at hand (no download); else pip fetches it
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *isolation,
                    "--target", str(target), str(package)],
                   check=True, capture_output=True, timeout=300)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")])
    return env


def run(args, env, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_new_method_installs_passes_the_kit_and_runs(tmp_path, capsys):
    assert main(["new", "method", "my_reg", "--dir", str(tmp_path)]) == 0
    package = tmp_path / "my_reg"
    assert {p.name for p in package.iterdir()} >= {"pyproject.toml", "my_reg.py", "suites", "tests"}
    assert main(["new", "method", "my_reg", "--dir", str(tmp_path)]) == 2  # never overwritten
    env = install(package, tmp_path / "site")
    tests = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], env,
                package)
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert "8 passed" in tests.stdout  # 7 checks, and its suite through `harness run` (run_suite)
    harness = str(Path(sys.executable).with_name("harness"))
    listed = run([harness, "plugins", "--check", "my_reg"], env, tmp_path)
    assert listed.returncode == 0 and "my_reg" in listed.stdout and "passed" in listed.stdout


@pytest.mark.parametrize("kind", ["dataset", "architecture", "evaluator"])
def test_other_kinds_scaffold_to_code_that_passes_the_kit(tmp_path, kind, monkeypatch):
    from harness.testing import check_architecture, check_dataset, check_evaluator

    assert main(["new", kind, f"my_{kind}", "--dir", str(tmp_path)]) == 0
    monkeypatch.syspath_prepend(str(tmp_path / f"my_{kind}"))
    module = __import__(f"my_{kind}")
    if kind == "dataset":
        assert set(check_dataset(module.my_dataset).values()) == {None}
    elif kind == "architecture":
        assert set(check_architecture(module.my_architecture).values()) == {None}
    else:
        assert set(check_evaluator(module.MyEvaluator).values()) == {None}


def test_bad_names_are_refused(tmp_path, capsys):
    assert main(["new", "method", "My-Reg", "--dir", str(tmp_path)]) == 2
    assert "not a plugin name" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("example", ["label_smoothing", "ewc"])
def test_example_packages_pass_their_tests(tmp_path, example):
    package = ROOT / "examples" / example
    env = install(package, tmp_path / "site")
    tests = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                 "--rootdir", str(package), str(package / "tests")], env, tmp_path)
    assert tests.returncode == 0, tests.stdout[-3000:]

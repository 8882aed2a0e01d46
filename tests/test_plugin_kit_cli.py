"""A newcomer's path end to end, as the README gives it: ``harness new``, an editable install
into a fresh venv, the package's own tests run both as ``python -m pytest`` and ``pytest`` (the
kit through parametrize_with_checks, the pytest plugin's fixtures), its suite, ``harness
plugins --check``; and the two example packages in examples/, built the same way, with their
tests."""

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


def venv_with_harness(folder: Path) -> Path:
    """A fresh virtual environment that sees the packages of the one running the tests (harness
    and its dependencies, pytest, setuptools) through a ``.pth`` file, with the console scripts
    an install of harness and pytest gives it; what is installed into it stays there."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True,
                   capture_output=True, timeout=120)
    site = next((folder / "lib").glob("python*/site-packages"))
    parents = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "_harness_tests_parent.pth").write_text(
        "import site; " + "; ".join(f"site.addsitedir({p!r})" for p in parents) + "\n")
    python = folder / "bin" / "python"
    for script, call in (("harness", "from harness.cli import main"),
                         ("pytest", "from pytest import main")):
        path = folder / "bin" / script
        path.write_text(f"#!{python}\nimport sys\n{call}\nsys.exit(main())\n")
        path.chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def readme_package(tmp_path_factory):
    """The README's recipe up to the install, in a folder of its own: `harness new method my_reg
    --dir .`, then `pip install -e './my_reg[test]'` into a fresh venv (without build isolation
    where setuptools is at hand: no download)."""
    here = tmp_path_factory.mktemp("author")
    venv = venv_with_harness(here / ".venv")
    env = dict(os.environ, HARNESS_HOME=str(here / "home"), HARNESS_LOG_MODEL="off")
    env.pop("MLFLOW_TRACKING_URI", None)
    made = run([str(venv / "bin" / "harness"), "new", "method", "my_reg", "--dir", "."], env, here)
    assert made.returncode == 0, made.stderr
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    installed = run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *isolation, "-e",
                     "./my_reg[test]"], env, here)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return here, venv, env


@pytest.mark.slow
def test_the_readme_recipe_runs_the_package_tests_either_way(readme_package):
    """`python -m pytest my_reg/tests` (the current folder first on sys.path, where the flat
    layout's folder shadowed the module) passes, quietly, with ids that show the options; plain
    `pytest my_reg/tests` imports the module as well (one check run: the rest is the same)."""
    here, venv, env = readme_package
    tests = run([str(venv / "bin" / "python"), "-m", "pytest", "-v", "-p", "no:cacheprovider",
                 "my_reg/tests"], env, here)
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert "8 passed" in tests.stdout  # 7 checks, and its suite through `harness run` (run_suite)
    assert "noload" not in tests.stdout and "DeprecationWarning" not in tests.stdout
    assert "test_conformance[MyReg(weight=1)-check_determinism] PASSED" in tests.stdout
    plain = run([str(venv / "bin" / "pytest"), "-q", "-p", "no:cacheprovider", "my_reg/tests",
                 "-k", "check_options_are_checked"], env, here)
    assert plain.returncode == 0 and "1 passed, 7 deselected" in plain.stdout, plain.stdout[-3000:]


@pytest.mark.slow
def test_the_readme_recipe_runs_the_suite_and_checks_the_plugin(readme_package):
    here, venv, env = readme_package
    harness = str(venv / "bin" / "harness")
    assert (here / "my_reg" / "src" / "my_reg.py").is_file()
    suite = run([harness, "run", "my_reg/suites/my_reg.yaml"], env, here)
    assert suite.returncode == 0, suite.stderr[-3000:]
    checked = run([harness, "plugins", "--check", "my_reg"], env, here)
    assert checked.returncode == 0, checked.stdout
    assert "my_reg" in checked.stdout and "passed" in checked.stdout
    again = run([harness, "new", "method", "my_reg", "--dir", "."], env, here)
    assert again.returncode == 2  # never overwritten, and a registered name besides


@pytest.mark.parametrize("kind", ["dataset", "architecture", "evaluator"])
def test_other_kinds_scaffold_to_code_that_passes_the_kit(tmp_path, kind, monkeypatch):
    from harness.testing import check_architecture, check_dataset, check_evaluator

    assert main(["new", kind, f"my_{kind}", "--dir", str(tmp_path)]) == 0
    monkeypatch.syspath_prepend(str(tmp_path / f"my_{kind}" / "src"))
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


def test_a_package_is_never_overwritten(tmp_path, capsys):
    assert main(["new", "method", "my_reg", "--dir", str(tmp_path)]) == 0
    package = tmp_path / "my_reg"
    assert {p.name for p in package.iterdir()} == {"pyproject.toml", "src", "suites", "tests"}
    assert (package / "src" / "my_reg.py").is_file()
    assert 'test = ["pytest>=8"]' in (package / "pyproject.toml").read_text()
    assert main(["new", "method", "my_reg", "--dir", str(tmp_path)]) == 2
    assert "exists already" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("example", ["label_smoothing", "ewc"])
def test_example_packages_pass_their_tests(tmp_path, example):
    package = ROOT / "examples" / example
    env = install(package, tmp_path / "site")
    tests = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                 "--rootdir", str(package), str(package / "tests")], env, tmp_path)
    assert tests.returncode == 0, tests.stdout[-3000:]
    if example == "ewc":  # reads refs: --check gives it the default upstream, and says so
        harness = str(Path(sys.executable).with_name("harness"))
        checked = run([harness, "plugins", "--check", "ewc"], env, tmp_path)
        assert checked.returncode == 0, checked.stdout
        assert "passed" in checked.stdout and "(refs: anchor=std)" in checked.stdout

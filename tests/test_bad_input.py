"""The bad-input corpus (tests/badinput/): each malformed suite or plugin gives exactly one line
on stderr naming the file and key (or the plugin), with a hint, exit code 2, no traceback, and
leaves the store as it was.

Each corpus file says what it expects in leading comments: ``# expect:`` (text the message must
contain: the key path, or the plugin's name), optionally ``# args:`` (more command-line
arguments), ``# suite:`` (for a plugin case: the grid's method line of the suite it runs) and
``# needs: no-cuda``.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import subprocess_env
from fresh_store import seed_store
from harness.cli import main

CORPUS = Path(__file__).parent / "badinput"
SUITES = sorted(CORPUS.glob("*.yaml"))
PLUGINS = sorted(CORPUS.glob("plugin_*.py"))
GOOD = """suite: bad
defaults: {optimizer: adam, lr: 4.0e-3, batch_size: 512, epochs: 2, threads: 1}
grid:
  method: [std]
  dataset: [ib12]
  architecture: [mi_mlp]
"""


def directives(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        match = re.match(r"# (\w[\w-]*): (.*)$", line)
        if not match:
            break
        out[match.group(1)] = match.group(2).strip()
    return out


def snapshot(home: Path) -> tuple:
    """The store's bytes and every file under the home: what a refused command must not touch."""
    files = sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())
    return hashlib.sha256((home / "mlflow.db").read_bytes()).hexdigest(), files


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store that already holds finished runs of the suite name the corpus uses."""
    folder = tmp_path_factory.mktemp("store")
    home = seed_store(folder / "home")
    suite = folder / "good.yaml"
    suite.write_text(GOOD)
    assert main(["run", str(suite), "--home", str(home), "--quiet"]) == 0
    return home


def refused(argv: list[str], home: Path, capsys) -> str:
    before = snapshot(home)
    capsys.readouterr()
    code = main([*argv, "--home", str(home)])
    out, err = capsys.readouterr()
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in out + err
    line = lines[0]
    assert line.startswith("harness: error: ")
    assert re.search(r"\(.+\)$", line), f"no hint: {line}"
    assert snapshot(home) == before, "the store changed"
    return line


def test_the_corpus_is_large_and_every_case_says_what_it_expects():
    assert len(SUITES) + len(PLUGINS) >= 30
    for path in [*SUITES, *PLUGINS]:
        assert directives(path).get("expect"), path


@pytest.mark.parametrize("case", SUITES, ids=lambda p: p.stem)
def test_bad_suite(case, store, capsys):
    d = directives(case)
    if d.get("needs") == "no-cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    line = refused(["run", str(case), *d.get("args", "").split()], store, capsys)
    assert line.startswith(f"harness: error: {case}: ")
    assert d["expect"] in line, line


@pytest.mark.parametrize("case", PLUGINS, ids=lambda p: p.stem)
def test_bad_plugin(case, store, capsys, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(CORPUS))
    d = directives(case)
    suite = tmp_path / "suite.yaml"
    text = GOOD
    if "suite" in d:
        text = text.replace("  method: [std]", f"  {d['suite']}")
    suite.write_text(text)
    line = refused(["run", str(suite), "--plugin", case.stem], store, capsys)
    assert d["expect"] in line, line
    if d["expect"].startswith("grid."):  # a value the plugin refused: the suite's file and key
        assert line.startswith(f"harness: error: {suite}: {d['expect']}: ")


@pytest.mark.parametrize("case", ["plugin_import_error.py", "plugin_name_error.py",
                                  "plugin_syntax_error.py"])
def test_a_plugin_file_that_fails_names_its_file_and_line(case, store, capsys, tmp_path):
    """``--plugin path/to/file.py``: the file was found, so the message is the plugin's own
    error at its line, not advice on how to name a module."""
    suite = tmp_path / "suite.yaml"
    suite.write_text(GOOD)
    path = CORPUS / case
    line = refused(["run", str(suite), "--plugin", str(path)], store, capsys)
    assert f"failed to import at {path}, line " in line, line
    assert directives(path)["expect"].split(":")[0] in line
    assert "dotted module path" not in line


def test_a_plugin_module_that_does_not_exist(store, capsys, tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(GOOD)
    line = refused(["run", str(suite), "--plugin", "harness_no_such_plugin"], store, capsys)
    assert "--plugin: plugin module 'harness_no_such_plugin' failed to import" in line


@pytest.mark.empty_home
@pytest.mark.parametrize("case", ["broken_yaml.yaml", "plugin_import_error.py"])
def test_through_the_console_script(case, tmp_path):
    """The same, through the installed ``harness`` command: one line, exit 2, no traceback."""
    path = CORPUS / case
    args = ["run", str(path)] if path.suffix == ".yaml" else ["run", str(tmp_path / "s.yaml"),
                                                              "--plugin", path.stem]
    (tmp_path / "s.yaml").write_text(GOOD)
    home = tmp_path / "home"
    # the corpus before the path the tests run with (which may name this checkout's harness)
    env = subprocess_env({"PYTHONPATH": os.pathsep.join([str(CORPUS), os.environ.get("PYTHONPATH", "")])})
    proc = subprocess.run([str(Path(sys.executable).with_name("harness")), *args, "--home", str(home)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert directives(path)["expect"] in proc.stderr
    assert not home.exists()  # nothing was created, let alone recorded


@pytest.mark.parametrize("case", SUITES, ids=lambda p: p.stem)
def test_validate_refuses_what_run_refuses(case, store, capsys):
    """``harness validate`` runs the preflight of ``run --dry-run``: every network and method
    built once (a network that does not fit the data, an option value a plugin refuses)."""
    d = directives(case)
    if d.get("needs") == "no-cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    line = refused(["validate", str(case), *d.get("args", "").split()], store, capsys)
    assert d["expect"] in line, line


@pytest.mark.parametrize("case", PLUGINS, ids=lambda p: p.stem)
def test_validate_refuses_what_run_refuses_of_plugins(case, store, capsys, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(CORPUS))
    d = directives(case)
    suite = tmp_path / "suite.yaml"
    suite.write_text(GOOD.replace("  method: [std]", f"  {d['suite']}") if "suite" in d else GOOD)
    line = refused(["validate", str(suite), "--plugin", case.stem], store, capsys)
    assert d["expect"] in line, line

"""A stage run's identity follows the code of the plugins it uses: editing a method's source
(same distribution version) makes its finished runs stale, and ``harness plan`` says so."""

from __future__ import annotations

import json
import sys

from harness.cli import main
from harness.codeid import module_files

PLUGIN = '''
import torch.nn.functional as F
from harness.api import Method, hookimpl
from {helper} import SCALE


class Scaled(Method):
    """Cross-entropy times a constant."""

    def loss(self, batch):
        return {{"task": SCALE * F.cross_entropy(self.model(batch.x), batch.y)}}


@hookimpl
def harness_register_methods(register):
    register("scaled", Scaled)
'''

SUITE = """suite: code
defaults: {optimizer: adam, lr: 4.0e-3, batch_size: 512, epochs: 2, threads: 1}
grid:
  method: [scaled]
  dataset: [ib12]
  architecture: [mi_mlp]
stages:
  A: {}
  AB: {from: A, method: std}
"""


def make_plugin(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m.split(".")[0] == "codepkg"]:
        monkeypatch.delitem(sys.modules, name)  # another test's package of the same name
    pkg = tmp_path / "codepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "consts.py").write_text("SCALE = 1.0\n")
    (pkg / "method.py").write_text(PLUGIN.format(helper="codepkg.consts"))
    monkeypatch.syspath_prepend(str(tmp_path))
    return pkg


def stage_tags(home):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("code")
    runs = client.search_runs([exp.experiment_id], "tags.`harness.identity` != ''")
    return client, {r.data.tags["harness.stage"]: r for r in runs}


def test_helper_modules_of_the_same_package_count(tmp_path, monkeypatch):
    make_plugin(tmp_path, monkeypatch)
    assert set(module_files("codepkg.method")) == {"codepkg.method", "codepkg.consts"}


def test_editing_plugin_code_makes_runs_stale(write_suite, tmp_path, monkeypatch, isolated_home,
                                             capsys):
    pkg = make_plugin(tmp_path, monkeypatch)
    suite = str(write_suite(SUITE))
    args = ["--plugin", "codepkg.method"]
    assert main(["run", suite, "--quiet", *args]) == 0
    _, tags = stage_tags(isolated_home)
    assert set(json.loads(tags["A"].data.tags["harness.code"])) == {
        "method", "architecture", "dataset", "evaluators.accuracy"}
    capsys.readouterr()
    assert main(["plan", suite, *args]) == 0
    assert "2 finished, 0 to run" in capsys.readouterr().out
    # a helper module the method imports changes; the distribution version does not
    (pkg / "consts.py").write_text("SCALE = 2.0\n")
    assert main(["plan", suite, *args]) == 0
    out = capsys.readouterr().out
    assert "0 finished, 2 to run (2 of them stale" in out
    assert "stale: the code of method 'scaled' changed since its finished run" in out
    assert "stale: upstream A/scaled/seed0 is stale" in out, out
    assert main(["run", suite, "--quiet", *args]) == 0
    capsys.readouterr()
    assert main(["plan", suite, *args]) == 0
    assert "2 finished, 0 to run" in capsys.readouterr().out


def test_runs_recorded_before_code_digests_are_stale(write_suite, tmp_path, monkeypatch,
                                                     isolated_home, capsys):
    make_plugin(tmp_path, monkeypatch)
    suite = str(write_suite(SUITE))
    args = ["--plugin", "codepkg.method"]
    assert main(["run", suite, "--quiet", *args]) == 0
    client, tags = stage_tags(isolated_home)
    for run in tags.values():  # as an older harness recorded them: identity without code
        rid, t = run.info.run_id, run.data.tags
        client.set_tag(rid, "harness.identity", t["harness.identity_base"])
        client.delete_tag(rid, "harness.identity_base")
        client.delete_tag(rid, "harness.code")
    capsys.readouterr()
    assert main(["plan", suite, *args]) == 0
    out = capsys.readouterr().out
    assert "2 to run (2 of them stale" in out
    assert "recorded before code digests were part of identities" in out

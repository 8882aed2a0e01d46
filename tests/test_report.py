"""``harness report`` on stores made here by really running tiny suites through the CLI."""

from __future__ import annotations

import json
import re
import statistics
import textwrap
from pathlib import Path

import pytest

from harness.cli import main
from harness.report import TIMESTAMP_PREFIX

SUITE = """
suite: rep
description: A two-method transfer protocol in miniature.
defaults: {optimizer: adam, lr: 1.0e-2, batch_size: 512, epochs: 3, threads: 1}
seeds: 2
grid:
  method: [std, {name: std, label: Std2}]
  architecture: [mi_mlp]
stages:
  A:  {dataset: ib12}
  AB: {from: A, dataset: ib12_flipped, method: std}
  B:  {dataset: ib12_flipped, method: std}
evaluate: [accuracy, {name: picture, every: end}]
claims: ["AB.Std2 > AB.std", "AB.std >= B.std within 0.05"]
reference: {AB: {std: {mean: 0.136, std: 0.0, source: Table 2}}, B: {std: 0.974}}
profiles:
  default: {}
  one: {seeds: 1}
  short: {seeds: 1, epochs: 2}
"""

# an evaluator that logs an image, as the information-plane and reconstruction evaluators do
PLUGIN = '''
import numpy as np
from matplotlib import image
from harness.api import Evaluator, hookimpl

class Picture(Evaluator):
    every = "end"

    def evaluate(self, method, ctx):
        folder = ctx.artifact_dir / "planes"
        folder.mkdir(parents=True, exist_ok=True)
        image.imsave(folder / f"epoch{ctx.epoch}.png", np.eye(8))
        return {}

@hookimpl
def harness_register_evaluators(register):
    register("picture", Picture)
'''


@pytest.fixture
def picture_plugin(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "report_picture_plugin.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(folder))
    return ["--plugin", "report_picture_plugin"]


def store_runs(home: Path, suite: str = "rep"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name(suite)
    return client, client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'")


def without_timestamp(text: str) -> str:
    lines = text.splitlines()
    assert sum(line.startswith(TIMESTAMP_PREFIX) for line in lines) == 1
    return "\n".join(line for line in lines if not line.startswith(TIMESTAMP_PREFIX))


def test_report_from_a_real_store(write_suite, isolated_home, tmp_path, capsys, picture_plugin):
    suite = write_suite(SUITE)
    out = tmp_path / "report"
    report = ["report", str(suite), "--out", str(out), "--profile", "default", *picture_plugin]

    # a partial store: replicate 0 of the default profile, plus runs of another profile
    assert main(["run", str(suite), "--profile", "one", "--quiet", *picture_plugin]) == 0
    assert main(["run", str(suite), "--profile", "short", "--quiet", *picture_plugin]) == 0
    capsys.readouterr()
    assert main(report) == 0
    printed = capsys.readouterr().out
    assert "5 of 10 planned stage runs have not finished (5 missing)" in printed
    text = (out / "README.md").read_text()
    assert "**Incomplete:** 5 of 10 planned stage runs have not finished" in text
    for name in ("A/std/seed1", "A/Std2/seed1", "AB/std/seed1", "AB/Std2/seed1", "B/std/seed1"):
        assert f"- `{name}` (" in text and name in text.split("## Not finished")[1]
    assert "5 finished stage runs in the store belong to another configuration" in text
    assert "| std | 0." in text and "(1 of 2)" in text
    verdicts = json.loads((out / "claims.json").read_text())
    assert [v["verdict"] for v in verdicts] == ["inconclusive", "inconclusive"]
    assert "too few seeds" in verdicts[0]["reason"]

    # complete the default profile: the invocation's parent run carries the summary
    assert main(["run", str(suite), "--quiet", *picture_plugin]) == 0
    client, runs = store_runs(isolated_home)
    parents = sorted((r for r in runs if r.data.tags.get("harness.kind") == "invocation"),
                     key=lambda r: r.info.start_time)
    last = parents[-1]
    assert {last.data.tags[f"harness.claim.{i}"] for i in (1, 2)} <= {
        "reproduced", "not reproduced", "inconclusive"}
    assert last.data.tags["harness.claim.1.text"].startswith("AB.Std2 > AB.std [final_test_acc]: ")
    summary = Path(client.download_artifacts(last.info.run_id, "report/summary.md", str(tmp_path)))
    assert "## Claims" in summary.read_text() and "### Final test accuracy" in summary.read_text()

    capsys.readouterr()
    assert main(report) == 0
    printed = capsys.readouterr().out
    verdicts = json.loads((out / "claims.json").read_text())
    assert re.search(r"^claim 1 AB\.Std2 > AB\.std \[final_test_acc\]: "
                     r"(reproduced|not reproduced|inconclusive) \(paired t, n=2: ", printed, re.M)
    assert f"claim 2 AB.std >= B.std within 0.05 [final_test_acc]: {verdicts[1]['verdict']}" in printed
    text = (out / "README.md").read_text()
    assert "Incomplete" not in text and "10 planned stage runs: 10 finished" in text

    # the table cells are the mean, sample std and n of the runs' final test accuracy
    finals: dict[tuple, dict[int, float]] = {}
    for r in runs:
        tags = r.data.tags
        if tags.get("harness.identity") and r.data.params.get("run.epochs") == "3":  # not `short`
            finals.setdefault((tags["harness.stage"], tags["harness.method"]), {})[
                int(tags["harness.replicate"])] = r.data.metrics["final_test_acc"]
    assert set(finals) == {("A", "std"), ("A", "Std2"), ("AB", "std"), ("AB", "Std2"), ("B", "std")}
    table = text.split("### Final test accuracy: mean ± std (n)")[1].split("###")[0]
    for (stage, row), values in finals.items():
        assert len(values) == 2
        cell = (f"{statistics.mean(values.values()):.3f} ± "
                f"{statistics.stdev(values.values()):.3f} (2)")
        line = next(line for line in table.splitlines() if line.startswith(f"| {row} |"))
        assert cell in line, (stage, row, line)
    per_seed = text.split("Stage AB:")[1].split("Stage B:")[0]
    assert f"| seed 1 | {finals[('AB', 'std')][1]:.3f} | {finals[('AB', 'Std2')][1]:.3f} |" in per_seed
    # the paper's value beside the measured one, and the transfer gain paired by replicate
    assert "| AB | std | test acc | 0.136 ± 0.000 | Table 2 |" in text
    gains = [finals[("AB", "std")][k] - finals[("B", "std")][k] for k in (0, 1)]
    assert f"| std | AB − B.std | {statistics.mean(gains):+.3f} ± {statistics.stdev(gains):.3f} (2)" in text
    # cost with the ratio to std, on the device the runs used (device: auto)
    assert re.search(r"^\| A \| std \| (cpu|cuda), 1 \| .* \| 1\.00 \|", text, re.M)

    # figures and the evaluator's images are files the README embeds
    for rel in ("figures/rep-final.png", "figures/rep-curves.png"):
        assert (out / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", rel
        assert f"]({rel})" in text, rel
    for rel in ("artifacts/rep/A/std/seed0/planes/epoch3.png", "artifacts/rep/AB/Std2/seed0/planes/epoch3.png"):
        assert (out / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", rel
        assert f'<img src="{rel}"' in text, rel
    assert "| stage / method | planes |" in text
    assert "`harness report " in text and "runs produced by `harness run " in text
    assert "Profile `default`" in text and "Other profiles of this suite: `one`, `short`" in text

    # the same store gives the same bytes, but for the timestamp line
    before = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert main(report) == 0
    after = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert before.keys() == after.keys()
    for rel in before:
        if rel.name == "README.md":
            assert without_timestamp(before[rel].decode()) == without_timestamp(after[rel].decode())
        else:
            assert before[rel] == after[rel], rel


@pytest.mark.empty_home
def test_report_of_an_empty_store_says_what_is_missing(write_suite, isolated_home, tmp_path, capsys,
                                                       picture_plugin):
    suite = write_suite(SUITE)
    out = tmp_path / "empty"
    assert main(["report", str(suite), "--out", str(out), *picture_plugin]) == 0
    printed = capsys.readouterr().out
    assert "10 of 10 planned stage runs have not finished (10 missing)" in printed
    assert "claim 1 AB.Std2 > AB.std [final_test_acc]: inconclusive (too few seeds" in printed
    text = (out / "README.md").read_text()
    assert "10 planned stage runs: 10 missing" in text and "missing (0/2)" in text
    assert text.count(": missing") == 10 and "### Figures" not in text
    assert not (isolated_home / "mlflow.db").exists()  # reading never creates a store
    assert not (out / "figures").exists()


def test_failed_and_skipped_runs_are_reported_with_their_reason(write_suite, tmp_path, capsys):
    suite = write_suite("""
suite: broken
seeds: 1
defaults: {batch_size: 512, epochs: 2, threads: 1}
grid:
  method: [std, {name: explode, after: 1, label: Boom}]
  architecture: [mi_mlp]
stages:
  A: {dataset: ib12}
  AA: {from: A, dataset: ib12, method: std}
claims: ["AA.Boom >= AA.std"]
""")
    plugin = ["--plugin", "harness_test_plugins"]
    assert main(["run", str(suite), "--quiet", *plugin]) == 1
    out = tmp_path / "broken"
    assert main(["report", str(suite), "--out", str(out), *plugin]) == 0
    text = (out / "README.md").read_text()
    assert "- `A/Boom/seed0` (" in text and "failed: loss became nan in epoch 2" in text
    assert "- `AA/Boom/seed0` (" in text and "skipped: skipped: upstream stage run A/Boom/seed0" in text
    assert "| seed 0 | 0." in text and "| failed |" in text
    assert "| Boom | missing (0/1) | missing (0/1) |" in text


# a method with a design knob and an evaluator that logs it and a score that follows it, so the
# report's metric tables and sweep can be checked against known values
KNOB_PLUGIN = '''
import torch.nn.functional as F
from harness.api import Evaluator, Method, hookimpl

class Knob(Method):
    def __init__(self, model, ctx, *, depth: float = 0.0, boost: float = 0.0):
        super().__init__(model, ctx)
        self.depth, self.boost = float(depth), float(boost)

    def loss(self, batch):
        return {"task": F.cross_entropy(self.model(batch.x), batch.y)}

class KnobScore(Evaluator):
    every = "end"

    def evaluate(self, method, ctx):
        return {"depth": method.depth, "score": method.depth / 10 + method.boost + ctx.epoch / 1000}

@hookimpl
def harness_register_methods(register):
    register("knob", Knob)

@hookimpl
def harness_register_evaluators(register):
    register("knob_score", KnobScore)
'''

SWEEP_SUITE = """
suite: sweep
defaults: {optimizer: adam, lr: 1.0e-2, batch_size: 512, epochs: 2, threads: 1}
seeds: 2
grid:
  method:
    - {name: knob, depth: 1, label: plain_1}
    - {name: knob, depth: 2, label: plain_2}
    - {name: knob, depth: 1, boost: 0.5, label: boosted_1}
    - {name: knob, depth: 2, boost: 0.5, label: boosted_2}
  dataset: [ib12]
  architecture: [mi_mlp]
evaluate: [accuracy, knob_score]
report:
  metrics: [score, nothing_logs_this]
  sweeps:
    - x: depth
      y: [score]
      lines: {plain: [plain_1, plain_2], boosted: [boosted_1, boosted_2]}
"""


def test_report_metric_tables_and_sweeps(write_suite, isolated_home, tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "report_knob_plugin.py").write_text(KNOB_PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    plugin = ["--plugin", "report_knob_plugin"]
    suite = write_suite(SWEEP_SUITE)
    assert main(["run", str(suite), "--quiet", *plugin]) == 0
    out = tmp_path / "sweep"
    assert main(["report", str(suite), "--out", str(out), *plugin]) == 0
    text = (out / "README.md").read_text()
    # score = depth / 10 + boost + epoch / 1000, the same for both seeds
    table = text.split("### score: mean ± std (n)")[1]
    assert "| method | score |" in table
    assert "| plain_1 | 0.102 ± 0.000 (2) |" in table and "| boosted_2 | 0.702 ± 0.000 (2) |" in table
    assert "No finished run logged `final_nothing_logs_this`." in text
    sweep = text.split("### Sweep: score against depth")[1]
    assert "| line | depth 1 | depth 2 |" in sweep
    assert "| plain | 0.102 ± 0.000 (2) | 0.202 ± 0.000 (2) |" in sweep
    assert "| boosted | 0.602 ± 0.000 (2) | 0.702 ± 0.000 (2) |" in sweep
    figure = re.search(r"^!\[sweep 1\]\((figures/[^)]*sweep1\.png)\)$", sweep, re.M)
    assert figure and (out / figure.group(1)).stat().st_size > 10_000


@pytest.mark.parametrize("report, key, hint", [
    ("{metrics: score}", "report.metrics", "e.g."),
    ("{tables: [score]}", "report.tables", "metrics"),
    ("{sweeps: [{x: depth, y: [score], lines: {plain: [plain_3]}}]}", "report.sweeps[0].lines.plain",
     "plain_1"),
    ("{sweeps: [{x: depth, lines: {plain: [plain_1]}}]}", "report.sweeps[0]", "x and y"),
    ("{sweeps: [{x: depth, y: [score], lines: {plain: [plain_1]}, stage: B}]}",
     "report.sweeps[0].stage", "train"),
])
def test_bad_report_spec_is_a_suite_error(write_suite, isolated_home, tmp_path, monkeypatch, capsys,
                                         report, key, hint):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "report_knob_plugin.py").write_text(KNOB_PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    suite = write_suite(SWEEP_SUITE.split("report:")[0] + f"report: {report}\n")
    assert main(["validate", str(suite), "--plugin", "report_knob_plugin"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{suite}: {key}: " in err and hint in err, err

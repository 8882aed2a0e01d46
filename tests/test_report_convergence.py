"""The report's convergence marks end to end: a tiny suite run through the CLI, whose rows'
histories are known by construction (a method whose loss and an evaluator whose score move at
a rate the suite sets), reported with ``harness report``."""

from __future__ import annotations

import json
import textwrap

import pytest

from harness.cli import main

# ``rate`` sets how fast the training loss falls and the score rises per epoch; each seed gets
# its own offset, so the rows differ across seeds but move at the same rate
PLUGIN = '''
from harness.api import Evaluator, Method, hookimpl

class Pace(Method):
    def __init__(self, model, ctx, *, rate: float = 0.0):
        super().__init__(model, ctx)
        self.rate, self.offset, self.epoch = float(rate), (ctx.seed % 7) / 1000, 0

    def epoch_started(self, epoch):
        self.epoch = epoch + 1
        return {}

    def loss(self, batch):
        level = 1.0 - self.rate * self.epoch + self.offset
        return {"task": 0.0 * self.model(batch.x).sum() + level}

class PaceScore(Evaluator):
    every = 1

    def evaluate(self, method, ctx):
        return {"score": 0.5 + method.rate * ctx.epoch + method.offset}

@hookimpl
def harness_register_methods(register):
    register("pace", Pace)

@hookimpl
def harness_register_evaluators(register):
    register("pace_score", PaceScore)
'''

SUITE = """
suite: conv
defaults: {optimizer: adam, lr: 1.0e-3, batch_size: 4096, epochs: 16, threads: 1}
seeds: 2
grid:
  method: [{name: pace, rate: 0.0, label: flat}, {name: pace, rate: 0.02, label: rising}]
  dataset: [ib12]
  architecture: [mi_mlp]
evaluate: [{name: pace_score, every: 2}]
report: {baseline: pace, metric: score}
claims: ["train.rising > train.flat on score"]
profiles:
  default: {}
  short: {epochs: 4}
"""


@pytest.fixture
def pace_plugin(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "pace_plugin.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(folder))
    return ["--plugin", "pace_plugin"]


def _section(text: str, title: str) -> str:
    return text.split(f"### {title}")[1].split("\n### ")[0]


def test_still_improving_rows_are_marked_in_the_tables_and_beside_the_claims(
        write_suite, tmp_path, capsys, pace_plugin):
    suite = write_suite(SUITE)
    assert main(["run", str(suite), "--quiet", *pace_plugin]) == 0
    out = tmp_path / "report"
    capsys.readouterr()
    assert main(["report", str(suite), "--out", str(out), *pace_plugin]) == 0
    printed = capsys.readouterr().out
    assert "convergence: train.rising ↑ still improving (score, loss)" in printed
    text = (out / "README.md").read_text()

    conv = _section(text, "Convergence")
    # 16 epochs evaluated every 2: 8 evaluations a run, the window holds epochs 12, 14 and 16
    assert "| train | rising | score | ↑ still improving | 8 | +0.08 ± 0 (2) |" in conv
    assert "| train | flat | score | converged | 8 | +0 ± 0 (2) |" in conv
    assert "| train | rising | loss | ↑ still improving | 16 |" in conv
    assert "| train | flat | loss | converged | 16 |" in conv
    assert "2 of 4 judged metrics did not converge" in conv

    main_table = _section(text, "Final score: mean ± std (n)")
    rising = next(line for line in main_table.splitlines() if line.startswith("| rising |"))
    flat = next(line for line in main_table.splitlines() if line.startswith("| flat |"))
    assert rising.endswith(" (2) ↑ |") and flat.endswith(" (2) |")
    assert "Convergence of the 2 rows: 1 still improving (↑)" in main_table
    assert "| rising ↑ | " not in main_table  # the mark is in the cell of the row's stage
    assert "| training run | flat_train | rising_train ↑ |" in text  # the per-seed table
    assert "| train | rising ↑ |" in _section(text, "Cost")

    claims = _section(text, "Claims") if "### Claims" in text else text.split("## Claims")[1]
    assert "convergence of its rows" in claims and "train.rising ↑ still improving" in claims
    verdicts = json.loads((out / "claims.json").read_text())
    assert verdicts[0]["convergence"] == "train.rising ↑ still improving (score, loss)"


def test_too_short_a_run_cannot_be_judged_and_the_report_says_so(write_suite, tmp_path, capsys,
                                                                 pace_plugin):
    suite = write_suite(SUITE)
    assert main(["run", str(suite), "--profile", "short", "--quiet", *pace_plugin]) == 0
    out = tmp_path / "report"
    assert main(["report", str(suite), "--profile", "short", "--out", str(out), *pace_plugin]) == 0
    text = (out / "README.md").read_text()
    conv = _section(text, "Convergence")
    assert ("| train | rising | score | † cannot be judged | 2 | – | – | – | 2 evaluations in a "
            "run (the rule needs 8) |") in conv
    assert "| train | flat | loss | † cannot be judged | 4 |" in conv
    assert ("Convergence of the 2 rows: 2 cannot be judged (fewer than 8 evaluations a run, or "
            "one seed)") in text
    assert "↑" not in _section(text, "Final score: mean ± std (n)")
    verdicts = json.loads((out / "claims.json").read_text())
    assert verdicts[0]["convergence"] == ("train.rising † cannot be judged (score, loss); "
                                          "train.flat † cannot be judged (score, loss)")


@pytest.mark.parametrize("convergence, key, hint", [
    ("{margins: 0.01}", "report.convergence.margins", "margin"),
    ("{margin: -1}", "report.convergence.margin", "0.01"),
    ("{margin: 1e-3}", "report.convergence.margin", "1.0e-3"),
    ("{loss: [1]}", "report.convergence.loss", "loss: none"),
    ("{loss: {a: b}}", "report.convergence.loss", "loss_stage3_ce"),
    ("[0.01]", "report.convergence", "margin: 0.01"),
])
def test_a_bad_convergence_key_is_one_suite_error(write_suite, capsys, pace_plugin, convergence,
                                                  key, hint):
    suite = write_suite(SUITE.replace("report: {baseline: pace, metric: score}",
                                      f"report: {{baseline: pace, metric: score, "
                                      f"convergence: {convergence}}}"))
    assert main(["validate", str(suite), *pace_plugin]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{suite}: {key}: " in err and hint in err, err


def test_the_suite_names_the_loss_and_the_margin(write_suite, tmp_path, capsys, pace_plugin):
    # a margin of 0.1 makes the rising score (+0.08 a quarter) converged; no loss is judged
    suite = write_suite(SUITE.replace("report: {baseline: pace, metric: score}",
                                      "report: {baseline: pace, metric: score, "
                                      "convergence: {margin: 0.1, loss: none}}"))
    assert main(["run", str(suite), "--quiet", *pace_plugin]) == 0
    out = tmp_path / "report"
    assert main(["report", str(suite), "--out", str(out), *pace_plugin]) == 0
    conv = _section((out / "README.md").read_text(), "Convergence")
    assert "| train | rising | score | converged | 8 | +0.08 ± 0 (2) |" in conv
    assert "| loss |" not in conv and "Every judged metric of every row converged." in conv


def test_the_loss_is_the_first_of_its_names_a_row_logs(write_suite, tmp_path, pace_plugin):
    # no row logs `loss_other`: `loss_task` (the pace method's one term) is judged instead
    suite = write_suite(SUITE.replace("report: {baseline: pace, metric: score}",
                                      "report: {baseline: pace, metric: score, "
                                      "convergence: {loss: [loss_other, loss_task, loss]}}"))
    assert main(["run", str(suite), "--quiet", *pace_plugin]) == 0
    out = tmp_path / "report"
    assert main(["report", str(suite), "--out", str(out), *pace_plugin]) == 0
    conv = _section((out / "README.md").read_text(), "Convergence")
    assert "| train | rising | loss task | ↑ still improving | 16 |" in conv
    assert "| loss |" not in conv and "| loss other |" not in conv


def test_a_claims_margin_is_the_convergence_margin_of_its_metric(write_suite, tmp_path,
                                                                 pace_plugin):
    """A metric in other units than accuracy (an error in percent) is compared `within 1` by
    its claims; judging its convergence against the accuracy's 0.01 would call every row
    unclear. Here the claim's 0.1 makes the rising score (+0.08 a quarter) converged."""
    suite = write_suite(SUITE.replace('claims: ["train.rising > train.flat on score"]',
                                      'claims: ["train.rising > train.flat on score within 0.1"]'))
    assert main(["run", str(suite), "--quiet", *pace_plugin]) == 0
    out = tmp_path / "report"
    assert main(["report", str(suite), "--out", str(out), *pace_plugin]) == 0
    conv = _section((out / "README.md").read_text(), "Convergence")
    assert "| train | rising | score | converged | 8 | +0.08 ± 0 (2) |" in conv
    assert "| 0.1 |" in conv

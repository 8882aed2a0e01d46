"""Every offline suite's default profile evaluates its headline metric often enough for the
report's convergence check (harness.convergence: 8 evaluations a run), and its claims' metrics
too where an evaluator logs them per epoch."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.claims import parse, rows_of
from harness.convergence import MIN_EVALUATIONS
from harness.plugins import Plugins
from harness.suite import expand, load_suite
from harness.train.loop import due

SUITES = Path(__file__).resolve().parents[1] / "suites"
OFFLINE = ["quickstart", "transfer", "compatibility", "semisupervised", "cetl", "reversible"]
#: which evaluator logs a metric the suites' headline or claims compare
LOGGED_BY = {"test_acc": "accuracy", "test_err": "accuracy", "swapped_acc": "head_swap"}


def _evaluations(run, evaluator: str, plugins: Plugins) -> int:
    counts = []
    for ref in run.evaluate:
        if ref.name == evaluator:
            every = ref.opts.get("every", plugins.get("evaluators", ref.name).obj.every)
            epochs = int(run.run["epochs"])
            counts.append(sum(due(every, e, epochs) for e in range(epochs)))
    return max(counts, default=0)


@pytest.mark.parametrize("name", OFFLINE)
def test_the_default_profile_evaluates_8_times_a_run(name):
    plugins = Plugins()
    suite = load_suite(SUITES / f"{name}.yaml")
    short = []
    for setting in suite.settings:
        headline = setting.report.metric.removeprefix("final_")
        wanted = {stage: {headline} for stage in setting.stages}  # stage -> metrics
        for text in setting.claims:
            claim = parse(text, metric=setting.report.metric, stages=list(setting.stages))
            for side in rows_of(claim.left) + rows_of(claim.right):
                wanted[side.stage].add(claim.metric.removeprefix("final_"))
        for run in expand(suite):
            if run.setting != setting.name:
                continue
            for evaluator in {LOGGED_BY[m] for m in wanted[run.stage] if m in LOGGED_BY}:
                n = _evaluations(run, evaluator, plugins)
                if n < MIN_EVALUATIONS:
                    short.append(f"{run.name}: {evaluator} {n} times")
    assert not short, short

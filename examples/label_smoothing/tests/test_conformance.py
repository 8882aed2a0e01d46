"""Conformance of label_smoothing with the harness's contracts, and its suite through the CLI."""

from pathlib import Path

from harness.testing import method, parametrize_with_checks

from label_smoothing import LabelSmoothing

SUITE = Path(__file__).resolve().parents[1] / "suites" / "label_smoothing.yaml"


@parametrize_with_checks([method(LabelSmoothing, smoothing=0.1)])
def test_conformance(plugin, check):
    check(plugin)


def test_suite_runs(run_suite):
    assert run_suite(SUITE, "--profile", "smoke") == 0

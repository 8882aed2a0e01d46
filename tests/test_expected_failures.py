"""Rows a suite expects to fail (``expect_failure:``), through the CLI: their failures exit 0 and
are reported as expected divergence, an unexpected failure still exits 1, a row that trains
although expected to fail is reported as such, and bad values are one suite error (exit 2)."""

from __future__ import annotations

import pytest

from harness.cli import main

PLUGIN = ["--plugin", "harness_test_plugins"]  # `explode`: the loss turns NaN from epoch `after`

SUITE = """
suite: xfail
seeds: 1
defaults: {batch_size: 512, epochs: 2, threads: 1}
grid:
  method: [std, {name: explode, after: 1, label: Boom}, {name: explode, after: 5, label: Fine}]
  architecture: [mi_mlp]
stages:
  A: {dataset: ib12}
  AA: {from: A, dataset: ib12, method: std}
claims: ["AA.Boom >= AA.std"]
"""
EXPECT = """expect_failure:
  Boom: "its loss is made NaN in its second epoch"
  A.Fine: "declared to fail, but its NaN would come after the last epoch"
"""


def _runs(home):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("xfail")
    return client.search_runs([exp.experiment_id], max_results=100)


def test_an_expected_failure_exits_0_and_is_reported(write_suite, isolated_home, tmp_path,
                                                     capsys):
    suite = write_suite(SUITE + EXPECT)
    assert main(["run", str(suite), *PLUGIN]) == 0
    err = capsys.readouterr().err
    assert "4 finished, 1 failed, 1 skipped (2 of them expected)" in err
    assert "expected to fail (the suite's expect_failure): A/Boom/seed0: loss became nan" in err
    assert "expected to fail (the suite's expect_failure): AA/Boom/seed0: skipped" in err
    assert "trained although the suite expects it to fail: A/Fine/seed0" in err
    assert "  failed: " not in err
    runs = {r.info.run_name: r for r in _runs(isolated_home)}
    assert runs["A/Boom/seed0"].info.status == "FAILED"  # recorded as it happened
    assert runs["A/Boom/seed0"].data.tags["harness.expected_failure"].startswith("its loss")
    assert "harness.expected_failure" not in runs["A/std/seed0"].data.tags
    parent = next(r for r in runs.values() if r.data.tags.get("harness.kind") == "invocation")
    assert parent.info.status == "FINISHED"

    out = tmp_path / "report"
    assert main(["report", str(suite), "--out", str(out), *PLUGIN]) == 0
    assert "; 2 of them expected to fail); the report lists them" in capsys.readouterr().out
    text = (out / "README.md").read_text()
    assert "6 planned stage runs: 4 finished, 1 failed, 1 skipped (2 of them expected to fail" in text
    assert "**Incomplete:**" not in text and "## Not finished" not in text
    section = text.split("## Expected divergence")[1].split("\n## ")[0]
    assert "| xfail | A.Boom, AA.Boom | its loss is made NaN in its second epoch | 2 of 2 | 0 of 2 |" \
        in section
    assert "| xfail | A.Fine | declared to fail, but its NaN would come after the last epoch " \
           "| 0 of 1 | 1 of 1 |" in section
    assert "- `A/Boom/seed0`: failed as expected: loss became nan in epoch 2" in section
    assert "- `AA/Boom/seed0`: skipped as expected: skipped: upstream stage run A/Boom/seed0" in section
    assert "- `A/Fine/seed0`: **trained although expected to fail** (test acc 0." in section
    claims = text.split("## Claims")[1].split("\n## ")[0]
    assert "expected to fail: AA.Boom; " in claims


def test_an_unexpected_failure_still_exits_1(write_suite, isolated_home, tmp_path, capsys):
    # only the phase II row is declared: its skip is expected, phase I's failure is not
    suite = write_suite(SUITE + 'expect_failure: {AA.Boom: "starts from a network that diverged"}\n')
    assert main(["run", str(suite), *PLUGIN]) == 1
    err = capsys.readouterr().err
    assert "1 failed, 1 skipped (1 of them expected)" in err
    assert "  failed: A/Boom/seed0: loss became nan" in err
    runs = _runs(isolated_home)
    parent = next(r for r in runs if r.data.tags.get("harness.kind") == "invocation")
    assert parent.info.status == "FAILED"
    out = tmp_path / "report"
    assert main(["report", str(suite), "--out", str(out), *PLUGIN]) == 0
    text = (out / "README.md").read_text()
    assert "**Incomplete:** 1 of 6 planned stage runs have not finished (besides those expected" in text
    assert "- `A/Boom/seed0` (" in text.split("## Not finished")[1]
    assert "- `AA/Boom/seed0` (" not in text.split("## Not finished")[1]


def test_a_skip_below_an_expected_failure_is_expected_too(write_suite, capsys):
    suite = write_suite(SUITE + 'expect_failure: {A.Boom: "its loss is made NaN"}\n')
    assert main(["run", str(suite), *PLUGIN]) == 0
    assert "(2 of them expected)" in capsys.readouterr().err


@pytest.mark.parametrize("expect, key, hint", [
    ("[Boom]", "expect_failure", "e.g. `expect_failure: {RN_paper:"),
    ("{Bom: diverges}", "expect_failure.Bom", "did you mean 'Boom'"),
    ("{A.Bom: diverges}", "expect_failure.A.Bom", "did you mean 'Boom'"),
    ("{B.Boom: diverges}", "expect_failure.B.Boom", "did you mean"),
    ("{Boom: ''}", "expect_failure.Boom", "say why"),
    ("{Boom: 3}", "expect_failure.Boom", "say why"),
])
def test_bad_expectations_are_one_suite_error(write_suite, capsys, expect, key, hint):
    suite = write_suite(SUITE + f"expect_failure: {expect}\n")
    assert main(["validate", str(suite), *PLUGIN]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{suite}: {key}: " in err and hint in err, err


def test_a_settings_expectation_is_checked_under_its_setting(write_suite, capsys):
    text = SUITE.replace("grid:", "settings:\n  one:\n    expect_failure: {Bom: x}\ngrid:")
    suite = write_suite(text)
    assert main(["validate", str(suite), *PLUGIN]) == 2
    assert f"{suite}: settings.one.expect_failure.Bom: " in capsys.readouterr().err


def test_declaring_an_expectation_changes_no_identity(write_suite, capsys):
    plain = write_suite(SUITE, "plain.yaml")
    expecting = write_suite(SUITE + EXPECT, "expecting.yaml")
    assert main(["run", str(plain), "--dry-run", *PLUGIN]) == 0
    before = capsys.readouterr().out
    assert main(["run", str(expecting), "--dry-run", *PLUGIN]) == 0
    assert capsys.readouterr().out == before

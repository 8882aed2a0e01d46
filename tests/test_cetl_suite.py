"""The CETL suites (paper 003): they validate (the files suite up to its missing files), claims
and references name real rows, every setting's CETL stage takes S from its `source` stage, the
adaptation targets carry no labels, bad CETL options are refused through the CLI (exit 2, file,
key and hint), and the smoke profile's transfer setting runs and reports through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.claims import parse, rows_of
from harness.cli import main
from harness.plugins import Plugins
from harness.suite import check_plugins, expand, load_suite

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = ROOT / "suites" / "cetl.yaml"
FILES = ROOT / "suites" / "cetl_files.yaml"


@pytest.mark.parametrize("path,profile", [(OFFLINE, None), (OFFLINE, "smoke"), (OFFLINE, "paper"),
                                          (FILES, None), (FILES, "smoke")])
def test_suites_validate(path, profile, capsys):
    suite = load_suite(path, profile)
    check_plugins(suite, Plugins())
    assert expand(suite)
    if path == OFFLINE and profile != "smoke":
        return  # building every network and data set once is what the smoke check below does
    code = main(["validate", str(path)] + (["--profile", profile] if profile else []))
    out, err = capsys.readouterr()
    if path == FILES:  # validate builds the data as run does: no torchvision files here
        assert code == 2 and "files not found under" in err, err
        return
    assert code == 0 and "is valid" in out


def test_claims_references_and_refs_name_real_rows():
    for path in (OFFLINE, FILES):
        suite = load_suite(path)
        runs = expand(suite)
        rows = {(r.setting, r.stage, r.row) for r in runs}
        for setting in suite.settings:
            assert setting.claims
            for claim in setting.claims:
                c = parse(claim, metric=setting.report.metric)
                for side in rows_of(c.left) + rows_of(c.right):
                    assert (setting.name, side.stage, side.label) in rows, claim
            for stage, labels in setting.reference.items():
                for label in labels:
                    assert (setting.name, stage, label) in rows, (path.name, stage, label)
        for r in runs:
            if r.stage == "cetl":
                assert list(r.refs) == ["source"]
                assert r.method.name == "cetl"


def test_the_offline_suite_has_table_2s_five_variants_and_unlabelled_targets():
    runs = expand(load_suite(OFFLINE))
    transfer = {r.row: dict(r.method.opts) for r in runs if r.setting == "transfer" and r.stage == "cetl"}
    assert {o.get("variant") for o in transfer.values()} == {"f", "u", "e", "fi", "gfi"}
    assert {r.replicate for r in runs} == set(range(5))  # 5 seeds: 3 left verdicts unstable
    for r in runs:
        if r.setting.startswith("adapt") and r.stage == "cetl":
            assert r.method.opts["mode"] == "adapt"
            assert r.dataset.spec()["roles"]["target"]["labels"] == 0


def test_bad_cetl_options_are_refused_with_file_key_and_hint(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HARNESS_HOME", str(tmp_path / "home"))
    text = OFFLINE.read_text().replace("{name: cetl, variant: e,", "{name: cetl, variant: ee,")
    bad = tmp_path / "cetl.yaml"
    bad.write_text(text)
    assert main(["validate", str(bad), "--profile", "smoke"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "variant" in err and "Table 2" in err
    labelled = OFFLINE.read_text().replace("target: {name: mnist5k, labels: 0}",
                                           "target: {name: mnist5k, labels: 10}")
    bad.write_text(labelled)
    assert main(["validate", str(bad), "--profile", "smoke"]) == 2
    assert "labels: 0" in capsys.readouterr().err


@pytest.mark.slow
def test_smoke_transfer_setting_runs_and_reports_through_the_cli(isolated_home):
    from mlflow.tracking import MlflowClient

    assert main(["run", str(OFFLINE), "--profile", "smoke", "--quiet",
                 "--only", "setting=transfer,method=CETL"]) == 0
    c = MlflowClient(tracking_uri=f"sqlite:///{isolated_home / 'mlflow.db'}")
    exp = c.get_experiment_by_name("cetl")
    runs = {r.info.run_name: r for r in c.search_runs([exp.experiment_id], max_results=100)
            if r.data.tags.get("harness.kind") != "invocation"}
    assert {"transfer:source/S/seed0", "transfer:cetl/CETL/seed0"} <= set(runs)
    metrics = runs["transfer:cetl/CETL/seed0"].data.metrics
    assert {"final_test_acc", "final_loss_stage1_recon_s", "final_loss_stage2_recon_t",
            "final_loss_stage3_ce", "final_cetl_stage"} <= set(metrics)
    assert main(["report", str(OFFLINE), "--profile", "smoke", "--out", str(isolated_home / "rep")]) == 0
    assert "CETL" in (isolated_home / "rep" / "README.md").read_text()

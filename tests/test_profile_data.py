"""Profiles that change data options (``profiles.P.data``, per stage and per setting): what the
stage runs get, that the rows keep their names, and bad values as one suite error (exit 2)."""

from __future__ import annotations

import pytest

from harness.cli import main
from harness.suite import expand, load_suite

SUITE = """
suite: pd
seeds: 2
defaults: {optimizer: adam, lr: 1.0e-2, batch_size: 512, epochs: 2, threads: 1}
grid:
  dataset: [{name: ib12, labels_per_class: 100, subset_seed: replicate, label: few}]
  architecture: [mi_mlp]
  method: [std]
stages:
  A: {}
  B: {dataset: {name: ib12, labels: 1000, label: many}, method: std}
  C: {dataset: {source: ib12, target: {name: ib12_flipped, labels: 0}}, method: source_only,
      evaluate: [{name: accuracy, splits: [test]}]}
profiles:
  small:
    seeds: 1
    data: {fraction: 0.5}
    stages: {B: {data: {fraction: 0.8, labels: 900}, epochs: 1}}
  relabel: {data: {labels: 300}}
"""


def _runs(path, profile=None):
    return {r.stage: r for r in expand(load_suite(path, profile)) if r.replicate == 0}


def test_a_profile_sets_data_options_on_every_data_set_and_one_stage_overrides(write_suite):
    path = write_suite(SUITE)
    plain, small = _runs(path), _runs(path, "small")
    assert plain["A"].dataset.spec() == {"name": "ib12", "labels_per_class": 100,
                                         "subset_seed": 0}
    assert small["A"].dataset.spec() == {"name": "ib12", "fraction": 0.5,
                                         "labels_per_class": 100, "subset_seed": 0}
    # the stage's own entry wins over the profile's, and its run settings still apply
    assert small["B"].dataset.spec() == {"name": "ib12", "fraction": 0.8, "labels": 900}
    assert small["B"].run["epochs"] == 1 and small["A"].run["epochs"] == 2
    # every role of a stage with several data sets
    roles = small["C"].dataset.spec()["roles"]
    assert roles == {"source": {"name": "ib12", "fraction": 0.5},
                     "target": {"name": "ib12_flipped", "fraction": 0.5, "labels": 0}}
    # the rows and the data keep their names: tables and errors name the data as the suite does
    assert small["A"].dataset.label == plain["A"].dataset.label == "few"
    assert small["B"].dataset.label == "many" and small["B"].row == plain["B"].row


def test_labels_from_a_profile_replace_labels_per_class(write_suite):
    spec = _runs(write_suite(SUITE), "relabel")["A"].dataset.spec()
    assert spec == {"name": "ib12", "labels": 300, "subset_seed": 0}


def test_a_settings_profile_entry_sets_its_own_data(write_suite):
    text = SUITE.replace("profiles:", "settings:\n  one: {}\n  two: {}\nprofiles:")
    text += "  per_setting: {data: {fraction: 0.9}, settings: {two: {data: {fraction: 0.25}}}}\n"
    runs = expand(load_suite(write_suite(text), "per_setting"))
    fractions = {(r.setting, r.stage): r.dataset.spec().get("fraction") for r in runs if r.stage == "A"}
    assert fractions == {("one", "A"): 0.9, ("two", "A"): 0.25}


def test_the_data_a_profile_shrinks_is_what_trains(write_suite, isolated_home, tmp_path, capsys):
    path = write_suite(SUITE)
    assert main(["run", str(path), "--profile", "small", "--quiet"]) == 0
    out = tmp_path / "report"
    assert main(["report", str(path), "--profile", "small", "--out", str(out)]) == 0
    budget = (out / "README.md").read_text().split("### Training budget")[1].split("###")[0]
    # ib12's 3277 training patterns: half of them (1638), 100 per class labelled (200);
    # stage B 80% (2622), 900 labelled
    rows = {line.split(" | ")[0].strip("| "): line for line in budget.splitlines()
            if line.startswith("| ")}
    assert rows["A"].endswith("| 200 |") and rows["B"].endswith("| 900 |"), budget
    # a shrunk profile is another configuration: its identities differ from the default's
    assert main(["run", str(path), "--dry-run"]) == 0
    default_ids = capsys.readouterr().out
    assert main(["run", str(path), "--profile", "small", "--dry-run"]) == 0
    small_ids = capsys.readouterr().out
    assert not set(default_ids.split()) & {w for w in small_ids.split() if len(w) == 20}


@pytest.mark.parametrize("profile, key, hint", [
    ("{data: {fractoin: 0.5}}", "profiles.bad.data.fractoin", "did you mean 'fraction'?"),
    ("{data: {fraction: 2}}", "profiles.bad.data.fraction", "keeps a fifth"),
    ("{data: {fraction: '0.5'}}", "profiles.bad.data.fraction", "fraction: 0.2"),
    ("{data: {limit: 100}}", "profiles.bad.data.limit", "a data set's own options go in its entry"),
    ("{data: [fraction]}", "profiles.bad.data", "key: value"),
    ("{data: {fit: sideways, size: 8}}", "profiles.bad.data.fit", "fit: stretch"),
    ("{data: {box: 4}}", "profiles.bad.data.box", "needs a size"),
    ("{stages: {B: {dato: {fraction: 0.5}}}}", "profiles.bad.stages.B.dato", "did you mean 'data'?"),
    ("{stages: {B: {data: {labels: -1}}}}", "profiles.bad.stages.B.data.labels", "labels: 50"),
    ("{stages: {Z: {data: {fraction: 0.5}}}}", "profiles.bad.stages.Z", "no stage"),
])
def test_bad_profile_data_is_one_suite_error(write_suite, capsys, profile, key, hint):
    path = write_suite(SUITE + f"  bad: {profile}\n")
    assert main(["validate", str(path), "--profile", "bad"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{path}: {key}: " in err and hint in err, err

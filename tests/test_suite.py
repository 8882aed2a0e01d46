"""Suites: validation messages, profiles, grid expansion, the stage DAG and shared stages."""

from __future__ import annotations

import pytest

from harness.errors import UserError
from harness.suite import derive_seed, expand, load_suite, parse_suite, stage_axes

TRANSFER = """
suite: t
seeds: 3
defaults: {optimizer: adam, lr: 4.0e-4, batch_size: 512, epochs: 20}
grid:
  method:
    - std
    - {name: racecar, layers: 6, weight: 1.0e-2, label: RR6}
    - {name: srip, weight: 0.1, label: Ort}
stages:
  A:  {dataset: ib12, architecture: mi_mlp}
  AA: {from: A, dataset: ib12, method: std}
  AB: {from: A, dataset: ib12_flipped, method: std}
  B:  {dataset: ib12_flipped, architecture: mi_mlp, method: std, epochs: 40}
profiles:
  smoke: {epochs: 2, seeds: 1}
  paper: {epochs: 20000, stages: {B: {epochs: 40000}}}
"""


def parse(text, profile=None):
    import yaml
    return parse_suite(yaml.safe_load(text), "s.yaml", profile)


def test_transfer_grid_expands_with_shared_baseline():
    suite = parse(TRANSFER)
    runs = expand(suite)
    by_stage = {}
    for r in runs:
        by_stage.setdefault(r.stage, []).append(r)
    assert {k: len(v) for k, v in by_stage.items()} == {"A": 9, "AA": 9, "AB": 9, "B": 3}
    # B names its method, dataset and architecture: it is shared by all methods, once per seed
    assert {r.name for r in by_stage["B"]} == {"B/std/seed0", "B/std/seed1", "B/std/seed2"}
    ab = next(r for r in runs if r.name == "AB/RR6/seed1")
    assert ab.from_key == next(r.key for r in runs if r.name == "A/RR6/seed1")
    assert ab.method.name == "std" and ab.cell == {"method": "RR6"}
    assert ab.run["epochs"] == 20 and by_stage["B"][0].run["epochs"] == 40
    # upstream runs come first
    position = {r.key: i for i, r in enumerate(runs)}
    assert all(position[r.from_key] < position[r.key] for r in runs if r.from_key)


def test_stage_axes_follow_upstream():
    suite = parse(TRANSFER)
    axes = stage_axes(suite.settings[0].stages, suite.settings[0].grid)
    assert axes == {"A": ("method",), "AA": ("method",), "AB": ("method",), "B": ()}


def test_profiles_override_stages_and_seeds():
    smoke = parse(TRANSFER, "smoke")
    assert smoke.settings[0].seeds == [0]
    assert all(r.run["epochs"] == 2 for r in expand(smoke))
    paper = parse(TRANSFER, "paper")
    epochs = {r.stage: r.run["epochs"] for r in expand(paper)}
    assert epochs == {"A": 20000, "AA": 20000, "AB": 20000, "B": 40000}


def test_default_profile_applies_when_none_is_named():
    suite = parse(TRANSFER.replace("  smoke:", "  default:"))
    assert suite.profile == "default" and suite.settings[0].seeds == [0]


def test_seeds_are_deterministic_and_distinct():
    runs = expand(parse(TRANSFER))
    again = expand(parse(TRANSFER))
    assert [r.seed for r in runs] == [r.seed for r in again]
    assert len({r.seed for r in runs}) == len(runs)
    assert derive_seed("a", 1) == derive_seed("a", 1) != derive_seed("a", 2)


def test_seed_list_and_labels():
    suite = parse("""
suite: s
seeds: [3, 7]
grid:
  method: [std, {name: std}]
  dataset: [digits]
  architecture: [small_cnn, {name: small_cnn, width: 8}]
""".replace("{name: std}", "{name: std, label: std2}"))
    runs = expand(suite)
    assert len(runs) == 2 * 2 * 2
    assert {r.replicate for r in runs} == {3, 7}
    assert "train/std2/small_cnn-width8/seed7" in {r.name for r in runs}


def test_settings_share_top_level_keys():
    suite = parse("""
suite: two
seeds: 2
evaluate: [accuracy]
settings:
  a: {grid: {method: [std], dataset: [ib12], architecture: [mi_mlp]}}
  b: {seeds: 1, grid: {method: [std], dataset: [digits], architecture: [small_cnn]}}
""")
    names = [r.name for r in expand(suite)]
    assert names == ["a:train/std/seed0", "a:train/std/seed1", "b:train/std/seed0"]


@pytest.mark.parametrize("text, key, words", [
    ("suite: s\ngrid: {method: [std], dataset: [ib12], architecture: [mi_mlp]}\ndefaults: {epochs: 0}",
     "defaults.epochs", "positive integer"),
    ("suite: s\ngrid: {method: [std], dataset: [ib12], architecture: [mi_mlp]}\ndefaults: {epoch: 3}",
     "defaults.epoch", "did you mean 'epochs'"),
    ("suite: s\ngrid: {method: [], dataset: [ib12], architecture: [mi_mlp]}", "grid.method", "empty"),
    ("suite: s\ngrid: {method: [std], dataset: [ib12], architecture: [mi_mlp]}\n"
     "stages: {A: {from: B}, B: {from: A}}", "stages.", "cycle"),
    ("suite: s\ngrid: {method: [std], dataset: [ib12], architecture: [mi_mlp]}\n"
     "stages: {A: {}, AB: {from: Z}}", "stages.AB.from", "no stage 'Z'"),
    ("suite: s\ngrid: {method: [std], dataset: [ib12], architecture: [mi_mlp]}\n"
     "profiles: {smoke: {epochs: 1}}", "profiles", "no profile 'smok'"),
    ("grid: {method: [std]}", "suite", "needs a name"),
    ("suite: s\nseeds: -1\ngrid: {method: [std], dataset: [ib12], architecture: [mi_mlp]}",
     "seeds", "at least 1"),
    ("suite: s\ngrid: {method: [std], dataset: [ib12]}", "stages.train", "no architecture"),
    ("suite: s\ngrid: {method: [std], dataset: [ib12], architecture: [mi_mlp]}\n"
     "defaults: {lr: 1e-3}", "defaults.lr", "write 1.0e-3"),
    ("suite: s\ngrid: {method: [std, std], dataset: [ib12], architecture: [mi_mlp]}",
     "grid.method[1]", "used twice"),
    ("suite: s\ngrid: {method: [std], dataset: [ib12], architecture: [mi_mlp]}\n"
     "defaults: {schedule: {name: multistep}}", "defaults.schedule.milestones", "milestones"),
    ("suite: s\nmethods: [std]", "methods", "unknown key"),
])
def test_invalid_suites_name_file_and_key(text, key, words):
    import yaml
    profile = "smok" if "smoke" in text else None
    with pytest.raises(UserError) as err:
        parse_suite(yaml.safe_load(text), "bad.yaml", profile)
    message = err.value.format()
    assert message.startswith("bad.yaml: ")
    assert key in (err.value.key or "")
    assert words in message


def test_broken_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("suite: s\ngrid: {method: [std\n")
    with pytest.raises(UserError) as err:
        load_suite(path)
    assert "broken.yaml" in err.value.format() and "line" in err.value.format()


def test_missing_file():
    with pytest.raises(UserError, match="no such suite file"):
        load_suite("nope.yaml")


def test_shipped_suites_validate():
    from pathlib import Path

    from harness.plugins import Plugins
    from harness.suite import check_plugins

    plugins = Plugins()
    suites = sorted((Path(__file__).resolve().parents[1] / "suites").glob("*.yaml"))
    assert suites
    for path in suites:
        suite = load_suite(path)
        check_plugins(suite, plugins)
        assert expand(suite)


def test_a_stages_own_method_label_is_in_its_run_names(write_suite, capsys):
    """A phase II that trains with a method of its own that the suite labels (and not as one of
    the grid's rows) is named by that label too; otherwise it keeps the row's name alone."""
    from harness.cli import main

    suite = write_suite("""
suite: own-label
defaults: {batch_size: 512, epochs: 1, threads: 1}
grid: {method: [{name: std, label: Std}], architecture: [mi_mlp]}
stages:
  A: {dataset: ib12}
  AB: {from: A, dataset: ib12_flipped, method: {name: std, label: Std}}
  AB_ort: {from: A, dataset: ib12_flipped, method: {name: srip, label: Ort}}
  AB_srip: {from: A, dataset: ib12_flipped, method: srip}
""")
    assert main(["run", str(suite), "--dry-run"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[:-1]]
    # a method the suite does not label keeps the names runs always had
    assert names == ["A/Std/seed0", "AB/Std/seed0", "AB_ort/Std/Ort/seed0", "AB_srip/Std/seed0"]
    rows = {r.stage: r.row for r in expand(load_suite(suite))}
    assert rows["AB_ort"] == "Std"  # tables and claims still file it under the row it continues

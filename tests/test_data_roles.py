"""Data roles, named splits and the core's data options, through the suite and the CLI.

Every registered data set gets ``labels``, ``labels_per_class``, ``fraction``, ``imbalance``,
``subset_seed`` and ``size``/``fit``/``box`` from the core; a stage may name several data sets
by role; an evaluator may measure other roles (``on:``). The two test plugins of
harness_test_updates (three optimizers on source/target roles; labelled/unlabelled streams)
run through ``harness run`` and resume after a SIGKILL to the same results.
"""

from __future__ import annotations

import signal

import numpy as np
import pytest
import torch

from fresh_store import seed_store
from harness.cli import main
from harness.datasets import apply_data_options, build_dataset
from harness.errors import UserError
from harness.plugins import Plugins
from harness.resize import resize_images
from harness.suite import expand, load_suite
from test_faults import checkpoint, harness, results, stage_runs

PLUGINS = ["--plugin", "harness_test_updates", "--plugin", "harness_test_faults"]


@pytest.fixture(scope="module")
def plugins():
    return Plugins()


def test_labels_are_stratified_withheld_and_seeded(plugins, tmp_path):
    spec = {"name": "mnist5k", "labels": 50}
    a = build_dataset(plugins, spec, str(tmp_path), False)
    assert len(a.train) == 50 and np.bincount(a.train.y.numpy()).tolist() == [5] * 10
    assert a.extra["unlabelled"].y is None and len(a.extra["unlabelled"]) == 4000 - 50
    again = build_dataset(plugins, spec, str(tmp_path), False)
    other = build_dataset(plugins, {**spec, "subset_seed": 1}, str(tmp_path), False)
    assert again.fingerprint() == a.fingerprint() != other.fingerprint()
    assert not torch.equal(a.train.x, other.train.x)
    # labelled and unlabelled samples partition the training split
    full = build_dataset(plugins, {"name": "mnist5k"}, str(tmp_path), False)
    both = torch.cat([a.train.x, a.extra["unlabelled"].x]).flatten(1)
    assert both.shape == full.train.x.flatten(1).shape
    assert torch.allclose(both.sum(0), full.train.x.flatten(1).sum(0), atol=1e-3)
    per_class = build_dataset(plugins, {"name": "digits", "labels_per_class": 3}, "", False)
    assert np.bincount(per_class.train.y.numpy()).tolist() == [3] * 10


def test_fraction_and_imbalance_counts(plugins):
    frac = build_dataset(plugins, {"name": "mnist5k", "fraction": 0.2}, "", False)
    assert np.bincount(frac.train.y.numpy()).tolist() == [80] * 10
    assert len(frac.test) == 1000  # the test split is left as it is
    tail = build_dataset(plugins, {"name": "mnist5k", "imbalance": 10}, "", False)
    counts = np.bincount(tail.train.y.numpy())
    assert counts[0] == 400 and counts[-1] == 40  # 400 * 10 ** (-c / 9)
    assert counts.tolist() == [int(400 * 10 ** (-c / 9) + 1e-9) for c in range(10)]
    assert "lt10" in tail.name


def test_resize_stretch_and_pad_frame_differently():
    x = torch.ones(2, 1, 8, 4)
    stretched = resize_images(x, 16, "stretch")
    assert stretched.shape == (2, 1, 16, 16) and torch.allclose(stretched, torch.ones(1))
    padded = resize_images(torch.cat([x, torch.zeros(1, 1, 8, 4)]), 16, "pad", box=12)
    # aspect kept: 8x4 -> 12x6 centred in 16x16, the rest the data's background (0)
    assert padded[0, 0, 2:14, 5:11].min() > 0.99 and padded[0, 0, :2].abs().max() == 0
    assert padded[0, 0, :, :5].abs().max() == 0 and padded[0, 0, :, 11:].abs().max() == 0
    with pytest.raises(UserError, match="fit"):
        resize_images(x, 16, "crop")


def test_data_options_are_checked_with_their_key(plugins):
    from harness.data_options import check_data_options
    for bad, key in (({"fraction": 1.5}, "fraction"), ({"labels": -1}, "labels"),
                     ({"labels": 5, "labels_per_class": 1}, "labels"), ({"fit": "pad"}, "fit"),
                     ({"size": 28, "box": 40}, "box"), ({"imbalance": "big"}, "imbalance")):
        with pytest.raises(UserError) as err:
            check_data_options(bad)
        assert err.value.key == key, bad
    with pytest.raises(UserError, match="labelled"):
        apply_data_options(build_dataset(plugins, {"name": "digits"}, "", False), {"labels": 5000})


ROLES = """
suite: roles
defaults: {{optimizer: adam, lr: 1.0e-3, batch_size: 64, epochs: 2, threads: 1}}
seeds: {seeds}
stages:
  A: {{dataset: {dataset}, architecture: mnist_cnn, method: {method}}}
evaluate: [{{name: accuracy, on: [target, source]}}]
"""


def test_roles_shape_mismatch_is_a_suite_error(write_suite, capsys):
    suite = write_suite(ROLES.format(seeds=1, method="std",
                                     dataset="{source: digits, target: mnist5k}"))
    assert main(["run", str(suite), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "stages.A.dataset.source" in err and "size:" in err


@pytest.mark.slow
def test_evaluator_on_other_roles_and_subset_seed_per_replicate(write_suite, capsys):
    dataset = ("{source: {name: digits, size: 28, fit: pad, box: 20}, "
               "target: {name: mnist5k, fraction: 0.1, subset_seed: replicate}}")
    suite = write_suite(ROLES.format(seeds=2, method="std", dataset=dataset))
    runs = expand(load_suite(suite))
    seeds = [dict(r.dataset.roles)["target"].opts["subset_seed"] for r in runs]
    assert seeds == [0, 1]
    assert main(["run", str(suite), "--quiet"]) == 0
    capsys.readouterr()
    finished = [r for r in stage_runs_of("roles") if r.info.status == "FINISHED"]
    assert len(finished) == 2
    for r in finished:
        assert {"test_acc", "source_test_acc", "source_train_acc"} <= set(r.data.metrics)
    prints = {r.data.tags["harness.data_fingerprint"] for r in finished}
    assert len(prints) == 2  # each replicate drew its own subset


def stage_runs_of(name):
    from mlflow.tracking import MlflowClient

    from harness.tracking import resolve_home, tracking_uri
    c = MlflowClient(tracking_uri=tracking_uri(resolve_home(None)))
    exp = c.get_experiment_by_name(name)
    return [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("harness.identity")]


UPDATES = """
suite: faults
seeds: 1
defaults: {{optimizer: adam, lr: 1.0e-3, batch_size: 64, epochs: 4, threads: 1}}
stages:
  {stage}: {{dataset: {dataset}, architecture: small_cnn, method: {method}}}
evaluate: [{{name: accuracy, every: 2}}]
"""
STAGES = {
    "mcd": ("{source: digits, target: {name: digits, rotate: 30.0, labels: 100}}",
            "{name: mcd, warmup: 30, k: 1, label: mcd}"),
    "semi": ("{name: digits, labels_per_class: 5}", "{name: semi, ratio: 2.0, label: semi}"),
}


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["mcd", "semi"])
def test_multi_update_plugins_run_and_resume_through_the_cli(write_suite, tmp_path, stage):
    dataset, method = STAGES[stage]
    suite = write_suite(UPDATES.format(stage=stage, dataset=dataset, method=method))
    straight, resumed = seed_store(tmp_path / "straight"), seed_store(tmp_path / "resumed")
    assert main(["run", str(suite), "--home", str(straight), "--quiet", *PLUGINS]) == 0
    proc = harness("run", suite, "--home", resumed, "--quiet", "--checkpoint-every", "0",
                   *PLUGINS, fault=f"{stage}/{stage}/seed0:2:kill:-")
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert main(["run", str(suite), "--home", str(resumed), "--resume", *PLUGINS]) == 0
    assert results(resumed) == results(straight)
    name = f"{stage}/{stage}/seed0"
    a, b = checkpoint(straight, name), checkpoint(resumed, name)
    assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))
    run = next(r for r in stage_runs(resumed) if r.info.run_name == name
               and r.info.status == "FINISHED")
    assert run.data.params["measured.resumed_from_epoch"] == "2"

"""CETL (paper 003) through the engine: each stage of Algorithm 1 updates exactly its parameter
subset and the source network never changes, the variants differ where the paper says, the round
and stage are logged, convergence stops the updates, no target label reaches the method in
``adapt`` mode, resume in the middle of stage 2 equals an uninterrupted run, and the training
has its effect on a tiny problem."""

from __future__ import annotations

import pytest
import torch

from harness.api import Batch, UserError
from harness.engine import ModelSource, StageTask, run_stage
from harness.plugins import Plugins
from harness.suite import RUN_DEFAULTS
from harness.train.updates import Updates
from plugins.methods.cetl import CETL, stage_of

TINY = {"name": "ci_cnn_small", "widths": [2, 3, 3, 3, 2], "fc": [6, 5]}
DIGITS = {"name": "digits", "fraction": 0.2}        # 287 training images of 8x8
ADAPT = {"roles": {"source": {"name": "digits", "fraction": 0.2},
                   "target": {"name": "digits", "rotate": 30.0, "fraction": 0.2, "labels": 0}}}


@pytest.fixture(scope="module")
def plugins():
    return Plugins()


def task(path, method, *, dataset=None, epochs=3, architecture=None, refs=None, evaluate=(),
         stage="cetl", **run):
    settings = {**RUN_DEFAULTS, "epochs": epochs, "batch_size": 64, "lr": 1e-3, "threads": 1,
                "device": "cpu", **run}
    return StageTask(name="t", identity="id", stage=stage, seed=3, dataset=dataset or DIGITS,
                     architecture=architecture or TINY,
                     method=method if isinstance(method, dict) else {"name": method},
                     run=settings, evaluate=list(evaluate), config={},
                     artifact_dir=str(path / "art"), data_root=str(path / "data"),
                     refs=refs or {}, resume_dir=str(path / "resume"), checkpoint_every=0.0)


@pytest.fixture(scope="module")
def source(tmp_path_factory, plugins):
    """S: the tiny network trained one epoch on digits (std), as an upstream stage would."""
    path = tmp_path_factory.mktemp("source")
    torch.set_num_threads(1)
    result = run_stage(task(path, "std", epochs=1, stage="source"), plugins)
    assert result.ok, result.error
    return {"source": ModelSource(f"{result.artifact_dir}/checkpoint.pt")}


def cetl(path, source, plugins, epochs=3, dataset=None, on_epoch=None, resume=False, **options):
    t = task(path, {"name": "cetl", **options}, dataset=dataset, epochs=epochs, refs=source)
    t.resume = resume
    return run_stage(t, plugins, on_epoch=on_epoch)


def final_state(result):
    return torch.load(f"{result.artifact_dir}/checkpoint.pt", weights_only=True)["state_dict"]


def test_stage_of_maps_epochs_to_rounds_and_stages():
    assert [stage_of(e, (1, 2, 1)) for e in range(5)] == [(0, 1), (0, 2), (0, 2), (0, 3), (1, 1)]


@pytest.mark.parametrize("variant", ["gfi", "f"])
def test_each_stage_updates_exactly_its_parameters_and_s_never_changes(
        tmp_path, source, plugins, one_thread, monkeypatch, variant):
    """A snapshot of every parameter around each update: stage 1 moves T1 (and the adapter)
    only, stage 2 T1 and T2 (T2 alone in variant f), stage 3 T2 only; S is bitwise unchanged."""
    seen: dict[str, set[str]] = {}
    spied: dict[str, object] = {}
    original = Updates.__call__
    step = CETL.step

    def spy_step(self, batches):
        if "method" not in spied:
            spied["method"] = self
            spied["source"] = [p.detach().clone() for m in self.source.children
                               for p in m.parameters()]
        step(self, batches)

    def spy(self, name, terms):
        method = spied["method"]
        named = {id(p): n for n, p in method.named_parameters()}
        before = {n: p.detach().clone() for n, p in method.named_parameters()}
        original(self, name, terms)
        moved = {n for n, p in method.named_parameters() if not torch.equal(before[n], p.detach())}
        seen.setdefault(name, set()).update(n.split(".")[0] for n in moved)
        allowed = {named[id(p)] for p in self.params[name]}
        assert moved <= allowed, (name, moved - allowed)

    monkeypatch.setattr(CETL, "step", spy_step)
    monkeypatch.setattr(Updates, "__call__", spy)
    result = cetl(tmp_path, source, plugins, epochs=4, variant=variant)
    assert result.ok, result.error
    assert seen["stage1"] == {"decoder", "adapter"} if "adapter" in seen["stage1"] else {"decoder"}
    assert seen["stage2"] == ({"model"} if variant == "f" else {"decoder", "model"})
    assert seen["stage3"] == {"model"}
    after = [p.detach() for m in spied["method"].source.children for p in m.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(spied["source"], after))
    stages = [row["cetl_stage"] for row in result.history]
    # round two's stage 1 makes no update in variant f: T1 o S was trained in round one only
    assert stages == ([1, 2, 3, 0] if variant == "f" else [1, 2, 3, 1])
    assert [row["cetl_round"] for row in result.history] == [1, 1, 1, 2]


def test_the_dwa_terms_appear_where_algorithm_1_puts_them(tmp_path, source, plugins, one_thread):
    result = cetl(tmp_path, source, plugins, epochs=4, variant="gfi")
    assert result.ok, result.error
    rows = result.history
    assert "loss_stage1_dwa2" not in rows[0]                 # no DWA2 in the first round
    assert "loss_stage2_dwa1" in rows[1] and "loss_stage3_dwa3" in rows[2]
    assert "loss_stage1_dwa2" in rows[3]                      # DWA2 from round two on
    assert 0 < rows[1]["gfi1_kept"] < 1 and rows[0]["gfi1_kept"] == 0
    plain = cetl(tmp_path / "e", source, plugins, epochs=4, variant="e")
    assert not any(k.startswith("loss_") and "dwa" in k for row in plain.history for k in row)


def test_resume_in_the_middle_of_stage_2_equals_an_uninterrupted_run(
        tmp_path, source, plugins, one_thread):
    """stage_epochs [1, 2, 1]: the run stops after epoch 2, the first of stage 2's two."""
    kw = {"epochs": 4, "stage_epochs": [1, 2, 1], "variant": "gfi"}
    straight = cetl(tmp_path / "a", source, plugins, **kw)
    assert straight.ok, straight.error

    class Stop(BaseException):
        """Cuts the run after stage 2's first epoch, as a kill would."""

    def stop(epoch, metrics):
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        cetl(tmp_path / "b", source, plugins, on_epoch=stop, **kw)
    resumed = cetl(tmp_path / "b", source, plugins, resume=True, **kw)
    assert resumed.ok and resumed.params["resumed_from_epoch"] == 2
    assert [r["cetl_stage"] for r in resumed.history] == [1, 2, 2, 3]
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]
    a, b = final_state(straight), final_state(resumed)
    assert a.keys() == b.keys() and a["_extra_state"] == b["_extra_state"]
    assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))
    assert any(k.startswith("dwa3.gfi_") for k in a)   # GFI and anchors are checkpointed


def test_converged_losses_stop_the_updates(tmp_path, source, plugins, one_thread):
    result = cetl(tmp_path, source, plugins, epochs=9, tol=1e9, variant="e")
    assert result.ok, result.error
    rows = result.history
    assert [r["cetl_stage"] for r in rows] == [1, 2, 3, 1, 2, 3, 0, 0, 0]
    assert rows[-1]["cetl_converged"] == 1 and rows[5]["cetl_converged"] == 0
    assert not any(k.startswith("loss_stage") for k in rows[-1])
    extra = final_state(result)["_extra_state"]
    assert extra["converged"] and len(extra["history"]) == 2


def test_no_target_label_reaches_the_method_in_adapt_mode(tmp_path, source, plugins, one_thread,
                                                          monkeypatch):
    read = []
    original = Batch.y

    def spy(self):
        read.append(self.stream)
        return original.fget(self)

    monkeypatch.setattr(Batch, "y", property(spy))
    result = cetl(tmp_path, source, plugins, epochs=3, dataset=ADAPT, mode="adapt")
    assert result.ok, result.error
    assert set(read) == {"labelled"}                # the source stream only
    assert result.history[-1]["seen_target"] == 3 * 288 and "loss_stage3_ce" in result.history[2]
    labelled = {"roles": {**ADAPT["roles"], "target": {"name": "digits", "labels": 100}}}
    with pytest.raises(UserError, match="labels: 0"):
        cetl(tmp_path / "b", source, plugins, epochs=3, dataset=labelled, mode="adapt")


def test_e2e_is_one_update_of_the_coupled_loss(tmp_path, source, plugins, one_thread):
    result = cetl(tmp_path, source, plugins, epochs=2, schedule="e2e", weights=[1.0, 2.0, 0.5])
    assert result.ok, result.error
    row = result.history[-1]
    assert {"loss_coupled_recon_s", "loss_coupled_ce", "loss_coupled_recon_t"} <= set(row)
    assert not any(k.startswith("loss_stage") for k in row)


def test_training_has_its_effect_on_a_tiny_problem(tmp_path, source, plugins, one_thread):
    """Four rounds of [1, 1, 2] epochs on the 1438 digits: T1 o S learns to reconstruct (L_r^s
    falls by a third) and T2, which sees labels in stage 3 only (8 epochs), classifies well
    above chance (0.1; the pilot reached 0.42)."""
    t = task(tmp_path, {"name": "cetl", "stage_epochs": [1, 1, 2], "variant": "e"}, epochs=16,
             refs=source, dataset={"name": "digits"}, lr=3e-3,
             architecture={"name": "ci_cnn_small", "widths": [4, 8, 8, 8, 8], "fc": [32, 16]},
             evaluate=[{"name": "accuracy", "every": "end", "splits": ["test"]}])
    result = run_stage(t, plugins)
    assert result.ok, result.error
    rows = result.history
    recon_s = [r["loss_stage1_recon_s"] for r in rows if "loss_stage1_recon_s" in r]
    assert len(recon_s) == 4 and recon_s[-1] < 0.7 * recon_s[0]
    assert rows[-1]["test_acc"] > 0.3


@pytest.mark.parametrize("options,key", [({"variant": "x"}, "variant"),
                                         ({"mode": "teach"}, "mode"),
                                         ({"stage_epochs": [1, 0, 1]}, "stage_epochs"),
                                         ({"u": 2.0}, "u"),
                                         ({"source_layer": "nope"}, "source_layer"),
                                         ({"source": "teacher"}, "refs"),
                                         ({"fisher_batches": 1}, "fisher_batches"),
                                         ({"bins": 1}, "bins"),
                                         ({"bins": 17}, "bins"),
                                         ({"bins": 5, "fisher_batches": 4}, "bins")])
def test_bad_options_are_refused_naming_the_key(tmp_path, source, plugins, options, key):
    with pytest.raises(UserError) as err:
        run_stage(task(tmp_path, {"name": "cetl", **options}, refs=source), plugins)
    assert err.value.key == key


def test_labels_0_makes_the_whole_training_split_unlabelled(plugins):
    from harness.datasets import build_dataset

    bundle = build_dataset(plugins, {"name": "digits", "labels": 0}, ".", False)
    assert len(bundle.train) == 0 and bundle.train.y is not None
    assert len(bundle.split("unlabelled")) == 1438 and bundle.split("unlabelled").y is None
    assert "+labels0" in bundle.name

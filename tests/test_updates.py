"""Streams and named updates: the engine owns every optimizer step of every method.

Through the engine with the test plugins of harness_test_updates: a method with three
optimizers (MCD-like) and a semi-supervised one. Each update changes exactly its parameters,
a direct optimizer step is refused, losses are logged per update, gradient clipping is applied,
and resume is bit-exact across a change of phase inside an epoch.
"""

from __future__ import annotations

import pytest
import torch

from harness.api import Batch, MissingLabels, Split, Stream
from harness.engine import StageTask, run_stage
from harness.plugins import Plugins
from harness.suite import RUN_DEFAULTS
from harness.train.streams import StreamSet, _Stream, resolve_streams
from harness.train.updates import Updates

SOURCE_TARGET = {"roles": {"source": {"name": "digits"},
                           "target": {"name": "digits", "rotate": 30.0, "labels": 100}}}


@pytest.fixture(scope="module")
def plugins():
    return Plugins(["harness_test_updates"])


def task(tmp_path, method, dataset=None, epochs=3, evaluate=(), **run):
    settings = {**RUN_DEFAULTS, "epochs": epochs, "batch_size": 64, "lr": 1e-3, "threads": 1,
                "device": "cpu", **run}
    return StageTask(name="t", identity="id", stage="A", seed=7, dataset=dataset or SOURCE_TARGET,
                     architecture={"name": "small_cnn"},
                     method=method if isinstance(method, dict) else {"name": method},
                     run=settings, evaluate=list(evaluate), config={},
                     artifact_dir=str(tmp_path / "art"), data_root=str(tmp_path / "data"),
                     resume_dir=str(tmp_path / "resume"), checkpoint_every=0.0)


def final_state(result):
    return torch.load(f"{result.artifact_dir}/checkpoint.pt", weights_only=True)["state_dict"]


def test_each_update_changes_exactly_its_parameters(tmp_path, plugins, one_thread, monkeypatch):
    """A snapshot of every parameter around each update: the named optimizer's parameters
    move, all others (those of the other optimizers included) stay bitwise equal."""
    calls = []
    original = Updates.__call__

    def spy(self, name, terms):
        before = {id(p): p.detach().clone() for ps in self.params.values() for p in ps}
        original(self, name, terms)
        own = {id(p) for p in self.params[name]}
        for ps in self.params.values():
            for p in ps:
                changed = not torch.equal(before[id(p)], p.detach())
                calls.append((name, id(p) in own, changed))

    monkeypatch.setattr(Updates, "__call__", spy)
    result = run_stage(task(tmp_path, {"name": "mcd", "warmup": 1}, epochs=1), plugins)
    assert result.ok, result.error
    names = {c[0] for c in calls}
    assert names == {"all", "heads", "generator"}
    assert not any(changed for _, own, changed in calls if not own)  # nothing else moved
    assert sum(changed for _, own, changed in calls if own) > 0.9 * sum(own for _, own, _ in calls)


def test_multi_update_logs_each_update_and_lr(tmp_path, plugins, one_thread):
    result = run_stage(task(tmp_path, {"name": "mcd", "warmup": 5}, epochs=2), plugins)
    assert result.ok, result.error
    row = result.history[-1]
    for key in ("loss_all_ce", "loss_heads_ce", "loss_heads_disc", "loss_generator_disc",
                "lr", "lr_all", "lr_heads", "lr_generator", "seen_source", "seen_target"):
        assert key in row, key
    assert row["lr_heads"] == pytest.approx(2e-3) and row["lr_all"] == pytest.approx(1e-3)
    assert row["loss_heads_disc"] == pytest.approx(-row["loss_generator_disc"], rel=0.5)
    # the source (1438 samples, the larger) makes the epoch: 23 steps; the target's 1338
    # unlabelled samples cycle in passes of 21 batches (20 x 64 + 58): 46 batches = 2 passes + 4
    assert row["seen_source"] == 2 * 1438 and row["seen_target"] == 2 * 1338 + 4 * 64
    assert result.params["optimizers"] == "all,heads,generator"


class _Stop(BaseException):
    """Ends a stage run between two epochs, after the resume state was saved."""


def straight_and_resumed(tmp_path, plugins, method, stop_at, **kw):
    """An uninterrupted run, and one stopped after epoch ``stop_at`` then resumed."""
    straight = run_stage(task(tmp_path / "a", method, **kw), plugins)
    assert straight.ok, straight.error

    def stop(epoch, metrics):
        if epoch == stop_at:
            raise _Stop

    with pytest.raises(_Stop):
        run_stage(task(tmp_path / "b", method, **kw), plugins, on_epoch=stop)
    again = task(tmp_path / "b", method, **kw)
    again.resume = True
    resumed = run_stage(again, plugins)
    assert resumed.ok and resumed.params["resumed_from_epoch"] == stop_at
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]
    a, b = final_state(straight), final_state(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))
    return straight, a, b


def test_resume_is_bit_exact_across_a_change_of_phase(tmp_path, plugins, one_thread):
    """Phase changes after 30 steps, inside epoch 2; the run stops after epoch 1 and resumes."""
    _, a, b = straight_and_resumed(tmp_path, plugins, {"name": "mcd", "warmup": 30, "k": 1},
                                   stop_at=1, epochs=3)
    assert a["_extra_state"] == b["_extra_state"] == {"steps": 69, "phase": "adapt"}


def test_semi_supervised_resume_and_ema(tmp_path, plugins, one_thread):
    straight, a, _ = straight_and_resumed(tmp_path, plugins, {"name": "semi", "ratio": 2.0},
                                          stop_at=2, epochs=4,
                                          dataset={"name": "digits", "labels_per_class": 5})
    row = straight.history[-1]
    # the epoch is one pass of the largest stream (1388 unlabelled, batch 128: 11 steps); the 50
    # labelled samples cycle in exact batches of 64
    assert row["seen_unlabelled"] == 4 * 1388 and row["seen_labelled"] == 4 * 11 * 64
    ema = {k[len("ema."):]: v for k, v in a.items() if k.startswith("ema.")}
    model = {k[len("model."):]: v for k, v in a.items() if k.startswith("model.")}
    assert ema.keys() == model.keys() and not all(torch.equal(ema[k], model[k]) for k in ema)
    assert a["_extra_state"] == {"seen_unlabelled": 4 * 1388}


def test_no_label_of_an_unlabelled_sample_reaches_the_method(tmp_path, plugins, one_thread):
    result = run_stage(task(tmp_path, "peek", dataset={"name": "digits", "labels": 50}), plugins)
    assert result.status == "FAILED" and "MissingLabels" in result.error
    assert "unlabelled" in result.error


def test_a_direct_optimizer_step_is_refused(tmp_path, plugins, one_thread):
    result = run_stage(task(tmp_path, "rogue", dataset={"name": "digits"}, epochs=1), plugins)
    assert result.status == "FAILED" and "DirectStepRefused" in result.error


def test_grad_clip_logs_the_norm_and_changes_training(tmp_path, plugins, one_thread):
    plain = run_stage(task(tmp_path / "a", "std", dataset={"name": "digits"}, epochs=1), plugins)
    clipped = run_stage(task(tmp_path / "b", "std", dataset={"name": "digits"}, epochs=1,
                             grad_clip=0.01), plugins)
    assert "grad_norm" not in plain.history[0] and clipped.history[0]["grad_norm"] > 0.01
    assert clipped.history[0]["loss"] != plain.history[0]["loss"]


def test_nonfinite_term_names_the_update(tmp_path, plugins, one_thread):
    result = run_stage(task(tmp_path, {"name": "mcd", "warmup": 0}, epochs=1, lr=1e30), plugins)
    assert result.status == "FAILED" and "epoch 1" in result.error
    assert "loss_all_ce=" in result.error and "loss_generator_disc=" in result.error


def _stream(n, size, exact=False, seed=0):
    split = Split(torch.arange(n, dtype=torch.float32)[:, None], torch.zeros(n, dtype=torch.long))
    return _Stream("s", split, size, exact, seed, torch.device("cpu"))


def test_cycling_stream_reshuffles_each_pass_and_exact_batches_cross_passes():
    s = _stream(5, 2)
    batches = [s.next_index().tolist() for _ in range(6)]
    assert [len(b) for b in batches] == [2, 2, 1, 2, 2, 1]
    assert sorted(sum(batches[:3], [])) == list(range(5)) == sorted(sum(batches[3:], []))
    e = _stream(5, 4, exact=True)
    first, second = e.next_index().tolist(), e.next_index().tolist()
    assert len(first) == len(second) == 4 and e.passes == 2
    big = _stream(3, 8, exact=True)  # a stream smaller than its batch repeats its samples
    assert sorted(set(big.next_index().tolist())) == [0, 1, 2]


def test_a_batch_holds_exactly_the_indexed_samples():
    """The stream gathers with index_select (faster than ``x[idx]``): same values, any shape."""
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randn(10, 3, 4, 4, generator=g), torch.arange(10))
    stream = _Stream("s", split, 4, False, 0, torch.device("cpu"))
    for _ in range(4):
        batch = stream.batch()
        assert torch.equal(batch.x, split.x[batch.index]) and torch.equal(batch.y, batch.index)


def test_primary_stream_is_the_largest_and_streams_name_missing_roles():
    small = Split(torch.zeros(10, 1), torch.zeros(10, dtype=torch.long))
    large = Split(torch.zeros(30, 1), None)
    streams = StreamSet({"a": (small, 4, False), "b": (large, 4, False)}, None, 0, torch.device("cpu"))
    assert streams.primary.name == "b" and streams.steps == 8
    epoch = list(streams.epoch())
    assert len(epoch) == 8 and not epoch[0]["b"].labelled and epoch[0]["a"].labelled
    with pytest.raises(MissingLabels, match="stream 'b'"):
        epoch[0]["b"].y
    from harness.errors import UserError
    with pytest.raises(UserError, match="role 'source'"):
        resolve_streams({"x": Stream(role="source")}, {"target": None}, 8)
    assert Batch(torch.zeros(2, 1), torch.zeros(2), torch.arange(2)).labelled


def test_the_plain_path_trains_exactly_as_the_general_one(tmp_path, plugins, one_thread,
                                                          monkeypatch):
    """std takes the loop's plain path (no Batches, no step/update dispatch); forced through
    the general path instead, the same seed must give bitwise the same network and losses."""
    from harness.train.loop import EpochLoop

    digits = {"name": "digits"}
    plain = run_stage(task(tmp_path / "plain", "std", dataset=digits, epochs=2), plugins)
    monkeypatch.setattr(EpochLoop, "_plain", property(lambda self: False))
    general = run_stage(task(tmp_path / "general", "std", dataset=digits, epochs=2), plugins)
    assert plain.ok and general.ok
    a, b = final_state(plain), final_state(general)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in plain.history] == [r["loss"] for r in general.history]


def test_the_epoch_clock_counts_epoch_started(tmp_path, plugins, one_thread, monkeypatch):
    """What a method computes before an epoch's steps (CETL's Fisher) is training time."""
    import time

    std = plugins.get("methods", "std").obj
    monkeypatch.setattr(std, "epoch_started", lambda self, epoch: time.sleep(0.5) or {})
    small = {"name": "digits", "fraction": 0.1}  # three steps an epoch: far below the sleep
    result = run_stage(task(tmp_path, "std", dataset=small, epochs=2), plugins)
    assert result.ok
    assert all(row["epoch_seconds"] >= 0.5 for row in result.history)
    assert result.summary["train_seconds"] >= 1.0


@pytest.mark.parametrize("method", ["std", "mcd"])
def test_a_finished_stage_run_frees_its_network_without_the_cycle_collector(
        tmp_path, plugins, one_thread, monkeypatch, method):
    """The step guards held the optimizers in a reference cycle, so every stage run's network,
    gradients and optimizer state (GPU memory too) stayed alive until Python's cycle collector
    happened to run, while the next stage run of the process was already allocating its own."""
    import gc
    import weakref

    from harness import engine

    built = []
    original = engine.build_method

    def recording(*args, **kwargs):
        method_obj = original(*args, **kwargs)
        built.append(weakref.ref(method_obj))
        return method_obj

    monkeypatch.setattr(engine, "build_method", recording)
    gc.collect()
    gc.disable()
    try:
        dataset = {"name": "digits", "fraction": 0.1} if method == "std" else None
        result = run_stage(task(tmp_path, method, dataset=dataset, epochs=1), plugins)
        assert result.ok and built
        assert built[0]() is None
    finally:
        gc.enable()

"""The conformance kit (harness.testing): every built-in plugin passes it, and each check
catches the deliberately broken plugin made to break its contract."""

from __future__ import annotations

import pytest

import kit_broken_plugins as broken
from harness.plugins import Plugins
from harness.testing import (CheckFailed, architecture, check_architecture, check_dataset,
                             check_evaluator, check_method, dataset, evaluator, method,
                             parametrize_with_checks)

BUILTIN = Plugins()


def entry(kind, name):
    return BUILTIN.get(kind, name).obj


@parametrize_with_checks([
    method(entry("methods", "std")),
    method(entry("methods", "racecar"), layers=2, weight=0.01),
    method(entry("methods", "srip"), weight=0.1),
    method(entry("methods", "spline_inversion"), alpha=0.5, beta=0.5),
    method(entry("methods", "rnl"), reduction="mean"),
    method(entry("methods", "aux_heads"), split="4", common_classes=True, classes=2),
    # its rotation head draws from ctx.generator: a resumed run must draw what it would have
    method(entry("methods", "aux_heads"), split="4", rotation=True),
    method(entry("methods", "aux_heads"), split="4", regime="incremental", common_classes=True,
           classes=2, refs={"a": {"name": "kit_method_under_test", "split": "4",
                                  "regime": "incremental", "common_classes": True, "classes": 2}}),
])
def test_builtin_methods_pass_the_kit(plugin, check, one_thread):
    check(plugin)


@pytest.mark.parametrize("name", ["digits", "mnist5k", "ib12", "ib12_flipped", "mnist5k_blur"])
def test_builtin_datasets_pass_the_kit(name):
    assert set(check_dataset(entry("datasets", name)).values()) == {None}


@pytest.mark.parametrize("name, shapes", [("small_cnn", [(1, 8, 8)]), ("mnist_cnn", [(1, 28, 28)]),
                                          ("mi_mlp", [(12,)]), ("resnet_small", [(1, 8, 8), (3, 32, 32)])])
def test_builtin_architectures_pass_the_kit(name, shapes):
    assert set(check_architecture(entry("architectures", name), shapes=shapes).values()) == {None}


@pytest.mark.parametrize("name, method", [
    ("accuracy", None), ("reconstruction", None), ("mi_plane", None),
    ("head_swap", {"name": "aux_heads", "split": "4"}),
    ("feature_correlation", {"name": "aux_heads", "split": "4"})])
def test_builtin_evaluators_pass_the_kit(name, method):
    assert set(check_evaluator(entry("evaluators", name), method=method).values()) == {None}


@pytest.mark.parametrize("cls, check, options", [
    (broken.TakesAnything, "check_options_are_checked", {}),
    (broken.Untyped, "check_options_are_checked", {}),
    (broken.DetachedTerm, "check_loss_terms", {}),
    (broken.ChangingNames, "check_loss_terms", {}),
    (broken.DeadHead, "check_trains_its_parameters", {}),
    (broken.LeakyFreeze, "check_trains_its_parameters", {}),
    (broken.Clock, "check_determinism", {}),
    (broken.Forgetful, "check_resume_equivalence", {}),
    (broken.Unpicklable, "check_checkpoint_round_trip", {}),
    (broken.LabelReader, "check_unlabelled_streams_need_no_labels", {}),
    (broken.NotBfloat16, "check_bfloat16_autocast", {}),
    (broken.KeepsItsWeights, "check_stacked_equals_alone", {}),
    (broken.DrawsInLoss, "check_stacked_equals_alone", {}),
])
def test_each_method_check_catches_its_broken_plugin(cls, check, options, one_thread):
    with pytest.warns(UserWarning, match=check):
        outcome = check_method(cls, options, on_fail="warn")
    assert outcome[check] is not None


def test_reference_check_catches_a_method_that_moves_its_teacher(one_thread):
    with pytest.raises(CheckFailed, match="check_references_stay_frozen"):
        check_method(broken.TouchesReference, refs={"teacher": {"name": "std"}})


def test_component_checks_catch_their_broken_plugins():
    with pytest.raises(CheckFailed, match="check_dataset_is_deterministic"):
        check_dataset(broken.shuffled_data)
    with pytest.raises(CheckFailed, match="check_architecture_fits"):
        check_architecture(broken.wrong_width)
    with pytest.raises(CheckFailed, match="check_evaluator_returns_finite_floats"):
        check_evaluator(broken.NaNEvaluator)


def test_expected_failures_are_reported_not_raised(one_thread):
    outcome = check_method(broken.Clock, expected_failed_checks={
        "check_determinism": "clock", "check_resume_equivalence": "clock"})
    assert outcome["check_determinism"] == "expected: clock"
    assert outcome["check_loss_terms"] is None


@parametrize_with_checks([method(broken.Forgetful, expected_failed_checks={
    "check_resume_equivalence": "its counter is not checkpointed"})])
def test_parametrize_ids_and_xfail(plugin, check, request, one_thread):
    assert request.node.callspec.id.startswith("Forgetful-check_")
    check(plugin)


def test_unused_kinds_are_not_mixed_up():
    assert dataset(broken.shuffled_data).kind == "dataset"
    assert architecture(broken.wrong_width).kind == "architecture"
    assert evaluator(broken.NaNEvaluator).kind == "evaluator"


def test_a_loss_that_returns_a_tensor_gets_one_message_from_every_check(one_thread):
    """Not torch's error about sparse layouts, nor the autocast check's advice: what
    ``harness validate`` says, from every check that trains."""
    with pytest.warns(UserWarning):
        outcome = check_method(broken.BareTensor, on_fail="warn")
    failed = {name: why for name, why in outcome.items() if why}
    assert {"check_loss_terms", "check_determinism", "check_bfloat16_autocast"} <= set(failed)
    for why in failed.values():
        assert "BareTensor.loss() returned a tensor, not named loss terms" in why, why
        assert "loss() must return a dict of term names to scalar tensors" in why
        assert "amp_safe" not in why


def test_a_step_that_updates_with_a_tensor_is_named(one_thread):
    with pytest.warns(UserWarning):
        outcome = check_method(broken.BareTensorStep, on_fail="warn")
    assert "update 'main'" in outcome["check_loss_terms"]
    assert "BareTensorStep.step() gave update('main') returned a tensor" in outcome["check_determinism"]


def test_a_wrongly_typed_option_is_named_with_the_fix(one_thread):
    with pytest.raises(CheckFailed) as err:
        check_method(broken.Untyped)
    assert "option 'weight' given 'wrong' (str) is accepted: annotate it in __init__" in str(err.value)
    assert "it takes a number" in str(err.value)


def test_a_method_that_reads_refs_is_told_how_to_give_them(one_thread):
    """Without refs the kit says which names it looked up and what to write, in one case (not
    an error at collection that runs none of the module's tests); both natural forms work."""
    from harness_test_refs import Anchored

    mark = parametrize_with_checks([method(Anchored), method(entry("methods", "std"))])
    ids = [p.id for p in mark.args[1]]
    assert ids[0] == "Anchored-check_method_builds" and len(ids) > 2  # std's checks still run
    with pytest.raises(CheckFailed) as err:
        check_method(Anchored)
    assert "reads ctx.upstream['anchor']" in str(err.value)
    assert "method(Anchored, refs={'anchor': 'std'}" in str(err.value)
    for refs in ({"anchor": "std"}, {"anchor": {"name": "std"}}):
        assert set(check_method(Anchored, refs=refs).values()) == {None}  # role A: the kit's data
    with pytest.raises(TypeError, match=r"refs\['anchor'\] is the method of the upstream stage"):
        check_method(Anchored, refs={"anchor": 3})
    with pytest.raises(TypeError, match="refs maps the names"):
        check_method(Anchored, refs=["std"])


def test_plugins_check_gives_refs_a_default_upstream_and_exit_codes_say_what_was_checked(capsys):
    from harness.cli import main

    code = main(["plugins", "--check", "harness_test_refs", "--plugin", "harness_test_refs"])
    out = capsys.readouterr().out
    rows = {line.split()[2]: line for line in out.splitlines() if line.startswith("harness_test_refs")}
    assert "passed" in rows["anchored"] and "(refs: anchor=std)" in rows["anchored"]
    assert "cannot check" in rows["needs_option"]
    assert "check it with harness.testing.check_method(NeedsOption" in out
    assert code == 3  # nothing failed, but not everything could be checked
    assert main(["plugins", "--check", "harness_test_ref", "--plugin", "harness_test_refs"]) == 2
    assert "did you mean 'harness_test_refs'" in capsys.readouterr().err


def test_two_configurations_of_one_class_get_ids_from_their_options():
    from harness_test_refs import Anchored

    std = entry("methods", "srip")
    mark = parametrize_with_checks([method(std, weight=0.1), method(std, weight=0.5, variant="so"),
                                    method(Anchored, refs={"anchor": "std"})])
    ids = [p.id for p in mark.args[1]]
    assert "Srip(weight=0.1)-check_determinism" in ids
    assert "Srip(weight=0.5,variant=so)-check_determinism" in ids
    assert "Anchored(refs.anchor=std)-check_determinism" in ids
    assert len(set(ids)) == len(ids)

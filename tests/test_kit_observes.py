"""The kit's checks that watch the engine fail when they saw nothing: an engine path that
skipped the events (harness.train.observe) would otherwise let them pass on no evidence."""

from __future__ import annotations

import pytest

import harness.engine
import harness.train.updates
from harness.plugins import Plugins
from harness.testing import check_method

METHODS = Plugins()


@pytest.fixture
def silent_engine(monkeypatch):
    """An engine whose updates and reference loads tell no observer."""
    for module in (harness.train.updates, harness.engine):
        monkeypatch.setattr(module, "notify", lambda *args: None)


def test_a_check_that_saw_no_update_fails(silent_engine, one_thread):
    with pytest.warns(UserWarning):
        outcome = check_method(METHODS.get("methods", "std").obj, on_fail="warn")
    for check in ("check_loss_terms", "check_trains_its_parameters"):
        assert "the kit saw no update in an epoch of training" in outcome[check], check
    assert outcome["check_determinism"] is None  # what watches nothing is unaffected


def test_a_check_that_saw_no_reference_loaded_fails(monkeypatch, one_thread):
    monkeypatch.setattr(harness.engine, "notify", lambda *args: None)
    aux = METHODS.get("methods", "aux_heads").obj
    options = {"split": "4", "regime": "incremental", "common_classes": True, "classes": 2}
    with pytest.warns(UserWarning):
        outcome = check_method(aux, options, refs={"a": {"name": "kit_method_under_test", **options}},
                               on_fail="warn")
    assert "names 1 reference(s) but the kit saw 0 loaded" in outcome["check_references_stay_frozen"]

"""What a suite leaves out comes from the plugins (``harness_suite_defaults``), not the core."""

from __future__ import annotations

from harness.plugins import Plugins
from harness.suite import SuiteDefaults, expand, parse_suite

BARE = {"suite": "bare", "grid": {"method": ["std"], "dataset": ["ib12"], "architecture": ["mi_mlp"]}}
WRITTEN = {**BARE, "evaluate": ["accuracy"], "report": {"baseline": "std", "metric": "test_acc"}}


def test_a_suite_that_leaves_them_out_gets_the_built_in_plugins_defaults():
    defaults = SuiteDefaults.of(Plugins(autoload=False))
    setting = parse_suite(BARE, "bare.yaml", defaults=defaults).settings[0]
    assert [e.name for e in setting.evaluate] == ["accuracy"]
    assert (setting.report.baseline, setting.report.metric) == ("std", "final_test_acc")
    assert setting.report.metric_title == "test accuracy"
    assert (defaults.executors["one"], defaults.executors["several"]) == ("inline", "processes")


def test_writing_the_defaults_out_changes_no_stage_run():
    defaults = SuiteDefaults.of(Plugins(autoload=False))
    bare = expand(parse_suite(BARE, "s.yaml", defaults=defaults))
    written = expand(parse_suite(WRITTEN, "s.yaml", defaults=SuiteDefaults()))  # needs none
    assert [r.config() for r in bare] == [r.config() for r in written]


def test_a_plugin_answering_the_hook_wins_key_by_key(tmp_path):
    plugin = tmp_path / "my_defaults.py"
    plugin.write_text("from harness.api import hookimpl\n\n\n@hookimpl\n"
                      "def harness_suite_defaults():\n"
                      "    return {'metric': 'swapped_acc', 'metric_titles': {'swapped_acc': 'swapped'}}\n")
    defaults = SuiteDefaults.of(Plugins([str(plugin)], autoload=False))
    setting = parse_suite(BARE, "bare.yaml", defaults=defaults).settings[0]
    assert setting.report.metric == "final_swapped_acc" and setting.report.metric_title == "swapped"
    assert setting.report.baseline == "std" and [e.name for e in setting.evaluate] == ["accuracy"]

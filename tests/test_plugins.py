"""Plugin loading: entry points, duplicates, suggestions, autoload switch, lifecycle hooks."""

from __future__ import annotations

import sys
import textwrap

import pytest

from harness.errors import UserError, suggest
from harness.plugins import KINDS, Plugins, check_options


def test_builtins_load_through_entry_points():
    plugins = Plugins()
    names = {info.name: info for info in plugins.describe()}
    # the built-ins are found by entry-point name, exactly as a third-party plugin would be
    assert "methods_std" in names and names["methods_std"].version == "0.1.0"
    assert names["methods_std"].registers == {"methods": ["std"]}
    assert "harness_register_methods" in names["methods_std"].hooks
    for kind, expected in [("datasets", "ib12"), ("architectures", "mi_mlp"), ("methods", "std"),
                           ("evaluators", "accuracy"), ("executors", "inline")]:
        assert expected in plugins.registry(kind).names()
    assert set(plugins.registries) == set(KINDS)


def test_duplicate_name_names_both_plugins():
    with pytest.raises(UserError) as err:
        Plugins(["harness_test_duplicate"])
    text = str(err.value)
    assert "'std' is registered twice" in text
    assert "methods_std" in text and "harness_test_duplicate" in text


def test_unknown_name_suggests_nearest():
    plugins = Plugins()
    with pytest.raises(UserError) as err:
        plugins.get("methods", "sdt")
    assert "unknown method 'sdt'" in str(err.value)
    assert "did you mean 'std'" in str(err.value)
    assert suggest("zzzzzz", ["a", "b"]) == "known: a, b"


def test_broken_plugin_import_is_a_clear_error():
    with pytest.raises(UserError) as err:
        Plugins(["harness_test_broken"])
    assert "harness_test_broken" in str(err.value)
    assert "failed to import" in str(err.value)


def test_hookimpl_without_spec_is_refused():
    with pytest.raises(UserError) as err:
        Plugins(["harness_test_badhook"])
    assert "harness_register_method" in str(err.value)
    assert "hookspecs" in str(err.value)


def test_options_are_checked_against_the_signature():
    plugins = Plugins()
    entry = plugins.get("architectures", "mi_mlp")
    check_options(entry, {"widths": [3]}, skip=2)
    with pytest.raises(UserError) as err:
        check_options(entry, {"width": [3]}, skip=2)
    assert "has no option 'width'" in str(err.value) and "widths" in str(err.value)
    std = plugins.get("methods", "std")
    with pytest.raises(UserError, match="std takes no options"):
        check_options(std, {"weight": 1}, skip=2)


@pytest.fixture
def fake_distribution(tmp_path, monkeypatch):
    """A third-party distribution on sys.path whose entry point registers ``two_net``."""
    dist = tmp_path / "site" / "harness_extra-2.5.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: harness-extra\nVersion: 2.5\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""\
        [harness]
        extra = harness_test_plugins
        """))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return dist


def test_third_party_entry_point_loads_and_can_be_disabled(fake_distribution, monkeypatch):
    plugins = Plugins()
    assert "two_net" in plugins.registry("methods")
    assert plugins.get("methods", "two_net").plugin == "extra"
    assert plugins.get("methods", "two_net").version == "2.5"
    monkeypatch.setenv("HARNESS_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugins = Plugins()
    assert "two_net" not in plugins.registry("methods")
    assert "std" in plugins.registry("methods")  # built-ins still load


def test_extra_module_from_environment(monkeypatch):
    monkeypatch.setenv("HARNESS_PLUGINS", "harness_test_plugins")
    assert "explode" in Plugins().registry("methods")


def test_every_lifecycle_hook_reaches_a_plugin(write_suite):
    import harness_test_plugins as tp
    from harness.cli import main

    tp.EVENTS.clear()
    suite = write_suite("""
suite: hooks
grid: {method: [std], dataset: [ib12], architecture: [mi_mlp]}
defaults: {epochs: 3, batch_size: 512}
""")
    assert main(["run", str(suite), "--plugin", "harness_test_plugins", "--quiet"]) == 0
    assert tp.EVENTS == [("started", "train/std/seed0"), ("epoch", "train/std/seed0", 1),
                         ("epoch", "train/std/seed0", 2), ("epoch", "train/std/seed0", 3),
                         ("finished", "train/std/seed0", "FINISHED")]
    assert sys.modules["harness_test_plugins"] is tp


@pytest.mark.parametrize("options, refused", [
    ({"pool": "max", "steps": None, "widths": [2, 3], "scale": 2, "on": False, "tag": "y"}, None),
    ({"steps": 3, "scale": 0.5}, None),
    ({"pool": "median"}, "must be one of 'mean', 'max', got 'median' (text)"),
    ({"steps": 2.5}, "must be an integer or null, got 2.5 (float)"),
    ({"steps": True}, "must be an integer or null, got True (bool)"),
    ({"widths": [2, "3"]}, "must be a list of integers, got [2, '3'] (list)"),
    ({"scale": "1e-3"}, "must be a number, got '1e-3' (text)"),
    ({"on": "yes"}, "must be true or false"),
    ({"tag": 3}, "must be text, got 3 (int)"),
])
def test_option_values_are_checked_against_the_annotations(options, refused):
    plugins = Plugins(["harness_test_plugins"])
    entry = plugins.get("methods", "choosy")
    if refused is None:
        check_options(entry, options, skip=2)
        return
    with pytest.raises(UserError) as err:
        check_options(entry, options, skip=2)
    assert refused in str(err.value)
    assert err.value.key == next(iter(options))
    if options.get("scale") == "1e-3":
        assert "write 1.0e-3" in err.value.hint


def _distribution(root, name, module):
    """A third-party distribution on sys.path whose entry point ``name`` loads ``module``."""
    dist = root / f"harness_{name}-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: harness-{name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[harness]\n{name} = {module}\n")


@pytest.fixture
def clashing_distribution(tmp_path, monkeypatch):
    """An installed package that registers `std` again, beside one that fails to import."""
    _distribution(tmp_path / "site", "other_std", "harness_test_duplicate")
    _distribution(tmp_path / "site", "broken", "harness_test_broken")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))


def test_a_clash_is_listed_and_one_plugin_can_be_left_out(clashing_distribution, monkeypatch,
                                                          capsys):
    from harness.cli import main

    monkeypatch.setenv("HARNESS_DISABLE_PLUGINS", "broken")  # by entry-point name
    assert main(["list", "methods"]) == 0
    out, err = capsys.readouterr()
    assert [line.split()[1] for line in out.splitlines() if line.split()[0] == "std"] == [
        "methods_std", "other_std"]
    assert "method 'std' is registered by plugins 'methods_std' and 'other_std'" in err
    assert "HARNESS_DISABLE_PLUGINS=other_std" in err
    assert main(["plugins"]) == 0
    assert "methods: std [registered twice]" in capsys.readouterr().out
    assert main(["validate", "suites/none.yaml"]) == 2  # a run or a check refuses the clash
    assert "HARNESS_DISABLE_PLUGINS=other_std" in capsys.readouterr().err
    monkeypatch.setenv("HARNESS_DISABLE_PLUGINS", "harness-broken, other_std")  # or the package
    assert Plugins().get("methods", "std").plugin == "methods_std"
    monkeypatch.setenv("HARNESS_DISABLE_PLUGINS", "other-std")
    with pytest.raises(UserError) as err:
        Plugins()
    assert err.value.key == "HARNESS_DISABLE_PLUGINS" and "did you mean 'other_std'" in err.value.hint


def test_the_kit_loads_the_built_ins_only(clashing_distribution, monkeypatch):
    import harness.testing.tiny as tiny
    from harness.testing import check_dataset

    with pytest.raises(UserError, match="failed to import"):
        Plugins()
    monkeypatch.setattr(tiny, "_BASE", None)
    monkeypatch.setenv("HARNESS_PLUGINS", "harness_test_broken")
    plugins = tiny.kit_plugins()
    assert plugins.get("methods", "std").plugin == "methods_std"
    assert "two_net" not in plugins.registry("methods")
    assert set(check_dataset(plugins.get("datasets", "digits").obj).values()) == {None}


def test_new_refuses_a_name_that_is_registered_already(tmp_path, capsys):
    from harness.cli import main

    assert main(["new", "method", "std", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "a method named 'std' is registered already, by plugin 'methods_std'" in err
    assert not (tmp_path / "std").exists()

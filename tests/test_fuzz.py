"""Bad input never crashes: ``harness validate`` fed arbitrary bytes, arbitrary YAML, mutations
of every suite in suites/ and plugin options of wrong types and values ends with exit code 0 or
2, no traceback, and nothing written.

Data sets are built once per spec for the whole module (``validate`` builds them to check what
``run`` checks): the properties are about parsing and checking, not about loading ib12 again.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import functools
import io
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import plan
from harness.cli import main
from harness.plugins import load

ROOT = Path(__file__).resolve().parents[1]
SUITES = sorted((ROOT / "suites").glob("*.yaml"))
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
TREES_OF = {path: yaml.safe_load(path.read_text()) for path in SUITES}


def fuzz(examples: int):
    """Reproducible (derandomized, no example database written) and sized so that the whole
    module stays well under a minute on two cores: about 1,750 examples."""
    return settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])


def dump(tree) -> str:
    return yaml.dump(tree, Dumper=DUMPER, allow_unicode=True)


def _listing(folder) -> set[tuple[str, int]]:
    """(path, size) of every file and folder below ``folder``."""
    return {(str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*")}


@pytest.fixture
def validate(tmp_path, monkeypatch, isolated_home):
    """Write the input as a suite, run ``harness validate`` on it in this process, and check
    the exit code, the absence of a traceback and that nothing was written."""
    real = plan.build_stage_data

    @functools.lru_cache(maxsize=None)
    def cached(key: str):
        spec, root, download = json.loads(key)
        return real(load(), spec, root, download)

    monkeypatch.setattr(plan, "build_stage_data", lambda plugins, spec, root, download: cached(
        json.dumps([spec, root, download], sort_keys=True, default=str)))
    suite = tmp_path / "fuzz.yaml"
    before = _listing(tmp_path)  # the test's home and its empty store

    def check(content: bytes | str, *args: str) -> int:
        suite.write_bytes(content.encode("utf-8", "surrogatepass") if isinstance(content, str)
                          else content)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["validate", str(suite), *args])
        text = check.err = err.getvalue()
        assert code in (0, 2), text
        assert "Traceback" not in text
        if code == 2:
            assert text.count("\n") == 1 and text.startswith("harness: error: "), text
        assert _listing(tmp_path) - {("fuzz.yaml", suite.stat().st_size)} == before  # nothing written
        return code

    return check


# -- arbitrary input -------------------------------------------------------------------------
@fuzz(600)
@given(st.binary(max_size=600))
def test_arbitrary_bytes(validate, data):
    validate(data)


SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10 ** 18)
           | st.floats() | st.text(max_size=20))
TREES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)


@fuzz(500)
@given(TREES)
def test_arbitrary_yaml(validate, tree):
    validate(dump(tree))


@fuzz(400)
@given(st.dictionaries(st.sampled_from(["suite", "grid", "stages", "defaults", "seeds",
                                        "profiles", "settings", "evaluate", "claims",
                                        "reference", "report", "description"]),
                       TREES, min_size=1, max_size=6))
def test_arbitrary_values_under_suite_keys(validate, tree):
    validate(dump(tree))


@pytest.mark.parametrize("text", [
    "suite: x\n" + "a: " + "[" * 3000 + "]" * 3000 + "\n",  # deeper than Python's stack
    "suite: x\ngrid: " + "[" * 60 + "]" * 60 + "\n",          # deeper than any suite
    # an alias bomb: a billion leaves from a few lines
    "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi")) + "suite: x\n",
    "suite: !!python/object/apply:os.system [echo hi]\n",
    "suite: x\ngrid: &g {method: *g, dataset: [ib12]}\n",  # a document that contains itself
    "suite: x\nstages: &s {A: {from: *s}}\n",
    "suite: x\ngrid: !!binary aGVsbG8=\n",
    "\ufeffsuite: bom\n",
    b"suite: x\n\xff\xfe: 1\n",
    "suite: x\ndefaults: {batch_size: 100000000000000000000000000000}\n"
    "grid: {method: [std], dataset: [ib12], architecture: [mi_mlp]}\n",
    "suite: x\nseeds: 100000000000000000000000000000\n"
    "grid: {method: [std], dataset: [ib12], architecture: [mi_mlp]}\n",
    "suite: x\ndefaults: {lr: .inf, epochs: 1}\ngrid: {method: [std], dataset: [ib12], architecture: [mi_mlp]}\n",
])
def test_known_crashers(validate, text):
    assert validate(text) == 2


# -- mutations of the shipped suites -----------------------------------------------------------
def _paths(tree, prefix=()):
    """Every (path, value) in a YAML tree."""
    yield prefix, tree
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _paths(v, prefix + (i,))


WRONG = (st.none() | st.booleans() | st.sampled_from([0, -1, 10 ** 29, -(10 ** 29), 2 ** 63,
                                                       1.0e308, float("inf"), float("nan"),
                                                       "", "x", "1e-3", "../..", "\u202e"])
         | st.lists(st.integers(), max_size=3) | st.dictionaries(st.text(max_size=5),
                                                               st.integers(), max_size=2)
         | st.integers(1, 80).map(lambda n: functools.reduce(lambda a, _: [a], range(n), 1))
         # what YAML tags give: !!binary, !!set, !!timestamp, !!float .nan
         | st.sampled_from([b"\x00\xff", {1, 2}, datetime.date(2020, 1, 1), float("-inf")]))


@st.composite
def mutated(draw):
    path = draw(st.sampled_from(SUITES))
    tree = copy.deepcopy(TREES_OF[path])
    for _ in range(draw(st.integers(1, 3))):
        spots = [(p, v) for p, v in _paths(tree) if p]
        where, _ = draw(st.sampled_from(spots))
        parent = functools.reduce(lambda t, k: t[k], where[:-1], tree)
        key = where[-1]
        op = draw(st.sampled_from(["drop", "rename", "replace", "wrap", "alias"]))
        if op == "drop":
            del parent[key]
        elif op == "alias":  # the same object twice: the dump writes an anchor and an alias
            others = [v for p, v in spots if where[:len(p)] != p]  # no cycles: not an ancestor
            parent[key] = draw(st.sampled_from(others)) if others else None
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8) | st.sampled_from(["naem", "epoch", "from", "refs"]))] = parent.pop(key)
        elif op == "wrap":
            parent[key] = [copy.deepcopy(parent[key])]
        else:
            parent[key] = draw(WRONG)
    return path, tree, draw(st.sampled_from([None, "smoke", "nope"]))


@fuzz(100)
@given(mutated())
def test_mutations_of_every_suite(validate, case):
    _, tree, profile = case
    validate(dump(tree), *(["--profile", profile] if profile else []))


# -- a key given twice -------------------------------------------------------------------------
def _block_key_lines(text: str) -> list[tuple[int, str]]:
    """(0-based line, key) of every key of a block mapping that starts its own line."""
    out, lines = [], text.splitlines()
    stack = [yaml.compose(text)]
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                line = lines[k.start_mark.line]
                if not node.flow_style and line[:k.start_mark.column].strip() == "":
                    out.append((k.start_mark.line, k.value))
                stack.append(v)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return out


@fuzz(60)
@given(st.sampled_from(SUITES), st.data())
def test_a_key_given_twice_is_refused_naming_it(validate, path, data):
    """Any key of a shipped suite written twice in its mapping (PyYAML would keep the last
    silently) is bad input naming the key and both lines."""
    text = path.read_text()
    line, key = data.draw(st.sampled_from(_block_key_lines(text)))
    lines = text.splitlines(keepends=True)
    lines.insert(line + 1, lines[line] if lines[line].endswith("\n") else lines[line] + "\n")
    assert validate("".join(lines)) == 2
    assert f"key {key!r} is given twice in one mapping, on lines {line + 1} and {line + 2}" \
        in validate.err, validate.err


# -- plugin options ----------------------------------------------------------------------------
BASE = {"suite": "opts", "defaults": {"epochs": 1, "batch_size": 64, "threads": 1},
        "grid": {"method": ["std"], "dataset": ["digits"], "architecture": ["small_cnn"]}}


def _options(entry):
    import inspect

    target = entry.obj.__init__ if inspect.isclass(entry.obj) else entry.obj
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return ["x"]
    return [p.name for p in params if p.kind is p.KEYWORD_ONLY] or ["x"]


@st.composite
def plugin_options(draw):
    plugins = load()
    kind = draw(st.sampled_from(["methods", "architectures", "datasets", "evaluators"]))
    names = [n for n in plugins.registry(kind).names()
             if kind != "datasets" or n in ("digits", "ib12", "mnist5k")]
    name = draw(st.sampled_from(names))
    keys = _options(plugins.get(kind, name))
    options = draw(st.dictionaries(st.sampled_from(keys), WRONG | st.integers(-3, 300)
                                   | st.floats(-2, 2) | st.text(max_size=6), min_size=1, max_size=3))
    suite = copy.deepcopy(BASE)
    entry = {"name": name, **options}
    if kind == "evaluators":
        suite["evaluate"] = [entry]
    else:
        suite["grid"][kind[:-1]] = [entry]
    return suite


@fuzz(150)
@given(plugin_options())
def test_plugin_options_of_wrong_types_and_values(validate, suite):
    validate(dump(suite))

"""``harness new KIND NAME``: a ready plugin package that installs, passes the kit and runs.

What a newcomer needs to start from is not a snippet but a package whose every part already
works: the entry point that registers it, a documented skeleton that trains (a method that is
plain cross-entropy until edited), a suite that uses it, a conformance test calling
``harness.testing.parametrize_with_checks`` and a ``test`` extra with pytest. Editing from
green is easier than debugging from nothing.

The module is ``src/NAME.py``, not ``NAME.py`` beside ``pyproject.toml``: with an editable
install of the flat layout, ``python -m pytest NAME/tests`` (run from the folder above, as the
README says) found the folder ``NAME/`` first on ``sys.path`` and imported it as an empty
namespace package instead of the module. Under ``src/`` the install adds ``src`` to
``sys.path`` and the module wins, however the tests are run.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path

from .errors import UserError

__all__ = ["KINDS", "scaffold"]

KINDS = ("method", "dataset", "architecture", "evaluator")

PYPROJECT = '''[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "harness-{name}"
version = "0.1.0"
description = "{title}: a {kind} plugin for harness"
requires-python = ">=3.11"
dependencies = ["harness"]

[project.optional-dependencies]
test = ["pytest>=8"]

[project.entry-points.harness]
{name} = "{name}"

# the module lives in src/, so that this folder (named like it) never shadows the installed
# module: `python -m pytest {name}/tests` puts the current folder first on sys.path
[tool.setuptools]
package-dir = {{"" = "src"}}
py-modules = ["{name}"]
'''

MODULES = {
    "method": '''"""{title}: a training method for harness.

Until you edit ``loss``, this is plain cross-entropy. Return every term apart (the engine
sums them and logs each as ``loss_<term>``); state that changes during training belongs in
buffers or ``get_extra_state`` so that ``--resume`` stays exact.
"""

import torch.nn.functional as F

from harness.api import Method, hookimpl


class {cls}(Method):
    """Describe the method, the paper, and every reading of an ambiguous point here."""

    def __init__(self, model, ctx, *, weight: float = 1.0):
        super().__init__(model, ctx)
        self.weight = weight

    def loss(self, batch):
        return {{"task": self.weight * F.cross_entropy(self.model(batch.x), batch.y)}}


@hookimpl
def harness_register_methods(register):
    register("{name}", {cls}, "{title}")
''',
    "dataset": '''"""{title}: a data set for harness (generated here; load your files instead)."""

import torch

from harness.api import DataBundle, Split, hookimpl


def {name}(ctx, *, samples: int = 400):
    """Two Gaussian blobs in 2-D; replace with your data, read from ``ctx.root``."""
    g = torch.Generator().manual_seed(0)  # fixed: the data fingerprint must not move
    y = torch.arange(samples) % 2
    x = torch.randn(samples, 2, generator=g) + 3.0 * y[:, None].float()
    cut = samples * 4 // 5
    return DataBundle(train=Split(x[:cut], y[:cut]), test=Split(x[cut:], y[cut:]),
                      num_classes=2, name="{name}", description="{title}")


@hookimpl
def harness_register_datasets(register):
    register("{name}", {name}, "{title}")
''',
    "architecture": '''"""{title}: a network for harness."""

import math

from torch import nn

from harness.api import hookimpl


def {name}(input_shape, num_classes, *, width: int = 64):
    """Named children, so that methods can split or reverse the network by name."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU(),
                         nn.Linear(width, num_classes))


@hookimpl
def harness_register_architectures(register):
    register("{name}", {name}, "{title}")
''',
    "evaluator": '''"""{title}: an evaluator for harness."""

import torch

from harness.api import Evaluator, hookimpl


class {cls}(Evaluator):
    """Accuracy on the test split; replace with your measurement."""

    every = "end"

    @torch.no_grad()
    def evaluate(self, method, ctx):
        method.eval()
        x, y = ctx.data.test.x, ctx.data.test.y
        return {{"{name}": float((method(x).argmax(1) == y).float().mean())}}


@hookimpl
def harness_register_evaluators(register):
    register("{name}", {cls}, "{title}")
''',
}

SUITE = '''suite: {name}
description: {title}, against plain training, on {dataset_note}.
defaults: {{optimizer: adam, lr: 1.0e-3, batch_size: 64, epochs: 5, threads: 1}}
seeds: 2
grid:
  method: {methods}
  dataset: [{dataset}]
  architecture: [{architecture}]
evaluate: [{evaluate}]
report: {{baseline: {baseline}, metric: {metric}}}
profiles:
  smoke: {{epochs: 1, seeds: 1}}
'''

CHECK = {
    "method": "method({cls}, weight=1.0)", "dataset": "dataset({name})",
    "architecture": "architecture({name}, shapes=[(1, 8, 8)])", "evaluator": "evaluator({cls})",
}

TESTS = '''"""Conformance of {name} with the harness's contracts, and its suite through the CLI."""

from pathlib import Path

from harness.testing import {kind}, parametrize_with_checks

from {name} import {obj}

SUITE = Path(__file__).resolve().parents[1] / "suites" / "{name}.yaml"


@parametrize_with_checks([{check}])
def test_conformance(plugin, check):
    check(plugin)


def test_suite_runs(run_suite):
    assert run_suite(SUITE, "--profile", "smoke") == 0
'''


def _names(kind: str, name: str) -> dict[str, str]:
    if kind not in KINDS:
        raise UserError(f"unknown kind {kind!r}", key="kind", hint=f"one of {', '.join(KINDS)}")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or keyword.iskeyword(name):
        raise UserError(f"{name!r} is not a plugin name", key="name",
                        hint="lower case letters, digits and _, starting with a letter: my_reg")
    cls = "".join(part.capitalize() for part in name.split("_"))
    title = name.replace("_", " ").capitalize()
    return {"name": name, "cls": cls, "title": title, "kind": kind,
            "obj": cls if kind in ("method", "evaluator") else name}


def scaffold(kind: str, name: str, folder: Path, around: dict[str, str]) -> Path:
    """Write the package ``folder / name`` (refused if it exists); return its path. ``around``
    names the installed plugins its suite puts the new one among (the ``scaffold`` entry of
    ``harness_suite_defaults``): ``baseline``, ``dataset`` (with ``dataset_note``, its words in
    the suite's description), ``architecture``, ``vector_architecture`` (for a new data set,
    whose template gives flat vectors), ``evaluator`` and ``metric``."""
    names = _names(kind, name)
    root = Path(folder) / name
    if root.exists():
        raise UserError(f"{root} exists already", key="--dir", hint="choose another name or --dir")
    base, evaluator = around["baseline"], around["evaluator"]
    grid = {"methods": f"[{base}, {name}]" if kind == "method" else f"[{base}]",
            "dataset": name if kind == "dataset" else around["dataset"],
            "dataset_note": f"its own {name}" if kind == "dataset" else around["dataset_note"],
            "architecture": name if kind == "architecture" else around["architecture"],
            "evaluate": f"{evaluator}, {name}" if kind == "evaluator" else evaluator,
            "baseline": base, "metric": around["metric"]}
    if kind == "dataset":
        grid["architecture"] = around["vector_architecture"]
    (root / "suites").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "src").mkdir()
    (root / "pyproject.toml").write_text(PYPROJECT.format(**names))
    (root / "src" / f"{name}.py").write_text(MODULES[kind].format(**names))
    (root / "suites" / f"{name}.yaml").write_text(SUITE.format(**names, **grid))
    (root / "tests" / "test_conformance.py").write_text(
        TESTS.format(**names, check=CHECK[kind].format(**names)))
    return root

"""A suite file as it is, on a fraction of its training data, for the end-to-end tests.

The end-to-end tests run each suite's real `smoke` profile through the CLI. What they check is
the wiring (every row runs, records its metrics and artifacts, the report reads them back), not
accuracy, so a few hundred training samples are enough; the full offline data sets made those
runs the slowest part of the test run. The suite's own file is read and only its data options
change: a `fraction` is set on every data set it names (multiplied into one it already has).
"""

from __future__ import annotations

from pathlib import Path

import yaml

__all__ = ["shrink_suite"]


def _spec(value, fraction: float, floor: dict):
    """One `dataset:` value with the fraction applied: a name, a spec, a list or data roles."""
    if isinstance(value, list):
        return [_spec(v, fraction, floor) for v in value]
    if isinstance(value, str):
        return {"name": value, "fraction": _fraction(value, 1.0, fraction, floor)}
    if isinstance(value, dict) and "name" in value:
        own = float(value.get("fraction", 1.0))
        return {**value, "fraction": _fraction(value["name"], own, fraction, floor)}
    if isinstance(value, dict):  # data roles: {source: ..., target: ...}
        return {role: _spec(v, fraction, floor) for role, v in value.items()}
    return value


def _fraction(name: str, own: float, fraction: float, floor: dict) -> float:
    return max(own * fraction, min(own, floor.get(name, 0.0)))


def _walk(node, fraction: float, floor: dict, seen: set) -> None:
    """Replace every `dataset:` value below ``node``; YAML anchors share objects, so each
    object is visited once (a shared spec must not get the fraction twice)."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, dict):
        for key, value in list(node.items()):
            if key == "dataset":
                node[key] = _spec(value, fraction, floor)
            else:
                _walk(value, fraction, floor, seen)
    elif isinstance(node, list):
        for value in node:
            _walk(value, fraction, floor, seen)


def shrink_suite(path: Path, out_dir: Path, fraction: float, floor: dict | None = None) -> Path:
    """Write ``path`` with every data set cut to ``fraction`` of its training samples into
    ``out_dir`` (same file name, so the suite's name and report paths stay); ``floor`` gives a
    smallest fraction per data set name, for stages that need a number of labels."""
    raw = yaml.safe_load(Path(path).read_text())
    _walk(raw, fraction, floor or {}, set())
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / Path(path).name
    target.write_text(yaml.safe_dump(raw, sort_keys=False))
    return target

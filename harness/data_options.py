"""The data options every data set has and a stage's data roles, as plain values (no torch).

The suite parser checks these before anything is built, and ``harness validate`` must stay quick,
so this module imports neither torch nor numpy; ``harness.datasets`` applies the options.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from .errors import UserError

__all__ = ["DATA_OPTIONS", "PRIMARY_ROLE", "FITS", "primary_role", "role_specs",
           "split_data_options", "check_data_options"]

FITS = ("stretch", "pad")
DATA_OPTIONS = ("fraction", "imbalance", "labels", "labels_per_class", "subset_seed", "channels",
                "size", "fit", "box")
PRIMARY_ROLE = "target"
#: the role a single data set has when a suite names no roles
ONLY_ROLE = "target"


def primary_role(roles) -> str:
    """The role evaluators measure and the architecture is built for."""
    roles = list(roles)
    return PRIMARY_ROLE if PRIMARY_ROLE in roles or len(roles) != 1 else roles[0]


def role_specs(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Role -> plugin spec of a stage's dataset spec (one data set: the role ``target``)."""
    if "roles" in spec:
        return dict(spec["roles"])
    return {ONLY_ROLE: spec}


def split_data_options(opts: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the factory's own options, the core's data options)."""
    own = {k: v for k, v in opts.items() if k not in DATA_OPTIONS}
    return own, {k: v for k, v in opts.items() if k in DATA_OPTIONS}


def _number(opts, key, *, integer: bool, low: float, high: float | None, hint: str):
    v = opts[key]
    ok = not isinstance(v, bool) and isinstance(v, numbers.Integral if integer else numbers.Real)
    if ok and not integer:
        ok = math.isfinite(v)
    if not ok or v < low or (high is not None and v > high):
        what = "a whole number" if integer else "a number"
        bounds = f" from {low:g}" + (f" to {high:g}" if high is not None else "")
        raise UserError(f"{key} must be {what}{bounds}, got {v!r}", key=key, hint=hint)
    return int(v) if integer else float(v)


def check_data_options(opts: dict[str, Any]) -> dict[str, Any]:
    """The data options checked and normalised; a bad one is a UserError naming its key."""
    out: dict[str, Any] = {}
    if "fraction" in opts:
        out["fraction"] = _number(opts, "fraction", integer=False, low=0, high=1,
                                  hint="e.g. fraction: 0.2 keeps a fifth of the training split")
        if out["fraction"] == 0:
            raise UserError("fraction must be above 0", key="fraction", hint="e.g. fraction: 0.2")
    if "imbalance" in opts:
        out["imbalance"] = _number(opts, "imbalance", integer=False, low=1, high=1e6,
                                   hint="e.g. imbalance: 100 (first class 100x the last)")
    if "labels" in opts and "labels_per_class" in opts:
        raise UserError("give labels or labels_per_class, not both", key="labels",
                        hint="labels: 50 (stratified) or labels_per_class: 5")
    for key in ("labels", "labels_per_class"):
        if key in opts:
            # labels: 0 makes the whole training split unlabelled (domain adaptation's target)
            out[key] = _number(opts, key, integer=True, low=0 if key == "labels" else 1,
                               high=None,
                               hint=f"e.g. {key}: 50; the rest of the training split is unlabelled")
    if "subset_seed" in opts:
        if opts["subset_seed"] == "replicate":
            raise UserError("subset_seed: replicate is resolved per replicate by the suite",
                            key="subset_seed", hint="give a number when building data by hand")
        out["subset_seed"] = _number(opts, "subset_seed", integer=True, low=0, high=2**63 - 1,
                                     hint="a whole number, or `replicate`")
    if "channels" in opts:
        out["channels"] = _number(opts, "channels", integer=True, low=1, high=3,
                                  hint="channels: 1 turns colour images grey, channels: 3 "
                                       "repeats a grey channel")
        if out["channels"] == 2:
            raise UserError("channels must be 1 (grey) or 3 (colour), got 2", key="channels",
                            hint="channels: 1 turns colour images grey")
    if "size" in opts:
        out["size"] = _number(opts, "size", integer=True, low=1, high=4096, hint="e.g. size: 28")
        out["fit"] = opts.get("fit", "stretch")
        if out["fit"] not in FITS:
            raise UserError(f"unknown fit {out['fit']!r}", key="fit",
                            hint="fit: stretch (fill the canvas) or fit: pad (keep the aspect)")
        if "box" in opts:
            out["box"] = _number(opts, "box", integer=True, low=1, high=out["size"],
                                 hint="the side the image is scaled to inside the canvas, e.g. 20")
    elif "fit" in opts or "box" in opts:
        key = "fit" if "fit" in opts else "box"
        raise UserError(f"{key} needs a size", key=key, hint="e.g. {size: 28, fit: pad, box: 20}")
    return out



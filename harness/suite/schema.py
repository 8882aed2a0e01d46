"""What a suite may say and how each value is checked: the keys, the run settings with their
defaults, the limits beyond which a value is refused, and ``Checker``, which raises the
``UserError`` that names the file, the key path and a hint.

Nothing here imports torch: ``harness validate`` and the fuzz tests check suites by the
thousand.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any

from ..data_options import DATA_OPTIONS, check_data_options
from ..errors import UserError, suggest
from .model import DataRef, PluginRef

AXES = ("method", "dataset", "architecture")
MAX_NAME = 80
MAX_SUITE_BYTES = 1 << 20
#: beyond what the machine can hold or finish: refused before anything runs
MAX_EPOCHS = 10_000_000
MAX_BATCH = 2 ** 31 - 1
MAX_SEEDS = 10_000
MAX_DEPTH = 40
MAX_NODES = 100_000
SAFE_NAME = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9._-]{{0,{MAX_NAME - 1}}}")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "multistep", "cosine")

#: run settings: what ``defaults:``, a stage and a profile may set, with their defaults
RUN_DEFAULTS: dict[str, Any] = {
    "optimizer": "adam",
    "lr": 1e-3,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "schedule": {"name": "constant"},
    "batch_size": 64,
    "epochs": 10,
    "device": "auto",
    "threads": "auto",
    "eval_batch_size": 1024,
    "download": False,
    "amp": "auto",
    "grad_clip": 0,
    "stack": "auto",
}
#: the largest group ``stack: N`` may ask for
MAX_STACK = 4096
STAGE_KEYS = ("dataset", "architecture", "method", "from", "refs", "evaluate", *RUN_DEFAULTS)
SETTING_KEYS = ("description", "defaults", "grid", "seeds", "stages", "evaluate", "claims",
                "reference", "report", "expect_failure")
SUITE_KEYS = ("suite", *SETTING_KEYS, "settings", "profiles")
PROFILE_KEYS = ("description", "seeds", "stages", "settings", "evaluate", "defaults", "data",
                *RUN_DEFAULTS)
#: what a profile may say about one stage: its run settings and its data options
PROFILE_STAGE_KEYS = ("data", *RUN_DEFAULTS)


class Checker:
    """Raises UserErrors that carry the suite's file name and a dotted key path."""

    def __init__(self, file: str):
        self.file = file

    def fail(self, key: str, message: str, hint: str | None = None):
        raise UserError(message, file=self.file, key=key or None, hint=hint)

    def mapping(self, value, key) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(key, f"expected a mapping, got {type(value).__name__}",
                      "write `key: value` lines indented under it")
        return value

    def plain(self, text, key: str) -> None:
        """Names shown on the terminal and in reports: no control or bidirectional-override
        characters, which could rewrite what a person reads."""
        if not str(text).isprintable():
            self.fail(key, f"{ascii(str(text))} holds control or invisible formatting characters",
                      "use plain letters, digits and punctuation")

    def known_keys(self, value: dict, key: str, allowed) -> None:
        for k in value:
            if k not in allowed:
                where = f"{key}.{k}" if key else str(k)
                self.fail(where, f"unknown key {k!r}", suggest(str(k), allowed))

    def plugin_ref(self, value, key: str, axis: str) -> PluginRef:
        if isinstance(value, str):
            return PluginRef(value, value, (), key)
        if isinstance(value, dict):
            if "name" not in value or not isinstance(value["name"], str):
                self.fail(key, f"a {axis} entry needs a `name:`",
                          "write `- {name: NAME}` or just `- NAME`")
            options = {k: v for k, v in value.items() if k not in ("name", "label")}
            label = value.get("label")
            if label is None:
                label = value["name"] + "".join(f"-{k}{_short(v)}" for k, v in options.items())
            if not isinstance(label, str) or not label:
                self.fail(f"{key}.label", "a label must be a non-empty string", "e.g. `label: RR6`")
            self.plain(label, f"{key}.label")
            return PluginRef(value["name"], label, tuple(sorted(options.items())), key,
                             labelled="label" in value)
        self.fail(key, f"a {axis} is a name or a mapping with `name:`, got "
                       f"{type(value).__name__}", "e.g. `NAME` or `{name: NAME, OPTION: VALUE}`")

    def data_ref(self, value, key: str) -> DataRef:
        """A data set (a name or `{name: ...}`), or a mapping of roles to data sets."""
        if not (isinstance(value, dict) and "name" not in value):
            return DataRef.single(self.plugin_ref(value, key, "dataset"))
        roles = {k: v for k, v in value.items() if k != "label"}
        if not roles:
            self.fail(key, "a dataset is a name, `{name: ...}`, or roles of data sets",
                      "e.g. `NAME` or `{source: NAME, target: NAME}`")
        refs = []
        for role, v in roles.items():
            if not isinstance(role, str) or not role.isidentifier():
                self.fail(f"{key}.{role}", f"a data role is a plain name, got {role!r}",
                          "e.g. `source`, `target`, `A`")
            refs.append((role, self.plugin_ref(v, f"{key}.{role}", "dataset")))
        label = value.get("label", "+".join(ref.label for _, ref in refs))
        if not isinstance(label, str) or not label:
            self.fail(f"{key}.label", "a label must be a non-empty string", "e.g. `label: d2m`")
        return DataRef(tuple(refs), label, key, True)

    def ref_list(self, value, key: str, axis: str) -> list[PluginRef]:
        if isinstance(value, (str, dict)):
            value = [value]
        if not isinstance(value, list):
            self.fail(key, f"expected a list of {axis}s", f"e.g. `[a, b]`, or one {axis} name")
        make = ((lambda v, k: self.data_ref(v, k)) if axis == "dataset"
                else (lambda v, k: self.plugin_ref(v, k, axis)))
        refs = [make(v, f"{key}[{i}]") for i, v in enumerate(value)]
        labels = [r.label for r in refs]
        for i, label in enumerate(labels):
            if labels.index(label) != i:
                self.fail(f"{key}[{i}]", f"label {label!r} is used twice",
                          "give each entry its own `label:`")
        return refs

    def run_settings(self, value: dict, key: str) -> dict:
        out = {}
        for k, v in value.items():
            where = f"{key}.{k}" if key else k
            if k not in RUN_DEFAULTS:
                self.fail(where, f"unknown key {k!r}", suggest(k, RUN_DEFAULTS))
            out[k] = self.run_value(k, v, where)
        return out

    def run_value(self, k: str, v, where: str):
        if k == "epochs":
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_EPOCHS:
                self.fail(where, f"epochs must be a positive integer (at most {MAX_EPOCHS}), got {_short_repr(v)}",
                          "e.g. `epochs: 10`")
        elif k in ("batch_size", "eval_batch_size"):
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_BATCH:
                self.fail(where, f"{k} must be a positive integer (at most {MAX_BATCH}), got {_short_repr(v)}",
                          f"e.g. `{k}: 64`")
        elif k in ("lr", "momentum", "weight_decay"):
            if (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                    or v < 0 or (k == "lr" and v == 0)):
                self.fail(where, f"{k} must be a {'positive' if k == 'lr' else 'non-negative'} "
                                 f"number, got {v!r}",
                          "YAML reads 1e-3 as a string: write 1.0e-3" if isinstance(v, str) else None)
            v = float(v)
        elif k == "optimizer":
            if v not in OPTIMIZERS:
                self.fail(where, f"unknown optimizer {v!r}", suggest(str(v), OPTIMIZERS))
        elif k == "schedule":
            v = self.schedule(v, where)
        elif k == "threads":
            if v != "auto" and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 4096):
                self.fail(where, f"threads must be `auto` or a positive integer, got {v!r}",
                          "`auto` picks one thread for small networks, all given cores for large ones")
        elif k == "device":
            if not isinstance(v, str) or not (v in ("auto", "cpu", "cuda") or v.startswith("cuda:")):
                self.fail(where, f"device must be auto, cpu, cuda or cuda:N, got {v!r}",
                          "`auto` takes CUDA when there is one")
        elif k == "amp":
            if v not in ("auto", True, False):
                self.fail(where, f"amp must be auto, true or false, got {v!r}",
                          "`auto` uses bfloat16 autocast on CUDA for networks large enough to gain")
        elif k == "grad_clip":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or v == float("inf"):
                self.fail(where, f"grad_clip is the largest gradient norm, a non-negative number; "
                                 f"got {v!r}", "e.g. `grad_clip: 5.0`; 0 turns clipping off")
            v = float(v)
        elif k == "stack":
            v = self.stack(v, where)
        elif k == "download":
            if not isinstance(v, bool):
                self.fail(where, f"download must be true or false, got {v!r}", "or use `harness run --download`")
        return v

    def stack(self, v, where: str):
        """``auto``, ``off`` (YAML also reads an unquoted ``off`` as false) or the largest
        number of stage runs trained as one stacked network."""
        if v is False or v == "off":
            return "off"
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_STACK):
            return v
        self.fail(where, f"stack must be auto, off or the largest group size (a whole number "
                         f"from 1 to {MAX_STACK}), got {_short_repr(v)}",
                  "`auto` stacks replicates where that is faster on this device, `off` trains "
                  "every stage run alone, e.g. `stack: 8` stacks at most 8")

    def data_options(self, value, key: str) -> dict:
        """A profile's ``data:``: the core's data options (which every data set has), each
        checked as a data set's own would be; ``subset_seed: replicate`` as in a data set."""
        value = self.mapping(value, key)
        for k in value:
            if k not in DATA_OPTIONS:
                close = difflib.get_close_matches(str(k), DATA_OPTIONS, n=1, cutoff=0.75)
                self.fail(f"{key}.{k}", f"{k!r} is not a data option a profile can set",
                          f"did you mean {close[0]!r}?" if close else
                          f"a profile sets the options every data set has ({', '.join(DATA_OPTIONS)}); "
                          "a data set's own options go in its entry")
        alone = {k: (0 if k == "subset_seed" and v == "replicate" else v) for k, v in value.items()}
        if "size" not in alone and ("fit" in alone or "box" in alone):
            alone["size"] = 4096  # the data set's own size: its merged options are checked too
        try:
            check_data_options(alone)
        except UserError as err:
            raise err.under(key, file=self.file) from None
        return dict(value)

    def schedule(self, v, where: str) -> dict:
        if isinstance(v, str):
            v = {"name": v}
        if not isinstance(v, dict) or "name" not in v:
            self.fail(where, "a schedule is a name or a mapping with `name:`",
                      "e.g. `cosine` or `{name: multistep, milestones: [80, 120], gamma: 0.1}`")
        name = v["name"]
        if name not in SCHEDULES:
            self.fail(f"{where}.name", f"unknown schedule {name!r}", suggest(str(name), SCHEDULES))
        allowed = {"constant": (), "step": ("step_size", "gamma"),
                   "multistep": ("milestones", "gamma"), "cosine": ("min_lr",)}[name]
        self.known_keys({k: x for k, x in v.items() if k != "name"}, where, allowed)
        if name == "step" and not (isinstance(v.get("step_size"), int)
                                   and 0 < v["step_size"] <= MAX_EPOCHS):
            self.fail(f"{where}.step_size", "a step schedule needs a positive integer step_size",
                      "e.g. `{name: step, step_size: 30, gamma: 0.1}`")
        if name == "multistep":
            ms = v.get("milestones")
            if not (isinstance(ms, list) and ms and all(isinstance(m, int) and 0 < m <= MAX_EPOCHS
                                                        for m in ms)):
                self.fail(f"{where}.milestones", "a multistep schedule needs a list of positive "
                                                 "epoch numbers", "e.g. `milestones: [80, 120]`")
        for k in ("gamma", "min_lr"):
            x = v.get(k, 0.0)
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 <= x < math.inf:
                self.fail(f"{where}.{k}", f"{k} must be a non-negative number, got {_short_repr(x)}",
                          f"e.g. `{k}: 0.1`")
        return dict(v)

    def seeds(self, value, key: str) -> list[int]:
        if isinstance(value, bool):
            self.fail(key, "seeds is a count or a list of integers", "e.g. `seeds: 5` or `seeds: [0, 1, 2]`")
        if isinstance(value, int):
            if not 1 <= value <= MAX_SEEDS:
                self.fail(key, f"seeds must be at least 1 (and at most {MAX_SEEDS}), got {_short_repr(value)}",
                          "e.g. `seeds: 5`")
            return list(range(value))
        if isinstance(value, list) and 0 < len(value) <= MAX_SEEDS and all(
                isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2 ** 63 for s in value):
            if len(set(value)) != len(value):
                self.fail(key, "seeds are listed twice", "each replicate number once, e.g. `seeds: [0, 1, 2]`")
            return list(value)
        self.fail(key, f"seeds is a count or a non-empty list of integers, got {value!r}",
                  "e.g. `seeds: 5` or `seeds: [0, 1, 2]`")


def _short_repr(v, limit: int = 40) -> str:
    """``repr`` cut to ``limit`` characters: a 10**29 or a long string stays one short line."""
    text = repr(v)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "_".join(_short(x) for x in v)
    return str(v)


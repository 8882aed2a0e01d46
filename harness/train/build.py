"""Building a stage's objects: its data by role, the network, and the method with its context.

This is the one place a method is constructed, for training, for a frozen upstream reference
rebuilt from its checkpoint, and for the preflight that builds every method once before a grid
starts: three callers that must agree on what a method sees.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch

from ..api import DataBundle, Method, MethodContext, Split
from ..data_options import primary_role
from ..datasets import build_roles, check_roles
from ..errors import UserError

__all__ = ["StageData", "build_stage_data", "build_model", "build_method", "split_options"]


def split_options(spec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    opts = {k: v for k, v in spec.items() if k not in ("name", "label")}
    return spec["name"], opts


@dataclass
class StageData:
    """A stage's data sets by role; ``primary`` is the role the network is built for."""

    roles: dict[str, DataBundle]

    @classmethod
    def of(cls, data) -> "StageData":
        return data if isinstance(data, StageData) else cls({"target": data})

    @property
    def primary(self) -> str:
        return primary_role(self.roles)

    @property
    def main(self) -> DataBundle:
        return self.roles[self.primary]

    def to(self, device) -> "StageData":
        return StageData({role: b.to(device) for role, b in self.roles.items()})

    def fingerprint(self) -> str:
        """One data set: its own fingerprint (so identities of single-data stages do not move);
        several: a hash of the roles' names and fingerprints."""
        if list(self.roles) == ["target"]:
            return self.main.fingerprint()
        h = hashlib.sha256()
        for role in sorted(self.roles):
            h.update(f"{role}={self.roles[role].fingerprint()};".encode())
        return h.hexdigest()[:16]

    @property
    def train_samples(self) -> int:
        return len(self.main.train)


def build_stage_data(plugins, spec: dict[str, Any], root: str, download: bool,
                     compared: list[str] = ()) -> StageData:
    data = StageData(build_roles(plugins, spec, root, download))
    check_roles(data.roles, list(compared))
    return data


def build_model(plugins, spec: dict[str, Any], input_shape, num_classes) -> torch.nn.Module:
    name, opts = split_options(spec)
    return plugins.get("architectures", name).obj(tuple(input_shape), num_classes, **opts)


def build_method(plugins, method_spec: dict[str, Any], arch_spec: dict[str, Any], *,
                 data: StageData | None, input_shape, num_classes: int, stage: str, seed: int,
                 epochs: int, device: torch.device, upstream: dict[str, Method] | None = None,
                 run: dict[str, Any] | None = None, model: torch.nn.Module | None = None) -> Method:
    """The method of a stage around its network (``model``, or a fresh one), on ``device``.

    ``data`` is None for a reference rebuilt from a checkpoint: it trains no more, so it sees
    an empty training split rather than data it was not trained on.
    """
    shape = tuple(input_shape)

    def fresh_model():
        return build_model(plugins, arch_spec, shape, num_classes).to(device)

    if model is None:
        model = fresh_model()
    if data is not None:
        roles, train = data.roles, data.main.train
    else:
        roles = {}
        train = Split(torch.zeros((0, *shape), device=device),
                      torch.zeros(0, dtype=torch.long, device=device))
    # a mapping of another type than dict is kept as it is: the kit's notes the names a method
    # looks up (harness.testing.needs)
    refs = {} if upstream is None else dict(upstream) if type(upstream) is dict else upstream
    ctx = MethodContext(stage=stage, seed=seed, epochs=epochs, num_classes=num_classes,
                        input_shape=shape, train=train, device=device,
                        upstream=refs, build_model=fresh_model, data=roles,
                        run=dict(run or {}))
    name, opts = split_options(method_spec)
    method = plugins.get("methods", name).obj(model, ctx, **opts).to(device)
    cls = type(method)
    if cls.loss is Method.loss and cls.step is Method.step:
        raise UserError(f"method {name!r} overrides neither loss() nor step(), so it cannot train",
                        key="method", hint="return loss terms from loss(batch)")
    return method

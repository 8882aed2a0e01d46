"""The public API for plugins: everything a dataset, architecture, method or evaluator needs.

A plugin imports from here only; the core's other modules may change without notice.
"""

from __future__ import annotations

import hashlib
from abc import ABCMeta, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy
import torch
from torch import nn

from .errors import UserError, check_choice, check_non_negative

hookimpl = pluggy.HookimplMarker("harness")

__all__ = [
    "hookimpl", "UserError", "check_choice", "check_non_negative", "Split", "DataBundle", "DatasetContext", "Batch", "MethodContext",
    "Method", "Evaluator", "EvalContext", "StageInfo", "StageResult", "load_matching",
]


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
@dataclass
class Split:
    """One split held in memory: inputs ``x`` (float, N x ...) and integer labels ``y`` (N)."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self):
        if len(self.x) != len(self.y):
            raise ValueError(f"split has {len(self.x)} inputs but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device) -> "Split":
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class DataBundle:
    """What a dataset plugin returns: train and test splits plus what an architecture needs.

    Data sets in this harness are small enough to hold in memory as tensors, which keeps the
    training loop free of data-loader overhead (on the 294-weight MI network that overhead would
    dominate the step).
    """

    train: Split
    test: Split
    num_classes: int
    name: str = ""
    description: str = ""

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def fingerprint(self) -> str:
        """A hash of the tensors: part of a stage run's identity, so changed data re-runs."""
        h = hashlib.sha256()
        for split in (self.train, self.test):
            for t in (split.x, split.y):
                t = t.detach().cpu().contiguous()
                h.update(str((tuple(t.shape), str(t.dtype))).encode())
                h.update(t.numpy().tobytes())
        h.update(str(self.num_classes).encode())
        return h.hexdigest()[:16]


@dataclass
class DatasetContext:
    """Where file-backed datasets live and whether they may be downloaded."""

    root: Path
    download: bool = False


# --------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------
@dataclass
class Batch:
    """One training step's data. ``others`` holds the extra independently shuffled streams a
    method asks for with ``Method.streams`` (e.g. a second network with its own data order)."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    others: list["Batch"] = field(default_factory=list)


@dataclass
class MethodContext:
    """What a method may know about its stage run, handed over at construction.

    ``upstream`` maps the names a suite gives under a stage's ``refs:`` to the upstream stage's
    trained method, frozen (eval mode, no gradients, not part of this run's checkpoint).
    ``build_model()`` makes a fresh network of the stage's architecture (a second network).
    """

    stage: str
    seed: int
    epochs: int
    num_classes: int
    input_shape: tuple[int, ...]
    train: Split
    device: torch.device
    upstream: dict[str, "Method"] = field(default_factory=dict)
    build_model: Any = None


class Method(nn.Module, metaclass=ABCMeta):
    """A training method: owns the model plus any extra modules, and returns named loss terms.

    The engine optimises ``self.parameters()`` (the model and every module assigned as an
    attribute) and checkpoints ``self.state_dict()``. Upstream references in ``ctx.upstream``
    are kept out of both because the context is not a module. Subclasses call
    ``super().__init__(model, ctx)`` first.
    """

    #: independently shuffled batch streams per step (``Batch.others`` holds streams 2..n)
    streams: int = 1
    #: whether ``loss`` may run under bfloat16 autocast (``amp: auto`` on CUDA). Set False when a
    #: term needs float32 arithmetic to mean anything, e.g. a power iteration or a matrix norm
    amp_safe: bool = True

    def __init__(self, model: nn.Module, ctx: MethodContext):
        super().__init__()
        self.model = model
        object.__setattr__(self, "ctx", ctx)  # not a submodule: never trained nor checkpointed

    def __setattr__(self, name: str, value) -> None:
        ctx = self.__dict__.get("ctx")
        if ctx is not None and isinstance(value, nn.Module) and any(
                value is m for ref in ctx.upstream.values() for m in ref.modules()):
            # an upstream reference (or a part of one) kept as an attribute stays frozen: not a
            # submodule, so it is neither trained, nor switched to train mode, nor checkpointed
            object.__setattr__(self, name, value)
            return
        super().__setattr__(name, value)

    @abstractmethod
    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Named scalar loss terms for one batch; the engine sums them and logs each per epoch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits used by evaluators; a multi-network method says which network answers."""
        return self.model(x)

    def networks(self) -> dict[str, nn.Module]:
        """The networks evaluators may inspect by name (``model`` for single-network methods)."""
        return {"model": self.model}

    def epoch_started(self, epoch: int) -> dict[str, float]:
        """Called before each epoch (0-based): schedules of the method's own coefficients.

        Return values to log with the epoch (e.g. the current coefficient)."""
        return {}


# --------------------------------------------------------------------------------------------
# Evaluators
# --------------------------------------------------------------------------------------------
@dataclass
class EvalContext:
    """What an evaluator sees: the data, where we are, and a folder for files to log."""

    data: DataBundle
    epoch: int
    final: bool
    device: torch.device
    artifact_dir: Path
    batch_size: int = 1024


class Evaluator(metaclass=ABCMeta):
    """Measures a trained (or training) method; returns named floats.

    ``every`` is how often it runs by default: an epoch interval, or ``"end"`` for the last epoch
    only. It always runs after the last epoch. Files written under ``ctx.artifact_dir`` are
    logged with the stage run.
    """

    every: int | str = 1

    @abstractmethod
    def evaluate(self, method: Method, ctx: EvalContext) -> dict[str, float]:
        """Named metrics for this epoch, e.g. ``{"test_acc": 0.97}``."""


# --------------------------------------------------------------------------------------------
# Lifecycle
# --------------------------------------------------------------------------------------------
@dataclass
class StageInfo:
    """Who is running: the stage run's name, identity and resolved configuration."""

    name: str
    identity: str
    stage: str
    config: dict


@dataclass
class StageResult:
    """The outcome of one stage run, handed back to the driver which records it."""

    status: str  # FINISHED or FAILED
    history: list[dict[str, float]] = field(default_factory=list)  # one dict per epoch (key 'epoch')
    summary: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None
    artifact_dir: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "FINISHED"


def load_matching(target: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Copy every tensor whose name and shape match; return (loaded, skipped) names.

    This is how phase II reuses phase I: all layers whose shapes agree, so a head whose class
    count changed (Cifar-10 -> Cifar-100) keeps its fresh initialisation.
    """
    own = target.state_dict()
    loaded, skipped = [], []
    update = {}
    for name, tensor in own.items():
        src = state.get(name)
        if src is not None and tuple(src.shape) == tuple(tensor.shape):
            update[name] = src
            loaded.append(name)
        else:
            skipped.append(name)
    target.load_state_dict(update, strict=False)
    return loaded, skipped

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
from .fisher import fisher_diagonal, fisher_samples, normalize_max, per_sample_grads
from .resize import resize_images

hookimpl = pluggy.HookimplMarker("harness")

__all__ = [
    "hookimpl", "UserError", "check_choice", "check_non_negative", "Split", "DataBundle",
    "DatasetContext", "Batch", "Batches", "MissingLabels", "Stream", "OptimizerSpec",
    "DEFAULT_OPTIMIZER", "MethodContext", "Method", "Evaluator", "resize_images", "fisher_diagonal",
    "fisher_samples", "normalize_max", "per_sample_grads", "EvalContext", "StageInfo",
    "StageResult", "load_matching",
]


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
@dataclass
class Split:
    """One split held in memory: inputs ``x`` (float, N x ...) and integer labels ``y`` (N).

    ``y`` is None for an unlabelled split: its samples reach a method with no label at all, so
    no code path can read a label that a semi-supervised protocol withheld.
    """

    x: torch.Tensor
    y: torch.Tensor | None

    def __post_init__(self):
        if self.y is not None and len(self.x) != len(self.y):
            raise ValueError(f"split has {len(self.x)} inputs but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.x)

    @property
    def labelled(self) -> bool:
        return self.y is not None

    def to(self, device) -> "Split":
        return Split(self.x.to(device), None if self.y is None else self.y.to(device))

    def subset(self, index) -> "Split":
        return Split(self.x[index], None if self.y is None else self.y[index])


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
    #: further named splits, e.g. ``unlabelled`` (the training samples whose labels a
    #: ``labels: N`` option withheld); ``split(name)`` reaches these and train/test alike
    extra: dict[str, Split] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def split_names(self) -> tuple[str, ...]:
        return ("train", "test", *self.extra)

    def split(self, name: str) -> Split:
        if name in ("train", "test"):
            return getattr(self, name)
        if name not in self.extra:
            raise UserError(f"data set {self.name!r} has no split {name!r}", key="split",
                            hint=f"its splits: {', '.join(self.split_names)}"
                                 + ("" if self.extra else "; `labels: N` makes an `unlabelled` one"))
        return self.extra[name]

    def replace(self, **changes) -> "DataBundle":
        """A copy with some fields changed (the splits are shared, not copied)."""
        fields = {"train": self.train, "test": self.test, "num_classes": self.num_classes,
                  "name": self.name, "description": self.description, "extra": dict(self.extra)}
        fields.update(changes)
        return DataBundle(**fields)

    def to(self, device) -> "DataBundle":
        return self.replace(train=self.train.to(device), test=self.test.to(device),
                            extra={k: v.to(device) for k, v in self.extra.items()})

    def fingerprint(self) -> str:
        """A hash of the tensors: part of a stage run's identity, so changed data re-runs.

        The extra splits are hashed after train and test, in name order, so a bundle without
        any keeps the fingerprint (and the stage runs their identity) it had before they existed.
        """
        h = hashlib.sha256()
        named = [(None, self.train), (None, self.test)]
        named += [(name, self.extra[name]) for name in sorted(self.extra)]
        for name, split in named:
            if name is not None:
                h.update(f"split {name}".encode())
            for t in (split.x, split.y):
                if t is None:
                    h.update(b"unlabelled")
                    continue
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
class MissingLabels(LookupError):
    """A method read the labels of a batch from an unlabelled stream."""


class Batch:
    """One stream's samples for one training step: inputs ``x``, labels ``y`` and the indices
    of the samples in their split (``index``).

    A batch of an unlabelled split has no labels at all: reading ``y`` raises ``MissingLabels``
    naming the stream, and ``labelled`` says which kind a batch is without raising.
    """

    __slots__ = ("x", "_y", "index", "stream")

    def __init__(self, x: torch.Tensor, y: torch.Tensor | None, index: torch.Tensor,
                 stream: str = "train"):
        self.x, self._y, self.index, self.stream = x, y, index, stream

    @property
    def y(self) -> torch.Tensor:
        if self._y is None:
            raise MissingLabels(f"the batch of stream {self.stream!r} comes from an unlabelled "
                                "split: its samples have no labels")
        return self._y

    @property
    def labelled(self) -> bool:
        return self._y is not None

    def __len__(self) -> int:
        return len(self.x)


class Batches(dict):
    """One training step's data: stream name -> ``Batch``, in the order the method declared."""


@dataclass(frozen=True)
class Stream:
    """A batch stream a method declares: which data set (role) and split it draws from, and its
    batch size (absolute, or ``ratio`` times the run's ``batch_size``; default: the run's).

    Each stream has its own seeded shuffle. An epoch is one pass over the method's primary
    stream; the others cycle, reshuffled at the end of each of their passes. ``exact`` streams
    always give ``batch_size`` samples, continuing into the next pass when one ends (so a stream
    of 50 labelled samples under a batch of 64 repeats some); otherwise a pass ends with a
    smaller batch, as the primary stream's does.
    """

    role: str | None = None  # None: the role `target`, or the stage's only data set
    split: str = "train"
    batch_size: int | None = None
    ratio: float | None = None
    exact: bool = False


@dataclass
class OptimizerSpec:
    """One of a method's optimizers when it needs its own settings: its parameters, and any of
    ``optimizer`` (sgd, adam, adamw), ``lr``, ``momentum``, ``weight_decay`` that differ from
    the run's. The run's ``schedule`` applies to every optimizer, each with its own scheduler."""

    params: Any
    optimizer: str | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None


#: the name of the one optimizer of a method that declares none
DEFAULT_OPTIMIZER = "main"


@dataclass
class MethodContext:
    """What a method may know about its stage run, handed over at construction.

    ``data`` maps the stage's data roles (``target``, or the roles a suite names) to their data
    sets, on the run's device; ``train`` is the primary role's labelled training split.
    ``upstream`` maps the names a suite gives under a stage's ``refs:`` to the upstream stage's
    trained method, frozen (eval mode, no gradients, not part of this run's checkpoint).
    ``build_model()`` makes a fresh network of the stage's architecture (a second network).
    ``run`` holds the stage's run settings (batch size, learning rate, epochs, ...).
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
    data: dict[str, "DataBundle"] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    generators: dict[str, torch.Generator] = field(default_factory=dict, repr=False)

    def generator(self, name: str) -> torch.Generator:
        """This stage run's own CPU generator called ``name``, seeded from (seed, name).

        The one way a method draws random numbers of its own: the engine saves the state of
        every generator handed out here with each resume checkpoint and restores it on
        ``--resume``, so a resumed run draws what the uninterrupted run would have, which a
        ``torch.Generator`` a method keeps for itself does not do unless the method remembers to
        save it. Stacked replicas each have their own context, so each draws from its own. The
        same name returns the same generator; distinct names give independent streams.
        """
        if name not in self.generators:
            self.generators[name] = torch.Generator().manual_seed(self.seed_for(name))
        return self.generators[name]

    def seed_for(self, name: str) -> int:
        """A 63-bit seed derived from (seed, name), for a draw fixed by where it happens (a
        round, a stage) rather than by what was drawn before it: such a draw needs no saved
        state. Distinct names give unrelated seeds, where sums such as ``seed * k + i`` collide."""
        key = hashlib.blake2b(f"{self.seed}/{name}".encode(), digest_size=8).digest()
        return int.from_bytes(key, "big") >> 1

    def generator_states(self) -> dict[str, torch.Tensor]:
        """The state of every generator handed out so far, by name (what a checkpoint keeps)."""
        return {name: g.get_state() for name, g in self.generators.items()}

    def restore_generators(self, states: dict[str, torch.Tensor]) -> None:
        """Put generators back in the states ``generator_states`` returned."""
        for name, state in states.items():
            self.generator(name).set_state(state)


class Method(nn.Module):
    """A training method: owns the model plus any extra modules, and says how to train them.

    The simple path: override ``loss`` to return named loss terms; the engine sums them,
    backpropagates and steps one optimizer over ``self.parameters()`` (the model and every
    module assigned as an attribute). A method with several updates per step (alternating
    parameter subsets, different losses) declares named ``optimizers()`` and overrides
    ``step``, calling ``self.update(name, terms)`` once per update: the engine still does
    autocast, backward, clipping, the finite check, the optimizer step, the schedule and the
    logging, and checkpoints every optimizer. Calling an optimizer's ``step()`` directly is
    refused, so these stay true for every method.

    The engine checkpoints ``self.state_dict()``: parameters, buffers, and whatever a method
    returns from torch's ``get_extra_state`` (a phase cursor, a round counter). Upstream
    references in ``ctx.upstream`` are kept out of both because the context is not a module.
    Subclasses call ``super().__init__(model, ctx)`` first.
    """

    #: whether the step may run under bfloat16 autocast (``amp: auto`` on CUDA). Set False when
    #: a term needs float32 arithmetic to mean anything, e.g. a power iteration or a matrix norm
    amp_safe: bool = True
    #: the stream an epoch is one pass of; None: the largest (the first of equals)
    primary_stream: str | None = None
    #: whether stage runs of this method that differ only in seed, initial weights and data may
    #: train as one batched network (``harness.train.stacking``; the run setting ``stack``).
    #: A method may say True when its step is the plain one (``loss`` terms, one optimizer, one
    #: stream), its loss reads every parameter and buffer through its modules' attributes at
    #: call time (``torch.func.functional_call`` swaps a replica's in there; a tensor kept in a
    #: list would be the first replica's for all), the Python state it keeps is the same for
    #: every replica (a coefficient's schedule, not a counter of its own data), and it draws
    #: its random numbers in ``draw()``. The kit's ``check_stacked_equals_alone`` holds it to it.
    stackable: bool = False

    def __init__(self, model: nn.Module, ctx: MethodContext):
        super().__init__()
        self.model = model
        object.__setattr__(self, "ctx", ctx)  # not a submodule: never trained nor checkpointed
        object.__setattr__(self, "_updater", None)

    def __setattr__(self, name: str, value) -> None:
        ctx = self.__dict__.get("ctx")
        if ctx is not None and isinstance(value, nn.Module) and any(
                value is m for ref in ctx.upstream.values() for m in ref.modules()):
            # an upstream reference (or a part of one) kept as an attribute stays frozen: not a
            # submodule, so it is neither trained, nor switched to train mode, nor checkpointed
            object.__setattr__(self, name, value)
            return
        super().__setattr__(name, value)

    def streams(self) -> dict[str, Stream]:
        """The batch streams of a step, by name; default one over the training split."""
        return {"train": Stream()}

    def optimizers(self) -> dict[str, Any]:
        """Named optimizers: each a list of parameters, a list of param-group dicts, or an
        ``OptimizerSpec``. Default: one optimizer over every trainable parameter."""
        return {DEFAULT_OPTIMIZER: [p for p in self.parameters() if p.requires_grad]}

    def loss(self, batch) -> dict[str, torch.Tensor]:
        """Named scalar loss terms for one step, summed by the engine and logged per epoch.

        ``batch`` is the ``Batch`` of the method's only stream, or the ``Batches`` mapping when
        it declares several."""
        raise NotImplementedError(f"{type(self).__name__} overrides neither loss() nor step()")

    def step(self, batches: Batches) -> None:
        """One training step. The default is one update of the default optimizer with
        ``loss``'s terms; override it to make several ``update`` calls."""
        batch = batches if len(batches) > 1 else next(iter(batches.values()))
        self.update(DEFAULT_OPTIMIZER, self.loss(batch))

    def update(self, optimizer: str, terms: dict[str, torch.Tensor]) -> None:
        """Sum ``terms``, backpropagate and step the optimizer named ``optimizer``."""
        updater = self.__dict__.get("_updater")
        if updater is None:
            raise RuntimeError("update() belongs inside step(), while the engine trains")
        updater(optimizer, terms)

    def draw(self) -> dict[str, torch.Tensor]:
        """The random numbers one training step needs, drawn from the method's own generators.

        Why apart from ``loss``: a stacked step evaluates ``loss`` of every replica at once
        under ``torch.vmap``, where one call cannot draw from R generators. The engine calls
        each replica's ``draw()`` once per step, in step order, outside the batched call, so a
        replica draws exactly the numbers it draws trained alone; ``loss`` reads them through
        ``draws()``. Default: none."""
        return {}

    def draws(self) -> dict[str, torch.Tensor]:
        """This step's random numbers, for ``loss``: drawn now with ``draw()`` when the method
        trains alone; stacked, the ones the engine drew with this replica's ``draw()``."""
        given = self.__dict__.get("_draws")
        return self.draw() if given is None else given

    def step_finished(self, step: int) -> None:
        """Called after each training step (0-based, counted over the whole run): an EMA
        teacher's update, a counter. Not called when a method does not override it."""

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
    """What an evaluator sees: the data, where we are, and a folder for files to log.

    ``data`` is the data set being measured: the stage's primary role, or another role an
    evaluator was asked to measure with ``on:`` (its metrics then carry the role as a prefix).
    ``roles`` holds every data set of the stage by role.
    """

    data: DataBundle
    epoch: int
    final: bool
    device: torch.device
    artifact_dir: Path
    batch_size: int = 1024
    role: str = "target"
    roles: dict[str, DataBundle] = field(default_factory=dict)


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

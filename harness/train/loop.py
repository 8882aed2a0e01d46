"""The epoch loop: steps over the streams, per-epoch metrics, the finite check, evaluators.

Lightning splits its fit loop into an epoch loop and the optimization inside a step; so does
this: ``EpochLoop.train_epoch`` runs the steps (each one ``method.step``, whose updates
``harness.train.updates`` carries out), ``evaluate`` the evaluators that are due, and ``run``
the epochs with the resume saves between them. Per-step work is what the method asks for and
nothing else: losses are averaged once per epoch, never synchronised per step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..api import DEFAULT_OPTIMIZER, EvalContext, Evaluator, Method, StageResult
from ..data_options import primary_role
from .build import StageData
from .streams import StreamSet
from .updates import Updates

__all__ = ["EpochLoop", "EvaluatorSlot", "StageFailed", "due", "non_finite", "summary_of"]


class StageFailed(Exception):
    """The run itself failed (NaN loss, a plugin raised): recorded, and the grid goes on."""


def due(every, epoch: int, epochs: int) -> bool:
    last = epoch == epochs - 1
    if every == "end":
        return last
    return last or (epoch + 1) % int(every) == 0


@dataclass
class EvaluatorSlot:
    """An evaluator with when it runs and on which data roles (the primary one unprefixed)."""

    name: str
    evaluator: Evaluator
    every: int | str
    roles: list[str] = field(default_factory=list)


@dataclass
class EpochLoop:
    method: Method
    updates: Updates
    streams: StreamSet
    evaluators: list[EvaluatorSlot]
    data: StageData  # on the run's device
    epochs: int
    device: torch.device
    autocast: Callable
    artifact_dir: Path
    eval_batch_size: int
    train_seconds: float = 0.0

    def __post_init__(self):
        # the method's modules, listed once: walking ``modules()`` every epoch was a third of
        # the loop's per-epoch Python calls on the MI network. A module a method adds (or swaps
        # in) later is built in training mode, and ``train()`` reaches it whenever a listed one
        # needs it.
        self._modules = tuple(self.method.modules())

    def train_epoch(self, epoch: int) -> dict[str, float]:
        method, updates = self.method, self.updates
        metrics: dict[str, float] = {"epoch": epoch + 1, **updates.lrs()}
        # the clock starts before epoch_started: what a method computes there (CETL's Fisher
        # between its stages) is training time, and the cost table must count it
        t0 = time.perf_counter()
        metrics.update(method.epoch_started(epoch) or {})
        if not all(m.training for m in self._modules):  # train() costs setattr per module
            method.train()
        hook = method.step_finished if type(method).step_finished is not Method.step_finished else None
        steps = self._plain_steps if self._plain else self._steps
        steps(epoch * self.streams.steps, hook)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        self.train_seconds += seconds
        updates.epoch_finished()
        self._log_losses(epoch, metrics)
        metrics["epoch_seconds"] = seconds
        n = self.streams.primary.n
        metrics["train_samples_per_s"] = n / seconds if seconds > 0 else float("nan")
        if len(self.streams.streams) > 1:
            metrics.update({f"seen_{k}": float(v) for k, v in self.streams.seen().items()})
        return metrics

    @property
    def plain(self) -> bool:
        """Whether the run takes the plain path (``_plain``): what stacking needs."""
        return self._plain

    @property
    def _plain(self) -> bool:
        """One stream, one optimizer and the default ``step`` and ``update``: what std, racecar
        and srip are, and where the engine's per-step Python is a measurable share of a step."""
        return (self.updates.plain and len(self.streams.streams) == 1
                and type(self.method).update is Method.update)

    def _steps(self, step: int, hook) -> None:
        method, updates, autocast = self.method, self.updates, self.autocast
        primary = self.streams.primary
        for batches in self.streams.epoch():
            updates.batch_size = primary.size
            with autocast():
                method.step(batches)
            if hook is not None:
                hook(step)
            step += 1

    def _plain_steps(self, step: int, hook) -> None:
        """What ``_steps`` does for a plain method, the same calls in the same order, without
        the ``Batches`` mapping and the dispatch through ``Method.step`` and ``Method.update``:
        on the MI network a step is about a millisecond, so each call left out shows in the
        overhead benchmark (tests/benchmarks/test_overhead_bench.py)."""
        loss, update, autocast = self.method.loss, self.updates, self.autocast
        stream = self.streams.primary
        for _ in range(self.streams.steps):
            batch = stream.batch()
            update.batch_size = stream.size
            if not update.amp:  # not even an empty context
                update(DEFAULT_OPTIMIZER, loss(batch))
            else:
                with autocast():
                    update(DEFAULT_OPTIMIZER, loss(batch))
            if hook is not None:
                hook(step)
            step += 1

    def _log_losses(self, epoch: int, metrics: dict[str, float]) -> None:
        terms, norms = self.updates.epoch_means()
        total = 0.0
        for key, value in terms.items():
            metrics[f"loss_{key}"] = value
            total += value
        metrics["loss"] = total
        metrics.update(norms)
        message = non_finite(epoch, terms, total)
        if message:
            raise StageFailed(message)

    def evaluate(self, epoch: int, metrics: dict[str, float]) -> None:
        primary = primary_role(self.data.roles)
        for slot in self.evaluators:
            if not due(slot.every, epoch, self.epochs):
                continue
            for role in slot.roles or [primary]:
                ctx = EvalContext(data=self.data.roles[role], epoch=epoch + 1,
                                  final=epoch == self.epochs - 1, device=self.device,
                                  artifact_dir=self.artifact_dir, batch_size=self.eval_batch_size,
                                  role=role, roles=self.data.roles)
                values = slot.evaluator.evaluate(self.method, ctx)
                prefix = "" if role == primary else f"{role}_"
                metrics.update({prefix + k: v for k, v in values.items()})

    def run(self, start: int, result: StageResult, after_epoch: Callable[[int, dict], None]) -> None:
        for epoch in range(start, self.epochs):
            metrics = self.train_epoch(epoch)
            self.evaluate(epoch, metrics)
            result.history.append(metrics)
            after_epoch(epoch, metrics)


def non_finite(epoch: int, terms: dict[str, float], total: float) -> str | None:
    """Why an epoch's losses fail the run (None: they are finite): one wording for a stage run
    alone and a replica of a stacked group, which fails alone."""
    if math.isfinite(total):
        return None
    bad = ", ".join(f"loss_{k}={v:.4g}" for k, v in terms.items())
    return f"loss became {total} in epoch {epoch + 1} ({bad})"


def summary_of(history: list[dict[str, float]], train_seconds: float, samples: int,
               epochs: int) -> dict[str, Any]:
    """The stage run's final metrics: the last value of each, and the run's speed."""
    summary: dict[str, float] = {}
    for row in history:
        summary.update({k: v for k, v in row.items() if k != "epoch"})
    summary.pop("epoch_seconds", None)
    summary.pop("train_samples_per_s", None)
    summary["seconds_per_epoch"] = train_seconds / max(1, epochs)
    summary["train_samples_per_s"] = (samples * epochs / train_seconds if train_seconds > 0
                                      else float("nan"))
    summary["train_seconds"] = train_seconds
    return summary

"""Checkpoints: the resume state between epochs, the final checkpoint, and frozen references.

The final checkpoint (``checkpoint.pt``, loadable with ``torch.load(weights_only=True)``) is
what a downstream stage starts from (``from:``) or keeps as a frozen reference (``refs:``); the
resume state is everything that makes epoch k+1 the same whether or not the process stopped
after epoch k.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..api import Method, StageResult
from .build import build_method
from .loop import EvaluatorSlot
from .streams import StreamSet
from .updates import Updates

__all__ = ["CHECKPOINT", "CHECKPOINT_FORMAT", "ModelSource", "ResumeState", "save_final",
           "load_method", "read_model_state"]

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


@dataclass
class ModelSource:
    """Where an upstream stage's trained method lives, with the sources of its own references
    (a method rebuilt as a frozen reference may itself need its references)."""

    checkpoint: str
    refs: dict[str, "ModelSource"] = field(default_factory=dict)


def save_final(path: Path, meta: dict[str, Any], method: Method) -> None:
    write_torch(path, {"format": CHECKPOINT_FORMAT, "meta": meta,
                       "state_dict": method.state_dict()})


def write_torch(path: Path, obj: Any) -> None:
    """``torch.save`` through memory: writing into a full disk, torch's zip writer raises an
    opaque ``RuntimeError: unexpected pos 576 vs 534``, while a plain write raises
    ``OSError(ENOSPC)`` naming the file, which the CLI turns into one clear line
    (harness.storage). The states saved here are megabytes at most."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with open(path, "wb") as out:
        out.write(buffer.getbuffer())


def load_method(plugins, source: ModelSource, device: torch.device) -> Method:
    """Rebuild an upstream stage's method from its checkpoint, frozen, as a reference."""
    ckpt = torch.load(source.checkpoint, map_location=device, weights_only=True)
    meta = ckpt["meta"]
    refs = {name: load_method(plugins, s, device) for name, s in source.refs.items()}
    method = build_method(plugins, meta["method"], meta["architecture"], data=None,
                          input_shape=meta["input_shape"], num_classes=int(meta["num_classes"]),
                          stage=meta["stage"], seed=int(meta["seed"]), epochs=int(meta["epochs"]),
                          device=device, upstream=refs)
    method.load_state_dict(ckpt["state_dict"])
    method.eval()
    method.requires_grad_(False)
    return method


def read_model_state(source: ModelSource) -> dict[str, torch.Tensor]:
    """The primary network's weights of an upstream stage (``model.*`` of its method)."""
    state = torch.load(source.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}


class ResumeState:
    """Everything that makes epoch k+1 of a stage run the same whether or not the process
    stopped after epoch k: the method's state (parameters, buffers, and whatever a method keeps
    through torch's ``get_extra_state``), every optimizer and scheduler, each stream's position
    and generator, every random generator a plugin may draw from (the global ones and those
    it took from ``MethodContext.generator``), the evaluators (pickled: an
    evaluator that collects points across epochs, such as an information plane, keeps them) and
    the history so far.

    Saved every ``StageTask.checkpoint_every`` seconds rather than every epoch, because on the
    MI network an epoch takes milliseconds and a save would cost as much as the epoch. Written
    to a temporary file and renamed, so a kill during a save leaves the previous state intact.
    """

    FORMAT = 2
    FILE = "state.pt"
    PROGRESS = "progress.json"

    def __init__(self, folder: Path):
        self.folder = folder

    @staticmethod
    def progress(folder: Path) -> dict | None:
        """``{"epoch": k, "epochs": n}`` of the last save in ``folder``, without loading it."""
        try:
            return json.loads((folder / ResumeState.PROGRESS).read_text())
        except (OSError, ValueError):
            return None

    def save(self, epoch: int, epochs: int, method: Method, updates: Updates, streams: StreamSet,
             evaluators: list[EvaluatorSlot], history, train_seconds: float) -> None:
        try:
            evaluator_blob = pickle.dumps([slot.evaluator for slot in evaluators])
        except Exception:  # an evaluator that cannot be pickled restarts empty on resume
            evaluator_blob = None
        state = {
            "format": self.FORMAT, "epoch": epoch, "epochs": epochs,
            "method": method.state_dict(), "updates": updates.state_dict(),
            "streams": streams.state_dict(), "generators": method.ctx.generator_states(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
            "python_rng": random.getstate(), "numpy_rng": np.random.get_state(),
            "evaluators": evaluator_blob, "history": history, "train_seconds": train_seconds,
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{self.FILE}.{os.getpid()}"
        write_torch(tmp, state)
        os.replace(tmp, self.folder / self.FILE)
        tmp = self.folder / f".{self.PROGRESS}.{os.getpid()}"
        tmp.write_text(json.dumps({"epoch": epoch, "epochs": epochs, "saved": time.time()}))
        os.replace(tmp, self.folder / self.PROGRESS)

    def load(self, epochs: int) -> "_Saved | None":
        path = self.folder / self.FILE
        if not path.is_file():
            return None
        # our own file, written by save() above; it holds numpy and Python RNG states, which the
        # weights-only unpickler refuses
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("format") != self.FORMAT or state.get("epochs") != epochs:
            return None
        return _Saved(state)


@dataclass
class _Saved:
    state: dict

    def restore(self, method: Method, updates: Updates, streams: StreamSet,
                evaluators: list[EvaluatorSlot], result: StageResult) -> tuple[int, float]:
        """Put the saved state in place; return (epochs done, training seconds so far)."""
        s = self.state
        method.load_state_dict(s["method"])
        method.ctx.restore_generators(s.get("generators", {}))
        updates.load_state_dict(s["updates"])
        streams.load_state_dict(s["streams"])
        torch.set_rng_state(s["torch_rng"])
        if s["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["cuda_rng"])
        random.setstate(s["python_rng"])
        np.random.set_state(s["numpy_rng"])
        if s["evaluators"] is not None:
            for slot, ev in zip(evaluators, pickle.loads(s["evaluators"])):
                slot.evaluator = ev
        result.history.extend(s["history"])
        return int(s["epoch"]), float(s["train_seconds"])

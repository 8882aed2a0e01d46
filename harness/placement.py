"""Which GPU each worker of a parallel executor uses.

A grid on a node with eight GPUs should use all eight, and several small stage runs can share
one large GPU: tiny networks such as the MI network are bound by kernel launches, not by the
GPU's arithmetic, so K of them on one GPU run at nearly K times the throughput of one. Each
worker is pinned to one GPU through ``CUDA_VISIBLE_DEVICES`` (set before CUDA starts in that
process), so ``device: auto`` and ``cuda`` mean "my GPU" inside the worker. Workers take the
GPUs round-robin, ``runs_per_gpu`` workers per GPU.

The assignment is plain bookkeeping, kept apart from CUDA so that it is tested on a machine
without GPUs (``--gpus 0,1`` names GPUs whether or not they exist).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .errors import UserError

__all__ = ["Placement", "visible_gpus", "GPU_ENV"]

GPU_ENV = "CUDA_VISIBLE_DEVICES"


def visible_gpus(requested: str | None = None) -> list[str]:
    """The GPUs workers may use: ``requested`` (``--gpus 0,1``), else ``CUDA_VISIBLE_DEVICES``,
    else every GPU torch sees (none on a machine without CUDA)."""
    if requested is not None:
        names = [g.strip() for g in requested.split(",") if g.strip()]
        if not names or len(set(names)) != len(names):
            raise UserError(f"--gpus {requested!r} is not a list of distinct GPUs", key="--gpus",
                            hint="e.g. --gpus 0,1,2,3")
        return names
    env = os.environ.get(GPU_ENV)
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    import torch  # only here: `harness plan` without GPUs need not start torch for this

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


@dataclass
class Placement:
    """Slots of workers on GPUs: ``runs_per_gpu`` slots per GPU, filled round-robin."""

    gpus: list[str] = field(default_factory=list)
    runs_per_gpu: int = 1

    def __post_init__(self):
        if isinstance(self.runs_per_gpu, bool) or not isinstance(self.runs_per_gpu, int) \
                or self.runs_per_gpu < 1:
            raise UserError(f"--runs-per-gpu must be a positive whole number, got "
                            f"{self.runs_per_gpu!r}", key="--runs-per-gpu", hint="e.g. 4")

    @property
    def capacity(self) -> int:
        """How many stage runs may run at once (0: no GPU, any number on the CPU)."""
        return len(self.gpus) * self.runs_per_gpu

    def check_jobs(self, jobs: int) -> None:
        if self.gpus and jobs > self.capacity:
            raise UserError(f"-j {jobs} asks for more concurrent stage runs than {len(self.gpus)} "
                            f"GPU(s) x {self.runs_per_gpu} per GPU", key="-j",
                            hint=f"use -j {self.capacity} or fewer, or raise --runs-per-gpu")

    def slot_gpu(self, slot: int) -> str | None:
        """The GPU of worker slot ``slot`` (0-based): round-robin, so that with fewer workers
        than slots every GPU is used before any gets a second worker."""
        if not self.gpus:
            return None
        return self.gpus[slot % len(self.gpus)]

    @property
    def share(self) -> float:
        """The fraction of a GPU each stage run asks a Ray cluster for."""
        return 1.0 / self.runs_per_gpu

    def describe(self, jobs: int) -> str:
        if not self.gpus:
            return f"placement: {jobs} worker(s) on the CPU (no GPU visible)"
        per = {g: 0 for g in self.gpus}
        for slot in range(jobs):
            per[self.slot_gpu(slot)] += 1
        used = ", ".join(f"GPU {g}: {n}" for g, n in per.items())
        return (f"placement: {jobs} worker(s), each pinned to one GPU ({GPU_ENV}); "
                f"up to {self.runs_per_gpu} per GPU; {used}")

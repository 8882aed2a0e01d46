"""Speed and memory meters for a stage run.

Peak resident memory is not read from ``getrusage``: ``ru_maxrss`` only ever grows over a
process's life, so in a process that runs many stage runs it would report the largest earlier
stage, not this one. On Linux the kernel's own high-water mark is reset at the start of a stage
run (``/proc/self/clear_refs``) and read at its end: exact, and free. Elsewhere a background
thread samples the resident size; on the MI network that thread's 50 wake-ups a second made a
stage run about 6% slower (median of alternating runs, reports/benchmarks.md), so it is only
the fallback.
"""

from __future__ import annotations

import os
import resource
import threading

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _status_kb(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status; None where there is no such file (not Linux) or
    field, and the callers fall back to sampling."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak_rss() -> bool:
    """Make the kernel's peak resident size (VmHWM) the current one; False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_kb("VmHWM") is not None


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # not Linux: the lifetime peak is the best available
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Peak RSS (and peak CUDA allocation) between ``start()`` and ``stop()``."""

    def __init__(self, device: torch.device, interval: float = 0.02):
        self.device = device
        self.interval = interval
        self.peak_rss = self.baseline_rss = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._kernel = False  # the kernel keeps the peak (Linux), no sampling thread needed

    def start(self) -> "PeakMemory":
        self.baseline_rss = self.peak_rss = current_rss_bytes()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._kernel = reset_peak_rss()
        if not self._kernel:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_rss = max(self.peak_rss, current_rss_bytes())

    def stop(self) -> dict[str, float]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._kernel:
            self.peak_rss = max(self.peak_rss, (_status_kb("VmHWM") or 0) * 1024)
        self.peak_rss = max(self.peak_rss, current_rss_bytes())
        # the increase over what the process held at the start (the interpreter, torch, the
        # data, earlier stage runs of an inline executor): what this stage run itself needed,
        # so that a ratio of two methods' numbers means something
        out = {"peak_rss_mb": self.peak_rss / 2**20,
               "rss_increase_mb": max(0, self.peak_rss - self.baseline_rss) / 2**20}
        if self.device.type == "cuda":
            out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return out


def macs_per_sample(model: torch.nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass, counted for Linear and Conv layers.

    Used to choose a thread count: tiny networks run fastest on one thread (the paper's
    294-weight MLP is 5x faster on one thread than on two), large ones scale with cores.
    """
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, torch.nn.Linear):
            total += module.in_features * module.out_features
        elif isinstance(module, torch.nn.modules.conv._ConvNd):
            kernel = module.weight[0].numel()  # in/groups * prod(kernel)
            total += output[0].numel() * kernel
    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd))]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


#: below this many multiply-accumulates per training batch, one thread wins
SMALL_BATCH_MACS = 20_000_000


def choose_threads(requested, macs_batch: int, max_threads: int) -> int:
    if requested != "auto":
        return int(requested)
    if macs_batch < SMALL_BATCH_MACS:
        return 1
    return max(1, max_threads)

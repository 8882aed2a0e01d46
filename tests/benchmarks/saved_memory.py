"""The activation memory of a step, measured the same way by every benchmark: the bytes of the
tensors autograd saves for backward while ``fn`` runs (independent of the allocator, unlike a
process's resident memory)."""

from __future__ import annotations

import torch


def saved_tensor_bytes(fn) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total

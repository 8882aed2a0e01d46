"""What a step's loss terms must be, and one message for a method whose ``loss()`` returns
anything else.

The engine sums the terms and logs each under its name, so a bare tensor (the first thing an
author returns from ``loss``) used to fail deep inside that sum with an error about sparse
layouts. The preflight of ``harness validate`` and ``run`` calls ``loss`` once on a few samples
before anything trains (``probe_loss``), the engine checks every ``update`` (a method with its own
``step``), and the conformance kit checks both: all three say the same sentence, naming the
method and what ``loss()`` must return.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..api import Batch, Batches, Method
from .streams import resolve_streams

__all__ = ["LossTermsError", "terms_problem", "TERMS_HINT", "probe_loss"]

#: the hint beside every message about loss terms
TERMS_HINT = 'e.g. return {"task": F.cross_entropy(logits, batch.y)}; each term is logged as loss_<name>'
#: samples per stream of the preflight's call of ``loss``: enough for batch statistics
PROBE_SAMPLES = 4


class LossTermsError(TypeError):
    """A method gave ``update()`` something other than named loss terms (a failed stage run)."""


def terms_problem(terms, where: str) -> str | None:
    """What is wrong with ``terms`` (returned by ``where``, e.g. ``"MyReg.loss()"``), or None
    for a non-empty mapping of names to tensors."""
    must = "loss() must return a dict of term names to scalar tensors"
    if isinstance(terms, torch.Tensor):
        return f"{where} returned a tensor, not named loss terms: {must}"
    if not isinstance(terms, Mapping):
        return f"{where} returned {type(terms).__name__}, not named loss terms: {must}"
    if not terms:
        return f"{where} returned no loss terms (an empty dict): {must}"
    for name, value in terms.items():
        if not isinstance(name, str):
            return f"{where} returned a term named {name!r}: {must}"
        if not isinstance(value, torch.Tensor):
            return (f"{where} returned term {name!r} as {type(value).__name__}, not a tensor: "
                    f"{must}")
    return None


def probe_loss(method: Method, roles: dict, batch_size: int) -> str | None:
    """Call a method's ``loss`` once, on the first few samples of each of its streams, and say
    what is wrong with what it returns; None when it is fine, when the method has its own
    ``step`` (its ``update`` calls are checked as it trains), or when the call fails in any
    other way (the stage run records that, with its traceback)."""
    if type(method).step is not Method.step:
        return None
    try:
        resolved = resolve_streams(method.streams(), roles, batch_size)
        batches = Batches()
        for name, (split, _, _) in resolved.items():
            n = min(len(split), PROBE_SAMPLES)
            index = torch.arange(n)
            batches[name] = Batch(split.x[:n], None if split.y is None else split.y[:n], index,
                                  name)
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            method.train()
            terms = method.loss(batches if len(batches) > 1 else next(iter(batches.values())))
    except Exception:  # noqa: BLE001  not this check's concern: the stage run records it
        return None
    return terms_problem(terms, f"{type(method).__name__}.loss()")

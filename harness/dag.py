"""The one walk of a dependency graph the harness needs: in a given order, take the first node
whose predecessors are done (``graphlib.TopologicalSorter`` keeps the bookkeeping).

The stage order of a setting, the executors' ready set and the time estimate of ``harness plan``
all walk this way, so a phase II stage run goes as soon as its own phase I is done, before the
phase I runs of later cells, and the estimate schedules runs as the executors dispatch them.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from graphlib import TopologicalSorter


class InOrder:
    """Nodes in the order given, each as soon as its predecessors among them are ``done``.

    ``pop()`` gives the first node in the given order that may go now (None when none may),
    and ``done(node)`` releases what waits for it; ``bool()`` says whether a node is still to be
    popped. Predecessors outside ``order`` are taken as done. A cycle raises
    ``graphlib.CycleError`` (its second argument is the cycle).
    """

    def __init__(self, order: Iterable[Hashable], deps: Mapping[Hashable, Iterable[Hashable]]):
        self.rank = {node: i for i, node in enumerate(order)}
        self.sorter = TopologicalSorter({node: [d for d in deps.get(node, ()) if d in self.rank]
                                         for node in self.rank})
        self.sorter.prepare()
        self.ready: list = []
        self.left = len(self.rank)

    def pop(self):
        self.ready.extend(self.sorter.get_ready())
        if not self.ready:
            return None
        self.ready.sort(key=self.rank.__getitem__)
        self.left -= 1
        return self.ready.pop(0)

    def done(self, node) -> None:
        self.sorter.done(node)

    def __bool__(self) -> bool:
        return self.left > 0


def in_order(order: Iterable[Hashable], deps: Mapping[Hashable, Iterable[Hashable]]) -> list:
    """The whole walk at once: each node after its predecessors, otherwise in the given order."""
    walk, out = InOrder(order, deps), []
    while walk:
        node = walk.pop()
        out.append(node)
        walk.done(node)
    return out

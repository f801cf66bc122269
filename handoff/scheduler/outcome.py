"""A finished run's allocations and stats as read-only mappings over compact arrays.

A run of a million functions would otherwise build two dicts and a million ``FunctionStats``
at its end (about 170 bytes a function). ``RunOutcome`` keeps, per function, a node number
(int32), an attempt count (int32) and two float64 times, and shares the graph's ``ids`` and
``index``; ``Placements`` and ``StatsView`` read them, making a ``FunctionStats`` on access.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Hashable, Iterator

import numpy as np

from handoff.scheduler.events import FunctionStats

__all__ = ["RunOutcome", "Placements", "StatsView"]


class RunOutcome:
    """Per function of a run: where its result is (``node[i]`` numbers ``names``, -1 for
    none), its attempts, and when its last attempt started and finished."""

    __slots__ = ("ids", "index", "names", "node", "attempts", "started", "finished", "count")

    def __init__(self, ids: list[Hashable], index: Mapping[Hashable, int], names: list[str],
                 node: np.ndarray, attempts: np.ndarray, started: np.ndarray, finished: np.ndarray):
        self.ids, self.index, self.names = ids, index, names
        self.node, self.attempts, self.started, self.finished = node, attempts, started, finished
        self.count = int(np.count_nonzero(node >= 0))

    def position(self, fid: Hashable) -> int:
        """The function's index if it has a result, else -1."""
        try:
            i = self.index.get(fid, -1)
        except TypeError:  # an unhashable key is simply not there
            return -1
        return i if 0 <= i < len(self.ids) and self.node[i] >= 0 else -1

    def positions(self) -> Iterator[int]:
        return iter(np.flatnonzero(self.node >= 0).tolist())


class _OutcomeView(Mapping):
    """A read-only mapping over a ``RunOutcome``, keyed by function id in the DAG's order;
    ``Placements`` and ``StatsView`` say what a function's value is (``__getitem__``)."""

    __slots__ = ("_o", "_cached")

    def __init__(self, outcome: RunOutcome, cached: frozenset[int] = frozenset()):
        self._o = outcome
        self._cached = cached  # positions loaded from a node's result cache

    def _position(self, fid: Hashable) -> int:
        """The function's index; KeyError if it has no result."""
        i = self._o.position(fid)
        if i < 0:
            raise KeyError(fid)
        return i

    def __contains__(self, fid: object) -> bool:
        return self._o.position(fid) >= 0

    def __iter__(self) -> Iterator[Hashable]:
        ids = self._o.ids
        return (ids[i] for i in self._o.positions())

    def __len__(self) -> int:
        return self._o.count

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} functions)"


class Placements(_OutcomeView):
    """{function_id: node holding its result}, read-only, in the DAG's order."""

    __slots__ = ()

    def __getitem__(self, fid: Hashable) -> str:
        o = self._o
        return o.names[o.node[self._position(fid)]]


class StatsView(_OutcomeView):
    """{function_id: FunctionStats}, read-only, each made when it is read."""

    __slots__ = ()

    def __getitem__(self, fid: Hashable) -> FunctionStats:
        o, i = self._o, self._position(fid)
        return FunctionStats(o.names[o.node[i]], int(o.attempts[i]), float(o.started[i]),
                             float(o.finished[i]), i in self._cached)

"""The live nodes as the orchestrator sees them: slots, in-flight counts, queued-ahead tasks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from handoff._core import ResourceLedger
    from handoff.scheduler.run import RunState

__all__ = ["NodeSlots"]


class NodeSlots:
    """Per live node, in ledger order: its slots, its in-flight tasks, its queued-ahead queue.

    ``free`` is the number of free slots summed over nodes (kept as a counter: placement
    checks it before every task). ``ahead`` lists each node's queued-ahead tasks, oldest
    first, as ``(run, index)``, and ``queued`` counts them all; ``freed`` names nodes whose
    queued-ahead tasks may now fit, or that may take tasks queued ahead elsewhere.
    """

    def __init__(self, default_slots: int):
        self.default_slots = default_slots
        self.setting: dict[str, int] = {}  # slots set by set_node_slots, remembered by name
        self.order: list[str] = []  # live nodes, in ledger order
        self.slots: dict[str, int] = {}  # live node -> slots
        self.busy: dict[str, int] = {}  # live node -> in-flight tasks from this orchestrator
        self.free = 0
        self.ahead: dict[str, list[tuple[RunState, int]]] = {}
        self.queued = 0  # tasks in the ahead queues
        self.freed: set[str] = set()
        self.fit_cache: dict[int, list[str]] = {}  # id(cost vector) -> nodes whose total fits

    def __contains__(self, name: str) -> bool:
        return name in self.busy

    def recount(self) -> None:
        busy = self.busy
        self.free = sum(max(0, s - busy[n]) for n, s in self.slots.items())

    def gone(self, names: list[str]) -> list[str]:
        """Live nodes missing from the ledger's list ``names`` (the caller loses each)."""
        present = set(names)
        self.fit_cache.clear()
        return [n for n in self.order if n not in present]

    def adopt(self, names: list[str]) -> list[str]:
        """Follow the ledger's node list ``names``; returns the nodes that are new (or back)."""
        back = []
        for name in names:
            if name not in self.busy:
                self.busy[name] = 0
                self.slots[name] = self.setting.get(name, self.default_slots)
                back.append(name)
                if self.queued:
                    self.freed.add(name)  # it may take work queued ahead elsewhere
        self.order = list(names)
        self.recount()
        return back

    def add(self, name: str) -> bool:
        """``name`` joined or changed its capacity; says whether it is new (or back)."""
        self.fit_cache.clear()
        if self.queued:
            self.freed.add(name)  # it may have grown, or be new: its queue or others' may fit
        if name in self.busy:
            return False
        self.order.append(name)
        self.busy[name] = 0
        self.slots[name] = self.setting.get(name, self.default_slots)
        self.recount()
        return True

    def remove(self, name: str) -> None:
        """Forget ``name``; its queued-ahead tasks are re-placed by their runs."""
        if name in self.order:
            self.order.remove(name)
        self.busy.pop(name, None)
        self.slots.pop(name, None)
        self.queued -= len(self.ahead.pop(name, ()))
        self.freed.discard(name)
        self.fit_cache.clear()
        self.recount()

    def set_slots(self, name: str, slots: int) -> None:
        self.setting[name] = slots
        if name in self.slots:
            self.slots[name] = slots
            self.recount()

    def take(self, node: str, run: RunState | None = None, i: int = -1) -> None:
        """One more task in flight on ``node`` (queued ahead there when ``run`` is given)."""
        self.busy[node] += 1
        self.free -= 1
        if run is not None:
            queue = self.ahead.get(node)
            if queue is None:
                queue = self.ahead[node] = []
            queue.append((run, i))
            self.queued += 1

    def give_back(self, node: str, run: RunState | None = None, i: int = -1) -> None:
        """A task in flight on ``node`` ended (it was queued ahead there when ``run`` is given);
        the node may now start a task queued ahead there or elsewhere, so it is marked freed."""
        busy = self.busy.get(node)
        if busy is None:
            return  # the node is gone, and its claims with it
        if run is not None:
            self.unqueue(node, run, i)
        if self.queued:
            self.freed.add(node)
        self.busy[node] = busy - 1
        if busy <= self.slots[node]:
            self.free += 1

    def unqueue(self, node: str, run: RunState, i: int) -> None:
        """Take ``(run, i)`` out of ``node``'s ahead queue (it ended, or moves elsewhere)."""
        queue = self.ahead.get(node)
        assert queue is not None  # take() queued it there; remove() forgets busy too
        queue.remove((run, i))
        self.queued -= 1

    def leave(self, node: str, run: RunState, i: int) -> None:
        """``(run, i)``, queued ahead on ``node``, moves to another node: its place in the
        queue and its slot here are free (nothing it held changes what fits here)."""
        self.unqueue(node, run, i)
        busy = self.busy[node]
        self.busy[node] = busy - 1
        if busy <= self.slots[node]:
            self.free += 1

    def claimed(self, node: str, count: int) -> None:
        """The first ``count`` tasks queued ahead on ``node`` took their claims there."""
        del self.ahead[node][:count]
        self.queued -= count

    def fitting(self, ledger: ResourceLedger, vec: np.ndarray, cost: dict) -> list[str]:
        """Nodes whose total capacity fits ``cost`` (cached by its vector until nodes change)."""
        nodes = self.fit_cache.get(id(vec))
        if nodes is None:
            nodes = self.fit_cache[id(vec)] = ledger.fitting_nodes_total(cost)
        return nodes

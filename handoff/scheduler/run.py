"""One DAG run's state: what is done, where results live, what is in flight, where it may go.

Everything is indexed by the function's position in ``CompiledGraph.ids`` (ints, not ids),
so the orchestrator's per-task work is list and dict operations on small ints.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Hashable

import numpy as np

from handoff import _core
from handoff.errors import AllocationError, HandoffError
from handoff.scheduler.events import FunctionStats, RunSpec
from handoff.scheduler.placement import group_tiers, order_nodes, read_placement

__all__ = ["RunState"]


class RunState:
    """The orchestrator's record of one run; the node layer reads it, only the orchestrator writes.

    For the node layer: ``run_id``, ``dag_id``, ``graph``, ``functions``, ``strategy``,
    ``finished``, ``error``, ``submitted_at``, ``deadline``, ``location(i)``, ``attempt(i)``,
    ``effective_inputs(i)``, ``in_flight()``, ``allocations()``, ``stats`` (by index),
    ``function_stats()`` (by id), ``nodes_used``, ``awaiting`` (lost nodes the run waits
    for), ``queued_ahead()``. The rest is the scheduler's bookkeeping.
    """

    def __init__(self, spec: RunSpec):
        graph = spec.graph
        n = len(graph.ids)
        if len(spec.functions) != n:
            raise ValueError(
                f"run {spec.run_id!r}: {len(spec.functions)} functions for a graph of {n}"
            )
        self.spec = spec
        self.run_id = spec.run_id
        self.dag_id = spec.dag_id
        self.graph = graph
        self.functions = spec.functions
        self.strategy = spec.strategy
        self.max_retries = spec.max_retries
        self.max_concurrency = spec.max_concurrency
        self.submitted_at = spec.now
        self.deadline = spec.deadline
        self.n = n
        self.tracker = _core.ReadyTracker(n, graph.indptr, graph.indices, graph.inline)
        self.finished = False
        self.error: HandoffError | None = None
        # per function, by index
        self.dispatch_no = [0] * n  # attempt number of the latest dispatch (stale results differ)
        self.failures = [0] * n  # failed attempts: these count against max_retries
        self.recoveries = [0] * n  # re-runs after a lost node or result: these do not
        self.locations: list[str | None] = [None] * n
        self.started = [0.0] * n
        self.finished_at = [0.0] * n
        # placement rules, filled by prepare(); sparse because most functions have none.
        # A collocation group goes to one node that fits each member alone (group_need, the
        # resource-wise largest cost), preferably one that fits their sum (group_cost).
        self.vecs: dict[int, np.ndarray] = {}  # resource vector of functions that claim something
        self.costs: dict[int, dict] = {}
        self.pins: dict[int, str] = {}  # explicit pins, and members of a pinned collocation group
        self.pin_all: str | None = None  # local_only runs
        self.group_of: dict[int, int] = {}
        self.group_members: list[list[int]] = []
        self.group_node: list[str | None] = []
        self.group_cost: list[dict] = []
        self.group_need: list[dict] = []
        self.retries: dict[int, int] = {}  # Function.max_retries overrides
        # scheduling
        self.inflight: dict[int, str] = {}
        # in flight, queued ahead of their resources on that node: they hold no claim yet
        self.ahead: dict[int, str] = {}
        self.queue: deque[int] = deque()  # ready, not yet tried
        self.parked: dict[Any, deque[int]] = {}  # tried, waiting for resources, by class
        self.avoid: dict[int, str] = {}  # retry prefers another node than this one
        self.lost: set[int] = set()  # completed, result gone, being recomputed
        self.waiters: dict[int, list[int]] = {}  # lost index -> functions waiting for it
        self.copies: dict[int, set[str]] = {}  # extra nodes holding a result
        # lost node -> functions pinned to it, held until it joins again (or the deadline);
        # pinned functions not yet ready are not listed, they are held once they are tried
        self.awaiting: dict[str, list[int]] = {}
        self.watched = False  # has an entry in the orchestrator's deadline heap
        self.nodes_used: set[str] = set()
        self.served = 0  # last placement round that started one of its tasks
        self.seq = 0  # submission order among the orchestrator's runs
        self._deps: tuple[list[int], list[int], list[int]] | None = None

    def __repr__(self) -> str:
        state = "finished" if self.finished else f"{len(self.inflight)} in flight"
        return f"<RunState {self.run_id!r} dag={self.dag_id!r} {self.n} functions, {state}>"

    # -- reading ---------------------------------------------------------------------------

    def location(self, i: int) -> str | None:
        """Node holding the result of function ``i``, or None if not computed (or lost)."""
        return self.locations[i]

    def attempt(self, i: int) -> int:
        """Attempt number of the latest dispatch of ``i`` (0 if never dispatched)."""
        return self.dispatch_no[i]

    def in_flight(self) -> dict[int, str]:
        """{index: node} of tasks dispatched and not yet finished (queued-ahead ones too)."""
        return dict(self.inflight)

    def queued_ahead(self) -> dict[int, str]:
        """{index: node} of in-flight tasks sent ahead of their resources, holding no claim."""
        return dict(self.ahead)

    def effective_inputs(self, i: int) -> list[int]:
        """Non-inline functions whose results task ``i`` fetches, looking through inline ones."""
        indptr, indices, inline = self._dependency_lists()
        out: list[int] = []
        seen: set[int] = set()
        stack = indices[indptr[i] : indptr[i + 1]][::-1]
        while stack:
            d = stack.pop()
            if inline[d]:
                stack.extend(indices[indptr[d] : indptr[d + 1]][::-1])
            elif d not in seen:
                seen.add(d)
                out.append(d)
        return out

    def allocations(self) -> dict[Hashable, str]:
        """{function_id: node holding its result} for every computed non-inline function."""
        ids = self.graph.ids
        return {ids[i]: node for i, node in enumerate(self.locations) if node is not None}

    @property
    def stats(self) -> dict[int, FunctionStats]:
        """{index: FunctionStats} for every computed non-inline function."""
        return {
            i: FunctionStats(node, self.failures[i] + 1, self.started[i], self.finished_at[i])
            for i, node in enumerate(self.locations)
            if node is not None
        }

    def function_stats(self) -> dict[Hashable, FunctionStats]:
        """{function_id: FunctionStats}, as ``ExecutionResult.stats`` shows them."""
        ids = self.graph.ids
        return {ids[i]: s for i, s in self.stats.items()}

    # -- bookkeeping -----------------------------------------------------------------------

    def retry_limit(self, i: int) -> int:
        return self.retries.get(i, self.max_retries)

    def has_work(self) -> bool:
        return bool(self.queue or self.parked)

    def room(self) -> int:
        """How many more tasks max_concurrency lets this run start now."""
        if self.max_concurrency is None:
            return 1 << 30
        return self.max_concurrency - len(self.inflight)

    def target(self, i: int) -> str | None:
        """The node ``i`` must run on (a pin, or where its collocation group went), if any."""
        if self.pin_all is not None:
            return self.pin_all
        pin = self.pins.get(i) if self.pins else None
        if pin is None and self.group_of:
            g = self.group_of.get(i)
            if g is not None:
                pin = self.group_node[g]
        return pin

    def needed(self, i: int) -> bool:
        """True while ``i`` still has to run: not completed, or completed and lost."""
        return i in self.lost or not self.tracker.is_complete(i)

    def succeeded(self, i: int, node: str, started: float, finished: float) -> None:
        """Record ``i``'s result on ``node`` and queue what became ready."""
        self.locations[i] = node
        self.started[i] = started
        self.finished_at[i] = finished
        if self.lost and i in self.lost:  # a recomputation: the tracker saw i complete before
            self.lost.discard(i)
            waiting = self.waiters.pop(i, None)
            if waiting:
                self.queue.extendleft(reversed(waiting))
        else:
            ready = self.tracker.complete(i)
            if len(ready):
                self.queue.extend(ready.tolist())

    @property
    def done(self) -> bool:
        """Every non-inline function completed and none of their results is lost."""
        return self.tracker.remaining == 0 and not self.lost

    def requeue(self, i: int) -> None:
        """Put ``i`` back at the head of the queue (a retry, or an attempt cut short)."""
        self.queue.appendleft(i)

    def waits_for_lost(self, i: int) -> bool:
        """If an input of ``i`` is being recomputed, make ``i`` wait for it and say so."""
        lost = self.lost
        for d in self.effective_inputs(i):
            if d in lost:
                self.waiters.setdefault(d, []).append(i)
                return True
        return False

    def lose_node(self, dead: str) -> tuple[list[int], list[int]]:
        """Forget ``dead``: what ran there and results only it held go back to the queue.

        Returns (moved, lost): tasks that were running or queued ahead there (their claims
        went with the node) and completed functions to recompute. Parked work is re-queued
        too, so it is classified again against the new membership.
        """
        moved = [i for i, node in self.inflight.items() if node == dead]
        ahead = self.ahead
        for i in moved:
            del self.inflight[i]
            self.recoveries[i] += 1
            if ahead:
                ahead.pop(i, None)
        for nodes in self.copies.values():
            nodes.discard(dead)
        lost = []
        locations = self.locations
        for i, node in enumerate(locations):
            if node == dead:
                alive = self.copies.get(i)
                if alive:
                    locations[i] = min(alive)
                    alive.discard(locations[i])
                else:
                    locations[i] = None
                    lost.append(i)
        pins = self.pins
        self.group_node = [  # a pinned group stays with its pin; the others are placed anew
            None if node == dead and self.group_members[g][0] not in pins else node
            for g, node in enumerate(self.group_node)
        ]
        self.lost.update(lost)
        parked = [i for dq in self.parked.values() for i in dq]
        self.parked.clear()
        self.queue.extendleft(reversed(moved + lost + parked))
        return moved, lost

    def stranded(self, dead: str) -> list[int]:
        """Functions still to run that are pinned to ``dead``."""
        if self.pin_all == dead:
            return [i for i in range(self.n) if not self.graph.inline[i] and self.needed(i)]
        return sorted(i for i, pin in self.pins.items() if pin == dead and self.needed(i))

    def await_node(self, dead: str) -> None:
        """Hold work pinned to ``dead`` until it joins again (``hold`` / ``node_back``).

        What is queued stays queued: placement holds it when it finds its node missing.
        """
        self.awaiting.setdefault(dead, [])

    def hold(self, i: int, node: str) -> bool:
        """Set ``i`` aside if ``node``, where it must run, is awaited; says whether it was."""
        held = self.awaiting.get(node)
        if held is None:
            return False
        held.append(i)
        return True

    def node_back(self, name: str) -> bool:
        """``name`` joined again: what was held for it goes to the head of the queue."""
        held = self.awaiting.pop(name, None)
        if held is None:
            return False
        self.queue.extendleft(reversed(held))
        return True

    def misfits(self, node: str, ledger: Any) -> list[int]:
        """Functions still to run, pinned to ``node`` (members of a pinned group too), whose
        cost does not fit ``node``'s total capacity (it came back smaller)."""
        if self.pin_all == node:
            return []
        fits: dict[int, bool] = {}
        bad = []
        for i in self.stranded(node):
            cost = self.costs.get(i)
            if not cost:
                continue
            key = id(cost)
            ok = fits.get(key)
            if ok is None:
                ok = fits[key] = node in ledger.fitting_nodes_total(cost)
            if not ok:
                bad.append(i)
        return bad

    def unplaceable(self, ledger: Any) -> list[int]:
        """Functions still to run whose cost fits no node's total, or whose group no node holds.

        Functions pinned to a node the run awaits are left out: they wait for that node.
        """
        if self.pin_all is not None:
            return []
        awaiting, pins = self.awaiting, self.pins
        fits: dict[int, bool] = {}
        bad = []
        for i, vec in self.vecs.items():
            if self.needed(i):
                if awaiting and pins.get(i) in awaiting:
                    continue
                ok = fits.get(id(vec))
                if ok is None:
                    ok = fits[id(vec)] = bool(ledger.fits_total(self.costs[i]))
                if not ok:
                    bad.append(i)
        for g, members in enumerate(self.group_members):
            if awaiting and pins.get(members[0]) in awaiting:
                continue
            needed = [i for i in members if self.needed(i)]
            need = self.group_need[g]
            if needed and self.group_node[g] is None and need and not ledger.fits_total(need):
                bad.extend(needed)
        return sorted(set(bad))

    def lose_result(self, j: int, live: Any, node: str | None = None) -> None:
        """The result of ``j`` could not be fetched (from ``node``): use a copy, or recompute it."""
        if j in self.lost or not self.tracker.is_complete(j):
            return
        if node is not None and node != self.locations[j]:
            return  # a report about where it used to be
        copies = self.copies.get(j, set())
        alive = sorted(n for n in copies if n in live and n != self.locations[j])
        if alive:
            self.locations[j] = alive[0]
            copies.discard(alive[0])
            return
        self.locations[j] = None
        self.lost.add(j)
        self.queue.appendleft(j)

    def add_copy(self, j: int, node: str) -> None:
        if self.locations[j] not in (None, node):
            self.copies.setdefault(j, set()).add(node)

    def end(self, error: HandoffError | None) -> None:
        """Mark the run over; whatever was queued or waiting is dropped."""
        self.inflight.clear()
        self.ahead.clear()
        self.queue.clear()
        self.parked.clear()
        self.waiters.clear()
        self.lost.clear()
        self.awaiting.clear()
        self.finished, self.error = True, error

    def placement_class(self, i: int) -> tuple:
        """Functions of one class fit or not alike: the same cost vector and target node.

        Functions placed among a subset of nodes (the first of a collocation group, a retry
        avoiding a node) are a class of their own.
        """
        target = self.target(i)
        if target is None and (i in self.group_of or i in self.avoid):
            return ("one", self.run_id, i)
        vec = self.vecs.get(i) if self.vecs else None
        return (0 if vec is None else id(vec), target)

    def park(self, i: int) -> tuple:
        """Set ``i`` aside until its class may fit; returns the class."""
        key = self.placement_class(i)
        dq = self.parked.get(key)
        if dq is None:
            dq = self.parked[key] = deque()
        dq.append(i)
        return key

    def candidates(
        self, i: int, vec: np.ndarray | None, ledger: Any, busy: dict, slots: dict
    ) -> list[str]:
        """Nodes with a free slot where ``i`` may go, best first by the run's strategy.

        For a restricted choice: the first member of a collocation group (nodes that fit its
        summed cost first, then those that fit each member), a retry (the node it failed on
        comes last), or a pick whose node had no free slot.
        """
        g = self.group_of.get(i)
        if g is not None:
            tiers = group_tiers(ledger, self.group_cost[g], self.group_need[g])
        else:
            tiers = [ledger.nodes]
        names: list[str] = []
        for tier in tiers:
            open_ = [n for n in tier if n in busy and busy[n] < slots[n]]
            names += order_nodes(ledger, self.strategy, vec, open_, busy)
        avoid = self.avoid.get(i)
        if avoid in names and len(names) > 1:
            names.remove(avoid)
            names.append(avoid)
        return names

    def _dependency_lists(self) -> tuple[list[int], list[int], list[int]]:
        if self._deps is None:
            g = self.graph
            self._deps = (g.indptr.tolist(), g.indices.tolist(), g.inline.tolist())
        return self._deps

    # -- placement rules -------------------------------------------------------------------

    def prepare(self, ledger: Any, local_node: str, vec_cache: dict) -> AllocationError | None:
        """Read costs, pins and collocation groups (``placement.read_placement``); the error
        that fails the run at start, if any."""
        return read_placement(self, ledger, local_node, vec_cache)

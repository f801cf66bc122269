"""One DAG run's state: one ``TaskState`` per function, the indexes over them, where work may go.

Everything is indexed by the function's position in ``CompiledGraph.ids`` (ints, not ids),
so the orchestrator's per-task work is list and dict operations on small ints. Each task's
status changes only through ``RunState.move`` (the table in ``handoff.scheduler.tasks``);
the queue, parked classes, in-flight map and the rest are indexes kept for speed, which
``validate_state`` checks against the statuses.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Hashable

import numpy as np

from handoff import _core
from handoff.dag import effective_inputs
from handoff.errors import AllocationError, HandoffError
from handoff.scheduler.events import FunctionStats, RunSpec
from handoff.scheduler.outcome import RunOutcome
from handoff.scheduler.placement import group_tiers, order_nodes, read_placement
from handoff.scheduler.tasks import TaskState, TaskStatus, transition

if TYPE_CHECKING:
    from handoff._core import ResourceLedger

__all__ = ["RunState"]


class RunState:
    """The orchestrator's record of one run; the node layer reads it, only the orchestrator writes.

    For the node layer: ``run_id``, ``dag_id``, ``graph``, ``functions``, ``strategy``,
    ``finished``, ``error``, ``submitted_at``, ``deadline``, ``task(i)`` (its ``TaskState``),
    ``location(i)``, ``attempt(i)``, ``effective_inputs(i)``, ``in_flight()``,
    ``allocations()``, ``stats`` (by index), ``function_stats()`` (by id), ``nodes_used``,
    ``awaiting`` (lost nodes the run waits for), ``queued_ahead()``, ``validate_state()``.
    The rest is the scheduler's bookkeeping.
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
        self.tasks = [TaskState(i, flag) for i, flag in enumerate(graph.inline.tolist())]
        # when each function's last attempt started and finished (arrays: 16 bytes a function)
        self.started_at = np.zeros(n)
        self.finished_at = np.zeros(n)
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
        # indexes over the task statuses, kept for speed (validate_state checks them)
        self.inflight: dict[int, str] = {}  # QUEUED_AHEAD and DISPATCHED -> their node
        self.queue: deque[int] = deque()  # READY, in the order they are tried
        self.parked: dict[Any, deque[int]] = {}  # PARKED, by placement class
        self.lost: set[int] = set()  # tasks with ``recompute`` set that are not DONE yet
        self.waiters: dict[int, list[int]] = {}  # lost index -> BLOCKED tasks waiting for it
        # lost node -> HELD tasks pinned to it, until it joins again (or the deadline);
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

    def task(self, i: int) -> TaskState:
        """The state of function ``i`` (read it; only the scheduler changes it)."""
        return self.tasks[i]

    def location(self, i: int) -> str | None:
        """Node holding the result of function ``i``, or None if not computed (or lost)."""
        return self.tasks[i].location

    def attempt(self, i: int) -> int:
        """Attempt number of the latest dispatch of ``i`` (0 if never dispatched)."""
        return self.tasks[i].attempt

    def in_flight(self) -> dict[int, str]:
        """{index: node} of tasks dispatched and not yet finished (queued-ahead ones too)."""
        return dict(self.inflight)

    def queued_ahead(self) -> dict[int, str]:
        """{index: node} of in-flight tasks sent ahead of their resources, holding no claim."""
        tasks, ahead = self.tasks, TaskStatus.QUEUED_AHEAD
        return {i: node for i, node in self.inflight.items() if tasks[i].status == ahead}

    def effective_inputs(self, i: int) -> list[int]:
        """Non-inline functions whose results task ``i`` fetches, looking through inline ones."""
        return effective_inputs(*self._dependency_lists(), i)

    def allocations(self) -> dict[Hashable, str]:
        """{function_id: node holding its result} for every computed non-inline function."""
        ids = self.graph.ids
        return {ids[t.index]: t.location for t in self.tasks if t.location is not None}

    @property
    def stats(self) -> dict[int, FunctionStats]:
        """{index: FunctionStats} for every computed non-inline function."""
        started, finished = self.started_at, self.finished_at
        return {
            t.index: FunctionStats(t.location, t.failures + 1, float(started[t.index]),
                                   float(finished[t.index]))
            for t in self.tasks
            if t.location is not None
        }

    def function_stats(self) -> dict[Hashable, FunctionStats]:
        """{function_id: FunctionStats}, as ``ExecutionResult.stats`` shows them."""
        ids = self.graph.ids
        return {ids[i]: s for i, s in self.stats.items()}

    def outcome(self) -> RunOutcome:
        """Where each result is, attempts and times, as compact arrays (``Placements`` and
        ``StatsView`` read them as ``ExecutionResult.allocations`` and ``.stats``)."""
        codes: dict[str | None, int] = {None: -1}
        node = np.fromiter(
            (codes.setdefault(t.location, len(codes) - 1) for t in self.tasks), np.int32, self.n
        )
        attempts = np.fromiter((t.failures + 1 for t in self.tasks), np.int32, self.n)
        names = [name for name in codes if name is not None]
        return RunOutcome(self.graph.ids, self.graph.index, names, node, attempts,
                          self.started_at, self.finished_at)

    def validate_state(self) -> None:
        """Check every task's status against the indexes kept beside it; AssertionError if not."""
        from handoff.scheduler.validation import check_run

        check_run(self)

    # -- bookkeeping -----------------------------------------------------------------------

    def move(self, i: int, new: TaskStatus) -> None:
        """Change task ``i``'s status along the transition table (``tasks.transition``)."""
        transition(self.tasks[i], new, self.run_id)

    def start(self) -> None:
        """Queue the functions whose inputs are complete from the start."""
        ready = self.tracker.initial().tolist()
        tasks, status = self.tasks, TaskStatus.READY
        for i in ready:
            transition(tasks[i], status, self.run_id)
        self.queue.extend(ready)

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

    def unpin(self, indices: list[int]) -> None:
        """Let these tasks run on any node (result-cache hits whose holder was lost)."""
        for i in indices:
            self.pins.pop(i, None)

    def needed(self, i: int) -> bool:
        """True while ``i`` still has to run: not completed, or completed and lost."""
        return self.tasks[i].status != TaskStatus.DONE

    def succeeded(self, i: int, node: str, started: float, finished: float) -> None:
        """Record ``i``'s result on ``node`` and queue what became ready."""
        task = self.tasks[i]
        transition(task, TaskStatus.DONE, self.run_id)
        task.location, task.node = node, None
        self.started_at[i], self.finished_at[i] = started, finished
        if task.recompute:  # the tracker saw i complete before
            task.recompute = False
            self.lost.discard(i)
            waiting = self.waiters.pop(i, None)
            if waiting:
                for w in waiting:
                    self.move(w, TaskStatus.READY)
                self.queue.extendleft(reversed(waiting))
        else:
            ready = self.tracker.complete(i)
            if len(ready):
                ready = ready.tolist()
                tasks, status = self.tasks, TaskStatus.READY
                for r in ready:
                    transition(tasks[r], status, self.run_id)
                self.queue.extend(ready)

    @property
    def done(self) -> bool:
        """Every non-inline function completed and none of their results is lost."""
        return self.tracker.remaining == 0 and not self.lost

    def requeue(self, i: int) -> None:
        """Put in-flight ``i`` back at the head of the queue (a retry, or an attempt cut short)."""
        del self.inflight[i]
        task = self.tasks[i]
        transition(task, TaskStatus.READY, self.run_id)
        task.node = None
        self.queue.appendleft(i)

    def waits_for_lost(self, i: int) -> bool:
        """If an input of ``i`` is being recomputed, make ``i`` wait for it and say so."""
        lost = self.lost
        for d in self.effective_inputs(i):
            if d in lost:
                self.move(i, TaskStatus.BLOCKED)
                self.waiters.setdefault(d, []).append(i)
                return True
        return False

    def lose_node(self, dead: str) -> tuple[list[int], list[int]]:
        """Forget ``dead``: what ran there and results it held go back to the queue.

        Returns (moved, lost): tasks that were running or queued ahead there (their claims
        went with the node) and completed functions to recompute. Parked work is re-queued
        too, so it is classified again against the new membership.
        """
        tasks, ready = self.tasks, TaskStatus.READY
        moved = [i for i, node in self.inflight.items() if node == dead]
        for i in moved:
            del self.inflight[i]
            task = tasks[i]
            transition(task, ready, self.run_id)
            task.node = None
            task.recoveries += 1
        lost = []
        for task in tasks:
            if task.location == dead:
                transition(task, ready, self.run_id)
                task.location = None
                task.recompute = True
                lost.append(task.index)
        pins = self.pins
        self.group_node = [  # a pinned group stays with its pin; the others are placed anew
            None if node == dead and self.group_members[g][0] not in pins else node
            for g, node in enumerate(self.group_node)
        ]
        self.lost.update(lost)
        parked = [i for dq in self.parked.values() for i in dq]
        self.parked.clear()
        for i in parked:
            transition(tasks[i], ready, self.run_id)
        self.queue.extendleft(reversed(moved + lost + parked))
        return moved, lost

    def stranded(self, dead: str) -> list[int]:
        """Functions still to run that are pinned to ``dead``."""
        if self.pin_all == dead:
            live = (TaskStatus.INLINE, TaskStatus.DONE)
            return [t.index for t in self.tasks if t.status not in live]
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
        self.move(i, TaskStatus.HELD)
        held.append(i)
        return True

    def node_back(self, name: str) -> bool:
        """``name`` joined again: what was held for it goes to the head of the queue."""
        held = self.awaiting.pop(name, None)
        if held is None:
            return False
        for i in held:
            self.move(i, TaskStatus.READY)
        self.queue.extendleft(reversed(held))
        return True

    def misfits(self, node: str, ledger: ResourceLedger) -> list[int]:
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

    def unplaceable(self, ledger: ResourceLedger) -> list[int]:
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

    def lose_result(self, j: int, node: str | None = None) -> None:
        """The result of ``j`` could not be fetched (from ``node``): recompute it."""
        task = self.tasks[j]
        if task.status != TaskStatus.DONE:
            return
        if node is not None and node != task.location:
            return  # a report about where it used to be
        transition(task, TaskStatus.READY, self.run_id)
        task.location = None
        task.recompute = True
        self.lost.add(j)
        self.queue.appendleft(j)

    def end(self, error: HandoffError | None, failed: int | None = None) -> None:
        """Mark the run over: task ``failed`` (whose attempts ran out) FAILED, every other
        task not DONE CANCELLED; whatever was queued or waiting is dropped."""
        S = TaskStatus
        for task in self.tasks:
            if task.status not in (S.DONE, S.INLINE):
                transition(task, S.FAILED if task.index == failed else S.CANCELLED, self.run_id)
                task.node = None
        self._close(error)

    def _close(self, error: HandoffError | None) -> None:
        """The run is over: whatever was in flight, queued or waiting is dropped."""
        self.inflight.clear()
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
        if target is None and (i in self.group_of or self.tasks[i].avoid is not None):
            return ("one", self.run_id, i)
        vec = self.vecs.get(i) if self.vecs else None
        return (0 if vec is None else id(vec), target)

    def park(self, i: int) -> tuple:
        """Set ``i`` aside until its class may fit; returns the class."""
        transition(self.tasks[i], TaskStatus.PARKED, self.run_id)
        key = self.placement_class(i)
        dq = self.parked.get(key)
        if dq is None:
            dq = self.parked[key] = deque()
        dq.append(i)
        return key

    def candidates(
        self, i: int, vec: np.ndarray | None, ledger: ResourceLedger, busy: dict, slots: dict
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
        avoid = self.tasks[i].avoid
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

    def prepare(
        self, ledger: ResourceLedger, local_node: str, vec_cache: dict
    ) -> AllocationError | None:
        """Read costs, pins and collocation groups (``placement.read_placement``); the error
        that fails the run at start, if any."""
        return read_placement(self, ledger, local_node, vec_cache)

"""Live runs: runs that accept new functions while they run (``handoff.Executor``).

A live run is a ``RunState`` whose graph grows: ``add`` appends functions whose inputs are
earlier functions of the run, and they share the orchestrator's placement, retries, node
loss recovery and cancellation with every other run. Unlike a DAG run, its functions are
independent: one that runs out of attempts (or fits no node, or is cancelled) settles
alone, with its dependents, and the run goes on. The run ends when it is closed and every
function has settled, or when it is cancelled as a whole (``CancelRun``).

Each settlement is reported once in ``LiveRun.settled`` as ``(index, error)`` (``error`` is
None on success); the node layer drains it after every orchestrator call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Hashable, Sequence

import numpy as np

from handoff.dag import CompiledGraph, Function
from handoff.errors import AllocationError, HandoffError, NodeLostError
from handoff.scheduler.events import CancelTasks, ErrorInfo, Instruction, RunSpec
from handoff.scheduler.placement import cost_key, shortfall, unfit_reason
from handoff.scheduler.run import RunState
from handoff.scheduler.tasks import TaskState, TaskStatus, transition

if TYPE_CHECKING:
    from handoff._core import ResourceLedger
    from handoff.scheduler.orchestrator import Orchestrator

__all__ = ["LiveFunction", "LiveRun", "empty_graph"]

S = TaskStatus
_IN_FLIGHT = (S.DISPATCHED, S.QUEUED_AHEAD)
_OVER = (S.FAILED, S.CANCELLED)


def empty_graph() -> CompiledGraph:
    """The graph a live run starts from."""
    return CompiledGraph(
        ids=[], index={}, indptr=np.zeros(1, dtype=np.int64),
        indices=np.zeros(0, dtype=np.int64), inline=np.zeros(0, dtype=np.uint8),
    )


class LiveFunction:
    """A submitted call as its live run reads it: ``Function``'s scheduling fields, slotted
    (the call itself travels as its payload; a ``Function`` costs several times more to make)."""

    __slots__ = ("id", "cost", "node", "max_retries", "timeout")
    argument_inclusion = "variadic"
    type = "regular"

    def __init__(
        self, id: Hashable, cost: dict | None = None, node: str | None = None,
        max_retries: int | None = None, timeout: float | None = None,
    ) -> None:
        self.id = id
        self.cost = cost
        self.node = node
        self.max_retries = max_retries
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"LiveFunction({self.id!r})"


class _NoInline:
    """The inline mask of a live graph: a live run has no inline functions."""

    def __init__(self, ids: list) -> None:
        self._ids = ids

    def __getitem__(self, i: int) -> int:
        return 0

    def __len__(self) -> int:
        return len(self._ids)

    def tolist(self) -> list[int]:
        return [0] * len(self._ids)

    def sum(self) -> int:
        return 0


class LiveGraph:
    """The growing graph of a live run: ids, their index, and each function's inputs."""

    def __init__(self) -> None:
        self.ids: list[Hashable] = []
        self.index: dict[Hashable, int] = {}
        self.deps: list[list[int]] = []
        self.inline = _NoInline(self.ids)


class _Ready(list):
    """Functions made ready, in the shape ``RunState.succeeded`` reads (``.tolist()``)."""

    def tolist(self) -> list:
        return self


class LiveTracker:
    """``ReadyTracker``'s role for a growing graph, in Python: the compiled tracker is sized
    once; here each function counts its incomplete inputs and each input lists its dependents."""

    def __init__(self) -> None:
        self.count: list[int] = []
        self.dependents: list[list[int] | None] = []
        self.done = bytearray()
        self.remaining = 0

    def add(self, deps: Sequence[int]) -> bool:
        """Add the next function with inputs ``deps``; says whether it is ready at once."""
        i = len(self.count)
        waiting = 0
        done, dependents = self.done, self.dependents
        for d in deps:
            if not done[d]:
                waiting += 1
                lst = dependents[d]
                if lst is None:
                    lst = dependents[d] = []
                lst.append(i)
        self.count.append(waiting)
        self.dependents.append(None)
        self.done.append(0)
        self.remaining += 1
        return waiting == 0

    def initial(self) -> _Ready:
        return _Ready()

    def complete(self, i: int) -> _Ready:
        self.done[i] = 1
        self.remaining -= 1
        out = _Ready()
        waiting = self.dependents[i]
        if waiting:
            count = self.count
            for c in waiting:
                count[c] -= 1
                if count[c] == 0:
                    out.append(c)
        return out

    def is_complete(self, i: int) -> bool:
        return bool(self.done[i])

    def drop(self, i: int) -> None:
        """``i`` settled without running: its inputs completing never make it ready."""
        self.count[i] = -(1 << 40)


class LiveRun(RunState):
    """A run that grows (see the module docstring)."""

    live = True

    def __init__(self, spec: RunSpec):
        super().__init__(spec)
        self.graph = LiveGraph()  # type: ignore[assignment]
        self.live_tracker = LiveTracker()
        self.tracker = self.live_tracker  # type: ignore[assignment]
        self.functions: list[Function] = []
        self.closed = False  # no more functions will be added; ends once all settled
        self.closing = False  # being ended as a whole
        self.open = 0  # functions not settled yet
        # (index, error, info) drained by the node layer; error None on success
        self.settled: list[tuple[int, BaseException | None, ErrorInfo | None]] = []
        self.errors: dict[int, BaseException] = {}
        self.relocated = False  # a settled function's lost value was computed again (or not)
        self._settled = bytearray()

    def __repr__(self) -> str:
        return f"<LiveRun {self.run_id!r} {self.n} functions, {self.open} open>"

    @property
    def done(self) -> bool:
        return self.closed and self.open == 0

    def end(self, error: HandoffError | None, failed: int | None = None) -> None:
        """``RunState.end``, leaving the functions that settled alone as they are."""
        for task in self.tasks:
            if task.status not in (S.DONE, S.FAILED, S.CANCELLED):
                transition(task, S.CANCELLED, self.run_id)
                task.node = None
        self._close(error)

    def effective_inputs(self, i: int) -> list[int]:
        return list(dict.fromkeys(self.graph.deps[i]))  # type: ignore[attr-defined]

    def succeeded(self, i: int, node: str, started: float, finished: float) -> None:
        super().succeeded(i, node, started, finished)
        if not self._settled[i]:
            self._settle(i, None)
        else:
            self.relocated = True

    def _settle(self, i: int, error: BaseException | None, info: ErrorInfo | None = None) -> None:
        self._settled[i] = 1
        self.open -= 1
        self.settled.append((i, error, info))
        if error is not None:
            self.errors[i] = error

    def is_settled(self, i: int) -> bool:
        return bool(self._settled[i])

    # -- growing ---------------------------------------------------------------------------

    def add(
        self, functions: Sequence[Function], deps: Sequence[Sequence[int]],
        ledger: ResourceLedger, vec_cache: dict,
    ) -> None:
        """Append ``functions`` (``deps[k]``: the indices of the k-th one's inputs, all lower
        than its own): each is queued when its inputs are complete, and settles at once with
        an error when it cannot run (an input failed, or its cost or pin fits no node)."""
        graph, tasks, tracker = self.graph, self.tasks, self.live_tracker
        ids, index, gdeps = graph.ids, graph.index, graph.deps  # type: ignore[attr-defined]
        queue, errors = self.queue, self.errors
        self._reserve(len(tasks) + len(functions))
        for fn, ins in zip(functions, deps):
            i = len(tasks)
            ids.append(fn.id)
            index[fn.id] = i
            gdeps.append(list(ins))
            self.functions.append(fn)
            task = TaskState(i)
            tasks.append(task)
            self._settled.append(0)
            self.open += 1
            self.n += 1
            ready = tracker.add(ins)
            error: BaseException | None = None
            if ins and errors:
                error = next((errors[d] for d in ins if d in errors), None)
            if error is None and (fn.cost or fn.node is not None or fn.max_retries is not None):
                error = self._read_placement(i, fn, ledger, vec_cache)
            if error is not None:
                tracker.drop(i)
                tracker.complete(i)  # nothing waits on it: dependents settle with its error
                transition(task, S.CANCELLED, self.run_id)
                self._settle(i, error)
            elif ready:
                transition(task, S.READY, self.run_id)
                queue.append(i)

    def _reserve(self, n: int) -> None:
        """Room for ``n`` functions in the per-function arrays (doubling, so appends are
        amortized O(1))."""
        size = len(self.started_at)
        if n > size:
            size = max(n, 2 * size, 64)
            for name in ("started_at", "finished_at"):
                old = getattr(self, name)
                grown = np.zeros(size)
                grown[: len(old)] = old
                setattr(self, name, grown)

    def _read_placement(
        self, i: int, fn: Function, ledger: ResourceLedger, vec_cache: dict
    ) -> AllocationError | None:
        """``placement.read_placement`` for one function of a live run (no collocation)."""
        if fn.max_retries is not None:
            self.retries[i] = fn.max_retries
        cost, node = fn.cost, fn.node
        key = cost_key(cost) if cost else ()
        if key:
            vec = vec_cache.get(key)
            if vec is None:
                vec = vec_cache[key] = ledger.resource_vector(dict(key))
            self.vecs[i] = vec
            self.costs[i] = dict(key)
        if node is not None:
            if not isinstance(node, str) or not ledger.has_node(node):
                return AllocationError(
                    fn.id, cost, ledger.capacities(),
                    reason=f"it is pinned to node {node!r}, which is not in the cluster",
                )
            self.pins[i] = node
        if key:
            nodes = ledger.fitting_nodes_total(dict(key))
            if not nodes:
                capacities = ledger.capacities()
                return AllocationError(fn.id, cost, capacities, reason=unfit_reason(cost, capacities))
            if node is not None and node not in nodes:
                capacities = ledger.capacities()
                return AllocationError(
                    fn.id, cost, capacities,
                    reason=f"it is pinned to node {node!r}, whose total capacity is too small "
                    f"(node {node!r} has {shortfall(cost, capacities[node])})",
                )
        return None

    # -- settling alone --------------------------------------------------------------------

    def drop(self, orch: Orchestrator, i: int, status: TaskStatus, out: list[Instruction]) -> None:
        """Take ``i`` out of whatever holds it (queue, parked class, waiters, held work, or
        a node: its claim is released and the node told to stop it), then set ``status``."""
        task = self.tasks[i]
        st = task.status
        if st != S.DONE:
            self.live_tracker.drop(i)
        if st == S.READY:
            self.queue.remove(i)
        elif st == S.PARKED:
            for key, dq in list(self.parked.items()):
                if i in dq:
                    dq.remove(i)
                    if not dq:
                        del self.parked[key]
                    break
        elif st == S.BLOCKED:
            for d, waiting in list(self.waiters.items()):
                if i in waiting:
                    waiting.remove(i)
                    if not waiting:
                        del self.waiters[d]
        elif st == S.HELD:
            for held in self.awaiting.values():
                if i in held:
                    held.remove(i)
        elif st in _IN_FLIGHT:
            node = self.inflight.get(i)
            if node is not None:
                orch.placer.release(self, i, node)
                del self.inflight[i]
                out.append(CancelTasks(self.run_id, node, [i]))
        if task.recompute:
            task.recompute = False
            self.lost.discard(i)
        task.node = None
        if st == S.DONE or st in _OVER:
            return  # a recompute of a settled function keeps its result's record; or withdrawn
        transition(task, status, self.run_id)

    def fail(
        self, orch: Orchestrator, indices: Sequence[int], error: BaseException,
        info: ErrorInfo | None = None, failed: int | None = None,
    ) -> list[Instruction]:
        """Settle ``indices`` (``failed``: the one whose attempts ran out) and, transitively,
        their unsettled dependents with ``error``."""
        out: list[Instruction] = []
        # (index, orphaned): orphaned ones waited for a lost value that can no longer come back
        stack = [(i, False) for i in indices]
        dependents = self.live_tracker.dependents
        while stack:
            i, orphaned = stack.pop()
            if self._settled[i]:
                if i == failed or orphaned:  # its lost value's recompute failed, or cannot run
                    self.drop(orch, i, S.FAILED if i == failed else S.CANCELLED, out)
                    stack.extend((w, True) for w in self.waiters.pop(i, ()))
                    self.relocated = True  # readers waiting for the value learn it is gone
                continue  # (any other lost value being recomputed stays: others wait for it)
            self.drop(orch, i, S.FAILED if i == failed else S.CANCELLED, out)
            self._settle(i, error, info)
            more = dependents[i]
            if more:
                stack.extend((d, False) for d in more)
        return out

    def withdraw(self, orch: Orchestrator, i: int) -> None:
        """``i`` was placed but its caller cancelled it before it was sent: release its claim
        and slot, with no message to its node (which never heard of it)."""
        node = self.inflight.pop(i, None)
        if node is not None:
            orch.placer.release(self, i, node)
        task = self.tasks[i]
        task.node = None
        transition(task, S.CANCELLED, self.run_id)


def failed_indices(run: LiveRun, error: HandoffError | None, failed: int | None) -> list[int] | None:
    """The functions of a live run an error that would end a DAG run belongs to; None when it
    belongs to the run as a whole (a cancel, a timeout, a node shutting down)."""
    if failed is not None:
        return [failed]
    index = run.graph.index
    if isinstance(error, NodeLostError) and error.function_ids:
        return [index[f] for f in error.function_ids if f in index]
    if isinstance(error, AllocationError) and error.function_id in index:
        return [index[error.function_id]]
    return None

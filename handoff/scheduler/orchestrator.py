"""The Orchestrator: every run driven by one node, as a pure state machine.

Events in, instructions out; no sockets, threads or clocks. How work is placed is
described in the package docstring (``handoff.scheduler``). The orchestrator owns the runs
and routes events; its parts own their own state: ``NodeSlots`` (the live nodes' slots and
queued-ahead queues, ``handoff.scheduler.nodes``), ``Placer`` (placement rounds,
``handoff.scheduler.placer``) and each run's ``RunState`` with one ``TaskState`` per task.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any, Callable

from handoff import _core
from handoff.errors import AllocationError, FunctionError, HandoffError, NodeLostError
from handoff.scheduler.events import (
    CancelRun,
    CancelTasks,
    ErrorInfo,
    Instruction,
    NodeJoined,
    NodeLost,
    NodeUpdated,
    ReleaseRun,
    ResultLost,
    RunFinished,
    RunSpec,
    TaskFinished,
    Tick,
)
from handoff.scheduler.nodes import NodeSlots
from handoff.scheduler.placement import shortfall
from handoff.scheduler.placer import Placer
from handoff.scheduler.run import RunState
from handoff.scheduler import live

if TYPE_CHECKING:
    from handoff._core import ResourceLedger

__all__ = ["DEFAULT_LOOKAHEAD", "DEFAULT_SLOTS", "Orchestrator"]

DEFAULT_SLOTS = 64
DEFAULT_LOOKAHEAD = 1
_NO_TIMEOUT = "they are pinned to it, and the run has no timeout to wait in for it to come back"
_TIMED_OUT = "they are pinned to it, and it did not come back before the run's timeout"


class Orchestrator:
    """All runs orchestrated by one node, sharing one cluster ResourceLedger.

    Node membership changes reach the ledger through ``handle(NodeJoined/NodeUpdated/
    NodeLost)``; nodes registered directly on the ledger are picked up at the next
    ``submit``. Finished runs stay readable through ``run()`` until ``forget()``.

    ``lookahead``: per node, how many costed tasks may be sent ahead of their resources
    ("queued ahead"; 0 turns that off). See the package docstring. ``debug_state``: check
    ``validate_state()`` after every ``submit`` and ``handle`` (slow: for debugging).
    """

    def __init__(
        self,
        ledger: ResourceLedger,
        local_node: str,
        *,
        default_slots: int = DEFAULT_SLOTS,
        lookahead: int = DEFAULT_LOOKAHEAD,
        debug_state: bool = False,
    ):
        if default_slots < 1:
            raise ValueError(f"default_slots must be >= 1, got {default_slots}")
        if lookahead < 0:
            raise ValueError(f"lookahead must be >= 0, got {lookahead}")
        self.ledger = ledger
        self.local_node = local_node
        self.nodes = NodeSlots(default_slots)
        self.placer = Placer(ledger, self.nodes, lookahead)
        self.debug_state = debug_state
        self._runs: dict[str, RunState] = {}
        self._rotation: list[RunState] = []  # unfinished runs, oldest first
        self._submitted = 0
        self._vec_cache: dict[tuple, Any] = {}  # cost key -> resource vector, shared by runs
        # (deadline, seq, run) of runs that held work for a lost node; stale entries (the
        # run finished, or its nodes came back) are dropped when their deadline passes
        self._deadlines: list[tuple[float, int, RunState]] = []
        self._handlers: dict[type, Callable[[Any], list[Instruction]]] = {
            TaskFinished: self._on_task_finished,
            NodeJoined: self._on_node_joined,
            NodeUpdated: self._on_node_joined,
            NodeLost: self._on_node_lost,
            Tick: self._on_tick,
            CancelRun: self._on_cancel_run,
            ResultLost: self._on_result_lost,
        }
        self._sync_nodes()

    # -- public ----------------------------------------------------------------------------

    def submit(self, spec: RunSpec) -> list[Instruction]:
        """Start a run; returns its first Dispatches, or RunFinished if it cannot start.

        A function that fits no node (or a pin/collocation that cannot be honoured) ends
        the run at once with ``RunFinished(run_id, AllocationError)``.
        """
        if spec.run_id in self._runs:
            raise ValueError(f"run id {spec.run_id!r} is already in use")
        if spec.strategy not in _core.STRATEGIES:
            raise ValueError(
                f"unknown allocation strategy {spec.strategy!r}; "
                f"valid: {', '.join(_core.STRATEGIES)}"
            )
        out = self._sync_nodes()
        run = RunState(spec)
        self._runs[spec.run_id] = run
        error = run.prepare(self.ledger, self.local_node, self._vec_cache)
        if error is not None or run.done:  # unplaceable, or nothing to run
            run.end(error)
            return out + [RunFinished(run.run_id, error)]
        run.start()
        self._submitted += 1
        run.seq = self._submitted
        self._rotation.append(run)
        out += self.placer.pump(self._rotation)
        if self.debug_state:
            self.validate_state()
        return out

    # -- live runs (``handoff.scheduler.live``: functions added while the run goes on) ------

    def submit_live(self, spec: RunSpec) -> list[Instruction]:
        """Start a live run with no functions yet; ``extend`` adds them."""
        if spec.run_id in self._runs:
            raise ValueError(f"run id {spec.run_id!r} is already in use")
        if spec.strategy not in _core.STRATEGIES:
            raise ValueError(
                f"unknown allocation strategy {spec.strategy!r}; "
                f"valid: {', '.join(_core.STRATEGIES)}"
            )
        out = self._sync_nodes()
        run = live.LiveRun(spec)
        self._runs[spec.run_id] = run
        self._submitted += 1
        run.seq = self._submitted
        self._rotation.append(run)
        return out

    def extend(self, run_id: str, functions: list, deps: list[list[int]]) -> list[Instruction]:
        """Add functions to live run ``run_id`` (see ``LiveRun.add``) and place what is ready."""
        run = self._runs[run_id]
        assert isinstance(run, live.LiveRun) and not run.finished, f"{run_id!r} is not a live run"
        run.add(functions, deps, self.ledger, self._vec_cache)
        return self.handle()

    def settle_live(
        self, run_id: str, indices: list[int], error: BaseException, withdrawn: bool = False
    ) -> list[Instruction]:
        """Settle functions of live run ``run_id`` (and their dependents) with ``error``: a
        cancel by the caller. ``withdrawn``: they were placed but never sent, so no node
        hears of it."""
        run = self._active(run_id)
        if not isinstance(run, live.LiveRun):
            return []
        out: list[Instruction] = []
        if withdrawn:
            for i in indices:
                run.withdraw(self, i)
        out += run.fail(self, indices, error)
        if run.done:
            out += self._finish(run, None)
        return out + self.handle()

    def close_live(self, run_id: str) -> list[Instruction]:
        """No more functions will be added: the live run ends once every one has settled."""
        run = self._active(run_id)
        if not isinstance(run, live.LiveRun):
            return []
        run.closed = True
        return self._finish(run, None) if run.done else []

    def handle(self, *events: Any) -> list[Instruction]:
        """Apply events in order, then place whatever became placeable; returns instructions.

        A ``Tick`` that ends no run changes nothing, so it costs O(1).
        """
        out: list[Instruction] = []
        handlers = self._handlers
        pump = not events
        for event in events:
            handler = handlers.get(type(event))
            if handler is None:
                raise TypeError(f"the orchestrator does not handle {type(event).__name__}")
            got = handler(event)
            if got:
                out.extend(got)
                pump = True
            elif type(event) is not Tick:
                pump = True
        if pump:
            out.extend(self.placer.pump(self._rotation))
        if self.debug_state:
            self.validate_state()
        return out

    def run(self, run_id: str) -> RunState:
        """The state of a run (KeyError if unknown or forgotten)."""
        return self._runs[run_id]

    def forget(self, run_id: str) -> None:
        """Drop a finished run's state once the node layer has read its result."""
        run = self._runs.get(run_id)
        if run is not None and run.finished:
            del self._runs[run_id]

    def set_node_slots(self, name: str, slots: int) -> list[Instruction]:
        """Let ``name`` hold up to ``slots`` in-flight tasks; returns Dispatches it allows now."""
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.nodes.set_slots(name, slots)
        return self.placer.pump(self._rotation)

    def node_load(self) -> dict[str, int]:
        """{live node: in-flight tasks from this orchestrator} (queued-ahead ones included)."""
        return dict(self.nodes.busy)

    def queued_ahead(self) -> dict[str, int]:
        """{live node: tasks queued ahead there} for nodes that have some."""
        return {node: len(tasks) for node, tasks in self.nodes.ahead.items() if tasks}

    def waiting(self, run_id: str, limit: int | None = None) -> dict[Any, str]:
        """{function_id: why it is not running yet, node by node} for ready work of a run
        (the first ``limit`` of them, in function order, if given)."""
        from handoff.scheduler.waiting import waiting_reasons

        return waiting_reasons(self, self._runs[run_id], limit)

    @property
    def lookahead(self) -> int:
        return self.placer.lookahead

    def validate_state(self) -> None:
        """Check every run's task states and the node counters against each other.

        Raises AssertionError naming what disagrees. Tests call it after every step; the
        node calls it after every ``handle`` when ``HANDOFF_DEBUG_STATE=1``.
        """
        from handoff.scheduler.validation import check_orchestrator

        check_orchestrator(self)

    @property
    def active_runs(self) -> list[str]:
        return [run.run_id for run in self._rotation]

    @property
    def next_deadline(self) -> float | None:
        """The earliest deadline a ``Tick`` may act on, or None when no run waits for a node.

        (Possibly one that no longer matters: the node layer may Tick needlessly, never late.)
        """
        return self._deadlines[0][0] if self._deadlines else None

    # -- nodes -----------------------------------------------------------------------------

    def _sync_nodes(self) -> list[Instruction]:
        """Mirror the ledger's node list; nodes it no longer has count as lost."""
        names = self.ledger.nodes
        out: list[Instruction] = []
        for name in self.nodes.gone(names):
            out.extend(self._lose_node(name, None))
        for name in self.nodes.adopt(names):
            out.extend(self._node_back(name))
        return out

    def _on_node_joined(self, ev: NodeJoined | NodeUpdated) -> list[Instruction]:
        self.ledger.register(ev.name, ev.caps)
        if self.nodes.add(ev.name):
            return self._node_back(ev.name)
        return []

    def _node_back(self, name: str) -> list[Instruction]:
        """``name`` is live (again): work held for it is queued, unless it no longer fits."""
        out: list[Instruction] = []
        for run in list(self._rotation):
            if not run.awaiting or not run.node_back(name):
                continue
            misfits = run.misfits(name, self.ledger)
            if misfits:
                i = misfits[0]
                capacities = self.ledger.capacities()
                error = AllocationError(
                    run.graph.ids[i],
                    run.costs[i],
                    capacities,
                    reason=f"it is pinned to node {name!r}, which came back with too small "
                    f"a total capacity (node {name!r} has "
                    f"{shortfall(run.costs[i], capacities[name])})",
                )
                out.extend(self._finish(run, error))
        return out

    def _on_node_lost(self, ev: NodeLost) -> list[Instruction]:
        if self.ledger.has_node(ev.name):
            self.ledger.unregister(ev.name)
        if ev.name not in self.nodes:
            return []
        return self._lose_node(ev.name, ev.now)

    def _lose_node(self, dead: str, now: float | None) -> list[Instruction]:
        self.nodes.remove(dead)  # its runs re-place its queued-ahead tasks (RunState.lose_node)
        out: list[Instruction] = []
        for run in list(self._rotation):
            out.extend(self._recover(run, dead, now))
        return out

    def _recover(self, run: RunState, dead: str, now: float | None) -> list[Instruction]:
        """Re-place ``run``'s work from ``dead``; fail it if what is left cannot run anywhere.

        Work pinned to ``dead`` is held for it while the run's deadline is ahead (``now``
        is None when the loss was noticed without a time: the next Tick decides).
        """
        run.lose_node(dead)
        ids = run.graph.ids
        stranded = run.stranded(dead)
        if stranded:
            deadline = run.deadline
            if deadline is None:
                return self._finish(
                    run, NodeLostError(dead, [ids[i] for i in stranded], _NO_TIMEOUT)
                )
            if now is not None and now >= deadline:
                return self._finish(
                    run, NodeLostError(dead, [ids[i] for i in stranded], _TIMED_OUT)
                )
            run.await_node(dead)
            if not run.watched:
                run.watched = True
                heapq.heappush(self._deadlines, (deadline, run.seq, run))
        unplaceable = run.unplaceable(self.ledger)
        if unplaceable:
            reason = "after losing it, no live node has the total capacity to run them"
            return self._finish(run, NodeLostError(dead, [ids[i] for i in unplaceable], reason))
        return []

    # -- events ----------------------------------------------------------------------------

    def _active(self, run_id: str) -> RunState | None:
        run = self._runs.get(run_id)
        return None if run is None or run.finished else run

    def _on_task_finished(self, ev: TaskFinished) -> list[Instruction]:
        run = self._active(ev.run_id)
        if run is None:
            return []
        i = ev.index
        node = run.inflight.get(i)
        if node is None or run.tasks[i].attempt != ev.attempt:
            return []  # stale: an older attempt, or the run moved on
        self.placer.release(run, i, node)
        if not ev.ok:
            return self._attempt_failed(run, i, node, ev.error)
        del run.inflight[i]
        run.succeeded(i, node, ev.started, ev.finished)
        return self._finish(run, None) if run.done else []

    def _attempt_failed(
        self, run: RunState, i: int, node: str, info: ErrorInfo | None
    ) -> list[Instruction]:
        task = run.tasks[i]
        task.failures += 1
        if task.failures <= run.retry_limit(i):
            run.requeue(i)
            task.avoid = node
            return []
        del run.inflight[i]
        info = info or ErrorInfo("UnknownError", "the attempt failed without an error report")
        error = FunctionError(
            run.graph.ids[i], node, task.failures, info.exc_type, info.message, info.traceback
        )
        return self._finish(run, error, info, failed=i)

    def _on_tick(self, ev: Tick) -> list[Instruction]:
        """Fail runs whose work waited for a lost node past their deadline."""
        heap = self._deadlines
        if not heap or heap[0][0] > ev.now:
            return []
        out: list[Instruction] = []
        while heap and heap[0][0] <= ev.now:
            _, _, run = heapq.heappop(heap)
            run.watched = False
            if run.finished or not run.awaiting:
                continue  # done, or every node it waited for came back
            dead = next(iter(run.awaiting))  # the first lost
            reason = _TIMED_OUT
            others = sorted(n for n in run.awaiting if n != dead)
            if others:
                reason += f" (nor did {', '.join(map(repr, others))})"
            ids = run.graph.ids
            out.extend(
                self._finish(run, NodeLostError(dead, [ids[i] for i in run.stranded(dead)], reason))
            )
        return out

    def _on_cancel_run(self, ev: CancelRun) -> list[Instruction]:
        run = self._active(ev.run_id)
        return [] if run is None else self._finish(run, ev.reason)

    def _on_result_lost(self, ev: ResultLost) -> list[Instruction]:
        run = self._active(ev.run_id)
        if run is None:
            return []
        c = ev.consumer
        if c is not None:
            node = run.inflight.get(c)
            if node is None or run.tasks[c].attempt != ev.attempt:
                return []  # a stale attempt's report
            self.placer.release(run, c, node)
            run.tasks[c].recoveries += 1
            run.requeue(c)  # when next tried, it waits for the recompute
        run.lose_result(ev.index, ev.node)
        return []

    # -- ending ----------------------------------------------------------------------------

    def _finish(
        self,
        run: RunState,
        error: HandoffError | None,
        info: ErrorInfo | None = None,
        failed: int | None = None,
    ) -> list[Instruction]:
        """End ``run`` (``failed``: the task whose attempts ran out): cancel and release
        whatever is in flight, then say so. In a live run, an error that belongs to some
        of its functions settles only them (``live.LiveRun.fail``)."""
        if error is not None and isinstance(run, live.LiveRun) and not run.closing:
            indices = live.failed_indices(run, error, failed)
            if indices is not None:
                settled = run.fail(self, indices, error, info, failed)
                return settled + self._finish(run, None) if run.done else settled
            run.closing = True
        out: list[Instruction] = []
        by_node: dict[str, list[int]] = {}
        release = self.placer.release
        for i, node in run.inflight.items():
            by_node.setdefault(node, []).append(i)
            release(run, i, node)
        for node, indices in by_node.items():
            out.append(CancelTasks(run.run_id, node, sorted(indices)))
        run.end(error, failed)
        self._rotation.remove(run)
        out.append(RunFinished(run.run_id, error, info))
        if run.nodes_used:
            out.append(ReleaseRun(run.run_id, sorted(run.nodes_used)))
        return out

"""How events move runs along: tasks finish or fail, nodes come and go, deadlines pass, runs end.

``Lifecycle`` is a mixin of ``Orchestrator`` (``handoff.scheduler.orchestrator``), which owns
the state it works on and places the work these handlers make ready.
"""

from __future__ import annotations

import heapq
from typing import Any

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
    ResultCopied,
    ResultLost,
    RunFinished,
    TaskFinished,
    Tick,
)
from handoff.scheduler.run import RunState

__all__ = ["Lifecycle"]

_NO_TIMEOUT = "they are pinned to it, and the run has no timeout to wait in for it to come back"
_TIMED_OUT = "they are pinned to it, and it did not come back before the run's timeout"


class Lifecycle:
    """Node membership, event handlers and run endings of ``Orchestrator`` (its state, below)."""

    ledger: Any
    default_slots: int
    _runs: dict[str, RunState]
    _rotation: list[RunState]
    _slot_setting: dict[str, int]
    _order: list[str]
    _slots: dict[str, int]
    _busy: dict[str, int]
    _free_slots: int
    _ahead: dict[str, list[tuple[RunState, int]]]
    _freed: set[str]
    _fit_cache: dict[int, list[str]]
    _deadlines: list[tuple[float, int, RunState]]

    # -- nodes -----------------------------------------------------------------------------

    def _sync_nodes(self) -> list[Instruction]:
        """Mirror the ledger's node list; nodes it no longer has count as lost."""
        names = self.ledger.nodes
        present = set(names)
        out: list[Instruction] = []
        self._fit_cache.clear()
        for name in [n for n in self._order if n not in present]:
            out.extend(self._lose_node(name, None))
        back = []
        for name in names:
            if name not in self._busy:
                self._busy[name] = 0
                self._slots[name] = self._slot_setting.get(name, self.default_slots)
                back.append(name)
        self._order = list(names)
        self._recount_free_slots()
        for name in back:
            out.extend(self._node_back(name))
        return out

    def _recount_free_slots(self) -> None:
        busy = self._busy
        self._free_slots = sum(max(0, s - busy[n]) for n, s in self._slots.items())

    def _on_node_joined(self, ev: NodeJoined | NodeUpdated) -> list[Instruction]:
        self.ledger.register(ev.name, ev.caps)
        self._fit_cache.clear()
        if self._ahead.get(ev.name):
            self._freed.add(ev.name)  # it may have grown
        if ev.name not in self._busy:
            self._order.append(ev.name)
            self._busy[ev.name] = 0
            self._slots[ev.name] = self._slot_setting.get(ev.name, self.default_slots)
            self._recount_free_slots()
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
                error = AllocationError(
                    run.graph.ids[i],
                    run.costs[i],
                    self.ledger.capacities(),
                    reason=f"it is pinned to node {name!r}, which came back with too small "
                    "a total capacity",
                )
                out.extend(self._finish(run, error))
        return out

    def _on_node_lost(self, ev: NodeLost) -> list[Instruction]:
        if self.ledger.has_node(ev.name):
            self.ledger.unregister(ev.name)
        if ev.name not in self._busy:
            return []
        return self._lose_node(ev.name, ev.now)

    def _lose_node(self, dead: str, now: float | None) -> list[Instruction]:
        self._order.remove(dead)
        del self._busy[dead], self._slots[dead]
        self._ahead.pop(dead, None)  # its runs re-place these (RunState.lose_node)
        self._freed.discard(dead)
        self._fit_cache.clear()
        self._recount_free_slots()
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
        if node is None or run.dispatch_no[i] != ev.attempt:
            return []  # stale: an older attempt, or the run moved on
        del run.inflight[i]
        self._release(run, i, node)
        if not ev.ok:
            return self._attempt_failed(run, i, node, ev.error)
        run.succeeded(i, node, ev.started, ev.finished)
        return self._finish(run, None) if run.done else []

    def _attempt_failed(
        self, run: RunState, i: int, node: str, info: ErrorInfo | None
    ) -> list[Instruction]:
        run.failures[i] += 1
        if run.failures[i] <= run.retry_limit(i):
            run.avoid[i] = node
            run.requeue(i)
            return []
        info = info or ErrorInfo("UnknownError", "the attempt failed without an error report")
        error = FunctionError(
            run.graph.ids[i], node, run.failures[i], info.exc_type, info.message, info.traceback
        )
        return self._finish(run, error, info)

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
            if node is None or run.dispatch_no[c] != ev.attempt:
                return []  # a stale attempt's report
            del run.inflight[c]
            self._release(run, c, node)
            run.recoveries[c] += 1
            run.requeue(c)  # when next tried, it waits for the recompute
        run.lose_result(ev.index, self._busy, ev.node)
        return []

    def _on_result_copied(self, ev: ResultCopied) -> list[Instruction]:
        run = self._active(ev.run_id)
        if run is not None:
            run.add_copy(ev.index, ev.node)
        return []

    # -- ending ----------------------------------------------------------------------------

    def _release(self, run: RunState, i: int, node: str) -> None:
        """Give back the claim and the slot of ``i``'s attempt on ``node``.

        A queued-ahead attempt holds no claim. Either way the node may now start a task
        queued ahead there, so its queue is looked at before the next placement.
        """
        ahead = run.ahead.pop(i, None) if run.ahead else None
        busy = self._busy.get(node)
        if busy is None:
            return  # the node is gone, and its claims with it
        queue = self._ahead.get(node)
        if ahead is not None:
            queue.remove((run, i))
        else:
            vec = run.vecs.get(i) if run.vecs else None
            if vec is not None and run.pin_all is None:
                ledger = self.ledger
                ledger.release_vec(ledger.node_index(node), vec)
        if queue:
            self._freed.add(node)
        self._busy[node] = busy - 1
        if busy <= self._slots[node]:
            self._free_slots += 1

    def _finish(
        self, run: RunState, error: HandoffError | None, info: ErrorInfo | None = None
    ) -> list[Instruction]:
        """End ``run``: cancel and release whatever is in flight, then say so."""
        out: list[Instruction] = []
        by_node: dict[str, list[int]] = {}
        for i, node in run.inflight.items():
            by_node.setdefault(node, []).append(i)
            self._release(run, i, node)
        for node, indices in by_node.items():
            out.append(CancelTasks(run.run_id, node, sorted(indices)))
        run.end(error)
        self._rotation.remove(run)
        out.append(RunFinished(run.run_id, error, info))
        if run.nodes_used:
            out.append(ReleaseRun(run.run_id, sorted(run.nodes_used)))
        return out

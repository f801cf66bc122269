"""The Orchestrator: every run driven by one node, as a pure state machine.

Events in, instructions out; no sockets, threads or clocks. How work is placed is
described in the package docstring (``handoff.scheduler``). This module holds the public
API and placement; how events move runs along (tasks ending, nodes joining and leaving,
deadlines, run endings) is in ``handoff.scheduler.lifecycle``.
"""

from __future__ import annotations

import heapq
from typing import Any, Callable

import numpy as np

from handoff import _core
from handoff.scheduler.events import (
    CancelRun,
    Dispatch,
    Instruction,
    NodeJoined,
    NodeLost,
    NodeUpdated,
    ResultCopied,
    ResultLost,
    RunFinished,
    RunSpec,
    TaskFinished,
    Tick,
)
from handoff.scheduler.lifecycle import Lifecycle
from handoff.scheduler.placement import group_tiers, order_nodes
from handoff.scheduler.run import RunState

__all__ = ["DEFAULT_LOOKAHEAD", "DEFAULT_SLOTS", "Orchestrator"]

DEFAULT_SLOTS = 64
DEFAULT_LOOKAHEAD = 1
_FIRST_TRY = 4  # functions of a parked class tried first


def _turn_order(run: RunState) -> tuple[int, int]:
    return (run.served, run.seq)


class Orchestrator(Lifecycle):
    """All runs orchestrated by one node, sharing one cluster ResourceLedger.

    Node membership changes reach the ledger through ``handle(NodeJoined/NodeUpdated/
    NodeLost)``; nodes registered directly on the ledger are picked up at the next
    ``submit``. Finished runs stay readable through ``run()`` until ``forget()``.

    ``lookahead``: per node, how many costed tasks may be sent ahead of their resources
    ("queued ahead"; 0 turns that off). See the package docstring.
    """

    def __init__(
        self,
        ledger: Any,
        local_node: str,
        *,
        default_slots: int = DEFAULT_SLOTS,
        lookahead: int = DEFAULT_LOOKAHEAD,
    ):
        if default_slots < 1:
            raise ValueError(f"default_slots must be >= 1, got {default_slots}")
        if lookahead < 0:
            raise ValueError(f"lookahead must be >= 0, got {lookahead}")
        self.ledger = ledger
        self.local_node = local_node
        self.default_slots = default_slots
        self.lookahead = lookahead
        self._runs: dict[str, RunState] = {}
        self._rotation: list[RunState] = []  # unfinished runs, oldest first
        self._round = 0  # placement rounds so far; a run remembers the last that served it
        self._submitted = 0
        self._slot_setting: dict[str, int] = {}
        self._order: list[str] = []  # live nodes, in ledger order
        self._slots: dict[str, int] = {}  # live node -> slots
        self._busy: dict[str, int] = {}  # live node -> in-flight tasks from this orchestrator
        self._free_slots = 0
        self._vec_cache: dict[tuple, np.ndarray] = {}
        self._batches: dict[tuple[RunState, str], list[tuple[int, int]]] = {}
        # live node -> its queued-ahead tasks (dispatched, holding no claim), oldest first
        self._ahead: dict[str, list[tuple[RunState, int]]] = {}
        self._freed: set[str] = set()  # nodes with queued-ahead tasks that may fit now
        self._fit_cache: dict[int, list[str]] = {}  # id(cost vector) -> nodes whose total fits
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
            ResultCopied: self._on_result_copied,
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
        run.queue.extend(run.tracker.initial().tolist())
        self._submitted += 1
        run.seq = self._submitted
        self._rotation.append(run)
        return out + self._pump()

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
            out.extend(self._pump())
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
        self._slot_setting[name] = slots
        if name in self._slots:
            self._slots[name] = slots
            self._recount_free_slots()
        return self._pump()

    def node_load(self) -> dict[str, int]:
        """{live node: in-flight tasks from this orchestrator} (queued-ahead ones included)."""
        return dict(self._busy)

    def queued_ahead(self) -> dict[str, int]:
        """{live node: tasks queued ahead there} for nodes that have some."""
        return {node: len(tasks) for node, tasks in self._ahead.items() if tasks}

    @property
    def active_runs(self) -> list[str]:
        return [run.run_id for run in self._rotation]

    @property
    def next_deadline(self) -> float | None:
        """The earliest deadline a ``Tick`` may act on, or None when no run waits for a node.

        (Possibly one that no longer matters: the node layer may Tick needlessly, never late.)
        """
        return self._deadlines[0][0] if self._deadlines else None

    # -- placement -------------------------------------------------------------------------

    def _claim_ahead(self) -> None:
        """Queued-ahead tasks on nodes that freed resources take their claims, oldest first,
        up to the first that does not fit (the node starts them as its resources free up)."""
        ledger = self.ledger
        for node in self._freed:
            queue = self._ahead.get(node)
            if not queue or not ledger.has_node(node):
                continue
            j = ledger.node_index(node)
            claimed = 0
            for run, i in queue:
                if not ledger.request_vec(j, run.vecs[i]):
                    break
                del run.ahead[i]
                claimed += 1
            if claimed:
                del queue[:claimed]
        self._freed.clear()

    def _pump(self) -> list[Instruction]:
        """Place ready work into free slots and resources; one Dispatch per (run, node)."""
        if self._freed:
            self._claim_ahead()
        if self._free_slots <= 0 or not self._rotation:
            return []
        blocked: set = set()  # cost classes that found no room this round
        runs = [r for r in self._rotation if r.has_work() and r.room() > 0]
        if len(runs) > 1:  # turns: least recently served first, then oldest
            runs.sort(key=_turn_order)
        self._round += 1
        if len(runs) == 1:
            self._serve(runs[0], self._free_slots, blocked)
        elif runs:
            share = max(1, self._free_slots // len(runs))
            for r in runs:
                if self._free_slots <= 0:
                    break
                self._serve(r, share, blocked)
            for r in runs:
                if self._free_slots <= 0:
                    break
                if r.has_work():
                    self._serve(r, self._free_slots, blocked)
        if not self._batches:
            return []
        out: list[Instruction] = []
        for (run, node), tasks in self._batches.items():
            run.nodes_used.add(node)
            run.served = self._round
            out.append(Dispatch(run.run_id, node, tasks))
        self._batches = {}
        return out

    def _serve(self, run: RunState, limit: int, blocked: set) -> None:
        """Start up to ``limit`` of ``run``'s tasks: parked classes first (they are older)."""
        limit = min(limit, run.room())
        placed = 0
        if run.parked:
            for key in list(run.parked):
                if placed >= limit or self._free_slots <= 0:
                    return
                if key in blocked:
                    continue
                dq = run.parked[key]
                # a class fits or not alike, and claims only grow within a round: try a few
                # (a release usually lets one or two in), and all the rest only if those fit
                step = _FIRST_TRY
                while dq and placed < limit and self._free_slots > 0:
                    items = [dq.popleft() for _ in range(min(step, limit - placed, len(dq)))]
                    done, failed = self._place(run, items)
                    placed += done
                    if failed:
                        blocked.add(key)
                        dq.extendleft(reversed(failed))
                        break
                    step = len(dq)
                if not dq:
                    del run.parked[key]
        queue = run.queue
        while queue and placed < limit and self._free_slots > 0:
            items = []
            for _ in range(min(limit - placed, len(queue))):
                i = queue.popleft()
                if blocked and run.placement_class(i) in blocked:
                    run.park(i)
                else:
                    items.append(i)
            if items:
                done, failed = self._place(run, items)
                placed += done
                for i in failed:
                    blocked.add(run.park(i))

    def _place(self, run: RunState, items: list[int]) -> tuple[int, list[int]]:
        """Try to start ``items``; returns (how many started, those left waiting, in order)."""
        failed: list[tuple[int, int]] = []  # (position, index)
        costed: list[tuple[int, int, np.ndarray, str | None]] = []
        zero: list[tuple[int, int]] = []
        started = 0
        busy, slots = self._busy, self._slots
        for pos, i in enumerate(items):
            if run.lost and run.waits_for_lost(i):
                continue
            target = run.target(i)
            vec = run.vecs.get(i) if run.vecs and run.pin_all is None else None
            if target is not None:
                n_busy = busy.get(target)
                if n_busy is None:
                    if not (run.awaiting and run.hold(i, target)):
                        failed.append((pos, i))
                elif n_busy >= slots[target]:
                    failed.append((pos, i))
                elif vec is None:
                    self._commit(run, i, target)
                    started += 1
                else:
                    costed.append((pos, i, vec, target))
            elif i in run.group_of or i in run.avoid:
                node = self._place_among(run, i, vec)
                if node is None:
                    if not (vec is not None and self.lookahead and self._queue_ahead(run, i, vec)):
                        failed.append((pos, i))
                else:
                    g = run.group_of.get(i)
                    if g is not None:
                        run.group_node[g] = node
                    self._commit(run, i, node)
                    started += 1
            elif vec is None:
                zero.append((pos, i))
            else:
                costed.append((pos, i, vec, None))
        if costed:
            started += self._place_costed(run, costed, failed)
        if zero:
            started += self._place_zero(run, zero, failed)
        failed.sort()
        return started, [i for _, i in failed]

    def _commit(self, run: RunState, i: int, node: str, ahead: bool = False) -> None:
        """Record the dispatch of ``i`` on ``node`` (its claim is already taken, or it is
        queued ahead and holds none)."""
        attempt = run.dispatch_no[i] + 1
        run.dispatch_no[i] = attempt
        run.inflight[i] = node
        if ahead:
            run.ahead[i] = node
            queue = self._ahead.get(node)
            if queue is None:
                queue = self._ahead[node] = []
            queue.append((run, i))
        if run.avoid:
            run.avoid.pop(i, None)
        self._busy[node] += 1
        self._free_slots -= 1
        key = (run, node)
        batch = self._batches.get(key)
        if batch is None:
            batch = self._batches[key] = []
        batch.append((i, attempt))

    def _place_costed(self, run: RunState, costed: list, failed: list) -> int:
        """One allocate() call for functions with a cost; returns how many started."""
        ledger = self.ledger
        reqs = np.zeros((len(costed), len(ledger.resources)), dtype=np.float64)
        pinned = np.full(len(costed), -1, dtype=np.int64)
        for k, (_, _, vec, target) in enumerate(costed):
            reqs[k, : vec.shape[0]] = vec
            if target is not None:
                pinned[k] = ledger.node_index(target)
        chosen = _core.allocate(ledger, reqs, pinned, run.strategy, True).tolist()
        names = ledger.nodes
        busy, slots = self._busy, self._slots
        started = 0
        no_room: set = set()  # (cost vector, target) that found no node to queue ahead on
        for k, j in enumerate(chosen):
            pos, i, vec, target = costed[k]
            if j >= 0:
                node = names[j]
                if busy[node] < slots[node]:
                    self._commit(run, i, node)
                    started += 1
                    continue
                ledger.release_vec(j, reqs[k])  # the node has resources but no free slot
                if target is None:
                    node = self._place_among(run, i, vec)
                    if node is not None:
                        self._commit(run, i, node)
                        started += 1
                        continue
            if self.lookahead:
                key = (id(vec), target)
                if key not in no_room:
                    if self._queue_ahead(run, i, vec, target):
                        started += 1
                        continue
                    no_room.add(key)
            failed.append((pos, i))
        return started

    def _place_zero(self, run: RunState, zero: list, failed: list) -> int:
        """Place zero-cost functions by slots alone; returns how many started."""
        busy, slots, order = self._busy, self._slots, self._order
        started = 0
        if run.strategy == "load_balanced":
            heap = [(busy[n], p, n) for p, n in enumerate(order) if busy[n] < slots[n]]
            heapq.heapify(heap)
            for k, (_, i) in enumerate(zero):
                if not heap:
                    failed.extend(zero[k:])
                    break
                _, p, n = heap[0]
                self._commit(run, i, n)
                started += 1
                if busy[n] < slots[n]:
                    heapq.heapreplace(heap, (busy[n], p, n))
                else:
                    heapq.heappop(heap)
            return started
        p, count = 0, len(order)
        for k, (_, i) in enumerate(zero):
            while p < count and busy[order[p]] >= slots[order[p]]:
                p += 1
            if p == count:
                failed.extend(zero[k:])
                break
            self._commit(run, i, order[p])
            started += 1
        return started

    def _queue_ahead(
        self, run: RunState, i: int, vec: np.ndarray, target: str | None = None
    ) -> bool:
        """Dispatch costed ``i``, which fits no node's free resources, ahead of its resources.

        Among the live nodes with a free slot whose total capacity fits it (only ``target``
        when it has one; for the first member of a collocation group, nodes that fit the
        group's summed cost before those that fit each member), those with the fewest
        queued-ahead tasks first, then by the run's strategy (a retry's failed node last
        among equals). Says whether it was dispatched: not when
        every such node already has ``lookahead`` tasks queued ahead.
        """
        ahead, lookahead = self._ahead, self.lookahead
        busy, slots = self._busy, self._slots
        g = run.group_of.get(i) if run.group_of else None
        if target is not None:
            n_busy = busy.get(target)
            if (
                n_busy is None
                or n_busy >= slots[target]
                or len(ahead.get(target, ())) >= lookahead
                or target not in self._fitting(vec, run.costs[i])
            ):
                return False
            self._commit(run, i, target, ahead=True)
            return True
        if g is not None:
            tiers = group_tiers(self.ledger, run.group_cost[g], run.group_need[g])
        else:
            tiers = [self._fitting(vec, run.costs[i])]
        avoid = run.avoid.get(i) if run.avoid else None
        names: list[str] = []
        for tier in tiers:
            tier = [
                n
                for n in tier
                if n in busy and busy[n] < slots[n] and len(ahead.get(n, ())) < lookahead
            ]
            if len(tier) > 1:
                tier = order_nodes(self.ledger, run.strategy, vec, tier, busy)
                tier.sort(key=lambda n: (len(ahead.get(n, ())), n == avoid))  # stable: keeps rank
            names += tier
        if not names:
            return False
        node = names[0]
        if g is not None:
            run.group_node[g] = node
        self._commit(run, i, node, ahead=True)
        return True

    def _fitting(self, vec: np.ndarray, cost: dict) -> list[str]:
        """Nodes whose total capacity fits ``cost`` (cached by its vector until nodes change)."""
        nodes = self._fit_cache.get(id(vec))
        if nodes is None:
            nodes = self._fit_cache[id(vec)] = self.ledger.fitting_nodes_total(cost)
        return nodes

    def _place_among(self, run: RunState, i: int, vec: np.ndarray | None) -> str | None:
        """Claim the best node for ``i`` among those its run allows (``RunState.candidates``)."""
        ledger = self.ledger
        for name in run.candidates(i, vec, ledger, self._busy, self._slots):
            if vec is None or ledger.request_vec(ledger.node_index(name), vec):
                return name
        return None

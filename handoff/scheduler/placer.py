"""Placement: ready work into free slots and resources, one Dispatch per (run, node).

``Placer`` is the orchestrator's placement component; it owns the placement round and
the Dispatches being gathered, and reads and writes the live nodes' ``NodeSlots``. How
work is placed is described in the package docstring (``handoff.scheduler``).
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any

import numpy as np

from handoff import _core
from handoff.scheduler.events import CancelTasks, Dispatch, Instruction
from handoff.scheduler.nodes import NodeSlots
from handoff.scheduler.placement import group_tiers, order_nodes
from handoff.scheduler.run import RunState
from handoff.scheduler.tasks import TaskStatus, transition

if TYPE_CHECKING:
    from handoff._core import ResourceLedger

__all__ = ["Placer"]

_FIRST_TRY = 4  # functions of a parked class tried first
_AHEAD, _DISPATCHED = TaskStatus.QUEUED_AHEAD, TaskStatus.DISPATCHED


def _turn_order(run: RunState) -> tuple[int, int]:
    return (run.served, run.seq)


class Placer:
    """Places the work of the orchestrator's runs on ``nodes`` and the cluster ``ledger``."""

    def __init__(self, ledger: ResourceLedger, nodes: NodeSlots, lookahead: int):
        self.ledger = ledger
        self.nodes = nodes
        self.lookahead = lookahead
        self.round = 0  # placement rounds so far; a run remembers the last that served it
        self._batches: dict[tuple[RunState, str], list[tuple[int, int]]] = {}
        self._cancels: dict[tuple[RunState, str], list[int]] = {}  # moved away from that node

    def _claim_ahead(self) -> list[str]:
        """Queued-ahead tasks on nodes that freed resources take their claims, oldest first,
        up to the first that does not fit (the node starts them as its resources free up).

        Returns the freed nodes whose own queue is empty now, while tasks are queued ahead
        elsewhere: once ready work is placed, they may take those (``_take_ahead``).
        """
        ledger, nodes = self.ledger, self.nodes
        freed = nodes.freed
        takers = []
        for node in [n for n in nodes.order if n in freed]:
            if not ledger.has_node(node):
                continue
            queue = nodes.ahead.get(node)
            if queue:
                j = ledger.node_index(node)
                claimed = 0
                for run, i in queue:
                    if not ledger.request_vec(j, run.vecs[i]):
                        break
                    transition(run.tasks[i], _DISPATCHED, run.run_id)
                    claimed += 1
                if claimed:
                    nodes.claimed(node, claimed)
                if queue:
                    continue  # its own queue's head waits for its resources
            if nodes.queued:
                takers.append(node)
        freed.clear()
        return takers

    def _take_ahead(self, node: str) -> None:
        """Move to ``node`` tasks queued ahead on other nodes that fit its free resources now,
        while it has free slots, so that none waits behind long work while a node could run
        it: each is cancelled where it waited and dispatched here holding its claim, as a new
        attempt (a late report of the old one is stale). The other nodes in ledger order, each
        one's newest first (it would wait longest there). Pinned tasks and collocation group
        members stay: their node is set.
        """
        nodes, ledger = self.nodes, self.ledger
        busy, slots = nodes.busy, nodes.slots
        j = ledger.node_index(node)
        for other in nodes.order:
            queue = nodes.ahead.get(other)
            if other == node or not queue:
                continue
            for run, i in queue[::-1]:
                if busy[node] >= slots[node]:
                    return
                if run.target(i) is not None or not ledger.request_vec(j, run.vecs[i]):
                    continue
                nodes.leave(other, run, i)
                cancels = self._cancels.get((run, other))
                if cancels is None:
                    cancels = self._cancels[(run, other)] = []
                cancels.append(i)
                self._commit(run, i, node)

    def pump(self, rotation: list[RunState]) -> list[Instruction]:
        """Place ready work of the runs in ``rotation`` into free slots and resources, then
        let freed nodes take work queued ahead elsewhere (``_take_ahead``); one Dispatch per
        (run, node), after the CancelTasks of tasks that moved."""
        nodes = self.nodes
        takers = self._claim_ahead() if nodes.freed else None
        if nodes.free > 0 and rotation:
            self._serve_runs(rotation)
        if takers:
            for node in takers:
                if not nodes.queued:
                    break
                self._take_ahead(node)
        return self._instructions()

    def _serve_runs(self, rotation: list[RunState]) -> None:
        """One placement round: runs take turns, each with an equal share of the free slots."""
        nodes = self.nodes
        blocked: set = set()  # cost classes that found no room this round
        runs = [r for r in rotation if r.has_work() and r.room() > 0]
        if len(runs) > 1:  # turns: least recently served first, then oldest
            runs.sort(key=_turn_order)
        self.round += 1
        if len(runs) == 1:
            self._serve(runs[0], nodes.free, blocked)
        elif runs:
            share = max(1, nodes.free // len(runs))
            for r in runs:
                if nodes.free <= 0:
                    break
                self._serve(r, share, blocked)
            for r in runs:
                if nodes.free <= 0:
                    break
                if r.has_work():
                    self._serve(r, nodes.free, blocked)

    def _instructions(self) -> list[Instruction]:
        """The CancelTasks and Dispatches gathered in this round."""
        if not self._batches:
            return []
        out: list[Instruction] = []
        if self._cancels:
            for (run, node), indices in self._cancels.items():
                out.append(CancelTasks(run.run_id, node, sorted(indices)))
            self._cancels = {}
        for (run, node), tasks in self._batches.items():
            run.nodes_used.add(node)
            run.served = self.round
            out.append(Dispatch(run.run_id, node, tasks))
        self._batches = {}
        return out

    def release(self, run: RunState, i: int, node: str) -> None:
        """Give back the claim and the slot of ``i``'s attempt on ``node``.

        A queued-ahead attempt holds no claim. Either way the node may now start a task
        queued ahead there, so its queue is looked at before the next placement.
        """
        nodes = self.nodes
        if node not in nodes.busy:
            return  # the node is gone, and its claims with it
        if run.tasks[i].status == _AHEAD:
            nodes.give_back(node, run, i)
            return
        vec = run.vecs.get(i) if run.vecs else None
        if vec is not None and run.pin_all is None:
            ledger = self.ledger
            ledger.release_vec(ledger.node_index(node), vec)
        nodes.give_back(node)

    def _serve(self, run: RunState, limit: int, blocked: set) -> None:
        """Start up to ``limit`` of ``run``'s tasks: parked classes first (they are older)."""
        limit = min(limit, run.room())
        placed = 0
        if run.parked:
            for key in list(run.parked):
                if placed >= limit or self.nodes.free <= 0:
                    return
                if key in blocked:
                    continue
                dq = run.parked[key]
                # a class fits or not alike, and claims only grow within a round: try a few
                # (a release usually lets one or two in), and all the rest only if those fit
                step = _FIRST_TRY
                while dq and placed < limit and self.nodes.free > 0:
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
        while queue and placed < limit and self.nodes.free > 0:
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
        busy, slots = self.nodes.busy, self.nodes.slots
        tasks = run.tasks
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
            elif i in run.group_of or tasks[i].avoid is not None:
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
        task = run.tasks[i]
        transition(task, _AHEAD if ahead else _DISPATCHED, run.run_id)
        attempt = task.attempt = task.attempt + 1
        task.node = node
        task.avoid = None
        run.inflight[i] = node
        if ahead:
            self.nodes.take(node, run, i)
        else:
            self.nodes.take(node)
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
        busy, slots = self.nodes.busy, self.nodes.slots
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
        busy, slots, order = self.nodes.busy, self.nodes.slots, self.nodes.order
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
        ahead, lookahead = self.nodes.ahead, self.lookahead
        busy, slots = self.nodes.busy, self.nodes.slots
        g = run.group_of.get(i) if run.group_of else None
        if target is not None:
            n_busy = busy.get(target)
            if (
                n_busy is None
                or n_busy >= slots[target]
                or len(ahead.get(target, ())) >= lookahead
                or target not in self.nodes.fitting(self.ledger, vec, run.costs[i])
            ):
                return False
            self._commit(run, i, target, ahead=True)
            return True
        if g is not None:
            tiers = group_tiers(self.ledger, run.group_cost[g], run.group_need[g])
        else:
            tiers = [self.nodes.fitting(self.ledger, vec, run.costs[i])]
        avoid = run.tasks[i].avoid
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

    def _place_among(self, run: RunState, i: int, vec: np.ndarray | None) -> str | None:
        """Claim the best node for ``i`` among those its run allows (``RunState.candidates``)."""
        ledger = self.ledger
        for name in run.candidates(i, vec, ledger, self.nodes.busy, self.nodes.slots):
            if vec is None or ledger.request_vec(ledger.node_index(name), vec):
                return name
        return None

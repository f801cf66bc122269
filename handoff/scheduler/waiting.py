"""Why a run's ready work is not running yet, node by node (``Orchestrator.waiting``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Hashable

from handoff.scheduler.placement import name_nodes, shortfall
from handoff.scheduler.tasks import TaskStatus

if TYPE_CHECKING:
    from handoff.scheduler.orchestrator import Orchestrator
    from handoff.scheduler.run import RunState

__all__ = ["WAITS", "progress", "waiting_reasons"]

S = TaskStatus


WAITS = frozenset({S.READY, S.PARKED, S.HELD, S.BLOCKED, S.QUEUED_AHEAD})


def progress(run: RunState) -> tuple[int, int, int]:
    """(done, running, waiting) of a run's non-inline functions, from the run's indexes (not
    its tasks: a status request must not cost a pass over a large run)."""
    tasks, ahead = run.tasks, S.QUEUED_AHEAD
    queued_ahead = sum(1 for i in run.inflight if tasks[i].status == ahead)
    waiting = (len(run.queue) + queued_ahead + sum(len(q) for q in run.parked.values())
               + sum(len(h) for h in run.awaiting.values()) + sum(len(w) for w in run.waiters.values()))
    done = int(len(tasks) - run.graph.inline.sum()) - run.tracker.remaining - len(run.lost)
    return done, len(run.inflight) - queued_ahead, waiting


def waiting_reasons(orch: Orchestrator, run: RunState, limit: int | None = None) -> dict[Hashable, str]:
    """{function_id: why it waits} for the run's tasks that are ready but not running:
    ready, parked, held for a lost node, blocked on a recomputation, or queued ahead. With
    ``limit``, only the first that many (the reasons cost a look at every node each)."""
    ids = run.graph.ids
    out: dict[Hashable, str] = {}
    seen: dict[tuple, str] = {}
    for task in run.tasks:
        status, i = task.status, task.index
        if status not in WAITS:
            continue
        if limit is not None and len(out) >= limit:
            break
        if status == S.READY:
            out[ids[i]] = _ready(orch, run)
        elif status == S.PARKED:  # a class fits or not alike: one look at the nodes each
            key = run.placement_class(i)
            why = seen.get(key)
            if why is None:
                why = seen[key] = "waits for room: " + _node_by_node(orch, run, i)
            out[ids[i]] = why
        elif status == S.HELD:
            out[ids[i]] = (
                f"pinned to node {run.target(i)!r}, which was lost: held until it joins "
                "again or the run's timeout"
            )
        elif status == S.BLOCKED:
            lost = next((d for d in run.effective_inputs(i) if d in run.lost), None)
            assert lost is not None  # blocked means one of its inputs is lost
            out[ids[i]] = f"its input {ids[lost]!r} was lost and is being computed again"
        elif status == S.QUEUED_AHEAD:
            node = task.node
            free = orch.ledger.free(node) if node is not None and orch.ledger.has_node(node) else {}
            lacks = shortfall(run.costs.get(i), free, free=True)
            out[ids[i]] = f"queued ahead on node {task.node!r}, which has {lacks or 'room'} free"
    return out


def _ready(orch: Orchestrator, run: RunState) -> str:
    if run.room() <= 0:
        return f"the run already has max_concurrency={run.max_concurrency} tasks in flight"
    if orch.nodes.free <= 0:
        return "every live node has all its slots in use"
    return "ready: placed at the next placement round"


def _node_by_node(orch: Orchestrator, run: RunState, i: int) -> str:
    """For each node ``i`` may go to, why it cannot take ``i`` now; nodes with the same
    reason share one ("nodes 'a', 'b' are too small (have no gpu)"), so a large cluster
    reads as a few lines, not one per node."""
    ledger, nodes = orch.ledger, orch.nodes
    cost = run.costs.get(i)
    target = run.target(i)
    names = [target] if target is not None else list(ledger.nodes)
    reasons: dict[tuple[str, str], list[str]] = {}  # (singular, plural) -> nodes, in order
    for name in names:
        if name not in nodes.busy or not ledger.has_node(name):
            why = ("is not live", "are not live")
        elif too_small := shortfall(cost, ledger.capacity(name)):
            why = (f"is too small (has {too_small})", f"are too small (have {too_small})")
        elif nodes.busy[name] >= nodes.slots[name]:
            busy = nodes.busy[name]
            why = (f"has no free slot ({busy} tasks in flight)",
                   f"have no free slot ({busy} tasks in flight each)")
        elif lacks := shortfall(cost, ledger.free(name), free=True):
            why = (f"has {lacks} free", f"have {lacks} free")
        else:
            why = ("has room", "have room")
        reasons.setdefault(why, []).append(name)
    parts = [f"{name_nodes(group)} {one if len(group) == 1 else many}"
             for (one, many), group in reasons.items()]
    return "; ".join(parts) or "no live node"

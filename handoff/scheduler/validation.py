"""``validate_state``: the scheduler's invariants, checked against its task states.

Each task's ``TaskState`` is the truth; the containers kept beside it for speed (a run's
queue, parked classes, in-flight map, lost set, waiters, held work; the orchestrator's
per-node counters and queued-ahead queues; the ledger's claims) must agree with it.
Cost is O(tasks + nodes x resources): for tests and the ``HANDOFF_DEBUG_STATE`` setting.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from handoff.scheduler.tasks import TaskStatus

if TYPE_CHECKING:
    from handoff.scheduler.orchestrator import Orchestrator
    from handoff.scheduler.run import RunState

__all__ = ["check_orchestrator", "check_run"]

S = TaskStatus
_OVER = frozenset({S.DONE, S.INLINE, S.FAILED, S.CANCELLED})


def _once(run: RunState, what: str, items: list[int], expected: set[int]) -> None:
    counts = Counter(items)
    twice = sorted(i for i, n in counts.items() if n > 1)
    assert not twice, f"run {run.run_id!r}: tasks {twice} are listed twice in its {what}"
    got = set(counts)
    assert got == expected, (
        f"run {run.run_id!r}: its {what} lists {sorted(got - expected)} that should not be "
        f"there and misses {sorted(expected - got)}"
    )


def check_run(run: RunState) -> None:
    """Every task's status, node and location agree with the run's indexes, or AssertionError."""
    tasks = run.tasks
    by_status: dict[TaskStatus, set[int]] = {s: set() for s in TaskStatus}
    for t in tasks:
        by_status[t.status].add(t.index)
    inline = run.graph.inline.tolist()
    live = getattr(run, "live", False)  # a live run's functions settle one by one
    assert by_status[S.INLINE] == {i for i, flag in enumerate(inline) if flag}, (
        f"run {run.run_id!r}: INLINE tasks are not the graph's inline functions"
    )
    if run.finished:
        busy = sorted(t.index for t in tasks if t.status not in _OVER)
        assert not busy, f"run {run.run_id!r} is finished but tasks {busy} are not over"
        assert not run.inflight and not run.queue and not run.parked
        assert live or len(by_status[S.FAILED]) <= 1, f"run {run.run_id!r}: more than one task FAILED"
        return
    assert live or (not by_status[S.FAILED] and not by_status[S.CANCELLED]), (
        f"run {run.run_id!r} is not finished but has FAILED or CANCELLED tasks"
    )
    _once(run, "queue", list(run.queue), by_status[S.READY])
    _once(run, "parked classes", [i for dq in run.parked.values() for i in dq], by_status[S.PARKED])
    _once(run, "waiters", [i for w in run.waiters.values() for i in w], by_status[S.BLOCKED])
    _once(run, "held work", [i for h in run.awaiting.values() for i in h], by_status[S.HELD])
    flying = by_status[S.QUEUED_AHEAD] | by_status[S.DISPATCHED]
    assert set(run.inflight) == flying, (
        f"run {run.run_id!r}: in-flight map {sorted(run.inflight)} but tasks in flight "
        f"{sorted(flying)}"
    )
    lost = {t.index for t in tasks if t.recompute}
    assert run.lost == lost, f"run {run.run_id!r}: lost set {sorted(run.lost)} != {sorted(lost)}"
    assert set(run.waiters) <= lost, f"run {run.run_id!r}: waiters for results not lost"
    tracker = run.tracker
    for t in tasks:
        i, status = t.index, t.status
        if status == S.INLINE or (live and status in (S.FAILED, S.CANCELLED)):
            continue
        if i in flying:
            assert t.node is not None and run.inflight[i] == t.node and t.attempt >= 1, (
                f"run {run.run_id!r}: task {i} in flight on {run.inflight[i]!r} says {t!r}"
            )
        else:
            assert t.node is None, f"run {run.run_id!r}: {t!r} is not in flight but has a node"
        assert (t.location is not None) == (status == S.DONE), (
            f"run {run.run_id!r}: {t!r} has location {t.location!r}"
        )
        assert not (t.recompute and status == S.DONE), f"run {run.run_id!r}: {t!r} lost and DONE"
        complete = bool(tracker.is_complete(i))
        assert complete == (status == S.DONE or t.recompute), (
            f"run {run.run_id!r}: {t!r} but the ready tracker says complete={complete}"
        )
        assert t.failures <= run.retry_limit(i), f"run {run.run_id!r}: {t!r} over its retries"
    assert not run.done, f"run {run.run_id!r} has every result but is not finished"


def check_orchestrator(orch: Orchestrator) -> None:
    """Every active run is valid, and node counters, queued-ahead queues and ledger claims
    match the tasks in flight; AssertionError naming what disagrees if not."""
    nodes, ledger = orch.nodes, orch.ledger
    assert set(nodes.order) == set(nodes.busy) == set(nodes.slots), "node tables disagree"
    assert len(nodes.order) == len(set(nodes.order)), "a node is listed twice"
    assert nodes.freed <= set(nodes.busy), "a node that is gone is marked freed"
    counted: Counter = Counter()
    ahead: dict[str, set] = {}
    claims = np.zeros_like(ledger.used_matrix())
    for run in orch._rotation:
        assert orch._runs.get(run.run_id) is run, f"run {run.run_id!r} rotates but is unknown"
        assert not run.finished, f"run {run.run_id!r} is finished but still rotates"
        check_run(run)
        for i, node in run.inflight.items():
            counted[node] += 1
            if run.tasks[i].status == S.QUEUED_AHEAD:
                ahead.setdefault(node, set()).add((run.run_id, i))
            elif run.pin_all is None and i in run.vecs and ledger.has_node(node):
                vec = run.vecs[i]
                claims[ledger.node_index(node), : vec.shape[0]] += vec
    live = {n: c for n, c in counted.items() if n in nodes.busy}
    assert {n: b for n, b in nodes.busy.items() if b} == live, (
        f"in-flight counts {nodes.busy} but tasks in flight {dict(counted)}"
    )
    free = sum(max(0, s - nodes.busy[n]) for n, s in nodes.slots.items())
    assert nodes.free == free, f"free slots counted {nodes.free}, actually {free}"
    queues = {n: [(r.run_id, i) for r, i in q] for n, q in nodes.ahead.items() if q}
    for node, queue in queues.items():
        assert len(queue) == len(set(queue)), f"node {node!r}: a task queued ahead twice"
        assert len(queue) <= orch.lookahead, f"node {node!r}: {len(queue)} queued ahead"
    got = {n: set(q) for n, q in queues.items()}
    want = {n: q for n, q in ahead.items() if n in nodes.busy}
    assert got == want, f"queued-ahead queues {got} but tasks queued ahead {want}"
    queued = sum(len(q) for q in queues.values())
    assert nodes.queued == queued, f"queued ahead counted {nodes.queued}, actually {queued}"
    used, cap = ledger.used_matrix(), ledger.capacity_matrix()
    assert (used <= cap + 1e-9).all(), f"over-committed:\nused\n{used}\ncapacity\n{cap}"
    assert np.allclose(used, claims), f"ledger claims\n{used}\nbut tasks in flight claim\n{claims}"

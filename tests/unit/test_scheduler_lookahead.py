"""Lookahead: costed tasks sent to a node ahead of their resources, holding no claim.

The executing node queues a task whose resources are busy and starts it when they free up,
so the orchestrator may send up to ``lookahead`` such tasks per node ahead of time instead
of waiting for a TaskFinished round trip. ``Cluster`` (``scheduler_harness``) checks after
every step that the ledger's claims are exactly those of the claimed in-flight tasks.
"""

from __future__ import annotations

import heapq

import numpy as np
import pytest
from scheduler_harness import (  # noqa: F401
    GPU,
    Cluster,
    ahead_of,
    dag_of,
    fn,
    gpu_dag,
    sched,
)

from handoff.errors import FunctionError
from handoff.scheduler import (
    CancelTasks,
    Dispatch,
    NodeJoined,
    Orchestrator,
    ReleaseRun,
    RunFinished,
    RunSpec,
    TaskFinished,
)


# -- the W6 shape ---------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["first_available", "load_balanced", "cost_optimized"])
def test_one_gpu_node_gets_one_claimed_and_one_queued_ahead(sched, strategy):
    c = Cluster(sched, {"cpu": {"cpu": 4}, "gpu": {"cpu": 4, "gpu": 1}})
    out = c.submit(gpu_dag(5), strategy=strategy)
    assert out == [Dispatch("r", "gpu", [(0, 1), (1, 1)])]  # one Dispatch: claimed + ahead
    assert ahead_of(c) == {1: "gpu"} and c.ledger.used("gpu") == {"gpu": 1.0}
    for k in range(4):
        out = c.finish(k)
        if k < 3:  # k+1 takes k's claim, k+2 is queued ahead
            assert out == [Dispatch("r", "gpu", [(k + 2, 1)])]
            assert ahead_of(c) == {k + 2: "gpu"}
        else:
            assert out == [] and ahead_of(c) == {}
        assert c.ledger.used("gpu") == {"gpu": 1.0}
        assert c.ledger.used("cpu") == {}
    out = c.finish(4)
    assert c.finished["r"].error is None and c.idle()
    assert not np.asarray(c.ledger.used_matrix()).any()
    assert c.orch.run("r").function_stats()[4].attempts == 1


@pytest.mark.parametrize("lookahead", [2, 3])
def test_deeper_lookahead_queues_more_per_node(sched, lookahead):
    c = Cluster(sched, {"cpu": {"cpu": 4}, "gpu": {"gpu": 1}}, lookahead=lookahead)
    c.submit(gpu_dag(8))
    assert len(c.running) == 1 + lookahead and c.orch.queued_ahead() == {"gpu": lookahead}
    assert c.ledger.used("gpu") == {"gpu": 1.0}
    c.finish(0)
    assert ahead_of(c) == {k: "gpu" for k in range(2, 2 + lookahead)}
    c.drain()
    assert c.finished["r"].error is None and c.idle()


def _simulate_w6(sched, lookahead, n=40, run_ms=20.0, one_way_ms=0.5):
    """A gpu node that queues what does not fit and starts it when the gpu frees (FIFO),
    with ``one_way_ms`` between it and the orchestrating node; returns the makespan."""
    ledger = sched.ResourceLedger()
    orch = Orchestrator(ledger, "driver", lookahead=lookahead)
    orch.handle(NodeJoined("driver", {"cpu": 4}), NodeJoined("gpu", {"cpu": 4, "gpu": 1}))
    d = gpu_dag(n)
    g = d.compile()
    events: list = []  # (time, seq, kind, payload)
    seq = 0
    queue: list = []
    busy = False
    end = None

    def push(t, kind, payload):
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, payload))

    def apply(t, instructions):
        nonlocal end
        cap, used = ledger.capacity_matrix(), ledger.used_matrix()
        assert (used <= cap + 1e-9).all()
        for ins in instructions:
            if isinstance(ins, Dispatch):
                assert ins.node == "gpu"
                push(t + one_way_ms, "arrive", ins.tasks)
            elif isinstance(ins, RunFinished):
                assert ins.error is None
                end = t

    def start(t):
        nonlocal busy
        if not busy and queue:
            busy = True
            push(t + run_ms, "done", (queue.pop(0), t))

    apply(0.0, orch.submit(RunSpec("r", d.id, g, [d.functions[i] for i in g.ids])))
    while events:
        t, _, kind, payload = heapq.heappop(events)
        if kind == "arrive":
            queue.extend(payload)
            start(t)
        elif kind == "done":
            (i, attempt), started = payload
            busy = False
            push(
                t + one_way_ms,
                "report",
                TaskFinished("r", i, attempt, "gpu", True, None, started, t),
            )
            start(t)
        else:
            apply(t, orch.handle(payload))
    assert not ledger.used_matrix().any()
    return end


def test_w6_makespan_no_longer_pays_a_round_trip_per_function(sched):
    n, run_ms, rtt = 40, 20.0, 1.0
    ideal = n * run_ms
    today = _simulate_w6(sched, 0, n, run_ms, rtt / 2)
    ahead = _simulate_w6(sched, 1, n, run_ms, rtt / 2)
    assert today == pytest.approx(n * (run_ms + rtt))  # every function waits a round trip
    assert ahead == pytest.approx(ideal + rtt)  # only the first dispatch and the last report
    assert ahead <= 1.05 * ideal + rtt and ahead / ideal < today / ideal


# -- what a queued-ahead task does ----------------------------------------------------------


def test_a_queued_ahead_task_that_finishes_before_its_claim_just_completes(sched):
    c = Cluster(sched, {"gpu": {"gpu": 1}})
    c.submit(gpu_dag(3))
    assert ahead_of(c) == {1: "gpu"}
    c.finish(1)  # the node ran it early (it had the gpu before the orchestrator knew)
    assert c.ledger.used("gpu") == {"gpu": 1.0}  # still 0's claim; 1 had none to release
    assert c.orch.run("r").location(1) == "gpu"
    assert ahead_of(c) == {2: "gpu"}  # its place in the node's queue went to 2
    c.finish(0)
    assert ahead_of(c) == {} and c.ledger.used("gpu") == {"gpu": 1.0}
    c.finish(2)
    assert c.finished["r"].error is None and c.idle()


def test_a_queued_ahead_task_that_fails_is_retried_without_a_claim_to_release(sched):
    c = Cluster(sched, {"gpu": {"gpu": 1}})
    c.submit(gpu_dag(2), max_retries=1)
    c.finish(1, ok=False)  # it never held a claim
    assert c.ledger.used("gpu") == {"gpu": 1.0}
    assert c.running[("r", 1)] == (2, "gpu") and ahead_of(c) == {1: "gpu"}  # again, ahead
    c.finish(1, ok=False)
    err = c.finished["r"].error
    assert isinstance(err, FunctionError) and err.function_id == 1 and err.attempts == 2
    assert ("r", "gpu", [0]) in c.cancelled and c.idle()


def test_a_failed_queued_ahead_task_prefers_another_node_for_its_retry(sched):
    c = Cluster(sched, {"g1": GPU, "g2": GPU})
    c.submit(gpu_dag(3), max_retries=2)
    assert ahead_of(c) == {2: "g1"}
    c.finish(2, ok=False)  # both queues are empty now: the retry avoids g1, where it failed
    assert ahead_of(c) == {2: "g2"} and c.running[("r", 2)] == (2, "g2")
    c.finish(1)  # 2 claims on g2
    c.finish(2, ok=False)  # g2 is free: a free node beats queuing ahead, even the failed one
    assert ahead_of(c) == {} and c.running[("r", 2)] == (3, "g2")
    c.drain()
    assert c.finished["r"].error is None and c.idle()
    assert c.orch.run("r").function_stats()[2].attempts == 3


def test_a_shorter_queue_beats_avoiding_the_failed_node(sched):
    c = Cluster(sched, {"g1": GPU, "g2": GPU})
    c.submit(gpu_dag(4), max_retries=2)
    assert ahead_of(c) == {2: "g1", 3: "g2"}
    c.finish(2, ok=False)  # g2's queue is full, g1's is empty again
    assert ahead_of(c) == {2: "g1", 3: "g2"} and c.running[("r", 2)] == (2, "g1")
    c.drain()
    assert c.finished["r"].error is None and c.idle()


def test_claims_are_taken_oldest_first_up_to_the_first_that_does_not_fit(sched):
    c = Cluster(sched, {"a": {"cpu": 4}}, lookahead=2)
    c.submit(
        dag_of(
            fn("x", cost={"cpu": 2}),
            fn("y", cost={"cpu": 2}),
            fn("big", cost={"cpu": 4}),
            fn("small", cost={"cpu": 2}),
        )
    )
    state = c.orch.run("r")
    big, small = c.index("r", "big"), c.index("r", "small")
    assert state.queued_ahead() == {big: "a", small: "a"}
    c.finish("x")  # 2 free: big (first in the node's queue) does not fit, so small waits too
    assert state.queued_ahead() == {big: "a", small: "a"} and c.ledger.used("a") == {"cpu": 2.0}
    c.finish("y")
    assert state.queued_ahead() == {small: "a"} and c.ledger.used("a") == {"cpu": 4.0}
    c.finish("big")
    assert state.queued_ahead() == {} and c.ledger.used("a") == {"cpu": 2.0}
    c.drain()
    assert c.idle()


def test_claims_follow_the_nodes_queue_across_runs(sched):
    c = Cluster(sched, {"gpu": GPU})
    c.submit(gpu_dag(2, id="one"), run_id="r1")
    c.submit(gpu_dag(2, id="two"), run_id="r2")
    assert ahead_of(c, "r1") == {1: "gpu"} and ahead_of(c, "r2") == {}
    c.finish(0, "r1")  # r1's queued task claims; r2 (least recently served) queues ahead
    assert ahead_of(c, "r1") == {} and ahead_of(c, "r2") == {0: "gpu"}
    c.finish(1, "r1")
    assert ahead_of(c, "r2") == {1: "gpu"}
    c.drain()
    assert c.finished["r1"].error is None and c.finished["r2"].error is None and c.idle()


def test_work_is_queued_ahead_on_the_node_with_the_shortest_queue(sched):
    c = Cluster(sched, {"g1": GPU, "g2": GPU, "g3": GPU}, lookahead=2)
    c.submit(gpu_dag(10))
    assert [c.running[("r", k)][1] for k in range(9)] == ["g1", "g2", "g3"] * 3
    assert c.orch.queued_ahead() == {"g1": 2, "g2": 2, "g3": 2}
    c.finish(1)  # g2's oldest queued task claims; 9 joins g2's queue, now the shortest
    assert c.running[("r", 9)] == (1, "g2")
    c.drain()
    assert c.idle()


def test_queued_ahead_needs_a_free_slot_and_zero_cost_work_is_unaffected(sched):
    c = Cluster(sched, {"gpu": {"gpu": 1}, "cpu": {}}, slots={"gpu": 1, "cpu": 2})
    c.submit(dag_of(*[fn(k, cost=GPU) for k in range(3)], *[fn(f"z{k}") for k in range(4)]))
    assert c.orch.node_load() == {"gpu": 1, "cpu": 2} and c.orch.queued_ahead() == {}
    c.drain()
    assert c.finished["r"].error is None and c.idle()


def _one_task_runs(c, n, cost):
    for k in range(n):
        c.submit(dag_of(fn("w", cost=cost), id=f"spill-{k}"), run_id=f"r{k}")
    return {f"r{k}": c.node_of("w", f"r{k}") for k in range(n) if ("r" + str(k), 0) in c.running}


def _held_cluster(sched, **kw):
    """Nodes a (2 cpus), c (4 cpus, held by long work pinned there) and b (2 cpus), in that
    ledger order."""
    c = Cluster(sched, {"a": {"cpu": 2}, "c": {"cpu": 4}, "b": {"cpu": 2}}, **kw)
    c.submit(dag_of(fn("h", cost={"cpu": 4}, node="c"), id="hold"), run_id="hold")
    return c


def test_a_task_queued_ahead_behind_long_work_moves_to_a_node_that_frees(sched):
    """The shape of the cluster test whose fourth run never ended: c is held by long work
    and comes before b in the ledger, so the fourth 2-cpu run was queued ahead on c and
    waited there while a and b were free (the hold ends only after the runs)."""
    c = _held_cluster(sched)
    assert _one_task_runs(c, 4, {"cpu": 2}) == {"r0": "a", "r1": "b", "r2": "a", "r3": "c"}
    assert c.orch.queued_ahead() == {"a": 1, "c": 1}
    out = c.finish("w", "r1")  # b frees with nothing queued ahead on it: it takes r2
    assert out[2:] == [CancelTasks("r2", "a", [0]), Dispatch("r2", "b", [(0, 2)])]
    assert c.orch.queued_ahead() == {"c": 1} and c.ledger.used("b") == {"cpu": 2.0}
    out = c.finish("w", "r0")  # a frees: r3 leaves the held node
    assert out[2:] == [CancelTasks("r3", "c", [0]), Dispatch("r3", "a", [(0, 2)])]
    assert c.orch.queued_ahead() == {} and c.ledger.used("a") == {"cpu": 2.0}
    assert c.running_ids("hold") == ["h"] and c.orch.run("r3").task(0).attempt == 2
    for k in (2, 3):
        c.finish("w", f"r{k}")
    assert {k: f.error for k, f in c.finished.items()} == {f"r{k}": None for k in range(4)}
    assert sorted(c.orch.run(f"r{k}").allocations()["w"] for k in range(4)) == ["a", "a", "b", "b"]
    c.finish("h", "hold")
    assert c.idle()


def test_a_stale_report_of_a_moved_task_is_ignored(sched):
    c = _held_cluster(sched)
    _one_task_runs(c, 4, {"cpu": 2})
    c.finish("w", "r1")  # r2 moves from a (attempt 1) to b (attempt 2)
    # a had started attempt 1 before the cancel reached it: its report changes nothing
    assert c.handle(TaskFinished("r2", 0, 1, "a", True, None, 0.0, 1.0)) == []
    assert c.running[("r2", 0)] == (2, "b") and "r2" not in c.finished
    c.drain()
    assert c.orch.run("r2").allocations() == {"w": "b"} and c.idle()


def test_a_freed_node_takes_no_more_than_its_slots(sched):
    c = Cluster(sched, {"a": {"cpu": 2}, "c": {"cpu": 4}, "b": {"cpu": 4}}, slots={"b": 1})
    c.submit(dag_of(fn("h", cost={"cpu": 4}, node="c"), id="hold"), run_id="hold")
    assert _one_task_runs(c, 4, {"cpu": 2}) == {"r0": "a", "r1": "b", "r2": "a", "r3": "c"}
    c.finish("w", "r1")  # b has room for two, but one slot: it takes r2, r3 stays on c
    assert c.running[("r2", 0)] == (2, "b") and c.running[("r3", 0)] == (1, "c")
    assert c.orch.queued_ahead() == {"c": 1} and c.ledger.used("b") == {"cpu": 2.0}
    c.finish("w", "r0")
    assert c.running[("r3", 0)] == (2, "a") and c.orch.queued_ahead() == {}
    c.drain()
    assert c.idle() and all(f.error is None for f in c.finished.values())


def test_ready_work_takes_a_freed_node_before_work_queued_ahead_elsewhere(sched):
    """Moving a queued-ahead task costs a cancel and a dispatch: only when nothing else
    would use the freed resources."""
    c = _held_cluster(sched)
    cpu = {"cpu": 2}
    c.submit(dag_of(fn("w", cost=cpu), id="spill-0"), run_id="r0")
    c.submit(dag_of(fn("w", cost=cpu), fn("v", ["w"], cost=cpu), id="two"), run_id="r1")
    for k in (2, 3):
        c.submit(dag_of(fn("w", cost=cpu), id=f"spill-{k}"), run_id=f"r{k}")
    assert [c.node_of("w", f"r{k}") for k in range(4)] == ["a", "b", "a", "c"]
    assert c.finish("w", "r1") == [Dispatch("r1", "b", [(c.index("r1", "v"), 1)])]
    assert c.orch.queued_ahead() == {"a": 1, "c": 1}  # v, now ready, is on b
    c.drain()
    assert c.idle() and all(f.error is None for f in c.finished.values())


def test_a_node_that_joins_takes_work_queued_ahead_elsewhere(sched):
    c = Cluster(sched, {"a": {"cpu": 2}})
    assert _one_task_runs(c, 2, {"cpu": 2}) == {"r0": "a", "r1": "a"}
    out = c.handle(NodeJoined("b", {"cpu": 2}))
    assert out == [CancelTasks("r1", "a", [0]), Dispatch("r1", "b", [(0, 2)])]
    assert c.orch.queued_ahead() == {} and c.ledger.used("b") == {"cpu": 2.0}
    c.drain()
    assert c.idle()


def test_pinned_work_queued_ahead_stays_where_it_must_run(sched):
    c = Cluster(sched, {"a": {"cpu": 2}, "b": {"cpu": 2}})
    c.submit(dag_of(fn("x", cost={"cpu": 2}, node="a"), fn("y", cost={"cpu": 2}, node="a")))
    c.submit(dag_of(fn("z", cost={"cpu": 2}), id="other"), run_id="other")
    assert c.orch.queued_ahead() == {"a": 1} and c.node_of("z", "other") == "b"
    assert c.finish("z", "other") == [RunFinished("other", None), ReleaseRun("other", ["b"])]
    assert c.orch.queued_ahead() == {"a": 1}  # b is free, but y is pinned to a
    c.drain()
    assert c.orch.run("r").allocations() == {"x": "a", "y": "a"} and c.idle()


def test_lookahead_must_not_be_negative(sched):
    with pytest.raises(ValueError, match="lookahead"):
        Orchestrator(sched.ResourceLedger(), "x", lookahead=-1)
    assert Orchestrator(sched.ResourceLedger(), "x").lookahead == 1

"""The Orchestrator recovers from lost nodes and lost results: re-placement and lineage."""

from __future__ import annotations

import pytest
from scheduler_harness import Cluster, dag_of, fn, sched  # noqa: F401

from handoff.dag import Collocated
from handoff.errors import NodeLostError
from handoff.scheduler import (
    NodeJoined,
    NodeLost,
    Orchestrator,
    ResultLost,
    TaskFinished,
)

# -- node loss and lineage -----------------------------------------------------------------


def test_lost_node_work_is_replaced_without_using_attempts(sched):
    c = Cluster(sched, {"a": {"cpu": 1}, "b": {"cpu": 1}}, lookahead=0)
    c.submit(dag_of(fn("x", cost={"cpu": 1}), fn("y", cost={"cpu": 1})), max_retries=0)
    assert c.node_of("x") == "a"
    i = c.index("r", "x")
    old_attempt = c.running[("r", i)][0]
    c.running.pop(("r", i))  # the node died with it
    c.handle(NodeLost("a", 5.0))
    assert not c.ledger.has_node("a")
    assert c.running_ids() == ["y"]  # b is busy: x waits
    c.finish("y")
    assert c.node_of("x") == "b" and c.running[("r", i)][0] == old_attempt + 1
    assert c.orch.handle(TaskFinished("r", i, old_attempt, "a", True)) == []  # from the dead node
    c.finish("x")
    assert c.finished["r"].error is None
    state = c.orch.run("r")
    assert state.function_stats()["x"].attempts == 1 and state.task(i).recoveries == 1
    assert c.idle()


def test_lost_node_queued_ahead_work_is_replaced_without_using_attempts(sched):
    c = Cluster(sched, {"a": {"cpu": 1}, "b": {"cpu": 1}})
    c.submit(
        dag_of(*[fn(k, cost={"cpu": 1}) for k in "wxyz"]),
        max_retries=0,
    )
    state = c.orch.run("r")
    assert state.in_flight() == {0: "a", 1: "b", 2: "a", 3: "b"}
    assert state.queued_ahead() == {2: "a", 3: "b"}
    c.lose("a", 5.0)  # w (claimed) and y (queued ahead) go back to the queue
    assert state.queued_ahead() == {3: "b"} and c.orch.queued_ahead() == {"b": 1}
    assert c.running_ids() == ["x", "z"]  # b already has one queued ahead: w and y wait
    c.finish("x")  # z takes x's claim, w is queued ahead on b
    assert state.queued_ahead() == {0: "b"} and c.running[("r", 0)] == (2, "b")
    assert c.orch.handle(TaskFinished("r", 2, 1, "a", True)) == []  # from the dead node
    c.drain()
    assert c.finished["r"].error is None
    assert all(s.attempts == 1 for s in state.function_stats().values())
    assert state.task(0).recoveries == state.task(2).recoveries == 1 and state.task(1).recoveries == 0
    assert c.idle()


def test_results_only_on_a_lost_node_are_recomputed_with_their_lineage(sched):
    c = Cluster(sched, {"a": {}, "b": {}}, slots={"a": 1, "b": 1})
    d = dag_of(
        fn("s1"),
        fn("s2"),
        fn("m", ["s1"]),
        fn("inl", ["m"], type="inline"),
        fn("out", ["inl", "s2"]),
    )
    c.submit(d)
    assert c.node_of("s1") == "a" and c.node_of("s2") == "b"
    c.finish("s1")  # on a
    assert c.node_of("m") == "a"
    c.finish("m")  # on a
    c.handle(NodeLost("a"))
    state = c.orch.run("r")
    assert state.location(0) is None and state.location(2) is None
    assert c.running_ids() == ["s2"]  # b's only slot
    c.finish("s2")  # out is ready by the tracker but m is lost: s1 must run first
    assert c.running_ids() == ["s1"]
    c.finish("s1")
    assert c.running_ids() == ["m"]
    c.finish("m")
    assert c.running_ids() == ["out"]
    c.finish("out")
    assert c.finished["r"].error is None
    assert set(state.allocations().values()) == {"b"} and len(state.allocations()) == 4
    assert state.function_stats()["m"].attempts == 1
    assert c.idle()


def test_every_result_lost_with_a_node_is_recomputed_even_unneeded_ones(sched):
    c = Cluster(sched, {"a": {}, "b": {}}, slots={"a": 1, "b": 1})
    c.submit(dag_of(fn("leaf"), fn("busy"), fn("after", ["busy"])))
    assert c.node_of("leaf") == "a"
    c.finish("leaf")
    c.handle(NodeLost("a"))
    assert c.running_ids() == ["busy"]
    c.finish("busy")
    c.drain()
    state = c.orch.run("r")
    assert c.finished["r"].error is None
    assert state.allocations() == {"leaf": "b", "busy": "b", "after": "b"}


def test_pinned_function_on_a_lost_node_fails_the_run(sched):
    c = Cluster(sched, {"a": {}, "b": {}})
    c.submit(dag_of(fn("x"), fn("y"), fn("p", ["x"], node="a")))
    assert {c.node_of("x"), c.node_of("y")} == {"a"}
    c.finish("x")
    c.lose("a")
    err = c.finished["r"].error
    assert isinstance(err, NodeLostError) and err.node == "a" and err.function_ids == ["p"]
    assert "the run has no timeout" in str(err)
    assert not c.running and c.idle()


def test_run_fails_when_no_live_node_can_hold_what_is_left(sched):
    c = Cluster(sched, {"a": {"gpu": 1}, "b": {"cpu": 1}})
    c.submit(dag_of(fn("x", cost={"cpu": 1}), fn("g", ["x"], cost={"gpu": 1})))
    c.handle(NodeLost("a"))
    err = c.finished["r"].error
    assert isinstance(err, NodeLostError) and err.function_ids == ["g"]
    assert "no live node has the total capacity" in str(err)
    assert c.idle()


def test_collocated_group_on_a_lost_node_is_replaced_together(sched):
    c = Cluster(sched, {"a": {"cpu": 2}, "b": {"cpu": 2}})
    c.submit(
        dag_of(
            fn("x", cost={"cpu": 1}),
            fn("y", ["x"], cost={"cpu": 1}, node=Collocated("x")),
            fn("z", ["y"]),
        )
    )
    first = c.node_of("x")
    c.finish("x")
    assert c.node_of("y") == first
    c.running.pop(("r", 1))
    c.handle(NodeLost(first))
    other = ({"a", "b"} - {first}).pop()
    assert c.node_of("x") == other  # recomputed: the group's new node
    c.finish("x")
    assert c.node_of("y") == other
    c.drain()
    alloc = c.orch.run("r").allocations()
    assert alloc["x"] == alloc["y"] == other and c.idle()


def test_result_lost_for_a_consumer_recomputes_and_retries_without_counting(sched):
    c = Cluster(sched, {"a": {}, "b": {}})
    c.submit(dag_of(fn("x"), fn("y", ["x"])), max_retries=0)
    c.finish("x")
    x_node = c.orch.run("r").location(0)
    attempt, _ = c.running.pop(("r", 1))
    c.handle(ResultLost("r", 0, 1, attempt))
    assert c.running_ids() == ["x"]
    c.handle(ResultLost("r", 0, 1, attempt))  # a duplicate report changes nothing
    assert c.running_ids() == ["x"]
    c.finish("x")
    assert c.running_ids() == ["y"] and c.running[("r", 1)][0] == attempt + 1
    c.finish("y")
    state = c.orch.run("r")
    assert c.finished["r"].error is None
    assert state.function_stats()["y"].attempts == 1 and x_node
    assert c.idle()


def test_result_lost_about_an_old_location_only_reruns_the_consumer(sched):
    c = Cluster(sched, {"a": {}, "b": {}}, slots={"a": 1, "b": 1})
    c.submit(dag_of(fn("x"), fn("y"), fn("z", ["x"])))
    c.finish("x")  # on a
    c.finish("y")  # on b
    attempt, z_node = c.running.pop(("r", 2))
    c.handle(ResultLost("r", 0, 2, attempt, "b"))  # x never was on b
    state = c.orch.run("r")
    assert state.location(0) == "a" and not state.lost
    assert c.running_ids() == ["z"] and c.running[("r", 2)][0] == attempt + 1
    c.drain()
    assert [d[1] for d in c.dispatched].count(0) == 1 and c.idle()


def test_result_lost_without_consumer_recomputes_it(sched):
    c = Cluster(sched, {"a": {}}, slots={"a": 1})
    c.submit(dag_of(fn("x"), fn("y"), fn("z", ["x", "y"])))
    c.finish("x")
    c.handle(ResultLost("r", 0))
    assert c.running_ids() == ["y"]
    c.finish("y")
    assert c.running_ids() == ["x"]  # z waits for x's recompute
    c.drain()
    assert c.finished["r"].error is None
    assert [d[1] for d in c.dispatched].count(0) == 2


def test_lost_node_mid_run_with_costs_releases_every_claim(sched):
    c = Cluster(sched, {"a": {"cpu": 2}, "b": {"cpu": 2}, "c": {"cpu": 2}})
    c.submit(dag_of(*[fn(k, cost={"cpu": 1}) for k in range(8)], fn("sum", list(range(8)))))
    for key in [k for k, (_, node) in c.running.items() if node == "b"]:
        c.running.pop(key)
    c.handle(NodeLost("b"))
    c.drain()
    assert c.finished["r"].error is None and c.idle()
    assert set(c.orch.run("r").allocations().values()) <= {"a", "c"}


def test_local_only_runs_everything_on_the_local_node(sched):
    c = Cluster(sched, {"local": {"cpu": 1}, "b": {"cpu": 64}})
    c.submit(
        dag_of(fn("x", cost={"cpu": 32}, node="b"), fn("y", ["x"], cost={"gpu": 3})),
        local_only=True,
    )
    assert c.node_of("x") == "local"
    c.drain()
    assert set(c.orch.run("r").allocations().values()) == {"local"} and c.idle()


def test_local_node_lost_or_missing_fails_local_only_runs(sched):
    c = Cluster(sched, {"local": {}, "b": {}})
    c.submit(dag_of(fn("x"), fn("y", ["x"])), local_only=True)
    c.lose("local")
    err = c.finished["r"].error
    assert isinstance(err, NodeLostError) and err.node == "local" and err.function_ids == ["x", "y"]
    c.submit(dag_of(fn("x")), run_id="r2", local_only=True)
    assert "local node 'local' is not in the ledger" in str(c.finished["r2"].error)


def test_a_node_removed_directly_from_the_ledger_counts_as_lost_at_next_submit(sched):
    c = Cluster(sched, {"a": {"cpu": 1}, "b": {"cpu": 1}})
    c.submit(dag_of(fn("x", cost={"cpu": 1}), fn("y", cost={"cpu": 1})))
    assert c.node_of("x") == "a"
    c.running.pop(("r", 0))
    c.ledger.unregister("a")
    c.submit(dag_of(fn("q")), run_id="r2")
    assert "a" not in c.orch.node_load()
    c.finish("y")
    assert c.node_of("x") == "b"
    c.drain()
    assert c.finished["r"].error is None and c.idle()


def test_many_waiting_functions_start_at_once_when_room_appears(sched):
    c = Cluster(sched, {"a": {"cpu": 1}}, lookahead=0)
    c.submit(dag_of(*[fn(k, cost={"cpu": 1}) for k in range(20)]))
    assert len(c.running) == 1
    c.handle(NodeJoined("big", {"cpu": 12}))
    assert len(c.running) == 13 and c.ledger.used("big") == {"cpu": 12.0}
    c.drain()
    assert c.idle()


def test_many_waiting_functions_start_at_once_when_room_appears_with_lookahead(sched):
    c = Cluster(sched, {"a": {"cpu": 1}}, lookahead=2)
    c.submit(dag_of(*[fn(k, cost={"cpu": 1}) for k in range(20)]))
    assert len(c.running) == 3 and c.orch.queued_ahead() == {"a": 2}
    c.handle(NodeJoined("big", {"cpu": 12}))
    assert len(c.running) == 17 and c.ledger.used("big") == {"cpu": 12.0}
    assert c.orch.queued_ahead() == {"a": 2, "big": 2}
    c.drain()
    assert c.idle()


def test_load_balanced_mixes_costed_and_zero_cost_work(sched):
    c = Cluster(sched, {"a": {"cpu": 4}, "b": {"cpu": 4}}, slots={"a": 3, "b": 3})
    c.submit(
        dag_of(*[fn(f"c{k}", cost={"cpu": 1}) for k in range(3)], *[fn(k) for k in range(4)]),
        strategy="load_balanced",
    )
    assert c.orch.node_load() == {"a": 3, "b": 3}
    c.drain()
    assert c.idle()


def test_forget_drops_finished_runs_only(sched):
    c = Cluster(sched, {"a": {}})
    c.submit(dag_of(fn("x")), run_id="done")
    c.submit(dag_of(fn("x")), run_id="busy")
    c.finish("x", "done")
    c.orch.forget("done")
    c.orch.forget("busy")
    c.orch.forget("never")
    with pytest.raises(KeyError):
        c.orch.run("done")
    assert c.orch.run("busy").in_flight() == {0: "a"}
    assert c.orch.run("busy").attempt(0) == 1
    with pytest.raises(ValueError):
        Orchestrator(sched.ResourceLedger(), "x", default_slots=0)

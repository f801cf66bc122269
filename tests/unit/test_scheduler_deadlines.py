"""Work pinned to a lost node waits for it until the run's deadline."""

from __future__ import annotations

import numpy as np
from scheduler_harness import Cluster, dag_of, fn, sched  # noqa: F401

from handoff.dag import Collocated
from handoff.errors import AllocationError, NodeLostError
from handoff.scheduler import (
    CancelTasks,
    NodeJoined,
    RunFinished,
    Tick,
)

# -- pinned work waits for its lost node until the run's deadline ---------------------------


def test_pinned_work_waits_for_its_node_and_completes_when_it_rejoins(sched):
    c = Cluster(sched, {"a": {}, "b": {}})
    c.submit(
        dag_of(fn("p", node="a"), fn("use", ["p"]), fn("q", node="a"), fn("free")),
        deadline=100.0,
    )
    assert c.node_of("p") == c.node_of("q") == "a"
    c.finish("p")  # its result lives only on a
    assert c.node_of("use") == "a"
    c.finish("free")
    p, use, q = c.index("r", "p"), c.index("r", "use"), c.index("r", "q")
    q_attempt = c.running[("r", q)][0]
    out = c.lose("a", now=1.0)
    assert not any(isinstance(i, RunFinished) for i in out) and "r" not in c.finished
    # free's result was on a too: it is recomputed on b; use waits for p, pinned to a
    assert c.running_ids() == ["free"] and c.node_of("free") == "b"
    c.finish("free")
    assert not c.running
    state = c.orch.run("r")
    assert set(state.awaiting) == {"a"} and c.orch.active_runs == ["r"]
    assert c.orch.next_deadline == 100.0
    assert c.handle(Tick(50.0)) == []
    c.handle(NodeJoined("a", {}))
    assert not state.awaiting
    assert c.running_ids() == ["p", "q"] and c.node_of("p") == c.node_of("q") == "a"
    assert c.running[("r", q)][0] == q_attempt + 1 and c.running[("r", p)][0] == 2
    c.finish("p")
    assert c.node_of("use") in {"a", "b"}
    c.drain()
    assert c.finished["r"].error is None
    assert set(state.allocations()) == {"p", "use", "q", "free"}
    assert state.allocations()["p"] == state.allocations()["q"] == "a"
    stats = state.function_stats()
    assert stats["p"].attempts == stats["q"].attempts == stats["use"].attempts == 1
    assert state.task(q).recoveries == 1 and state.task(use).recoveries == 1
    assert c.handle(Tick(1000.0)) == [] and c.idle()


def test_pinned_work_fails_the_run_when_its_node_misses_the_deadline(sched):
    c = Cluster(sched, {"a": {"cpu": 2}, "b": {"cpu": 2}})
    c.submit(
        dag_of(
            fn("p", cost={"cpu": 1}, node="a"),
            fn("later", ["p"], cost={"cpu": 1}, node="a"),
            fn("w1", cost={"cpu": 1}, node="b"),
            fn("w2", cost={"cpu": 1}, node="b"),
            fn("x", ["w1"], cost={"cpu": 1}),
        ),
        deadline=10.0,
    )
    assert c.node_of("p") == "a" and c.running_ids() == ["p", "w1", "w2"]
    c.lose("a", now=2.0)
    assert "r" not in c.finished and c.running_ids() == ["w1", "w2"]
    c.finish("w1")
    assert c.node_of("x") == "b"
    assert c.ledger.used("b") == {"cpu": 2.0}
    assert c.handle(Tick(9.99)) == []
    out = c.handle(Tick(10.0))
    err = c.finished["r"].error
    assert isinstance(err, NodeLostError) and err.node == "a"
    assert err.function_ids == ["p", "later"]  # held, and pinned but not yet ready
    assert "did not come back before the run's timeout" in str(err)
    assert CancelTasks("r", "b", sorted([c.index("r", "w2"), c.index("r", "x")])) in out
    assert c.released["r"] == ["a", "b"]
    assert not c.running and c.idle() and not np.asarray(c.ledger.used_matrix()).any()
    assert c.orch.active_runs == [] and c.orch.next_deadline is None
    assert c.handle(NodeJoined("a", {"cpu": 2})) == []  # too late: nothing to place


def test_pinned_work_without_a_deadline_fails_at_once(sched):
    c = Cluster(sched, {"a": {"cpu": 1}, "b": {"cpu": 1}})
    c.submit(dag_of(fn("p", cost={"cpu": 1}, node="a"), fn("x", cost={"cpu": 1}, node="b")))
    c.lose("a", now=1.0)
    err = c.finished["r"].error
    assert isinstance(err, NodeLostError) and err.node == "a" and err.function_ids == ["p"]
    assert "pinned to it, and the run has no timeout to wait in" in str(err)
    assert not c.running and c.idle() and c.orch.next_deadline is None


def test_node_lost_after_the_deadline_fails_at_once(sched):
    c = Cluster(sched, {"a": {}, "b": {}})
    c.submit(dag_of(fn("p", node="a")), deadline=5.0)
    c.lose("a", now=5.0)
    err = c.finished["r"].error
    assert isinstance(err, NodeLostError) and err.function_ids == ["p"]
    assert "before the run's timeout" in str(err) and c.idle()


def test_tick_with_nothing_waiting_is_a_no_op(sched):
    c = Cluster(sched, {"a": {"cpu": 1}})
    c.submit(dag_of(*[fn(k, cost={"cpu": 1}) for k in range(3)]), deadline=1.0)
    c.submit(dag_of(fn("y", cost={"cpu": 1}), id="two"), run_id="r2")

    def no_pump(*args):
        raise AssertionError("a quiet Tick must not look at the runs")

    c.orch.placer.pump = no_pump  # an instance attribute, shadowing the method
    assert c.orch.next_deadline is None
    assert c.orch.handle(Tick(0.5)) == [] and c.orch.handle(Tick(1e9), Tick(2e9)) == []
    del c.orch.placer.pump
    c.drain()
    assert c.finished["r"].error is None and c.finished["r2"].error is None and c.idle()


def test_a_restarted_node_gets_the_work_pinned_to_it(sched):
    c = Cluster(sched, {"a": {"cpu": 2, "gpu": 1}, "b": {"cpu": 4}})
    c.submit(
        dag_of(
            fn("g", cost={"cpu": 1, "gpu": 1}, node="a"),
            fn("h", ["g"], cost={"cpu": 1}, node=Collocated("g")),
            fn("k", ["h"], cost={"cpu": 1}),
        ),
        deadline=30.0,
    )
    g, h = c.index("r", "g"), c.index("r", "h")
    c.finish("g")
    assert c.node_of("h") == "a" and c.ledger.used("a") == {"cpu": 1.0}
    c.lose("a", now=3.0)  # the process died...
    assert not c.running and not c.ledger.has_node("a")
    state = c.orch.run("r")
    assert state.location(g) is None and state.group_node == ["a"]
    c.handle(NodeJoined("a", {"cpu": 2, "gpu": 1}))  # ...and was restarted under its name
    assert c.running_ids() == ["g"] and c.running[("r", g)] == (2, "a")
    assert c.ledger.used("a") == {"cpu": 1.0, "gpu": 1.0}
    c.finish("g")
    assert c.running[("r", h)] == (2, "a")
    c.drain()
    assert c.finished["r"].error is None and c.idle()
    alloc = state.allocations()
    assert alloc["g"] == alloc["h"] == "a"
    assert state.function_stats()["g"].attempts == 1 and state.task(h).recoveries == 1


def test_a_node_that_comes_back_too_small_fails_its_pinned_work(sched):
    c = Cluster(sched, {"a": {"cpu": 4}, "b": {"cpu": 4}})
    c.submit(dag_of(fn("p", cost={"cpu": 3}, node="a"), fn("x")), deadline=30.0)
    c.lose("a", now=1.0)
    assert "r" not in c.finished
    c.handle(NodeJoined("a", {"cpu": 2}))
    err = c.finished["r"].error
    assert isinstance(err, AllocationError) and err.function_id == "p"
    assert ("pinned to node 'a', which came back with too small a total capacity (node 'a' "
            "has cpu=2 of the 3 it needs)") in str(err)
    assert c.idle()


def test_waiting_runs_and_other_runs_do_not_disturb_each_other(sched):
    c = Cluster(sched, {"a": {}, "b": {}, "c": {}})
    c.submit(dag_of(fn("p", node="a"), fn("z", ["p"]), id="one"), run_id="wait", deadline=20.0)
    c.submit(dag_of(fn("p", node="a"), id="two"), run_id="nowait")
    c.submit(dag_of(fn("p", node="c"), fn("free"), id="three"), run_id="other", deadline=5.0)
    c.lose("a", now=1.0)
    assert isinstance(c.finished["nowait"].error, NodeLostError)
    assert "wait" not in c.finished and "other" not in c.finished
    c.lose("c", now=2.0)  # other waits for c, with an earlier deadline
    assert c.orch.next_deadline == 5.0
    c.handle(Tick(6.0))
    err = c.finished["other"].error
    assert isinstance(err, NodeLostError) and err.node == "c" and err.function_ids == ["p"]
    assert "wait" not in c.finished
    c.handle(NodeJoined("a", {}))
    c.drain()
    assert c.finished["wait"].error is None
    assert c.handle(Tick(100.0)) == [] and c.idle()


def test_a_run_waiting_for_two_nodes_names_the_first(sched):
    c = Cluster(sched, {"a": {}, "b": {}, "c": {}})
    c.submit(dag_of(fn("p", node="a"), fn("q", node="b"), fn("s", node="c")), deadline=9.0)
    c.finish("s")
    c.lose("a", now=1.0)
    c.lose("b", now=2.0)
    c.handle(NodeJoined("b", {}))
    assert c.running_ids() == ["q"]
    c.lose("b", now=3.0)
    c.handle(Tick(9.0))
    err = c.finished["r"].error
    assert err.node == "a" and err.function_ids == ["p"] and "nor did 'b'" in str(err)
    assert c.idle()


def test_local_only_run_waits_for_the_local_node(sched):
    c = Cluster(sched, {"local": {}, "b": {}})
    c.submit(dag_of(fn("x"), fn("y", ["x"])), local_only=True, deadline=10.0)
    c.finish("x")
    c.lose("local", now=1.0)
    assert "r" not in c.finished and not c.running
    c.handle(NodeJoined("local", {}))
    assert c.running_ids() == ["x"]  # its result went with the node
    c.drain()
    assert c.finished["r"].error is None
    assert set(c.orch.run("r").allocations().values()) == {"local"} and c.idle()


def test_a_node_registered_directly_again_releases_the_held_work(sched):
    c = Cluster(sched, {"a": {"cpu": 1}, "b": {"cpu": 1}})
    c.submit(dag_of(fn("p", cost={"cpu": 1}, node="a")), deadline=10.0)
    c.lose("a", now=1.0)
    c.ledger.register("a", {"cpu": 1})
    c.submit(dag_of(fn("q"), id="two"), run_id="r2")
    assert c.node_of("p") == "a"
    c.drain()
    assert c.finished["r"].error is None and c.idle()


# -- randomized ----------------------------------------------------------------------------

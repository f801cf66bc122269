"""The Orchestrator places work: dependencies, resources, slots, strategies, pins, collocation."""

from __future__ import annotations

import pytest
from scheduler_harness import Cluster, dag_of, fn, sched  # noqa: F401

from handoff.dag import Collocated
from handoff.errors import AllocationError
from handoff.scheduler import (
    FunctionStats,
    NodeJoined,
    NodeUpdated,
    RunFinished,
)

# -- basics --------------------------------------------------------------------------------


def test_diamond_runs_in_dependency_order_and_reports_stats(sched):
    c = Cluster(sched, {"a": {"cpu": 4}, "b": {"cpu": 4}})
    c.submit(dag_of(fn("src"), fn("l", ["src"]), fn("r", ["src"]), fn("sink", ["l", "r"])))
    assert c.running_ids() == ["src"]
    c.finish("src")
    assert c.running_ids() == ["l", "r"]
    c.finish("l")
    assert c.running_ids() == ["r"]
    c.finish("r")
    c.finish("sink")
    assert c.finished["r"] == RunFinished("r", None, None)
    state = c.orch.run("r")
    assert state.finished and state.error is None
    assert set(state.allocations()) == {"src", "l", "r", "sink"}
    stats = state.function_stats()
    assert stats["sink"] == FunctionStats(state.location(3), 1, 3.5, 4.0)
    assert set(state.stats) == {0, 1, 2, 3}
    assert c.released["r"] and c.idle()


def test_inline_functions_are_never_dispatched_and_are_transparent(sched):
    c = Cluster(sched, {"a": {}})
    c.submit(
        dag_of(
            fn("x"),
            fn("y"),
            fn("glue", ["x", "y"], type="inline"),
            fn("use", ["glue"]),
            fn("const", type="inline"),
            fn("alone", ["const"]),
        )
    )
    assert c.running_ids() == ["alone", "x", "y"]
    c.finish("x")
    assert "use" not in c.running_ids()
    c.finish("y")
    assert c.running_ids() == ["alone", "use"]
    state = c.orch.run("r")
    assert state.effective_inputs(c.index("r", "use")) == [0, 1]
    c.drain()
    assert c.finished["r"].error is None
    assert set(state.allocations()) == {"x", "y", "use", "alone"}
    assert all(i not in c.dags["r"].compile().index or True for i in state.stats)
    assert sorted(state.function_stats()) == sorted(["x", "y", "use", "alone"])


def test_empty_and_all_inline_dags_finish_at_submit(sched):
    c = Cluster(sched, {"a": {}})
    c.submit(dag_of(id="empty"), run_id="e")
    c.submit(dag_of(fn("i", type="inline"), id="inl"), run_id="i")
    assert c.finished["e"].error is None and c.finished["i"].error is None
    assert not c.dispatched and "e" not in c.released


def test_duplicate_run_id_and_unknown_strategy_are_misuse(sched):
    c = Cluster(sched, {"a": {}})
    c.submit(dag_of(fn("x")))
    with pytest.raises(ValueError, match="already in use"):
        c.submit(dag_of(fn("x")))
    with pytest.raises(ValueError, match="first_available, load_balanced, cost_optimized"):
        c.submit(dag_of(fn("x")), run_id="s", strategy="fastest")


def test_forward_references_schedule_by_dependencies(sched):
    d = dag_of(fn("c", ["b"]), fn("b", ["a"]), fn("a"))
    c = Cluster(sched, {"a": {}})
    c.submit(d)
    assert c.running_ids() == ["a"]
    c.drain()
    assert c.finished["r"].error is None


# -- allocation errors at submit ---------------------------------------------------------


@pytest.mark.parametrize(
    "functions, fid, reason",
    [
        ([fn("big", cost={"cpu": 9})], "big", "fits no node's total capacity"),
        ([fn("gpu", cost={"gpu": 1})], "gpu", "fits no node's total capacity"),
        ([fn("p", node="nowhere")], "p", "pinned to node 'nowhere', which is not in the cluster"),
        (
            [fn("p", node="a", cost={"cpu": 6})],
            "p",
            "pinned to node 'a', whose total capacity is too small "
            "(node 'a' has cpu=4 of the 6 it needs)",
        ),
        (
            [fn("x", cost={"cpu": 5}), fn("y", cost={"cpu": 9}, node=Collocated("x"))],
            "y",
            "its cost fits no node's total capacity",
        ),
        (
            [fn("x", cost={"cpu": 3}, node="a"), fn("y", cost={"cpu": 5}, node=Collocated("x"))],
            "y",
            "the total capacity of node 'a', where the collocated functions ['x', 'y'] are "
            "pinned, does not fit it",
        ),
    ],
)
def test_unplaceable_functions_fail_the_run_at_start(sched, functions, fid, reason):
    c = Cluster(sched, {"a": {"cpu": 4}, "b": {"cpu": 8}})
    c.submit(dag_of(*functions, fn("ok")))
    err = c.finished["r"].error
    assert isinstance(err, AllocationError)
    assert err.function_id == fid
    assert reason in str(err)
    assert err.capacities["a"] == {"cpu": 4.0} and "b" in err.capacities
    assert not c.dispatched and c.idle()


def test_a_collocation_no_node_holds_says_node_by_node_what_each_lacks(sched):
    c = Cluster(sched, {"a": {"cpu": 8}, "b": {"cpu": 2, "gpu": 1}})
    c.submit(dag_of(fn("x", cost={"cpu": 5}), fn("y", cost={"gpu": 1}, node=Collocated("x"))))
    err = c.finished["r"].error
    assert isinstance(err, AllocationError) and err.function_id == "y"
    assert str(err).endswith(
        "no node that fits the ones before it fits it (node 'a' has no gpu; node 'b' has "
        "cpu=2 of the 5 it needs); nodes: a={'cpu': 8.0}, b={'cpu': 2.0, 'gpu': 1.0}"
    )


def test_inline_functions_need_no_placement(sched):
    c = Cluster(sched, {"a": {"cpu": 1}})
    # an inline function's cost is not claimed on its own; it never runs alone
    c.submit(dag_of(fn("i", type="inline", cost={"cpu": 100}), fn("use", ["i"])))
    c.drain()
    assert c.finished["r"].error is None


# -- resources ------------------------------------------------------------------------------


def test_function_that_does_not_fit_now_waits_and_never_overcommits(sched):
    c = Cluster(sched, {"a": {"cpu": 4}}, lookahead=0)
    c.submit(dag_of(*[fn(k, cost={"cpu": 3}) for k in "xyz"]))
    assert c.running_ids() == ["x"]
    assert c.ledger.used("a") == {"cpu": 3.0}
    c.finish("x")
    assert c.running_ids() == ["y"]
    c.drain()
    assert c.finished["r"].error is None and c.idle()


@pytest.mark.parametrize(
    "strategy, expected",
    [
        ("first_available", ["big", "big", "big"]),
        ("load_balanced", ["big", "big", "small"]),  # loads after: .25/.5, .5/.5 (tie), .75/.5
        ("cost_optimized", ["small", "small", "big"]),  # tightest fit
    ],
)
def test_strategies_choose_like_the_core(sched, strategy, expected):
    c = Cluster(sched, {"big": {"cpu": 4}, "small": {"cpu": 2}})
    c.submit(dag_of(*[fn(k, cost={"cpu": 1}) for k in "xyz"]), strategy=strategy)
    assert [c.node_of(k) for k in "xyz"] == expected


def test_function_that_does_not_fit_now_is_queued_ahead_without_a_claim(sched):
    c = Cluster(sched, {"a": {"cpu": 4}})  # lookahead=1
    c.submit(dag_of(*[fn(k, cost={"cpu": 3}) for k in "xyz"]))
    assert c.running_ids() == ["x", "y"] and c.orch.run("r").queued_ahead() == {1: "a"}
    assert c.ledger.used("a") == {"cpu": 3.0}  # y holds no claim
    c.finish("x")  # y takes x's place, z is queued ahead
    assert c.running_ids() == ["y", "z"] and c.orch.run("r").queued_ahead() == {2: "a"}
    assert c.ledger.used("a") == {"cpu": 3.0}
    c.drain()
    assert c.finished["r"].error is None and c.idle()


def test_zero_cost_work_respects_slots_and_spreads(sched):
    c = Cluster(sched, {"a": {}, "b": {}, "c": {}}, slots={"a": 2, "b": 2, "c": 2})
    c.submit(dag_of(*[fn(k) for k in range(10)]), strategy="first_available")
    assert [c.node_of(k) for k in range(6)] == ["a", "a", "b", "b", "c", "c"]
    assert len(c.running) == 6
    c.finish(3)
    assert c.node_of(6) == "b"
    c.drain()
    c2 = Cluster(sched, {"a": {}, "b": {}, "c": {}})
    c2.submit(dag_of(*[fn(k) for k in range(7)]), strategy="load_balanced")
    assert sorted(c2.orch.node_load().values()) == [2, 2, 3]


def test_default_slots_bound_in_flight_per_node(sched):
    c = Cluster(sched, {"a": {}})
    c.submit(dag_of(*[fn(k) for k in range(100)]))
    assert len(c.running) == 64
    out = c.orch.set_node_slots("a", 70)
    c.apply(out)
    assert len(c.running) == 70
    with pytest.raises(ValueError):
        c.orch.set_node_slots("a", 0)


def test_costed_function_on_a_slot_full_node_goes_elsewhere(sched):
    c = Cluster(sched, {"a": {"cpu": 100}, "b": {"cpu": 100}}, slots={"a": 2, "b": 2})
    c.submit(dag_of(*[fn(k, cost={"cpu": 1}) for k in range(5)]))
    assert [c.node_of(k) for k in range(4)] == ["a", "a", "b", "b"]
    assert c.ledger.used("a") == {"cpu": 2.0} and c.ledger.used("b") == {"cpu": 2.0}
    c.finish(0)
    assert c.node_of(4) == "a"
    c.drain()
    assert c.idle()


def test_waiting_work_is_placed_when_a_node_joins_or_grows(sched):
    c = Cluster(sched, {"a": {"cpu": 2}}, lookahead=0)
    c.submit(dag_of(*[fn(k, cost={"cpu": 2}) for k in "xyz"]))
    assert c.running_ids() == ["x"]
    c.handle(NodeJoined("b", {"cpu": 2}))
    assert c.running_ids() == ["x", "y"] and c.node_of("y") == "b"
    c.handle(NodeUpdated("a", {"cpu": 4}))  # keeps x's claim: only 2 free
    assert c.running_ids() == ["x", "y", "z"] and c.node_of("z") == "a"
    assert c.ledger.used("a") == {"cpu": 4.0}
    c.drain()
    assert c.idle()


def test_queued_ahead_work_takes_its_claim_when_its_node_grows(sched):
    c = Cluster(sched, {"a": {"cpu": 2}})
    c.submit(dag_of(*[fn(k, cost={"cpu": 2}) for k in "xyz"]))
    assert c.running_ids() == ["x", "y"] and c.orch.queued_ahead() == {"a": 1}
    c.handle(NodeJoined("b", {"cpu": 2}))  # z fits b's free resources: claimed there
    assert c.running_ids() == ["x", "y", "z"] and c.node_of("z") == "b"
    assert c.orch.queued_ahead() == {"a": 1}
    c.handle(NodeUpdated("a", {"cpu": 4}))  # y, queued ahead on a, now fits: claimed
    assert c.orch.queued_ahead() == {} and c.ledger.used("a") == {"cpu": 4.0}
    c.drain()
    assert c.idle()


def test_nodes_registered_directly_on_the_ledger_are_used_from_the_next_submit(sched):
    c = Cluster(sched, {"a": {"cpu": 1}})
    c.ledger.register("b", {"cpu": 1})
    c.submit(dag_of(fn("x", cost={"cpu": 1}), fn("y", cost={"cpu": 1})))
    assert {c.node_of("x"), c.node_of("y")} == {"a", "b"}


# -- pins and collocation ------------------------------------------------------------------


def test_pinned_function_waits_for_its_node(sched):
    c = Cluster(sched, {"a": {"cpu": 1}, "b": {"cpu": 1}}, lookahead=0)
    c.submit(
        dag_of(
            fn("x", cost={"cpu": 1}, node="b"),
            fn("y", cost={"cpu": 1}, node="b"),
            fn("z", node="a"),
        )
    )
    assert c.running_ids() == ["x", "z"] and c.node_of("x") == "b"
    c.finish("x")
    assert c.node_of("y") == "b"
    c.drain()
    assert c.orch.run("r").allocations() == {"x": "b", "y": "b", "z": "a"}


def test_pinned_function_is_queued_ahead_only_on_its_node(sched):
    c = Cluster(sched, {"a": {"cpu": 1}, "b": {"cpu": 1}})
    c.submit(
        dag_of(
            fn("x", cost={"cpu": 1}, node="b"),
            fn("y", cost={"cpu": 1}, node="b"),
            fn("w", cost={"cpu": 1}, node="b"),
            fn("z", node="a"),
        )
    )
    assert c.running_ids() == ["x", "y", "z"] and c.node_of("y") == "b"
    assert c.orch.run("r").queued_ahead() == {c.index("r", "y"): "b"}  # w waits: b has one
    assert c.ledger.used("a") == {}
    c.finish("x")
    assert c.node_of("w") == "b" and c.orch.run("r").queued_ahead() == {c.index("r", "w"): "b"}
    c.drain()
    assert c.orch.run("r").allocations() == {"x": "b", "y": "b", "w": "b", "z": "a"}
    assert c.idle()


def test_collocated_group_goes_where_its_first_member_went(sched):
    c = Cluster(sched, {"a": {"cpu": 2}, "b": {"cpu": 4}})
    c.submit(
        dag_of(
            fn("x", cost={"cpu": 2}),
            fn("y", ["x"], cost={"cpu": 2}, node=Collocated("x")),
            fn("z", cost={"cpu": 1}, node=Collocated("y")),
        )
    )
    # the summed cost (5) fits no node, but each member fits a (first available): the group
    # goes there and its members run one after another
    assert "r" not in c.finished and c.node_of("x") == c.node_of("z") == "a"
    assert c.orch.run("r").queued_ahead() == {c.index("r", "z"): "a"}  # waits for x's cpu
    c.drain()  # Cluster.check: never over-committed
    assert c.finished["r"].error is None and c.idle()
    assert set(c.orch.run("r").allocations().values()) == {"a"}

    c = Cluster(sched, {"a": {"cpu": 2}, "b": {"cpu": 4}})
    c.submit(
        dag_of(
            fn("x", cost={"cpu": 2}),
            fn("y", ["x"], cost={"cpu": 1}, node=Collocated("x")),
            fn("z", cost={"cpu": 1}, node=Collocated("y")),
            fn("free", cost={"cpu": 2}),
        )
    )
    assert c.node_of("x") == "b" and c.node_of("z") == "b"  # the group's 4 fits only b
    assert c.node_of("free") == "a"
    c.drain()
    alloc = c.orch.run("r").allocations()
    assert alloc["x"] == alloc["y"] == alloc["z"] == "b"
    assert c.idle()


def test_collocated_functions_that_fit_one_at_a_time_run_one_at_a_time(sched):
    # the case: together 8050 > 8000, each alone fits; no over-commit, both run on n
    for lookahead in (0, 1):
        c = Cluster(sched, {"n": {"cpu": 2, "memory": 8000}, "m": {"cpu": 8}}, lookahead=lookahead)
        c.submit(
            dag_of(
                fn("task_A", cost={"cpu": 1, "memory": 7900}, node="n"),
                fn("task_B", cost={"cpu": 1, "memory": 150}, node=Collocated("task_A")),
            )
        )
        assert c.node_of("task_A") == "n" and c.ledger.used("n")["memory"] == 7900
        if lookahead:  # sent ahead to n, holding no claim until task_A releases its memory
            assert c.orch.run("r").queued_ahead() == {c.index("r", "task_B"): "n"}
        else:
            assert c.running_ids() == ["task_A"]
        c.finish("task_A")
        assert c.node_of("task_B") == "n" and c.ledger.used("n")["memory"] == 150
        c.drain()
        assert c.finished["r"].error is None
        assert c.orch.run("r").allocations() == {"task_A": "n", "task_B": "n"}


@pytest.mark.parametrize("strategy", ["first_available", "load_balanced", "cost_optimized"])
def test_an_unpinned_group_prefers_a_node_that_fits_its_sum(sched, strategy):
    # x and y fit a alone (cpu 2) but together (4) only b
    c = Cluster(sched, {"a": {"cpu": 2}, "b": {"cpu": 4}})
    c.submit(
        dag_of(fn("x", cost={"cpu": 2}), fn("y", cost={"cpu": 2}, node=Collocated("x"))),
        strategy=strategy,
    )
    assert c.node_of("x") == c.node_of("y") == "b"
    # b busy: the group takes a, where each member fits, rather than waiting for b
    c = Cluster(sched, {"a": {"cpu": 2}, "b": {"cpu": 4}}, lookahead=0)
    c.submit(dag_of(fn("hog", cost={"cpu": 4}, node="b")), run_id="hog")
    c.submit(
        dag_of(fn("x", cost={"cpu": 2}), fn("y", cost={"cpu": 2}, node=Collocated("x"))),
        strategy=strategy,
    )
    assert c.node_of("x") == "a" and c.running_ids() == ["x"]
    c.finish("x")
    assert c.node_of("y") == "a"
    c.drain()
    assert c.finished["r"].error is None and c.idle()


def test_a_group_no_single_node_can_hold_fails_naming_the_member(sched):
    # x needs the gpu only a has; y needs more cpu than a has: each fits some node, not one
    c = Cluster(sched, {"a": {"cpu": 1, "gpu": 1}, "b": {"cpu": 8}})
    c.submit(
        dag_of(
            fn("x", cost={"gpu": 1}),
            fn("y", cost={"cpu": 4}, node=Collocated("x")),
            fn("z", node=Collocated("y")),
        )
    )
    err = c.finished["r"].error
    assert isinstance(err, AllocationError) and err.function_id == "y"
    assert err.cost == {"cpu": 4.0}
    assert "need one node that fits each of them" in str(err)
    assert "['x', 'y', 'z']" in str(err)
    assert not c.dispatched and c.idle()


def test_collocated_member_waits_for_its_groups_node(sched):
    c = Cluster(sched, {"a": {"cpu": 4}, "b": {"cpu": 4}}, lookahead=0)
    c.submit(
        dag_of(
            fn("other", cost={"cpu": 2}, node="a"),
            fn("x", cost={"cpu": 2}),
            fn("y", cost={"cpu": 2}, node=Collocated("x")),
        )
    )
    assert c.node_of("x") == "a"  # the group's 4 fits a's total, and x fits a's free 2
    assert c.running_ids() == ["other", "x"]  # y waits for a although b is free
    c.finish("other")
    assert c.node_of("y") == "a"


def test_collocated_member_is_queued_ahead_on_its_groups_node(sched):
    c = Cluster(sched, {"a": {"cpu": 4}, "b": {"cpu": 4}})
    c.submit(
        dag_of(
            fn("other", cost={"cpu": 2}, node="a"),
            fn("x", cost={"cpu": 2}),
            fn("y", cost={"cpu": 2}, node=Collocated("x")),
        )
    )
    assert c.node_of("x") == "a" and c.node_of("y") == "a"  # y ahead on a, not on free b
    assert c.orch.run("r").queued_ahead() == {c.index("r", "y"): "a"}
    c.finish("other")
    assert c.orch.queued_ahead() == {} and c.ledger.used("a") == {"cpu": 4.0}
    c.drain()
    assert c.idle()


def test_an_allocation_error_names_nodes_that_lack_the_same_together(sched):
    caps = {f"n{k}": {"cpu": 1} for k in range(7)}
    caps["big"] = {"cpu": 8, "gpu": 1}
    c = Cluster(sched, caps)
    c.submit(dag_of(fn("train", cost={"cpu": 2, "gpu": 2})))
    err = c.finished["r"].error
    assert isinstance(err, AllocationError) and err.function_id == "train"
    assert err.reason == (
        "its cost fits no node's total capacity (nodes 'n0', 'n1', 'n2', 'n3', 'n4' and 2 more "
        "have cpu=1 of the 2 it needs, no gpu; node 'big' has gpu=1 of the 2 it needs)"
    )

"""SimpleAllocator (static plans in waves) and SimpleResourceTracker, against both cores."""

from __future__ import annotations

import random

import numpy as np
import pytest
from scheduler_harness import Cluster, sched  # noqa: F401

import handoff.allocation as allocation_module
import handoff.resources as resources_module
from handoff.allocation import STRATEGIES, Allocator, SimpleAllocator, apply_plan
from handoff.dag import DAG, Collocated, Function
from handoff.errors import AllocationError, DuplicateFunctionError, InvalidFunctionError
from handoff.resources import ResourceTracker, SimpleResourceTracker


@pytest.fixture
def impl(core, monkeypatch):
    monkeypatch.setattr(allocation_module, "_core", core)
    monkeypatch.setattr(resources_module, "_core", core)
    return core


def fn(fid, cost=None, node=None, **kw):
    return Function(id=fid, code=abs, cost=cost, node=node, **kw)


CAPS = {"a": {"cpu": 4}, "b": {"cpu": 2}}


# -- SimpleAllocator -----------------------------------------------------------------------


def test_unknown_strategy_names_the_valid_ones():
    with pytest.raises(
        ValueError, match="'fastest'; valid: first_available, load_balanced, cost_optimized"
    ):
        SimpleAllocator("fastest")
    assert STRATEGIES == ("first_available", "load_balanced", "cost_optimized")
    assert repr(SimpleAllocator()) == "SimpleAllocator('first_available')"


def test_the_builtins_satisfy_the_protocols():
    assert isinstance(SimpleAllocator(), Allocator)
    assert isinstance(SimpleResourceTracker(), ResourceTracker)


def test_first_available_fills_nodes_then_starts_a_new_wave(impl):
    plan = SimpleAllocator().allocate([fn(k, {"cpu": 2}) for k in range(6)], CAPS)
    # wave 1: a, a, b (all full); wave 2 starts with claims reset
    assert plan == {0: "a", 1: "a", 2: "b", 3: "a", 4: "a", 5: "b"}


@pytest.mark.parametrize(
    "strategy, expected",
    [
        ("first_available", ["a", "a", "a", "a", "b", "b"]),
        (
            "load_balanced",
            ["a", "a", "b", "a", "a", "b"],
        ),  # loads after: a .25, .5=.5 (tie: a), b .5, ...
        ("cost_optimized", ["b", "b", "a", "a", "a", "a"]),  # tightest fit first
    ],
)
def test_strategies(impl, strategy, expected):
    plan = SimpleAllocator(strategy).allocate([fn(k, {"cpu": 1}) for k in range(6)], CAPS)
    assert [plan[k] for k in range(6)] == expected


def test_zero_cost_and_inline_functions(impl):
    functions = [fn("x"), fn("i", type="inline"), fn("y", args=["i"])]
    assert SimpleAllocator().allocate(functions, CAPS) == {"x": "a", "y": "a"}
    assert SimpleAllocator().allocate([], CAPS) == {}


def test_pins_are_honoured(impl):
    plan = SimpleAllocator().allocate([fn("x", {"cpu": 1}, node="b"), fn("y", {"cpu": 1})], CAPS)
    assert plan == {"x": "b", "y": "a"}
    # a pinned function whose node is full starts a new wave rather than moving
    plan = SimpleAllocator().allocate([fn(k, {"cpu": 2}, node="b") for k in range(3)], CAPS)
    assert plan == {0: "b", 1: "b", 2: "b"}


def test_collocated_functions_go_together_with_their_summed_cost(impl):
    functions = [
        fn("x", {"cpu": 2}),
        fn("y", {"cpu": 2}, node=Collocated("x")),
        fn("z", {"cpu": 1}),
        fn("w", node=Collocated("y")),
    ]
    plan = SimpleAllocator().allocate(functions, {"b": {"cpu": 2}, "a": {"cpu": 4}})
    assert plan == {"x": "a", "y": "a", "z": "b", "w": "a"}
    pinned = [
        fn("x", {"cpu": 1}),
        fn("y", {"cpu": 1}, node=Collocated("x")),
        fn("p", node="b"),
        fn("q", node=Collocated("p")),
    ]
    assert SimpleAllocator().allocate(pinned, CAPS) == {"x": "a", "y": "a", "p": "b", "q": "b"}


def test_collocated_functions_that_fit_only_one_at_a_time_share_a_node(impl):
    # x and y (3 + 2 cpu) fit a (4) one at a time: the unit claims their largest cost (3)
    functions = [fn("x", {"cpu": 3}), fn("y", {"cpu": 2}, node=Collocated("x")), fn("z", {"cpu": 1})]
    assert SimpleAllocator().allocate(functions, CAPS) == {"x": "a", "y": "a", "z": "a"}
    memory = {"n": {"cpu": 2, "memory": 8000}, "m": {"cpu": 8}}
    issue = [
        fn("task_A", {"cpu": 1, "memory": 7900}, node="n"),
        fn("task_B", {"cpu": 1, "memory": 150}, node=Collocated("task_A")),
    ]
    assert SimpleAllocator().allocate(issue, memory) == {"task_A": "n", "task_B": "n"}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_group_prefers_a_node_that_fits_its_summed_cost(impl, strategy):
    group = [fn("x", {"cpu": 2}), fn("y", {"cpu": 2}, node=Collocated("x"))]
    assert set(SimpleAllocator(strategy).allocate(group, CAPS).values()) == {"a"}
    caps = {"a": {"cpu": 1, "gpu": 1}, "b": {"cpu": 8}}
    apart = [fn("x", {"gpu": 1}), fn("y", {"cpu": 4}, node=Collocated("x"))]
    with pytest.raises(AllocationError, match="need one node that fits each of them") as info:
        SimpleAllocator(strategy).allocate(apart, caps)
    assert info.value.function_id == "y"


@pytest.mark.parametrize(
    "functions, fid, reason",
    [
        ([fn("big", {"cpu": 5})], "big", "fits no node's total capacity"),
        ([fn("g", {"gpu": 1})], "g", "fits no node's total capacity"),
        ([fn("p", node="zz")], "p", "pinned to node 'zz', which is not in caps"),
        (
            [fn("p", {"cpu": 3}, node="b")],
            "p",
            "total capacity of node 'b', where it is pinned, does not fit",
        ),
        (
            [fn("x", {"cpu": 3}), fn("y", {"cpu": 5}, node=Collocated("x"))],
            "y",
            "its cost fits no node's total capacity",
        ),
        (
            [fn("x", {"cpu": 1}, node="b"), fn("y", {"cpu": 3}, node=Collocated("x"))],
            "y",
            "total capacity of node 'b', where the collocated functions ['x', 'y'] are pinned",
        ),
    ],
)
def test_unplaceable_functions_raise_allocation_error(impl, functions, fid, reason):
    with pytest.raises(AllocationError) as info:
        SimpleAllocator().allocate([fn("ok")] + functions, CAPS)
    err = info.value
    assert err.function_id == fid and reason in str(err)
    assert err.capacities == {"a": {"cpu": 4.0}, "b": {"cpu": 2.0}}


def test_no_nodes_at_all(impl):
    with pytest.raises(AllocationError, match="no nodes"):
        SimpleAllocator().allocate([fn("x")], {})


def test_bad_collocation_and_duplicates_are_misuse(impl):
    with pytest.raises(InvalidFunctionError, match="not among the functions"):
        SimpleAllocator().allocate([fn("x", node=Collocated("gone"))], CAPS)
    with pytest.raises(InvalidFunctionError, match="inline function 'i'"):
        SimpleAllocator().allocate([fn("i", type="inline"), fn("x", node=Collocated("i"))], CAPS)
    with pytest.raises(DuplicateFunctionError):
        SimpleAllocator().allocate([fn("x"), fn("x")], CAPS)
    with pytest.raises(TypeError, match="handoff.Function"):
        SimpleAllocator().allocate(["x"], CAPS)


def test_a_dag_can_be_planned_directly(impl):
    dag = (
        DAG("plan").add_function(fn("x", {"cpu": 3})).add_function(fn("y", {"cpu": 2}, args=["x"]))
    )
    assert SimpleAllocator("cost_optimized").allocate(dag, CAPS) == {"x": "a", "y": "b"}


def one_by_one(core, strategy, costs, caps):
    """The wave rule spelt out: one allocate() per function, reset when one does not fit."""

    def fresh():
        ledger = core.ResourceLedger()
        for node, c in caps.items():
            ledger.register(node, c)
        ledger.resource_vector({"cpu": 0, "mem": 0})
        return ledger

    ledger = fresh()
    out = []
    for cost in costs:
        row = ledger.resource_vector(cost)[None, :]
        got = int(core.allocate(ledger, row, None, strategy, True)[0])
        if got < 0:
            ledger = fresh()
            got = int(core.allocate(ledger, row, None, strategy, True)[0])
        out.append(ledger.node_name(got))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_batched_waves_match_the_rule_one_function_at_a_time(impl, seed):
    rng = random.Random(seed)
    caps = {
        f"n{k}": {"cpu": rng.randint(2, 16), "mem": rng.randint(100, 1000)}
        for k in range(rng.randint(1, 6))
    }
    top_cpu = max(c["cpu"] for c in caps.values())
    costs = [
        {"cpu": rng.randint(0, top_cpu), "mem": rng.choice([0, 50, 100])}
        for _ in range(rng.randint(1, 700))
    ]
    costs = [
        c if any(caps[n]["cpu"] >= c["cpu"] and caps[n]["mem"] >= c["mem"] for n in caps) else {}
        for c in costs
    ]
    strategy = STRATEGIES[seed % 3]
    plan = SimpleAllocator(strategy).allocate([fn(k, cost) for k, cost in enumerate(costs)], caps)
    assert [plan[k] for k in range(len(costs))] == one_by_one(impl, strategy, costs, caps)


# -- SimpleResourceTracker -----------------------------------------------------------------


def test_tracker_claims_all_or_nothing_and_never_overcommits(impl):
    t = SimpleResourceTracker()
    t.register("a", {"cpu": 4, "gpu": 1})
    assert t.nodes == ["a"]
    assert t.available("a", {"cpu": 4, "gpu": 1})
    assert t.request("a", {"cpu": 3})
    assert not t.request("a", {"cpu": 2, "gpu": 1})  # cpu does not fit: nothing is claimed
    assert t.free("a") == {"cpu": 1.0, "gpu": 1.0}
    assert t.request("a", {"cpu": 1, "gpu": 1})
    assert not t.available("a", {"cpu": 0.5})
    assert t.request("a", None) and t.available("a", {})
    t.release("a", {"cpu": 3})
    assert t.free("a") == {"cpu": 3.0, "gpu": 0.0}
    assert not t.available("a", {"fpga": 1})


def test_tracker_reregistration_keeps_claims(impl):
    t = SimpleResourceTracker()
    t.register("a", {"cpu": 4})
    assert t.request("a", {"cpu": 3})
    t.register("a", {"cpu": 8, "memory": 100})
    assert t.capabilities("a") == {"cpu": 8.0, "memory": 100.0}
    assert t.free("a") == {"cpu": 5.0, "memory": 100.0}
    assert not t.request("a", {"cpu": 6})


def test_tracker_unknown_nodes_have_nothing(impl):
    t = SimpleResourceTracker()
    t.register("a", {"cpu": 1})
    assert not t.available("zz", {"cpu": 1})
    assert not t.request("zz", {})
    t.release("zz", {"cpu": 1})  # nothing to give back
    t.unregister("zz")
    with pytest.raises(KeyError):
        t.capabilities("zz")
    assert t.capabilities() == {"a": {"cpu": 1.0}}
    t.unregister("a")
    assert t.capabilities() == {} and not t.available("a", {})


def test_tracker_rejects_bad_requests(impl):
    t = SimpleResourceTracker()
    with pytest.raises(ValueError):
        t.register("a", {"cpu": -1})
    t.register("a", {"cpu": 1})
    with pytest.raises(TypeError, match="mapping"):
        t.request("a", ["cpu"])
    with pytest.raises(ValueError):
        t.request("a", {"cpu": float("nan")})


def test_tracker_over_an_existing_ledger(impl):
    ledger = impl.ResourceLedger()
    ledger.register("a", {"cpu": 2})
    t = SimpleResourceTracker(ledger)
    assert t.request("a", {"cpu": 2})
    assert np.array_equal(ledger.used_matrix(), [[2.0]])
    assert repr(t) == "SimpleResourceTracker(['a'])"


# -- a user allocator's plan, taken as pins (execute(dag, allocator=...)) -------------------


class OddEven:
    """Odd ids to one node, even ids to the other; remembers what it was asked."""

    def __init__(self, odd="a", even="b"):
        self.odd, self.even, self.calls = odd, even, []

    def allocate(self, functions, caps):
        self.calls.append(([f.id for f in functions], {n: dict(c) for n, c in caps.items()}))
        return {f.id: self.odd if f.id % 2 else self.even for f in functions if not f.is_inline}


def test_a_plan_becomes_pins_and_the_scheduler_honours_them(sched):
    d = DAG("plan")
    for k in range(6):
        d.add_function(fn(k, {"cpu": 1}, args=[k - 1] if k else []))
    allocator = OddEven()
    planned = apply_plan(d, allocator, CAPS)
    assert allocator.calls == [(list(range(6)), {"a": {"cpu": 4}, "b": {"cpu": 2}})]
    assert planned.id == "plan" and [f.node for f in planned] == ["b", "a"] * 3
    assert [f.node for f in d] == [None] * 6  # the user's DAG is left alone
    c = Cluster(sched, {"a": {"cpu": 4}, "b": {"cpu": 2}, "c": {"cpu": 8}})
    c.submit(planned)
    c.drain()
    assert c.finished["r"].error is None
    assert c.orch.run("r").allocations() == {k: "a" if k % 2 else "b" for k in range(6)}


def test_a_plan_moves_a_collocation_group_together_and_leaves_the_rest_free():
    d = DAG()
    d.add_function(fn("x")).add_function(fn("y", node=Collocated("x"))).add_function(fn("z"))
    planned = apply_plan(d, type("Only", (), {"allocate": lambda self, f, c: {"y": "b"}})(), CAPS)
    assert {f.id: f.node for f in planned} == {"x": "b", "y": "b", "z": None}


@pytest.mark.parametrize(
    "plan, fid, reason",
    [
        ({"x": "zz"}, "x", "the allocator placed it on node 'zz', which is not a live node "
         "(live nodes: 'a', 'b')"),
        ({"x": "b"}, "x", "the allocator placed it on node 'b', whose total capacity does not "
         "fit it: node 'b' has cpu=2 of the 3 it needs, no gpu"),
        ({"p": "b"}, "p", "it is pinned to node 'a', but the allocator placed it on 'b'"),
        ({"x": "a", "y": "b"}, "x", "the allocator split the collocated functions ['x', 'y']"),
    ],
)
def test_a_plan_that_cannot_hold_is_an_allocation_error_saying_why(plan, fid, reason):
    d = DAG()
    d.add_function(fn("x", {"cpu": 3, "gpu": 1})).add_function(fn("y", node=Collocated("x")))
    d.add_function(fn("p", node="a"))
    with pytest.raises(AllocationError) as info:
        apply_plan(d, type("Fixed", (), {"allocate": lambda self, f, c: plan})(), CAPS)
    assert info.value.function_id == fid and reason in info.value.reason


@pytest.mark.parametrize(
    "plan, error, message",
    [
        ([("x", "a")], TypeError, "must return {function_id: node}"),
        ({"nope": "a"}, ValueError, "not in the DAG: \\['nope'\\]"),
        ({"i": "a"}, ValueError, "places inline functions \\['i'\\]"),
        ({"x": 3}, ValueError, "puts 'x' on 3, not a node name"),
    ],
)
def test_a_malformed_plan_is_refused(plan, error, message):
    d = DAG().add_function(fn("x")).add_function(fn("i", type="inline"))
    with pytest.raises(error, match=message):
        apply_plan(d, type("Fixed", (), {"allocate": lambda self, f, c: plan})(), CAPS)


def test_a_cost_that_fits_no_node_says_node_by_node_what_is_missing(impl):
    with pytest.raises(AllocationError) as info:
        SimpleAllocator().allocate([fn("big", {"cpu": 3, "gpu": 1})], CAPS)
    assert info.value.reason == (
        "its cost fits no node's total capacity (node 'a' has no gpu; "
        "node 'b' has cpu=2 of the 3 it needs, no gpu)"
    )

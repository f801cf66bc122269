"""The Orchestrator state machine: events in, instructions out, against both cores.

A small fake cluster (``Cluster``) plays the node layer: it records Dispatches as running
tasks, finishes them on request, and checks after every step that no node is
over-committed, no node holds more than its slots, and claims match what is in flight
(tasks queued ahead of their resources hold none, and there are at most ``lookahead`` of
them per node).
"""

from __future__ import annotations

import random

import numpy as np
import pytest

import handoff.scheduler.orchestrator as orchestrator_module
import handoff.scheduler.placement as placement_module
import handoff.scheduler.run as run_module
from handoff.dag import DAG, Collocated, Function
from handoff.errors import AllocationError, FunctionError, NodeLostError, TimeoutError
from handoff.scheduler import (
    CancelRun,
    CancelTasks,
    Dispatch,
    ErrorInfo,
    FunctionStats,
    NodeJoined,
    NodeLost,
    NodeUpdated,
    Orchestrator,
    ReleaseRun,
    ResultCopied,
    ResultLost,
    RunFinished,
    RunSpec,
    TaskFinished,
    Tick,
)


@pytest.fixture
def sched(core, monkeypatch):
    """The scheduler wired to one core implementation (ledger, tracker and allocate alike)."""
    monkeypatch.setattr(run_module, "_core", core)
    monkeypatch.setattr(orchestrator_module, "_core", core)
    monkeypatch.setattr(placement_module, "_core", core)
    return core


def noop(*args):
    return None


def fn(fid, args=(), **kw):
    return Function(id=fid, code=noop, args=list(args), **kw)


def dag_of(*functions, id="d"):
    d = DAG(id)
    for f in functions:
        d.add_function(f)
    return d


class Cluster:
    """Plays the node layer around one Orchestrator."""

    def __init__(self, core, nodes, slots=None, local="local", lookahead=None):
        self.ledger = core.ResourceLedger()
        kw = {} if lookahead is None else {"lookahead": lookahead}
        self.orch = Orchestrator(self.ledger, local, **kw)
        self.running: dict[tuple[str, int], tuple[int, str]] = {}  # (run, index) -> (attempt, node)
        self.order: list[tuple[str, int]] = []  # dispatch order of what is running
        self.dispatched: list[tuple[str, int, int, str]] = []
        self.cancelled: list[tuple[str, str, list]] = []
        self.finished: dict[str, RunFinished] = {}
        self.released: dict[str, list] = {}
        self.dags: dict[str, DAG] = {}
        self.clock = 0.0
        for name, s in (slots or {}).items():
            self.orch.set_node_slots(name, s)
        self.apply(self.orch.handle(*[NodeJoined(n, c) for n, c in nodes.items()]))

    # driving
    def apply(self, instructions):
        for ins in instructions:
            if isinstance(ins, Dispatch):
                assert ins.tasks, "empty dispatch"
                for i, a in ins.tasks:
                    key = (ins.run_id, i)
                    assert key not in self.running, f"{key} dispatched twice"
                    self.running[key] = (a, ins.node)
                    self.order.append(key)
                    self.dispatched.append((ins.run_id, i, a, ins.node))
            elif isinstance(ins, CancelTasks):
                self.cancelled.append((ins.run_id, ins.node, list(ins.indices)))
                for i in ins.indices:
                    assert self.running.pop((ins.run_id, i))[1] == ins.node
            elif isinstance(ins, RunFinished):
                assert ins.run_id not in self.finished, "finished twice"
                self.finished[ins.run_id] = ins
            elif isinstance(ins, ReleaseRun):
                self.released[ins.run_id] = list(ins.nodes)
            else:
                raise AssertionError(f"unexpected instruction {ins!r}")
        self.order = [k for k in self.order if k in self.running]
        self.check()
        return instructions

    def check(self):
        cap, used = self.ledger.capacity_matrix(), self.ledger.used_matrix()
        assert (used <= cap + 1e-9).all(), f"over-committed:\n{used}\n{cap}"
        load = self.orch.node_load()
        for name, n in load.items():
            assert n <= self.orch._slots[name]
        counted: dict[str, int] = {}
        ahead: dict[str, int] = {}
        claims = np.zeros_like(used)
        for run_id in self.orch.active_runs:
            state = self.orch.run(run_id)
            for i, node in state.inflight.items():
                counted[node] = counted.get(node, 0) + 1
                if i in state.ahead:
                    assert state.ahead[i] == node
                    ahead[node] = ahead.get(node, 0) + 1
                elif state.pin_all is None and i in state.vecs:
                    vec = state.vecs[i]
                    claims[self.ledger.node_index(node), : vec.shape[0]] += vec
            assert set(state.ahead) <= set(state.inflight)
        assert {k: v for k, v in load.items() if v} == counted
        assert self.orch.queued_ahead() == ahead
        assert all(n <= self.orch.lookahead for n in ahead.values())
        assert np.allclose(used, claims), f"claims:\n{used}\nin flight:\n{claims}"

    def submit(self, dag, run_id="r", **kw):
        g = dag.compile()
        self.dags[run_id] = dag
        spec = RunSpec(run_id, dag.id, g, [dag.functions[i] for i in g.ids], **kw)
        return self.apply(self.orch.submit(spec))

    def index(self, run_id, fid):
        return self.dags[run_id].compile().index[fid]

    def node_of(self, fid, run_id="r"):
        return self.running[(run_id, self.index(run_id, fid))][1]

    def running_ids(self, run_id="r"):
        ids = self.dags[run_id].compile().ids
        return sorted((ids[i] for r, i in self.running if r == run_id), key=str)

    def finish(self, fid, run_id="r", ok=True, error=None):
        i = self.index(run_id, fid)
        attempt, node = self.running.pop((run_id, i))
        self.clock += 1
        if not ok and error is None:
            error = ErrorInfo("ValueError", f"{fid} broke", "Traceback ...", b"blob")
        ev = TaskFinished(run_id, i, attempt, node, ok, error, self.clock - 0.5, self.clock)
        return self.apply(self.orch.handle(ev))

    def handle(self, *events):
        return self.apply(self.orch.handle(*events))

    def drain(self, fail=lambda run_id, fid, attempt, node: False, limit=100_000):
        """Finish running tasks, oldest first, until nothing runs."""
        steps = 0
        while self.order:
            steps += 1
            assert steps < limit
            run_id, i = self.order[0]
            attempt, node = self.running[(run_id, i)]
            fid = self.dags[run_id].compile().ids[i]
            self.finish(fid, run_id, ok=not fail(run_id, fid, attempt, node))
        return self.finished

    def lose(self, node, now=0.0):
        """``node`` dies with what runs on it."""
        for key in [k for k, (_, n) in self.running.items() if n == node]:
            del self.running[key]
        return self.handle(NodeLost(node, now))

    def idle(self):
        return not self.ledger.used_matrix().any() and not any(self.orch.node_load().values())


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
        ([fn("p", node="a", cost={"cpu": 6})], "p", "pinned to node 'a', whose total capacity"),
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


# -- concurrency ---------------------------------------------------------------------------


def test_max_concurrency_bounds_in_flight_functions(sched):
    c = Cluster(sched, {"a": {}, "b": {}})
    c.submit(dag_of(*[fn(k) for k in range(10)]), max_concurrency=3)
    seen = 0
    while c.running:
        assert len(c.running) <= 3
        seen = max(seen, len(c.running))
        c.finish(c.running_ids()[0])
    assert seen == 3 and c.finished["r"].error is None


def test_runs_are_isolated_and_take_turns(sched):
    c = Cluster(sched, {"a": {"cpu": 1}}, lookahead=0)
    c.submit(dag_of(*[fn(k, cost={"cpu": 1}) for k in range(4)], id="one"), run_id="r1")
    c.submit(dag_of(*[fn(k, cost={"cpu": 1}) for k in range(4)], id="two"), run_id="r2")
    turns = []
    while c.running:
        ((run_id, i),) = list(c.running)
        turns.append(run_id)
        c.finish(i, run_id)
    assert turns == ["r1", "r2", "r1", "r2", "r1", "r2", "r1", "r2"]
    assert c.finished["r1"].error is None and c.finished["r2"].error is None
    assert c.idle()


def test_runs_take_turns_with_queued_ahead_work(sched):
    c = Cluster(sched, {"a": {"cpu": 1}})
    c.submit(dag_of(*[fn(k, cost={"cpu": 1}) for k in range(4)], id="one"), run_id="r1")
    c.submit(dag_of(*[fn(k, cost={"cpu": 1}) for k in range(4)], id="two"), run_id="r2")
    turns = []
    while c.order:
        assert len(c.running) == 2 or len(c.order) == 1  # one running, one queued ahead
        run_id, i = c.order[0]
        turns.append(run_id)
        c.finish(i, run_id)
    # r1 queued its second task ahead before r2 arrived; then the runs alternate
    assert turns == ["r1", "r1", "r2", "r1", "r2", "r1", "r2", "r2"]
    assert c.finished["r1"].error is None and c.finished["r2"].error is None
    assert c.idle()


def test_a_failing_run_does_not_disturb_another(sched):
    c = Cluster(sched, {"a": {}, "b": {}})
    c.submit(dag_of(fn("x"), fn("y", ["x"]), id="good"), run_id="good")
    c.submit(dag_of(fn("x"), fn("boom"), id="bad"), run_id="bad", max_retries=0)
    c.finish("boom", "bad", ok=False)
    assert isinstance(c.finished["bad"].error, FunctionError)
    assert ("bad", "a", [0]) in c.cancelled or ("bad", "b", [0]) in c.cancelled
    c.drain()
    assert c.finished["good"].error is None and c.idle()


# -- failures and retries ------------------------------------------------------------------


def test_failed_attempt_is_retried_on_another_node(sched):
    c = Cluster(sched, {"a": {"cpu": 1}, "b": {"cpu": 1}})
    c.submit(dag_of(fn("x", cost={"cpu": 1})), max_retries=2)
    first = c.node_of("x")
    c.finish("x", ok=False)
    assert c.node_of("x") != first
    c.finish("x", ok=False)
    c.finish("x")
    assert c.finished["r"].error is None
    assert c.orch.run("r").function_stats()["x"].attempts == 3
    assert c.idle()


def test_retry_uses_the_failed_node_if_nothing_else_fits(sched):
    c = Cluster(sched, {"a": {"cpu": 1}, "b": {}})
    c.submit(dag_of(fn("x", cost={"cpu": 1})), max_retries=1)
    c.finish("x", ok=False)
    assert c.node_of("x") == "a"


def test_attempts_run_out_fail_fast(sched):
    c = Cluster(sched, {"a": {"cpu": 4}, "b": {"cpu": 4}})
    c.submit(
        dag_of(
            fn("boom", cost={"cpu": 1}),
            fn("slow1", cost={"cpu": 1}),
            fn("slow2", cost={"cpu": 4}),
            fn("later", ["slow1"]),
        ),
        max_retries=1,
    )
    c.finish("boom", ok=False)
    node = c.node_of("boom")
    out = c.finish("boom", ok=False)
    fin = c.finished["r"]
    err = fin.error
    assert isinstance(err, FunctionError)
    assert (err.function_id, err.node, err.attempts, err.exc_type, err.message) == (
        "boom",
        node,
        2,
        "ValueError",
        "boom broke",
    )
    assert err.remote_traceback == "Traceback ..."
    assert fin.error_info.exc_blob == b"blob"
    assert any(isinstance(i, CancelTasks) for i in out)
    assert not c.running and c.idle()
    assert c.orch.active_runs == []
    # late results of cancelled tasks are ignored
    assert c.orch.handle(TaskFinished("r", 1, 1, "a", True)) == []


def test_function_max_retries_overrides_the_runs(sched):
    c = Cluster(sched, {"a": {}})
    c.submit(dag_of(fn("x", max_retries=0), fn("y")), max_retries=5)
    c.finish("x", ok=False)
    assert c.finished["r"].error.attempts == 1
    c = Cluster(sched, {"a": {}})
    c.submit(dag_of(fn("x", max_retries=2)), max_retries=0)
    c.finish("x", ok=False)
    c.finish("x", ok=False)
    c.finish("x")
    assert c.finished["r"].error is None


def test_failure_without_error_report_still_says_what_failed(sched):
    c = Cluster(sched, {"a": {}})
    c.submit(dag_of(fn("x")), max_retries=0)
    i = c.index("r", "x")
    c.handle(TaskFinished("r", i, 1, "a", False, None, 0, 1))
    err = c.finished["r"].error
    assert (
        isinstance(err, FunctionError) and err.function_id == "x" and err.exc_type == "UnknownError"
    )


def test_late_and_unknown_events_are_ignored(sched):
    c = Cluster(sched, {"a": {}, "b": {}})
    c.submit(dag_of(fn("x"), fn("y", ["x"])), max_retries=3)
    i = c.index("r", "x")
    assert c.orch.handle(TaskFinished("nope", i, 1, "a", True)) == []
    assert c.orch.handle(TaskFinished("r", i, 7, "a", True)) == []  # stale attempt
    assert c.orch.handle(TaskFinished("r", 1, 1, "a", True)) == []  # never dispatched
    assert (
        c.orch.handle(
            ResultLost("nope", 0), CancelRun("nope", TimeoutError("x")), NodeLost("ghost")
        )
        == []
    )
    c.finish("x", ok=False)  # attempt 1 failed, attempt 2 dispatched
    assert c.orch.handle(TaskFinished("r", i, 1, "a", True)) == []
    c.drain()
    assert c.orch.handle(TaskFinished("r", 1, 1, "a", True)) == []
    with pytest.raises(TypeError, match="does not handle"):
        c.orch.handle("not an event")


# -- cancel --------------------------------------------------------------------------------


def test_cancel_run_cancels_in_flight_and_releases_everything(sched):
    c = Cluster(sched, {"a": {"cpu": 2}, "b": {"cpu": 2}}, lookahead=0)
    c.submit(dag_of(*[fn(k, cost={"cpu": 1}) for k in range(6)]))
    assert len(c.running) == 4
    reason = TimeoutError("run of DAG 'd'", 3.0)
    c.handle(CancelRun("r", reason))
    assert c.finished["r"].error is reason
    assert {node for _, node, _ in c.cancelled} == {"a", "b"}
    assert not c.running and c.idle()
    assert c.orch.handle(CancelRun("r", reason)) == []


def test_cancel_run_cancels_queued_ahead_tasks_too(sched):
    c = Cluster(sched, {"a": {"cpu": 2}, "b": {"cpu": 2}})
    c.submit(dag_of(*[fn(k, cost={"cpu": 1}) for k in range(8)]))
    assert len(c.running) == 6 and c.orch.queued_ahead() == {"a": 1, "b": 1}
    ahead = c.orch.run("r").queued_ahead()
    c.handle(CancelRun("r", TimeoutError("run of DAG 'd'", 3.0)))
    cancelled = {(node, i) for _, node, indices in c.cancelled for i in indices}
    assert {(node, i) for i, node in ahead.items()} <= cancelled and len(cancelled) == 6
    assert not c.running and c.idle() and c.orch.queued_ahead() == {}


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
    assert state.function_stats()["x"].attempts == 1 and state.recoveries[i] == 1
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
    assert state.recoveries[0] == state.recoveries[2] == 1 and state.recoveries[1] == 0
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


def test_a_result_with_a_live_copy_is_not_recomputed(sched):
    c = Cluster(sched, {"a": {}, "b": {}}, slots={"a": 1, "b": 1})
    c.submit(dag_of(fn("x"), fn("y", ["x"])))
    c.finish("x")  # on a
    c.handle(ResultCopied("r", 0, "b"))
    node_y = c.node_of("y")
    c.lose("a")
    state = c.orch.run("r")
    assert state.location(0) == "b"
    if node_y == "a":
        assert c.running_ids() == ["y"]  # re-placed, x not recomputed
    c.drain()
    assert state.allocations()["x"] == "b"
    assert [d for d in c.dispatched if d[1] == 0] == [("r", 0, 1, "a")]


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


def test_result_lost_with_a_live_copy_switches_to_the_copy(sched):
    c = Cluster(sched, {"a": {}, "b": {}}, slots={"a": 1, "b": 1})
    c.submit(dag_of(fn("x"), fn("y"), fn("z", ["x"])))
    c.finish("x")
    state = c.orch.run("r")
    other = ({"a", "b"} - {state.location(0)}).pop()
    c.handle(ResultCopied("r", 0, other))
    c.handle(ResultLost("r", 0))
    assert state.location(0) == other and not state.lost
    c.drain()
    assert [d[1] for d in c.dispatched].count(0) == 1


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
    assert state.recoveries[q] == 1 and state.recoveries[use] == 1
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

    def no_pump():
        raise AssertionError("a quiet Tick must not look at the runs")

    c.orch._pump = no_pump  # an instance attribute, shadowing the method
    assert c.orch.next_deadline is None
    assert c.orch.handle(Tick(0.5)) == [] and c.orch.handle(Tick(1e9), Tick(2e9)) == []
    del c.orch._pump
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
    assert state.function_stats()["g"].attempts == 1 and state.recoveries[h] == 1


def test_a_node_that_comes_back_too_small_fails_its_pinned_work(sched):
    c = Cluster(sched, {"a": {"cpu": 4}, "b": {"cpu": 4}})
    c.submit(dag_of(fn("p", cost={"cpu": 3}, node="a"), fn("x")), deadline=30.0)
    c.lose("a", now=1.0)
    assert "r" not in c.finished
    c.handle(NodeJoined("a", {"cpu": 2}))
    err = c.finished["r"].error
    assert isinstance(err, AllocationError) and err.function_id == "p"
    assert "pinned to node 'a', which came back with too small a total capacity" in str(err)
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


def random_dag(rng, n, pin_rate=0.03):
    fs = []
    for k in range(n):
        deps = rng.sample(range(k), min(k, rng.randint(0, 3)))
        kw = {}
        roll = rng.random()
        if roll < 0.4:
            kw["cost"] = {"cpu": rng.choice([1, 2]), **({"mem": 100} if rng.random() < 0.3 else {})}
        elif roll < 0.5 and k:
            kw["type"] = "inline"
        elif roll < 0.55 and k and not fs[k - 1].is_inline:
            kw["node"] = Collocated(k - 1)
        elif roll < 0.55 + pin_rate:
            kw["node"] = rng.choice(["n0", "n1"])
        fs.append(fn(k, deps, **kw))
    return dag_of(*fs, id=f"rand{n}")


def drive_random_runs(sched, seed, lookahead=None):
    """Three random runs with failures, a lost node, joins, cancels, copies, lost results."""
    rng = random.Random(seed)
    strategy = ("first_available", "load_balanced", "cost_optimized")[seed % 3]
    c = Cluster(
        sched,
        {f"n{k}": {"cpu": 4, "mem": 1000} for k in range(4)},
        slots={f"n{k}": rng.randint(1, 4) for k in range(4)},
        lookahead=lookahead,
    )
    runs = {f"r{k}": random_dag(rng, rng.randint(5, 40)) for k in range(3)}
    for run_id, d in runs.items():
        c.submit(
            d,
            run_id=run_id,
            strategy=strategy,
            max_retries=2,
            max_concurrency=rng.choice([None, 2, 5]),
        )
    lost_one = False
    finished_before_loss: set = set()
    steps = 0
    while c.order:
        steps += 1
        assert steps < 10_000
        run_id, i = c.order[rng.randrange(len(c.order))]
        roll = rng.random()
        if roll < 0.02 and not lost_one:
            lost_one = True
            finished_before_loss = set(c.finished)
            c.lose("n1")
            continue
        if roll < 0.025:
            c.handle(NodeJoined(f"extra{steps}", {"cpu": 2, "mem": 100}))
            continue
        if roll < 0.03 and rng.random() < 0.2:
            c.handle(CancelRun(run_id, TimeoutError("run", 1.0)))
            continue
        if roll < 0.035:
            state = c.orch.run(run_id)
            done = [j for j in range(state.n) if state.location(j) is not None]
            if done:
                c.handle(
                    ResultCopied(run_id, rng.choice(done), rng.choice(list(c.orch.node_load())))
                )
            continue
        if roll < 0.05:
            state = c.orch.run(run_id)
            inputs = [j for j in state.effective_inputs(i) if state.location(j) is not None]
            if inputs:
                attempt, _ = c.running.pop((run_id, i))
                c.handle(ResultLost(run_id, rng.choice(inputs), i, attempt))
                continue
        fid = c.dags[run_id].compile().ids[i]
        c.finish(fid, run_id, ok=rng.random() > 0.1)
    return c, runs, finished_before_loss


@pytest.mark.parametrize("lookahead", [0, 1, 3])
@pytest.mark.parametrize("seed", range(16))
def test_random_runs_end_with_every_result_and_no_claims(sched, seed, lookahead):
    c, runs, finished_before_loss = drive_random_runs(sched, seed, lookahead)
    assert set(c.finished) == set(runs)
    for run_id, d in runs.items():
        fin = c.finished[run_id]
        state = c.orch.run(run_id)
        if fin.error is None:
            regular = {f.id for f in d if not f.is_inline}
            assert set(state.allocations()) == regular
            if run_id not in finished_before_loss:
                assert all(node in c.orch.node_load() for node in state.allocations().values())
            for members in state.group_members:
                assert len({state.location(m) for m in members}) == 1
        else:
            assert isinstance(fin.error, (FunctionError, NodeLostError, TimeoutError))
    assert c.idle(), c.ledger.used_matrix()
    assert not np.asarray(c.ledger.used_matrix()).any()


def drive_random_restarts(sched, seed, lookahead=None):
    """Three random runs with deadlines and pins while nodes die and come back."""
    rng = random.Random(1000 + seed)
    strategy = ("first_available", "load_balanced", "cost_optimized")[seed % 3]
    caps = {f"n{k}": {"cpu": 4, "mem": 1000} for k in range(4)}
    c = Cluster(
        sched, caps, slots={f"n{k}": rng.randint(1, 4) for k in range(4)}, lookahead=lookahead
    )
    runs = {f"r{k}": random_dag(rng, rng.randint(5, 40), pin_rate=0.15) for k in range(3)}
    for k, (run_id, d) in enumerate(runs.items()):
        c.submit(
            d,
            run_id=run_id,
            strategy=strategy,
            max_retries=2,
            max_concurrency=rng.choice([None, 2, 5]),
            deadline=None if k == 2 and seed % 2 else rng.choice([5.0, 20.0, 60.0]),
        )
    down: set = set()
    now = 0.0
    steps = 0
    while c.order or down:
        steps += 1
        assert steps < 10_000
        now += 0.25
        roll = rng.random()
        if roll < 0.04 or not c.order:
            if down and (rng.random() < 0.6 or not c.order):
                name = rng.choice(sorted(down))
                down.discard(name)
                c.handle(NodeJoined(name, caps[name]))
            elif len(down) < 2:
                name = rng.choice(sorted(set(caps) - down))
                down.add(name)
                c.lose(name, now)
            if not c.order and not c.orch.active_runs:
                break
            continue
        if roll < 0.1:
            c.handle(Tick(now))
            continue
        run_id, i = c.order[rng.randrange(len(c.order))]
        fid = c.dags[run_id].compile().ids[i]
        c.finish(fid, run_id, ok=rng.random() > 0.05)
    return c, runs, down


@pytest.mark.parametrize("lookahead", [0, 1, 3])
@pytest.mark.parametrize("seed", range(12))
def test_random_runs_with_deadlines_survive_node_restarts(sched, seed, lookahead):
    c, runs, down = drive_random_restarts(sched, seed, lookahead)
    assert set(c.finished) == set(runs), (c.orch.active_runs, down)
    for run_id, d in runs.items():
        fin = c.finished[run_id]
        state = c.orch.run(run_id)
        if fin.error is None:
            assert set(state.allocations()) == {f.id for f in d if not f.is_inline}
            pins = {f.id: f.node for f in d if isinstance(f.node, str)}
            for fid, node in pins.items():
                assert state.allocations()[fid] == node
        else:
            assert isinstance(fin.error, (FunctionError, NodeLostError))
        assert not state.awaiting
    assert c.idle(), c.ledger.used_matrix()

"""The driver's cache plan for one run: which functions hit, and where they are pinned. The
nodes' answers are given (the network is the edge); everything else is the real code."""

from __future__ import annotations

from types import SimpleNamespace

from handoff import Collocated, DAG, Function
from handoff.cache.plan import plan_cache
from handoff.node.runs import prepare_run


def double(x: int) -> int:
    return 2 * x


class Answers:
    """``ask_everyone`` as every live node would answer it: each holds what the test says."""

    def __init__(self, held: dict[str, set[int]], keys_of: dict[int, str] | None = None) -> None:
        self.held = held
        self.asked: list[list[str]] = []
        self.keys_of = keys_of or {}

    def ask_everyone(self, keys: list[str]) -> dict[str, list[str]]:
        self.asked.append(keys)
        return {node: [self.keys_of[i] for i in indices if i in self.keys_of]
                for node, indices in self.held.items()}


def plan(dag: DAG, held: dict[str, set[int]], here: str = "driver"):
    ctx = prepare_run(dag)
    keys_ctx = prepare_run(dag)
    answers = Answers({}, {})
    plan_cache(SimpleNamespace(name=here, cache=answers), keys_ctx)  # learn the keys
    answers.held, answers.keys_of, answers.asked = held, keys_ctx.cache_keys, []
    plan_cache(SimpleNamespace(name=here, cache=answers), ctx)
    return ctx, answers


def dag() -> DAG:
    return (DAG()
            .add_function(Function(id="a", code=double, extra_args=[1], cache=True, cost={"cpu": 2}))
            .add_function(Function(id="b", code=double, args=["a"], cache=True))
            .add_function(Function(id="c", code=double, args=["b"])))


def test_no_cached_function_asks_nobody():
    ctx, answers = plan(DAG().add_function(Function(id="x", code=double, extra_args=[1])), {})
    assert answers.asked == [] and ctx.cache_keys == {} and ctx.hits == {}


def test_hits_are_pinned_to_a_holder_without_cost_and_the_driver_comes_first():
    ctx, answers = plan(dag(), {"node0": {0, 1}, "driver": {1}, "node1": {0}})
    assert answers.asked == [sorted(set(ctx.cache_keys.values()))]  # one question per run
    assert set(ctx.cache_keys) == {0, 1}  # only cache=True functions are looked up
    assert ctx.hits == {0: "node0", 1: "driver"}
    scheduled = ctx.scheduled
    assert scheduled is not None
    assert (scheduled[0].node, scheduled[0].cost) == ("node0", None)
    assert ctx.functions[0].cost == {"cpu": 2}  # the task still carries its cost
    assert scheduled[2] is ctx.functions[2]


def test_a_user_pin_hits_only_where_it_points():
    d = dag()
    d.functions["a"].node = "node1"
    ctx, _ = plan(d, {"node0": {0}})
    assert 0 not in ctx.hits
    ctx, _ = plan(d, {"node0": {0}, "node1": {0}})
    assert ctx.hits[0] == "node1"


def test_collocated_functions_never_hit():
    d = dag()
    d.functions["b"].node = Collocated("a")
    ctx, _ = plan(d, {"node0": {0, 1}})
    assert ctx.hits == {}
    assert ctx.scheduled is None


def test_nothing_held_is_no_hit():
    ctx, _ = plan(dag(), {"node0": set()})
    assert ctx.hits == {} and ctx.scheduled is None and len(ctx.cache_keys) == 2

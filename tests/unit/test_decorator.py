"""@handoff.fn builds the same DAGs as Function records (no network: the DAGs are compared)."""

from __future__ import annotations

import pytest

import handoff
from handoff import DAG, Function
from handoff.decorator import _Apply


@handoff.fn
def load(path: str) -> list[int]:
    return [len(path)]


@handoff.fn(cost={"cpu": 2}, max_retries=1, timeout=30.0, group="merge", cache=True)
def merge(a: list[int], b: list[int], scale: int) -> list[int]:
    return [x * scale for x in a + b]


@handoff.fn
def split(xs: list[int]) -> tuple[int, list[int]]:
    return xs[0], xs[1:]


@handoff.fn
def gather(items: dict[str, list[int]], extra: list[int]) -> int:
    return sum(map(sum, items.values())) + sum(extra)


@handoff.fn
def total(*xs: int) -> int:
    return sum(xs)


def structure(dag: DAG) -> list[tuple]:
    """What makes two DAGs the same: each function's id, inputs, constants and options."""
    return [(fn.id, list(fn.dependency_ids), list(fn.extra_args), fn.argument_inclusion, fn.cost,
             fn.node, fn.type, fn.max_retries, fn.timeout, fn.group, fn.cache) for fn in dag]


def number(ref: handoff.Ref) -> int:
    return int(str(ref.id).rsplit("-", 1)[1])


def test_decorated_dag_equals_the_hand_written_one():
    a, b = load("a.png"), load("bb.png")
    m = merge(a, b, 3)
    dag = handoff.dag_of(m)
    na, nb, nm = number(a), number(b), number(m)
    by_hand = (
        DAG()
        .add_function(Function(id=f"load-{na}", code=load.func, extra_args=["a.png"]))
        .add_function(Function(id=f"load-{nb}", code=load.func, extra_args=["bb.png"]))
        .add_function(Function(id=f"merge-{nm}", code=merge.func, args=[f"load-{na}", f"load-{nb}"],
                               extra_args=[3], cost={"cpu": 2}, max_retries=1, timeout=30.0,
                               group="merge", cache=True))
    )
    assert structure(dag) == structure(by_hand)
    assert [fn.code for fn in dag] == [fn.code for fn in by_hand]
    dag.validate()
    assert nb == na + 1  # readable ids: the qualified name and a counter


def test_the_same_ref_used_twice_is_one_function():
    a = load("x")
    dag = handoff.dag_of([total(a, a), merge(a, a, 1)])
    assert [str(fn.id).rsplit("-", 1)[0] for fn in dag] == ["load", "total", "merge"]
    assert dag[total_id(dag)].dependency_ids == [a.id, a.id]


def total_id(dag: DAG) -> object:
    return next(fn.id for fn in dag if str(fn.id).startswith("total-"))


def test_equal_calls_are_two_functions():
    dag = handoff.dag_of([load("x"), load("x")])
    assert len(dag) == 2


def test_refs_nested_in_lists_tuples_and_dicts_become_edges():
    a, b, c = load("a"), load("bb"), load("ccc")
    g = gather({"first": a, "second": b}, extra=[1, 2])
    t = total(*(c, 4))  # a plain value after the ref: still the simple form
    nested = total.local(1, 2)  # .local runs here, now
    assert nested == 3
    dag = handoff.dag_of({"g": g, "t": (t,)})
    fn = dag[g.id]
    assert fn.dependency_ids == [a.id, b.id]
    assert isinstance(fn.code, _Apply)
    # the adapter puts each value back where its ref was
    assert fn.code([1], [2, 3], *fn.extra_args) == gather.local({"first": [1], "second": [2, 3]}, [1, 2])
    assert dag[t.id].dependency_ids == [c.id] and list(dag[t.id].extra_args) == [4]


def test_a_ref_after_a_plain_value_keeps_its_position():
    a = load("a")
    t = total(1, a)
    fn = handoff.dag_of(t)[t.id]
    assert fn.dependency_ids == [a.id]
    assert fn.code(5, *fn.extra_args) == 6


def test_tuple_unpacking_gives_projections_computed_inline():
    head, tail = split(load("abc"))
    dag = handoff.dag_of([head, tail])
    projections = [fn for fn in dag if fn.type == "inline"]
    assert [fn.id for fn in projections] == [head.id, tail.id]
    assert projections[0].code((7, [8]), *projections[0].extra_args) == 7
    again_head, _ = split_ref_of(head)
    assert again_head is head  # unpacking the same ref twice gives the same refs


def split_ref_of(part: handoff.Ref) -> handoff.Ref:
    return part.deps[0]


def test_unpacking_needs_a_fixed_length_tuple_annotation():
    with pytest.raises(TypeError, match="fixed-length tuple"):
        a, b = load("x")  # noqa: F841


def test_typed_unpack_returns_the_same_refs():
    ref = split(load("abc"))
    assert ref.unpack() == tuple(ref)


def test_options_are_checked_where_they_are_written():
    with pytest.raises(TypeError, match="unknown option.*colour"):
        handoff.fn(colour="red")
    with pytest.raises(handoff.InvalidFunctionError, match="cache must be True or False"):
        handoff.dag_of(handoff.fn(cache="yes")(lambda: 1)())


def test_options_view_changes_only_what_it_says():
    pinned = merge.options(node="gpu-box")
    ref = pinned(load("a"), load("b"), 1)
    fn = handoff.dag_of(ref)[ref.id]
    assert fn.node == "gpu-box" and fn.cost == {"cpu": 2} and fn.cache is True


def test_dag_of_rejects_what_has_no_ref():
    with pytest.raises(TypeError, match="dag_of"):
        handoff.dag_of([1, 2])


def test_a_long_chain_does_not_hit_the_recursion_limit():
    ref = load("x")
    for _ in range(3000):
        ref = total(ref)
    dag = handoff.dag_of(ref)
    assert len(dag) == 3001
    dag.validate()


def test_inline_cache_is_rejected():
    with pytest.raises(handoff.InvalidFunctionError, match="inline"):
        DAG().add_function(Function(id="x", code=len, type="inline", cache=True))


def test_a_ref_hidden_in_another_container_is_an_error_not_a_constant():
    from handoff.node.runs import prepare_run

    ref = total(frozenset({load("a")}))  # sets are not searched for refs
    dag = handoff.dag_of(ref)
    assert len(dag) == 1  # so the hidden ref is no dependency ...
    with pytest.raises(handoff.InvalidFunctionError, match=r"extra_args\[0\] \(frozenset\)"):
        prepare_run(dag)  # ... and the run refuses to ship it as a constant

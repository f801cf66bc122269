"""The DAG model: building, validation errors with their data, bad input, the Elixir examples."""

import pickle

import pytest

import handoff
from handoff import (
    Argument, Collocated, CycleError, DAG, DuplicateFunctionError, Function, HandoffError,
    InvalidFunctionError, MissingFunctionError, ValidationError,
)


def fn(*a):
    return a


def test_new_dag_ids_are_unique_and_chaining_returns_the_dag():
    a, b = DAG(), handoff.new()
    assert a.id != b.id and len(a.id) == 32
    assert DAG("x").id == "x"
    dag = DAG().add_function(Function(id=1, code=fn)).add_function(Function(id=2, code=fn, args=[1]))
    assert list(dag.functions) == [1, 2]
    assert len(dag) == 2 and 1 in dag and dag[2].args == [1]


def test_function_is_keyword_only_with_documented_defaults():
    with pytest.raises(TypeError):
        Function("a", fn)  # noqa: the dataclass is keyword-only
    f = Function(id="a", code=fn)
    assert (f.args, f.extra_args, f.argument_inclusion, f.cost, f.node, f.type, f.max_retries, f.timeout) == (
        [], [], "variadic", None, None, "regular", None, None)


def test_duplicate_id_is_rejected_by_add_function():
    dag = DAG().add_function(Function(id="a", code=fn))
    with pytest.raises(DuplicateFunctionError) as info:
        dag.add_function(Function(id="a", code=fn))
    assert info.value.function_id == "a"
    assert isinstance(info.value, ValidationError) and isinstance(info.value, HandoffError)


def test_missing_dependency_names_both_functions():
    dag = DAG()
    dag.add_function(Function(id="ok", code=fn))
    dag.add_function(Function(id="b", code=fn, args=["ok", "nope"]))
    with pytest.raises(MissingFunctionError) as info:
        dag.validate()
    assert (info.value.function_id, info.value.missing_id) == ("b", "nope")
    assert "'nope'" in str(info.value)


def test_forward_references_resolve_when_added_later():
    dag = DAG()
    dag.add_function(Function(id="late-consumer", code=fn, args=["src"]))
    with pytest.raises(MissingFunctionError):
        dag.validate()
    dag.add_function(Function(id="src", code=fn))
    assert dag.validate() is None
    assert dag.topological_order() == ["src", "late-consumer"]


@pytest.mark.parametrize("edges, cycle", [
    ({"a": ["a"]}, ["a", "a"]),
    ({"a": ["b"], "b": ["a"]}, ["a", "b", "a"]),
    ({"a": ["b"], "b": ["c"], "c": ["a"]}, ["a", "b", "c", "a"]),
])
def test_cycle_error_carries_the_full_path(edges, cycle):
    dag = DAG()
    for fid, deps in edges.items():
        dag.add_function(Function(id=fid, code=fn, args=deps))
    with pytest.raises(CycleError) as info:
        dag.validate()
    assert info.value.cycle == cycle
    assert info.value.cycle[0] == info.value.cycle[-1]
    assert " -> " in str(info.value)


def test_cycle_path_follows_dependencies():
    dag = DAG()
    dag.add_function(Function(id="root", code=fn))
    dag.add_function(Function(id="x", code=fn, args=["root", "z"]))
    dag.add_function(Function(id="y", code=fn, args=["x"]))
    dag.add_function(Function(id="z", code=fn, args=["y"]))
    with pytest.raises(CycleError) as info:
        dag.validate()
    path = info.value.cycle
    for a, b in zip(path, path[1:]):
        assert b in dag[a].dependency_ids
    assert "root" not in path


@pytest.mark.parametrize("kwargs, rule", [
    ({"code": 42}, "callable"),
    ({"code": fn, "type": "lazy"}, "unknown type"),
    ({"code": fn, "argument_inclusion": "kwargs"}, "argument_inclusion"),
    ({"code": fn, "cost": {"cpu": -1}}, "negative"),
    ({"code": fn, "cost": {"cpu": "two"}}, "finite number"),
    ({"code": fn, "cost": {"cpu": float("nan")}}, "finite number"),
    ({"code": fn, "cost": {"cpu": True}}, "finite number"),
    ({"code": fn, "cost": [("cpu", 1)]}, "mapping"),
    ({"code": fn, "cost": {1: 1}}, "strings"),
    ({"code": fn, "type": "inline", "node": "n1"}, "inline"),
    ({"code": fn, "node": 5}, "node name"),
    ({"code": fn, "args": "abc"}, "list"),
    ({"code": fn, "extra_args": 3}, "list"),
    ({"code": fn, "args": [["unhashable"]]}, "hashable"),
    ({"code": fn, "max_retries": -1}, "max_retries"),
    ({"code": fn, "timeout": 0}, "timeout"),
    ({"code": fn, "args": [Argument("x", serialization_fn=3)]}, "serialization_fn"),
])
def test_bad_functions_name_the_function_and_the_rule(kwargs, rule):
    with pytest.raises(InvalidFunctionError, match=rule) as info:
        DAG().add_function(Function(id="bad", **kwargs))
    assert info.value.function_id == "bad"
    assert info.value.reason


def test_unhashable_id_is_an_invalid_function_error():
    with pytest.raises(InvalidFunctionError, match="hashable"):
        DAG().add_function(Function(id=["a"], code=fn))


def test_add_function_needs_a_function():
    with pytest.raises(TypeError, match="handoff.Function"):
        DAG().add_function({"id": "a"})


@pytest.mark.parametrize("target, rule", [
    ("missing", "not in the DAG"),
    ("inl", "inline"),
    ("self", "itself"),
])
def test_collocation_rules(target, rule):
    dag = DAG()
    dag.add_function(Function(id="inl", code=fn, type="inline"))
    dag.add_function(Function(id="self", code=fn, node=Collocated(target)))
    with pytest.raises(InvalidFunctionError, match=rule):
        dag.validate()


def test_hooks_may_be_callables_or_pairs():
    dag = DAG()
    dag.add_function(Function(id="a", code=fn))
    dag.add_function(Function(id="b", code=fn, args=[
        Argument("a", serialization_fn=(fn, [1]), deserialization_fn=fn)]))
    dag.validate()
    assert dag["b"].dependency_ids == ["a"]


def test_validation_is_deterministic_in_insertion_order():
    dag = DAG()
    for i in range(5):
        dag.add_function(Function(id=f"f{i}", code=fn, args=[f"f{i - 1}"] if i else []))
    assert dag.topological_order() == [f"f{i}" for i in range(5)]
    g = dag.compile()
    assert g.ids == [f"f{i}" for i in range(5)]
    assert g.index["f3"] == 3


def test_errors_carry_data_across_pickling():
    for err in [
        MissingFunctionError("a", "b"), CycleError(["a", "b", "a"]), InvalidFunctionError("x", "why"),
        handoff.AllocationError("f", {"gpu": 1}, {"n": {"cpu": 1}}),
        handoff.FunctionError("f", "n", 2, "ValueError", "msg", "tb"),
        handoff.NodeLostError("n", ["f"]), handoff.ResultNotFound("d", "k"), handoff.TimeoutError("run", 2.0),
    ]:
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and back.__dict__ == err.__dict__ and str(back) == str(err)
    assert isinstance(handoff.ResultNotFound("d", "k"), KeyError)
    assert isinstance(handoff.TimeoutError("x"), TimeoutError)


def test_elixir_validate_examples():
    # Handoff.DAG.validate docs: b depends on a -> :ok
    dag = handoff.new()
    dag.add_function(Function(id="a", args=[], code=lambda x: x, extra_args=[1]))
    dag.add_function(Function(id="b", args=["a"], code=dict.get, extra_args=["a"]))
    assert dag.validate() is None
    # missing function
    dag = handoff.new().add_function(Function(id="a", args=["b"], code=lambda x: x))
    with pytest.raises(MissingFunctionError):
        dag.validate()
    # cyclic dependency; the cycle holds both functions
    dag = handoff.new()
    dag.add_function(Function(id="a", args=["b"], code=dict.get, extra_args=["b"]))
    dag.add_function(Function(id="b", args=["a"], code=dict.get, extra_args=["a"]))
    with pytest.raises(CycleError) as info:
        dag.validate()
    assert sorted(set(info.value.cycle)) == ["a", "b"]

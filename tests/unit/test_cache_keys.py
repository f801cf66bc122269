"""Lineage keys of the result cache: pure, no network."""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from handoff import Argument, Function, InvalidFunctionError
from handoff.cache.keys import KeyBuilder, lineage_keys


def make(source: str, name: str = "f") -> object:
    """A function compiled from ``source`` in a fresh module named ``user_code``."""
    namespace: dict = {"__name__": "user_code"}
    exec(compile(textwrap.dedent(source), "user_code.py", "exec"), namespace)
    return namespace[name]


def key(code: object, extra: list | None = None, inputs: list[str] | None = None,
        **fields: object) -> str:
    args = [f"in{i}" for i in range(len(inputs or []))]
    fn = Function(id="f", code=code, args=args, extra_args=extra or [], **fields)  # type: ignore[arg-type]
    return KeyBuilder().function_key(fn, inputs or [])


def double(x: int) -> int:
    return 2 * x


def test_the_same_function_and_arguments_give_the_same_key():
    assert key(double, [1]) == key(double, [1])
    assert len(key(double, [1])) == 64


def test_a_code_change_is_a_new_key():
    a = make("def f(x):\n    return x + 1\n")
    b = make("def f(x):\n    return x + 2\n")
    c = make("def f(x):\n    return x + 1\n")
    assert key(a) != key(b)
    assert key(a) == key(c)  # same code, compiled apart


def test_moving_a_function_is_not_a_change():
    a = make("def f(x):\n    return x + 1\n")
    b = make("\n\n\n# a comment\ndef f(x):\n    return x + 1\n")
    assert key(a) == key(b)


def test_a_change_in_a_helper_of_the_same_module_is_a_new_key():
    a = make("def helper(x):\n    return x\ndef f(x):\n    return helper(x)\n")
    b = make("def helper(x):\n    return -x\ndef f(x):\n    return helper(x)\n")
    assert key(a) != key(b)


def test_closure_values_and_defaults_are_part_of_the_key():
    def outer(n: int):
        def inner(x: int) -> int:
            return x + n
        return inner

    assert key(outer(1)) != key(outer(2))
    assert key(outer(1)) == key(outer(1))
    d1 = make("def f(x, k=1):\n    return x + k\n")
    d2 = make("def f(x, k=2):\n    return x + k\n")
    assert key(d1) != key(d2)


def test_arguments_inputs_and_inclusion_change_the_key():
    base = key(double, [1], ["aa"])
    assert key(double, [2], ["aa"]) != base
    assert key(double, [1], ["bb"]) != base
    assert key(double, [1], ["aa"], argument_inclusion="as_list") != base


def test_id_node_cost_and_dag_are_not_part_of_the_key():
    fn = Function(id="a", code=double, extra_args=[1])
    other = Function(id="b", code=double, extra_args=[1], node="n1", cost={"cpu": 4}, max_retries=2)
    assert KeyBuilder().function_key(fn, []) == KeyBuilder().function_key(other, [])


def test_functions_in_arguments_are_keyed_by_their_code():
    a = make("def g(x):\n    return x\n", "g")
    b = make("def g(x):\n    return -x\n", "g")
    assert key(map, [a]) != key(map, [b])
    assert key(map, [functools.partial(double, 1)]) != key(map, [functools.partial(double, 2)])


def test_sets_hash_the_same_in_another_process():
    """String hashes (and so set order) change per process; the key must not."""
    script = ("from handoff.cache.keys import KeyBuilder\n"
              "print(KeyBuilder().value_digest({'alpha', 'beta', 'gamma', 'delta', 'eps'}))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    digests = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                              env={**env, "PYTHONHASHSEED": str(seed)}).stdout for seed in (1, 2)}
    assert len(digests) == 1


def test_numpy_arguments_hash_by_content():
    assert key(double, [np.arange(5)]) == key(double, [np.arange(5)])
    assert key(double, [np.arange(5)]) != key(double, [np.arange(1, 6)])


def test_an_unhashable_argument_is_an_error_that_names_it():
    with socket.socket() as s:
        with pytest.raises(InvalidFunctionError) as info:
            key(double, [1, s])
    assert info.value.function_id == "f"
    assert "extra_args[1]" in info.value.reason and "socket" in info.value.reason


def test_hooks_are_part_of_the_key():
    plain = Function(id="c", code=double, args=["p"])
    hooked = Function(id="c", code=double, args=[Argument("p", deserialization_fn=abs)])
    assert KeyBuilder().function_key(plain, ["k"]) != KeyBuilder().function_key(hooked, ["k"])


def test_lineage_keys_follow_inputs_and_only_what_is_wanted():
    src = Function(id="src", code=double, extra_args=[1])
    mid = Function(id="mid", code=double, args=["src"])
    out = Function(id="out", code=double, args=["mid"])
    other = Function(id="other", code=double, extra_args=[9])
    functions = [src, mid, out, other]
    deps = [[], [0], [1], []]
    keys = lineage_keys(functions, deps, [2])
    assert set(keys) == {0, 1, 2}  # "other" is not asked for
    changed = [Function(id="src", code=double, extra_args=[2]), mid, out, other]
    keys2 = lineage_keys(changed, deps, [2])
    assert keys2[2] != keys[2] and keys2[1] != keys[1]  # an upstream change reaches the end


def test_a_long_chain_is_keyed_without_recursion():
    n = 5000
    functions = [Function(id=i, code=double, args=[i - 1] if i else [], extra_args=[] if i else [1])
                 for i in range(n)]
    keys = lineage_keys(functions, [[i - 1] if i else [] for i in range(n)], [n - 1])
    assert len(keys) == n


def test_a_recursive_function_has_a_key():
    f = make("def f(n):\n    return 1 if n < 2 else n * f(n - 1)\n")
    assert key(f) == key(f)

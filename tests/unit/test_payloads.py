"""Payload blobs: code pickled once per run, extra arguments apart, workers' code cache in bytes."""

from __future__ import annotations

import pickle
import signal
import subprocess
import sys
import types

import cloudpickle
import pytest

from handoff import DAG, Argument, Function
from handoff.node.runs import prepare_run
from handoff.node.data.values import dumps_args, dumps_payload, loads_args
from handoff.node.execution.worker import Evaluator
from handoff.node.execution.workers import exit_description


def scale(x, k):
    return x * k


def add(*xs):
    return sum(xs)


def fan_out(n: int, extra) -> DAG:
    dag = DAG()
    for i in range(n):
        dag.add_function(Function(id=i, code=scale, args=[], extra_args=[1, extra(i)]))
    return dag


def test_one_code_frame_per_code_object_and_args_apart():
    ctx = prepare_run(fan_out(50, lambda i: i))
    codes = {id(blob[0]) for blob in ctx.payloads}
    assert len(codes) == 1  # one pickled code object, shared (not 50 equal copies)
    assert len({blob[1] for blob in ctx.payloads}) == 50
    assert [loads_args(blob[1]) for blob in ctx.payloads[:3]] == [[1, 0], [1, 1], [1, 2]]


def test_code_of_main_pickled_once_per_run(monkeypatch):
    calls = []
    real = cloudpickle.dumps

    def counting(obj, *a, **kw):
        calls.append(obj)
        return real(obj, *a, **kw)

    monkeypatch.setattr(cloudpickle, "dumps", counting)
    fn = types.FunctionType(scale.__code__, {}, "scale_in_main")
    fn.__module__ = "__main__"  # pickled by value, as a script's functions are
    dag = DAG()
    for i in range(200):
        dag.add_function(Function(id=i, code=fn, extra_args=[i, 2]))
    prepare_run(dag)
    assert len(calls) == 1


def test_no_extra_args_no_args_frame():
    dag = DAG().add_function(Function(id="a", code=add))
    (blob,) = prepare_run(dag).payloads
    assert len(blob) == 1


def test_hooks_use_the_payload_format():
    dag = DAG()
    dag.add_function(Function(id="a", code=add))
    dag.add_function(Function(id="b", code=add, args=[Argument("a", serialization_fn=(scale, [3]))]))
    ctx = prepare_run(dag)
    ser, deser, _ = ctx.hooks[(1, 0)]
    assert deser is None
    fn, extra = Evaluator().payload(ser)
    assert fn(2, *extra) == 6


def test_plain_args_take_the_plain_pickle_path():
    data = dumps_args([1, "x", (2.5, None), {"k": b"v"}])
    assert data == pickle.dumps([1, "x", (2.5, None), {"k": b"v"}], protocol=5)
    assert loads_args(data) == [1, "x", (2.5, None), {"k": b"v"}]


def test_args_holding_a_main_function_load_where_main_lacks_it():
    fn = types.FunctionType(scale.__code__, {}, "only_here")
    fn.__module__ = "__main__"
    fn.__qualname__ = "only_here"
    data = dumps_args([fn, 4, types.MethodType(fn, 3)])  # a bound method pickles as getattr
    probe = (
        "import pickle, sys; fn, k, m = pickle.loads(sys.stdin.buffer.read()); print(fn(k, 5), m(7))"
    )
    out = subprocess.run([sys.executable, "-c", probe], input=data, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.strip() == b"20 21"


def test_args_holding_a_lambda():
    fn, k = loads_args(dumps_args([lambda x: x + 1, 1]))
    assert fn(k) == 2


def test_evaluator_appends_args_to_bound_args():
    blob = [dumps_payload(add, [100]), dumps_args([1, 2])]
    fn, extra = Evaluator().payload(blob)
    assert fn(*extra) == 103


def test_code_cache_is_bounded_in_bytes():
    ev = Evaluator(limit=64 * 1024)
    for i in range(200):  # distinct code frames of ~2 KB each
        ev.payload([dumps_payload(scale, [bytes([i % 256]) * 2000, i])])
        assert ev.cached_bytes <= 64 * 1024
    assert ev.cached_bytes > 0


def test_code_cache_keeps_no_extra_args():
    ev = Evaluator()
    code = dumps_payload(scale)
    for i in range(50):
        fn, extra = ev.payload([code, dumps_args([b"x" * 100_000, i])])
        assert extra[1] == i
    assert ev.cached_bytes == len(code)


def test_huge_code_frame_is_not_cached():
    ev = Evaluator(limit=1 << 20)
    fn, extra = ev.payload([dumps_payload(scale, [b"y" * (1 << 19)])])
    assert fn(1, 2) == 2 and ev.cached_bytes == 0


@pytest.mark.parametrize(
    "code, words",
    [(3, "exited with code 3"), (-signal.SIGSEGV, "SIGSEGV"), (-signal.SIGKILL, "SIGKILL"),
     (None, "closed its channel")],
)
def test_exit_description(code, words):
    assert words in exit_description(code)

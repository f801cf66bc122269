"""Decorators, typed errors and the result cache on real nodes and worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import handoff
from handoff import DAG, Function
from handoff.testing import wait_until

pytestmark = pytest.mark.timeout(180)

PACKAGE_ROOT = Path(handoff.__file__).resolve().parents[1]


# ---- functions shipped to workers (module-level: importable there) ---------------------

def bump(path: str, value: int) -> int:
    """Append a line to ``path`` (counts runs across processes) and return ``value``."""
    with open(path, "a") as f:
        f.write("x\n")
    return value


def runs(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@handoff.fn(cache=True)
def expensive(x: int, log: str) -> int:
    bump(log, 0)
    return x * 10


@handoff.fn
def combine(a: int, b: int, log: str) -> int:
    bump(log, 0)
    return a + b


@handoff.fn
def load(name: str) -> list[int]:
    return [len(name), 2, 3]


@handoff.fn
def length(xs: list[int]) -> int:
    return xs[0]


@handoff.fn
def head_and_tail(xs: list[int]) -> tuple[int, list[int]]:
    return xs[0], xs[1:]


@handoff.fn
def add(*xs: int, scale: int = 1) -> int:
    return sum(xs) * scale


@handoff.fn
def gate(started: str, release: str) -> int:
    """Say it started, then wait (bounded) until the test lets it finish."""
    open(started, "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(release):
        if time.monotonic() > deadline:
            raise TimeoutError("the test never released the gate")
        time.sleep(0.01)
    return 1


def fail_with_value_error(text: str) -> None:
    raise ValueError(text)


def fail_with_a_class_only_the_node_has(directory: str) -> None:
    sys.path.insert(0, directory)
    from node_only_errors import NodeOnlyError  # exists on the node's side only

    raise NodeOnlyError("only here")


# ---- the embedded node -------------------------------------------------------------------

@pytest.fixture
def node(tmp_path):
    handoff.stop()
    name = handoff.start(name="ergo-test", workers=2, cache_dir=str(tmp_path / "cache"))
    yield name
    handoff.stop()


def test_run_returns_values_in_the_shape_it_was_given(node):
    a, b = load("abc"), load("hello")
    head, tail = head_and_tail(a)
    total = add(head, 10, scale=2)
    twice = add(head, head)
    out = handoff.run({"total": total, "list": [b, twice], "tuple": (tail,), "head": head})
    assert out == {"total": 26, "list": [[5, 2, 3], 6], "tuple": ([2, 3],), "head": 3}
    assert handoff.run(total) == 26
    assert handoff.run([tail, b]) == [[2, 3], [5, 2, 3]]


def test_a_decorated_dag_runs_like_the_hand_written_one(node):
    ref = add(length(load("abcd")), 1)
    by_decorator = handoff.execute(handoff.dag_of(ref, id="same"))
    by_hand = handoff.execute(
        DAG("same").add_function(Function(id="load", code=load.func, extra_args=["abcd"]))
        .add_function(Function(id="length", code=length.func, args=["load"]))
        .add_function(Function(id="add", code=add.func, args=["length"], extra_args=[1])))
    assert by_decorator.results[ref.id] == by_hand.results["add"] == 5
    assert add.local(4, 1, scale=3) == 15


def test_a_second_run_is_served_from_the_cache(node, tmp_path):
    cached, plain = tmp_path / "cached", tmp_path / "plain"

    def pipeline() -> handoff.Ref[int]:
        return combine(expensive(1, str(cached)), expensive(2, str(cached)), str(plain))

    first = pipeline()
    result = handoff.execute(handoff.dag_of(first))
    assert result.results[first.id] == 30 and runs(cached) == 2 and runs(plain) == 1
    assert not any(s.cached for s in result.stats.values())

    second = pipeline()
    result = handoff.execute(handoff.dag_of(second))
    assert result.results[second.id] == 30
    assert runs(cached) == 2  # not run again
    assert runs(plain) == 2  # downstream of hits still runs
    hits = {fid: s.cached for fid, s in result.stats.items()}
    assert hits == {dep.id: True for dep in second.deps} | {second.id: False}

    assert handoff.run(pipeline(), cache=False) == 30
    assert runs(cached) == 4  # cache=False: computed, as if there were no cache

    assert handoff.cache_clear() == {node: 2}
    handoff.run(pipeline())
    assert runs(cached) == 6


def test_a_change_of_argument_code_or_upstream_is_a_miss(node, tmp_path):
    log = tmp_path / "log"
    upstream_log = tmp_path / "upstream"
    namespace: dict = {"__name__": "user_code", "bump": bump}

    def define(source: str) -> handoff.RemoteFunction:
        exec(textwrap.dedent(source), namespace)
        return handoff.fn(cache=True)(namespace["scaled"])

    v1 = define("def scaled(x, log):\n    bump(log, 0)\n    return x * 2\n")
    assert handoff.run(v1(load("ab"), str(log))) == [2, 2, 3, 2, 2, 3]
    assert handoff.run(v1(load("ab"), str(log))) == [2, 2, 3, 2, 2, 3]
    assert runs(log) == 1  # the same code, argument and input: a hit

    v2 = define("def scaled(x, log):\n    bump(log, 0)\n    return x * 3\n")
    assert handoff.run(v2(load("ab"), str(log))) == [2, 2, 3] * 3
    assert runs(log) == 2  # the code changed

    assert handoff.run(v2(load("abc"), str(log))) == [3, 2, 3] * 3
    assert runs(log) == 3  # the input's lineage changed (load's argument)

    upstream = handoff.fn(cache=True)(bump)
    assert handoff.run(v2(upstream(str(upstream_log), 1), str(log))) == 3
    assert handoff.run(v2(upstream(str(upstream_log), 1), str(log))) == 3
    assert runs(log) == 4 and runs(upstream_log) == 1  # both hits the second time
    assert handoff.run(v2(upstream(str(upstream_log), 2), str(log))) == 6
    assert runs(log) == 5  # an upstream change reaches the downstream key


def test_the_thread_executor_caches_too(tmp_path):
    handoff.stop()
    handoff.start(name="ergo-threads", workers=2, executor="thread", cache_dir=str(tmp_path / "cache"))
    try:
        log = tmp_path / "log"
        assert handoff.run(expensive(4, str(log))) == 40
        ref = expensive(4, str(log))
        result = handoff.execute(handoff.dag_of(ref))
        assert result.results[ref.id] == 40 and result.stats[ref.id].cached and runs(log) == 1
    finally:
        handoff.stop()


def test_an_argument_that_cannot_be_hashed_is_named(node):
    import socket

    with socket.socket() as s:
        dag = DAG().add_function(Function(id="uses_socket", code=repr, extra_args=[s], cache=True))
        with pytest.raises(handoff.InvalidFunctionError) as info:
            handoff.execute(dag)
    assert info.value.function_id == "uses_socket"
    assert "extra_args[0]" in info.value.reason


def test_an_exception_class_defined_in_main_is_caught_by_its_type(tmp_path):
    script = tmp_path / "main_error.py"
    script.write_text(textwrap.dedent(f"""
        import handoff

        class PipelineError(Exception):
            def __init__(self, stage, code):
                super().__init__(f"stage {{stage}} failed")
                self.code = code

        @handoff.fn(max_retries=0)
        def stage(name: str) -> int:
            raise PipelineError(name, 42)

        handoff.start(workers=1, cache_dir={str(tmp_path / "cache")!r})
        try:
            handoff.run(stage("resize"))
        except PipelineError as err:
            assert isinstance(err, handoff.FunctionError)
            print("caught", type(err.cause).__name__, err.code, err.function_id, err.attempts)
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE_ROOT), *sys.path])}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["caught", "PipelineError", "42", "stage-0", "1"]


# ---- a real cluster ------------------------------------------------------------------------

@pytest.mark.slow  # three node processes and a driver: ~20-30 s on a loaded machine
def test_errors_and_cache_hits_on_a_three_node_cluster(local_cluster, handoff_driver, tmp_path):
    cluster = local_cluster(3, cache_dir=str(tmp_path / "caches"))
    handoff_driver(cluster, cache_dir=str(tmp_path / "driver-cache"))

    # except ValueError catches a ValueError raised on another node
    dag = DAG().add_function(Function(id="bad", code=fail_with_value_error, extra_args=["no good"],
                                      node="node2", max_retries=1))
    with pytest.raises(ValueError) as info:
        handoff.execute(dag)
    err = info.value
    assert isinstance(err, handoff.FunctionError)
    assert (err.function_id, err.node, err.attempts) == ("bad", "node2", 2)
    assert isinstance(err.cause, ValueError) and err.cause.args == ("no good",)
    assert "in fail_with_value_error" in err.remote_traceback

    # a class the driver cannot import arrives as a plain FunctionError that names it
    only_there = tmp_path / "node-only"
    only_there.mkdir()
    (only_there / "node_only_errors.py").write_text("class NodeOnlyError(Exception):\n    pass\n")
    dag = DAG().add_function(Function(id="odd", code=fail_with_a_class_only_the_node_has,
                                      extra_args=[str(only_there)], max_retries=0))
    with pytest.raises(handoff.FunctionError) as info2:
        handoff.execute(dag)
    assert type(info2.value) is handoff.FunctionError
    assert info2.value.exc_type == "NodeOnlyError" and info2.value.cause is None
    assert "only here" in str(info2.value)

    # a hit is placed on the node that holds it, wherever it ran before
    log = tmp_path / "log"
    first = expensive.options(node="node1")(5, str(log))
    assert handoff.execute(handoff.dag_of(first)).allocations[first.id] == "node1"
    again = expensive(5, str(log))  # not pinned
    result = handoff.execute(handoff.dag_of(again))
    assert result.results[again.id] == 50 and runs(log) == 1
    assert result.allocations[again.id] == "node1" and result.stats[again.id].cached
    elsewhere = expensive(6, str(log))  # a miss goes where the allocator puts it
    placed = handoff.execute(handoff.dag_of(elsewhere)).allocations[elsewhere.id]
    assert placed != "node1" and runs(log) == 2
    cleared = handoff.cache_clear()
    assert cleared == {"driver": 0, "node0": 0, "node1": 1, "node2": 0} | {placed: 1}

    # a hit whose holder is lost before it runs is placed anew and computed
    started, release, log2 = tmp_path / "started", tmp_path / "release", tmp_path / "log2"
    release.touch()
    first = expensive.options(node="node1")(gate(str(started), str(release)), str(log2))
    assert handoff.run(first) == 10 and runs(log2) == 1
    release.unlink()
    started.unlink()
    again = expensive(gate(str(started), str(release)), str(log2))
    outcome: dict = {}

    def execute() -> None:
        try:
            outcome["result"] = handoff.execute(handoff.dag_of(again))
        except Exception as exc:  # shown by the assertion below
            outcome["error"] = exc

    runner = threading.Thread(target=execute)
    runner.start()
    try:
        assert wait_until(started.exists, 60)  # the hit waits for its input, pinned to node1
        cluster.kill("node1")
        assert wait_until(lambda: "node1" not in handoff.discover_nodes(), 30)
    finally:
        release.touch()
        runner.join(120)
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.results[again.id] == 10 and runs(log2) == 2
    assert result.allocations[again.id] != "node1" and not result.stats[again.id].cached

"""Workload shapes on a real embedded node: distinct arguments per function, code defined in a
script's ``__main__``, large extra arguments and the workers' memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import psutil
import pytest

import handoff
from handoff import DAG, Function

from nodes import child_env, end_process

pytestmark = pytest.mark.timeout(180)

WORKER_RSS_LIMIT = 400 << 20  # bytes; the count-bounded cache took a worker past 1.2 GB


@pytest.fixture(scope="module", autouse=True)
def node():
    handoff.stop()
    name = handoff.start(name="workloads-test", workers=2)
    yield name
    handoff.stop()


def pool_stats() -> dict:
    return handoff.node_stats()["pool"]


def ident(x):
    return x


def sum_list(xs):
    return sum(xs)


def size_of(blob):
    return len(blob)


def fan_out(n: int, distinct: bool) -> DAG:
    dag = DAG()
    for i in range(n):
        dag.add_function(Function(id=i, code=ident, extra_args=[i if distinct else 0]))
    dag.add_function(Function(id="sum", code=sum_list, args=list(range(n)), argument_inclusion="as_list"))
    return dag


def test_distinct_extra_args_are_sent_in_batches():
    """Run-time estimates are per code, not per (code, arguments): short functions that differ
    only in their arguments still go to the workers many per message."""
    n = 2000
    warm = fan_out(200, distinct=True)
    handoff.execute(warm)  # the node learns that ``ident`` is short
    handoff.clear(warm.id)
    before = pool_stats()["batches"]
    dag = fan_out(n, distinct=True)
    result = handoff.execute(dag)
    assert result.results["sum"] == n * (n - 1) // 2
    sent = pool_stats()["batches"] - before
    assert sent < n // 4, f"{sent} worker messages for {n + 1} short functions"
    handoff.clear(dag.id)


MAIN_SCRIPT = textwrap.dedent(
    """
    import handoff
    from handoff import DAG, Function

    def double(x, k):
        return k * x

    def apply(f, x):
        return f(x)

    def total(xs):
        return sum(xs)

    if __name__ == "__main__":
        handoff.start(workers=2)
        dag = DAG()
        for i in range(500):
            dag.add_function(Function(id=i, code=double, extra_args=[i, 2]))
        dag.add_function(Function(id="f", code=apply, extra_args=[lambda x: x + 1, 41]))
        dag.add_function(Function(id="g", code=apply, extra_args=[double.__get__(3), 5]))
        dag.add_function(Function(id="sum", code=total, args=list(range(500)), argument_inclusion="as_list"))
        result = handoff.execute(dag)
        print("RESULT", result.results["sum"], result.results["f"], result.results["g"], flush=True)
        handoff.stop()
    """
)


def test_functions_defined_in_a_scripts_main(tmp_path):
    """Functions of ``__main__`` are pickled by value, as code and inside extra_args."""
    script = tmp_path / "pipeline.py"
    script.write_text(MAIN_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=child_env(), cwd=tmp_path, text=True)
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        end_process(proc)
    assert proc.returncode == 0, out
    assert "RESULT 249500 42 15" in out, out


def test_worker_memory_bounded_with_large_extra_args():
    """10 functions with a 20 MB extra argument each, three runs with clear() between: the
    workers keep their code, not every payload they were sent."""
    size = 20 << 20
    for run in range(3):
        dag = DAG()
        for i in range(10):
            dag.add_function(Function(id=i, code=size_of, extra_args=[bytes([run * 10 + i]) * size]))
        result = handoff.execute(dag)
        assert [result.results[i] for i in range(10)] == [size] * 10
        handoff.clear(dag.id)
        del dag, result
    pids = pool_stats()["pids"]
    assert len(pids) == 2
    rss = {pid: psutil.Process(pid).memory_info().rss for pid in pids}
    assert all(v < WORKER_RSS_LIMIT for v in rss.values()), {p: f"{v >> 20} MB" for p, v in rss.items()}

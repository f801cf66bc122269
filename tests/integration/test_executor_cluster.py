"""handoff.Executor, execute_async and the joblib backend on one 3-node cluster (as the
README starts one); last, a node killed with ``kill -9`` under a stream of submissions."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import handoff
from handoff.testing import wait_until

pytestmark = [pytest.mark.timeout(240), pytest.mark.chaos]

MOD = 1_000_003


def step(prev, salt):
    """Waits a little so that work is in flight when a node dies; returns a checkable value."""
    time.sleep(0.01)
    return (prev * 31 + salt) % MOD


def stall(seconds):
    time.sleep(seconds)
    return "woke"


def where(value):
    import os

    return value, os.getppid()


@pytest.fixture(scope="module")
def trio():
    """Nodes a, b, c (2 cpus, 2 workers each) and this process as a driver without resources,
    shared by the tests of this module; the last one kills b."""
    from handoff.testing import LocalCluster

    handoff.stop()
    cluster = LocalCluster(3, names=["a", "b", "c"], resources={"cpu": 2}, workers=2)
    try:
        cluster.connect("driver")
        yield cluster
    finally:
        handoff.stop()
        cluster.close()


def test_submissions_spread_over_the_cluster_and_values_go_node_to_node(trio):
    with handoff.Executor(allocation_strategy="load_balanced") as ex:
        costed = ex.options(cost={"cpu": 1})
        first = [costed.submit(step, 1, k) for k in range(12)]
        second = [costed.submit(step, f, 7) for f in first]  # inputs fetched node to node
        pinned = ex.options(node="c").submit(where, second[0])
        expected = [((31 + k) % MOD * 31 + 7) % MOD for k in range(12)]
        assert [f.result(timeout=60) for f in second] == expected
        value, parent = pinned.result(timeout=60)
        assert value == expected[0] and parent == trio["c"].pid


def test_execute_async_and_wrap_future_on_the_cluster(trio):
    dag = handoff.DAG()
    dag.add_function(handoff.Function(id="x", code=step, extra_args=[2, 3], cost={"cpu": 1}))
    dag.add_function(handoff.Function(id="y", code=step, args=["x"], extra_args=[5], cost={"cpu": 1}))

    async def main():
        result = await handoff.execute_async(dag)
        with handoff.Executor() as ex:
            fut = ex.options(cost={"cpu": 1}).submit(step, 4, 4)
            value = await asyncio.wrap_future(fut)
        return result.results["y"], value

    y, value = asyncio.run(main())
    assert y == ((2 * 31 + 3) % MOD * 31 + 5) % MOD
    assert value == (4 * 31 + 4) % MOD


@pytest.mark.slow
def test_grid_search_matches_the_default_backend(trio):
    import joblib
    from sklearn.datasets import make_classification
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    import handoff.joblib

    handoff.joblib.register()
    assert handoff.joblib.cluster_slots() == 7  # 2 workers per node, 1 on the driver
    X, y = make_classification(n_samples=120, n_features=6, random_state=0)
    grid = {"C": [0.1, 10.0], "gamma": [0.05, 0.5]}
    fitted = {}
    for backend in ("loky", "handoff"):
        with joblib.parallel_config(backend=backend):
            fitted[backend] = GridSearchCV(SVC(), grid, cv=3, n_jobs=-1).fit(X, y)
    assert fitted["handoff"].best_params_ == fitted["loky"].best_params_
    for key in ("mean_test_score", "std_test_score", "split0_test_score"):
        assert list(fitted["handoff"].cv_results_[key]) == list(fitted["loky"].cv_results_[key])


def test_every_future_resolves_correctly_with_a_node_killed_under_a_stream(trio):
    """Chains of calls (each one's input is the call ten before it) are submitted while node
    b is killed; every future resolves with the right value (lost values are recomputed)."""
    n, lag = 300, 10
    futures: list = []
    expected: list[int] = []
    killed = threading.Event()
    with handoff.Executor(allocation_strategy="load_balanced") as ex:
        costed = ex.options(cost={"cpu": 1})
        on_b = ex.options(node="b").submit(stall, 120)  # pinned to the node that dies
        for k in range(n):
            if k < lag:
                futures.append(costed.submit(step, k, k))
                expected.append((k * 31 + k) % MOD)
            else:
                futures.append(costed.submit(step, futures[k - lag], k))
                expected.append((expected[k - lag] * 31 + k) % MOD)
            if k == n // 3:  # a third submitted: wait until some ran, then kill b mid-stream
                assert wait_until(lambda: sum(f.done() for f in futures) >= 40, timeout=60)
                trio.kill("b")
                killed.set()
        assert [f.result(timeout=120) for f in futures] == expected
        err = on_b.exception(timeout=60)  # it alone fails: it may run nowhere else
        assert isinstance(err, handoff.NodeLostError) and err.node == "b"
    assert killed.is_set() and "b" not in handoff.discover_nodes()

"""``executor="thread"``: user code in threads of the node process, values kept as objects."""

from __future__ import annotations

import threading

import pytest

import handoff
from handoff import DAG, Function
from nodes import max_overlap, nap, wait_for

pytestmark = pytest.mark.timeout(120)


THREAD_NODE = {"name": "threads", "executor": "thread", "workers": 2, "resources": {"cpu": 2}}


@pytest.fixture(autouse=True)
def thread_node():
    """Per test: the last one replaces it with a driver joined to a cluster."""
    handoff.stop()
    handoff.start(**THREAD_NODE)
    yield
    handoff.stop()


def test_values_that_cannot_be_pickled_flow_between_functions():
    dag = DAG()
    dag.add_function(Function(id="lock", code=threading.Lock))
    dag.add_function(Function(id="use", code=lambda lock: (lock.acquire(), lock.locked())[1], args=["lock"]))
    r = handoff.execute(dag)
    assert r.results["use"] is True
    assert isinstance(r.results["lock"], type(threading.Lock()))


def test_failures_retries_and_chained_exceptions():
    dag = DAG().add_function(Function(id="bad", code=lambda: {}["missing"]))
    with pytest.raises(handoff.FunctionError) as info:
        handoff.execute(dag, max_retries=1)
    assert info.value.attempts == 2 and info.value.exc_type == "KeyError"
    assert isinstance(info.value.__cause__, KeyError)


RELEASE = threading.Event()  # the node's threads run in this process: they see this one


def wait_for_release():
    """Returns only when the test says so (never by itself within the test's time)."""
    return RELEASE.wait(3600)


def test_timeout_is_reported_without_waiting_for_the_thread():
    dag = DAG().add_function(Function(id="slow", code=wait_for_release, timeout=0.2))
    try:
        with pytest.raises(handoff.FunctionError) as info:  # while the code still runs
            handoff.execute(dag, max_retries=0)
        assert info.value.exc_type == "TimeoutError"
        assert handoff.node_stats()["pool"]["busy_threads"] == 1  # the thread is still in it
    finally:
        RELEASE.set()
    # the thread itself stays busy until the code returns; wait so later tests get both threads
    assert wait_for(lambda: handoff.node_stats()["pool"]["busy_threads"] == 0, timeout=10)


def test_threads_run_in_parallel():
    dag = DAG()
    for i in range(4):
        dag.add_function(Function(id=i, code=nap, extra_args=[0.3]))
    r = handoff.execute(dag)
    assert max_overlap(r.stats.values()) == 2  # 2 threads: two at a time, never more


def test_a_peer_fetches_a_value_kept_as_an_object(local_cluster, handoff_driver):
    cluster = local_cluster(1, names=["proc-peer"], resources={"cpu": 1})
    handoff_driver(cluster, **THREAD_NODE)
    dag = DAG()
    dag.add_function(Function(id="v", code=lambda: list(range(5)), node="threads"))
    dag.add_function(Function(id="w", code=sum, args=["v"], node="proc-peer"))
    r = handoff.execute(dag)
    assert r.results["w"] == 10
    assert r.allocations == {"v": "threads", "w": "proc-peer"}

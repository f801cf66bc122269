"""``executor="thread"``: user code in threads of the node process, values kept as objects."""

from __future__ import annotations

import threading
import time

import pytest

import handoff
from handoff import DAG, Function
from nodes import start_node, wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", autouse=True)
def thread_node():
    handoff.stop()
    handoff.start(name="threads", executor="thread", workers=2, resources={"cpu": 2})
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


def test_timeout_is_reported_without_waiting_for_the_thread():
    dag = DAG().add_function(Function(id="slow", code=time.sleep, extra_args=[2], timeout=0.2))
    t0 = time.monotonic()
    with pytest.raises(handoff.FunctionError) as info:
        handoff.execute(dag, max_retries=0)
    assert info.value.exc_type == "TimeoutError"
    assert time.monotonic() - t0 < 1.5
    # the thread itself stays busy until the code returns; wait so later tests get both threads
    node = handoff.api.current_node()
    assert wait_for(lambda: node.node_stats()["pool"]["busy_threads"] == 0, timeout=10)


def test_threads_run_in_parallel():
    dag = DAG()
    for i in range(4):
        dag.add_function(Function(id=i, code=time.sleep, extra_args=[0.3]))
    t0 = time.monotonic()
    handoff.execute(dag)
    assert time.monotonic() - t0 < 1.0  # 2 threads: 2 rounds of 0.3 s


def test_a_peer_fetches_a_value_kept_as_an_object():
    peer = start_node("proc-peer", "cpu=1", workers=1, join=handoff.api.current_node().address)
    try:
        assert wait_for(lambda: "proc-peer" in handoff.discover_nodes())
        dag = DAG()
        dag.add_function(Function(id="v", code=lambda: list(range(5)), node="threads"))
        dag.add_function(Function(id="w", code=sum, args=["v"], node="proc-peer"))
        r = handoff.execute(dag)
        assert r.results["w"] == 10
        assert r.allocations == {"v": "threads", "w": "proc-peer"}
    finally:
        peer.stop()

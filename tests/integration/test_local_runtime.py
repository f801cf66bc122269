"""Execution semantics on a real embedded node with real worker processes."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

import handoff
from handoff import Argument, DAG, Function
from handoff.testing import thread_inside
from nodes import hang, ledger_idle, max_overlap, nap, process_gone, wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", autouse=True)
def node():
    handoff.stop()
    name = handoff.start(name="local-test", workers=2, resources={"cpu": 2, "memory": 1000})
    yield name
    handoff.stop()


# ---- functions shipped to workers (module-level: importable there) -----------------------

def concat(*parts):
    return "".join(str(p) for p in parts)


def bump(path):
    """Append a line to ``path`` and return how many lines it has now (counts calls across processes)."""
    with open(path, "a") as f:
        f.write("x\n")
    with open(path) as f:
        return sum(1 for _ in f)


def flaky(path, failures):
    n = bump(path)
    if n <= failures:
        raise ValueError(f"attempt {n} fails")
    return n


def exit_once(path):
    if bump(path) == 1:
        os._exit(7)
    return "survived"


class Unpicklable:
    def __reduce__(self):
        raise TypeError("this object refuses to be pickled")


class CustomError(Exception):
    pass


def boom():
    raise CustomError("kaboom")


sleeper = nap


def marker(path, value):
    bump(path)
    return value


# ---- argument passing ------------------------------------------------------------------

def test_argument_order_then_extra_args():
    dag = DAG()
    dag.add_function(Function(id="a", code=lambda: "A"))
    dag.add_function(Function(id="b", code=lambda: "B"))
    dag.add_function(Function(id="c", code=concat, args=["b", "a"], extra_args=["x", 1]))
    r = handoff.execute(dag)
    assert r.results["c"] == "BAx1"
    assert r.dag_id == dag.id
    assert set(r.allocations) == {"a", "b", "c"}
    assert set(r.allocations.values()) == {"local-test"}


def test_as_list_inclusion():
    dag = DAG()
    dag.add_function(Function(id="a", code=lambda: 1))
    dag.add_function(Function(id="b", code=lambda: 2))
    dag.add_function(Function(id="s", code=lambda xs, k: [x * k for x in xs], args=["a", "b"],
                              extra_args=[10], argument_inclusion="as_list"))
    assert handoff.execute(dag).results["s"] == [10, 20]


def test_closures_and_any_hashable_ids():
    k = 7
    dag = DAG(("tuple", "dag", 1))
    dag.add_function(Function(id=("src", 1), code=lambda: k))
    dag.add_function(Function(id=frozenset({"y"}), code=lambda v: v * k, args=[("src", 1)]))
    r = handoff.execute(dag)
    assert r.results[frozenset({"y"})] == 49
    assert r.dag_id == ("tuple", "dag", 1)


def test_inline_functions_run_once_per_consumer_with_gating(tmp_path):
    calls = str(tmp_path / "inline")
    dag = DAG()
    dag.add_function(Function(id="r1", code=sleeper, extra_args=[0.2, 5]))
    dag.add_function(Function(id="inl", code=lambda x, path: (bump(path), x + 1)[1], args=["r1"],
                              extra_args=[calls], type="inline"))
    dag.add_function(Function(id="c1", code=lambda v: v * 2, args=["inl"]))
    dag.add_function(Function(id="c2", code=lambda v: v * 3, args=["inl"]))
    r = handoff.execute(dag)
    assert (r.results["c1"], r.results["c2"]) == (12, 18)
    assert "inl" not in r.results and "inl" not in r.allocations
    with open(calls) as f:
        assert len(f.readlines()) == 2


def test_argument_hooks_are_skipped_on_the_same_node_unless_always(tmp_path):
    ser = str(tmp_path / "ser")
    dag = DAG()
    dag.add_function(Function(id="p", code=lambda: 3))
    dag.add_function(Function(id="q", code=lambda v: v, args=[
        Argument("p", serialization_fn=(lambda v, s, t, path: (bump(path), v)[1], [ser]),
                 deserialization_fn=lambda v, s, t: v * 100)]))
    assert handoff.execute(dag).results["q"] == 3
    assert not os.path.exists(ser)

    dag = DAG()
    dag.add_function(Function(id="p", code=lambda: 3))
    dag.add_function(Function(id="q", code=lambda v: v, args=[
        Argument("p", serialization_fn=lambda v, s, t: (v, s, t),
                 deserialization_fn=lambda d, s, t: (d[0] * 100, d[1], d[2], s, t), always=True)]))
    value = handoff.execute(dag).results["q"]
    assert value == (300, "local-test", "local-test", "local-test", "local-test")


def test_large_numpy_results_round_trip():
    dag = DAG()
    dag.add_function(Function(id="arr", code=lambda: np.arange(2_000_000, dtype=np.float64)))
    dag.add_function(Function(id="sum", code=lambda a: float(a.sum()), args=["arr"]))
    r = handoff.execute(dag)
    assert r.results["sum"] == float(np.arange(2_000_000).sum())
    assert r.results["arr"].shape == (2_000_000,)


# ---- retries, failures, timeouts -------------------------------------------------------

def test_retries_then_success_and_attempt_counts(tmp_path):
    dag = DAG()
    dag.add_function(Function(id="f", code=flaky, extra_args=[str(tmp_path / "f"), 2]))
    r = handoff.execute(dag, max_retries=3)
    assert r.results["f"] == 3
    assert r.stats["f"].attempts == 3
    assert r.stats["f"].node == "local-test"
    assert r.stats["f"].finished_at >= r.stats["f"].started_at


def test_function_max_retries_overrides_the_run(tmp_path):
    dag = DAG()
    dag.add_function(Function(id="f", code=flaky, extra_args=[str(tmp_path / "f"), 2], max_retries=0))
    with pytest.raises(handoff.FunctionError) as info:
        handoff.execute(dag, max_retries=5)
    assert info.value.attempts == 1


def test_function_error_carries_remote_details_and_chains_the_original():
    dag = DAG()
    dag.add_function(Function(id="bad", code=boom))
    with pytest.raises(handoff.FunctionError) as info:
        handoff.execute(dag, max_retries=1)
    err = info.value
    assert (err.function_id, err.node, err.attempts) == ("bad", "local-test", 2)
    assert err.exc_type == "CustomError" and err.message == "kaboom"
    assert "in boom" in err.remote_traceback
    assert isinstance(err.__cause__, CustomError)
    assert "kaboom" in str(err)
    assert ledger_idle()


def test_a_worker_that_dies_fails_the_attempt_and_is_replaced(tmp_path):
    dag = DAG()
    dag.add_function(Function(id="e", code=exit_once, extra_args=[str(tmp_path / "e")]))
    r = handoff.execute(dag, max_retries=1)
    assert r.results["e"] == "survived"
    assert r.stats["e"].attempts == 2
    dag = DAG()
    dag.add_function(Function(id="e", code=os._exit, extra_args=[3]))
    with pytest.raises(handoff.FunctionError) as info:
        handoff.execute(dag, max_retries=0)
    assert info.value.exc_type == "WorkerDied"


def test_per_function_timeout_kills_the_attempt(tmp_path):
    pid_file = str(tmp_path / "pid")
    # the clock runs from the attempt's dispatch: with 2 s the attempt has written its pid long
    # before it is killed, even on a loaded machine
    dag = DAG()
    dag.add_function(Function(id="slow", code=hang, extra_args=[pid_file], timeout=2.0))
    with pytest.raises(handoff.FunctionError) as info:  # hang never returns by itself
        handoff.execute(dag, max_retries=1)
    assert info.value.exc_type == "TimeoutError"
    assert info.value.attempts == 2
    assert process_gone(pid_file)  # the worker running it was killed
    assert ledger_idle()


def fail_once_exists(path: str) -> None:
    """Workload: raises ZeroDivisionError once ``path`` exists (waiting at most a minute)."""
    wait_for(lambda: os.path.exists(path), timeout=60.0)
    1 / 0


def test_fail_fast_cancels_in_flight_work_and_starts_nothing_downstream(tmp_path):
    started = str(tmp_path / "downstream")
    dag = DAG()
    pid_file = str(tmp_path / "long-pid")
    dag.add_function(Function(id="long", code=hang, extra_args=[pid_file], cost={"cpu": 1}))
    # "bad" fails once "long" is running (its pid written), so there is in-flight work to cancel
    dag.add_function(Function(id="bad", code=fail_once_exists, extra_args=[pid_file],
                              cost={"cpu": 1}))
    dag.add_function(Function(id="after", code=marker, args=["bad"], extra_args=[started, 1]))
    with pytest.raises(handoff.FunctionError) as info:
        handoff.execute(dag, max_retries=0)
    assert info.value.function_id == "bad"
    assert info.value.exc_type == "ZeroDivisionError"
    assert process_gone(pid_file)  # the in-flight function was cancelled: its worker killed
    assert not os.path.exists(started)
    assert ledger_idle()
    # the node still serves
    ok = DAG().add_function(Function(id="x", code=lambda: 1))
    assert handoff.execute(ok).results["x"] == 1


def test_run_timeout_raises_and_releases():
    dag = DAG()
    dag.add_function(Function(id="slow", code=hang, cost={"cpu": 1}))
    with pytest.raises(handoff.TimeoutError) as info:
        handoff.execute(dag, timeout=0.5)
    assert isinstance(info.value, TimeoutError)
    assert ledger_idle()


def test_unpicklable_function_fails_before_the_run_naming_it():
    bad = Unpicklable()
    dag = DAG()
    dag.add_function(Function(id="f", code=lambda: bad))
    with pytest.raises(handoff.InvalidFunctionError, match="'f'.*pickled"):
        handoff.execute(dag)


def test_unpicklable_result_is_a_function_error():
    dag = DAG()
    dag.add_function(Function(id="f", code=Unpicklable))
    with pytest.raises(handoff.FunctionError) as info:
        handoff.execute(dag, max_retries=0)
    assert info.value.exc_type == "PicklingError"
    assert "could not be pickled" in info.value.message


# ---- resources ---------------------------------------------------------------------------

def test_cost_that_fits_no_node_is_an_allocation_error():
    dag = DAG()
    dag.add_function(Function(id="huge", code=lambda: 1, cost={"cpu": 64}))
    with pytest.raises(handoff.AllocationError) as info:
        handoff.execute(dag)
    assert info.value.function_id == "huge"
    assert info.value.cost == {"cpu": 64}
    assert "local-test" in info.value.capacities


def test_functions_wait_for_resources_and_never_overcommit():
    dag = DAG()
    for i in range(4):
        dag.add_function(Function(id=i, code=sleeper, extra_args=[0.15], cost={"cpu": 2}))
    r = handoff.execute(dag)
    spans = sorted((s.started_at, s.finished_at) for s in r.stats.values())
    for (s0, f0), (s1, f1) in zip(spans, spans[1:]):
        assert s1 >= f0 - 0.01  # one at a time: each needs the node's 2 cpus


def test_max_concurrency_bounds_in_flight_functions():
    dag = DAG()
    for i in range(4):
        dag.add_function(Function(id=i, code=sleeper, extra_args=[0.1]))
    r = handoff.execute(dag, max_concurrency=1)
    spans = sorted((s.started_at, s.finished_at) for s in r.stats.values())
    for (s0, f0), (s1, f1) in zip(spans, spans[1:]):
        assert s1 >= f0 - 0.01


def test_independent_functions_run_in_parallel():
    dag = DAG()
    for i in range(4):
        dag.add_function(Function(id=i, code=sleeper, extra_args=[0.3]))
    r = handoff.execute(dag)
    assert max_overlap(r.stats.values()) == 2  # 2 workers: two at a time, never more


def test_execute_local_ignores_node_and_cost():
    dag = DAG()
    dag.add_function(Function(id="a", code=lambda: 2, cost={"gpu": 8}, node="elsewhere"))
    r = handoff.execute_local(dag)
    assert r.results["a"] == 2
    assert r.allocations["a"] == "local-test"


def test_resources_available_and_register_local_node():
    assert handoff.resources_available("local-test", {"cpu": 2})
    assert not handoff.resources_available("local-test", {"cpu": 3})
    assert not handoff.resources_available("nowhere", {"cpu": 1})
    handoff.register_local_node({"cpu": 2, "memory": 1000, "fpga": 1})
    try:
        assert handoff.discover_nodes()["local-test"]["fpga"] == 1
        dag = DAG().add_function(Function(id="f", code=lambda: "fpga", cost={"fpga": 1}))
        assert handoff.execute(dag).results["f"] == "fpga"
    finally:
        handoff.register_local_node({"cpu": 2, "memory": 1000})


# ---- options and validation --------------------------------------------------------------

def test_options_are_validated():
    dag = DAG().add_function(Function(id="a", code=lambda: 1))
    with pytest.raises(ValueError, match="valid: .*max_retries"):
        handoff.execute(dag, retries=3)
    with pytest.raises(ValueError, match="first_available"):
        handoff.execute(dag, allocation_strategy="fastest")
    with pytest.raises(ValueError):
        handoff.execute(dag, max_retries=-1)
    with pytest.raises(TypeError):
        handoff.execute("not a dag")


def test_invalid_dag_is_rejected_at_execute():
    dag = DAG()
    dag.add_function(Function(id="a", code=lambda x: x, args=["b"]))
    dag.add_function(Function(id="b", code=lambda x: x, args=["a"]))
    with pytest.raises(handoff.CycleError):
        handoff.execute(dag)


def test_progress_callback_sees_every_function():
    seen = []
    dag = DAG()
    for i in range(5):
        dag.add_function(Function(id=i, code=lambda: 0))
    handoff.execute(dag, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (5, 5)


def test_concurrent_executes_from_threads_are_isolated():
    out = {}

    def run(k):
        dag = DAG(f"thread-{k}")
        dag.add_function(Function(id="v", code=sleeper, extra_args=[0.05, k]))
        dag.add_function(Function(id="w", code=lambda v: v * 10, args=["v"]))
        out[k] = handoff.execute(dag).results["w"]

    threads = [threading.Thread(target=run, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert out == {k: k * 10 for k in range(6)}


# ---- the result store ---------------------------------------------------------------------

def test_store_api():
    handoff.store_value("d1", "k", {"v": 1})
    assert handoff.get_local_value("d1", "k") == {"v": 1}
    assert handoff.get_value("d1", "k") == {"v": 1}
    assert handoff.lookup_data_location("d1", "k") == "local-test"
    handoff.register_data_location("d1", "elsewhere", "node-x")
    assert handoff.lookup_data_location("d1", "elsewhere") == "node-x"
    with pytest.raises(handoff.ResultNotFound):
        handoff.get_local_value("d1", "missing")
    with pytest.raises(KeyError):
        handoff.get_value("d1", "missing")
    handoff.clear("d1")
    with pytest.raises(handoff.ResultNotFound):
        handoff.get_local_value("d1", "k")
    assert handoff.lookup_data_location("d1", "k") is None


def test_get_result_waits_for_a_later_store_and_times_out():
    main = threading.main_thread().ident
    waiting = []

    def later():
        # store only once the main thread is inside get_result, so the wait path is taken
        waiting.append(wait_for(lambda: thread_inside(main, "get_result"), timeout=10, interval=0.01))
        handoff.store_result("d2", "f", 42, origin_node="somewhere")

    t = threading.Thread(target=later)
    t.start()
    assert handoff.get_result("d2", "f", timeout=20) == 42
    t.join()
    assert waiting == [True]
    assert handoff.lookup_data_location("d2", "f") == "somewhere"
    with pytest.raises(handoff.TimeoutError):
        handoff.get_result("d2", "never", timeout=0.2)



def test_results_mapping_is_read_only_and_knows_locations():
    dag = DAG().add_function(Function(id="a", code=lambda: 5))
    r = handoff.execute(dag)
    assert dict(r.results) == {"a": 5}
    assert r.results.location("a") == "local-test"
    with pytest.raises(TypeError):
        r.results["a"] = 6
    with pytest.raises(handoff.ResultNotFound):
        r.results["zzz"]
    assert handoff.get_value(dag.id, "a") == 5


def ok_value():
    return "fine"


def die_now():
    os._exit(1)


def test_a_dead_worker_is_blamed_on_the_function_it_was_running():
    """Short functions go to a worker in batches; when one kills the worker, only it is
    charged, the others of the batch run again, and no claim is left behind."""
    for _ in range(3):  # learn that both are fast, so they share a batch
        warm = DAG()
        for i in range(4):
            warm.add_function(Function(id=i, code=ok_value))
        handoff.execute(warm)
    dag = DAG()
    dag.add_function(Function(id="fine", code=ok_value, cost={"cpu": 1}))
    dag.add_function(Function(id="dies", code=die_now, cost={"cpu": 1}, max_retries=0))
    with pytest.raises(handoff.FunctionError) as info:
        handoff.execute(dag)
    assert info.value.function_id == "dies" and info.value.exc_type == "WorkerDied"
    assert ledger_idle()
    assert handoff.node_stats()["pool"]["used"] == {}  # the worker's claim, on this node
    whole = DAG().add_function(Function(id="all", code=ok_value, cost={"cpu": 2}))
    assert handoff.execute(whole, timeout=30).results["all"] == "fine"


def test_a_failing_progress_callback_does_not_stop_the_run():
    dag = DAG()
    for i in range(3):
        dag.add_function(Function(id=i, code=ok_value))
    r = handoff.execute(dag, progress=lambda done, total: 1 / 0)
    assert dict(r.results) == {0: "fine", 1: "fine", 2: "fine"}
    assert handoff.execute(DAG().add_function(Function(id="x", code=ok_value))).results["x"] == "fine"


def close_my_channel_and_linger():
    import sys

    os.close(int(sys.argv[1]))  # the worker's end of its socket pair with the node
    hang()


def test_a_worker_whose_channel_closes_is_replaced_at_once():
    dag = DAG().add_function(Function(id="rude", code=close_my_channel_and_linger))
    with pytest.raises(handoff.FunctionError) as info:  # the function itself never returns
        handoff.execute(dag, max_retries=0)
    assert info.value.exc_type == "WorkerDied"
    assert handoff.execute(DAG().add_function(Function(id="x", code=ok_value))).results["x"] == "fine"

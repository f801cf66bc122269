"""handoff.Executor against the ``concurrent.futures`` contract, as its documentation states
it, on an embedded node; then on a 3-node cluster with a node killed under a stream of
submissions."""

from __future__ import annotations

import os
import threading
from concurrent import futures as cf

import pytest

import handoff
from handoff.testing import wait_until

pytestmark = pytest.mark.timeout(120)


def square(x):
    return x * x


def add(a, b=0):
    return a + b


def total(items, scale=1):
    return scale * sum(items)


def fail(message):
    raise ValueError(message)


def wait_for_file(path, value=None, mark=None):
    """Block until ``path`` exists (the test creates it), then return ``value``; first
    create ``mark`` so the test sees the call has started."""
    if mark:
        open(mark, "a").close()
    assert wait_until(lambda: os.path.exists(path), timeout=60)
    return value


def blocking(ex):
    """A view for calls that block: a call with a timeout has a worker to itself, so no
    quick call waits behind it on that worker (the node batches quick calls)."""
    return ex.options(timeout=120)


def touch(path):
    open(path, "a").close()
    return path


@pytest.fixture(scope="module")
def node():
    """The embedded node: 2 cpus, 2 workers (costed calls below hold the cpus to keep the
    others pending)."""
    handoff.stop()
    handoff.start(resources={"cpu": 2}, workers=2)
    yield handoff.node_name()
    handoff.stop()


@pytest.fixture
def ex(node):
    executor = handoff.Executor()
    yield executor
    executor.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def gate(tmp_path):
    """A file whose creation releases every ``wait_for_file`` call; created at the end anyway."""
    path = str(tmp_path / "gate")
    yield path
    open(path, "a").close()


def test_is_a_concurrent_futures_executor(ex):
    assert isinstance(ex, cf.Executor)
    fut = ex.submit(square, 7)
    assert isinstance(fut, cf.Future)
    assert fut.result(timeout=30) == 49
    assert fut.done() and not fut.cancelled() and fut.exception() is None


def test_many_submissions_each_get_their_own_result(ex):
    fs = [ex.submit(add, i, b=i) for i in range(500)]
    assert [f.result(timeout=60) for f in fs] == [2 * i for i in range(500)]


class Custom(Exception):
    def __init__(self, code):
        super().__init__(f"code {code}")
        self.code = code


def raise_custom(code):
    raise Custom(code)


def test_a_remote_exception_is_raised_by_result_with_its_own_type(ex):
    fut = ex.submit(fail, "bad input")
    with pytest.raises(ValueError) as info:
        fut.result(timeout=60)
    err = info.value
    assert isinstance(err, handoff.FunctionError) and err.exc_type == "ValueError"
    assert isinstance(err.cause, ValueError) and str(err.cause) == "bad input"
    assert fut.exception() is err
    with pytest.raises(Custom) as info:
        ex.submit(raise_custom, 7).result(timeout=60)
    assert info.value.code == 7


def test_submissions_are_independent(ex):
    bad = ex.submit(fail, "one")
    good = ex.submit(square, 3)
    assert good.result(timeout=60) == 9
    assert isinstance(bad.exception(timeout=60), handoff.FunctionError)
    assert ex.submit(square, 4).result(timeout=60) == 16  # the executor goes on


def test_futures_as_arguments_become_inputs(ex):
    a, b = ex.submit(square, 2), ex.submit(square, 3)
    c = ex.submit(add, a, b=b)
    d = ex.submit(total, [a, b, c], scale=ex.submit(square, 1))
    e = ex.submit(total, (a, a))  # the same input twice
    assert c.result(timeout=60) == 13
    assert d.result(timeout=60) == 26
    assert e.result(timeout=60) == 8
    nested = ex.submit(lambda m: m["k"][0] + 1, {"k": [c]})
    assert nested.result(timeout=60) == 14


def test_a_call_on_a_failed_input_does_not_run_and_raises_its_error(ex, tmp_path):
    marker = str(tmp_path / "ran")
    bad = ex.submit(fail, "upstream")
    child = ex.submit(lambda _x, path: touch(path), bad, marker)
    grandchild = ex.submit(add, child, 1)
    for fut in (child, grandchild):
        err = fut.exception(timeout=60)
        assert isinstance(err, handoff.FunctionError) and err.function_id == bad.function_id
    late = ex.submit(add, bad, 1)  # submitted after the input failed
    assert late.exception(timeout=60).function_id == bad.exception().function_id
    ex.shutdown(wait=True)
    assert not os.path.exists(marker)


def test_a_future_of_another_executor_is_refused(ex, node):
    other = handoff.Executor()
    try:
        with pytest.raises(TypeError, match="same handoff.Executor"):
            ex.submit(add, other.submit(square, 1), 1)
    finally:
        other.shutdown()


def test_map_returns_results_in_order(ex):
    assert list(ex.map(square, range(50))) == [i * i for i in range(50)]
    assert list(ex.map(add, [1, 2, 3], [10, 20])) == [11, 22]  # zip: the shortest wins


@pytest.mark.parametrize("chunksize", [2, 7, 256])
def test_map_with_chunks_gives_the_same_results(ex, chunksize):
    assert list(ex.map(add, range(300), range(300), chunksize=chunksize)) == [2 * i for i in range(300)]
    assert list(ex.map(total, [[1, 2], [3]], chunksize=chunksize)) == [3, 3]  # not plain values


def test_map_rejects_a_bad_chunksize(ex):
    with pytest.raises(ValueError, match="chunksize"):
        ex.map(square, range(3), chunksize=0)


def test_map_is_lazy_and_yields_results_as_they_come(ex, gate):
    results = blocking(ex).map(wait_for_file, [gate, gate], [1, 2])  # returns before any call finished
    open(gate, "a").close()
    assert next(results) == 1
    assert list(results) == [2]


def test_map_timeout_counts_from_the_call(ex, gate):
    results = blocking(ex).map(wait_for_file, [gate], timeout=0.2)
    with pytest.raises(cf.TimeoutError):
        next(results)


def test_wait_with_each_return_when(ex, gate, tmp_path):
    slow = blocking(ex).submit(wait_for_file, gate, "slow")
    quick = ex.submit(square, 5)
    bad = ex.submit(fail, "boom")
    done, not_done = cf.wait([slow, quick], return_when=cf.FIRST_COMPLETED, timeout=60)
    assert quick in done and slow in not_done
    done, not_done = cf.wait([slow, bad], return_when=cf.FIRST_EXCEPTION, timeout=60)
    assert bad in done and slow in not_done
    done, not_done = cf.wait([slow, quick], timeout=0.1)
    assert slow in not_done
    open(gate, "a").close()
    done, not_done = cf.wait([slow, quick, bad], return_when=cf.ALL_COMPLETED, timeout=60)
    assert not not_done and slow.result() == "slow"


def test_as_completed_yields_every_future_once(ex, gate):
    fs = [ex.submit(square, i) for i in range(20)]
    assert sorted(f.result() for f in cf.as_completed(fs, timeout=60)) == [i * i for i in range(20)]
    blocked = blocking(ex).submit(wait_for_file, gate)
    with pytest.raises(cf.TimeoutError):
        list(cf.as_completed([blocked], timeout=0.2))


def _hold_both_cpus(ex, gate, tmp_path, n=2):
    """Calls that take the node's 2 cpus until ``gate`` exists: the first runs, the next is
    sent ahead of its resources; any further costed call stays pending in the driver."""
    hold = ex.options(cost={"cpu": 2}, timeout=120)
    marks = [str(tmp_path / f"started-{k}") for k in range(n)]
    running = [hold.submit(wait_for_file, gate, k, mark) for k, mark in enumerate(marks)]
    assert wait_until(lambda: os.path.exists(marks[0]), timeout=30)
    return hold, running


def test_cancel_before_running_means_it_never_runs(ex, gate, tmp_path):
    hold, running = _hold_both_cpus(ex, gate, tmp_path)
    marker = str(tmp_path / "victim-ran")
    victim = hold.submit(touch, marker)
    child = ex.submit(add, victim, 1)
    assert not victim.running() and not victim.done()
    assert victim.cancel()
    assert victim.cancelled() and victim.done()
    with pytest.raises(cf.CancelledError):
        victim.result()
    assert isinstance(child.exception(timeout=60), cf.CancelledError)
    open(gate, "a").close()
    assert [f.result(timeout=60) for f in running] == [0, 1]
    ex.shutdown(wait=True)
    assert not os.path.exists(marker)


def test_cancel_while_running_fails_and_the_call_completes(ex, gate, tmp_path):
    mark = str(tmp_path / "started")
    fut = blocking(ex).submit(wait_for_file, gate, "finished", mark)
    assert wait_until(lambda: os.path.exists(mark), timeout=30)
    assert fut.running()
    assert not fut.cancel()
    open(gate, "a").close()
    assert fut.result(timeout=60) == "finished"


def test_shutdown_waits_for_every_call(node, gate):
    ex = handoff.Executor()
    slow = blocking(ex).submit(wait_for_file, gate, "slow")
    fs = [ex.submit(square, i) for i in range(20)]
    threading.Timer(0.0, lambda: open(gate, "a").close()).start()
    ex.shutdown(wait=True)
    assert slow.done() and all(f.done() for f in fs)
    assert slow.result() == "slow"


def test_shutdown_without_wait_lets_calls_finish(node, gate, tmp_path):
    ex = handoff.Executor()
    mark = str(tmp_path / "started")
    slow = blocking(ex).submit(wait_for_file, gate, "slow", mark)
    assert wait_until(lambda: os.path.exists(mark), timeout=30)
    ex.shutdown(wait=False)
    assert not slow.done()
    open(gate, "a").close()
    assert slow.result(timeout=60) == "slow"


def test_shutdown_with_cancel_futures_cancels_only_pending_calls(node, gate, tmp_path):
    ex = handoff.Executor()
    hold, running = _hold_both_cpus(ex, gate, tmp_path)
    marker = str(tmp_path / "pending-ran")
    pending = [hold.submit(touch, marker) for _ in range(3)]
    ex.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in pending)
    open(gate, "a").close()
    assert [f.result(timeout=60) for f in running] == [0, 1]
    ex.shutdown(wait=True)
    assert not os.path.exists(marker)


def test_submit_after_shutdown_raises_runtime_error(node):
    ex = handoff.Executor()
    ex.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 1)
    with handoff.Executor() as ex2:
        assert ex2.submit(square, 2).result(timeout=60) == 4
    with pytest.raises(RuntimeError):
        ex2.submit(square, 1)


def test_options_view_submits_with_its_options(ex, node, tmp_path):
    view = ex.options(cost={"cpu": 1}, node=node, max_retries=0)
    assert view.submit(square, 6).result(timeout=60) == 36
    fut = ex.options(node="no-such-node").submit(square, 1)
    assert isinstance(fut.exception(timeout=60), handoff.AllocationError)
    too_big = ex.options(cost={"cpu": 64}).submit(square, 1)
    assert isinstance(too_big.exception(timeout=60), handoff.AllocationError)
    with pytest.raises(ValueError, match="unknown option"):
        ex.options(priority=1)
    with pytest.raises(ValueError):
        ex.options(max_retries=-1)


def test_a_per_call_timeout_raises_handoff_timeout_error(ex, gate):
    fut = ex.options(timeout=0.5, max_retries=0).submit(wait_for_file, gate)
    err = fut.exception(timeout=60)
    assert isinstance(err, handoff.TimeoutError) and isinstance(err, TimeoutError)
    assert err.seconds == 0.5


def test_bad_executor_options_are_refused():
    with pytest.raises(ValueError, match="allocation_strategy"):
        handoff.Executor(allocation_strategy="fastest")
    with pytest.raises(ValueError):
        handoff.Executor(max_retries=-2)


def test_callbacks_run_off_the_node_loop(ex):
    seen = []
    done = threading.Event()
    fut = ex.submit(square, 9)

    def callback(f):
        seen.append((f.result(), threading.current_thread().name))
        done.set()

    fut.add_done_callback(callback)
    assert done.wait(60)
    value, thread = seen[0]
    assert value == 81 and not thread.startswith("handoff-node")


def test_a_forgotten_executor_ends_its_run_and_drops_its_values(node):
    import gc

    ex = handoff.Executor()
    dag_id = ex.dag_id
    fut = ex.submit(square, 12)
    assert fut.result(timeout=60) == 144
    fid = fut.function_id
    assert handoff.get_local_value(dag_id, fid) == 144
    del ex, fut
    gc.collect()
    assert wait_until(lambda: handoff.node_stats()["runs"] == 0, timeout=30)

    def dropped():
        try:
            handoff.get_local_value(dag_id, fid)
        except handoff.ResultNotFound:
            return True
        return False

    assert wait_until(dropped, timeout=30)


def test_calls_fail_when_the_node_stops_under_the_executor():
    handoff.stop()
    handoff.start(workers=1)
    ex = handoff.Executor()
    assert ex.submit(square, 2).result(timeout=60) == 4
    handoff.stop()
    with pytest.raises(handoff.HandoffError, match="node stopped"):
        ex.submit(square, 3)
    ex.shutdown()  # returns: the run already ended

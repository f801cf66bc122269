"""Streaming pipelines on one node (real worker processes): the original's pipeline behaviour,
then what it lacked: bounds, deadlines, error-shaped values, worker loss, teardown."""

from __future__ import annotations

import os
import threading
import time
import uuid

import psutil
import pytest

import handoff
from handoff import DAG, Argument, Function, ItemError
from handoff.errors import FunctionError, InvalidFunctionError, ValidationError
from handoff.testing import wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", autouse=True)
def node():
    handoff.stop()
    name = handoff.start(name="streams-test", workers=2, resources={"cpu": 4})
    yield name
    handoff.stop()


# ---- functions shipped to replicas -------------------------------------------------------------

def double(x):
    return 2 * x


def triple(x):
    return 3 * x


def add(a, b):
    return a + b


def fail_on_two(x):
    if x == 2:
        raise ValueError("two is not welcome")
    return x


def slow_on(x, bad, seconds):
    if x == bad:
        time.sleep(seconds)
    return x


def sizes(batch):
    return [len(batch)] * len(batch)


def wrong_length(batch):
    return batch[:-1]


def make_token():
    return {"token": uuid.uuid4().hex, "n": 0}


def count_with_state(state, x):
    state = {"token": state["token"], "n": state["n"] + 1}
    return (state["token"], state["n"], x), state


def span(x):
    start = time.time()
    time.sleep(0.05)
    return os.getpid(), start, time.time(), x


def identity(x):
    return x


def error_shaped(x):
    return {"ok": ValueError("a value, not a failure"), "error": "also a value", "item": ItemError(x, "f", "E", "m")}


def describe(v):
    return type(v["ok"]).__name__, v["error"], isinstance(v["item"], ItemError)


def wait_for_file(x, path):
    while not os.path.exists(path):
        time.sleep(0.01)
    return x


def kill_self_once(x, marker):
    if x == 3 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), 9)
    return x


def inc(x):
    return x + 1


def tag_hook(value, source, target, label):
    return (label, value)


def alloc(n):
    return b"x" * n


def ln(b):
    return len(b)


def diamond() -> DAG:
    dag = DAG()
    dag.add_function(Function(id="x", type="input"))
    dag.add_function(Function(id="double", args=["x"], code=double))
    dag.add_function(Function(id="triple", args=["x"], code=triple))
    dag.add_function(Function(id="join", args=["double", "triple"], code=add))
    return dag


def chain(*stages: Function) -> DAG:
    dag = DAG().add_function(Function(id="x", type="input"))
    for fn in stages:
        dag.add_function(fn)
    return dag


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def replica_pids() -> list[int]:
    return handoff.node_stats()["pool"]["replica_pids"]


# ---- the original's behaviour ----------------------------------------------------------------

def test_diamond_joins_each_item_by_number():
    with handoff.stream(diamond()) as pipe:
        assert [pipe.push(v) for v in [3, 1, 4]] == [0, 1, 2]
        pipe.close()
        assert list(pipe.results()) == [15, 5, 20]


def test_map_is_bounded_and_ordered():
    outs = list(handoff.stream(diamond(), max_pending=5).map(range(200)))
    assert outs == [5 * v for v in range(200)]


def test_init_runs_once_per_replica_and_state_carries(tmp_path):
    dag = chain(Function(id="count", args=["x"], code=count_with_state, init=make_token, parallelism=2))
    outs = list(handoff.stream(dag).map(range(40)))
    assert [x for _, _, x in outs] == list(range(40))
    by_token: dict = {}
    for token, n, _ in outs:
        by_token.setdefault(token, []).append(n)
    assert 1 <= len(by_token) <= 2  # one state per replica
    for counts in by_token.values():
        assert sorted(counts) == list(range(1, len(counts) + 1))  # each state saw its items once


def test_concurrent_pushes_keep_order():
    with handoff.stream(chain(Function(id="d", args=["x"], code=double))) as pipe:
        got: dict[int, int] = {}
        lock = threading.Lock()

        def pusher(v):
            seq = pipe.push(v)
            with lock:
                got[seq] = v

        threads = [threading.Thread(target=pusher, args=(v,)) for v in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        pipe.close()
        assert sorted(got) == list(range(20))
        assert list(pipe.results()) == [2 * got[seq] for seq in range(20)]


def test_parallelism_overlaps_and_keeps_order():
    dag = chain(Function(id="s", args=["x"], code=span, parallelism=4))
    with handoff.stream(dag) as pipe:
        outs = list(pipe.map(range(40)))
        stats = pipe.stats()
    assert [x for *_, x in outs] == list(range(40))
    pids = {pid for pid, *_ in outs}
    assert len(pids) == 4
    spans = sorted((start, end, pid) for pid, start, end, _ in outs)
    overlapping = any(b[0] < a[1] and b[2] != a[2] for a, b in zip(spans, spans[1:]))
    assert overlapping, "four replicas never ran at the same time"
    assert len(stats["functions"]["s"]["replicas"]) == 4


def test_batches_by_size_and_close_flushes_the_rest():
    dag = chain(Function(id="b", args=["x"], code=sizes, batch_size=3))
    with handoff.stream(dag) as pipe:
        for v in range(7):
            pipe.push(v)
        pipe.close()
        assert list(pipe.results()) == [3, 3, 3, 3, 3, 3, 1]


def test_batches_by_timeout_without_close():
    dag = chain(Function(id="b", args=["x"], code=sizes, batch_size=100, batch_timeout=0.05))
    with handoff.stream(dag) as pipe:
        for v in range(5):
            pipe.push(v)
        outs = [out for _, out in zip(range(5), pipe.results(timeout=30))]
        assert len(outs) == 5 and all(1 <= n <= 5 for n in outs)


def test_batches_by_size_or_timeout():
    dag = chain(Function(id="b", args=["x"], code=sizes, batch_size=4, batch_timeout=0.2))
    with handoff.stream(dag) as pipe:
        for v in range(10):
            pipe.push(v)
        outs = [out for _, out in zip(range(10), pipe.results(timeout=30))]
        assert len(outs) == 10 and max(outs) <= 4
        assert 4 in outs or outs.count(outs[0]) == len(outs)  # full batches when items came together


def test_wrong_batch_length_fails_each_item_of_that_batch():
    dag = chain(Function(id="b", args=["x"], code=wrong_length, batch_size=2))
    with handoff.stream(dag) as pipe:
        for v in range(2):
            pipe.push(v)
        pipe.close()
        outs = list(pipe.results())
    assert [type(o) for o in outs] == [ItemError, ItemError]
    assert "returned 1 results for a batch of 2 items" in outs[0].message
    assert outs[0].function_id == "b" and outs[0].exc_type == "ValueError"


def test_failing_item_in_the_middle_is_an_item_error_and_consumers_skip_it():
    dag = chain(Function(id="f", args=["x"], code=fail_on_two), Function(id="g", args=["f"], code=inc))
    with handoff.stream(dag) as pipe:
        for v in range(5):
            pipe.push(v)
        pipe.close()
        outs = list(pipe.results())
        stats = pipe.stats()
    assert outs[:2] == [1, 2] and outs[3:] == [4, 5]
    err = outs[2]
    assert isinstance(err, ItemError) and err.item == 2 and err.function_id == "f"
    assert err.exc_type == "ValueError" and "two is not welcome" in err.message
    assert "fail_on_two" in err.remote_traceback
    assert stats["functions"]["g"]["items"] == 4  # skipped for the failed item


def test_errors_raise_stops_at_the_failed_item():
    dag = chain(Function(id="f", args=["x"], code=fail_on_two))
    with handoff.stream(dag, errors="raise") as pipe:
        for v in range(4):
            pipe.push(v)
        pipe.close()
        it = pipe.results()
        assert [next(it), next(it)] == [0, 1]
        with pytest.raises(ItemError) as info:
            next(it)
        assert info.value.item == 2


def test_join_timeout_expires_one_item_and_later_ones_flow():
    dag = DAG()
    dag.add_function(Function(id="x", type="input"))
    dag.add_function(Function(id="double", args=["x"], code=double))
    dag.add_function(Function(id="slow", args=["x"], code=slow_on, extra_args=[1, 60]))
    dag.add_function(Function(id="join", args=["double", "slow"], code=add))
    with handoff.stream(dag, item_timeout=6.0) as pipe:
        pipe.push(0)
        pipe.push(1)
        it = pipe.results()
        first, stuck = next(it), next(it)
        pipe.push(2)  # the replica stuck on item 1 has been replaced: these are not held up
        pipe.push(3)
        pipe.close()
        rest = list(it)
    assert first == 0 and rest == [6, 9]
    assert isinstance(stuck, ItemError) and stuck.exc_type == "TimeoutError" and stuck.item == 1
    assert stuck.function_id == "join"


def test_inline_functions_and_argument_hooks_run_inside_stages():
    dag = DAG()
    dag.add_function(Function(id="x", type="input"))
    dag.add_function(Function(id="plus", args=["x"], code=inc, type="inline"))
    dag.add_function(Function(id="d", args=["plus"], code=double))
    dag.add_function(Function(id="tagged", code=identity, args=[
        Argument("d", deserialization_fn=(tag_hook, ["hooked"]), always=True)]))
    outs = list(handoff.stream(dag).map([1, 2]))
    assert outs == [("hooked", 4), ("hooked", 6)]


def test_several_inputs_and_sinks():
    dag = DAG()
    dag.add_function(Function(id="a", type="input"))
    dag.add_function(Function(id="b", type="input"))
    dag.add_function(Function(id="sum", args=["a", "b"], code=add))
    dag.add_function(Function(id="twice", args=["a"], code=double))
    with handoff.stream(dag) as pipe:
        pipe.push({"a": 1, "b": 2})
        with pytest.raises(ValueError, match="missing"):
            pipe.push({"a": 1})
        with pytest.raises(ValueError, match="unknown"):
            pipe.push({"a": 1, "b": 2, "c": 3})
        assert pipe.push({"a": 5, "b": 5}) == 1  # rejected pushes used no number
        pipe.close()
        assert list(pipe.results()) == [{"sum": 3, "twice": 2}, {"sum": 10, "twice": 10}]


# ---- the new guarantees ----------------------------------------------------------------------

def test_push_blocks_at_max_pending_and_times_out(tmp_path):
    gate = str(tmp_path / "open")
    dag = chain(Function(id="w", args=["x"], code=wait_for_file, extra_args=[gate]))
    with handoff.stream(dag, max_pending=2) as pipe:
        assert [pipe.push(0), pipe.push(1)] == [0, 1]
        with pytest.raises(handoff.TimeoutError):
            pipe.push(2, timeout=0.2)
        assert pipe.stats()["in_flight"] == 2
        blocked_seq: list[int] = []
        t = threading.Thread(target=lambda: blocked_seq.append(pipe.push(2)))
        t.start()
        open(gate, "w").close()
        it = pipe.results()
        assert next(it) == 0
        t.join(30)
        assert blocked_seq == [2]  # the push that timed out used no number
        pipe.close()
        assert list(it) == [1, 2]


def test_error_shaped_user_values_stay_values():
    dag = chain(Function(id="e", args=["x"], code=error_shaped), Function(id="d", args=["e"], code=describe))
    assert list(handoff.stream(dag).map([7])) == [("ValueError", "also a value", True)]


def test_killed_replica_worker_is_recreated_and_every_item_comes_once(tmp_path):
    marker = str(tmp_path / "killed")
    dag = chain(Function(id="k", args=["x"], code=kill_self_once, extra_args=[marker]))
    with handoff.stream(dag, max_retries=1) as pipe:
        before = set(replica_pids())
        outs = list(pipe.map(range(10)))
        after = set(replica_pids())
    assert outs == list(range(10))
    assert os.path.exists(marker) and before and not before & after


def test_worker_deaths_beyond_max_retries_fail_that_item_only(tmp_path):
    dag = chain(Function(id="k", args=["x"], code=kill_self_always_on_three))
    outs = list(handoff.stream(dag, max_retries=1).map(range(6)))
    assert outs[:3] == [0, 1, 2] and outs[4:] == [4, 5]
    assert isinstance(outs[3], ItemError) and outs[3].exc_type == "WorkerDied"


def kill_self_always_on_three(x):
    if x == 3:
        os.kill(os.getpid(), 9)
    return x


def test_leaving_the_block_ends_replicas_and_releases_claims(node):
    dag = chain(Function(id="c", args=["x"], code=double, cost={"cpu": 3}, parallelism=1))
    with handoff.stream(dag) as pipe:
        pids = replica_pids()
        assert len(pids) == 1
        assert not handoff.resources_available(node, {"cpu": 2})
        assert list(pipe.map([1])) == [2]
    assert wait_until(lambda: not replica_pids(), 5)
    assert wait_until(lambda: not any(_running(p) for p in pids), 5)
    assert handoff.resources_available(node, {"cpu": 4})


def test_a_collected_pipeline_is_stopped(node):
    import gc

    pipe = handoff.stream(chain(Function(id="c", args=["x"], code=double)))
    assert replica_pids()
    del pipe
    gc.collect()
    assert wait_until(lambda: not replica_pids(), 5)


def test_init_failure_is_a_function_error_and_nothing_is_left():
    def bad_init():
        raise RuntimeError("no model here")

    dag = chain(Function(id="m", args=["x"], code=count_with_state, init=bad_init))
    with pytest.raises(FunctionError, match="no model here"):
        handoff.stream(dag)
    assert wait_until(lambda: not replica_pids(), 5)


# ---- validation --------------------------------------------------------------------------------

def test_pipeline_rules_fail_early():
    with pytest.raises(InvalidFunctionError, match="takes no code"):
        DAG().add_function(Function(id="x", type="input", code=double))
    with pytest.raises(InvalidFunctionError, match="batch_timeout needs a batch_size"):
        DAG().add_function(Function(id="b", code=double, batch_timeout=1.0))
    with pytest.raises(InvalidFunctionError, match="parallelism"):
        DAG().add_function(Function(id="p", code=double, parallelism=0))
    with pytest.raises(ValidationError, match="type='input'"):
        handoff.stream(DAG().add_function(Function(id="a", code=double)))
    with pytest.raises(InvalidFunctionError, match="handoff.stream"):
        handoff.execute(diamond())
    with pytest.raises(ValueError, match="max_pending"):
        handoff.stream(diamond(), max_pending=0)
    dag = diamond().add_function(Function(id="lonely", code=make_token))
    with pytest.raises(InvalidFunctionError, match="takes no value from an input"):
        handoff.stream(dag)


def slow_len(a):
    time.sleep(0.002)
    return int(a.nbytes)


@pytest.mark.slow
def test_memory_stays_flat_while_a_slow_stage_holds_a_fast_producer_back():
    import numpy as np

    item = 256 * 1024
    n = 1500  # 384 MB pushed in all; at most max_pending items (5 MB) in flight
    dag = chain(Function(id="s", args=["x"], code=slow_len), Function(id="i", args=["s"], code=inc))
    with handoff.stream(dag, max_pending=20) as pipe:
        procs = [psutil.Process()] + [psutil.Process(p) for p in replica_pids()]
        base = [p.memory_info().rss for p in procs]
        peak = list(base)
        done = threading.Event()

        def sample():
            while not done.is_set():
                for k, p in enumerate(procs):
                    peak[k] = max(peak[k], p.memory_info().rss)
                done.wait(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            count = sum(1 for out in pipe.map(np.ones(item, np.uint8) for _ in range(n)) if out == item + 1)
        finally:
            done.set()
            sampler.join()
    assert count == n
    growth = [(p - b) >> 20 for p, b in zip(peak, base)]
    assert max(growth) < 64, f"RSS grew by {growth} MB with {n * item >> 20} MB pushed"


def test_a_node_that_runs_code_on_threads_refuses_replicas_at_once():
    handoff.stop()
    try:
        handoff.start(name="threads-test", executor="thread", workers=1)
        with pytest.raises(FunctionError, match="need worker processes"):
            handoff.stream(chain(Function(id="d", args=["x"], code=double)))
    finally:
        handoff.stop()
        handoff.start(name="streams-test", workers=2, resources={"cpu": 4})  # the module's node again


def reuse_buffer():
    import numpy as np

    return np.zeros(1 << 17)  # 1 MB: travels out of band, as the caller's own memory


def fill(buffer, x):
    buffer[0] = x  # the same array every time
    return buffer, buffer


def head(a):
    return float(a[0])


def test_a_replica_reusing_its_output_buffer_still_gives_each_item_its_value():
    dag = chain(Function(id="f", args=["x"], code=fill, init=reuse_buffer), Function(id="h", args=["f"], code=head))
    assert list(handoff.stream(dag).map(range(50))) == [float(v) for v in range(50)]


EXITING_DRIVER = """
import handoff
from handoff import DAG, Function

def double(x):
    return 2 * x

if __name__ == "__main__":
    dag = DAG().add_function(Function(id="x", type="input"))
    dag.add_function(Function(id="d", args=["x"], code=double, parallelism=2))
    pipe = handoff.stream(dag)
    pipe.push(1)
    print(next(pipe.results()), *handoff.node_stats()["pool"]["replica_pids"], flush=True)
    # leaves without stop(): the interpreter's exit must end the replicas
"""


def test_a_driver_that_exits_without_stop_leaves_no_replica(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "driver.py"
    script.write_text(EXITING_DRIVER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    value, *pids = map(int, proc.stdout.split())
    assert value == 2 and len(pids) == 2
    assert wait_until(lambda: not any(_running(p) for p in pids), 5)

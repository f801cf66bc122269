"""Node failures on real processes: detection, re-placement, lineage recompute, cancellation."""

from __future__ import annotations

import os
import random
import threading
import time

import pytest

import handoff
from handoff import DAG, Function
from nodes import hang, ledger_idle, nap, process_gone, seen_status, wait_for

pytestmark = [pytest.mark.timeout(240), pytest.mark.chaos]


def where_am_i(path):
    """Record the PID of the node that runs this (the worker's parent), then return a value."""
    with open(path, "w") as f:
        f.write(str(os.getppid()))
    return 41


def busy(seconds):
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        x += 1
    return "done"


sleeper = nap


def mark_then_nap(path, seconds, value):
    """Create ``path`` (the function has started), then take ``seconds``."""
    open(path, "a").close()
    return nap(seconds, value)


def layered_dag(dag_id, layers, width, seconds=0.05):
    """Each function sums two of the previous layer's results; returns the DAG and its expected results."""
    dag = DAG(dag_id)
    expected = {}
    for layer in range(layers):
        for j in range(width):
            fid = (layer, j)
            args = [] if layer == 0 else [(layer - 1, j), (layer - 1, (j + 1) % width)]
            salt = layer * width + j
            dag.add_function(Function(id=fid, code=_salted, args=args, extra_args=[salt, seconds],
                                      cost={"cpu": 1}))
            expected[fid] = (sum(expected[a] for a in args) + salt) % 1_000_003
    return dag, expected


def _salted(*args):
    *inputs, salt, seconds = args
    return nap(seconds, (sum(inputs) + salt) % 1_000_003)


@pytest.fixture
def trio(local_cluster, handoff_driver):
    """Nodes a, b, c (2 cpus, 2 workers each) and this process as a driver without resources."""
    cluster = local_cluster(3, names=["a", "b", "c"], resources={"cpu": 2}, workers=2)
    handoff_driver(cluster)
    return cluster


def _kill_during_run(trio, victim, after, dag, expected):
    """Run ``dag``, kill -9 ``victim`` once ``after`` of its functions have finished (as the
    progress callback reports them), and check every result."""
    reached, finished, killed = threading.Event(), threading.Event(), []

    def kill() -> None:
        if reached.wait(120) and not finished.is_set():
            trio.kill(victim)
            killed.append(victim)

    def progress(done: int, total: int) -> None:
        if done >= after:
            reached.set()

    killer = threading.Thread(target=kill)
    killer.start()
    t0 = time.monotonic()
    try:
        r = handoff.execute(dag, allocation_strategy="load_balanced", timeout=120,
                            progress=progress)
    finally:
        finished.set()
        reached.set()
        killer.join(30)
    took = time.monotonic() - t0
    assert killed == [victim], "the run ended before the node was killed"
    assert dict(r.results) == expected
    assert ledger_idle()
    return r, took


def test_kill_9_mid_run_completes_with_correct_results(trio):
    dag, expected = layered_dag("chaos-0", layers=4, width=50)
    t0 = time.monotonic()
    r = handoff.execute(dag, allocation_strategy="load_balanced", timeout=120)
    calm = time.monotonic() - t0
    assert dict(r.results) == expected
    dag, expected = layered_dag("chaos-1", layers=4, width=50)
    r, took = _kill_during_run(trio, "b", 60, dag, expected)
    assert "b" not in handoff.discover_nodes()
    late = [fid for fid, node in r.allocations.items() if fid[0] == 3]
    assert all(r.allocations[f] != "b" for f in late)
    print(f"\n200-function run: {calm:.2f} s undisturbed, {took:.2f} s with kill -9 of 1 of 3 nodes "
          f"(recovery cost {took - calm:.2f} s)")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_at_random_times(trio, seed):
    rng = random.Random(seed)
    dag, expected = layered_dag(f"chaos-seed-{seed}", layers=4, width=50)
    victim = rng.choice(["a", "b", "c"])
    _kill_during_run(trio, victim, rng.randrange(10, 150), dag, expected)


def test_lost_intermediate_result_is_recomputed(trio, tmp_path):
    marker = str(tmp_path / "ran-on")
    dag = DAG("lineage")
    dag.add_function(Function(id="p", code=where_am_i, extra_args=[marker], cost={"cpu": 2}))
    dag.add_function(Function(id="gate", code=sleeper, extra_args=[3.0, 1], cost={"cpu": 2}))
    dag.add_function(Function(id="q", code=lambda p, g: p + g, args=["p", "gate"], cost={"cpu": 2}))
    result = {}
    runner = threading.Thread(target=lambda: result.setdefault("r", handoff.execute(dag, timeout=60)))
    runner.start()
    assert wait_for(lambda: os.path.exists(marker) and os.path.getsize(marker) > 0, timeout=20)
    pid = int(open(marker).read())
    victim = next(n for n in trio.nodes.values() if n.pid == pid)
    # p has finished (gate still runs for seconds): its result lives only on the victim
    assert wait_for(lambda: handoff.node_stats(victim.name)["pool"]["completed"] >= 1, timeout=20)
    trio.kill(victim.name)
    runner.join(90)
    r = result["r"]
    assert r.results["q"] == 42
    assert r.allocations["p"] != victim.name
    assert ledger_idle()


def test_cpu_bound_work_never_makes_a_node_look_dead(trio):
    seen = []
    stop = threading.Event()

    def watch():
        while not stop.wait(0.1):
            seen.append(set(handoff.discover_nodes()))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        dag = DAG("busy")
        for i in range(2):
            dag.add_function(Function(id=i, code=busy, extra_args=[5.0], node="b"))
        r = handoff.execute(dag)
    finally:
        stop.set()
        watcher.join()
    assert r.results[0] == "done"
    assert all("b" in s for s in seen)


def test_detection_time_and_a_restarted_node_is_new(trio):
    t0 = time.monotonic()
    trio.kill("c")
    assert wait_for(lambda: "c" not in handoff.discover_nodes(), timeout=10, interval=0.02)
    print(f"\ndetection time after kill -9: {time.monotonic() - t0:.2f} s")
    assert seen_status("c") == "dead"  # detected: it could not say it was leaving
    trio.restart("c")
    assert wait_for(lambda: "c" in handoff.discover_nodes(), timeout=15)
    dag = DAG().add_function(Function(id="x", code=lambda: "again", node="c"))
    assert handoff.execute(dag).results["x"] == "again"


def kill_once_running(cluster, name: str, pid_file: str) -> threading.Thread:
    """Kill node ``name`` as soon as the function ``hang`` wrote ``pid_file`` (it runs there)."""
    def kill() -> None:
        if wait_for(lambda: os.path.exists(pid_file), timeout=30):
            cluster.kill(name)

    thread = threading.Thread(target=kill)
    thread.start()
    return thread


def test_pinned_function_on_a_dead_node_fails_with_node_lost(trio, tmp_path):
    dag = DAG("pinned-loss")
    dag.add_function(Function(id="x", code=hang, extra_args=[str(tmp_path / "x")], node="b"))
    killer = kill_once_running(trio, "b", str(tmp_path / "x"))
    with pytest.raises(handoff.NodeLostError) as info:
        handoff.execute(dag)  # no run timeout: nothing to wait in, fails at once
    killer.join(30)
    assert info.value.node == "b"
    assert ledger_idle()

    dag = DAG("pinned-loss-timeout")
    dag.add_function(Function(id="y", code=hang, extra_args=[str(tmp_path / "y")], node="c"))
    killer = kill_once_running(trio, "c", str(tmp_path / "y"))
    with pytest.raises(handoff.NodeLostError, match="did not come back") as info:
        handoff.execute(dag, timeout=4)  # the error at the deadline names the node
    killer.join(30)
    assert info.value.node == "c" and info.value.function_ids == ["y"]
    assert ledger_idle()


def fail_once_started(path):
    """Raise once ``path`` exists (the function it waits for has started)."""
    if not wait_for(lambda: os.path.exists(path), timeout=30):
        raise RuntimeError(f"{path} never appeared")
    return 1 / 0


def test_fail_fast_and_timeouts_cancel_attempts_on_remote_nodes(trio, tmp_path):
    long_pid = str(tmp_path / "long")
    dag = DAG("remote-cancel")
    dag.add_function(Function(id="long", code=hang, extra_args=[long_pid], node="b", cost={"cpu": 2}))
    dag.add_function(Function(id="bad", code=fail_once_started, extra_args=[long_pid], node="c"))
    with pytest.raises(handoff.FunctionError) as info:
        handoff.execute(dag, max_retries=0)
    assert info.value.function_id == "bad"
    assert process_gone(long_pid)  # b killed the worker running the cancelled attempt
    assert wait_for(lambda: not handoff.node_stats("b")["pool"]["used"], timeout=10)

    slow_pid = str(tmp_path / "slow")
    dag = DAG("remote-timeout")
    dag.add_function(Function(id="slow", code=hang, extra_args=[slow_pid], node="b", timeout=2.0,
                              cost={"cpu": 2}))
    with pytest.raises(handoff.FunctionError) as info:
        handoff.execute(dag, max_retries=0)
    assert info.value.exc_type == "TimeoutError" and info.value.node == "b"
    assert process_gone(slow_pid)
    assert wait_for(lambda: not handoff.node_stats("b")["pool"]["used"], timeout=10)
    quick = DAG().add_function(Function(id="q", code=lambda: 1, node="b", cost={"cpu": 2}))
    assert handoff.execute(quick, timeout=20).results["q"] == 1
    assert ledger_idle()


def test_pinned_work_waits_for_its_node_within_the_run_timeout(trio, tmp_path):
    """With a run timeout, work pinned to a killed node waits for a node of that name to come back."""
    started = str(tmp_path / "started")
    dag = DAG("pinned-return")
    dag.add_function(Function(id="x", code=mark_then_nap, extra_args=[started, 3.0, "back"],
                              node="b"))
    result = {}
    runner = threading.Thread(target=lambda: result.setdefault("r", _try(dag)))
    runner.start()
    assert wait_for(lambda: os.path.exists(started), timeout=30)  # x runs on b: kill b now
    trio.kill("b")
    assert wait_for(lambda: "b" not in handoff.discover_nodes(), timeout=10)
    trio.restart("b")
    runner.join(60)
    r = result["r"]
    assert not isinstance(r, BaseException), r
    assert r.results["x"] == "back" and r.allocations["x"] == "b"
    assert ledger_idle()


def _try(dag):
    try:
        return handoff.execute(dag, timeout=40)
    except BaseException as exc:  # handed to the test thread
        return exc


def test_sigterm_stops_workers_and_tells_peers(trio):
    """A clean shutdown: the node's worker processes end and peers drop it without waiting
    for the failure detector."""
    import psutil

    victim = trio["c"]
    workers = psutil.Process(victim.pid).children()
    assert workers
    victim.process.terminate()  # not trio.stop: that would end leftover workers itself
    assert victim.process.wait(10) == 0
    assert wait_for(lambda: "c" not in handoff.discover_nodes(), timeout=5, interval=0.02)
    assert seen_status("c") == "left"  # told, not detected (that would be "dead")
    assert wait_for(lambda: not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers),
                    timeout=5)

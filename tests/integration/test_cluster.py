"""Distributed execution over real node processes on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import handoff
from handoff import Argument, Collocated, DAG, Function
from handoff.testing import LocalCluster
from nodes import child_env, end_process, free_port, nap, start_node, wait_for

pytestmark = pytest.mark.timeout(180)


sleeper = nap


def hold_until(path):
    """Runs until ``path`` exists (the test creates it when it no longer needs the hold)."""
    if not wait_for(lambda: os.path.exists(path), timeout=120, interval=0.02):
        raise RuntimeError(f"{path} never appeared")
    return "released"


def make_array(n):
    return np.arange(n, dtype=np.float64)


def array_sum(a):
    return float(a.sum())


@pytest.fixture(scope="module")
def cluster():
    """Nodes a (cpu=2), b (cpu=2, gpu=1), c (cpu=4) and this process as driver (no resources)."""
    handoff.stop()
    caps = [{"cpu": 2, "memory": 1000}, {"cpu": 2, "gpu": 1}, {"cpu": 4}]
    with LocalCluster(3, names=["a", "b", "c"], resources=caps) as nodes:
        nodes.connect()
        yield nodes


def test_discovery_and_capabilities(cluster):
    found = handoff.discover_nodes()
    assert found["b"] == {"cpu": 2.0, "gpu": 1.0}
    assert found["a"]["memory"] == 1000.0
    assert handoff.resources_available("c", {"cpu": 4})
    assert not handoff.resources_available("a", {"gpu": 1})


def test_costs_pins_and_collocation_across_nodes(cluster):
    dag = DAG()
    dag.add_function(Function(id="gpu", code=lambda: "g", cost={"gpu": 1}))
    dag.add_function(Function(id="big", code=lambda: "b", cost={"cpu": 4}))
    dag.add_function(Function(id="pinned", code=lambda: "p", node="a"))
    dag.add_function(Function(id="buddy", code=lambda x: x + "!", args=["gpu"], node=Collocated("big")))
    r = handoff.execute(dag)
    assert r.allocations == {"gpu": "b", "big": "c", "pinned": "a", "buddy": "c"}
    assert r.results["buddy"] == "g!"
    assert r.results.location("gpu") == "b"


def test_pin_to_a_node_that_is_not_in_the_cluster(cluster):
    dag = DAG().add_function(Function(id="x", code=lambda: 1, node="nowhere"))
    with pytest.raises(handoff.AllocationError, match="nowhere"):
        handoff.execute(dag)


@pytest.mark.parametrize("strategy, expected", [
    ("first_available", "a"), ("cost_optimized", "a"), ("load_balanced", "c"),
])
def test_strategies_choose_different_nodes(cluster, strategy, expected):
    dag = DAG().add_function(Function(id="x", code=lambda: 1, cost={"cpu": 1}))
    assert handoff.execute(dag, allocation_strategy=strategy).allocations["x"] == expected


def test_hooks_run_with_the_real_node_names(cluster):
    dag = DAG()
    dag.add_function(Function(id="p", code=lambda: 21, node="a"))
    dag.add_function(Function(id="q", code=lambda v: v, node="b", args=[Argument(
        "p",
        serialization_fn=lambda v, s, t: {"v": v * 2, "ser": (s, t)},
        deserialization_fn=(lambda d, s, t, tag: (d["v"], d["ser"], (s, t), tag), ["x"]),
    )]))
    r = handoff.execute(dag)
    assert r.results["q"] == (42, ("a", "b"), ("a", "b"), "x")


def fetched(stats: dict) -> int:
    """Bytes of values the node fetched from peers (an absent counter is zero)."""
    return stats["counters"].get("bytes_fetched", 0)


def test_values_move_peer_to_peer_not_through_the_driver(cluster):
    before = {n: handoff.node_stats(n) for n in ("driver", "b", "c")}
    dag = DAG()
    dag.add_function(Function(id="arr", code=make_array, extra_args=[1_000_000], node="b"))
    dag.add_function(Function(id="total", code=array_sum, args=["arr"], node="c"))
    r = handoff.execute(dag)
    after = {n: handoff.node_stats(n) for n in ("driver", "b", "c")}
    assert r.results["total"] == float(np.arange(1_000_000).sum())
    moved = fetched(after["c"]) - fetched(before["c"])
    served = after["b"]["store"]["bytes_served"] - before["b"]["store"]["bytes_served"]
    assert moved >= 8_000_000 and served >= 8_000_000
    assert fetched(after["driver"]) == fetched(before["driver"])
    # fetched on first access, then cached
    assert r.results["arr"].shape == (1_000_000,)
    assert fetched(handoff.node_stats("driver")) - fetched(after["driver"]) >= 8_000_000


def test_clear_reaches_every_node(cluster):
    dag = DAG("to-clear")
    dag.add_function(Function(id="x", code=lambda: 1, node="b"))
    r = handoff.execute(dag)
    assert handoff.get_value("to-clear", "x", from_node="b") == 1
    handoff.clear("to-clear")
    assert wait_for(lambda: handoff.node_stats("b")["store"]["values"] == 0 or _gone("to-clear", "x", "b"))
    with pytest.raises(handoff.ResultNotFound):
        handoff.get_value("to-clear", "x", from_node="b")
    del r


def _gone(dag_id, key, node) -> bool:
    try:
        handoff.get_value(dag_id, key, from_node=node)
        return False
    except handoff.ResultNotFound:
        return True


def test_concurrent_dags_spill_over_nodes(cluster, tmp_path):
    """4 DAGs at once, each needing 2 cpus, over a (2 cpus) and b (2 cpus) while c is held:
    all four finish on a and b, none waits forever, none over-commits."""
    out = {}

    def run(k):
        dag = DAG(f"spill-{k}")
        dag.add_function(Function(id="w", code=sleeper, extra_args=[0.6, k], cost={"cpu": 2, "memory": 0},
                                  node=None))
        out[k] = handoff.execute(dag, allocation_strategy="first_available")

    # keep c busy so the 2-cpu work has a and b only
    release = str(tmp_path / "release")
    hold = DAG("hold").add_function(Function(id="h", code=hold_until, extra_args=[release],
                                             cost={"cpu": 4}, node="c"))
    holder = threading.Thread(target=handoff.execute, args=(hold,))
    holder.start()
    try:
        assert wait_for(lambda: handoff.node_stats("c")["pool"]["used"].get("cpu") == 4, timeout=30)
        threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        open(release, "w").close()
        holder.join(60)
    # every run finished, on a or b only; which of the two took each depends on when the
    # driver threads submitted, but a node never ran two of these 2-cpu functions at once
    assert sorted(out) == [0, 1, 2, 3]
    by_node: dict = {}
    for r in out.values():
        by_node.setdefault(r.allocations["w"], []).append(r.stats["w"])
    assert set(by_node) <= {"a", "b"}
    for spans in by_node.values():
        spans.sort(key=lambda s: s.started_at)
        for first, second in zip(spans, spans[1:]):
            assert first.finished_at <= second.started_at


def test_two_drivers_never_overcommit_a_shared_node(cluster, tmp_path):
    """A second driver process runs work on node a at the same time; a's own ledger holds the line."""
    script = tmp_path / "driver2.py"
    script.write_text(
        "import sys, time, handoff\n"
        "from handoff import DAG, Function\n"
        "handoff.start(name='driver2', join=sys.argv[1], resources={'cpu': 0}, workers=1)\n"
        "dag = DAG('d2')\n"
        "for i in range(3):\n"
        "    dag.add_function(Function(id=i, code=time.sleep, extra_args=[0.3], cost={'cpu': 2}, node='a'))\n"
        "r = handoff.execute(dag)\n"
        "for s in r.stats.values(): print('SPAN', s.started_at, s.finished_at)\n"
        "handoff.stop()\n"
    )
    proc = subprocess.Popen([sys.executable, str(script), cluster["a"].address], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=child_env())
    try:
        dag = DAG("d1")
        for i in range(3):
            dag.add_function(Function(id=i, code=sleeper, extra_args=[0.3], cost={"cpu": 2}, node="a"))
        r = handoff.execute(dag)
        out, _ = proc.communicate(timeout=60)
    finally:
        end_process(proc)
    assert proc.returncode == 0, out
    spans = [(s.started_at, s.finished_at) for s in r.stats.values()]
    spans += [tuple(map(float, line.split()[1:3])) for line in out.splitlines() if line.startswith("SPAN")]
    assert len(spans) == 6
    spans.sort()
    for (s0, f0), (s1, f1) in zip(spans, spans[1:]):
        assert s1 >= f0 - 0.02, "two 2-cpu functions overlapped on the 2-cpu node"


def test_register_node_propagates(cluster):
    handoff.register_node("c", {"cpu": 4, "fpga": 2})
    try:
        assert handoff.discover_nodes()["c"]["fpga"] == 2
        dag = DAG().add_function(Function(id="f", code=lambda: 1, cost={"fpga": 1}))
        assert handoff.execute(dag).allocations["f"] == "c"
    finally:
        handoff.register_node("c", {"cpu": 4})


def test_a_name_already_taken_is_refused(cluster):
    dup = start_node("b", "cpu=1", join=cluster["a"].address, wait=False,
                     extra=["--join-timeout", "5"])
    try:
        code = dup.proc.wait(30)
    finally:
        dup.stop()
    assert code != 0
    assert "taken" in "".join(dup.log)
    assert set(handoff.discover_nodes()) == {"a", "b", "c", "driver"}


def test_joining_a_dead_address_fails_in_bounded_time():
    proc = subprocess.run(  # bounded: the run's timeout fails the test
        [sys.executable, "-m", "handoff.node", "--name", "lonely", "--join",
         f"tcp://127.0.0.1:{free_port()}", "--join-timeout", "1.5", "--workers", "1"],
        capture_output=True, text=True, timeout=60, env=child_env(),
    )
    assert proc.returncode != 0
    assert "could not join" in proc.stderr


def test_eight_nodes_all_see_each_other():
    first = start_node("n0", "cpu=1", workers=1)
    nodes = [first]
    try:
        for i in range(1, 8):
            nodes.append(start_node(f"n{i}", "cpu=1", workers=1, join=nodes[(i - 1) // 2].address,
                                    wait=False))
        for n in nodes[1:]:
            from nodes import wait_listening
            wait_listening(n)
        handoff.stop()
        handoff.start(name="probe", join=nodes[-1].address, resources={"cpu": 0}, workers=1)
        names = {f"n{i}" for i in range(8)} | {"probe"}
        assert wait_for(lambda: set(handoff.discover_nodes()) == names, timeout=20)
        assert wait_for(lambda: all(set(peer_stats_members(n)) >= names for n in ("n0", "n7")), timeout=20)
    finally:
        handoff.stop()
        for n in nodes:
            n.stop()


def peer_stats_members(name: str) -> list:
    return handoff.node_stats(name).get("members", [])


def test_large_values_between_hosts_travel_in_parts():
    """Without shared memory (as between two hosts) a 100 MB value is streamed in acknowledged parts."""
    handoff.stop()
    with LocalCluster(2, names=["far-a", "far-b"], extra_args=["--no-shared-memory"]) as cluster:
        cluster.connect("far-driver", shared_memory=False)
        dag = DAG()
        dag.add_function(Function(id="big", code=make_array, extra_args=[12_500_000], node="far-a"))
        dag.add_function(Function(id="total", code=array_sum, args=["big"], node="far-b"))
        r = handoff.execute(dag)
        assert r.results["total"] == float(np.arange(12_500_000).sum())
        assert handoff.node_stats("far-a")["counters"].get("parts_sent", 0) >= 3
        assert r.results["big"][-1] == 12_499_999  # the driver's own fetch, in parts too

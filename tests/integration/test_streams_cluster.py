"""Streaming pipelines across real node processes: stage data moves peer to peer, a node killed
with kill -9 mid-stream costs no item, and a driver that dies leaves nothing running."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import handoff
from handoff import DAG, Function
from handoff.testing import wait_until

from nodes import child_env
from test_worker_faults import kill_tree

pytestmark = pytest.mark.timeout(240)

MB = 1 << 20


def make_array(seed):
    return np.full(MB // 8, float(seed))


def total(a):
    return float(a.sum())


def rounded(s):
    return int(round(s / (MB // 8)))


def double_slowly(x):
    time.sleep(0.02)
    return 2 * x


def inc(x):
    return x + 1


def test_stage_data_moves_between_the_nodes_not_through_the_driver(local_cluster, handoff_driver):
    cluster = local_cluster(3, resources={"cpu": 1})
    handoff_driver(cluster)
    dag = DAG()
    dag.add_function(Function(id="seed", type="input"))
    dag.add_function(Function(id="array", args=["seed"], code=make_array, node="node0"))
    dag.add_function(Function(id="sum", args=["array"], code=total, node="node1"))
    dag.add_function(Function(id="out", args=["sum"], code=rounded, node="node2"))
    n = 20
    driver_before = handoff.node_stats()["counters"]
    with handoff.stream(dag) as pipe:
        assert list(pipe.map(range(n))) == list(range(n))
        stats = pipe.stats()
    assert [stats["functions"][f]["replicas"] for f in ("array", "sum", "out")] == [["node0"], ["node1"], ["node2"]]
    driver = handoff.node_stats()["counters"]
    moved = {name: cluster.node_stats(name)["counters"] for name in cluster.names}
    assert moved["node0"].get("stream_bytes_out", 0) >= n * MB  # the arrays left node0 ...
    assert moved["node1"].get("stream_bytes_in", 0) >= n * MB  # ... straight for node1
    through_driver = sum(driver.get(k, 0) - driver_before.get(k, 0) for k in ("stream_bytes_in", "stream_bytes_out"))
    assert through_driver < n * MB // 100, through_driver  # seeds in, small ints out
    assert moved["node2"].get("stream_bytes_in", 0) < n * MB // 100


@pytest.mark.slow
def test_kill_9_of_a_node_holding_replicas_loses_and_repeats_no_item(local_cluster, handoff_driver):
    cluster = local_cluster(3, resources={"cpu": 1})
    handoff_driver(cluster)
    dag = DAG()
    dag.add_function(Function(id="x", type="input"))
    dag.add_function(Function(id="double", args=["x"], code=double_slowly, cost={"cpu": 1}, parallelism=2))
    dag.add_function(Function(id="inc", args=["double"], code=inc))
    n = 300
    with handoff.stream(dag, max_pending=50) as pipe:
        hosts = pipe.stats()["functions"]["double"]["replicas"]
        assert len(set(hosts)) == 2  # one cpu per node: the two replicas are on two nodes
        victim = hosts[0]
        out: list = []
        reader = threading.Thread(target=lambda: out.extend(pipe.results(timeout=120)))
        reader.start()
        for v in range(n):
            pipe.push(v)
            if v == 100:  # mid-stream, with items in flight on the victim
                assert wait_until(lambda: len(out) >= 20, 60)
                cluster.kill(victim)
        pipe.close()
        reader.join(180)
        after = pipe.stats()["functions"]["double"]["replicas"]
    assert out == [2 * v + 1 for v in range(n)]  # every item once, in order
    assert victim not in after and len(after) == 2


DRIVER = textwrap.dedent(
    """
    import sys, time
    import handoff
    from handoff import DAG, Function

    def double(x):
        return 2 * x

    if __name__ == "__main__":
        join, target = sys.argv[1:3]
        handoff.start(name="doomed-driver", join=join, workers=1)
        dag = DAG()
        dag.add_function(Function(id="x", type="input"))
        dag.add_function(Function(id="d", args=["x"], code=double, node=target, parallelism=2))
        pipe = handoff.stream(dag)
        print(pipe.push(1), flush=True)
        print(next(pipe.results()), flush=True)
        time.sleep(600)
    """
)


def test_a_driver_killed_with_kill_9_leaves_no_replica_running(local_cluster, handoff_driver, tmp_path):
    cluster = local_cluster(1, names=["host"], resources={"cpu": 4})
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    driver = subprocess.Popen([sys.executable, str(script), cluster["host"].address, "host"],
                              env=child_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)
    try:
        assert driver.stdout is not None
        assert [driver.stdout.readline().strip() for _ in range(2)] == ["0", "2"]
        handoff_driver(cluster, name="observer")
        assert len(cluster.node_stats("host")["pool"]["replica_pids"]) == 2
        kill_tree(driver)
        assert wait_until(lambda: not cluster.node_stats("host")["pool"]["replica_pids"], 30)
        assert cluster.node_stats("host")["streams"]["hosted"] == {}
    finally:
        if driver.poll() is None:
            kill_tree(driver)

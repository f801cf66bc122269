"""handoff.node_stats: a node's state as plain data, locally and from a peer over the wire."""

from __future__ import annotations

import os
import threading

import psutil
import pytest

import handoff
from handoff import DAG, Function
from handoff.testing import wait_for_departure, wait_until

pytestmark = pytest.mark.timeout(240)

WAIT = 60.0  # bounded waits: a loaded 2-core machine is slow
KEYS = {"name", "address", "members", "membership", "ledger", "runs", "validating_state", "pool",
        "store", "counters", "dropped_messages", "blocked_peers", "rejected_connections", "curve"}


def until(predicate, timeout: float = WAIT) -> bool:
    return wait_until(predicate, timeout)


def wait_for_file(path: str, started: str) -> int:
    """Workload: says it started, then runs until the test creates ``path`` (bounded)."""
    open(started, "w").close()
    wait_until(lambda: os.path.exists(path), 120, interval=0.02)
    return os.getpid()


def test_local_stats_have_every_documented_key_and_the_ledger_lists_the_members(local_cluster, handoff_driver):
    cluster = local_cluster(2, resources=[{"cpu": 1}, {"cpu": 2, "gpu": 1}])
    handoff_driver(cluster)
    stats = handoff.node_stats()
    assert KEYS <= set(stats)
    assert stats["name"] == "driver" and stats["members"] == ["driver", "node0", "node1"]
    assert stats["ledger"]["node1"] == {"capacity": {"cpu": 2.0, "gpu": 1.0}, "claimed": {},
                                        "free": {"cpu": 2.0, "gpu": 1.0}}
    assert stats["ledger"]["node0"]["capacity"] == {"cpu": 1.0}
    assert {m["status"] for m in stats["membership"].values()} == {"alive"}
    assert stats["membership"]["node0"]["address"] == cluster["node0"].address
    assert stats["runs"] == 0 and isinstance(stats["validating_state"], bool)
    me = psutil.Process()
    assert set(stats["pool"]["pids"]) <= {p.pid for p in me.children(recursive=True)}
    assert len(stats["pool"]["pids"]) == stats["pool"]["workers"] == 1
    by_name = handoff.node_stats("driver")  # its own name: the local node, not the wire
    assert by_name["name"] == "driver" and set(by_name) == set(stats)


def test_a_peer_reports_its_running_job_and_claims_and_the_driver_its_ledger(
        local_cluster, handoff_driver, tmp_path):
    cluster = local_cluster(2, resources={"cpu": 2})
    handoff_driver(cluster)
    release, started = str(tmp_path / "release"), str(tmp_path / "started")
    dag = DAG()
    dag.add_function(Function(id="hold", code=wait_for_file, extra_args=[release, started],
                              cost={"cpu": 1}, node="node1"))
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(r=handoff.execute(dag, timeout=WAIT)))
    runner.start()
    try:
        assert until(lambda: os.path.exists(started))
        peer = cluster.node_stats("node1")
        assert peer["name"] == "node1" and peer["address"] == cluster["node1"].address
        assert peer["pool"]["running"] == 1 and peer["pool"]["used"] == {"cpu": 1.0}
        assert peer["pool"]["pids"] and all(
            p in {c.pid for c in psutil.Process(cluster["node1"].pid).children(recursive=True)}
            for p in peer["pool"]["pids"])
        mine = handoff.node_stats()
        assert mine["runs"] == 1
        assert mine["ledger"]["node1"]["claimed"] == {"cpu": 1.0}
        assert mine["ledger"]["node1"]["free"] == {"cpu": 1.0}
        assert mine["ledger"]["node0"]["claimed"] == {}
    finally:
        open(release, "w").close()
        runner.join(WAIT)
    assert outcome["r"].results["hold"] in peer["pool"]["pids"]
    mine = handoff.node_stats()
    assert mine["runs"] == 0 and all(not row["claimed"] for row in mine["ledger"].values())
    assert until(lambda: not cluster.node_stats("node1")["pool"]["used"])
    assert cluster.node_stats("node1")["pool"]["completed"] == 1


def test_membership_shows_heartbeats_advancing_and_a_killed_node_dead(local_cluster, handoff_driver):
    cluster = local_cluster(2, extra_args=["--dead-after", "3"])
    handoff_driver(cluster, dead_after=3.0)
    first = handoff.node_stats()["membership"]["node1"]["heartbeat"]
    assert until(lambda: handoff.node_stats()["membership"]["node1"]["heartbeat"] >= first + 3)
    cluster.kill("node1")
    wait_for_departure(["node1"], WAIT)
    row = handoff.node_stats()["membership"]["node1"]
    assert row["status"] == "dead"
    assert "node1" not in handoff.node_stats()["members"]
    assert "node1" not in cluster.node_stats("node0")["members"]


def test_asking_a_stranger_or_with_no_node_fails_with_a_message(local_cluster, handoff_driver):
    cluster = local_cluster(1)
    handoff_driver(cluster)
    with pytest.raises(handoff.HandoffError, match="'nowhere' is not in the cluster"):
        handoff.node_stats("nowhere")
    with pytest.raises(ValueError, match="timeout"):
        handoff.node_stats("node0", timeout=0)
    handoff.stop()
    with pytest.raises(handoff.HandoffError, match="none is running"):
        handoff.node_stats("node0")

"""python -m handoff status on a real cluster: the --json document, the table, waiting reasons,
recent failures, dead and departed nodes, a wrong key; node logs as JSON lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request

import pytest
from nodes import child_env, start_node
from prometheus_client.parser import text_string_to_metric_families

import handoff
from handoff import DAG, Function
from handoff.status import query_status
from handoff.testing import wait_until

pytestmark = pytest.mark.timeout(300)

WAIT = 60.0
NODE_KEYS = {"state", "address", "capacity", "used", "running", "queued"}
RUN_KEYS = {"dag_id", "done", "total", "waiting"}


def wait_for_file(path: str, started: str) -> int:
    """Workload: says it started, then runs until the test creates ``path`` (bounded)."""
    open(started, "w").close()
    wait_until(lambda: os.path.exists(path), 120, interval=0.02)
    return 1


def boom() -> None:
    raise ValueError("no good")


def status_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "handoff", "status", *args], capture_output=True,
                          text=True, env=child_env(), timeout=WAIT)


@pytest.mark.slow
def test_status_of_a_three_node_cluster(local_cluster, handoff_driver, tmp_path):
    cluster = local_cluster(3, resources=[{"cpu": 1}, {"cpu": 1}, {"cpu": 1, "gpu": 1}])
    handoff_driver(cluster, dashboard="127.0.0.1:0")
    release, started = str(tmp_path / "release"), str(tmp_path / "started")
    dag = DAG("held")
    dag.add_function(Function(id="hold", code=wait_for_file, extra_args=[release, started],
                              cost={"gpu": 1}))
    dag.add_function(Function(id="next", code=lambda: 2, cost={"gpu": 1}))
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(r=handoff.execute(dag, timeout=WAIT)))
    runner.start()
    try:
        assert wait_until(lambda: os.path.exists(started), WAIT)
        out = status_cli("--json", "--join", cluster["node0"].address)
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        assert set(doc["nodes"]) == {"node0", "node1", "node2", "driver"}
        for name, node in doc["nodes"].items():
            assert NODE_KEYS <= set(node), name
            assert node["state"] == "alive" and node["answered"], name
            assert isinstance(node["running"], int) and isinstance(node["queued"], int)
        assert doc["nodes"]["node2"]["address"] == cluster["node2"].address
        assert doc["nodes"]["node2"]["capacity"] == {"cpu": 1.0, "gpu": 1.0}
        assert doc["nodes"]["node2"]["used"]["gpu"] == 1.0
        assert doc["nodes"]["node2"]["running"] == 1
        assert doc["nodes"]["node0"]["running"] == 0 and doc["nodes"]["node0"]["used"] == {"cpu": 0.0}
        [run] = doc["runs"]
        assert RUN_KEYS <= set(run)
        assert run["dag_id"] == "held" and run["driver"] == "driver"
        assert (run["done"], run["total"], run["running"]) == (0, 2, 1)
        why = run["waiting"]["next"]  # waits for node2's one gpu; the others have none
        assert "node 'node2'" in why and "gpu=0 of the 1 it needs" in why, why
        assert doc["recent_failures"] == []
        table = status_cli("--join", cluster["node1"].address)
        assert table.returncode == 0, table.stderr
        assert table.stdout.startswith("cluster seen from node1: 4 nodes (4 alive)")
        for name in ("node0", "node1", "node2", "driver"):
            assert any(line.split()[:2] == [name, "alive"] for line in table.stdout.splitlines())
        assert "held (driver driver): 0/2 done, 1 running, 1 waiting" in table.stdout
        assert f"next waits: {why}" in table.stdout
        with urllib.request.urlopen(handoff.dashboard_url() + "metrics", timeout=WAIT) as response:
            metrics = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for f in text_string_to_metric_families(response.read().decode())
                       for s in f.samples}
        assert metrics[("handoff_runs_in_flight", ())] == 1
        run_labels = (("dag_id", "held"), ("driver", "driver"))
        for state, value in (("done", 0), ("total", 2), ("running", 1), ("waiting", 1)):
            assert metrics[("handoff_run_functions", (*run_labels, ("state", state)))] == value
        assert metrics[("handoff_node_used", (("node", "node2"), ("resource", "gpu")))] == 1
        # without --join: this user's newest node on this machine (the driver, started last)
        here = status_cli("--json")
        assert here.returncode == 0, here.stderr
        assert json.loads(here.stdout)["node"] == "driver"
    finally:
        open(release, "w").close()
        runner.join(WAIT)
    assert outcome["r"].results["next"] == 2

    failing = DAG("failing").add_function(Function(id="boom", code=boom, node="node1"))
    with pytest.raises(handoff.FunctionError):
        handoff.execute(failing, max_retries=0, timeout=WAIT)
    doc = handoff.cluster_status()
    assert doc["runs"] == []
    [failure] = doc["recent_failures"]
    assert (failure["node"], failure["dag_id"], failure["function_id"]) == ("node1", "failing", "boom")
    assert failure["error"] == "ValueError: no good"

    cluster.kill("node0")
    cluster.stop("node1")
    assert wait_until(lambda: {n: (s["state"], s.get("left", False))
                               for n, s in handoff.cluster_status()["nodes"].items()}
                      == {"node0": ("dead", False), "node1": ("dead", True),
                          "node2": ("alive", False), "driver": ("alive", False)}, WAIT)
    doc = handoff.cluster_status()
    assert doc["nodes"]["node0"]["running"] is None and not doc["nodes"]["node0"]["answered"]
    leave = [line for line in cluster["node2"].log().splitlines() if "node node1 is left" in line]
    assert leave and all(" INFO node2 handoff.peers: " in line for line in leave), leave

    other_key = tmp_path / "other.key"
    subprocess.run([sys.executable, "-m", "handoff.keygen", str(other_key)], check=True,
                   env=child_env(), capture_output=True, timeout=WAIT)
    refused = status_cli("--join", cluster["node2"].address, "--key-file", str(other_key))
    assert refused.returncode == 1
    assert "rejected this client's key" in refused.stderr and str(other_key) in refused.stderr


def test_node_logs_as_json_lines_name_the_node_and_a_clean_leave_is_info():
    json_args = ["--log-format", "json", "--log-level", "INFO"]
    solo = start_node("solo", extra=json_args)
    peer = None
    try:
        peer = start_node("peer", join=solo.address, extra=json_args)

        def records() -> list[dict]:
            return [json.loads(line) for line in list(solo.log) if line.startswith("{")]

        assert wait_until(lambda: any("node peer joined" in r["message"] for r in records()), WAIT)
        peer.stop()
        assert wait_until(lambda: any("node peer is left" in r["message"] for r in records()), WAIT)
        for record in records():
            assert set(record) >= {"time", "level", "node", "logger", "message"}
            assert record["node"] == "solo"
        [left] = [r for r in records() if "node peer is left" in r["message"]]
        assert left["level"] == "INFO" and left["logger"] == "handoff.peers"
    finally:
        if peer is not None:
            peer.stop()
        solo.stop()


@pytest.mark.slow
def test_a_silent_peer_is_shown_as_such_and_concurrent_queries_all_get_answers(local_cluster):
    # a long dead_after: the frozen node stays a member that does not answer
    cluster = local_cluster(2, extra_args=["--suspect-after", "20", "--dead-after", "40"])
    cluster.pause("node1")
    try:
        answers: list = []
        errors: list = []

        def ask() -> None:
            try:
                answers.append(query_status(cluster["node0"].address, timeout=WAIT))
            except Exception as exc:  # reported below
                errors.append(exc)

        askers = [threading.Thread(target=ask) for _ in range(6)]
        for t in askers:
            t.start()
        for t in askers:
            t.join(WAIT)
        assert not errors and len(answers) == 6
        for doc in answers:
            silent = doc["nodes"]["node1"]
            assert silent["state"] == "alive" and not silent["answered"]
            assert silent["running"] is None and silent["capacity"] == {"cpu": 1.0}
            assert doc["nodes"]["node0"]["answered"]
        table = status_cli("--join", cluster["node0"].address)
        assert table.returncode == 0, table.stderr
        assert any(line.split()[:4] == ["node1", "alive", "(no", "answer)"]
                   for line in table.stdout.splitlines()), table.stdout
    finally:
        cluster.resume("node1")
    assert wait_until(lambda: query_status(cluster["node0"].address)["nodes"]["node1"]["answered"], WAIT)

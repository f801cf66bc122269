"""The live dashboard over HTTP: /api/state, /api/view, /metrics, the page; who may see it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from nodes import child_env
from prometheus_client.parser import text_string_to_metric_families

import handoff
from handoff import DAG, Function
from handoff.testing import wait_until

pytestmark = pytest.mark.timeout(240)

WAIT = 60.0


def get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def samples(text: str) -> dict[tuple, float]:
    """{(metric name, sorted label items): value} of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_state_view_metrics_and_page_of_a_loopback_dashboard(local_cluster, handoff_driver):
    cluster = local_cluster(2, resources=[{"cpu": 1}, {"cpu": 1, "gpu": 1}],
                            extra_args=["--dashboard", "127.0.0.1:0"])
    handoff_driver(cluster, dashboard="127.0.0.1:0")
    url = handoff.dashboard_url()
    assert url is not None and url.startswith("http://127.0.0.1:")
    assert handoff.node_stats()["dashboard"] == url
    dag = DAG("shown")
    for i in range(4):
        dag.add_function(Function(id=f"f{i}", code=lambda i=i: i, cost={"cpu": 1}))
    assert handoff.execute(dag, timeout=WAIT).results["f3"] == 3
    failing = DAG("failing").add_function(Function(id="bad", code=lambda: 1 / 0, node="node0"))
    with pytest.raises(handoff.FunctionError):
        handoff.execute(failing, max_retries=0, timeout=WAIT)

    status, headers, body = get(url + "api/state")
    assert status == 200 and headers["Content-Type"] == "application/json"
    state = json.loads(body)
    assert set(state["nodes"]) == {"driver", "node0", "node1"}
    assert {n["state"] for n in state["nodes"].values()} == {"alive"}
    assert [f["function_id"] for f in state["recent_failures"]] == ["bad"]
    node_urls = {name: node["dashboard"] for name, node in state["nodes"].items()}
    assert node_urls["driver"] == url and all(u.startswith("http://127.0.0.1:") for u in node_urls.values())
    # any node's dashboard shows the whole cluster
    status, _, body = get(node_urls["node1"] + "api/state")
    assert status == 200 and set(json.loads(body)["nodes"]) == {"driver", "node0", "node1"}

    status, _, body = get(url + "api/view")
    view = json.loads(body)
    assert view["version"] == 1 and view["summary"]["dag_id"] == "failing"  # the last run begun
    assert sorted(m["name"] for m in view["cluster"]) == ["driver", "node0", "node1"]
    assert view["runs"] == []

    status, headers, body = get(url + "metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    got = samples(body.decode())
    assert got[("handoff_nodes", (("state", "alive"),))] == 3
    assert got[("handoff_nodes", (("state", "dead"),))] == 0
    assert got[("handoff_node_capacity", (("node", "node1"), ("resource", "gpu")))] == 1
    assert got[("handoff_runs_in_flight", ())] == 0
    node0 = samples(get(node_urls["node0"] + "metrics")[2].decode())
    assert node0[("handoff_attempts_total", (("node", "node0"), ("outcome", "failed")))] == 1

    status, headers, body = get(url)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'"live": "api/view"' in body

    assert get(url + "nothing")[0] == 404
    # a loopback dashboard answers only requests that name a loopback host (DNS rebinding)
    assert get(url + "api/state", {"Host": "attacker.example:80"})[0] == 401


def test_a_dashboard_off_loopback_needs_the_cluster_keys_token():
    token = subprocess.run([sys.executable, "-m", "handoff.keygen", "--user", "--dashboard-token"],
                           capture_output=True, text=True, check=True, env=child_env(),
                           timeout=WAIT).stdout.strip()
    handoff.stop()
    handoff.start(name="solo", workers=1, resources={"cpu": 1}, dashboard="0.0.0.0:0")
    try:
        url = handoff.dashboard_url()
        assert url is not None and url.startswith("http://0.0.0.0:")
        local = url.replace("0.0.0.0", "127.0.0.1")
        status, _, body = get(local + "api/state")
        assert status == 401 and b"--dashboard-token" in body
        assert get(local + "api/state?token=" + "0" * 32)[0] == 401
        assert get(local + "api/state", {"Authorization": "Bearer " + token})[0] == 200
        status, headers, _ = get(local + "?token=" + token)
        assert status == 200
        cookie = headers["Set-Cookie"].split(";")[0]
        assert cookie == "handoff_token=" + token
        status, _, body = get(local + "api/view", {"Cookie": cookie})  # what the page then sends
        assert status == 200 and json.loads(body)["cluster"][0]["name"] == "solo"
    finally:
        handoff.stop()


def test_a_dashboard_port_in_use_fails_the_start_and_says_so():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        handoff.stop()
        with pytest.raises(handoff.HandoffError, match=f"cannot serve the dashboard on 127.0.0.1:{port}"):
            handoff.start(name="blocked", workers=1, dashboard=f"127.0.0.1:{port}")
    with pytest.raises(ValueError, match="dashboard must look like HOST:PORT"):
        handoff.start(dashboard="8787")

"""Driver loss: the driver's host goes away mid-run (its link down: no goodbye, no reset);
the nodes release every claim of its runs, and stop its functions, within the dead-after time."""

from __future__ import annotations

import os
import time

import psutil
import pytest
from hosts_harness import WAIT, measured, start_driver

import handoff
from handoff import DAG, Function
from handoff.testing import wait_for_departure, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

HERE = os.path.dirname(os.path.abspath(__file__))


def where() -> str:
    import socket

    return socket.gethostname()


def pool(node: str) -> dict:
    return handoff.node_stats(node)["pool"]


def test_nodes_release_the_claims_of_a_driver_whose_host_goes_away(make_hosts, key, tmp_path):
    hosts = make_hosts(3)
    key_file = key(hosts)
    one = ["--workers", "1", "--resources", "cpu=1"]
    h1 = hosts.start_node("h1", key_file=key_file, args=one)
    hosts.start_node("h2", key_file=key_file, join=h1.address, args=one)
    start_driver(hosts, h1.address, key_file, ["h1", "h2"])  # here: an observer
    release, pids = str(tmp_path / "never"), str(tmp_path / "pids")
    os.mkdir(pids)
    far = hosts.python("h3", os.path.join(HERE, "far_driver.py"), hosts["h3"].url(), h1.address,
                       key_file, release, pids, label="far driver")
    far.wait_for("running", WAIT)
    assert wait_until(lambda: all(pool(n)["used"] == {"cpu": 1.0} for n in ("h1", "h2")), WAIT)
    assert wait_until(lambda: len(os.listdir(pids)) == 2, WAIT)
    workers = [int(p) for p in os.listdir(pids)]

    hosts["h3"].link_down()
    gone = time.monotonic()
    assert wait_until(lambda: all(not pool(n)["used"] for n in ("h1", "h2")), WAIT)
    released = time.monotonic() - gone
    wait_for_departure(["far-driver"], WAIT)
    assert all(pool(n)["running"] == 0 for n in ("h1", "h2"))
    assert wait_until(lambda: not any(psutil.pid_exists(p) for p in workers), WAIT)  # stopped
    assert far.running  # the driver itself was never killed: its host is only unreachable

    # the freed cpus run other work
    dag = DAG()
    dag.add_function(Function(id="a", code=where, cost={"cpu": 1}, node="h1"))
    dag.add_function(Function(id="b", code=where, cost={"cpu": 1}, node="h2"))
    result = handoff.execute(dag, timeout=WAIT)
    assert (result.results["a"], result.results["b"]) == ("h1", "h2")
    measured(f"driver loss (link of the driver's host down, dead-after 2 s): both nodes released "
             f"its claims and stopped its functions {released:.2f} s later")

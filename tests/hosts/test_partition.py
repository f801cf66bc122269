"""A partition: one host's link goes down, nothing is killed. The others declare it dead and
re-place its work; the results are correct. When the link comes back the host rejoins as a
new incarnation, and the function it kept running while cut off, which finished after its
work was re-placed, overwrites nothing."""

from __future__ import annotations

import os
import threading
import time

import pytest
from hosts_harness import WAIT, measured, start_driver

import handoff
from handoff import DAG, Argument, Function
from handoff.testing import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ONE = ["--workers", "1", "--resources", "cpu=1"]
# The cut-off host's detector is slower than the others': it does not declare the driver
# dead and cancel the work during the cut, so that work really finishes after the rest of
# the cluster re-placed it (the worst case for a late result).
SLOW_DETECTOR = ["--suspect-after", "60", "--dead-after", "120"]


def hold(i: int, release: str, marks: str) -> tuple[int, str]:
    """Workload: marks its start, runs until the test creates ``release``, marks its end."""
    import socket

    host = socket.gethostname()
    open(os.path.join(marks, f"start-{i}-{host}"), "w").close()
    wait_until(lambda: os.path.exists(release), 240, interval=0.02)
    open(os.path.join(marks, f"end-{i}-{host}"), "w").close()
    return i, host


def gate(a: tuple, b: tuple, c: tuple, release: str) -> list:
    """Keeps the run open until the test has seen the cut-off host rejoin."""
    wait_until(lambda: os.path.exists(release), 240, interval=0.02)
    return [a, b, c]


def status(node: str, of: str) -> tuple[str, int]:
    row = handoff.node_stats(node)["membership"][of] if node != "driver" else \
        handoff.node_stats()["membership"][of]
    return row["status"], row["incarnation"]


def three_holds(release: str, marks: str) -> DAG:
    """``hold0`` to ``hold2``, one cpu each: one on each one-cpu host."""
    dag = DAG()
    for i in range(3):
        dag.add_function(Function(id=f"hold{i}", code=hold, extra_args=[i, release, marks],
                                  cost={"cpu": 1}))
    return dag


def execute_in_background(dag: DAG) -> tuple[threading.Thread, dict]:
    """Runs ``dag`` in a started thread; the dict gets its ``result`` or its ``error``."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = handoff.execute(dag, timeout=240)
        except BaseException as exc:
            outcome["error"] = exc

    runner = threading.Thread(target=run)
    runner.start()
    return runner, outcome


def test_a_cut_off_host_is_declared_dead_its_work_replaced_and_it_rejoins_as_a_new_instance(
        make_hosts, key, tmp_path):
    hosts = make_hosts(3)
    key_file = key(hosts)
    h1 = hosts.start_node("h1", key_file=key_file, args=ONE)
    hosts.start_node("h2", key_file=key_file, join=h1.address, args=ONE)
    hosts.start_node("h3", key_file=key_file, join=h1.address, args=ONE + SLOW_DETECTOR)
    start_driver(hosts, h1.address, key_file, ["h1", "h2", "h3"])
    marks, release, release_gate = str(tmp_path / "marks"), str(tmp_path / "go"), str(tmp_path / "gate")
    os.mkdir(marks)
    dag = three_holds(release, marks)
    dag.add_function(Function(id="gate", code=gate, args=[Argument(f"hold{i}") for i in range(3)],
                              extra_args=[release_gate], cost={"cpu": 1}))
    runner, outcome = execute_in_background(dag)
    try:
        assert wait_until(lambda: len(os.listdir(marks)) == 3, WAIT), os.listdir(marks)
        (cut,) = [int(m.split("-")[1]) for m in os.listdir(marks) if m.endswith("-h3")]
        _, incarnation = status("driver", "h3")
        completed_before = handoff.node_stats("h3")["pool"]["completed"]

        hosts["h3"].link_down()
        down = time.monotonic()
        assert wait_until(lambda: "h3" not in handoff.discover_nodes(), WAIT)
        driver_verdict = time.monotonic() - down
        assert wait_until(lambda: all(status(n, "h3")[0] == "dead" for n in ("h1", "h2")), WAIT)
        nodes_verdict = time.monotonic() - down
        assert "h3" not in handoff.node_stats("h1")["members"]

        open(release, "w").close()  # every hold may finish now, the re-placed one too
        replaced = [f"end-{cut}-h1", f"end-{cut}-h2"]
        assert wait_until(lambda: any(m in os.listdir(marks) for m in replaced), WAIT), os.listdir(marks)
        replaced_at = time.monotonic() - down
        # the cut-off host ran its attempt to the end: it finished after the re-placement
        assert wait_until(lambda: f"end-{cut}-h3" in os.listdir(marks), WAIT), os.listdir(marks)

        hosts["h3"].link_up()
        up = time.monotonic()
        assert wait_until(lambda: status("driver", "h3")[0] == "alive"
                          and status("driver", "h3")[1] > incarnation, WAIT)
        rejoined = time.monotonic() - up
        assert wait_until(lambda: all(status(n, "h3")[0] == "alive" and status(n, "h3")[1] > incarnation
                                      for n in ("h1", "h2")), WAIT)
        everyone = time.monotonic() - up
        # h3 did run the cut-off attempt to its end
        assert wait_until(lambda: handoff.node_stats("h3")["pool"]["completed"] > completed_before, WAIT)
        assert not outcome, outcome  # the gate holds the run open until now
    finally:
        for path in (release, release_gate):
            open(path, "w").close()
        runner.join(WAIT * 2)
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    hosts_of = {i: result.results[f"hold{i}"][1] for i in range(3)}
    assert hosts_of[cut] in ("h1", "h2")  # the re-placed attempt's value, not the late one
    assert result.stats[f"hold{cut}"].node == hosts_of[cut]
    assert result.results["gate"] == [(i, hosts_of[i]) for i in range(3)]
    # one attempt counted for each: the lost one is not a failure, the late one not a result
    assert [result.stats[f"hold{i}"].attempts for i in range(3)] == [1, 1, 1]
    measured(f"partition (link of h3 down, default detector 1 s / 2 s): driver declared it dead "
             f"after {driver_verdict:.2f} s, both other nodes after {nodes_verdict:.2f} s; its "
             f"work re-placed and finished {replaced_at:.2f} s after the cut")
    measured(f"partition healed: h3 alive again with a new incarnation at the driver after "
             f"{rejoined:.2f} s, at every node after {everyone:.2f} s")


def test_a_partition_healed_with_equal_detectors_rejoins_everyone_and_the_results_are_right(
        make_hosts, key, tmp_path):
    """With the default detector everywhere, the cut-off host also declares everyone else
    dead; once the link is back every side must learn it was declared dead and come back as
    a new instance, or the two sides would ignore each other for good."""
    hosts = make_hosts(3)
    key_file = key(hosts)
    h1 = hosts.start_node("h1", key_file=key_file, args=ONE)
    for name in ("h2", "h3"):
        hosts.start_node(name, key_file=key_file, join=h1.address, args=ONE)
    start_driver(hosts, h1.address, key_file, ["h1", "h2", "h3"])
    marks, release = str(tmp_path / "marks"), str(tmp_path / "go")
    os.mkdir(marks)
    dag = three_holds(release, marks)
    runner, outcome = execute_in_background(dag)
    h3 = hosts["h3"].processes[0]
    names = ("driver", "h1", "h2", "h3")
    try:
        assert wait_until(lambda: len(os.listdir(marks)) == 3, WAIT), os.listdir(marks)
        before = {n: status("driver", n)[1] for n in names}
        hosts["h3"].link_down()
        assert wait_until(lambda: "h3" not in handoff.discover_nodes(), WAIT)
        assert wait_until(lambda: all(f"h3: node {n} is dead" in h3.output() for n in names[:3]), WAIT)
        hosts["h3"].link_up()
        up = time.monotonic()
        assert wait_until(lambda: set(handoff.discover_nodes()) == set(names), WAIT)
        for viewer in names:  # everyone sees everyone alive again, h3 as a new instance
            assert wait_until(lambda: all(status(viewer, n)[0] == "alive" for n in names), WAIT)
            assert status(viewer, "h3")[1] > before["h3"]
        healed = time.monotonic() - up
    finally:
        open(release, "w").close()
        runner.join(WAIT * 2)
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert [result.results[f"hold{i}"][0] for i in range(3)] == [0, 1, 2]
    assert [result.stats[f"hold{i}"].attempts for i in range(3)] == [1, 1, 1]
    renewed = sorted(n for n in names if status("driver", n)[1] > before[n])
    runs = len([m for m in os.listdir(marks) if m.startswith("start-")])
    measured(f"partition with equal detectors healed: every node alive again {healed:.2f} s after "
             f"the link came back; new incarnations: {', '.join(renewed)}; 3 functions started "
             f"{runs} times for 3 results")

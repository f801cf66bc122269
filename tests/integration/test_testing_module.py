"""handoff.testing: LocalCluster and its pytest fixtures start real node processes and leave none."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import psutil
import pytest

import handoff
from handoff import DAG, Function
from handoff.testing import LocalCluster, wait_for_departure, wait_for_members, wait_until

pytestmark = pytest.mark.timeout(240)

WAIT = 60.0  # bounded waits: generous, a loaded 2-core machine is slow to start processes


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def all_gone(pids, timeout: float = WAIT) -> bool:
    return wait_until(lambda: not any(running(p) for p in pids), timeout)


def where(tag):
    """Workload: which process ran it (and on which node's worker, via the tag)."""
    return (tag, os.getpid())


def chain(previous, tag):
    return [*previous, where(tag)] if isinstance(previous, list) else [previous, where(tag)]


def test_three_nodes_with_their_own_resources_run_a_dag_pinned_across_them(local_cluster, handoff_driver):
    caps = [{"cpu": 1, "memory": 500}, {"cpu": 2}, {"cpu": 1, "gpu": 1}]
    cluster = local_cluster(3, resources=caps)
    handoff_driver(cluster)
    found = wait_for_members(cluster.names, WAIT)
    assert {name: found[name] for name in cluster.names} == {
        "node0": {"cpu": 1.0, "memory": 500.0}, "node1": {"cpu": 2.0}, "node2": {"cpu": 1.0, "gpu": 1.0}}
    assert found["driver"] == {"cpu": 0.0}

    dag = DAG()
    dag.add_function(Function(id="a", code=where, extra_args=["a"], node="node0"))
    dag.add_function(Function(id="b", code=chain, args=["a"], extra_args=["b"], node="node1"))
    dag.add_function(Function(id="c", code=chain, args=["b"], extra_args=["c"], cost={"gpu": 1}))
    result = handoff.execute(dag, timeout=WAIT)
    assert result.allocations == {"a": "node0", "b": "node1", "c": "node2"}
    ran = result.results["c"]
    assert [tag for tag, _ in ran] == ["a", "b", "c"]
    workers = {name: {p.pid for p in psutil.Process(node.pid).children(recursive=True)}
               for name, node in cluster.nodes.items()}
    assert [pid in workers[node] for (_, pid), node in zip(ran, ["node0", "node1", "node2"])] == [True] * 3

    stats = cluster.node_stats("node1")
    assert stats["name"] == "node1"
    assert stats["members"] == ["driver", "node0", "node1", "node2"]
    assert stats["curve"] == "user key"  # the secure per-user default, with no flags


def test_kill_drops_the_node_from_discover_nodes_and_ends_its_processes(local_cluster, handoff_driver):
    cluster = local_cluster(3)
    handoff_driver(cluster)
    victim = cluster["node2"]
    pids = [victim.pid, *(p.pid for p in psutil.Process(victim.pid).children(recursive=True))]
    assert len(pids) >= 2  # the node and its worker

    cluster.kill("node2")
    left = wait_for_departure(["node2"], WAIT)
    assert {"node0", "node1", "driver"} <= set(left)
    assert not any(running(p) for p in pids)
    assert not victim.running

    dag = DAG().add_function(Function(id="x", code=where, extra_args=["x"], cost={"cpu": 1}))
    result = handoff.execute(dag, timeout=WAIT)  # the driver has no cpu: a cluster node runs it
    assert result.allocations["x"] in {"node0", "node1"}


def test_stop_and_restart_bring_the_node_back_under_its_name(local_cluster, handoff_driver):
    cluster = local_cluster(2, resources={"cpu": 1, "slot": 1})
    handoff_driver(cluster)
    old_pid = cluster["node1"].pid
    cluster.stop("node1")
    assert not running(old_pid)
    wait_for_departure(["node1"], WAIT)

    node = cluster.restart("node1")
    assert node.pid != old_pid and node.running
    wait_for_members(["node0", "node1"], WAIT)
    dag = DAG().add_function(Function(id="y", code=where, extra_args=["y"], node="node1"))
    result = handoff.execute(dag, timeout=WAIT)
    assert result.results["y"][1] in {p.pid for p in psutil.Process(node.pid).children(recursive=True)}


def test_pause_freezes_the_node_and_its_workers_and_resume_thaws_them(local_cluster):
    cluster = local_cluster(2)
    node = cluster["node1"]
    procs = [psutil.Process(node.pid), *psutil.Process(node.pid).children(recursive=True)]
    cluster.pause("node1")
    assert [p.status() for p in procs] == [psutil.STATUS_STOPPED] * len(procs)
    cluster.resume("node1")
    assert psutil.STATUS_STOPPED not in [p.status() for p in procs]
    cluster.pause("node1")  # close() must end a frozen node too
    cluster.close()
    assert not any(running(p.pid) for p in procs)


def test_close_leaves_no_process_behind(local_cluster):
    cluster = local_cluster(3, workers=2)
    pids = cluster.pids()
    assert len(pids) >= 3 + 3 * 2  # three nodes, two workers each
    assert all(running(p) for p in pids)
    cluster.close()
    assert not any(running(p) for p in pids)
    cluster.close()  # a second close is harmless
    with pytest.raises(handoff.HandoffError, match="no node"):
        cluster.address


def test_an_exception_in_the_with_block_still_stops_every_process():
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="the test body failed"):
        with LocalCluster(2) as cluster:
            pids += cluster.pids()
            raise RuntimeError("the test body failed")
    assert len(pids) >= 4
    assert not any(running(p) for p in pids)


def test_fixtures_clean_up_after_a_failing_test(tmp_path):
    """A test that fails while using both fixtures, run by a pytest of its own (which loads
    the plugin through its entry point), leaves neither node processes nor a driver by the
    time the next test runs (not only once that pytest exits)."""
    pid_file = tmp_path / "pids.txt"
    test_file = tmp_path / "test_inner.py"
    test_file.write_text(textwrap.dedent(f"""
        import handoff

        def test_fails(local_cluster, handoff_driver):
            cluster = local_cluster(2)
            handoff_driver(cluster)
            with open({str(pid_file)!r}, "w") as f:
                f.write(" ".join(map(str, cluster.pids())))
            assert handoff.node_name() == "driver"
            raise AssertionError("the inner test fails on purpose")

        def test_after():
            import psutil
            import pytest

            with pytest.raises(handoff.HandoffError, match="none is running"):  # no node here
                handoff.node_stats("node0")
            for pid in map(int, open({str(pid_file)!r}).read().split()):
                assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    """))
    inner = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
        cwd=tmp_path, capture_output=True, text=True, timeout=200,
    )
    assert inner.returncode == 1, inner.stdout + inner.stderr
    assert "the inner test fails on purpose" in inner.stdout
    assert "1 failed, 1 passed" in inner.stdout, inner.stdout
    pids = [int(p) for p in pid_file.read_text().split()]
    assert len(pids) >= 4
    assert not any(running(p) for p in pids)


def test_a_cluster_nobody_closed_is_stopped_when_the_interpreter_exits(tmp_path):
    pid_file = tmp_path / "pids.txt"
    script = textwrap.dedent(f"""
        from handoff.testing import LocalCluster

        cluster = LocalCluster(2)
        with open({str(pid_file)!r}, "w") as f:
            f.write(" ".join(map(str, cluster.pids())))
        raise SystemExit("leaving without close()")
    """)
    ended = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           timeout=200)
    assert "leaving without close()" in ended.stderr
    pids = [int(p) for p in pid_file.read_text().split()]
    assert len(pids) >= 4
    assert not any(running(p) for p in pids)


def test_an_insecure_cluster_and_its_driver_talk_without_curve(local_cluster, handoff_driver):
    cluster = local_cluster(1, insecure=True)
    handoff_driver(cluster)
    assert cluster.node_stats("node0")["curve"] is None


def test_a_cluster_key_file_reaches_nodes_and_driver_even_with_a_node_already_running(
        local_cluster, handoff_driver, tmp_path):
    key = tmp_path / "cluster.key"
    subprocess.run([sys.executable, "-m", "handoff.keygen", str(key)], check=True, timeout=60)
    handoff.stop()
    handoff.start(workers=1)  # e.g. an execute() earlier in the session: outside the cluster
    cluster = local_cluster(2, key_file=str(key), extra_args=["--dead-after", "3"])
    assert handoff_driver(cluster, name="keyed-driver") == "keyed-driver"
    stats = cluster.node_stats("node1")
    assert stats["curve"] == "key file"
    assert stats["members"] == ["keyed-driver", "node0", "node1"]


def test_node_stats_needs_a_driver_in_the_cluster(local_cluster):
    handoff.stop()
    cluster = local_cluster(1)
    with pytest.raises(handoff.HandoffError, match="start it joined to the cluster"):
        cluster.node_stats("node0")


def test_wait_for_members_names_who_is_missing(local_cluster, handoff_driver):
    cluster = local_cluster(1)
    handoff_driver(cluster)
    with pytest.raises(handoff.TimeoutError, match="nowhere") as caught:
        wait_for_members(["node0", "nowhere"], timeout=0.2)
    assert "node0" in str(caught.value) and "members now" in str(caught.value)
    with pytest.raises(handoff.TimeoutError, match="node0 to leave"):
        wait_for_departure(["node0"], timeout=0.2)


@pytest.mark.parametrize("args, problem", [
    ({"n": 0}, "n >= 1"),
    ({"n": 2, "resources": [{"cpu": 1}]}, "list of 2 dicts"),
    ({"n": 2, "names": ["a", "a"]}, "distinct"),
    ({"n": 2, "names": "ab"}, "the string"),
    ({"n": 1, "names": ["has space"]}, "without spaces"),
    ({"n": 1, "workers": 0}, "workers"),
    ({"n": 1, "resources": {"cpu": -1}}, "non-negative"),
    ({"n": 1, "extra_args": ["--join", "tcp://127.0.0.1:1"]}, "may not set --join"),
    ({"n": 1, "extra_args": ["--log-level", "WARNING"]}, "DEBUG or INFO"),
    ({"n": 1, "extra_args": ["--log-level=ERROR"]}, "DEBUG or INFO"),
    ({"n": 1, "extra_args": ["--log-format", "json"]}, "reads the nodes' text log lines"),
])
def test_bad_arguments_fail_before_any_process_starts(args, problem):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(ValueError, match=problem):
        LocalCluster(**args)
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before

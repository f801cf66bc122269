"""Worker deaths a user can act on, and the work of a driver killed with kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

import handoff
from handoff import DAG, Function
from handoff.errors import FunctionError

from nodes import child_env, wait_for

pytestmark = pytest.mark.timeout(180)


# ---- functions shipped to workers ----------------------------------------------------------

def exit_with(code):
    os._exit(code)


def segfault():
    os.kill(os.getpid(), signal.SIGSEGV)


def interrupted():
    raise KeyboardInterrupt("stop here")  # the line the traceback must show


def run_one(code, *extra) -> FunctionError:
    dag = DAG().add_function(Function(id="f", code=code, extra_args=list(extra)))
    with pytest.raises(FunctionError) as info:
        handoff.execute(dag, max_retries=0)
    return info.value


class TestWorkerDeath:
    @pytest.fixture(scope="class", autouse=True)
    def node(self):
        handoff.stop()
        name = handoff.start(name="faults-test", workers=2)
        yield name
        handoff.stop()

    def test_exit_code_is_named(self):
        err = run_one(exit_with, 3)
        assert err.exc_type == "WorkerDied"
        assert "exited with code 3" in str(err), str(err)

    def test_signal_is_named(self):
        err = run_one(segfault)
        assert err.exc_type == "WorkerDied"
        assert "SIGSEGV" in str(err), str(err)

    def test_keyboard_interrupt_is_a_failure_with_its_traceback(self):
        err = run_one(interrupted)
        assert err.exc_type == "KeyboardInterrupt"
        assert "stop here" in err.message
        assert 'raise KeyboardInterrupt("stop here")' in err.remote_traceback

    def test_workers_are_replaced_and_keep_running(self):
        before = handoff.node_stats()["pool"]["pids"]
        run_one(exit_with, 1)
        dag = DAG().add_function(Function(id="ok", code=abs, extra_args=[-4]))
        assert handoff.execute(dag).results["ok"] == 4
        after = handoff.node_stats()["pool"]["pids"]
        assert len(after) == 2 and after != before


# ---- a driver killed with kill -9 -------------------------------------------------------------

DRIVER = textwrap.dedent(
    """
    import os, sys, time
    import handoff
    from handoff import DAG, Function

    def task(i, folder):
        open(os.path.join(folder, f"started-{i}"), "w").close()
        time.sleep(0.3)
        return i

    if __name__ == "__main__":
        join, target, folder = sys.argv[1:4]
        handoff.start(name="doomed-driver", join=join, workers=1)
        dag = DAG()
        for i in range(200):
            dag.add_function(Function(id=i, code=task, extra_args=[i, folder], node=target))
        handoff.execute(dag)
    """
)


def test_dead_drivers_work_is_cancelled(local_cluster, handoff_driver, tmp_path):
    """Once a node declares the driver dead, none of the driver's queued tasks starts there."""
    cluster = local_cluster(1, names=["busy"], resources={"cpu": 4})
    worker_node = cluster["busy"]
    markers = tmp_path / "markers"
    markers.mkdir()
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    driver = subprocess.Popen(
        [sys.executable, str(script), worker_node.address, "busy", str(markers)],
        env=child_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        handoff_driver(cluster, name="observer")  # no resources: it only watches

        def started() -> int:
            return sum(1 for p in markers.iterdir() if p.name.startswith("started-"))

        assert wait_for(lambda: started() >= 1, timeout=60), "no task of the driver started"
        assert wait_for(lambda: handoff.node_stats("busy")["pool"]["queued"] > 0, timeout=10)
        kill_tree(driver)
        assert wait_for(lambda: "doomed-driver" not in handoff.node_stats("busy")["members"], timeout=30)
        seen = started()
        # every task still queued there when the driver died would take 0.3 s each: within
        # this bounded wait, more would have started if the node kept running them
        assert not wait_for(lambda: started() > seen, timeout=3.0), (seen, started())
        assert handoff.node_stats("busy")["pool"]["queued"] == 0
        assert seen < 200
    finally:
        if driver.poll() is None:
            kill_tree(driver)


def kill_tree(proc: subprocess.Popen) -> None:
    """kill -9 a process and, by their PIDs, the worker processes it started."""
    try:
        children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        children = []
    proc.kill()
    proc.wait(10)
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

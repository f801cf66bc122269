"""A paused member heals back into one cluster: SIGSTOP/SIGCONT of real node and driver processes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

import handoff
from handoff.testing import wait_until
from handoff import DAG, Function
from nodes import NodeProcess, child_env, end_process, launch, ledger_idle, start_node, wait_for

pytestmark = [pytest.mark.timeout(300), pytest.mark.chaos]

HEAL_WITHIN = 5.0  # seconds from SIGCONT to one cluster, as the issue requires
NODES = ("n1", "n2", "n3")


def pause_for(proc_pid: int, seconds: float) -> None:
    """The fault itself: hold the process stopped for ``seconds`` (the only sleep here)."""
    os.kill(proc_pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(proc_pid, signal.SIGCONT)


def square_slowly(x, seconds):
    time.sleep(seconds)
    return x * x


def pinned_dag(dag_id: str, names: list[str]) -> DAG:
    """One function pinned to each node, and their sum: runs only if every node is a member."""
    dag = DAG(dag_id)
    for i, name in enumerate(names):
        dag.add_function(Function(id=f"on-{name}", code=square_slowly, extra_args=[i + 1, 0.0],
                                  node=name, cost={"cpu": 1}))
    dag.add_function(Function(id="total", args=[f"on-{n}" for n in names],
                              argument_inclusion="as_list", code=sum, node=names[0]))
    return dag


def wide_dag(dag_id: str, width: int, seconds: float) -> tuple[DAG, dict]:
    dag = DAG(dag_id)
    for i in range(width):
        dag.add_function(Function(id=i, code=square_slowly, extra_args=[i, seconds], cost={"cpu": 1}))
    dag.add_function(Function(id="sum", args=list(range(width)), argument_inclusion="as_list",
                              code=sum))
    expected = {i: i * i for i in range(width)}
    expected["sum"] = sum(expected.values())
    return dag, expected


# ---- the driver as a process of its own (so it can be paused too) -------------------------
def driver_main() -> None:
    """Commands on stdin, one JSON answer per line on stdout (see DriverProcess)."""
    join, names = sys.argv[1], sys.argv[2].split(",")
    handoff.start(name="driver", join=join, resources={"cpu": 0}, workers=1)
    background: dict = {}
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            answer = _driver_command(cmd, names, background)
        except Exception as exc:  # reported to the test, which fails with it
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)
    handoff.stop()


def _driver_command(cmd: dict, names: list[str], background: dict) -> dict:
    op = cmd["op"]
    if op == "heal":
        took, views = wait_one_cluster(["driver", *names], cmd["within"])
        return {"healed": took is not None, "took": took, "views": views}
    if op == "run":
        r = handoff.execute(pinned_dag(cmd["dag"], names), timeout=60)
        return {"total": r.results["total"], "allocations": {str(k): v for k, v in r.allocations.items()}}
    if op == "start":
        dag, expected = wide_dag(cmd["dag"], cmd["width"], cmd["seconds"])
        done: dict = {}

        def run() -> None:
            try:
                done["result"] = handoff.execute(dag, timeout=120)
            except Exception as exc:
                done["error"] = f"{type(exc).__name__}: {exc}"

        thread = threading.Thread(target=run)
        thread.start()
        background[cmd["dag"]] = (thread, expected, done)
        return {"started": True}
    if op == "finish":
        thread, expected, done = background.pop(cmd["dag"])
        thread.join(120)
        if "error" in done:
            return {"error": done["error"]}
        idle = ledger_idle()
        result = done["result"]
        # each result is held where the driver was told it is, on a live member
        located = all(result.results.location(fid) in ("driver", *names) for fid in expected)
        return {"correct": dict(result.results) == expected, "ledger_idle": idle,
                "located": located, "nodes_idle": wait_nodes_idle(names, 30.0)}
    raise ValueError(f"unknown command {op!r}")


def wait_nodes_idle(names: list[str], timeout: float) -> bool:
    """Every node's own ledger and queue empty (no claim left behind by a superseded attempt)."""
    def idle() -> bool:
        pools = [handoff.node_stats(name, timeout=2.0)["pool"] for name in names]
        return all(not p["queued"] and not p["blocked"] and not any(p["used"].values()) for p in pools)

    return wait_until(idle, timeout)


def wait_one_cluster(everyone: list[str], timeout: float) -> tuple[float | None, dict]:
    """Poll until every member's own view is ``everyone``; (seconds taken or None, last views)."""
    want = sorted(everyone)
    t0 = time.monotonic()
    views: dict = {}

    def agreed() -> bool:
        views.clear()
        views["driver"] = sorted(handoff.discover_nodes())
        for name in everyone:
            if name == "driver":
                continue
            try:
                views[name] = handoff.node_stats(name, timeout=0.5)["members"]
            except Exception as exc:
                views[name] = str(exc)
        return all(v == want for v in views.values())

    if wait_until(agreed, timeout):
        return time.monotonic() - t0, views
    return None, views


class DriverProcess:
    def __init__(self, join: str, names: list[str]):
        code = "import test_healing; test_healing.driver_main()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, join, ",".join(names)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
        self.answers: list = []
        self._lines: list = []
        self._ready = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()
        assert self._next(60).get("ready"), self.stderr()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _pump(self) -> None:
        for line in self.proc.stdout:
            with self._ready:
                self._lines.append(line)
                self._ready.notify_all()
        with self._ready:
            self._lines.append("")
            self._ready.notify_all()

    def _next(self, timeout: float) -> dict:
        with self._ready:
            if not self._ready.wait_for(lambda: self._lines, timeout):
                raise AssertionError(f"driver did not answer in {timeout} s: {self.stderr()}")
            line = self._lines.pop(0)
        if not line:
            raise AssertionError(f"driver exited: {self.stderr()}")
        return json.loads(line)

    def ask(self, timeout: float = 90.0, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        answer = self._next(timeout)
        assert "error" not in answer, answer["error"]
        return answer

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read()[-4000:]

    def stop(self) -> None:
        end_process(self.proc, close_stdin=True)


@pytest.fixture
def cluster(local_cluster):
    """Nodes n1..n3 (a LocalCluster: n2 and n3 join n1) and a driver process joining n1."""
    handoff.stop()
    nodes = local_cluster(len(NODES), names=list(NODES), resources={"cpu": 2}, workers=2)
    driver = DriverProcess(nodes["n1"].address, list(NODES))
    try:
        healed = driver.ask(op="heal", within=30)
        assert healed["healed"], healed["views"]
        yield {**{name: nodes[name] for name in NODES}, "driver": driver}
    finally:
        try:
            os.kill(driver.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        driver.stop()


def _pause_and_heal(cluster, victim: str, seconds: float, trial: str) -> float:
    driver = cluster["driver"]
    driver.ask(op="start", dag=f"{trial}-during", width=24, seconds=0.2)
    pause_for(cluster[victim].pid, seconds)
    healed = driver.ask(op="heal", within=HEAL_WITHIN)
    assert healed["healed"], f"{victim} paused {seconds} s: still split: {healed['views']}"
    ran = driver.ask(op="run", dag=f"{trial}-after")
    assert ran["total"] == sum((i + 1) ** 2 for i in range(len(NODES)))
    assert set(ran["allocations"].values()) == set(NODES)
    finished = driver.ask(op="finish", dag=f"{trial}-during")
    assert finished == {"correct": True, "ledger_idle": True, "located": True, "nodes_idle": True}
    return healed["took"]


def test_node_paused_3s_rejoins_within_5s(cluster):
    took = _pause_and_heal(cluster, "n2", 3.0, "pause-3")
    print(f"\nn2 paused 3 s: one cluster {took:.2f} s after SIGCONT")


def test_driver_paused_3s_rejoins_within_5s(cluster):
    took = _pause_and_heal(cluster, "driver", 3.0, "pause-driver")
    print(f"\ndriver paused 3 s: one cluster {took:.2f} s after SIGCONT")


@pytest.mark.slow
def test_node_paused_30s_rejoins_within_5s(cluster):
    took = _pause_and_heal(cluster, "n1", 30.0, "pause-30")
    print(f"\nn1 (the seed) paused 30 s: one cluster {took:.2f} s after SIGCONT")


@pytest.mark.slow
def test_ten_pauses_of_random_victims(cluster):
    rng = random.Random(20261128)
    took = []
    for trial in range(10):
        victim = rng.choice(["driver", *NODES])
        took.append(_pause_and_heal(cluster, victim, rng.uniform(2.5, 4.0), f"trial-{trial}"))
    print(f"\n10 pauses: healed in {min(took):.2f}-{max(took):.2f} s after SIGCONT")


def restart_at(node: NodeProcess, extra: list[str] | None = None) -> NodeProcess:
    """A new process with the same name at the same address (a seed that came back)."""
    return launch(node.name, node.address, ["--resources", "cpu=2", "--workers", "1",
                                            "--log-level", "WARNING", *(extra or [])])


def test_restarted_seed_is_found_again_by_the_node_that_joined_it():
    """n2 joined the seed n1; n1 is killed and restarted alone at its address: n2 finds it."""
    handoff.stop()
    procs = [start_node("n1", "cpu=2", workers=1)]
    try:
        procs.append(start_node("n2", "cpu=2", workers=1, join=procs[0].address))
        handoff.start(name="driver", join=procs[1].address, resources={"cpu": 0}, workers=1)
        assert wait_for(lambda: set(handoff.discover_nodes()) == {"driver", "n1", "n2"})
        procs[0].kill()
        assert wait_for(lambda: "n1" not in handoff.discover_nodes())
        procs.append(restart_at(procs[0]))
        assert wait_for(lambda: set(handoff.discover_nodes()) == {"driver", "n1", "n2"},
                        timeout=HEAL_WITHIN)
        assert wait_for(lambda: handoff.node_stats("n1")["members"] == ["driver", "n1", "n2"],
                        timeout=HEAL_WITHIN)
        assert handoff.execute(pinned_dag("after-restart", ["n1", "n2"]), timeout=30).results["total"] == 5
    finally:
        handoff.stop()
        for proc in procs:
            proc.stop()

"""What security costs: loopback CURVE (the per-user key, the default) against ``--insecure``.

Run with::

    python -m pytest bench/bench_security.py --benchmark-only -p no:cacheprovider -s

A 2-node cluster on loopback: this process as the driver (cpu=0, one worker) joined to one
``python -m handoff.node`` process "a" with 2 workers; every function is pinned to a, so each
dispatch and completion crosses the driver-node socket. Both modes run in the same session:
- "curve": no flags at all, so both processes take the user's key from the runtime directory
  (a private one made for this module) and every message is CURVE-encrypted;
- "insecure": ``--insecure`` / ``insecure=True``, plain ZMTP.

Workloads (as in bench_runtime.py): W1, 10,000 no-op functions and a sum (functions/s); W2, a
chain of 1,000 ``x + 1`` steps (microseconds per step). Then a 50 MB array made on node a
and summed on node b (a 3-node cluster: a, b and the driver; no shared memory, so the bytes
cross the socket as between hosts), with and without a cluster key file, and bare ZeroMQ
loopback throughput with and without CURVE. Results are checked every round; speed is
reported, never asserted; a summary table prints at the end.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

import handoff
from handoff import DAG, Function

BENCH_DIR = Path(__file__).resolve().parent
INTEGRATION_DIR = BENCH_DIR.parent / "tests" / "integration"
sys.path.insert(0, str(INTEGRATION_DIR))
from nodes import PACKAGE_ROOT, child_env, private_runtime_dir, start_node, wait_for

pytestmark = pytest.mark.timeout(600)

W1_N = 10_000
W2_N = 1_000
ROUNDS = 3
ARRAY_MB = 50
ARRAY_N = ARRAY_MB * 1024 * 1024 // 8
MODES = ("curve", "insecure")

# (workload, mode) -> seconds of each round
TIMES: dict[tuple[str, str], list[float]] = {}
LINES: list[str] = []  # the array and bare-ZeroMQ figures


def noop():
    return 1


def total(*xs):
    return sum(xs)


def inc(x):
    return x + 1


def make_array(n):
    return np.ones(n, dtype=np.float64)


def array_sum(a):
    return float(a.sum())


def dag_w1() -> DAG:
    dag = DAG()
    for i in range(W1_N):
        dag.add_function(Function(id=i, code=noop, node="a"))
    dag.add_function(Function(id="sum", code=total, args=list(range(W1_N)), node="a"))
    return dag


def dag_w2() -> DAG:
    dag = DAG().add_function(Function(id=0, code=inc, extra_args=[0], node="a"))
    for i in range(1, W2_N):
        dag.add_function(Function(id=i, code=inc, args=[i - 1], node="a"))
    return dag


WORKLOADS = {
    "W1": (dag_w1, lambda r: r["sum"] == W1_N),
    "W2": (dag_w2, lambda r: r[W2_N - 1] == W2_N),
}
METRICS = {
    "W1": ("functions/s", lambda s: f"{(W1_N + 1) / s:,.0f} fn/s"),
    "W2": ("us/step", lambda s: f"{s / W2_N * 1e6:.0f} us/step"),
}


# ---- fixtures ----------------------------------------------------------------------------
def node_env() -> dict[str, str]:
    """Node processes import this module (to unpickle its functions): put bench/ on their path."""
    paths = [str(PACKAGE_ROOT), str(INTEGRATION_DIR), str(BENCH_DIR),
             *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


@pytest.fixture(scope="module", autouse=True)
def runtime_dir():
    """A private runtime directory for the per-user key, removed at the end."""
    with private_runtime_dir("handoff-bench-runtime-") as path:
        yield path


@pytest.fixture(scope="module", params=MODES)
def cluster(request, runtime_dir):
    """Driver + node a in one security mode, warmed up with one run of each workload."""
    mode = request.param
    insecure = mode == "insecure"
    handoff.stop()
    a = start_node("a", "cpu=2", workers=2, extra=["--insecure"] if insecure else [],
                   env=node_env())
    try:
        handoff.start(name="driver", join=a.address, resources={"cpu": 0}, workers=1,
                      insecure=insecure)
        assert wait_for(lambda: set(handoff.discover_nodes()) == {"a", "driver"})
        node = handoff.api.current_node()
        expected = None if insecure else "user key"
        assert node.node_stats()["curve"] == expected == node.peer_stats("a")["curve"]
        for make, check in WORKLOADS.values():
            dag = make()
            assert check(handoff.execute(dag).results)
            handoff.clear(dag.id)
        yield mode
    finally:
        handoff.stop()
        a.stop()


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    yield
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if reporter is None or not (TIMES or LINES):
        return
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        for line in summary_lines():
            reporter.write_line(line)


# ---- driver + one node: CURVE on loopback against --insecure -------------------------------
@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_loopback_curve(benchmark, cluster, workload):
    benchmark.group = f"{workload} on a 2-node loopback cluster"
    make, check = WORKLOADS[workload]
    times: list[float] = []

    def run(dag):
        t0 = time.perf_counter()
        result = handoff.execute(dag)
        times.append(time.perf_counter() - t0)
        assert check(result.results)

    benchmark.pedantic(run, setup=lambda: ((make(),), {}), teardown=lambda dag: handoff.clear(dag.id),
                       rounds=ROUNDS, iterations=1)
    assert len(times) == ROUNDS
    TIMES[(workload, cluster)] = times
    benchmark.extra_info.update(workload=workload, mode=cluster, seconds=times,
                                metric=METRICS[workload][0])


# ---- a 50 MB value between two node processes, with and without a key file ----------------
def keygen(path: Path) -> str:
    subprocess.run([sys.executable, "-m", "handoff.keygen", str(path)], env=child_env(),
                   check=True, timeout=30, capture_output=True)
    return str(path)


def array_seconds(key: str | None, insecure: bool) -> dict[str, float]:
    """Best of ``ROUNDS`` seconds: the array made on a and summed on b, or both on a."""
    extra = ["--no-shared-memory", *(["--key-file", key] if key else []),
             *(["--insecure"] if insecure else [])]
    handoff.stop()  # the 2-node cluster of the tests above (its node a is another cluster)
    a = start_node("a", "cpu=2", extra=extra, env=node_env())
    nodes = [a]
    try:
        nodes.append(start_node("b", "cpu=2", join=a.address, extra=extra, env=node_env()))
        handoff.start(name="driver", join=a.address, key_file=key, insecure=insecure,
                      resources={"cpu": 0}, workers=1, shared_memory=False)
        assert wait_for(lambda: set(handoff.discover_nodes()) == {"a", "b", "driver"})
        out = {}
        for label, second in (("a->b", "b"), ("on a", "a")):
            dag = DAG().add_function(Function(id="make", code=make_array, extra_args=[ARRAY_N],
                                              node="a"))
            dag.add_function(Function(id="sum", code=array_sum, args=["make"], node=second))
            best = float("inf")
            for _ in range(ROUNDS):
                t0 = time.perf_counter()
                result = handoff.execute(dag)
                assert result.results["sum"] == float(ARRAY_N)
                best = min(best, time.perf_counter() - t0)
                handoff.clear(dag.id)
            out[label] = best
        return out
    finally:
        handoff.stop()
        for n in nodes:
            n.stop()


def zmq_throughput(curve: bool, frames: int = 10) -> float:
    """MB/s of 50 MB frames DEALER -> ROUTER over loopback tcp, bare ZeroMQ."""
    ctx = zmq.Context()
    server, client = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        for sock in (server, client):
            sock.linger = 0
        if curve:
            public, secret = zmq.curve_keypair()
            server.curve_server, server.curve_secretkey, server.curve_publickey = True, secret, public
            client.curve_secretkey, client.curve_publickey, client.curve_serverkey = secret, public, public
        port = server.bind_to_random_port("tcp://127.0.0.1")
        client.connect(f"tcp://127.0.0.1:{port}")
        payload = np.ones(ARRAY_N, dtype=np.float64)
        client.send(payload, copy=False)
        server.recv_multipart(copy=False)  # handshake done
        t0 = time.perf_counter()
        for _ in range(frames):
            client.send(payload, copy=False)
        for _ in range(frames):
            server.recv_multipart(copy=False)
        return frames * ARRAY_MB / (time.perf_counter() - t0)
    finally:
        server.close(0)
        client.close(0)
        ctx.term()


def test_array_transfer_with_a_key_file(benchmark, tmp_path):
    benchmark.group = f"{ARRAY_MB} MB array between node processes"
    key = keygen(tmp_path / "cluster.key")
    figures = {}

    def measure():
        figures["insecure"] = array_seconds(None, insecure=True)
        figures["key file"] = array_seconds(key, insecure=False)

    benchmark.pedantic(measure, rounds=1, iterations=1)
    plain, keyed = figures["insecure"], figures["key file"]
    for label in plain:
        LINES.append(f"| {ARRAY_MB} MB array {label} (best of {ROUNDS}) | "
                     f"{keyed[label] * 1000:.0f} ms | {plain[label] * 1000:.0f} ms | "
                     f"{keyed[label] / plain[label]:.2f} |")
    benchmark.extra_info.update({f"{who} {k}": v for who, t in figures.items() for k, v in t.items()})


def test_bare_zeromq_throughput(benchmark):
    benchmark.group = "bare ZeroMQ loopback"
    rates = {}

    def measure():
        rates["plain"], rates["curve"] = zmq_throughput(False), zmq_throughput(True)

    benchmark.pedantic(measure, rounds=1, iterations=1)
    LINES.append(f"| bare ZeroMQ, {ARRAY_MB} MB frames | {rates['curve']:,.0f} MB/s | "
                 f"{rates['plain']:,.0f} MB/s | {rates['plain'] / rates['curve']:.2f} |")
    benchmark.extra_info.update(rates)


# ---- reporting ---------------------------------------------------------------------------
def summary_lines() -> list[str]:
    load = "/".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    lines = ["", f"bench_security summary ({os.cpu_count()} cpus, Python "
                 f"{platform.python_version()}, load average now {load}; W1/W2: mean of "
                 f"{ROUNDS} rounds, driver + node a with 2 workers, all work pinned to a):", "",
             "| workload | CURVE (secured) | insecure | CURVE time / insecure time |",
             "|---|---|---|---|"]
    for workload in WORKLOADS:
        c, p = TIMES.get((workload, "curve")), TIMES.get((workload, "insecure"))
        if not c or not p:
            continue
        show = METRICS[workload][1]
        cm, pm = sum(c) / len(c), sum(p) / len(p)
        lines.append(f"| {workload} | {show(cm)} | {show(pm)} | {cm / pm:.2f} |")
    return lines + LINES

"""Security by default over real node processes: CURVE clusters, strangers, the loopback rule."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq
from nodes import child_env, free_port, peer_stats, start_node, wait_for

import handoff
from handoff import DAG, Function
from handoff.node.values import dumps_payload
from handoff.protocol import encode
from handoff.protocol.messages import Dispatch, Gossip, Hello
from handoff.security import read_key_file

pytestmark = pytest.mark.timeout(180)


def keygen(path) -> str:
    subprocess.run([sys.executable, "-m", "handoff.keygen", str(path)], env=child_env(),
                   check=True, timeout=30, capture_output=True)
    return str(path)


def noop():
    return 1


def total(*values):
    return sum(values)


def stop_all(nodes) -> None:
    handoff.stop()
    for n in nodes:
        n.stop()


def exit_code(node, timeout: float = 30.0) -> int:
    try:
        return node.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        node.stop()
        pytest.fail(f"node {node.name} still running after {timeout} s: {''.join(node.log)}")


def output(node, timeout: float = 5.0) -> str:
    """All a node printed, once it has exited: read up to the pump's end-of-output mark."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if node.lines.get(timeout=max(0.01, deadline - time.monotonic())) == "":
                break
        except queue.Empty:
            break
    return "".join(node.log)


# ---- raw intruders ----------------------------------------------------------------------------
class Intruder:
    """A bare zmq DEALER that speaks the wire protocol without being a node."""

    def __init__(self, address: str, setup=None):
        self.ctx = zmq.Context()
        self.inbox = self.ctx.socket(zmq.ROUTER)  # where the node would answer
        self.inbox.linger = 0
        port = self.inbox.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        if setup is not None:
            setup(self.sock)
        self.sock.connect(address)

    def send(self, msg) -> None:
        self.sock.send_multipart(encode(msg))

    def hello_and_dispatch(self, marker) -> None:
        """A valid Hello, then a Dispatch whose function creates ``marker`` when it runs."""
        self.send(Hello("intruder", self.address, 1, {"cpu": 1.0}))
        payload = dumps_payload(lambda path=str(marker): open(path, "w").close())
        row = ["intruder-run", 0, 0, "touch", None, None, ["c", 0, "variadic", []], [], 0, 1]
        self.send(Dispatch("intruder", "intruder-dag", [row], [[payload]]))

    def close(self) -> None:
        self.sock.close(0)
        self.inbox.close(0)
        self.ctx.term()


class Touch:
    """Unpickling this creates a file: a pickled value a node must not load from a stranger."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def other_key(sock: zmq.Socket) -> None:
    public, secret = zmq.curve_keypair()
    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, public


def stranger_setup(kind: str, key_file: str):
    """How a stranger's DEALER is set up: no CURVE at all, a key of its own, or a key of its
    own plus the cluster's public key (so the handshake reaches the ZAP handler)."""
    if kind == "no curve":
        return None
    if kind == "another key":
        return other_key
    public = read_key_file(key_file)[0]

    def setup(sock: zmq.Socket) -> None:
        other_key(sock)
        sock.curve_serverkey = public
    return setup


def key_holder_setup(key_file: str):
    public, secret = read_key_file(key_file)

    def setup(sock: zmq.Socket) -> None:
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, public
    return setup


# ---- a keyed cluster ----------------------------------------------------------------------------
class TestKeyedCluster:
    @pytest.fixture(scope="class")
    @classmethod
    def keyed(cls, tmp_path_factory):
        """Nodes a and b with one cluster key, and this process as a keyed driver."""
        handoff.stop()
        key = keygen(tmp_path_factory.mktemp("key") / "cluster.key")
        a = start_node("a", "cpu=2", extra=["--key-file", key])
        nodes = [a]
        try:
            nodes.append(start_node("b", "cpu=2", join=a.address, extra=["--key-file", key]))
            handoff.start(name="driver", join=a.address, key_file=key, resources={"cpu": 0}, workers=1)
            assert wait_for(lambda: set(handoff.discover_nodes()) == {"a", "b", "driver"})
            yield {"key": key, "a": a, "b": nodes[1]}
        finally:
            stop_all(nodes)

    def test_keyed_cluster_runs_a_dag(self, keyed):
        dag = DAG()
        dag.add_function(Function(id="x", code=lambda: 20, node="b"))
        dag.add_function(Function(id="y", code=lambda v: v * 2 + 2, args=["x"], node="b"))
        r = handoff.execute(dag)
        assert r.allocations == {"x": "b", "y": "b"}
        assert r.results["y"] == 42

    @pytest.mark.parametrize("how", ["without a key", "with another key"])
    def test_node_without_the_key_cannot_join(self, keyed, how, tmp_path):
        extra = ["--join-timeout", "3"]
        if how == "with another key":
            extra += ["--key-file", keygen(tmp_path / "other.key")]
        stranger = start_node("stranger", "cpu=1", join=keyed["a"].address, extra=extra, wait=False)
        try:
            started = time.monotonic()
            assert exit_code(stranger) != 0
            assert time.monotonic() - started < 20
            assert "could not join" in output(stranger)
        finally:
            stranger.stop()
        assert "stranger" not in handoff.discover_nodes()
        stats = peer_stats("a")
        assert "stranger" not in stats["members"]
        assert stats["pool"]["completed"] == 0  # a ran nothing at all: the DAG ran on b

    @pytest.mark.parametrize("kind", ["no curve", "another key", "public key only"])
    def test_raw_dealer_cannot_run_code(self, keyed, kind, tmp_path):
        marker = tmp_path / "ran"
        intruder = Intruder(keyed["a"].address, stranger_setup(kind, keyed["key"]))
        try:
            intruder.hello_and_dispatch(marker)
            time.sleep(1.0)
            assert not marker.exists()
            assert not intruder.inbox.poll(0), "node a answered a stranger"
        finally:
            intruder.close()
        stats = peer_stats("a")
        assert "intruder" not in stats["members"]
        assert stats["pool"]["completed"] == 0  # a ran nothing at all: the DAG ran on b
        # the first rejection is logged at once (later ones are summed up every 10 s)
        assert wait_for(lambda: "without the cluster key" in "".join(keyed["a"].log), timeout=5)

    def test_rejections_show_in_node_stats(self, keyed):
        intruder = Intruder(keyed["a"].address, other_key)
        try:
            intruder.send(Hello("intruder", intruder.address, 1, {"cpu": 1.0}))
            assert wait_for(lambda: peer_stats("a")["rejected_connections"] > 0, timeout=5)
        finally:
            intruder.close()

    @pytest.mark.parametrize("first", ["gossip", "hello"])
    def test_nothing_is_unpickled_before_hello(self, keyed, first, tmp_path):
        """Even a key holder's pickled values are not loaded until it said hello."""
        marker = tmp_path / "unpickled"
        intruder = Intruder(keyed["a"].address, key_holder_setup(keyed["key"]))
        try:
            if first == "gossip":
                intruder.send(Gossip("nobody", [Touch(str(marker))]))
            else:
                intruder.send(Hello("intruder", intruder.address, 1, {"cpu": Touch(str(marker))}))
            time.sleep(1.0)
            assert not marker.exists()
        finally:
            intruder.close()

    def test_nothing_is_unpickled_after_a_refused_hello(self, keyed, tmp_path):
        marker = tmp_path / "unpickled"
        intruder = Intruder(keyed["a"].address, key_holder_setup(keyed["key"]))
        try:
            # a's own name with another incarnation: a refuses this hello ("name is taken")
            intruder.send(Hello("a", intruder.address, 12345, {"cpu": 1.0}))
            intruder.send(Gossip("a", [Touch(str(marker))]))
            time.sleep(1.0)
            assert not marker.exists()
        finally:
            intruder.close()


def test_the_intruder_probe_does_run_code_on_an_open_loopback_node(tmp_path):
    """Control for the tests above: without a key (loopback) the same probe runs its code."""
    node = start_node("open", "cpu=1")
    marker = tmp_path / "ran"
    intruder = Intruder(node.address)
    try:
        intruder.hello_and_dispatch(marker)
        assert wait_for(marker.exists, timeout=10)
    finally:
        intruder.close()
        node.stop()


# ---- the loopback rule ---------------------------------------------------------------------------
def open_node(name: str, extra: list[str] | None = None, wait: bool = True):
    # the later --listen wins over the loopback one start_node passes
    port = free_port()
    return start_node(name, "cpu=1", extra=["--listen", f"tcp://0.0.0.0:{port}", *(extra or [])],
                      wait=wait)


def test_open_address_without_a_key_is_refused():
    node = open_node("open", wait=False)
    try:
        started = time.monotonic()
        assert exit_code(node) != 0
        assert time.monotonic() - started < 20
        out = output(node)
        assert "refusing to listen on tcp://0.0.0.0:" in out
        assert "python -m handoff.keygen" in out and "--insecure" in out
    finally:
        node.stop()


def test_open_address_with_insecure_starts():
    node = open_node("open", ["--insecure"])
    try:
        assert node.proc.poll() is None
    finally:
        node.stop()


def test_open_address_with_a_key_starts(tmp_path):
    node = open_node("open", ["--key-file", keygen(tmp_path / "cluster.key")])
    try:
        assert node.proc.poll() is None
    finally:
        node.stop()


def test_keygen_cli(tmp_path):
    path = tmp_path / "cluster.key"
    keygen(path)
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o600)
    again = subprocess.run([sys.executable, "-m", "handoff.keygen", str(path)], env=child_env(),
                           timeout=30, capture_output=True, text=True, check=False)
    assert again.returncode != 0 and "already exists" in again.stderr
    out = subprocess.run([sys.executable, "-m", "handoff.keygen"], env=child_env(),
                         timeout=30, capture_output=True, text=True, check=True).stdout
    assert "public = " in out and "secret = " in out


# ---- what CURVE costs ------------------------------------------------------------------------------
W1_N = 2_000
ARRAY_MB = 50
N = ARRAY_MB * 1024 * 1024 // 8


def make_array(n):
    return np.ones(n, dtype=np.float64)


def array_sum(a):
    return float(a.sum())


def two_step(make, first: str, second: str) -> DAG:
    dag = DAG()
    dag.add_function(Function(id="make", code=make, extra_args=[N], node=first))
    dag.add_function(Function(id="sum", code=array_sum, args=["make"], node=second))
    return dag


def measure(key: str | None, rounds: int = 5) -> dict[str, float]:
    """Best-of-``rounds`` seconds per workload on a fresh cluster a, b and a driver. No
    shared memory: values cross the sockets as they would between hosts."""
    extra = ["--no-shared-memory", *(["--key-file", key] if key else [])]
    a = start_node("a", "cpu=2", extra=extra)
    nodes = [a]
    try:
        nodes.append(start_node("b", "cpu=4", workers=4, join=a.address, extra=extra))
        handoff.start(name="driver", join=a.address, key_file=key, resources={"cpu": 0},
                      workers=1, shared_memory=False)
        assert wait_for(lambda: set(handoff.discover_nodes()) == {"a", "b", "driver"})
        w1 = DAG()
        for i in range(W1_N):
            w1.add_function(Function(id=i, code=noop, node="b"))
        w1.add_function(Function(id="sum", code=total, args=list(range(W1_N)), node="b"))
        workloads = {
            "w1": (w1, W1_N),
            "array a->b": (two_step(make_array, "a", "b"), float(N)),
            "array on a": (two_step(make_array, "a", "a"), float(N)),
        }
        out = {}
        for label, (dag, expected) in workloads.items():
            best = float("inf")
            for _ in range(rounds):
                started = time.perf_counter()
                r = handoff.execute(dag)
                assert r.results["sum"] == expected
                best = min(best, time.perf_counter() - started)
                handoff.clear(r.dag_id)  # 50 MB a round: keep the stores small
            out[label] = best
        return out
    finally:
        stop_all(nodes)


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
        payload = np.ones(N, dtype=np.float64)
        client.send(payload, copy=False)
        server.recv_multipart(copy=False)  # handshake done
        started = time.perf_counter()
        for _ in range(frames):
            client.send(payload, copy=False)
        for _ in range(frames):
            server.recv_multipart(copy=False)
        return frames * ARRAY_MB / (time.perf_counter() - started)
    finally:
        server.close(0)
        client.close(0)
        ctx.term()


@pytest.mark.slow
def test_curve_cost(tmp_path):
    """Prints (asserts nothing about) what CURVE costs: run with -s to see it."""
    handoff.stop()
    plain = measure(None)
    keyed = measure(keygen(tmp_path / "cluster.key"))
    title = (f"CURVE cost, best of 5 ({W1_N} no-op functions + a sum on b; {ARRAY_MB} MB array "
             "made on a, summed on b or a):")
    lines = [title]
    for label in plain:
        p, k = plain[label], keyed[label]
        lines.append(f"  {label:11s} plain {p * 1000:8.1f} ms   keyed {k * 1000:8.1f} ms   "
                     f"keyed/plain {k / p:.2f}")
    for name, t in (("plain", plain), ("keyed", keyed)):
        hop = t["array a->b"] - t["array on a"]
        lines.append(f"  {name}: W1-like {(W1_N + 1) / t['w1']:,.0f} functions/s; the a->b socket "
                     f"hop adds {hop * 1000:.0f} ms for {ARRAY_MB} MB")
    plain_zmq, curve_zmq = zmq_throughput(False), zmq_throughput(True)
    lines.append(f"  bare ZeroMQ loopback, {ARRAY_MB} MB frames: plain {plain_zmq:,.0f} MB/s, "
                 f"CURVE {curve_zmq:,.0f} MB/s")
    print("\n".join(lines))

"""Security by default over real node processes: CURVE clusters, strangers, the per-user key
on loopback, the rule for other addresses."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import time

import pytest
import zmq
from handoff.testing import LocalCluster
from nodes import child_env, free_port, start_node, wait_for

import handoff
from handoff import DAG, Function
from handoff.node.data.values import dumps_payload
from handoff.protocol import encode
from handoff.protocol.messages import Dispatch, Gossip, Hello
from handoff.security import USER_KEY_FILE, read_key_file, user_key

pytestmark = pytest.mark.timeout(180)


def keygen(path) -> str:
    subprocess.run([sys.executable, "-m", "handoff.keygen", str(path)], env=child_env(),
                   check=True, timeout=30, capture_output=True)
    return str(path)


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
        with LocalCluster(2, names=["a", "b"], resources={"cpu": 2}, key_file=key) as cluster:
            cluster.connect()  # keyed too: LocalCluster passes its key file on
            yield {"key": key, "a": cluster["a"], "b": cluster["b"]}

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
            assert exit_code(stranger) != 0
            assert "could not join" in output(stranger)
        finally:
            stranger.stop()
        assert "stranger" not in handoff.discover_nodes()
        stats = handoff.node_stats("a")
        assert "stranger" not in stats["members"]
        assert stats["pool"]["completed"] == 0  # a ran nothing at all: the DAG ran on b

    @pytest.mark.parametrize("kind", ["no curve", "another key", "public key only"])
    def test_raw_dealer_cannot_run_code(self, keyed, kind, tmp_path):
        marker = tmp_path / "ran"
        rejected = handoff.node_stats("a")["rejected_connections"]
        intruder = Intruder(keyed["a"].address, stranger_setup(kind, keyed["key"]))
        try:
            intruder.hello_and_dispatch(marker)
            # the handshake failed: nothing the intruder sent can follow it through
            assert wait_for(lambda: handoff.node_stats("a")["rejected_connections"] > rejected, timeout=10)
            assert not marker.exists()
            assert not intruder.inbox.poll(0), "node a answered a stranger"
        finally:
            intruder.close()
        stats = handoff.node_stats("a")
        assert "intruder" not in stats["members"]
        assert stats["pool"]["completed"] == 0  # a ran nothing at all: the DAG ran on b
        # the first rejection is logged at once (later ones are summed up every 10 s)
        assert wait_for(lambda: "without the cluster key" in keyed["a"].log(), timeout=5)

    def test_rejections_show_in_node_stats(self, keyed):
        intruder = Intruder(keyed["a"].address, other_key)
        try:
            intruder.send(Hello("intruder", intruder.address, 1, {"cpu": 1.0}))
            assert wait_for(lambda: handoff.node_stats("a")["rejected_connections"] > 0, timeout=5)
        finally:
            intruder.close()

    @pytest.mark.parametrize("first", ["gossip", "hello"])
    def test_nothing_is_unpickled_before_hello(self, keyed, first, tmp_path):
        """Even a key holder's pickled values are not loaded until it said hello."""
        marker = tmp_path / "unpickled"
        dropped = handoff.node_stats("a")["dropped_messages"]
        intruder = Intruder(keyed["a"].address, key_holder_setup(keyed["key"]))
        try:
            if first == "gossip":
                intruder.send(Gossip("nobody", [Touch(str(marker))]))
            else:
                intruder.send(Hello("intruder", intruder.address, 1, {"cpu": Touch(str(marker))}))
            assert wait_for(lambda: handoff.node_stats("a")["dropped_messages"] > dropped, timeout=10)
            assert not marker.exists()
        finally:
            intruder.close()

    def test_nothing_is_unpickled_after_a_refused_hello(self, keyed, tmp_path):
        marker = tmp_path / "unpickled"
        dropped = handoff.node_stats("a")["dropped_messages"]
        intruder = Intruder(keyed["a"].address, key_holder_setup(keyed["key"]))
        try:
            # a's own name with another incarnation: a refuses this hello ("name is taken")
            intruder.send(Hello("a", intruder.address, 12345, {"cpu": 1.0}))
            intruder.send(Gossip("a", [Touch(str(marker))]))
            assert wait_for(lambda: handoff.node_stats("a")["dropped_messages"] > dropped, timeout=10)
            assert not marker.exists()
        finally:
            intruder.close()


def test_the_intruder_probe_does_run_code_on_an_insecure_node(tmp_path):
    """Control for the tests above and below: on an --insecure node the same probe runs its
    code, so their refusals mean something; the node warned about it when it started."""
    with LocalCluster(1, names=["open"], insecure=True) as cluster:
        marker = tmp_path / "ran"
        intruder = Intruder(cluster["open"].address)
        try:
            intruder.hello_and_dispatch(marker)
            assert wait_for(marker.exists, timeout=10)
            assert "INSECURE" in cluster["open"].log()
        finally:
            intruder.close()


# ---- loopback without flags: the per-user key ---------------------------------------------------
@pytest.fixture
def default_node(private_runtime_dir):
    """Node a started with no key and no --insecure, as a user would, and this process as a
    driver with no flags either: both take the user's key from the runtime directory."""
    handoff.stop()
    with LocalCluster(1, names=["a"], resources={"cpu": 2}) as cluster:
        cluster.connect()  # handoff.start(join=...) with no key file and no --insecure
        yield cluster["a"]


def test_same_user_processes_join_with_no_flags_over_curve(default_node, private_runtime_dir):
    assert wait_for(lambda: set(handoff.discover_nodes()) == {"a", "driver"})
    dag = DAG().add_function(Function(id="x", code=lambda: 41, node="a"))
    dag.add_function(Function(id="y", code=lambda v: v + 1, args=["x"], node="a"))
    assert handoff.execute(dag).results["y"] == 42
    stats = handoff.node_stats("a")
    assert stats["curve"] == "user key"
    assert handoff.node_stats()["curve"] == "user key"
    key = os.path.join(private_runtime_dir, "handoff", USER_KEY_FILE)
    assert oct(os.stat(key).st_mode & 0o777) == oct(0o600)
    # the wire is CURVE: a plain ZeroMQ peer does not get past the handshake
    intruder = Intruder(default_node.address)
    try:
        intruder.send(Hello("plain", intruder.address, 1, {"cpu": 1.0}))
        assert wait_for(lambda: handoff.node_stats("a")["rejected_connections"] > 0, timeout=10)
    finally:
        intruder.close()
    assert "plain" not in handoff.node_stats("a")["members"]


def test_another_user_cannot_join(default_node, tmp_path):
    """Another user has another runtime directory, so another key: its node cannot join."""
    other = tmp_path / "other-user"
    other.mkdir(mode=0o700)
    stranger = start_node("stranger", "cpu=1", join=default_node.address, wait=False,
                          extra=["--join-timeout", "3"], env={"XDG_RUNTIME_DIR": str(other)})
    try:
        assert exit_code(stranger) != 0
        assert "could not join" in output(stranger)
    finally:
        stranger.stop()
    assert (other / "handoff" / USER_KEY_FILE).exists()  # it did use a key: its own
    assert "stranger" not in handoff.node_stats("a")["members"]


@pytest.mark.parametrize("kind", ["no curve", "another user's key"])
def test_another_user_cannot_run_code(default_node, kind, tmp_path):
    """The probe that runs code on an --insecure node (the control above) runs nothing here."""
    marker = tmp_path / "ran"
    setup = None
    if kind == "another user's key":
        public, secret = user_key(str(tmp_path / "other-user"))

        def setup(sock: zmq.Socket) -> None:
            sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, public
    rejected = handoff.node_stats("a")["rejected_connections"]
    intruder = Intruder(default_node.address, setup)
    try:
        intruder.hello_and_dispatch(marker)
        assert wait_for(lambda: handoff.node_stats("a")["rejected_connections"] > rejected, timeout=10)
        assert not intruder.inbox.poll(0), "node a answered a stranger"
    finally:
        intruder.close()
    stats = handoff.node_stats("a")
    assert not marker.exists()
    assert "intruder" not in stats["members"]
    assert stats["pool"]["completed"] == 0


# ---- the loopback rule ---------------------------------------------------------------------------
def open_node(name: str, extra: list[str] | None = None, wait: bool = True):
    # the later --listen wins over the loopback one start_node passes
    port = free_port()
    return start_node(name, "cpu=1", extra=["--listen", f"tcp://0.0.0.0:{port}", *(extra or [])],
                      wait=wait)


def test_open_address_without_a_key_is_refused():
    node = open_node("open", wait=False)
    try:
        assert exit_code(node) != 0
        out = output(node)
        assert "refusing to listen on tcp://0.0.0.0:" in out
        assert "python -m handoff.keygen" in out and "--insecure" in out
    finally:
        node.stop()


def test_open_address_with_insecure_starts_and_warns():
    node = open_node("open", ["--insecure"])
    try:
        assert node.proc.poll() is None
        assert wait_for(lambda: "INSECURE" in "".join(node.log), timeout=10)
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

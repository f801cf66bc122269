"""A stranger flooding an open node with hellos cannot exhaust its sockets, its log or its joins."""

from __future__ import annotations

import threading
import time

import psutil
import pytest
import zmq

import handoff
from handoff import DAG, Function
from handoff.protocol import encode
from handoff.protocol.messages import VERSION, Hello
from nodes import start_node, wait_for

pytestmark = [pytest.mark.timeout(180), pytest.mark.chaos]

FD_BOUND = 40  # descriptors a node may gain over its idle count while flooded
LOG_BOUND = 60  # log lines a flood may cause


def made_up_hello(i: int, version: int = VERSION) -> Hello:
    """A hello naming a fresh node at an address nobody listens on (the node must not dial it)."""
    address = f"tcp://10.{(i >> 8) & 255}.{i & 255}.1:{1000 + i % 60000}"
    return Hello(f"stranger-{i}", address, i + 1, {"cpu": 1.0}, version)


class Flood:
    """One unauthenticated DEALER sending ``count`` hellos as fast as it can, while a sampler
    records the node's open descriptors."""

    def __init__(self, node, count: int, version: int):
        self.node, self.count, self.version = node, count, version
        self.max_fds = 0
        self.sent = 0
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        proc = psutil.Process(self.node.pid)
        while not self._done.is_set():
            self.max_fds = max(self.max_fds, proc.num_fds())
            self._done.wait(0.02)  # sampling period, not a wait for an outcome

    def run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.sndhwm = 0
        sock.connect(self.node.address)
        self._sampler.start()
        try:
            for i in range(self.count):
                sock.send_multipart(encode(made_up_hello(i, self.version)))
                self.sent += 1
        finally:
            sock.close(0)
            ctx.term()

    def stop_sampling(self) -> None:
        self._done.set()
        self._sampler.join(5)


def pinned_to(name: str) -> DAG:
    dag = DAG(f"on-{name}")
    dag.add_function(Function(id="x", code=lambda: 6 * 7, node=name))
    return dag


@pytest.fixture
def open_node():
    handoff.stop()
    node = start_node("n1", "cpu=2", workers=1, extra=["--insecure"])
    try:
        yield node
    finally:
        handoff.stop()
        node.stop()


def _flood_while_joining(node, count: int, version: int) -> tuple[Flood, int]:
    idle_fds = psutil.Process(node.pid).num_fds()
    log_before = len(node.log)
    flood = Flood(node, count, version)
    flooder = threading.Thread(target=flood.run)
    flooder.start()
    try:
        assert wait_for(lambda: flood.sent > count // 10, timeout=30)
        # a real driver joins while the flood is on, and runs a function on the flooded node
        handoff.start(name="driver", join=node.address, resources={"cpu": 0}, workers=1,
                      insecure=True, join_timeout=20)
        assert handoff.execute(pinned_to("n1"), timeout=30).results["x"] == 42
        flooder.join(60)
        assert flood.sent == count
        # the node has read the whole flood once it still answers in order after it
        assert handoff.execute(pinned_to("n1"), timeout=30).results["x"] == 42
    finally:
        flooder.join(60)
        flood.stop_sampling()
    assert flood.max_fds <= idle_fds + FD_BOUND, (idle_fds, flood.max_fds)
    after = psutil.Process(node.pid).num_fds()
    assert after <= idle_fds + FD_BOUND
    lines = len(node.log) - log_before
    assert lines <= LOG_BOUND, "".join(node.log[-20:])
    print(f"\n{count} hellos (version {version}): {idle_fds} descriptors idle, at most "
          f"{flood.max_fds} during the flood, {after} after; {lines} log lines")
    return flood, idle_fds


def test_hellos_with_made_up_addresses_do_not_exhaust_descriptors(open_node):
    _flood_while_joining(open_node, 3000, VERSION)
    stats = handoff.node_stats("n1")
    strangers = [m for m in stats["members"] if m.startswith("stranger-")]
    assert len(strangers) <= 1  # one connection speaks for one node at most
    assert stats["blocked_peers"] >= 1
    # a later join works too
    n2 = start_node("n2", "cpu=1", workers=1, join=open_node.address, extra=["--insecure"])
    try:
        assert wait_for(lambda: "n2" in handoff.discover_nodes())
    finally:
        n2.stop()


def test_wrong_version_hellos_are_refused_without_dialing_anyone(open_node):
    _flood_while_joining(open_node, 20000, VERSION + 1)
    stats = handoff.node_stats("n1")
    assert not [m for m in stats["members"] if m.startswith("stranger-")]
    # the refused sender was blocked after a few refusals: the rest cost one counter each
    assert stats["dropped_messages"] >= 20000 - 100


def test_hellos_from_many_connections_are_capped_and_refused_on_their_own_connection(open_node):
    """100 connections, one made-up hello each: at most MAX_PENDING_JOINS are admitted while
    none of them has said anything else; the rest get a "busy" refusal back on the connection."""
    from handoff.node.cluster.peers import BUSY, MAX_PENDING_JOINS
    from handoff.protocol import decode

    handoff.start(name="driver", join=open_node.address, resources={"cpu": 0}, workers=1,
                  insecure=True)
    ctx = zmq.Context()
    socks = []
    try:
        for i in range(100):
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.connect(open_node.address)
            sock.send_multipart(encode(made_up_hello(50_000 + i)))
            socks.append(sock)
        refusals = []

        def read_refusals() -> int:
            for sock in socks:
                while sock.poll(0):
                    refusals.append(decode(sock.recv_multipart(), pickles=False))
            return len(refusals)

        assert wait_for(lambda: read_refusals() >= 100 - MAX_PENDING_JOINS, timeout=30)
        assert {(r.name, r.reason) for r in refusals} == {("n1", BUSY)}
        members = handoff.node_stats("n1")["members"]
        assert len([m for m in members if m.startswith("stranger-")]) <= MAX_PENDING_JOINS
        assert handoff.execute(pinned_to("n1"), timeout=30).results["x"] == 42
    finally:
        for sock in socks:
            sock.close(0)
        ctx.term()

"""The transport's defences against bad input, on real sockets in this process (no node).

Peers reach the ROUTER over loopback TCP because the size limit (ZMQ_MAXMSGSIZE) is enforced
by the ZMTP decoder, which inproc does not use.
"""

from __future__ import annotations

import logging
import pickle
import random
import time

import msgpack
import pytest
import zmq

from handoff.protocol import VERSION, encode
from handoff.protocol.messages import Fetch, Gossip, Hello, Refuse
from handoff.protocol.rows import MemberRow, MemberStatus
from handoff.protocol.rows import FetchRow
from handoff.transport import Transport
from handoff.transport.sockets import BLOCK_AFTER, LOG_BURST, LOG_FIRST, DropLog

pytestmark = pytest.mark.timeout(60)

UNPICKLED: list = []


class Tripwire:
    """Records that it was unpickled: a stand-in for code a forged message would run."""

    def __reduce__(self):
        return (UNPICKLED.append, ("unpickled",))


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def transport(ctx):
    t = Transport(ctx)
    t.bind("tcp://127.0.0.1:0")
    yield t
    t.close()


def dealer(ctx, address: str, identity: bytes | None = None) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    if identity is not None:
        sock.routing_id = identity
    sock.connect(address)
    return sock


def drain(t: Transport, until, timeout: float = 5.0, sock=None, accept_hellos: bool = True) -> list:
    """Messages the transport delivers until ``until(delivered)`` holds or time runs out."""
    sock = sock if sock is not None else t.router
    got: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(got):
        if sock.poll(20):
            for identity, msg, _ in t.receive(sock):
                if isinstance(msg, Hello) and accept_hellos:
                    t.greet(identity)  # what the node does when it accepts a hello
                got.append((identity, msg))
    return got


def settle(t: Transport, seconds: float = 0.3, sock=None, accept_hellos: bool = True) -> list:
    """Everything delivered within ``seconds`` (to show that nothing is)."""
    return drain(t, lambda got: False, seconds, sock, accept_hellos)


def hello(name: str = "p") -> list:
    return encode(Hello(name, "tcp://127.0.0.1:1", 1, {"cpu": 1.0}))


def header(*fields) -> bytes:
    return msgpack.packb(list(fields), use_bin_type=True)


GARBAGE = [
    [b""],
    [b"\xc1"],
    [b"\x00" * 100],
    [header(1, 2, 3)],
    [header(VERSION, "no-such-op", [], [])],
    [header(VERSION + 1, "hello", ["p", "tcp://127.0.0.1:1", 1, {}, VERSION], [])],
    [header(VERSION, "hello", [1, 2, 3, 4, 5], [])],
    [header(VERSION, "value", ["p", 1, None], [2]), b"only one"],
    [header(VERSION, "gossip", ["p", []], [1]), b"extra"],
    [header(VERSION, "hello", "not a list", [])],
    [header(VERSION, "gossip", ["p", []], [-1])],
    [header(VERSION, "gossip", ["p", []], []), b"trailing"],
]


def test_garbage_is_dropped_and_counted_and_the_same_peer_can_still_say_hello(ctx, transport):
    sock = dealer(ctx, transport.address)
    for frames in GARBAGE:
        sock.send_multipart(frames)
    assert settle(transport) == []
    assert transport.dropped == len(GARBAGE)
    assert transport.blocked_peers == 0

    sock.send_multipart(hello("p"))
    got = drain(transport, lambda got: got)
    assert [m for _, m in got] == [Hello("p", "tcp://127.0.0.1:1", 1, {"cpu": 1.0})]


def test_random_bytes_and_random_multipart_never_reach_the_node(ctx, transport):
    rng = random.Random(1)
    sent = 0
    # all kept open: a DEALER that is closed (or collected) drops what it has not sent yet
    socks = [dealer(ctx, transport.address) for _ in range(10)]
    for sock in socks:
        for _ in range(BLOCK_AFTER - 1):  # stay under the block: every one is decoded
            parts = [rng.randbytes(rng.randrange(0, 300)) for _ in range(rng.randrange(1, 4))]
            sock.send_multipart(parts)
            sent += 1
    drain(transport, lambda got: transport.dropped >= sent)
    assert settle(transport) == []
    assert transport.dropped == sent
    assert transport.blocked_peers == 0


def test_only_hello_may_come_first_on_a_connection(ctx, transport):
    sock = dealer(ctx, transport.address)
    sock.send_multipart(encode(Gossip("p", [])))
    assert settle(transport) == []
    assert transport.dropped == 1

    sock.send_multipart(hello("p"))
    sock.send_multipart(encode(Gossip("p", [])))
    got = drain(transport, lambda got: len(got) == 2)
    assert [type(m) for _, m in got] == [Hello, Gossip]

    # refusals come back on our own DEALER (Transport.read_link), never on the ROUTER
    other = dealer(ctx, transport.address)
    other.send_multipart(encode(Refuse("q", "name taken")))
    assert settle(transport) == []
    assert transport.dropped == 2


def test_a_pickled_value_is_not_loaded_before_hello(ctx, transport):
    UNPICKLED.clear()
    evil = msgpack.ExtType(1, pickle.dumps(Tripwire()))
    forged = header(VERSION, "hello", ["p", "tcp://127.0.0.1:1", 1, {"cpu": evil}, VERSION], [])
    sock = dealer(ctx, transport.address)
    sock.send_multipart([forged])
    sock.send_multipart([header(VERSION, "clear", ["p", evil], [])])
    assert settle(transport) == []
    assert transport.dropped == 2
    assert UNPICKLED == []

    # after its hello, a peer's tuple keys (pickled ext values) decode as usual
    sock.send_multipart(hello("p"))
    sock.send_multipart(encode(Fetch("p", [FetchRow(1, ("dag", 1), ("fn", 2), "p", -1)])))
    got = drain(transport, lambda got: len(got) == 2)
    assert got[1][1].rows[0].key == ("fn", 2)


def test_a_peer_is_ignored_for_good_after_too_many_bad_messages(ctx, transport, caplog):
    caplog.set_level(logging.WARNING, logger="handoff.transport")
    bad = dealer(ctx, transport.address, b"bad-peer")
    for _ in range(BLOCK_AFTER):
        bad.send(b"\xc1garbage")
    drain(transport, lambda got: transport.blocked_peers == 1)
    assert transport.blocked_peers == 1

    for _ in range(50):
        bad.send_multipart(hello("bad"))
        bad.send(b"\xc1garbage")
    assert settle(transport) == []
    assert transport.dropped == BLOCK_AFTER + 100
    assert transport.blocked_peers == 1
    blocked_lines = [r for r in caplog.records if "for good" in r.getMessage()]
    assert len(blocked_lines) == 1
    assert b"bad-peer".hex() in blocked_lines[0].getMessage()


def test_a_good_peer_is_served_while_another_sends_garbage(ctx, transport):
    bad = dealer(ctx, transport.address, b"bad-peer")
    good = dealer(ctx, transport.address, b"good-peer")
    good.send_multipart(hello("good"))
    for i in range(3 * BLOCK_AFTER):
        bad.send(random.Random(i).randbytes(64))
        if i % 10 == 0:
            good.send_multipart(encode(Gossip("good", [])))
    got = drain(transport, lambda got: len(got) == 1 + 6)
    assert {identity for identity, _ in got} == {b"good-peer"}
    assert [type(m) for _, m in got] == [Hello] + [Gossip] * 6
    drain(transport, lambda got: transport.blocked_peers == 1)
    assert transport.blocked_peers == 1


def padded_row(nbytes: int) -> MemberRow:
    """A gossip row about ``nbytes`` long on the wire."""
    return MemberRow("x", "x" * nbytes, 1, 0, MemberStatus.ALIVE, {}, 0, {})


def test_an_oversized_message_is_not_delivered(ctx):
    t = Transport(ctx, max_message=4096)
    t.bind("tcp://127.0.0.1:0")
    try:
        assert t.router.getsockopt(zmq.MAXMSGSIZE) == 4096
        big = dealer(ctx, t.address)
        big.send_multipart(hello("big"))
        assert [type(m) for _, m in drain(t, lambda got: got)] == [Hello]
        big.send_multipart(encode(Gossip("big", [padded_row(8000)])))
        assert settle(t, 0.5) == []

        small = dealer(ctx, t.address)  # the node keeps serving everyone else
        small.send_multipart(hello("small"))
        small.send_multipart(encode(Gossip("small", [padded_row(2000)])))
        got = drain(t, lambda got: len(got) == 2)
        assert [type(m) for _, m in got] == [Hello, Gossip]
    finally:
        t.close()


def test_dealers_to_peers_limit_what_they_would_receive(ctx, transport):
    transport.connect("peer", "tcp://127.0.0.1:1")
    sock = transport._dealers["peer"]
    assert sock.getsockopt(zmq.MAXMSGSIZE) == transport.max_message
    assert sock.rcvhwm > 0


def test_an_address_zeromq_rejects_is_logged_once_and_left_unconnected(transport, caplog):
    caplog.set_level(logging.WARNING, logger="handoff.transport")
    for _ in range(3):  # what every gossip round would do for a peer that named such an address
        assert transport.connect("m", "garbage") is False
    assert not transport.connected("m")
    assert transport.send("m", Gossip("me", [])) is False
    assert len([r for r in caplog.records if "cannot connect" in r.getMessage()]) == 1
    assert transport.connect("m", "tcp://127.0.0.1:1") is True
    assert transport.connected("m")


def test_the_node_can_report_messages_that_break_its_own_rules(ctx, transport):
    sock = dealer(ctx, transport.address, b"impostor")
    sock.send_multipart(hello("p"))
    (identity, _), = drain(transport, lambda got: got)
    for _ in range(BLOCK_AFTER):  # e.g. messages whose sender is not the name it said hello as
        transport.reject(identity, "Gossip from an unknown peer")
    assert transport.blocked_peers == 1
    sock.send_multipart(encode(Gossip("p", [])))
    assert settle(transport) == []
    assert transport.dropped == BLOCK_AFTER + 1


def test_drop_warnings_do_not_flood_the_log(ctx, caplog):
    caplog.set_level(logging.WARNING, logger="handoff.transport")
    t = Transport(ctx, block_after=10**9)
    t.bind("tcp://127.0.0.1:0")
    socks = []
    try:
        one = dealer(ctx, t.address)
        for _ in range(1000):
            one.send(b"\xc1")
        drain(t, lambda got: t.dropped == 1000)
        assert t.dropped == 1000
        assert len(caplog.records) == LOG_FIRST

        for _ in range(3 * LOG_BURST):
            socks.append(dealer(ctx, t.address))
            socks[-1].send(b"\xc1")
        drain(t, lambda got: t.dropped == 1000 + 3 * LOG_BURST)
        assert t.dropped == 1000 + 3 * LOG_BURST
        assert len(caplog.records) == LOG_BURST
    finally:
        t.close()


def test_drop_log_summarizes_what_it_did_not_log(caplog):
    caplog.set_level(logging.WARNING, logger="handoff.transport")
    drops = DropLog(first=2, burst=3, period=3600)
    for count in range(1, 11):
        drops.note(count, "drop %d", count)
    assert [r.getMessage() for r in caplog.records] == ["drop 1", "drop 2"]
    drops.period = 0.0  # the period is over: the next drop first sums up the quiet ones
    drops.note(1, "drop again")
    assert "8 more bad messages dropped" in caplog.records[2].getMessage()
    assert caplog.records[3].getMessage() == "drop again"


def test_a_hello_the_node_does_not_accept_opens_nothing(ctx, transport):
    sock = dealer(ctx, transport.address)
    sock.send_multipart(hello("p"))
    assert [type(m) for _, m in settle(transport, accept_hellos=False)] == [Hello]
    sock.send_multipart(encode(Gossip("p", [])))
    assert settle(transport) == []  # still not greeted: only hello or refuse may come


def read_links(t: Transport, until, timeout: float = 5.0) -> list:
    """LinkEvents from the transport's DEALERs and monitors until ``until(events)`` holds."""
    poller = zmq.Poller()
    for sock in t.links():
        poller.register(sock, zmq.POLLIN)
    events: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(events):
        for sock, _ in poller.poll(20):
            events.extend(t.read_link(sock))
    return events


def test_a_refusal_goes_back_on_the_connection_the_hello_came_in_on(ctx, transport):
    joiner = Transport(ctx)
    joiner.bind("tcp://127.0.0.1:0")
    try:
        assert joiner.connect("@seed", transport.address)
        joiner.send("@seed", Hello("j", "tcp://10.255.255.1:9", 1, {}, VERSION + 1))
        ((identity, msg),) = drain(transport, lambda got: got, accept_hellos=False)
        transport.reply(identity, Refuse("seed", "wire version"))
        (event,) = read_links(joiner, lambda events: events)
        assert (event.peer, event.address, event.refusal) == (
            "@seed", transport.address, Refuse("seed", "wire version"))
        assert not transport.connected("j")  # the seed opened no connection of its own
        transport.reply(b"no such connection", Refuse("seed", "x"))  # dropped, not raised
    finally:
        joiner.close()


def test_a_dealer_reads_only_refusals(ctx, transport):
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    try:
        transport.connect("p", f"tcp://127.0.0.1:{port}")
        transport.send("p", Gossip("me", []))
        identity, *_ = router.recv_multipart()
        router.send_multipart([identity, *encode(Gossip("p", []))])
        router.send_multipart([identity, b"garbage"])
        router.send_multipart([identity, *encode(Refuse("p", "no"))])
        events = read_links(transport, lambda events: events)
        assert [e.refusal for e in events] == [Refuse("p", "no")]
        assert transport.dropped == 2
    finally:
        router.close(0)


def test_connect_and_disconnect_change_the_generation_of_polled_links(transport):
    before = transport.generation
    transport.connect("a", "tcp://127.0.0.1:1")
    assert len(transport.links()) == 1 and transport.generation > before
    transport.disconnect("a")
    assert transport.links() == [] and not transport.has_link(object())


def test_a_watched_link_reports_a_handshake_with_the_wrong_key(ctx):
    from handoff.security import Curve

    key_a, key_b = zmq.curve_keypair(), zmq.curve_keypair()
    server = Transport(ctx, Curve(*key_a))
    server.curve.start(ctx)
    client = Transport(ctx, Curve(*key_b))
    try:
        server.bind("tcp://127.0.0.1:0")
        assert client.connect("@seed", server.address, watch=True)
        assert len(client.links()) == 2  # the DEALER and its monitor
        client.send("@seed", Hello("j", "tcp://127.0.0.1:9", 1, {}))
        events = read_links(client, lambda events: events)
        assert events and events[0].handshake_failed and events[0].address == server.address
        assert settle(server) == []  # nothing got through
    finally:
        client.close()
        server.close()
        server.curve.stop()

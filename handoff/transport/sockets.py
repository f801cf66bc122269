"""The only code that knows ZeroMQ socket types, identity frames and multipart layout.

A node binds one ROUTER for peers and drivers and connects one DEALER to each peer it sends
to: every message comes in on the ROUTER, every one sent leaves on a DEALER. The one
exception is a refusal: it goes back on the connection the refused hello came in on (the
ROUTER identity), so a node never connects to an address that a stranger named; a DEALER
reads only refusals. (A node's own worker processes use Unix socket pairs:
handoff.node.execution.pipes.)

Bad input never reaches the node: a message that does not decode is logged (rate-limited)
and dropped, and so is anything but a hello on a peer connection that has not said hello
yet. A ROUTER identity cannot be disconnected, so one that sends BLOCK_AFTER bad messages is
ignored for good.

A DEALER made with ``watch=True`` (a join link) is monitored: a failed CURVE handshake is
reported by :meth:`Transport.read_link`, so a join with the wrong key says so.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Iterator

import zmq

from handoff.errors import ProtocolError
from handoff.protocol import decode, encode
from handoff.protocol.messages import Hello, Message, Refuse, StatusQuery

log = logging.getLogger("handoff.transport")

__all__ = ["Transport", "DropLog", "LinkEvent", "MAX_MESSAGE", "DRAIN_BATCH", "BLOCK_AFTER"]

MAX_MESSAGE = 4 * 1024**3  # a peer's single frame may not be larger (ZMQ_MAXMSGSIZE)
DRAIN_BATCH = 256  # messages read from one socket before the loop looks at the others
HWM = 0  # no silent drops: the loop applies back-pressure itself
DEALER_RCVHWM = 16  # nothing is ever read from a DEALER: a peer that sends to one fills only this
BLOCK_AFTER = 20  # bad messages from one peer identity before everything from it is ignored
# what a peer connection may send before its hello: a status client never says hello
FIRST_MESSAGES = (Hello, StatusQuery)
TRACKED = 4096  # identities whose bad messages are counted; the longest quiet is forgotten first
BLOCKED_MAX = 65536  # blocked identities remembered; the oldest is forgotten first
LOG_FIRST = 3  # drops logged one by one per identity ...
LOG_BURST = 20  # ... and at most this many in all per LOG_PERIOD; a summary covers the rest
LOG_PERIOD = 60.0
HANDSHAKE_FAILED = (  # the other side would not complete the CURVE handshake with our key
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


@dataclass(frozen=True, slots=True)
class LinkEvent:
    """Something a DEALER link heard: a refusal, or (join links) a failed handshake."""

    peer: str  # the link's name
    address: str
    refusal: Refuse | None = None
    handshake_failed: int = 0  # the zmq.EVENT_HANDSHAKE_FAILED_* value, if that happened


class DropLog:
    """Warnings about bad input that cannot flood the log: the first few per identity, at
    most ``burst`` per ``period`` in all, and then one line that counts the rest."""

    def __init__(self, what: str = "bad messages dropped", first: int = LOG_FIRST,
                 burst: int = LOG_BURST, period: float = LOG_PERIOD):
        self.what = what
        self.first, self.burst, self.period = first, burst, period
        self._since = time.monotonic()
        self._logged = 0
        self._quiet = 0  # notes not logged since _since

    def note(self, count: int, text: str, *args: Any) -> None:
        """One event; ``count`` is how many its sender has had so far (0: always eligible)."""
        now = time.monotonic()
        if now - self._since >= self.period:
            if self._quiet:
                log.warning("%d more %s in the last %.0f s, not logged one by one",
                            self._quiet, self.what, now - self._since)
            self._since, self._logged, self._quiet = now, 0, 0
        if count <= self.first and self._logged < self.burst:
            self._logged += 1
            log.warning(text, *args)
        else:
            self._quiet += 1


class Transport:
    def __init__(self, ctx: zmq.Context, curve: Any = None, max_message: int = MAX_MESSAGE,
                 block_after: int = BLOCK_AFTER):
        self.ctx = ctx
        self.curve = curve  # handoff.security.Curve or None
        self.max_message = max_message
        self.block_after = block_after
        self.router: zmq.Socket | None = None
        self.address = ""
        self._dealers: dict[str, zmq.Socket] = {}
        self._links: dict[zmq.Socket, tuple[str, str]] = {}  # DEALER or monitor -> (peer, address)
        self._monitors: dict[str, zmq.Socket] = {}  # peer -> monitor of its watched DEALER
        self.generation = 0  # changes whenever the set of sockets to poll (links()) does
        self._monitor_seq = 0
        self.dropped = 0  # messages dropped: undecodable, before hello, or from a blocked peer
        self.blocked_peers = 0  # peer identities ignored for good
        # peer identities whose hello decoded: one per connection, as peers.py keeps one name
        self._greeted: set[bytes] = set()
        self._bad: dict[bytes, int] = {}  # peer identity -> bad messages, least recent first
        self._blocked: dict[bytes, None] = {}  # insertion-ordered, so the oldest goes first
        self._drop_log = DropLog()
        self._block_log = DropLog("peer connections blocked")  # a budget of its own
        self._unusable: dict[Any, None] = {}  # addresses connect() failed on, logged once

    # ---- set-up ---------------------------------------------------------------------
    def bind(self, listen: str) -> str:
        """Bind the peer ROUTER; ``tcp://host:0`` picks a free port. Returns the address."""
        sock = self.ctx.socket(zmq.ROUTER)
        sock.linger = 0
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message)
        sock.rcvhwm = HWM
        sock.sndhwm = HWM
        if self.curve is not None:
            self.curve.server(sock)
        host, _, port = listen.rpartition(":")
        if port in ("0", "*"):
            port_no = sock.bind_to_random_port(host, min_port=20000, max_port=65000, max_tries=200)
            listen = f"{host}:{port_no}"
        else:
            sock.bind(listen)
        self.router = sock
        self.address = listen
        return listen

    def connect(self, peer: str, address: str, watch: bool = False) -> bool:
        """A DEALER to ``peer`` (replacing any old one). False if ZeroMQ rejects ``address``:
        logged once per address, and ``peer`` stays unconnected. ``watch``: report a failed
        CURVE handshake on it (see read_link)."""
        self.disconnect(peer)
        sock = self.ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.sndhwm = HWM
        sock.rcvhwm = DEALER_RCVHWM
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message)
        sock.setsockopt(zmq.IMMEDIATE, 0)
        if self.curve is not None:
            self.curve.client(sock)
        try:
            sock.connect(address)
        except (zmq.ZMQError, TypeError, ValueError) as exc:
            sock.close(0)
            if address not in self._unusable:
                self._unusable[address] = None
                if len(self._unusable) > TRACKED:
                    del self._unusable[next(iter(self._unusable))]
                log.warning("cannot connect to %r at %r: %s", peer, address, exc)
            return False
        self._dealers[peer] = sock
        self._links[sock] = (peer, address)
        if watch and self.curve is not None:
            # a unique address: pyzmq's default names it by the socket's fd, which a closed
            # link's lingering endpoint may still hold
            self._monitor_seq += 1
            monitor = sock.get_monitor_socket(
                HANDSHAKE_FAILED, f"inproc://handoff-link-{id(self)}-{self._monitor_seq}")
            self._monitors[peer] = monitor
            self._links[monitor] = (peer, address)
        self.generation += 1
        return True

    def disconnect(self, peer: str) -> None:
        sock = self._dealers.pop(peer, None)
        if sock is None:
            return
        self._links.pop(sock, None)
        monitor = self._monitors.pop(peer, None)
        if monitor is not None:
            self._links.pop(monitor, None)
            sock.disable_monitor()
            monitor.close(0)
        sock.close(0)
        self.generation += 1

    def links(self) -> list[zmq.Socket]:
        """The DEALERs and monitors the loop polls (for read_link); see ``generation``."""
        return list(self._links)

    def has_link(self, sock: zmq.Socket) -> bool:
        return sock in self._links

    def read_link(self, sock: zmq.Socket) -> Iterator[LinkEvent]:
        """Drain a DEALER or its monitor: refusals and failed handshakes. Anything else a
        peer sends to a DEALER is dropped and counted."""
        peer, address = self._links.get(sock, ("", ""))
        is_monitor = self._monitors.get(peer) is sock
        for _ in range(DRAIN_BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if is_monitor:
                event = int.from_bytes(frames[0][:2], "little")
                if event & HANDSHAKE_FAILED:
                    yield LinkEvent(peer, address, handshake_failed=event)
                continue
            try:
                msg = decode(frames, pickles=False)
            except Exception:  # a reply link is not worth more than a count
                msg = None
            if isinstance(msg, Refuse):
                yield LinkEvent(peer, address, refusal=msg)
            else:
                self.dropped += 1

    def connected(self, peer: str) -> bool:
        return peer in self._dealers

    # ---- traffic --------------------------------------------------------------------
    def send(self, peer: str, msg: Message) -> bool:
        sock = self._dealers.get(peer)
        if sock is None:
            return False
        sock.send_multipart(encode(msg), copy=False)
        return True

    def reply(self, identity: bytes, msg: Message) -> None:
        """A refusal (or a status client's answer) back on the connection ``identity`` came
        in on, never a new connection to an address the peer named. Dropped if that
        connection is gone."""
        if self.router is None:
            return  # not bound: no connection came in
        try:
            self.router.send_multipart([identity, *encode(msg)], zmq.NOBLOCK, copy=False)
        except zmq.ZMQError:
            pass

    def receive(self, sock: zmq.Socket) -> Iterator[tuple[bytes, Message, Any]]:
        """Drain up to DRAIN_BATCH messages: (identity, message, first frame). Bad ones are
        logged and dropped here, so a peer's garbage never reaches the node."""
        for _ in range(DRAIN_BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity = frames[0].bytes
            if identity in self._blocked:
                self.dropped += 1
                continue
            greeted = identity in self._greeted
            try:
                if len(frames) < 2:
                    raise ProtocolError("no header frame")
                msg = decode(frames[1:], pickles=greeted)
                if not greeted and not isinstance(msg, FIRST_MESSAGES):
                    raise ProtocolError(f"{msg.op} before an accepted hello")
            except Exception as exc:  # ProtocolError, or anything the decoder did not foresee
                reason = str(exc) if isinstance(exc, ProtocolError) else f"undecodable: {exc!r}"
                self.reject(identity, reason)
                continue
            yield identity, msg, frames[1]

    def greet(self, identity: bytes) -> None:
        """The node accepted this connection's hello: its messages may now carry pickles.
        (The generator above yields the hello before it decodes the next message, so the
        node's answer always comes first.)"""
        self._greeted.add(identity)

    def reject(self, identity: bytes, reason: str) -> None:
        """Drop a peer connection's message: counted, logged (rate-limited), and after
        ``block_after`` of them everything more from ``identity`` is ignored. Public so the
        node can report messages that decode but break its own rules (unknown sender)."""
        self.dropped += 1
        count = self._bad.pop(identity, 0) + 1  # re-inserted last: most recent
        if count < self.block_after:
            self._bad[identity] = count
            if len(self._bad) > TRACKED:
                del self._bad[next(iter(self._bad))]
            self._drop_log.note(count, "dropped a message from peer connection %s: %s",
                                _show(identity), reason)
            return
        self._greeted.discard(identity)
        self._blocked[identity] = None
        if len(self._blocked) > BLOCKED_MAX:
            del self._blocked[next(iter(self._blocked))]
        self.blocked_peers += 1
        self._block_log.note(0, "ignoring peer connection %s for good after %d bad messages "
                             "(last: %s)", _show(identity), count, reason)

    def close(self) -> None:
        for peer in list(self._dealers):
            self.disconnect(peer)
        for sock in (self.router,):
            if sock is not None:
                sock.close(0)


def _show(identity: bytes) -> str:
    # a ZMTP 1.0 or 2.0 peer picks its own identity, up to 255 bytes of anything
    text = identity.hex()
    return text if len(text) <= 16 else f"{text[:16]}..."

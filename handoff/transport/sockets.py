"""The only code that knows ZeroMQ socket types, identity frames and multipart layout.

A node binds one ROUTER for peers and drivers, connects one DEALER to each peer it sends
to, and binds an ipc ROUTER for its own worker processes. Every received message comes in
on a ROUTER; every sent one leaves on a DEALER (to a peer) or on the worker ROUTER.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from typing import Any, Iterator

import zmq

from handoff.errors import ProtocolError
from handoff.protocol import decode, encode
from handoff.protocol.messages import Message

log = logging.getLogger("handoff.transport")

__all__ = ["Transport", "MAX_MESSAGE", "DRAIN_BATCH"]

MAX_MESSAGE = 4 * 1024**3  # a peer's single message may not be larger (ZMQ_MAXMSGSIZE)
DRAIN_BATCH = 256  # messages read from one socket before the loop looks at the others
HWM = 0  # no silent drops: the loop applies back-pressure itself


class Transport:
    def __init__(self, ctx: zmq.Context, curve: Any = None):
        self.ctx = ctx
        self.curve = curve  # handoff.security.Curve or None
        self.router: zmq.Socket | None = None
        self.workers: zmq.Socket | None = None
        self.address = ""
        self.worker_address = ""
        self._dealers: dict[str, zmq.Socket] = {}
        self.dropped = 0

    # ---- set-up ---------------------------------------------------------------------
    def bind(self, listen: str) -> str:
        """Bind the peer ROUTER; ``tcp://host:0`` picks a free port. Returns the address."""
        sock = self.ctx.socket(zmq.ROUTER)
        sock.linger = 0
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
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

    def bind_workers(self) -> str:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.linger = 0
        sock.rcvhwm = HWM
        sock.sndhwm = HWM
        path = os.path.join(tempfile.gettempdir(), f"handoff-{os.getpid()}-{uuid.uuid4().hex[:8]}.ipc")
        addr = f"ipc://{path}"
        sock.bind(addr)
        self.workers = sock
        self.worker_address = addr
        return addr

    def connect(self, peer: str, address: str) -> None:
        old = self._dealers.pop(peer, None)
        if old is not None:
            old.close(0)
        sock = self.ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.sndhwm = HWM
        sock.setsockopt(zmq.IMMEDIATE, 0)
        if self.curve is not None:
            self.curve.client(sock)
        sock.connect(address)
        self._dealers[peer] = sock

    def disconnect(self, peer: str) -> None:
        sock = self._dealers.pop(peer, None)
        if sock is not None:
            sock.close(0)

    def connected(self, peer: str) -> bool:
        return peer in self._dealers

    # ---- traffic --------------------------------------------------------------------
    def send(self, peer: str, msg: Message) -> bool:
        sock = self._dealers.get(peer)
        if sock is None:
            return False
        sock.send_multipart(encode(msg), copy=False)
        return True

    def send_worker(self, identity: bytes, msg: Message) -> None:
        self.workers.send_multipart([identity, *encode(msg)], copy=False)

    def receive(self, sock: zmq.Socket) -> Iterator[tuple[bytes, Message, Any]]:
        """Drain up to DRAIN_BATCH messages: (identity, message, first frame). Bad ones are
        logged and dropped here, so a peer's garbage never reaches the node."""
        for _ in range(DRAIN_BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(frames) < 2:
                self.dropped += 1
                continue
            try:
                msg = decode(frames[1:])
            except ProtocolError as exc:
                self.dropped += 1
                log.warning("dropped a message: %s", exc)
                continue
            except Exception as exc:  # anything the decoder did not foresee is still garbage
                self.dropped += 1
                log.warning("dropped an undecodable message: %r", exc)
                continue
            yield frames[0].bytes, msg, frames[1]

    def close(self) -> None:
        for sock in self._dealers.values():
            sock.close(0)
        self._dealers.clear()
        for sock in (self.router, self.workers):
            if sock is not None:
                sock.close(0)
        if self.worker_address.startswith("ipc://"):
            try:
                os.unlink(self.worker_address[len("ipc://"):])
            except OSError:
                pass

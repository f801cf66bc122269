"""Fetching values peer to peer, as client and as server, and large values in chunks.

A value larger than ``CHUNK`` bytes that must cross hosts is sent as a stream of parts, each
acknowledged before the next but one leaves, so heartbeats and other messages on the same
connection wait for one part at most, never for the whole value.
"""

from __future__ import annotations

import logging
import mmap
import time
from collections import defaultdict
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Hashable

from handoff.errors import HandoffError, ResultNotFound
from handoff.node.data.values import blob_nbytes, expand_frames, has_shared, is_local
from handoff.node.data.search import ValueSearch
from handoff.protocol.messages import Fetch, Locate, Located, PartAck, Ping, Value, ValuePart
from handoff.protocol.rows import ErrorRow, FetchRow, Hook, Leaf, ValueRow

if TYPE_CHECKING:
    from handoff.node.server import Node

log = logging.getLogger("handoff.fetching")

CHUNK = 16 * 1024 * 1024  # bytes per part of a large value
FETCH_STALL = 30.0  # seconds without any progress before a request to a live peer fails
WINDOW = 8  # parts in flight per transfer: at most 128 MB ahead of a heartbeat

__all__ = ["Fetching", "ValueSearch", "CHUNK"]


@dataclass(slots=True)
class Outgoing:
    """A large value being sent in parts: ``(frame, offset, view)`` each, the next to send,
    and the sizes of the frames the receiver rebuilds."""

    parts: list[tuple[int, int, memoryview]]
    sizes: list[int]
    next: int = 0


@dataclass(slots=True)
class Incoming:
    """A large value being received from ``peer``: its frames, filled as parts arrive."""

    buffers: list[bytearray | mmap.mmap]
    peer: str
    received: int = 0


class Fetching:
    """Owns the fetches in flight (both ways), the per-peer batches and the chunked transfers."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.name = node.name
        self.store = node.store
        self.transport = node.transport
        self.requests = node.requests
        self.counters = node.counters
        self._inflight: dict[tuple, list[Callable]] = {}  # (peer, dag, key) -> callbacks
        self._fetch_box: dict[str, list] = defaultdict(list)  # peer -> fetches to send
        self._value_box: dict[str, list] = defaultdict(list)  # peer -> replies to send
        self._outgoing: dict[tuple[str, int], Outgoing] = {}  # by (peer, request)
        self._incoming: dict[int, Incoming] = {}  # by request
        self._progress: dict[int, float] = {}  # request -> when it last made progress

    @property
    def pending(self) -> bool:
        return bool(self._fetch_box or self._value_box)

    # ---- values: local store and peer-to-peer fetch -----------------------------------
    def fetch_value(self, node: str, dag_id: Any, key: Hashable, hook: list | None,
                    callback: Callable[[list | None, str | None], None]) -> None:
        """Get a stored value's frames from ``node`` (this one or a peer), applying a
        serialization hook on the holder's side if given."""
        if node == self.name:
            frames = self.store.get(dag_id, key)
            if frames is None:
                callback(None, f"no value for {key!r} in DAG {dag_id!r} on {self.name!r}")
            elif hook is not None:
                self._run_hook(hook, frames, self.name, callback)
            else:
                callback(frames, None)
            return
        if not self.transport.connected(node):
            callback(None, f"node {node!r} is not reachable")
            return
        if hook is None:
            waiting = self._inflight.get((node, dag_id, key))
            if waiting is not None:
                waiting.append(callback)
                return
            self._inflight[(node, dag_id, key)] = waiting = [callback]

            def fan_out(frames: list | None, error: str | None, node: str = node,
                        dag_id: Any = dag_id, key: Hashable = key) -> None:
                for cb in self._inflight.pop((node, dag_id, key), ()):
                    cb(frames, error)

            callback = fan_out
        request = self.requests.open(node, callback)
        self._progress[request] = time.monotonic()
        self.counters["fetches_sent"] += 1
        self._fetch_box[node].append((request, dag_id, key, hook))

    def flush(self) -> None:
        """End of a loop iteration: one Fetch and one Value message per peer, not one per value."""
        for node, items in self._fetch_box.items():
            rows: list[FetchRow] = []
            blobs: list[list] = []
            for request, dag_id, key, hook in items:
                pos = -1
                if hook is not None:
                    pos = len(blobs)
                    blobs.append(hook)
                rows.append(FetchRow(request, dag_id, key, self.name, pos))
            self.transport.send(node, Fetch(self.name, rows, blobs))
        self._fetch_box.clear()
        for node, items in self._value_box.items():
            replies: list[ValueRow] = []
            blobs = []
            for request, error, frames in items:
                pos = -1
                if frames is not None:
                    pos = len(blobs)
                    blobs.append(frames)
                replies.append(ValueRow(request, error, pos))
            self.transport.send(node, Value(self.name, replies, blobs))
        self._value_box.clear()

    def _run_hook(self, hook: list, frames: list, target: str, callback: Callable) -> None:
        tree = Hook(0, self.name, target, Leaf(1))

        def done(ok: bool, error: ErrorRow | None, out: list | None) -> None:
            if ok:
                callback(out, None)
            else:
                assert error is not None  # a failed job always says why
                callback(None, f"serialization hook failed: {error.exc_type}: {error.message}")

        self.node.run_hook(tree, [hook, frames], done)

    def on_fetch(self, msg: Fetch) -> None:
        for row in msg.rows:
            hook = row.hook
            hook_frames = msg.blobs[hook] if 0 <= hook < len(msg.blobs) else None
            self._serve_fetch(msg.sender, row.request, row.dag_id, row.key, row.target, hook_frames)

    def _serve_fetch(self, sender: str, request: int, dag_id: Any, key: Hashable, target: str,
                     hook: list | None) -> None:
        frames = self.store.get(dag_id, key)
        if frames is None:
            self._value_box[sender].append(
                (request, f"no value for {key!r} in DAG {dag_id!r} on {self.name!r}", None))
            return

        def reply(out: list | None, error: str | None) -> None:
            if out is None:
                self._value_box[sender].append((request, error, None))
                return
            if is_local(out):  # thread executor: pickle it off the loop first
                self.node.serialize(out, reply)
                return
            host = self.node.host_id
            if has_shared(out) and (not host or self.node.peers.peer_hosts.get(sender) != host):
                out = expand_frames(out)  # another host: send the bytes themselves
            self.store.fetches_served += 1
            self.store.bytes_served += blob_nbytes(out)
            self._send_value(sender, request, out)

        if hook is not None:
            self._run_hook(hook, frames, target, reply)
        elif is_local(frames):
            self.node.serialize(frames, reply)
        else:
            reply(frames, None)

    def on_value(self, msg: Value) -> None:
        for row in msg.rows:
            if 0 <= row.blob < len(msg.blobs):
                self._finish_fetch(msg.sender, row.request, msg.blobs[row.blob], None)
            else:
                self._finish_fetch(msg.sender, row.request, None, row.error or "empty reply")

    # ---- large values in parts ----------------------------------------------------------
    def _send_value(self, dest: str, request: int, frames: list) -> None:
        if blob_nbytes(frames) <= CHUNK:
            self._value_box[dest].append((request, None, frames))
            return
        views = [_bytes_view(f) for f in frames]
        parts = [(i, off, v[off:off + CHUNK]) for i, v in enumerate(views)
                 for off in range(0, max(v.nbytes, 1), CHUNK)]
        self._outgoing[(dest, request)] = Outgoing(parts, [v.nbytes for v in views])
        for _ in range(WINDOW):
            self._send_part(dest, request)

    def _send_part(self, dest: str, request: int) -> None:
        transfer = self._outgoing.get((dest, request))
        if transfer is None:
            return
        parts, nxt = transfer.parts, transfer.next
        if nxt >= len(parts):
            del self._outgoing[(dest, request)]
            return
        transfer.next = nxt + 1
        frame, offset, view = parts[nxt]
        self.counters["parts_sent"] += 1
        self.transport.send(dest, ValuePart(self.name, request, nxt, len(parts), transfer.sizes,
                                            frame, offset, [[view]]))

    def on_part(self, msg: ValuePart) -> None:
        self.transport.send(msg.sender, PartAck(self.name, msg.request, msg.index))
        if msg.request not in self.requests or not msg.blobs or len(msg.blobs[0]) != 1:
            return
        state = self._incoming.get(msg.request)
        if state is None:
            if not all(isinstance(n, int) and 0 <= n for n in msg.sizes):
                return
            state = self._incoming[msg.request] = Incoming([_receive_buffer(n) for n in msg.sizes],
                                                           msg.sender)
        buffers = state.buffers
        data = _bytes_view(msg.blobs[0][0])
        if not (0 <= msg.frame < len(buffers)) or msg.offset + data.nbytes > len(buffers[msg.frame]):
            self._incoming.pop(msg.request, None)
            self._finish_fetch(msg.sender, msg.request, None, "malformed value part")
            return
        buffers[msg.frame][msg.offset:msg.offset + data.nbytes] = data
        state.received += 1
        self._progress[msg.request] = time.monotonic()
        if state.received == msg.total:
            del self._incoming[msg.request]
            self._finish_fetch(msg.sender, msg.request, buffers, None)

    def on_part_ack(self, msg: PartAck) -> None:
        self._send_part(msg.sender, msg.request)

    def _finish_fetch(self, sender: str, request: int, frames: list | None, error: str | None) -> None:
        callback = self.requests.close(request, sender)
        self._progress.pop(request, None)
        if callback is None:
            return
        if frames is None:
            callback(None, error)
        else:
            self.counters["bytes_fetched"] += blob_nbytes(frames)
            callback(frames, None)

    def expire(self) -> None:
        """A timer: fail requests that made no progress for FETCH_STALL seconds (the peer
        lives but the request or its reply was lost, e.g. across a restart on one address)."""
        now = time.monotonic()
        stale = [r for r, t in self._progress.items() if now - t > FETCH_STALL]
        for request in stale:
            peer = self.requests.peer_of(request)
            self._incoming.pop(request, None)
            self._finish_fetch(peer, request, None, f"no reply from node {peer!r} within {FETCH_STALL:g} s")

    def forget_transfers(self, peer: str) -> None:
        for key in [k for k in self._outgoing if k[0] == peer]:
            del self._outgoing[key]
        for request in [r for r, st in self._incoming.items() if st.peer == peer]:
            del self._incoming[request]

    def fetch_frames(self, node: str, dag_id: Any, key: Hashable, timeout: float = 60.0) -> list:
        """Blocking, from any thread but the loop's: a value's frames from ``node``."""
        def start(fut: Future) -> None:
            def cb(frames: list | None, error: str | None) -> None:
                if fut.done():  # the caller gave up already
                    return
                if frames is None:
                    fut.set_exception(ResultNotFound(dag_id, key, node))
                else:
                    fut.set_result(frames)
            self.fetch_value(node, dag_id, key, None, cb)

        fut: Future = Future()
        self.node.call(start, fut)
        try:
            return fut.result(timeout)
        except TimeoutError:
            from handoff.errors import TimeoutError as HTimeout
            raise HTimeout(f"fetching {key!r} from node {node!r}", timeout) from None

    def find_values(self, dag_id: Any, keys: list, timeout: float, wait: bool) -> dict:
        """Blocking, from any thread but the loop's: ``{key: frames}`` of the keys found
        anywhere in the cluster within ``timeout`` seconds (see ValueSearch)."""
        fut: Future = Future()
        deadline = time.monotonic() + timeout

        def start() -> None:
            ValueSearch(self.node, dag_id, keys, wait, deadline, fut).start()

        self.node.call(start).result()
        if fut.done():  # all found in the local store
            return fut.result()
        try:
            return fut.result(timeout + 5.0)  # the loop ends the search at the deadline
        except TimeoutError:  # the loop stopped under us
            return {}

    # ---- locating values on peers -----------------------------------------------------
    def on_locate(self, msg: Locate) -> None:
        self.counters["locates_served"] += 1
        holders = [self.name if self.store.has(msg.dag_id, key) else self.store.location(msg.dag_id, key)
                   for key in msg.keys]
        self.transport.send(msg.sender, Located(self.name, msg.request, holders))

    def on_located(self, msg: Located) -> None:
        self.requests.answer(msg.request, msg.sender, msg.holders)

    def peer_stats(self, name: str, timeout: float = 10.0) -> dict:
        """Blocking, from any thread but the loop's: a node's counters, asked over the wire."""
        node = self.node
        if name == self.name:
            return node.call(node.node_stats).result(timeout)

        def ask(fut: Future) -> None:
            def answer(stats: dict | None, error: str | None) -> None:
                if stats is None:
                    fut.set_exception(HandoffError(f"node {name!r}: {error}"))
                else:
                    fut.set_result(stats)

            request = self.requests.open(name, answer)
            if not self.transport.send(name, Ping(self.name, request)):
                self.requests.close(request, name)
                fut.set_exception(HandoffError(f"node {name!r} is not in the cluster"))

        fut: Future = Future()
        node.call(ask, fut)
        return fut.result(timeout)


def _receive_buffer(size: int) -> bytearray | mmap.mmap:
    """A zeroed buffer for a frame arriving in parts. A large one is an anonymous mapping,
    whose pages the kernel supplies as each part is written: a bytearray touches every page
    at once, which on a machine with slow first touches (a virtual machine: seconds per GB)
    stalls the node loop past the failure detector's dead-after time."""
    return mmap.mmap(-1, size) if size > CHUNK else bytearray(size)


def _bytes_view(frame: Any) -> memoryview:
    view = memoryview(frame.buffer if hasattr(frame, "buffer") else frame)
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view

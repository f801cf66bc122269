"""The node's side of values: its store, peer-to-peer fetches, and large values in chunks.

A value larger than ``CHUNK`` bytes that must cross hosts is sent as a stream of parts, each
acknowledged before the next but one leaves, so heartbeats and other messages on the same
connection wait for one part at most, never for the whole value.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from typing import Any, Callable, Hashable

from handoff.errors import HandoffError, ResultNotFound
from handoff.node.values import blob_nbytes, expand_frames, has_shared, is_local
from handoff.node.workers import Job
from handoff.protocol.messages import Fetch, Locate, Located, PartAck, Ping, Value, ValuePart

log = logging.getLogger("handoff.fetching")

CHUNK = 16 * 1024 * 1024  # bytes per part of a large value
FETCH_STALL = 30.0  # seconds without any progress before a request to a live peer fails
WINDOW = 8  # parts in flight per transfer: at most 128 MB ahead of a heartbeat
ASK_FIRST = 0.05  # seconds before a waiting search asks its peers again; doubles each round
ASK_EVERY = 1.0  # ... up to once a second: a long wait costs each peer one small message a second

__all__ = ["FetchMixin", "ValueSearch"]


class FetchMixin:
    """Mixed into Node: getting values from wherever they are."""

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
            waiting = self._inflight_fetch.get((node, dag_id, key))
            if waiting is not None:
                waiting.append(callback)
                return
            self._inflight_fetch[(node, dag_id, key)] = waiting = [callback]

            def fan_out(frames, error, node=node, dag_id=dag_id, key=key):
                for cb in self._inflight_fetch.pop((node, dag_id, key), ()):
                    cb(frames, error)

            callback = fan_out
        request = next(self._requests)
        self._pending[request] = callback
        self._pending_by_node[node].add(request)
        self._progress[request] = time.monotonic()
        self.counters["fetches_sent"] += 1
        self._fetch_box[node].append((request, dag_id, key, hook))

    def _flush_fetches(self) -> None:
        """End of a loop iteration: one Fetch and one Value message per peer, not one per value."""
        for node, items in self._fetch_box.items():
            rows, blobs = [], []
            for request, dag_id, key, hook in items:
                pos = -1
                if hook is not None:
                    pos = len(blobs)
                    blobs.append(hook)
                rows.append([request, dag_id, key, self.name, pos])
            self.transport.send(node, Fetch(self.name, rows, blobs))
        self._fetch_box.clear()
        for node, items in self._value_box.items():
            rows, blobs = [], []
            for request, error, frames in items:
                pos = -1
                if frames is not None:
                    pos = len(blobs)
                    blobs.append(frames)
                rows.append([request, error, pos])
            self.transport.send(node, Value(self.name, rows, blobs))
        self._value_box.clear()

    def _run_hook(self, hook: list, frames: list, target: str, callback: Callable) -> None:
        tree = ["h", 0, self.name, target, ["v", 1]]

        def done(ok, error, out):
            if ok:
                callback(out, None)
            else:
                callback(None, f"serialization hook failed: {error[0]}: {error[1]}")

        self.pool.submit(Job("", -1, 0, tree, [hook, frames], on_done=done))

    def _on_fetch(self, msg: Fetch) -> None:
        for request, dag_id, key, target, hook in msg.rows:
            hook_frames = msg.blobs[hook] if isinstance(hook, int) and 0 <= hook < len(msg.blobs) else None
            self._serve_fetch(msg.sender, request, dag_id, key, target, hook_frames)

    def _serve_fetch(self, sender: str, request: int, dag_id: Any, key: Hashable, target: str,
                     hook: list | None) -> None:
        frames = self.store.get(dag_id, key)
        if frames is None:
            self._value_box[sender].append(
                (request, f"no value for {key!r} in DAG {dag_id!r} on {self.name!r}", None))
            return

        def reply(out, error):
            if out is None:
                self._value_box[sender].append((request, error, None))
                return
            if is_local(out):  # thread executor: pickle it off the loop first
                self.pool.serialize(out, reply)
                return
            if has_shared(out) and (not self.host_id or self.peer_hosts.get(sender) != self.host_id):
                out = expand_frames(out)  # another host: send the bytes themselves
            self.store.fetches_served += 1
            self.store.bytes_served += blob_nbytes(out)
            self._send_value(sender, request, out)

        if hook is not None:
            self._run_hook(hook, frames, target, reply)
        elif is_local(frames):
            self.pool.serialize(frames, reply)
        else:
            reply(frames, None)

    def _on_value(self, msg: Value) -> None:
        for request, error, pos in msg.rows:
            if isinstance(pos, int) and 0 <= pos < len(msg.blobs):
                self._finish_fetch(msg.sender, request, msg.blobs[pos], None)
            else:
                self._finish_fetch(msg.sender, request, None, error or "empty reply")

    # ---- large values in parts ----------------------------------------------------------
    def _send_value(self, dest: str, request: int, frames: list) -> None:
        if blob_nbytes(frames) <= CHUNK:
            self._value_box[dest].append((request, None, frames))
            return
        views = [_bytes_view(f) for f in frames]
        parts = [(i, off, v[off:off + CHUNK]) for i, v in enumerate(views)
                 for off in range(0, max(v.nbytes, 1), CHUNK)]
        self._outgoing[(dest, request)] = [parts, 0, [v.nbytes for v in views]]
        for _ in range(WINDOW):
            self._send_part(dest, request)

    def _send_part(self, dest: str, request: int) -> None:
        transfer = self._outgoing.get((dest, request))
        if transfer is None:
            return
        parts, nxt, sizes = transfer
        if nxt >= len(parts):
            del self._outgoing[(dest, request)]
            return
        transfer[1] = nxt + 1
        frame, offset, view = parts[nxt]
        self.counters["parts_sent"] += 1
        self.transport.send(dest, ValuePart(self.name, request, nxt, len(parts), sizes, frame, offset, [[view]]))

    def _on_part(self, msg: ValuePart) -> None:
        self.transport.send(msg.sender, PartAck(self.name, msg.request, msg.index))
        if msg.request not in self._pending or not msg.blobs or len(msg.blobs[0]) != 1:
            return
        state = self._incoming.get(msg.request)
        if state is None:
            if not all(isinstance(n, int) and 0 <= n for n in msg.sizes):
                return
            state = self._incoming[msg.request] = [[bytearray(n) for n in msg.sizes], 0, msg.sender]
        buffers = state[0]
        data = _bytes_view(msg.blobs[0][0])
        if not (0 <= msg.frame < len(buffers)) or msg.offset + data.nbytes > len(buffers[msg.frame]):
            self._incoming.pop(msg.request, None)
            self._finish_fetch(msg.sender, msg.request, None, "malformed value part")
            return
        buffers[msg.frame][msg.offset:msg.offset + data.nbytes] = data
        state[1] += 1
        self._progress[msg.request] = time.monotonic()
        if state[1] == msg.total:
            del self._incoming[msg.request]
            self._finish_fetch(msg.sender, msg.request, buffers, None)

    def _on_part_ack(self, msg: PartAck) -> None:
        self._send_part(msg.sender, msg.request)

    def _finish_fetch(self, sender: str, request: int, frames: list | None, error: str | None) -> None:
        callback = self._pending.pop(request, None)
        self._pending_by_node[sender].discard(request)
        self._progress.pop(request, None)
        if callback is None:
            return
        if frames is None:
            callback(None, error)
        else:
            self.counters["bytes_fetched"] += blob_nbytes(frames)
            callback(frames, None)

    def _expire_fetches(self) -> None:
        """A timer: fail requests that made no progress for FETCH_STALL seconds (the peer
        lives but the request or its reply was lost, e.g. across a restart on one address)."""
        now = time.monotonic()
        stale = [r for r, t in self._progress.items() if now - t > FETCH_STALL]
        for request in stale:
            peer = next((n for n, reqs in self._pending_by_node.items() if request in reqs), "")
            self._incoming.pop(request, None)
            self._finish_fetch(peer, request, None, f"no reply from node {peer!r} within {FETCH_STALL:g} s")

    def _forget_transfers(self, peer: str) -> None:
        for key in [k for k in self._outgoing if k[0] == peer]:
            del self._outgoing[key]
        for request in [r for r, st in self._incoming.items() if st[2] == peer]:
            del self._incoming[request]

    def fetch_frames(self, node: str, dag_id: Any, key: Hashable, timeout: float = 60.0) -> list:
        """Blocking, from any thread but the loop's: a value's frames from ``node``."""
        def start(fut: Future) -> None:
            def cb(frames, error):
                if fut.done():  # the caller gave up already
                    return
                if frames is None:
                    fut.set_exception(ResultNotFound(dag_id, key, node))
                else:
                    fut.set_result(frames)
            self.fetch_value(node, dag_id, key, None, cb)

        fut: Future = Future()
        self.call(start, fut)
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
            ValueSearch(self, dag_id, keys, wait, deadline, fut).start()

        self.call(start).result()
        if fut.done():  # all found in the local store
            return fut.result()
        try:
            return fut.result(timeout + 5.0)  # the loop ends the search at the deadline
        except TimeoutError:  # the loop stopped under us
            return {}

    # ---- locating values on peers -----------------------------------------------------
    def _on_locate(self, msg: Locate) -> None:
        self.counters["locates_served"] += 1
        holders = [self.name if self.store.has(msg.dag_id, key) else self.store.location(msg.dag_id, key)
                   for key in msg.keys]
        self.transport.send(msg.sender, Located(self.name, msg.request, holders))

    def _on_located(self, msg: Located) -> None:
        self._pending_by_node[msg.sender].discard(msg.request)
        callback = self._pending.pop(msg.request, None)
        if callback is not None:
            callback(msg.holders, None)

    def peer_stats(self, name: str, timeout: float = 10.0) -> dict:
        """Blocking, from any thread but the loop's: a node's counters, asked over the wire."""
        if name == self.name:
            return self.call(self.node_stats).result(timeout)

        def ask(fut: Future) -> None:
            request = next(self._requests)

            def answer(stats, error):
                if stats is None:
                    fut.set_exception(HandoffError(f"node {name!r}: {error}"))
                else:
                    fut.set_result(stats)

            self._pending[request] = answer
            self._pending_by_node[name].add(request)
            if not self.transport.send(name, Ping(self.name, request)):
                self._pending.pop(request, None)
                self._pending_by_node[name].discard(request)
                fut.set_exception(HandoffError(f"node {name!r} is not in the cluster"))

        fut: Future = Future()
        self.call(ask, fut)
        return fut.result(timeout)


class ValueSearch:
    """Finds stored values anywhere in the cluster for ``get_result`` and ``synchronize``.

    Owned by the loop thread. A key is taken from the first of: this node's store; the node
    this node's data-location registry names; a node that a peer names when asked (Locate:
    the peer itself if it stores the key, else its registry's entry). Peers are asked only
    about keys the registry does not place, or whose registered holder failed. Each holder is
    tried once per round. One-shot (``wait=False``): a single round; keys nobody holds are
    left out. Waiting: wakes at once on a local store or registration, starts a new round
    after 50 ms, doubling up to once a second, and ends at the deadline with what it found.
    """

    def __init__(self, node: Any, dag_id: Any, keys: list, wait: bool, deadline: float,
                 future: Future) -> None:
        self.node = node
        self.dag_id = dag_id
        self.wait = wait
        self.deadline = deadline
        self.future = future
        self.missing = dict.fromkeys(keys)  # ordered set
        self.found: dict[Hashable, list] = {}
        self.holders: dict[Hashable, list[str]] = {k: [] for k in keys}  # not yet tried this round
        self.tried: dict[Hashable, set[str]] = {k: set() for k in keys}
        self.asked: set[Hashable] = set()  # keys the peers were asked about this round
        self.fetching: set[Hashable] = set()
        self.asking: dict[int, str] = {}  # outstanding Locate request -> peer
        self.cancels: list[Callable[[], None]] = []
        self.timers: list[list] = []  # the deadline and the next round
        self.interval = ASK_FIRST
        self.in_round = False
        self.done = False

    def start(self) -> None:
        store = self.node.store
        for key in list(self.missing):
            frames = store.get(self.dag_id, key)
            if frames is not None:
                self._found(key, frames)
        if self.done:
            return
        if self.wait:
            for key in self.missing:
                self.cancels.append(store.wait(self.dag_id, key, lambda f, key=key: self._found(key, f)))
                self.cancels.append(store.watch_location(self.dag_id, key, lambda n, key=key: self._offer(key, n)))
        self.timers.append(self.node.after(max(0.0, self.deadline - time.monotonic()), self._finish))
        self._round()

    def _round(self) -> None:
        if self.done:
            return
        self.in_round = True  # a holder that fails at once must not settle a one-shot search
        self.asked.clear()
        for key in list(self.missing):
            self.tried[key].clear()
            holder = self.node.store.location(self.dag_id, key)
            if holder is not None:
                self._offer(key, holder)
        self._ask_peers([k for k in self.missing if k not in self.fetching and k not in self.asked])
        self.in_round = False
        if self.wait:
            del self.timers[1:]  # this round's own timer has fired
            self.timers.append(self.node.after(self.interval, self._round))
            self.interval = min(2 * self.interval, ASK_EVERY)
        else:
            self._settle()

    def _ask_peers(self, keys: list) -> None:
        """One Locate per live peer (and per call: a round, or a holder that failed)."""
        if self.done or not keys:
            return
        self.asked.update(keys)
        node = self.node
        busy = set(self.asking.values())
        for peer in node.membership.alive():
            if peer == node.name or (self.wait and peer in busy):
                continue  # a waiting search keeps one question per peer in flight
            request = next(node._requests)
            node._pending[request] = lambda holders, error, r=request, keys=keys: self._located(r, keys, holders)
            node._pending_by_node[peer].add(request)
            self.asking[request] = peer
            if not node.transport.send(peer, Locate(node.name, request, self.dag_id, keys)):
                self._forget(request)

    def _located(self, request: int, keys: list, holders: Any) -> None:
        self.asking.pop(request, None)
        if self.done:
            return
        if isinstance(holders, list) and len(holders) == len(keys):
            for key, holder in zip(keys, holders):
                if isinstance(holder, str):
                    self._offer(key, holder)
        self._settle()

    def _offer(self, key: Hashable, holder: str) -> None:
        """``holder`` may have ``key``: fetch it from there unless a fetch is under way."""
        if self.done or key not in self.missing or holder == self.node.name:
            return  # a value stored here arrives through the store's waiter
        if holder not in self.tried[key] and holder not in self.holders[key]:
            self.holders[key].append(holder)
        self._fetch_next(key)

    def _fetch_next(self, key: Hashable) -> None:
        if key in self.fetching or not self.holders[key]:
            return
        holder = self.holders[key].pop(0)
        self.tried[key].add(holder)
        self.fetching.add(key)

        def fetched(frames: list | None, error: str | None) -> None:
            self.fetching.discard(key)
            if self.done:
                return
            if frames is not None:
                self._found(key, frames)
                return
            self._fetch_next(key)
            if key not in self.fetching and key not in self.asked:
                self._ask_peers([key])  # the registered holder failed: someone else may have it
            self._settle()

        self.node.fetch_value(holder, self.dag_id, key, None, fetched)

    def _found(self, key: Hashable, frames: list) -> None:
        if self.done or key not in self.missing:
            return
        del self.missing[key]
        self.found[key] = frames
        if not self.missing:
            self._finish()

    def _settle(self) -> None:
        """One-shot: done once every peer answered and no fetch is under way."""
        if not (self.wait or self.done or self.in_round or self.asking or self.fetching):
            self._finish()

    def _forget(self, request: int) -> None:
        peer = self.asking.pop(request, None)
        if peer is not None:
            self.node._pending.pop(request, None)
            self.node._pending_by_node[peer].discard(request)

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        for cancel in self.cancels:
            cancel()
        for entry in self.timers:
            self.node.cancel_timer(entry)
        for request in list(self.asking):
            self._forget(request)
        if not self.future.done():
            self.future.set_result(self.found)


def _bytes_view(frame: Any) -> memoryview:
    view = memoryview(frame.buffer if hasattr(frame, "buffer") else frame)
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view

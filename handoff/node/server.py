"""The node: one event loop (zmq.Poller and a timer heap) that never runs user code.

It serves peers and drivers on its ROUTER, runs tasks on its worker processes, keeps the
results it produced, fetches arguments straight from the peers that hold them, and
orchestrates the runs that its own driver submits. Embedded in a driver it runs in a
background thread; ``python -m handoff.node`` runs it in the foreground.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, Hashable, cast

import zmq

from handoff.config import NodeConfig
from handoff.errors import HandoffError
from handoff.logs import node_started, node_stopped
from handoff.node.announce import announce, withdraw
from handoff.node.cluster.members import LIVE
from handoff.node.cluster.peers import Peers
from handoff.node.cluster.requests import Requests
from handoff.node.data import shm
from handoff.node.data.fetching import Fetching
from handoff.node.data.store import ValueStore
from handoff.node.data.sweep import sweep_dead
from handoff.node.execution.runner import JobRunner
from handoff.node.execution.threads import ThreadPool
from handoff.node.execution.workers import WorkerPool
from handoff.node.runs import Runs
from handoff.node.status import ClusterStatus
from handoff.cache.service import NodeCache
from handoff.node.streams.service import MESSAGES as STREAM_MESSAGES, Streams
from handoff.protocol.messages import (
    CacheClear, CacheHeld, CacheQuery, Cancel, Clear, Dispatch, Done, Fetch, Gossip, Hello, Leave, Locate, Located, Message, PartAck,
    Ping, Pong,
    RunEnded, StatusAsk, StatusQuery, StatusReport, Value, ValuePart,
)
from handoff.protocol.rows import TaskRow, Tree
from handoff.transport import Transport

if TYPE_CHECKING:
    from handoff.node.dashboard import Dashboard

log = logging.getLogger("handoff.node")

__all__ = ["Node", "Timer"]

CHECK_WORKERS = 0.05  # seconds between worker liveness and timeout checks
TICK = 0.25  # seconds between orchestrator ticks (deadlines of runs waiting for a node)
SWEEP = 2.0  # seconds between sweeps of dead processes' files and spilled values' shm files


@dataclass(slots=True, order=True)
class Timer:
    """One entry of the loop's timer heap: ``fn`` runs at ``at`` (None once cancelled);
    ``seq`` keeps timers due at the same moment in the order they were set."""

    at: float
    seq: int
    fn: Callable[[], Any] | None = field(compare=False)


class Node:
    """Composes the parts (peers, data, execution, runs), owns the loop and its timers, and
    routes each message and each membership change to the part that owns that state."""

    def __init__(self, config: NodeConfig, curve: Any = None):
        self.config = config
        self.name = config.name
        self.ctx = zmq.Context()
        self.transport = Transport(self.ctx, curve)
        self.store = ValueStore(cast(int, config.store_limit))  # NodeConfig settled it to bytes
        self.pool: WorkerPool | None = None
        self._timers: list[Timer] = []
        self._seq = itertools.count()
        self._commands: deque = deque()
        self._wake_lock = threading.Lock()
        self._wake_tx: zmq.Socket | None = None
        self._wake_rx: zmq.Socket | None = None
        self._thread: threading.Thread | None = None
        self.running = False
        self._stopped = threading.Event()
        self.counters: defaultdict[str, int] = defaultdict(int)
        self.use_shm = config.shared_memory and shm.available()
        self.shm_owner = shm.owner_prefix() if self.use_shm else None
        self.host_id = shm.host_id() if self.use_shm else ""
        self.requests = Requests()
        self.peers = Peers(self)
        self.fetching = Fetching(self)
        self.execution = JobRunner(self)
        self.runs = Runs(self)
        self.status = ClusterStatus(self)
        self.dashboard: Dashboard | None = None
        self._announced: str | None = None  # this node's file for local status clients
        self.cache = NodeCache(self)
        self.streams = Streams(self)

    # ---- life cycle ------------------------------------------------------------------
    @property
    def address(self) -> str:
        return self.transport.address

    def start(self, background: bool = True) -> "Node":
        if self.config.dashboard:  # first: a port in use fails the start before anything runs
            from handoff.node.dashboard import Dashboard

            try:
                self.dashboard = Dashboard(self, self.config.dashboard).start()
            except BaseException:
                self.ctx.term()
                raise
        node_started(self.name)
        if self.transport.curve is not None:
            self.transport.curve.start(self.ctx)
        self.transport.bind(self.config.listen)
        if self.config.advertise:  # peers reach this node through a relay: tell them that
            self.transport.address = self.config.advertise
        self._announced = announce(self.config.runtime_dir, self.name, self.address, f"{id(self):x}")
        wake = f"inproc://wake-{id(self)}"
        self._wake_rx = self.ctx.socket(zmq.PULL)
        self._wake_rx.bind(wake)
        self._wake_tx = self.ctx.socket(zmq.PUSH)
        self._wake_tx.connect(wake)
        self.pool = self.execution.start()
        self.peers.start()
        self.running = True
        self.every(CHECK_WORKERS, self.pool.check)
        self.every(TICK, self.runs.tick)
        self.every(5.0, self.fetching.expire)
        self._sweep()
        self.every(SWEEP, self._sweep)
        if background:
            self._thread = threading.Thread(target=self._loop, name=f"handoff-node-{self.name}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        on_loop = self._thread is None or threading.current_thread() is self._thread
        if on_loop:
            self._shutdown()
            return
        if self.running:
            try:
                self.call(self._shutdown).result(timeout)
            except Exception:
                pass
        # also after the loop died on its own: let it clean up
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout + 5)

    def _shutdown(self) -> None:
        if not self.running:
            return
        self.running = False
        self.runs.fail_all(HandoffError(f"node {self.name!r} is shutting down"))
        self.streams.shutdown()
        self.peers.stop()
        if self.pool is not None:
            self.pool.stop()

    def _close(self) -> None:
        withdraw(self._announced)
        if self.dashboard is not None:
            self.dashboard.stop()
        if self.shm_owner:
            shm.remove_owned(self.shm_owner)
        self.store.close()
        self.transport.close()
        if self.transport.curve is not None:
            self.transport.curve.stop()
        with self._wake_lock:
            for sock in (self._wake_rx, self._wake_tx):
                if sock is not None:
                    sock.close(0)
            self._wake_tx = None
            stranded, self._commands = self._commands, deque()
        for fut, _, _ in stranded:  # calls that came in after the last iteration
            if fut is not None and fut.set_running_or_notify_cancel():
                fut.set_exception(HandoffError(f"node {self.name!r} stopped"))
        self.ctx.term()
        node_stopped(self.name)
        self._stopped.set()

    # ---- cross-thread calls -----------------------------------------------------------
    def call(self, fn: Callable, *args: Any) -> Future:
        """Run ``fn(*args)`` on the loop thread; the Future gets its return value."""
        fut: Future = Future()
        with self._wake_lock:
            if not self.running or self._wake_tx is None:
                fut.set_exception(HandoffError(f"node {self.name!r} is not running"))
                return fut
            self._commands.append((fut, fn, args))
            self._wake_tx.send(b"", zmq.NOBLOCK)
        return fut

    def post(self, fn: Callable, *args: Any) -> None:
        """Fire-and-forget call on the loop thread (from executor threads)."""
        with self._wake_lock:
            if not self.running or self._wake_tx is None:
                return
            self._commands.append((None, fn, args))
            self._wake_tx.send(b"", zmq.NOBLOCK)

    # ---- timers -----------------------------------------------------------------------
    def after(self, delay: float, fn: Callable[[], Any]) -> Timer:
        timer = Timer(time.monotonic() + delay, next(self._seq), fn)
        heapq.heappush(self._timers, timer)
        return timer

    def every(self, period: float, fn: Callable) -> None:
        def tick() -> None:
            fn()
            self.after(period, tick)

        self.after(period, tick)

    @staticmethod
    def cancel_timer(timer: Timer) -> None:
        timer.fn = None

    # ---- the loop ---------------------------------------------------------------------
    def _loop(self) -> None:
        poller = zmq.Poller()
        router, wake = self.transport.router, self._wake_rx
        poller.register(router, zmq.POLLIN)
        poller.register(wake, zmq.POLLIN)
        workers: dict[int, Any] = {}
        generation = -1
        links: set = set()  # our DEALERs and their monitors: refusals, failed handshakes
        link_generation = -1
        pool = self.pool
        assert pool is not None, "start() makes the pool before the loop runs"
        try:
            while self.running:
                if link_generation != self.transport.generation:
                    for sock in links:
                        poller.unregister(sock)
                    links = set(self.transport.links())
                    for sock in links:
                        poller.register(sock, zmq.POLLIN)
                    link_generation = self.transport.generation
                if generation != pool.generation:  # workers came or went
                    for fd in workers:
                        poller.unregister(fd)
                    workers = pool.channels()
                    for fd in workers:
                        poller.register(fd, zmq.POLLIN)
                    generation = pool.generation
                for fd, w in workers.items():
                    poller.modify(fd, zmq.POLLIN | (zmq.POLLOUT if w.channel.wants_write else 0))
                timeout = 100.0
                if self._timers:
                    timeout = max(0.0, (self._timers[0].at - time.monotonic()) * 1000)
                busy = False
                for sock, _ in poller.poll(int(timeout)):  # ms; pyzmq truncates a float alike
                    busy = True
                    if sock is router:
                        for identity, msg, _ in self.transport.receive(router):
                            self._safely(self._on_peer_message, identity, msg)
                    elif sock is wake:
                        while True:
                            try:
                                wake.recv(zmq.NOBLOCK)
                            except zmq.Again:
                                break
                    elif sock in workers:
                        self._safely(pool.read, workers[sock])
                    elif sock in links and self.transport.has_link(sock):  # not closed meanwhile
                        for event in self.transport.read_link(sock):
                            self._safely(self.peers.on_link, event)
                self._run_commands()
                self._run_timers()
                if busy or self.runs.local_events or pool.queue or self.fetching.pending or self.streams.pending:
                    self._safely(self._flush)
        finally:
            if self.running:
                self._shutdown()
            self._close()

    def _flush(self) -> None:
        """End of an iteration: feed local events to the orchestrator, send batches."""
        for _ in range(100):
            if not self.runs.local_events:
                break
            self.runs.process_local_events()
        if self.fetching.pending:
            self.fetching.flush()
        self.execution.flush()
        if self.streams.pending:
            self.streams.flush()

    def _run_commands(self) -> None:
        while self._commands:
            fut, fn, args = self._commands.popleft()
            if fut is None:
                self._safely(fn, *args)
                continue
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:
                fut.set_exception(exc)

    def _run_timers(self) -> None:
        now = time.monotonic()
        timers = self._timers
        while timers and timers[0].at <= now:
            fn = heapq.heappop(timers).fn
            if fn is not None:
                self._safely(fn)

    def _safely(self, fn: Callable, *args: Any) -> None:
        try:
            fn(*args)
        except HandoffError as exc:
            log.warning("%s: %s", self.name, exc)
        except Exception:
            log.exception("%s: internal error (the node keeps serving)", self.name)

    # ---- running tasks on this node (the orchestrator calls these for its own node) ----
    def accept_task_rows(self, origin: str, dag_id: Any, rows: list) -> None:
        self.execution.accept_task_rows(origin, dag_id, rows)

    def cancel_jobs(self, run_id: str, indices: list | None) -> None:
        self.execution.cancel(run_id, indices)

    def forget_run(self, run_id: str) -> None:
        self.execution.forget_run(run_id)

    # ---- messages from peers ------------------------------------------------------------
    def _on_peer_message(self, identity: bytes, msg: Message) -> None:
        peers = self.peers
        if isinstance(msg, Hello):
            peers.on_hello(identity, msg)
            return
        if isinstance(msg, StatusQuery):  # a status client, authenticated by CURVE alone
            self.status.on_query(identity, msg)
            return
        if not peers.is_member(msg, identity):
            self.counters["dropped_unknown_peer"] += 1
            member = peers.membership.get(getattr(msg, "sender", None) or "")
            gone = member is not None and member.status not in LIVE
            peers.heard_from_stranger(identity, msg)
            level = logging.DEBUG if gone or self.counters["dropped_unknown_peer"] > 20 else logging.WARNING
            log.log(level, "%s: dropped %s from an unknown peer", self.name, type(msg).__name__)
            return
        sender: str = getattr(msg, "sender")  # is_member matched it to the connection's hello
        peers.heard_from(sender)
        try:
            self._dispatch_peer_message(msg)
        except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
            # decoded but malformed inside (rows of the wrong shape): the peer's fault
            self.counters["malformed_messages"] += 1
            self.transport.reject(identity, f"malformed {msg.op}: {type(exc).__name__}: {exc}")

    def _dispatch_peer_message(self, msg: Message) -> None:
        if isinstance(msg, Dispatch):
            self.accept_task_rows(msg.sender, msg.dag_id, _split_task_blobs(msg))
        elif isinstance(msg, Done):
            self.runs.on_done(msg)
        elif isinstance(msg, Fetch):
            self.fetching.on_fetch(msg)
        elif isinstance(msg, Value):
            self.fetching.on_value(msg)
        elif isinstance(msg, ValuePart):
            self.fetching.on_part(msg)
        elif isinstance(msg, PartAck):
            self.fetching.on_part_ack(msg)
        elif isinstance(msg, Gossip):
            self.peers.on_gossip(msg)
        elif isinstance(msg, Cancel):
            self.execution.cancel(msg.run_id, msg.indices)
        elif isinstance(msg, Clear):
            self.store.clear(msg.dag_id)
        elif isinstance(msg, Locate):
            self.fetching.on_locate(msg)
        elif isinstance(msg, Located):
            self.fetching.on_located(msg)
        elif isinstance(msg, Ping):
            self.transport.send(msg.sender, Pong(self.name, msg.request, self.node_stats()))
        elif isinstance(msg, Pong):
            self.requests.answer(msg.request, msg.sender, msg.stats)
        elif isinstance(msg, Leave):
            self.peers.on_leave(msg.sender)
        elif isinstance(msg, RunEnded):
            self.execution.forget_run(msg.run_id)
        elif isinstance(msg, StatusAsk):
            self.status.on_ask(msg)
        elif isinstance(msg, StatusReport):
            self.status.on_report(msg)
        elif isinstance(msg, (CacheQuery, CacheClear, CacheHeld)):
            self.cache.on_message(msg)
        elif isinstance(msg, STREAM_MESSAGES):
            self.streams.on_message(msg)

    def _sweep(self) -> None:
        """A timer: files of dead node processes on this host, spilled values' shm files."""
        self.store.tick()
        self.counters["files_swept"] += sweep_dead()

    def clear_everywhere(self, dag_id: Any) -> None:
        self.store.clear(dag_id)
        for name in self.peers.membership.alive():
            if name != self.name:
                self.transport.send(name, Clear(self.name, dag_id))

    def node_stats(self) -> dict:
        """What ``handoff.node_stats`` documents (docs/guide.md): plain data, msgpack-safe."""
        pool = self.execution.stats()
        stats: dict[str, Any] = {"name": self.name, "address": self.address,
                                 "store": self.store.stats(), "pool": pool}
        stats["counters"] = dict(self.counters)
        stats["dropped_messages"] = self.transport.dropped
        stats["blocked_peers"] = self.transport.blocked_peers
        curve = self.transport.curve
        stats["rejected_connections"] = curve.rejected if curve is not None else 0
        stats["curve"] = curve.source if curve is not None else None  # None: --insecure
        table = self.peers.membership
        stats["members"] = sorted(table.alive())
        stats["membership"] = {row.name: {"status": row.status.value, "address": row.address,
                                          "heartbeat": row.heartbeat, "incarnation": row.incarnation}
                               for row in table.digest()}
        ledger = self.ledger
        stats["ledger"] = {node: {"capacity": ledger.capacity(node), "claimed": ledger.used(node),
                                  "free": ledger.free(node)} for node in ledger.nodes}
        stats["runs"] = len(self.runs)
        stats["streams"] = self.streams.stats()
        stats["validating_state"] = bool(self.runs.orchestrator.debug_state)
        stats["dashboard"] = self.dashboard.url if self.dashboard is not None else None
        return stats

    # ---- routing between the parts ----------------------------------------------------
    def member_joined(self, name: str, caps: dict) -> None:
        self.runs.node_joined(name, caps)

    def member_updated(self, name: str, caps: dict) -> None:
        if name == self.name:
            self.execution.set_capacity(caps)
        self.runs.node_updated(name, caps)

    def member_lost(self, name: str, gone: bool) -> None:
        """``name``'s instance is lost; ``gone``: dead or left (not restarted), so nobody is
        left to take the results of the work it sent here."""
        if gone:
            self.execution.origin_lost(name)
        self.runs.node_lost(name)
        self.streams.member_lost(name)

    def link_dropped(self, name: str) -> None:
        self.fetching.forget_transfers(name)

    def free_resources(self) -> dict:
        return self.execution.jobs.free()

    def run_hook(self, tree: Tree, blobs: list, on_done: Callable) -> None:
        self.execution.run_hook(tree, blobs, on_done)

    def serialize(self, frames: list, callback: Callable) -> None:
        # only the thread executor hands out in-process values, which must be pickled first
        assert isinstance(self.pool, ThreadPool)
        self.pool.serialize(frames, callback)

    # ---- the API's view (handoff.api calls these through call() or from its thread) ----
    @property
    def capacity(self) -> dict:
        return self.peers.capacity

    @property
    def ledger(self) -> Any:
        return self.runs.ledger

    def joined(self) -> bool:
        return self.peers.joined()

    @property
    def join_error(self) -> str | None:
        return self.peers.join_error

    def discover(self) -> dict[str, dict]:
        return self.peers.discover()

    def register(self, name: str, caps: dict) -> None:
        self.peers.register(name, caps)

    def submit_run(self, ctx: Any, options: dict) -> None:
        self.runs.submit_run(ctx, options)

    def cancel_run(self, run_id: str, reason: HandoffError) -> None:
        self.runs.cancel_run(run_id, reason)

    def fetch_frames(self, node: str, dag_id: Any, key: Hashable, timeout: float = 60.0) -> list:
        return self.fetching.fetch_frames(node, dag_id, key, timeout)

    def find_values(self, dag_id: Any, keys: list, timeout: float, wait: bool) -> dict:
        return self.fetching.find_values(dag_id, keys, timeout, wait)

    def peer_stats(self, name: str, timeout: float = 10.0) -> dict:
        return self.fetching.peer_stats(name, timeout)



def _split_task_blobs(msg: Dispatch) -> list[tuple[TaskRow, list]]:
    """Give each task of a Dispatch its own blob list (its rows say which are its own)."""
    blobs = msg.blobs
    return [(row, [list(b) for b in blobs[row.first:row.first + row.count]]) for row in msg.tasks]

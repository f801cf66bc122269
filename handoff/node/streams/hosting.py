"""The replicas a node hosts for one pipeline, each on a worker process of its own.

A replica joins an item's inputs (fan-in), buffers batches, feeds its worker a window of
items at a time, and hands each result to the pipeline's router (or, for a sink, to the
driver). It keeps every item it was given until its worker has run it: a worker that dies
is replaced (``init`` runs again) and its items run again, the one it died on charged an
attempt; an item the driver expired is dropped and a worker stuck on it replaced.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from handoff.protocol.messages import Message, WorkerReady
from handoff.protocol.rows import ErrorRow
from handoff.protocol.streams import (
    AckRow, BufferedRow, ItemRow, OutRow, ReplicaDone, ReplicaItemRow, ReplicaReady, ReplicaRow,
    ReplicaRun, ReplicaStart, StageRow, StreamOpen, StreamReady,
)
from handoff.node.streams.routing import Router
from handoff.protocol import encode

if TYPE_CHECKING:
    from handoff.node.execution.workers import Worker, WorkerPool
    from handoff.node.server import Timer
    from handoff.node.streams.service import Streams

__all__ = ["HostedStream", "LocalReplica", "ReplicaStatus"]

log = logging.getLogger("handoff.streams")

DEPTH = 64  # items a replica's worker holds at once (one message); hides the round trip
FORGOTTEN = 100_000  # settled items remembered, so that a late input of one is dropped


class ReplicaStatus(Enum):
    STARTING = "starting"  # its worker is starting or running init
    READY = "ready"
    STOPPED = "stopped"


@dataclass(slots=True, eq=False)
class Pending:
    """An item at a replica: its value per slot (None until it arrives), where each was made,
    and whom to ack once it has run."""

    seq: int
    frames: list
    sources: list
    senders: list = field(default_factory=list)  # (node, edge)
    missing: int = 0


class LocalReplica:
    """One replica of one stage, hosted here."""

    def __init__(self, stream: HostedStream, row: ReplicaRow):
        self.stream = stream
        self.row = row
        self.stage: StageRow = stream.stages[row.stage]
        self.status = ReplicaStatus.STARTING
        self.worker: Worker | None = None
        self.announced = False  # StreamReady sent
        self.joins: dict[int, Pending] = {}
        self.queue: deque[list[Pending]] = deque()  # units of work: one item, or one batch
        self.batch: list[Pending] = []
        self.batch_timer: Timer | None = None
        self.running: dict[int, Pending] = {}  # sent to the worker, in order
        self.attempts: dict[int, int] = {}
        self.restarts = 0
        self.items = 0  # run to the end here

    @property
    def key(self) -> tuple[int, int]:
        return self.row.stage, self.row.replica

    @property
    def pool(self) -> WorkerPool:
        return self.stream.service.pool

    # ---- the worker -----------------------------------------------------------------------
    def claim(self) -> None:
        """Hold the stage's cost on this node's own ledger for the replica's life."""
        if self.stage.cost:
            self.stream.service.node.execution.claim_replica(self._claim_key, dict(self.stage.cost))

    @property
    def _claim_key(self) -> tuple:
        return (self.stream.id, self.row.stage, self.row.replica, self.row.generation)

    def start(self) -> None:
        """Take an idle pool worker (the pool replaces it) or start a process of its own."""
        self.status = ReplicaStatus.STARTING
        pool = self.pool
        self.worker = pool.take_idle(self) or pool.spawn_dedicated(self)
        if self.worker is None:
            self._cannot_start(ErrorRow("WorkerDied", "no worker process could be started for the replica", ""))
        elif self.worker.ready:
            self._send_start(self.worker)

    def _send_start(self, worker: Worker) -> None:
        stream = self.stream
        blobs = stream.blobs[self.stage.first:self.stage.first + self.stage.count]
        assert self.stage.call is not None, "inputs have no replicas"
        worker.channel.send(encode(ReplicaStart(stream.service.name, self.stage.call, self.stage.init,
                                                self.stage.batch_size > 0, blobs)))

    def on_worker_message(self, worker: Worker, msg: Message) -> None:
        if worker is not self.worker or self.status is ReplicaStatus.STOPPED:
            return
        if isinstance(msg, WorkerReady):
            self._send_start(worker)
        elif isinstance(msg, ReplicaReady):
            if msg.error is not None:
                self._cannot_start(msg.error)
                return
            self.status = ReplicaStatus.READY
            if not self.announced:
                self.announced = True
                self.stream.ready(self, None)
            self.pump()
        elif isinstance(msg, ReplicaDone):
            self._done(msg)

    def _cannot_start(self, error: ErrorRow) -> None:
        if not self.announced:
            self.announced = True
            self.stream.ready(self, error)
            self.stop()
            return
        # a re-created replica whose init fails: its items fail rather than wait forever
        self.restarts += 1
        if self.restarts <= self.stream.max_retries:
            self.start()
            return
        for p in self._all_pending():
            self._fail(p, ErrorRow(error.exc_type, f"the replica could not be re-created: {error.message}",
                                   error.traceback))
        self.stop()

    def on_worker_lost(self, worker: Worker, error: ErrorRow | None, running: int) -> None:
        if worker is not self.worker or self.status is ReplicaStatus.STOPPED:
            return
        self.worker = None
        stream = self.stream
        stream.service.node.counters["stream_workers_lost"] += 1
        culprits = self._culprits(running)
        error = error or ErrorRow("WorkerDied", "the replica's worker process died", "")
        for p in culprits:
            n = self.attempts.get(p.seq, 0) + 1
            self.attempts[p.seq] = n
            if n > stream.max_retries:
                self.running.pop(p.seq, None)
                self._fail(p, ErrorRow(error.exc_type, f"{error.message} ({n} attempts)", error.traceback))
        self._requeue_running()
        self.start()

    def _culprits(self, running: int) -> list[Pending]:
        """The items the dead worker was running: a whole batch, or the one its current-item
        file names (the oldest sent if it named none)."""
        if not self.running:
            return []
        if self.stage.batch_size:
            return list(self.running.values())
        if running > 0 and running - 1 in self.running:
            return [self.running[running - 1]]
        return [next(iter(self.running.values()))]

    def _requeue_running(self) -> None:
        again = list(self.running.values())
        self.running.clear()
        if not again:
            return
        if self.stage.batch_size:
            size = self.stage.batch_size
            units = [again[i:i + size] for i in range(0, len(again), size)]
        else:
            units = [[p] for p in again]
        self.queue.extendleft(reversed(units))

    # ---- items in -------------------------------------------------------------------------
    def receive(self, item: ItemRow, frames: list, sender: str) -> None:
        if self.status is ReplicaStatus.STOPPED:
            return
        if item.seq in self.stream.forgotten:
            self.stream.ack(sender, item.edge, self.row, 1)
            return
        n = len(self.stage.slots)
        if n == 1:
            self._enqueue(Pending(item.seq, [frames], [item.source], [(sender, item.edge)]))
            return
        p = self.joins.get(item.seq)
        if p is None:
            p = self.joins[item.seq] = Pending(item.seq, [None] * n, [""] * n, [], n)
        if p.frames[item.slot] is None:
            p.missing -= 1
        p.frames[item.slot] = frames  # a replayed input replaces the first copy
        p.sources[item.slot] = item.source
        p.senders.append((sender, item.edge))
        if p.missing == 0:
            del self.joins[item.seq]
            self._enqueue(p)

    def _enqueue(self, p: Pending) -> None:
        size = self.stage.batch_size
        if not size:
            self.queue.append([p])
            self.pump()
            return
        self.batch.append(p)
        if len(self.batch) >= size:
            self._seal_batch()
            return
        if len(self.batch) == 1 and self.stage.batch_timeout > 0:
            self.batch_timer = self.stream.service.node.after(self.stage.batch_timeout, self._batch_due)
        self.stream.batch_changed(self)

    def _batch_due(self) -> None:
        self.batch_timer = None
        if self.batch and self.status is not ReplicaStatus.STOPPED:
            self._seal_batch()

    def _seal_batch(self) -> None:
        if self.batch_timer is not None:
            self.stream.service.node.cancel_timer(self.batch_timer)
            self.batch_timer = None
        batch, self.batch = self.batch, []
        self.queue.append(batch)
        self.stream.batch_changed(self)
        self.pump()

    def flush(self) -> None:
        """The driver says nothing more will join the partial batch."""
        if self.batch:
            self._seal_batch()

    # ---- to the worker --------------------------------------------------------------------
    def pump(self) -> None:
        """Feed the worker at the end of this loop iteration, so that the items that came in
        meanwhile go out in one message."""
        if self.queue and self.status is ReplicaStatus.READY:
            self.stream.service.dirty[self] = None

    def feed(self) -> None:
        worker = self.worker
        if self.status is not ReplicaStatus.READY or worker is None or not self.queue:
            return
        if self.stage.batch_size:
            if self.running:
                return  # one batch at a time: a batch is already a window of items
            units = [self.queue.popleft()]
        else:
            room = DEPTH - len(self.running)
            units = []
            while self.queue and room > 0:
                units.append(self.queue.popleft())
                room -= 1
            if not units:
                return
        rows: list[ReplicaItemRow] = []
        blobs: list = []
        for unit in units:
            for p in unit:
                self.running[p.seq] = p
                rows.append(ReplicaItemRow(p.seq, len(blobs), len(p.frames), p.sources))
                blobs.extend(p.frames)
        worker.channel.send(encode(ReplicaRun(rows, self.stage.batch_size > 0, blobs)))

    def _done(self, msg: ReplicaDone) -> None:
        stream = self.stream
        for row in msg.rows:
            p = self.running.pop(row.seq, None)
            if p is None:
                continue  # expired meanwhile
            self.items += 1
            self.attempts.pop(row.seq, None)
            self._ack(p)
            if row.error is not None:
                stream.item_failed(row.seq, self.row.stage, row.error)
            else:
                stream.produced(self.row.stage, row.seq, msg.blobs[row.blob])
        self.pump()

    def _ack(self, p: Pending) -> None:
        for sender, edge in p.senders:
            self.stream.ack(sender, edge, self.row, 1)

    def _fail(self, p: Pending, error: ErrorRow) -> None:
        self._ack(p)
        self.stream.item_failed(p.seq, self.row.stage, error)

    # ---- settled items, teardown ----------------------------------------------------------
    def forget(self, seqs: set[int], expired: bool) -> None:
        for seq in [s for s in self.joins if s in seqs]:
            self._ack(self.joins.pop(seq))
        if self.batch:
            keep = [p for p in self.batch if p.seq not in seqs]
            for p in self.batch:
                if p.seq in seqs:
                    self._ack(p)
            self.batch = keep
            self.stream.batch_changed(self)
        if self.queue:
            units: deque[list[Pending]] = deque()
            for unit in self.queue:
                keep = [p for p in unit if p.seq not in seqs]
                for p in unit:
                    if p.seq in seqs:
                        self._ack(p)
                if keep:
                    units.append(keep)
            self.queue = units
        stuck = [self.running[s] for s in seqs if s in self.running]
        if expired and stuck and self.worker is not None:
            # its worker may be stuck on one: replace it, so later items are not held up
            for p in stuck:
                del self.running[p.seq]
                self._ack(p)
            self.pool.kill_dedicated(self.worker)
            self.worker = None
            self.stream.service.node.counters["stream_replicas_replaced"] += 1
            self._requeue_running()
            self.start()

    def _all_pending(self) -> list[Pending]:
        out = list(self.joins.values()) + list(self.batch) + list(self.running.values())
        for unit in self.queue:
            out.extend(unit)
        return out

    def stop(self) -> None:
        if self.status is not ReplicaStatus.STOPPED and self.stage.cost:
            self.stream.service.node.execution.release_replica(self._claim_key)
        self.status = ReplicaStatus.STOPPED
        if self.batch_timer is not None:
            self.stream.service.node.cancel_timer(self.batch_timer)
            self.batch_timer = None
        if self.worker is not None:
            self.pool.retire(self.worker)
            self.worker = None
        self.joins.clear()
        self.queue.clear()
        self.batch.clear()
        self.running.clear()

    def buffered(self) -> BufferedRow:
        return BufferedRow(self.row.stage, self.row.replica, [p.seq for p in self.batch])


class HostedStream:
    """One pipeline as seen by a node that hosts some of its replicas."""

    def __init__(self, service: Streams, msg: StreamOpen):
        self.service = service
        self.id = msg.stream
        self.driver = msg.sender
        self.function_ids: list = list(msg.function_ids)
        self.stages = msg.stages
        self.blobs = msg.blobs
        self.max_retries = msg.max_retries
        self.closed = False
        self.replicas: dict[tuple[int, int], LocalReplica] = {}
        self.forgotten: set[int] = set()
        self._forgotten_order: deque[int] = deque()
        self.router = Router(service.name, msg.stages, msg.window, msg.window * 64, self._deliver)
        self.started = time.monotonic()
        self._reported: dict[tuple[int, int], int] = {}
        self.set_plan(msg.replicas)

    def set_plan(self, rows: list[ReplicaRow]) -> None:
        here = self.service.name
        self.router.set_plan(rows)
        mine = {(r.stage, r.replica): r for r in rows if r.node == here}
        for key, rep in list(self.replicas.items()):
            row = mine.get(key)
            if row is None or row.generation != rep.row.generation:
                rep.stop()
                del self.replicas[key]
        for key, row in mine.items():
            if key not in self.replicas:
                rep = self.replicas[key] = LocalReplica(self, row)
                rep.claim()
                rep.start()

    # ---- what replicas report --------------------------------------------------------------
    def ready(self, rep: LocalReplica, error: ErrorRow | None) -> None:
        self.service.send(self.driver, StreamReady(self.service.name, self.id, rep.row.stage, rep.row.replica,
                                                   rep.row.generation, error))

    def produced(self, stage: int, seq: int, frames: list) -> None:
        if self.stages[stage].sink:
            self.service.queue_out(self.driver, self.id, OutRow(seq, stage, None, -1), frames)
        else:
            self.router.send(stage, seq, frames, self.service.name)

    def item_failed(self, seq: int, stage: int, error: ErrorRow) -> None:
        self.service.queue_out(self.driver, self.id, OutRow(seq, stage, error, -1), None)

    def ack(self, sender: str, edge: int, row: ReplicaRow, count: int) -> None:
        self.service.queue_ack(sender, self.id, AckRow(edge, row.stage, row.replica, row.generation, count))

    def batch_changed(self, rep: LocalReplica) -> None:
        if self.closed:
            self.service.queue_buffered(self.driver, self.id, rep.buffered())

    # ---- items in --------------------------------------------------------------------------
    def _deliver(self, row: ReplicaRow, item: ItemRow, frames: list) -> None:
        if row.node == self.service.name:
            self.receive(item, frames, self.service.name)
        else:
            self.service.queue_item(row.node, self.id, item, frames)

    def receive(self, item: ItemRow, frames: list, sender: str) -> None:
        rep = self.replicas.get((item.stage, item.replica))
        if rep is None:
            return  # moved away: the driver replays what it held
        rep.receive(item, frames, sender)

    # ---- the driver's orders -----------------------------------------------------------------
    def forget(self, seqs: list[int], expired: bool) -> None:
        settled = set(seqs)
        for seq in seqs:
            if seq not in self.forgotten:
                self.forgotten.add(seq)
                self._forgotten_order.append(seq)
        while len(self._forgotten_order) > FORGOTTEN:
            self.forgotten.discard(self._forgotten_order.popleft())
        self.router.forget(settled)
        for rep in list(self.replicas.values()):
            rep.forget(settled, expired)

    def close(self) -> None:
        self.closed = True
        for rep in self.replicas.values():
            if rep.stage.batch_size:
                self.service.queue_buffered(self.driver, self.id, rep.buffered())

    def flush(self) -> None:
        for rep in self.replicas.values():
            rep.flush()

    def stop(self) -> None:
        for rep in self.replicas.values():
            rep.stop()
        self.replicas.clear()

    def progress(self) -> list[tuple[int, int, int]]:
        """(stage, replica, items) of the replicas whose count moved since the last call."""
        out = []
        for key, rep in self.replicas.items():
            if self._reported.get(key) != rep.items:
                self._reported[key] = rep.items
                out.append((key[0], key[1], rep.items))
        return out

    def stats(self) -> dict[str, Any]:
        return {
            "replicas": {f"{self.function_ids[k[0]]!r}[{k[1]}]": {
                "status": r.status.value, "items": r.items, "queued": sum(len(u) for u in r.queue),
                "running": len(r.running), "joining": len(r.joins), "batch": len(r.batch),
                "pid": r.worker.proc.pid if r.worker is not None else None,
            } for k, r in self.replicas.items()},
            "router": self.router.stats(),
        }

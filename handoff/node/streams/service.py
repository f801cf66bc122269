"""``Streams``: the node's part for pipelines. It owns the pipelines this node hosts replicas
of (``HostedStream``) and those its driver coordinates (``Coordinator``), routes their
messages, and sends what they produce once per loop iteration, one message per peer and kind.
Traffic between two parts on this node never becomes a message.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from handoff.errors import HandoffError, NodeLostError
from handoff.node.streams.coordinator import Coordinator
from handoff.node.data.values import blob_nbytes
from handoff.node.streams.hosting import HostedStream
from handoff.protocol.messages import Message
from handoff.protocol.rows import ErrorRow
from handoff.protocol.streams import (
    AckRow, BufferedRow, ItemRow, OutRow, ProgressRow, StreamAcks, StreamBuffered, StreamClose,
    StreamFlush, StreamForget, StreamItems, StreamOpen, StreamOut, StreamPlan, StreamProgress,
    StreamReady, StreamStop,
)

if TYPE_CHECKING:
    from handoff.node.execution.workers import WorkerPool
    from handoff.node.server import Node

__all__ = ["Streams", "MESSAGES"]

log = logging.getLogger("handoff.streams")

PROGRESS = 0.25  # seconds between progress reports to drivers
TICK = 0.02  # seconds between deadline checks of coordinated pipelines

MESSAGES = (StreamOpen, StreamPlan, StreamReady, StreamItems, StreamAcks, StreamOut, StreamForget,
            StreamClose, StreamBuffered, StreamFlush, StreamProgress, StreamStop)


class Streams:
    def __init__(self, node: Node):
        self.node = node
        self.name = node.name
        self.hosted: dict[str, HostedStream] = {}
        self.coordinators: dict[str, Coordinator] = {}
        self._items: dict[tuple[str, str], tuple[list[ItemRow], list]] = {}
        self._acks: dict[tuple[str, str], dict[tuple, int]] = {}
        self._outs: dict[tuple[str, str], tuple[list[OutRow], list]] = {}
        self._buffered: dict[tuple[str, str], dict[tuple[int, int], BufferedRow]] = {}
        self._timers = False
        self.dirty: dict[Any, None] = {}  # replicas with items to feed their worker, in order

    @property
    def pool(self) -> WorkerPool:
        from handoff.node.execution.threads import ThreadPool
        from handoff.node.execution.workers import WorkerPool

        pool = self.node.pool
        if not isinstance(pool, WorkerPool) or isinstance(pool, ThreadPool):
            raise HandoffError(f"node {self.name!r} runs code on threads (--executor thread); "
                               "pipeline replicas need worker processes")
        return pool

    @property
    def pending(self) -> bool:
        return bool(self.dirty or self._items or self._acks or self._outs or self._buffered)

    def _start_timers(self) -> None:
        if not self._timers:
            self._timers = True
            self.node.every(PROGRESS, self._report_progress)
            self.node.every(TICK, self._tick)

    # ---- the driver's pipelines -------------------------------------------------------------
    def coordinate(self, coordinator: Coordinator) -> None:
        """Open a pipeline that this node's driver made (called on the loop)."""
        self._start_timers()
        self.coordinators[coordinator.id] = coordinator
        coordinator.open()
        if coordinator.opened.done() and coordinator.opened.exception() is not None:
            self.coordinators.pop(coordinator.id, None)

    def stop_coordinated(self, stream: str) -> None:
        coordinator = self.coordinators.pop(stream, None)
        if coordinator is not None:
            coordinator.stop()

    def _tick(self) -> None:
        for coordinator in list(self.coordinators.values()):
            coordinator.tick()

    # ---- sending ----------------------------------------------------------------------------
    def send(self, node: str, msg: Message) -> None:
        if node == self.name:
            self.on_message(msg)
        elif not self.node.transport.send(node, msg):
            log.debug("%s: no link to %s for %s", self.name, node, type(msg).__name__)

    def deliver(self, node: str, stream: str, item: ItemRow, frames: list) -> None:
        """An item for a replica on ``node`` (from a coordinator or a hosted router)."""
        if node == self.name:
            hosted = self.hosted.get(stream)
            if hosted is not None:
                hosted.receive(item, frames, self.name)
            return
        self.queue_item(node, stream, item, frames)

    def queue_item(self, node: str, stream: str, item: ItemRow, frames: list) -> None:
        rows, blobs = self._items.setdefault((node, stream), ([], []))
        rows.append(ItemRow(item.seq, item.stage, item.replica, item.slot, item.edge, item.source, len(blobs)))
        blobs.append(frames)

    def queue_ack(self, node: str, stream: str, row: AckRow) -> None:
        """Acks are summed per edge and replica until the end of the loop iteration (this
        node's own too: one drain of the router per batch, not per item)."""
        box = self._acks.setdefault((node, stream), {})
        key = (row.edge, row.stage, row.replica, row.generation)
        box[key] = box.get(key, 0) + row.count

    def _on_acks(self, stream: str, rows: list[AckRow]) -> None:
        """Credits back: an input's edge is the coordinator's, any other a hosted router's."""
        coordinator = self.coordinators.get(stream)
        hosted = self.hosted.get(stream)
        stages = coordinator.spec.stages if coordinator is not None else hosted.stages if hosted else None
        if stages is None:
            return
        for row in rows:
            router = (coordinator if stages[row.edge].call is None else hosted)
            if router is not None:
                router.router.on_ack(row.edge, row.stage, row.replica, row.generation, row.count)

    def queue_out(self, driver: str, stream: str, row: OutRow, frames: list | None) -> None:
        rows, blobs = self._outs.setdefault((driver, stream), ([], []))
        blob = -1
        if frames is not None:
            blob = len(blobs)
            blobs.append(frames)
        rows.append(OutRow(row.seq, row.stage, row.error, blob))

    def queue_buffered(self, driver: str, stream: str, row: BufferedRow) -> None:
        if driver == self.name:
            coordinator = self.coordinators.get(stream)
            if coordinator is not None:
                coordinator.on_buffered([row])
            return
        self._buffered.setdefault((driver, stream), {})[(row.stage, row.replica)] = row

    def flush(self) -> None:
        """End of a loop iteration: one message per peer, pipeline and kind."""
        while self.dirty:
            dirty, self.dirty = self.dirty, {}
            for replica in dirty:
                replica.feed()
        send = self.node.transport.send
        here = self.name
        counters = self.node.counters
        if self._items:
            items, self._items = self._items, {}
            for (node, stream), (rows, blobs) in items.items():
                counters["stream_bytes_out"] += sum(blob_nbytes(b) for b in blobs)
                send(node, StreamItems(here, stream, rows, blobs))
        if self._outs:
            outs, self._outs = self._outs, {}
            for (node, stream), (orows, oblobs) in outs.items():
                if node == here:
                    coordinator = self.coordinators.get(stream)
                    if coordinator is not None:
                        coordinator.on_out(orows, oblobs)
                    continue
                counters["stream_bytes_out"] += sum(blob_nbytes(b) for b in oblobs)
                send(node, StreamOut(here, stream, orows, oblobs))
        while self._acks:  # acks drain routers, which may feed replicas and queue items
            acks, self._acks = self._acks, {}
            for (node, stream), box in acks.items():
                ack_rows = [AckRow(e, s, r, g, n) for (e, s, r, g), n in box.items()]
                if node == here:
                    self._on_acks(stream, ack_rows)
                else:
                    send(node, StreamAcks(here, stream, ack_rows))
            while self.dirty:
                dirty, self.dirty = self.dirty, {}
                for replica in dirty:
                    replica.feed()
        if self._items:
            items, self._items = self._items, {}
            for (node, stream), (rows, blobs) in items.items():
                counters["stream_bytes_out"] += sum(blob_nbytes(b) for b in blobs)
                send(node, StreamItems(here, stream, rows, blobs))
        if self._buffered:
            buffered, self._buffered = self._buffered, {}
            for (node, stream), by in buffered.items():
                send(node, StreamBuffered(here, stream, list(by.values())))

    def _report_progress(self) -> None:
        for hosted in self.hosted.values():
            rows = [ProgressRow(*r) for r in hosted.progress()]
            if rows:
                self.send(hosted.driver, StreamProgress(self.name, hosted.id, rows))

    # ---- receiving ----------------------------------------------------------------------------
    def on_message(self, msg: Message) -> None:
        kind = type(msg)
        stream: str = getattr(msg, "stream")
        if kind is StreamItems or kind is StreamOut:
            if getattr(msg, "sender") != self.name:
                self.node.counters["stream_bytes_in"] += sum(blob_nbytes(b) for b in getattr(msg, "blobs"))
        if kind is StreamItems:
            hosted = self.hosted.get(stream)
            if hosted is not None:
                for row in msg.rows:  # type: ignore[attr-defined]
                    hosted.receive(row, msg.blobs[row.blob], msg.sender)  # type: ignore[attr-defined]
            return
        if kind is StreamAcks:
            self._on_acks(stream, msg.rows)  # type: ignore[attr-defined]
            return
        if kind is StreamOpen:
            self._open(msg)  # type: ignore[arg-type]
            return
        hosted = self.hosted.get(stream)
        coordinator = self.coordinators.get(stream)
        if kind is StreamOut and coordinator is not None:
            coordinator.on_out(msg.rows, msg.blobs)  # type: ignore[attr-defined]
        elif kind is StreamReady and coordinator is not None:
            coordinator.on_ready(msg)  # type: ignore[arg-type]
        elif kind is StreamBuffered and coordinator is not None:
            coordinator.on_buffered(msg.rows)  # type: ignore[attr-defined]
        elif kind is StreamProgress and coordinator is not None:
            coordinator.on_progress(msg.rows)  # type: ignore[attr-defined]
        elif hosted is None:
            return
        elif kind is StreamPlan:
            hosted.set_plan(msg.replicas)  # type: ignore[attr-defined]
        elif kind is StreamForget:
            hosted.forget(msg.seqs, msg.expired)  # type: ignore[attr-defined]
        elif kind is StreamClose:
            hosted.close()
        elif kind is StreamFlush:
            hosted.flush()
        elif kind is StreamStop:
            hosted.stop()
            del self.hosted[stream]

    def _open(self, msg: StreamOpen) -> None:
        if msg.stream in self.hosted:
            self.hosted[msg.stream].set_plan(msg.replicas)
            return
        self._start_timers()
        try:
            self.pool
        except HandoffError as exc:  # each replica it should host says why it cannot start
            error = ErrorRow("HandoffError", str(exc), "")
            for row in msg.replicas:
                if row.node == self.name:
                    self.send(msg.sender, StreamReady(self.name, msg.stream, row.stage, row.replica,
                                                      row.generation, error))
            return
        self.hosted[msg.stream] = HostedStream(self, msg)

    # ---- membership and shutdown ----------------------------------------------------------------
    def member_lost(self, name: str) -> None:
        for coordinator in list(self.coordinators.values()):
            coordinator.node_lost(name)
        for stream, hosted in list(self.hosted.items()):
            if hosted.driver == name:  # nobody is left to take its output: end it
                log.info("%s: driver %s is gone; ending its pipeline %s", self.name, name, stream[:8])
                hosted.stop()
                del self.hosted[stream]

    def shutdown(self) -> None:
        for coordinator in list(self.coordinators.values()):
            coordinator.state.fail(NodeLostError(self.name, [], "the driver's node is shutting down"))
            coordinator.stop()
        self.coordinators.clear()
        for hosted in self.hosted.values():
            hosted.stop()
        self.hosted.clear()

    def stats(self) -> dict[str, Any]:
        return {
            "hosted": {s[:8]: h.stats() for s, h in self.hosted.items()},
            "coordinated": {s[:8]: _plain_keys(c.stats()) for s, c in self.coordinators.items()},
        }


def _plain_keys(stats: dict) -> dict:
    """Function ids as text: node_stats crosses the wire as plain data (ids may be tuples)."""
    return {**stats, "functions": {repr(fid): info for fid, info in stats["functions"].items()}}

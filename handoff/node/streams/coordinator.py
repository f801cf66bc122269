"""The driver's side of one pipeline, on the driver node's loop: places the replicas (claiming
their cost for the pipeline's life), feeds pushed items to the input stages' consumers, settles
each item once (its sinks' values, its first error, or its deadline), and re-creates replicas
whose node is lost, replaying the items that were still in flight.
"""

from __future__ import annotations

import logging
import time
import uuid
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Hashable

import numpy as np

from handoff import _core
from handoff.dag import Collocated
from handoff.errors import AllocationError, FunctionError, HandoffError, ItemError, NodeLostError
from handoff.node.streams.routing import Router
from handoff.protocol.rows import ErrorRow
from handoff.protocol.streams import (
    BufferedRow, ItemRow, OutRow, ProgressRow, ReplicaRow, StreamClose, StreamFlush, StreamForget,
    StreamOpen, StreamPlan, StreamReady, StreamStop,
)

if TYPE_CHECKING:
    from handoff.node.streams.service import Streams
    from handoff.stream.pipeline import PipelineState
    from handoff.stream.spec import PipelineSpec

__all__ = ["Coordinator"]

log = logging.getLogger("handoff.streams")

WINDOW = 64  # items unacknowledged per edge and replica


class Coordinator:
    def __init__(self, service: Streams, spec: PipelineSpec, options: dict, state: PipelineState):
        self.service = service
        self.id = uuid.uuid4().hex
        self.spec = spec
        self.options = options
        self.state = state
        self.here = service.name
        self.max_pending: int = options["max_pending"]
        self.item_timeout: float | None = options["item_timeout"]
        self.plan: dict[tuple[int, int], ReplicaRow] = {}
        self.claims: dict[tuple[int, int], tuple[str, dict]] = {}
        self.hosts: set[str] = set()
        self.router = Router(self.here, spec.stages, WINDOW, self.max_pending, self._deliver)
        self.opened: Future = Future()
        self.waiting: set[tuple[int, int]] = set()
        self.held: dict[int, list] = {}  # unsettled items: their input frames, for replays
        self.pushed_at: dict[int, float] = {}
        self.partial: dict[int, dict[int, Any]] = {}  # seq -> {sink stage: frames}
        self.buffered: dict[tuple[int, int], list[int]] = {}
        self.closed = False
        self.stopped = False
        self.progress: dict[tuple[int, int], int] = {}
        self.started = time.monotonic()
        self.replays = 0

    # ---- opening ----------------------------------------------------------------------------
    def open(self) -> None:
        """Place every replica, claim its cost, and open the pipeline on each hosting node."""
        try:
            for stage in self.spec.stages:
                if stage.call is None:
                    continue
                for r in range(stage.parallelism):
                    self.plan[(stage.index, r)] = ReplicaRow(stage.index, r, self._place(stage.index, r), 0)
        except HandoffError as exc:
            self._release_claims()
            self.opened.set_exception(exc)
            return
        self.waiting = set(self.plan)
        self.router.set_plan(list(self.plan.values()))
        for node in sorted({row.node for row in self.plan.values()}):
            self._open_on(node)

    def _open_on(self, node: str) -> None:
        self.hosts.add(node)
        spec = self.spec
        self.service.send(node, StreamOpen(self.here, self.id, spec.function_ids, spec.stages,
                                           list(self.plan.values()), WINDOW, self.options["max_retries"],
                                           blobs=spec.blobs))

    def _live_nodes(self) -> list[str]:
        alive = self.service.node.peers.membership.alive()
        ledger = self.service.node.ledger
        return [n for n in ledger.nodes if n in alive]

    def _place(self, stage: int, replica: int) -> str:
        fn = self.spec.functions[stage]
        assert fn is not None
        ledger = self.service.node.ledger
        live = self._live_nodes()
        if not live:
            raise NodeLostError(self.here, [fn.id], "no live node to place the pipeline's replicas on")
        pin: str | None = None
        if isinstance(fn.node, str):
            pin = fn.node
        elif isinstance(fn.node, Collocated):
            target = self.spec.function_ids.index(fn.node.function_id)
            row = self.plan.get((target, replica)) or self.plan.get((target, 0))
            if row is None:
                raise AllocationError(fn.id, fn.cost, ledger.capacities(),
                                      f"collocated with {fn.node.function_id!r}, which comes later in the pipeline")
            pin = row.node
        if pin is not None and pin not in live:
            raise AllocationError(fn.id, fn.cost, ledger.capacities(), f"pinned to {pin!r}, which is not a live node")
        cost = dict(fn.cost) if fn.cost else None
        if cost is None:
            if pin is not None:
                return pin
            if self.options["allocation_strategy"] == "load_balanced":
                count = {n: 0 for n in live}
                for row in self.plan.values():
                    if row.node in count:
                        count[row.node] += 1
                return min(live, key=lambda n: count[n])
            return self.here if self.here in live else live[0]
        vec = ledger.resource_vector(cost)
        reqs = np.zeros((1, len(ledger.resources)), dtype=np.float64)
        reqs[0, :vec.shape[0]] = vec
        names = ledger.nodes
        pinned = np.array([names.index(pin) if pin is not None else -1], dtype=np.int64)
        if pin is None:
            # only live nodes: a dead one may linger in the ledger until membership drops it
            usable = [n for n in names if n in live]
            if len(usable) != len(names):
                for n in usable:
                    if ledger.request(n, cost):
                        self.claims[(stage, replica)] = (n, cost)
                        return n
                raise AllocationError(fn.id, cost, ledger.capacities(), _why(ledger, cost))
        got = _core.allocate(ledger, reqs, pinned, self.options["allocation_strategy"], True)
        if got[0] < 0:
            raise AllocationError(fn.id, cost, ledger.capacities(), _why(ledger, cost))
        node = names[int(got[0])]
        self.claims[(stage, replica)] = (node, cost)
        return node

    def _release_claims(self, keys: list | None = None) -> None:
        ledger = self.service.node.ledger
        for key in list(self.claims) if keys is None else keys:
            found = self.claims.pop(key, None)
            if found is not None and ledger.has_node(found[0]):
                try:
                    ledger.release(*found)
                except Exception:  # the node left the ledger meanwhile
                    pass

    def on_ready(self, msg: StreamReady) -> None:
        key = (msg.stage, msg.replica)
        row = self.plan.get(key)
        if row is None or row.generation != msg.generation:
            return
        if msg.error is not None:
            fid = self.spec.function_ids[msg.stage]
            error = FunctionError(fid, msg.sender, 1, msg.error.exc_type,
                                  f"its replica could not start: {msg.error.message}", msg.error.traceback)
            if not self.opened.done():
                self.opened.set_exception(error)
                self.stop()
            else:
                self.state.fail(error)
                self.stop()
            return
        self.waiting.discard(key)
        if not self.waiting and not self.opened.done():
            self.opened.set_result(None)

    # ---- items ------------------------------------------------------------------------------
    def push(self, items: list[tuple[int, list]]) -> None:
        if self.stopped:
            return
        now = time.monotonic()
        inputs = self.spec.inputs
        for seq, frames in items:
            self.held[seq] = frames
            self.pushed_at[seq] = now
            for k, stage in enumerate(inputs):
                self.router.send(stage, seq, frames[k], self.here)

    def _deliver(self, row: ReplicaRow, item: ItemRow, frames: list) -> None:
        self.service.deliver(row.node, self.id, item, frames)

    def on_out(self, rows: list[OutRow], blobs: list) -> None:
        sinks = self.spec.sinks
        settled_bad: list[int] = []
        for row in rows:
            seq = row.seq
            if seq not in self.held:
                continue  # settled already (a replay's second copy, or expired)
            if row.error is not None:
                e = row.error
                self._settle(seq, ItemError(seq, self.spec.function_ids[row.stage], e.exc_type, e.message, e.traceback))
                settled_bad.append(seq)
                continue
            got = self.partial.setdefault(seq, {})
            got.setdefault(row.stage, blobs[row.blob])
            if len(got) == len(sinks):
                self._settle(seq, got)
        if settled_bad:
            self._forget(settled_bad, False)
        self._check_flush()

    def _settle(self, seq: int, result: Any) -> None:
        del self.held[seq]
        self.pushed_at.pop(seq, None)
        self.partial.pop(seq, None)
        self.state.deliver(seq, result)

    def _forget(self, seqs: list[int], expired: bool) -> None:
        self.router.forget(set(seqs))
        for node in self.hosts:
            self.service.send(node, StreamForget(self.here, self.id, seqs, expired))

    def tick(self) -> None:
        """A timer: items past their deadline become errors; they stop holding anything up."""
        if self.item_timeout is None or self.stopped:
            return
        deadline = time.monotonic() - self.item_timeout
        expired = []
        for seq, at in self.pushed_at.items():  # in push order: stop at the first in time
            if at > deadline:
                break
            expired.append(seq)
        if not expired:
            return
        for seq in expired:
            got = self.partial.get(seq, {})
            missing = [s for s in self.spec.sinks if s not in got]
            fid = self.spec.function_ids[missing[0] if missing else self.spec.sinks[0]]
            self._settle(seq, ItemError(seq, fid, "TimeoutError",
                                        f"no output within item_timeout of {self.item_timeout:g} s", ""))
        self._forget(expired, True)
        self._check_flush()

    # ---- closing and partial batches ----------------------------------------------------------
    def close(self) -> None:
        self.closed = True
        for node in self.hosts:
            self.service.send(node, StreamClose(self.here, self.id))

    def on_buffered(self, rows: list[BufferedRow]) -> None:
        for row in rows:
            self.buffered[(row.stage, row.replica)] = row.seqs
        self._check_flush()

    def _check_flush(self) -> None:
        """After close: once every unsettled item waits in a partial batch, none can fill up."""
        if not self.closed or not self.held or not self.buffered:
            return
        waiting: set[int] = set()
        for seqs in self.buffered.values():
            waiting.update(seqs)
        if not waiting.issuperset(self.held):
            return
        self.buffered.clear()
        for node in self.hosts:
            self.service.send(node, StreamFlush(self.here, self.id))

    def on_progress(self, rows: list[ProgressRow]) -> None:
        for row in rows:
            self.progress[(row.stage, row.replica)] = row.items

    # ---- losses and teardown -------------------------------------------------------------------
    def node_lost(self, name: str) -> None:
        if self.stopped or name not in self.hosts:
            return
        self.hosts.discard(name)
        lost = [key for key, row in self.plan.items() if row.node == name]
        if not lost:
            return
        self._release_claims(lost)
        log.warning("%s: pipeline %s lost %d replicas with node %s; re-creating them", self.here, self.id[:8],
                    len(lost), name)
        try:
            for key in lost:
                old = self.plan.pop(key)
                self.plan[key] = ReplicaRow(key[0], key[1], self._place(*key), old.generation + 1)
        except HandoffError as exc:
            self.state.fail(exc)
            self.stop()
            return
        rows = list(self.plan.values())
        self.router.set_plan(rows)
        for node in sorted({row.node for row in rows}):
            if node in self.hosts:
                self.service.send(node, StreamPlan(self.here, self.id, rows))
            else:
                self._open_on(node)
        for key in lost:
            self.buffered.pop(key, None)
        # what the lost replicas held is gone: run every unsettled item again (the driver
        # keeps only the first value per sink, so items that survived are not duplicated)
        inputs = self.spec.inputs
        for seq, frames in list(self.held.items()):
            self.replays += 1
            for k, stage in enumerate(inputs):
                self.router.send(stage, seq, frames[k], self.here)

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.service.coordinators.pop(self.id, None)
        hosted = self.service.hosted.get(self.id)
        if hosted is not None:  # keep the final counts of this node's replicas for stats()
            self.on_progress([ProgressRow(*row) for row in hosted.progress()])
        for node in self.hosts:
            self.service.send(node, StreamStop(self.here, self.id))
        self.hosts.clear()
        self._release_claims()
        self.held.clear()
        self.pushed_at.clear()
        self.partial.clear()
        self.state.finish()
        if not self.opened.done():
            self.opened.set_exception(HandoffError("the pipeline was stopped before it was ready"))

    def stats(self) -> dict[str, Any]:
        hosted = self.service.hosted.get(self.id)  # this node's own replicas: counted now
        if hosted is not None:
            self.on_progress([ProgressRow(*row) for row in hosted.progress()])
        now = time.monotonic()
        elapsed = max(1e-9, now - self.started)
        functions: dict[Hashable, dict] = {}
        for stage in self.spec.stages:
            if stage.call is None:
                continue
            items = sum(n for (s, _), n in self.progress.items() if s == stage.index)
            functions[self.spec.function_ids[stage.index]] = {
                "items": items, "items_per_s": items / elapsed,
                "replicas": [self.plan[(stage.index, r)].node for r in range(stage.parallelism)
                             if (stage.index, r) in self.plan],
            }
        return {"functions": functions, "replays": self.replays, "held": len(self.held),
                "router": self.router.stats()}


def _why(ledger: Any, cost: dict) -> str:
    if ledger.fits_total(cost):
        return ("not enough free resources: a pipeline's replicas hold their cost for the "
                "pipeline's life")
    return "its cost fits no node's total capacity"

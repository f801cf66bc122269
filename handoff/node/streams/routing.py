"""Where a stage's values go next, within credit windows.

Each edge (a producing stage on this node -> one replica of a consuming stage) may have at
most ``limit`` items unacknowledged; the consumer's node acks an item once its replica has
run it. A value with no credit waits here, in order, so a slow stage holds back its producers
instead of filling its node's memory. A stage that joins several inputs (fan-in) takes item
``seq`` on replica ``seq % parallelism``, so every input of an item meets on one replica; any
other stage takes it on its least-busy replica.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from handoff.node.data.values import release_frames
from handoff.protocol.streams import ItemRow, ReplicaRow, StageRow

__all__ = ["Router"]

Deliver = Callable[[ReplicaRow, ItemRow, list], None]
# (replica, its stage, slot, edge, source, [(seq, frames), ...]): several values for one replica
DeliverMany = Callable[[ReplicaRow, int, int, int, str, list], None]


class Router:
    """The sending side of every edge that starts on one node, for one pipeline."""

    def __init__(self, here: str, stages: list[StageRow], window: int, join_window: int, deliver: Deliver,
                 deliver_many: DeliverMany | None = None):
        self.here = here
        self.deliver_many = deliver_many
        self.stages = stages
        self.window = window
        self.join_window = join_window
        self.deliver = deliver
        self.replicas: dict[int, list[ReplicaRow]] = {}
        self.used: dict[tuple[int, int, int], int] = {}  # (edge, stage, replica) -> unacked items
        self.held: dict[tuple[int, int], deque] = {}  # (edge, stage) -> [(seq, frames, source)]
        self.held_count = 0
        # per consuming stage: its credit limit; per (edge, stage): the consumer's slot
        self._limits = {row.index: self._limit(row) for row in stages}
        self._slots = {(e, row.index): row.slots.index(e) for row in stages for e in row.slots}

    # ---- placement ----------------------------------------------------------------------
    def set_plan(self, rows: list[ReplicaRow]) -> None:
        """Take a new placement; a replica re-created elsewhere starts with a full window (the
        items its predecessor held are replayed by the driver)."""
        old = {(r.stage, r.replica): r.generation for rs in self.replicas.values() for r in rs}
        by_stage: dict[int, list[ReplicaRow]] = {}
        for row in sorted(rows, key=lambda r: (r.stage, r.replica)):
            by_stage.setdefault(row.stage, []).append(row)
        self.replicas = by_stage
        for key in list(self.used):
            edge, stage, replica = key
            if old.get((stage, replica)) != self._generation(stage, replica):
                del self.used[key]
        self.drain()

    def _generation(self, stage: int, replica: int) -> int:
        rows = self.replicas.get(stage, ())
        return rows[replica].generation if replica < len(rows) else -1

    def limit(self, stage: int) -> int:
        return self._limits[stage]

    def _limit(self, row: StageRow) -> int:
        if len(row.slots) > 1:
            return self.join_window
        return max(self.window, 2 * row.batch_size)

    # ---- sending ------------------------------------------------------------------------
    def send(self, edge: int, seq: int, frames: list, source: str) -> None:
        for stage in self.stages[edge].consumers:
            held = self.held.get((edge, stage))
            if held:
                held.append((seq, frames, source))
                self.held_count += 1
            elif not self._try(edge, stage, seq, frames, source):
                self.held.setdefault((edge, stage), deque()).append((seq, frames, source))
                self.held_count += 1

    def send_many(self, edge: int, items: list[tuple[int, list]], source: str) -> None:
        """``send`` of several values of stage ``edge``, in order. The common case (one consumer
        with one slot, nothing held back) is routed in one pass, each replica getting its share
        in one call; anything else goes item by item."""
        consumers = self.stages[edge].consumers
        stage = consumers[0] if len(consumers) == 1 else -1
        if stage < 0 or not self._bulk_ok(stage):
            for seq, frames in items:
                self.send(edge, seq, frames, source)
            return
        taken = 0 if self.held.get((edge, stage)) else self._bulk(edge, stage, items, source)
        if taken < len(items):
            held = self.held.setdefault((edge, stage), deque())
            for seq, frames in items[taken:]:
                held.append((seq, frames, source))
            self.held_count += len(items) - taken

    def _bulk_ok(self, stage: int) -> bool:
        return self.deliver_many is not None and bool(self.replicas.get(stage)) and len(self.stages[stage].slots) == 1

    def _bulk(self, edge: int, stage: int, items: list[tuple[int, list]], source: str) -> int:
        """Route a prefix of ``items`` to ``stage``'s replicas, each to the least busy with
        credit left (like _try), handing each replica its share at once; returns its length."""
        rows = self.replicas[stage]
        limit = self._limits[stage]
        used = self.used
        keys = [(edge, stage, r.replica) for r in rows]
        counts = [used.get(k, 0) for k in keys]
        shares: list[list] = [[] for _ in rows]
        width = range(len(rows))
        taken = 0
        for entry in items:
            best, least = -1, limit
            for j in width:
                if counts[j] < least:
                    best, least = j, counts[j]
            if best < 0:
                break
            counts[best] += 1
            shares[best].append(entry)
            taken += 1
        for key, n in zip(keys, counts):
            if n:
                used[key] = n
        slot = self._slots[(edge, stage)]
        assert self.deliver_many is not None
        for row, share in zip(rows, shares):
            if share:
                self.deliver_many(row, stage, slot, edge, source, share)
        return taken

    def _drain_bulk(self, edge: int, stage: int, held: deque) -> None:
        """drain() of one edge to a one-slot stage: as many held values as there is credit
        for, routed in one pass (values held here all come from one source)."""
        limit = self._limits[stage]
        free = sum(max(0, limit - self.used.get((edge, stage, r.replica), 0)) for r in self.replicas[stage])
        n = min(free, len(held))
        if n <= 0:
            return
        source = held[0][2]
        take: list[tuple[int, list]] = []
        for _ in range(n):
            if held[0][2] != source:
                break
            seq, frames, _ = held.popleft()
            take.append((seq, frames))
        taken = self._bulk(edge, stage, take, source)
        if taken < len(take):  # not expected: credit was counted above
            held.extendleft(reversed([(seq, frames, source) for seq, frames in take[taken:]]))
        self.held_count -= taken

    def _try(self, edge: int, stage: int, seq: int, frames: list, source: str) -> bool:
        rows = self.replicas.get(stage)
        if not rows:
            return False
        limit = self._limits[stage]
        used = self.used
        consumer = self.stages[stage]
        row: ReplicaRow | None = None
        if len(consumer.slots) > 1:
            row = rows[seq % len(rows)]
            if used.get((edge, stage, row.replica), 0) >= limit:
                return False
        else:
            least = limit
            for r in rows:
                n = used.get((edge, stage, r.replica), 0)
                if n < least:
                    row, least = r, n
        if row is None:
            return False
        key = (edge, stage, row.replica)
        used[key] = used.get(key, 0) + 1
        self.deliver(row, ItemRow(seq, stage, row.replica, self._slots[(edge, stage)], edge, source, -1), frames)
        return True

    def drain(self) -> None:
        for (edge, stage), held in list(self.held.items()):
            if self._bulk_ok(stage):
                self._drain_bulk(edge, stage, held)
            while held:
                seq, frames, source = held[0]
                if not self._try(edge, stage, seq, frames, source):
                    break
                held.popleft()
                self.held_count -= 1
            if not held:
                del self.held[(edge, stage)]

    def on_ack(self, edge: int, stage: int, replica: int, generation: int, count: int) -> None:
        if self._generation(stage, replica) != generation:
            return  # an ack from a replica that has been replaced
        key = (edge, stage, replica)
        left = self.used.get(key, 0) - count
        if left > 0:
            self.used[key] = left
        else:
            self.used.pop(key, None)
        if self.held:
            self.drain()

    def forget(self, seqs: set[int] | None) -> None:
        """Drop the held values of settled items (of every item with None)."""
        for key, held in list(self.held.items()):
            keep = deque(entry for entry in held if seqs is not None and entry[0] not in seqs)
            for entry in held:
                if seqs is None or entry[0] in seqs:
                    release_frames(entry[1])
            self.held_count -= len(held) - len(keep)
            if keep:
                self.held[key] = keep
            else:
                del self.held[key]

    def stats(self) -> dict[str, Any]:
        return {"held": self.held_count, "unacked": sum(self.used.values())}

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

from handoff.protocol.streams import ItemRow, ReplicaRow, StageRow

__all__ = ["Router"]

Deliver = Callable[[ReplicaRow, ItemRow, list], None]


class Router:
    """The sending side of every edge that starts on one node, for one pipeline."""

    def __init__(self, here: str, stages: list[StageRow], window: int, join_window: int, deliver: Deliver):
        self.here = here
        self.stages = stages
        self.window = window
        self.join_window = join_window
        self.deliver = deliver
        self.replicas: dict[int, list[ReplicaRow]] = {}
        self.used: dict[tuple[int, int, int], int] = {}  # (edge, stage, replica) -> unacked items
        self.held: dict[tuple[int, int], deque] = {}  # (edge, stage) -> [(seq, frames, source)]
        self.held_count = 0

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
        row = self.stages[stage]
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

    def _try(self, edge: int, stage: int, seq: int, frames: list, source: str) -> bool:
        rows = self.replicas.get(stage)
        if not rows:
            return False
        limit = self.limit(stage)
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
        slot = consumer.slots.index(edge)
        self.deliver(row, ItemRow(seq, stage, row.replica, slot, edge, source, -1), frames)
        return True

    def drain(self) -> None:
        for (edge, stage), held in list(self.held.items()):
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

    def forget(self, seqs: set[int]) -> None:
        """Drop the held values of settled items."""
        for key, held in list(self.held.items()):
            keep = deque(entry for entry in held if entry[0] not in seqs)
            self.held_count -= len(held) - len(keep)
            if keep:
                self.held[key] = keep
            else:
                del self.held[key]

    def stats(self) -> dict[str, Any]:
        return {"held": self.held_count, "unacked": sum(self.used.values())}

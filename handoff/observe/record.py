"""``RunRecord``: what every attempt of a run did, kept by the driver in parallel arrays
(about 70 bytes an attempt), plus per-group counters that the progress display reads.

Rows arrive on the node's loop thread (``add``), which keeps them as they come (one list
append on the hot path) and copies them into the arrays when ``COMPACT_EVERY`` are waiting or
when the record is first read: so a run of W1's size never pays for the copy while it runs.
Read the attempts on the loop thread while the run goes on (the dashboard does), from any
thread once it has ended. The progress display reads only the counters, from the caller's
thread: single int reads and writes, so a draw may be one completion behind.
"""

from __future__ import annotations

import time
from array import array
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Hashable, Iterator, NamedTuple

import numpy as np

from handoff.dag import effective_inputs

if TYPE_CHECKING:
    from handoff.dag import CompiledGraph, Function
    from handoff.protocol.rows import ResultRow

__all__ = ["RunRecord", "Outcome", "Attempt", "groups_of", "COMPACT_EVERY"]

COMPACT_EVERY = 65536  # rows kept as they came (some 25 MB at most) before being copied into arrays


class Outcome(IntEnum):
    OK = 0
    FAILED = 1  # the code raised, timed out, or its worker died
    LOST_INPUT = 2  # an argument could not be fetched; the input is recomputed


class Attempt(NamedTuple):
    """One recorded attempt, as ``RunRecord.attempts()`` yields it."""

    function_index: int
    function_id: Hashable
    attempt: int
    node: str
    worker: int
    started: float
    finished: float
    fetch_start: float
    fetch_end: float
    bytes_in: int
    bytes_out: int
    outcome: Outcome


def groups_of(functions: list[Function]) -> tuple[array, list[str]]:
    """Each function's group number and the group names, in order of first appearance."""
    names: list[str] = []
    number: dict[str, int] = {}
    by_code: dict[int, int] = {}  # id(code) -> group, for functions with no group of their own
    out = array("I")
    for fn in functions:
        if fn.group is None:
            g = by_code.get(id(fn.code))
            if g is None:
                name = fn.group_name
                g = number.get(name)
                if g is None:
                    g = number[name] = len(names)
                    names.append(name)
                by_code[id(fn.code)] = g
        else:
            g = number.get(fn.group)
            if g is None:
                g = number[fn.group] = len(names)
                names.append(fn.group)
        out.append(g)
    return out, names


class RunRecord:
    """Every attempt of one run that reported back, and progress counters per group.

    The attempts' fields are parallel arrays indexed by arrival order; failed attempts' error
    text is kept aside (``errors``). ``graph`` and ``functions`` are the run's (for pictures).
    """

    def __init__(self, dag_id: Any, graph: CompiledGraph, functions: list[Function],
                 keep: bool = True) -> None:
        self.dag_id = dag_id
        self.keep = keep  # False: only the progress counters, no per-attempt arrays
        self.graph = graph
        self.functions = functions
        self.group, self.group_names = groups_of(functions)
        groups = len(self.group_names)
        inline = graph.inline
        self.group_total = [0] * groups
        for i, g in enumerate(self.group):
            if not inline[i]:
                self.group_total[g] += 1
        self.group_done = [0] * groups
        self.group_failed = [0] * groups  # failed attempts
        self.group_dispatched = [0] * groups  # attempts sent
        self.group_ended = [0] * groups  # attempts reported back, any outcome
        self.done = 0  # functions with a result (a function run again is counted once)
        self._has_result = bytearray(len(graph.ids))
        self.total = sum(self.group_total)
        self.started_at = time.time()
        self.finished_at: float | None = None
        self.state = "running"  # then "finished" or "failed"
        self.node_names: list[str] = []
        self._node_number: dict[str, int] = {}
        self.index = array("q")
        self.attempt = array("i")
        self.node = array("H")
        self.worker = array("i")
        self.started = array("d")
        self.finished = array("d")
        self.fetch_start = array("d")
        self.fetch_end = array("d")
        self.bytes_in = array("q")
        self.bytes_out = array("q")
        self.outcome = array("b")
        self.errors: dict[int, tuple[str, str, str]] = {}  # position -> (type, message, traceback)
        self._pending: list[ResultRow] = []  # rows not yet copied into the arrays (see compact)
        self._pending_nodes: list[int] = []
        self._lists: tuple[list[int], list[int], bytes] | None = None  # the graph as lists, for reading

    def __len__(self) -> int:
        """Attempts recorded (reading copies the waiting rows into the arrays first)."""
        self.compact()
        return len(self.outcome)

    # ---- written on the loop thread -----------------------------------------------------
    def dispatched(self, tasks: list[tuple[int, int]]) -> None:
        counts, group = self.group_dispatched, self.group
        for index, _ in tasks:
            counts[group[index]] += 1

    def add(self, node: str, row: ResultRow) -> bool:
        """One attempt reported by ``node``; True if it is its function's first result."""
        index = row.index
        g = self.group[index]
        self.group_ended[g] += 1
        first = False
        if row.ok:
            outcome = 0
            if not self._has_result[index]:
                self._has_result[index] = first = True
                self.group_done[g] += 1
                self.done += 1
        else:
            outcome = 2 if row.lost is not None else 1
            if outcome == 1:
                self.group_failed[g] += 1
        if not self.keep:
            return first
        n = self._node_number.get(node)
        if n is None:
            n = self._node_number[node] = len(self.node_names)
            self.node_names.append(node)
        # keeping the row (one list append) and copying rows into the arrays in batches costs
        # a fraction of eleven array appends per row, on the loop's hot path
        self._pending.append(row)
        self._pending_nodes.append(n)
        if len(self._pending) >= COMPACT_EVERY:
            self.compact()
        return first

    def compact(self) -> None:
        """Copy the waiting rows into the arrays (every reader does it first)."""
        rows, nodes = self._pending, self._pending_nodes
        if not rows:
            return
        self._pending, self._pending_nodes = [], []
        base = len(self.outcome)
        for j, row in enumerate(rows):
            if not row.ok and row.error is not None:
                error = row.error
                self.errors[base + j] = (error.exc_type, error.message, error.traceback)
        self.index.extend([r.index for r in rows])
        self.attempt.extend([r.attempt for r in rows])
        self.node.extend(nodes)
        self.worker.extend([r.worker for r in rows])
        self.started.extend([r.started for r in rows])
        self.finished.extend([r.finished for r in rows])
        self.fetch_start.extend([r.fetch_start for r in rows])
        self.fetch_end.extend([r.fetch_end for r in rows])
        self.bytes_in.extend([r.bytes_in for r in rows])
        self.bytes_out.extend([r.nbytes for r in rows])
        self.outcome.extend([0 if r.ok else (1 if r.lost is None else 2) for r in rows])  # last

    def end(self, failed: bool) -> None:
        self.finished_at = time.time()
        self.state = "failed" if failed else "finished"

    # ---- reading -----------------------------------------------------------------------
    def running(self, g: int) -> int:
        """Attempts of group ``g`` sent and not reported (cancelled ones may linger)."""
        return max(0, min(self.group_dispatched[g] - self.group_ended[g],
                          self.group_total[g] - self.group_done[g]))

    def attempts(self) -> Iterator[Attempt]:
        self.compact()
        ids, names = self.graph.ids, self.node_names
        for k in range(len(self.index)):
            i = self.index[k]
            yield Attempt(i, ids[i], self.attempt[k], names[self.node[k]], self.worker[k],
                          self.started[k], self.finished[k], self.fetch_start[k], self.fetch_end[k],
                          self.bytes_in[k], self.bytes_out[k], Outcome(self.outcome[k]))

    def final_attempts(self) -> dict[int, int]:
        """{function index: position of its last successful attempt}."""
        ok = np.flatnonzero(self.column("outcome") == 0)
        return dict(zip(self.column("index")[ok].tolist(), ok.tolist()))  # later ones win

    def column(self, name: str) -> np.ndarray:
        """One field of every attempt as a numpy array: a copy, so the array can go on growing
        (an array whose buffer is exported cannot)."""
        values = getattr(self, name)[:len(self)]  # len() copies waiting rows in
        return np.frombuffer(values.tobytes(), dtype=values.typecode)

    def _graph_lists(self) -> tuple[list[int], list[int], bytes]:
        if self._lists is None:
            g = self.graph
            self._lists = (g.indptr.tolist(), g.indices.tolist(), bytes(g.inline))
        return self._lists

    def inputs(self, i: int) -> list[int]:
        """The non-inline functions whose values function ``i`` fetched (through inline ones)."""
        return effective_inputs(*self._graph_lists(), i)

    def transfers(self) -> Iterator[tuple[int, int, int]]:
        """(producer position, consumer position, bytes) for each value an attempt fetched
        from another node: the producer's successful attempt ran on a different node."""
        graph = self.graph
        if graph.inline.any():
            return self._transfers_through_inline()
        index, node = self.column("index"), self.column("node")
        final = np.full(len(graph.ids), -1, dtype=np.int64)
        ok = np.flatnonzero(self.column("outcome") == 0)
        np.maximum.at(final, index[ok], ok)  # the last successful attempt of each function
        consumers = np.flatnonzero(self.column("fetch_start") != 0.0)  # fetched something
        fn = index[consumers]
        starts, counts = graph.indptr[fn], graph.indptr[fn + 1] - graph.indptr[fn]
        k = np.repeat(consumers, counts)
        offsets = np.arange(len(k)) - np.repeat(np.cumsum(counts) - counts, counts)
        deps = graph.indices[np.repeat(starts, counts) + offsets]
        pairs = np.unique(k * len(graph.ids) + deps)  # an input passed twice is fetched once
        k, deps = pairs // len(graph.ids), pairs % len(graph.ids)
        p = final[deps]
        cross = p >= 0
        cross[cross] = node[p[cross]] != node[k[cross]]
        p, k = p[cross], k[cross]
        return zip(p.tolist(), k.tolist(), self.column("bytes_out")[p].tolist())

    def _transfers_through_inline(self) -> Iterator[tuple[int, int, int]]:
        final = self.final_attempts()
        node, index, bytes_out = self.node, self.index, self.bytes_out
        for k in np.flatnonzero(self.column("fetch_start") != 0.0).tolist():
            here = node[k]
            for d in self.inputs(index[k]):
                p = final.get(d)
                if p is not None and node[p] != here:
                    yield p, k, bytes_out[p]

"""``build_view(record)``: the view document the run page draws (schema in ``page.py``).

Bounded whatever the run's size: the timeline turns into busy fractions per time bin past
``SPAN_LIMIT`` attempts, the DAG into one box per group past 500 functions, and the lists
(slowest, failures) are cut to their first entries. Works during a run too, on the loop
thread (see ``record.py``).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from handoff.observe.page import VIEW_VERSION
from handoff.observe.pictures import picture_of
from handoff.observe.record import Outcome, RunRecord
from handoff.observe.trace import json_id

__all__ = ["build_view", "SPAN_LIMIT", "BINS", "SLOWEST", "FAILURES"]

SPAN_LIMIT = 5000  # attempts drawn one box each; more are binned
BINS = 400
SLOWEST = 20
FAILURES = 100


@dataclass
class Columns:
    """The record's attempts as numpy arrays, read once."""

    n: int
    index: np.ndarray
    node: np.ndarray
    worker: np.ndarray
    started: np.ndarray
    finished: np.ndarray
    outcome: np.ndarray

    @classmethod
    def of(cls, record: RunRecord) -> "Columns":
        col = record.column
        return cls(len(record), col("index"), col("node").astype(np.int64), col("worker").astype(np.int64),
                   col("started"), col("finished"), col("outcome"))

    @property
    def seconds(self) -> np.ndarray:
        return np.maximum(self.finished - self.started, 0.0)


def build_view(record: RunRecord) -> dict[str, Any]:
    """The view document of one run, from its record (during or after the run)."""
    c = Columns.of(record)
    n = c.n
    final = record.final_attempts()
    failed_functions = set(c.index[c.outcome == Outcome.FAILED].tolist()) - set(final)
    transfers: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0])
    node_of = record.node
    for p, k, nbytes in record.transfers():
        pair = transfers[(node_of[p], node_of[k])]
        pair[0] += 1
        pair[1] += nbytes
    now = time.time()
    start, end = record.started_at, record.finished_at or now
    if n:
        start, end = min(start, float(c.started.min())), max(end, float(c.finished.max()))
    names = record.node_names
    ran = c.worker >= 0
    attempts = np.bincount(c.node, minlength=len(names))
    busy = np.bincount(c.node[ran], weights=c.seconds[ran], minlength=len(names))
    slots: dict[int, list[int]] = defaultdict(list)
    for key in np.unique(c.node[ran] * (1 << 32) + c.worker[ran]).tolist():
        slots[key >> 32].append(key & 0xFFFFFFFF)
    summary = {
        "dag_id": str(record.dag_id), "state": record.state, "functions": record.total,
        "done": record.done, "failed": len(failed_functions),
        "running": sum(record.running(g) for g in range(len(record.group_names))),
        "nodes": len(names), "workers": sum(len(w) for w in slots.values()),
        "attempts": n, "retries": n - len(final) - len(failed_functions),
        "started_at": record.started_at, "finished_at": record.finished_at,
        "wall": (record.finished_at or now) - record.started_at,
        "bytes_moved": sum(v[1] for v in transfers.values()),
        "transfers": sum(v[0] for v in transfers.values()),
    }
    return {
        "version": VIEW_VERSION,
        "title": f"Run of DAG {record.dag_id!r}",
        "generated_at": now,
        "summary": summary,
        "nodes": [{"name": name, "workers": slots[j], "attempts": int(attempts[j]), "busy": float(busy[j])}
                  for j, name in enumerate(names)],
        "timeline": _timeline(record, c, start, end),
        "groups": _groups(record, c),
        "graph": _graph(record, final, failed_functions),
        "slowest": _slowest(record, c),
        "transfers": [{"source": names[a], "target": names[b], "count": cnt, "bytes": nb}
                      for (a, b), (cnt, nb) in sorted(transfers.items(), key=lambda kv: -kv[1][1])],
        "failures": _failures(record, c, failed_functions),
        "failures_total": int(np.count_nonzero(c.outcome != Outcome.OK)),
    }


def _timeline(record: RunRecord, c: Columns, start: float, end: float) -> dict[str, Any]:
    ran = np.flatnonzero(c.worker >= 0)
    keys = c.node[ran] * (1 << 32) + c.worker[ran]
    lanes, lane_of = np.unique(keys, return_inverse=True)
    binned = c.n > SPAN_LIMIT
    span = max(end - start, 1e-9)
    out: list[dict[str, Any]] = [{"node": record.node_names[key >> 32], "worker": key & 0xFFFFFFFF}
                                 for key in lanes.tolist()]
    a = c.started[ran] - start
    b = np.maximum(c.finished[ran] - start, a)
    if binned:
        width = span / BINS
        busy = np.zeros((len(lanes), BINS))
        first = np.clip((a / width).astype(np.int64), 0, BINS - 1)
        last = np.clip((b / width).astype(np.int64), 0, BINS - 1)
        one = first == last  # most attempts sit inside one bin
        np.add.at(busy, (lane_of[one], first[one]), (b[one] - a[one]) / width)
        for j in np.flatnonzero(~one).tolist():
            for k in range(first[j], last[j] + 1):
                lo, hi = max(a[j], k * width), min(b[j], (k + 1) * width)
                if hi > lo:
                    busy[lane_of[j], k] += (hi - lo) / width
        for lane, row in zip(out, np.round(np.minimum(busy, 1.0), 3).tolist()):
            lane["busy"] = row
    else:
        group = np.frombuffer(record.group, dtype=np.uint32)[c.index[ran]].tolist()
        ok = (c.outcome[ran] == Outcome.OK).tolist()
        spans: list[list[list[Any]]] = [[] for _ in out]
        for j, lane in enumerate(lane_of.tolist()):
            spans[lane].append([round(float(a[j]), 6), round(float(b[j]), 6), group[j], 1 if ok[j] else 0])
        for lane, rows in zip(out, spans):
            lane["spans"] = rows
    return {"start": start, "end": end, "binned": binned, "bins": BINS if binned else 0,
            "groups": record.group_names, "lanes": out}


def _groups(record: RunRecord, c: Columns) -> list[dict[str, Any]]:
    ok = c.outcome == Outcome.OK
    group = np.frombuffer(record.group, dtype=np.uint32).astype(np.int64)[c.index[ok]]
    seconds = np.bincount(group, weights=c.seconds[ok], minlength=len(record.group_names))
    return [{"name": name, "total": record.group_total[g], "done": record.group_done[g],
             "failed": record.group_failed[g], "running": record.running(g), "seconds": float(seconds[g])}
            for g, name in enumerate(record.group_names) if record.group_total[g]]


def _graph(record: RunRecord, final: dict[int, int], failed_functions: set[int]) -> dict[str, Any]:
    pic = picture_of(record.graph, record.functions, record.dag_id,
                     groups=(record.group, record.group_names))
    n = len(record.graph.ids)
    done = np.zeros(n, dtype=bool)
    done[list(final)] = True
    failed = np.zeros(n, dtype=bool)
    failed[list(failed_functions)] = True
    settled = done | record.graph.inline.astype(bool)  # inline functions never run on their own

    def state(members: list[int]) -> str:
        if failed[members].any():
            return "failed"
        if settled[members].all():
            return "done"
        if pic.collapsed and done[members].any():
            return "running"
        return "pending"

    nodes = [{"id": node.id, "label": node.label, "group": node.group, "count": node.count,
              "pin": node.pin, "cost": node.cost, "state": state(node.members)} for node in pic.nodes]
    return {"collapsed": pic.collapsed, "functions": pic.functions, "nodes": nodes,
            "edges": [list(e) for e in pic.edges]}


def _slowest(record: RunRecord, c: Columns) -> list[dict[str, Any]]:
    ok = np.flatnonzero(c.outcome == Outcome.OK)
    seconds = c.seconds[ok]
    if len(ok) > SLOWEST:
        top = np.argpartition(-seconds, SLOWEST)[:SLOWEST]
    else:
        top = np.arange(len(ok))
    top = top[np.argsort(-seconds[top], kind="stable")]
    ids = record.graph.ids
    out = []
    for k in ok[top].tolist():
        i = record.index[k]
        fetch = record.fetch_end[k] - record.fetch_start[k] if record.fetch_start[k] > 0 else 0.0
        out.append({"function_id": str(ids[i]), "group": record.group_names[record.group[i]],
                    "node": record.node_names[record.node[k]], "worker": record.worker[k],
                    "attempt": record.attempt[k], "seconds": record.finished[k] - record.started[k],
                    "fetch_seconds": max(fetch, 0.0), "bytes_in": record.bytes_in[k],
                    "bytes_out": record.bytes_out[k]})
    return out


def _failures(record: RunRecord, c: Columns, failed_functions: set[int]) -> list[dict[str, Any]]:
    positions = np.flatnonzero(c.outcome != Outcome.OK).tolist()
    last: dict[int, int] = {}
    for k in positions:
        last[record.index[k]] = k
    final = {k for i, k in last.items() if i in failed_functions}
    chosen = sorted(positions, key=lambda k: (k not in final, k))[:FAILURES]
    ids = record.graph.ids
    out = []
    for k in chosen:
        exc_type, message, traceback = record.errors.get(k, ("", "", ""))
        out.append({"function_id": str(ids[record.index[k]]), "function": json_id(ids[record.index[k]]),
                    "node": record.node_names[record.node[k]], "worker": record.worker[k],
                    "attempt": record.attempt[k], "exc_type": exc_type, "message": message,
                    "traceback": traceback, "final": k in final})
    return out

"""``build_view(record)``: the view document the run page draws (schema in ``page.py``).

Bounded whatever the run's size: the timeline turns into busy fractions per time bin past
``SPAN_LIMIT`` attempts, the DAG into one box per group past 500 functions, and the lists
(slowest, failures) are cut to their first entries.
"""

from __future__ import annotations

import heapq
import time
from collections import defaultdict
from typing import Any

from handoff.observe.page import VIEW_VERSION
from handoff.observe.pictures import picture_of
from handoff.observe.record import Outcome, RunRecord
from handoff.observe.trace import json_id

__all__ = ["build_view", "SPAN_LIMIT", "BINS", "SLOWEST", "FAILURES"]

SPAN_LIMIT = 5000  # attempts drawn one box each; more are binned
BINS = 400
SLOWEST = 20
FAILURES = 100


def build_view(record: RunRecord) -> dict[str, Any]:
    """The view document of one run, from its record (during or after the run)."""
    n = len(record)
    ok, failed = Outcome.OK, Outcome.FAILED
    outcome, index = record.outcome, record.index
    started, finished = record.started, record.finished
    final = record.final_attempts()
    failed_functions = {index[k] for k in range(n) if outcome[k] == failed} - set(final)
    transfers: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0])
    for p, k, nbytes in record.transfers():
        pair = transfers[(record.node[p], record.node[k])]
        pair[0] += 1
        pair[1] += nbytes
    end = record.finished_at or time.time()
    start = record.started_at
    if n:
        start = min(start, min(started))
        end = max(end, max(finished))
    workers: dict[int, set[int]] = defaultdict(set)
    busy: dict[int, float] = defaultdict(float)
    attempts: dict[int, int] = defaultdict(int)
    for k in range(n):
        node = record.node[k]
        attempts[node] += 1
        if record.worker[k] >= 0:
            workers[node].add(record.worker[k])
            busy[node] += max(finished[k] - started[k], 0.0)
    names = record.node_names
    summary = {
        "dag_id": str(record.dag_id), "state": record.state, "functions": record.total,
        "done": record.done, "failed": len(failed_functions),
        "running": sum(record.running(g) for g in range(len(record.group_names))),
        "nodes": len(names), "workers": sum(len(w) for w in workers.values()),
        "attempts": n, "retries": n - len(final) - len(failed_functions),
        "started_at": record.started_at, "finished_at": record.finished_at,
        "wall": (record.finished_at or time.time()) - record.started_at,
        "bytes_moved": sum(v[1] for v in transfers.values()),
        "transfers": sum(v[0] for v in transfers.values()),
    }
    return {
        "version": VIEW_VERSION,
        "title": f"Run of DAG {record.dag_id!r}",
        "generated_at": time.time(),
        "summary": summary,
        "nodes": [{"name": name, "workers": sorted(workers[j]), "attempts": attempts[j], "busy": busy[j]}
                  for j, name in enumerate(names)],
        "timeline": _timeline(record, start, end),
        "groups": _groups(record),
        "graph": _graph(record, final, failed_functions),
        "slowest": _slowest(record),
        "transfers": [{"source": names[a], "target": names[b], "count": c, "bytes": nb}
                      for (a, b), (c, nb) in sorted(transfers.items(), key=lambda kv: -kv[1][1])],
        "failures": _failures(record, failed_functions),
        "failures_total": sum(1 for k in range(n) if outcome[k] != ok),
    }


def _timeline(record: RunRecord, start: float, end: float) -> dict[str, Any]:
    n = len(record)
    lanes: dict[tuple[int, int], list[int]] = defaultdict(list)
    for k in range(n):
        if record.worker[k] >= 0:
            lanes[(record.node[k], record.worker[k])].append(k)
    binned = n > SPAN_LIMIT
    span = max(end - start, 1e-9)
    out = []
    for (node, worker), positions in sorted(lanes.items()):
        lane: dict[str, Any] = {"node": record.node_names[node], "worker": worker}
        if binned:
            width = span / BINS
            bins = [0.0] * BINS
            for k in positions:
                a, b = record.started[k] - start, record.finished[k] - start
                first, last = int(a / width), min(int(b / width), BINS - 1)
                for j in range(max(first, 0), last + 1):
                    lo, hi = max(a, j * width), min(b, (j + 1) * width)
                    if hi > lo:
                        bins[j] += (hi - lo) / width
            lane["busy"] = [round(min(x, 1.0), 3) for x in bins]
        else:
            lane["spans"] = [[round(record.started[k] - start, 6), round(record.finished[k] - start, 6),
                              record.group[record.index[k]], 1 if record.outcome[k] == Outcome.OK else 0]
                             for k in positions]
        out.append(lane)
    return {"start": start, "end": end, "binned": binned, "bins": BINS if binned else 0,
            "groups": record.group_names, "lanes": out}


def _groups(record: RunRecord) -> list[dict[str, Any]]:
    seconds = [0.0] * len(record.group_names)
    for k in range(len(record)):
        if record.outcome[k] == Outcome.OK:
            seconds[record.group[record.index[k]]] += max(record.finished[k] - record.started[k], 0.0)
    return [{"name": name, "total": record.group_total[g], "done": record.group_done[g],
             "failed": record.group_failed[g], "running": record.running(g), "seconds": seconds[g]}
            for g, name in enumerate(record.group_names) if record.group_total[g]]


def _graph(record: RunRecord, final: dict[int, int], failed_functions: set[int]) -> dict[str, Any]:
    pic = picture_of(record.graph, record.functions, record.dag_id,
                     groups=(record.group, record.group_names))
    inline = record.graph.inline

    def state(members: list[int]) -> str:
        if any(i in failed_functions for i in members):
            return "failed"
        if all(i in final or inline[i] for i in members):
            return "done"
        if pic.collapsed and any(i in final for i in members):
            return "running"
        return "pending"

    nodes = [{"id": node.id, "label": node.label, "group": node.group, "count": node.count,
              "pin": node.pin, "cost": node.cost, "state": state(node.members)} for node in pic.nodes]
    return {"collapsed": pic.collapsed, "functions": pic.functions, "nodes": nodes,
            "edges": [list(e) for e in pic.edges]}


def _slowest(record: RunRecord) -> list[dict[str, Any]]:
    started, finished = record.started, record.finished
    top = heapq.nlargest(SLOWEST, (k for k in range(len(record)) if record.outcome[k] == Outcome.OK),
                         key=lambda k: finished[k] - started[k])
    ids = record.graph.ids
    out = []
    for k in top:
        i = record.index[k]
        fetch = record.fetch_end[k] - record.fetch_start[k] if record.fetch_start[k] > 0 else 0.0
        out.append({"function_id": str(ids[i]), "group": record.group_names[record.group[i]],
                    "node": record.node_names[record.node[k]], "worker": record.worker[k],
                    "attempt": record.attempt[k], "seconds": finished[k] - started[k],
                    "fetch_seconds": max(fetch, 0.0), "bytes_in": record.bytes_in[k],
                    "bytes_out": record.bytes_out[k]})
    return out


def _failures(record: RunRecord, failed_functions: set[int]) -> list[dict[str, Any]]:
    last: dict[int, int] = {}
    positions = [k for k in range(len(record)) if record.outcome[k] != Outcome.OK]
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

"""A run's record as Chrome trace-event JSON, which Perfetto and chrome://tracing open.

One process per node (named by ``process_name`` metadata), one thread per worker slot, an
``"X"`` event per attempt (``cat="attempt"``), each argument fetch as an ``"X"`` event with
``cat="fetch"`` on the node's fetch lanes (concurrent fetches get separate lanes, so slices
never overlap on one thread), and each value that crossed nodes as an ``"s"``/``"f"`` flow
pair from the producer's attempt to the consumer's fetch. Times are microseconds from the
start of the run (``otherData.started_at`` is that start as seconds since the epoch).
"""

from __future__ import annotations

import json
import os
from typing import Any

from handoff.observe.record import Outcome, RunRecord

__all__ = ["trace_events", "write_trace", "OUTCOME_NAMES"]

OUTCOME_NAMES = {Outcome.OK: "ok", Outcome.FAILED: "failed", Outcome.LOST_INPUT: "lost_input"}
NO_WORKER_TID = 9999  # attempts that never reached a worker (an input could not be fetched)
FETCH_TID = 10000  # fetch lanes are FETCH_TID, FETCH_TID + 1, ...


def json_id(value: Any) -> Any:
    """A function id as JSON holds it: str, int, float and bool as they are, others as text."""
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def trace_events(record: RunRecord) -> dict[str, Any]:
    """The trace document: ``{"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {...}}``."""
    t0 = record.started_at
    us = 1e6

    def ts(t: float) -> float:
        return round((t - t0) * us, 3)

    ids, group, names = record.graph.ids, record.group, record.group_names
    events: list[dict[str, Any]] = []
    threads: set[tuple[int, int]] = set()
    for n, name in enumerate(record.node_names):
        events.append({"ph": "M", "name": "process_name", "pid": n + 1, "tid": 0, "args": {"name": name}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": n + 1, "tid": 0, "args": {"sort_index": n}})
    fetches: list[tuple[float, float, int, int]] = []  # (start, end, pid, position)
    for k in range(len(record)):
        i = record.index[k]
        pid = record.node[k] + 1
        worker = record.worker[k]
        tid = worker if worker >= 0 else NO_WORKER_TID
        threads.add((pid, tid))
        outcome = Outcome(record.outcome[k])
        start, end = record.started[k], record.finished[k]
        args: dict[str, Any] = {
            "function_id": json_id(ids[i]), "attempt": record.attempt[k],
            "node": record.node_names[record.node[k]], "worker": worker, "group": names[group[i]],
            "bytes_in": record.bytes_in[k], "bytes_out": record.bytes_out[k],
            "outcome": OUTCOME_NAMES[outcome],
        }
        error = record.errors.get(k)
        if error is not None:
            args["error"] = f"{error[0]}: {error[1]}"
        events.append({"ph": "X", "cat": "attempt", "name": str(ids[i]), "pid": pid, "tid": tid,
                       "ts": ts(start), "dur": round(max(end - start, 0.0) * us, 3), "args": args})
        if record.fetch_start[k] > 0.0:
            fetches.append((record.fetch_start[k], max(record.fetch_end[k], record.fetch_start[k]), pid, k))
    fetch_tid: dict[int, int] = {}  # position -> its fetch lane's tid
    lanes: dict[int, list[float]] = {}  # pid -> end of the last fetch on each lane
    for start, end, pid, k in sorted(fetches):
        ends = lanes.setdefault(pid, [])
        lane = next((j for j, e in enumerate(ends) if e <= start), len(ends))
        if lane == len(ends):
            ends.append(end)
        else:
            ends[lane] = end
        tid = FETCH_TID + lane
        fetch_tid[k] = tid
        threads.add((pid, tid))
        i = record.index[k]
        events.append({"ph": "X", "cat": "fetch", "name": f"fetch {ids[i]}", "pid": pid, "tid": tid,
                       "ts": ts(start), "dur": round((end - start) * us, 3),
                       "args": {"function_id": json_id(ids[i]), "attempt": record.attempt[k],
                                "bytes_in": record.bytes_in[k]}})
    for flow, (p, k, nbytes) in enumerate(record.transfers()):
        if k not in fetch_tid:
            continue
        p_tid = record.worker[p] if record.worker[p] >= 0 else NO_WORKER_TID
        # the start sits inside the producer's slice, the end at the start of the fetch slice
        start = max(record.finished[p] - 1e-6, record.started[p])
        name = f"{ids[record.index[p]]} -> {ids[record.index[k]]}"
        events.append({"ph": "s", "cat": "transfer", "name": name, "id": flow, "pid": record.node[p] + 1,
                       "tid": p_tid, "ts": ts(start), "args": {"bytes": nbytes}})
        events.append({"ph": "f", "bp": "e", "cat": "transfer", "name": name, "id": flow,
                       "pid": record.node[k] + 1, "tid": fetch_tid[k], "ts": ts(record.fetch_start[k]),
                       "args": {"bytes": nbytes}})
    for pid, tid in sorted(threads):
        if tid >= FETCH_TID:
            label = f"fetch {tid - FETCH_TID}"
        elif tid == NO_WORKER_TID:
            label = "not run (input lost)"
        else:
            label = f"worker {tid}"
        events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": label}})
        events.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "args": {"sort_index": tid}})
    ended = record.finished_at
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {"dag_id": str(record.dag_id), "started_at": t0,
                      "duration_us": None if ended is None else ts(ended), "state": record.state},
    }


def write_trace(record: RunRecord, path: str | os.PathLike[str]) -> str:
    """Write the trace to ``path``; returns it as a string."""
    doc = trace_events(record)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, separators=(",", ":"))
    return os.fspath(path)

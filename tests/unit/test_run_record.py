"""The run's record, its Chrome trace and its view document, from attempts as nodes report
them (ResultRows), with no network."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import pytest

from handoff import DAG, Function
from handoff.observe import view as view_module
from handoff.observe.record import Outcome, RunRecord
from handoff.observe.trace import trace_events
from handoff.observe.view import build_view
from handoff.protocol.rows import ErrorRow, LostInput, ResultRow

T0 = 1_700_000_000.0


def source(i):
    return i


def combine(*xs):
    return sum(xs)


def make_record() -> RunRecord:
    """src0, src1 on node a; an inline 'lift' over src1; 'mid' (src0, lift) on node b whose
    first attempt lost its input and second failed; 'sink' on a after mid."""
    dag = DAG("traced")
    dag.add_function(Function(id="src0", code=source, extra_args=[1]))
    dag.add_function(Function(id="src1", code=source, extra_args=[2]))
    dag.add_function(Function(id="lift", code=source, args=["src1"], type="inline"))
    dag.add_function(Function(id="mid", code=combine, args=["src0", "lift"], group="middle"))
    dag.add_function(Function(id="sink", code=combine, args=["mid"]))
    graph = dag.compile()
    record = RunRecord(dag.id, graph, [dag.functions[i] for i in graph.ids])
    record.started_at = T0
    idx = graph.index

    def row(fid, attempt, ok, start, end, worker, fetch=(0.0, 0.0), nbytes=0, bytes_in=0, error=None,
            lost=None):
        return ResultRow("run", idx[fid], attempt, ok, T0 + start, T0 + end, nbytes, error, -1, lost,
                         worker, T0 + fetch[0] if fetch[0] else 0.0, T0 + fetch[1] if fetch[1] else 0.0,
                         bytes_in)

    boom = ErrorRow("ValueError", "boom", "Traceback (most recent call last):\nValueError: boom\n")
    record.dispatched([(idx["src0"], 1), (idx["src1"], 1)])
    record.add("a", row("src0", 1, True, 0.01, 0.02, 0, nbytes=100))
    record.add("a", row("src1", 1, True, 0.01, 0.03, 1, nbytes=200))
    record.dispatched([(idx["mid"], 1)])
    record.add("b", row("mid", 1, False, 0.04, 0.04, -1, lost=LostInput("a", "src0"),
                        error=ErrorRow("ResultLost", "input 'src0' could not be fetched", "")))
    record.dispatched([(idx["mid"], 2)])
    record.add("b", row("mid", 2, False, 0.05, 0.06, 0, fetch=(0.045, 0.049), bytes_in=300, error=boom))
    record.dispatched([(idx["mid"], 3)])
    record.add("b", row("mid", 3, True, 0.07, 0.08, 0, fetch=(0.061, 0.066), nbytes=8, bytes_in=300))
    record.dispatched([(idx["sink"], 1)])
    record.add("a", row("sink", 1, True, 0.09, 0.10, 1, fetch=(0.081, 0.085), nbytes=8, bytes_in=8))
    record.end(failed=False)
    record.finished_at = T0 + 0.11
    return record


def test_the_record_counts_attempts_and_groups():
    record = make_record()
    assert len(record) == 6
    assert record.done == record.total == 4  # the inline function is not counted
    middle = record.group_names.index("middle")
    assert (record.group_done[middle], record.group_failed[middle]) == (1, 1)  # a lost input is no failure
    assert all(record.running(g) == 0 for g in range(len(record.group_names)))
    assert [a.outcome for a in record.attempts()].count(Outcome.LOST_INPUT) == 1
    # values that crossed nodes: src0 and src1 (through the inline lift) to mid twice, mid to sink
    pairs = Counter((record.graph.ids[record.index[p]], record.graph.ids[record.index[k]])
                    for p, k, _ in record.transfers())
    assert pairs == {("src0", "mid"): 2, ("src1", "mid"): 2, ("mid", "sink"): 1}


def test_trace_has_every_attempt_once_inside_the_run_and_paired_flows():
    record = make_record()
    doc = json.loads(json.dumps(trace_events(record), allow_nan=False))
    events = doc["traceEvents"]
    attempts = [e for e in events if e["ph"] == "X" and e["cat"] == "attempt"]
    assert Counter((e["args"]["function_id"], e["args"]["attempt"]) for e in attempts) == Counter(
        {("src0", 1): 1, ("src1", 1): 1, ("mid", 1): 1, ("mid", 2): 1, ("mid", 3): 1, ("sink", 1): 1})
    outcomes = {(e["name"], e["args"]["attempt"]): e["args"]["outcome"] for e in attempts}
    assert outcomes[("mid", 1)] == "lost_input" and outcomes[("mid", 2)] == "failed"
    assert next(e for e in attempts if e["args"]["attempt"] == 2)["args"]["error"] == "ValueError: boom"
    end = doc["otherData"]["duration_us"]
    for e in events:
        if e["ph"] in ("X", "s", "f"):
            assert 0 <= e["ts"] and e["ts"] + e.get("dur", 0) <= end, e
    names = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert sorted(names.values()) == ["a", "b"]
    assert all(names[e["pid"]] == e["args"]["node"] for e in attempts)
    fetches = [e for e in events if e["ph"] == "X" and e["cat"] == "fetch"]
    assert len(fetches) == 3
    # slices on one thread never overlap (concurrent fetches get lanes of their own)
    by_thread = defaultdict(list)
    for e in events:
        if e["ph"] == "X":
            by_thread[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + e["dur"]))
    for spans in by_thread.values():
        spans.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans
    flows = defaultdict(list)
    for e in events:
        if e["ph"] in ("s", "f"):
            flows[e["id"]].append(e)
    assert len(flows) == 5
    for pair in flows.values():
        assert sorted(e["ph"] for e in pair) == ["f", "s"]
        start, finish = sorted(pair, key=lambda e: e["ph"] == "f")
        assert start["pid"] != finish["pid"] and start["ts"] <= finish["ts"]
        assert any(f["pid"] == finish["pid"] and f["tid"] == finish["tid"] and f["ts"] == finish["ts"]
                   for f in fetches)


def test_view_document_summarises_the_run():
    record = make_record()
    view = json.loads(json.dumps(build_view(record), allow_nan=False))
    s = view["summary"]
    assert (s["functions"], s["done"], s["failed"], s["attempts"], s["retries"]) == (4, 4, 0, 6, 2)
    assert (s["nodes"], s["transfers"], s["bytes_moved"]) == (2, 5, 2 * 100 + 2 * 200 + 8)
    assert [n["name"] for n in view["nodes"]] == ["a", "b"]
    assert {(t["source"], t["target"]): t["count"] for t in view["transfers"]} == {("a", "b"): 4, ("b", "a"): 1}
    assert view["failures"][0]["exc_type"] in ("ValueError", "ResultLost")
    assert view["failures_total"] == 2
    assert not view["timeline"]["binned"]
    assert sum(len(lane["spans"]) for lane in view["timeline"]["lanes"]) == 5  # the lost one never ran
    graph = view["graph"]
    assert not graph["collapsed"] and len(graph["nodes"]) == 5
    assert {n["label"]: n["state"] for n in graph["nodes"]}["mid"] == "done"
    assert view["slowest"][0]["seconds"] == pytest.approx(0.02, abs=1e-6)


def test_view_bins_the_timeline_of_large_runs(monkeypatch):
    monkeypatch.setattr(view_module, "SPAN_LIMIT", 3)
    view = build_view(make_record())
    timeline = view["timeline"]
    assert timeline["binned"] and timeline["bins"] == view_module.BINS
    for lane in timeline["lanes"]:
        assert len(lane["busy"]) == view_module.BINS and all(0 <= x <= 1 for x in lane["busy"])
    busy = sum(sum(lane["busy"]) for lane in timeline["lanes"]) * (timeline["end"] - timeline["start"]) / view_module.BINS
    assert busy == pytest.approx(0.01 + 0.02 + 0.01 + 0.01 + 0.01, rel=1e-3)


def test_a_record_without_attempts_keeps_counting():
    record = make_record()
    lean = RunRecord(record.dag_id, record.graph, record.functions, keep=False)
    lean.add("a", ResultRow("run", 0, 1, True, T0, T0, 1, None, -1, None))
    assert lean.done == 1 and len(lean) == 0


def test_a_function_run_again_counts_once():
    """A result reported twice (an attempt superseded after a node was thought lost, or a
    value recomputed) is two attempts in the record but one function done."""
    record = make_record()
    again = ResultRow("run", record.graph.index["src0"], 2, True, T0 + 0.1, T0 + 0.105, 100, None, -1, None, 1)
    assert not record.add("b", again)
    assert record.done == record.total == 4 and len(record) == 7
    assert record.group_done[record.group_names.index("source")] == 2


@pytest.mark.parametrize("progress", ["yes", "AUTO", 1, None])
def test_execute_rejects_a_bad_progress_option(progress):
    import handoff

    with pytest.raises(ValueError, match=r'progress must be "auto", True, False or a callable'):
        handoff.execute(DAG().add_function(Function(id="f", code=source, extra_args=[1])), progress=progress)


@pytest.mark.parametrize("record", [1, "yes", None])
def test_execute_rejects_a_bad_record_option(record):
    import handoff

    with pytest.raises(ValueError, match="record must be True or False"):
        handoff.execute(DAG().add_function(Function(id="f", code=source, extra_args=[1])), record=record)


def large_record(n: int) -> RunRecord:
    """``n`` functions in 7 groups, chains of 100, run on 3 nodes x 4 workers, one failure."""
    dag = DAG("large")
    for i in range(n):
        dag.add_function(Function(id=i, code=combine, args=[i - 1] if i % 100 else [], group=f"g{i % 7}"))
    graph = dag.compile()
    record = RunRecord(dag.id, graph, [dag.functions[i] for i in graph.ids])
    record.started_at = T0
    boom = ErrorRow("ValueError", "boom", "Traceback\nValueError: boom\n")
    for i in range(n):
        t = T0 + i * 1e-4
        fetch = (t - 2e-5, t - 1e-5) if i % 100 else (0.0, 0.0)
        if i == 5:
            record.add("a", ResultRow("run", i, 1, False, t, t + 5e-5, 0, boom, -1, None, 0, *fetch, 8))
        record.add("abc"[i % 3], ResultRow("run", i, 1 + (i == 5), True, t, t + 5e-5, 8, None, -1, None,
                                           i % 4, *fetch, 8))
    record.end(failed=False)
    return record


def test_the_view_of_a_large_run_stays_small():
    record = large_record(20_000)
    view = build_view(record)
    text = json.dumps(view, allow_nan=False)
    assert len(text) < 300_000, len(text)  # bins and groups, not 20,000 boxes
    assert view["summary"]["functions"] == 20_000 and view["summary"]["attempts"] == 20_001
    assert view["timeline"]["binned"] and len(view["timeline"]["lanes"]) == 12
    graph = view["graph"]
    assert graph["collapsed"] and sorted(n["count"] for n in graph["nodes"]) == [2857] * 6 + [2858]
    assert sum(e[2] for e in graph["edges"]) == 20_000 - 200  # every dependency, counted
    assert len(view["slowest"]) == 20 and len(view["failures"]) == 1
    # two of every three links of a chain cross nodes, and function 5's failed attempt fetched too
    crossing = sum(1 for i in range(20_000) if i % 100 and i % 3 != (i - 1) % 3)
    assert view["summary"]["transfers"] == crossing + 1


def test_an_error_pickles_without_its_partial_result():
    import pickle

    import handoff

    error = handoff.FunctionError("f", "a", 2, "ValueError", "boom", "Traceback\n")
    error.result = object()  # a partial ExecutionResult holds a node; it stays in this process
    copy = pickle.loads(pickle.dumps(error))
    assert copy.result is None and (copy.function_id, copy.attempts, copy.message) == ("f", 2, "boom")

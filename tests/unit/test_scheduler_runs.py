"""The Orchestrator runs several runs at once: concurrency, turns, failures and retries, cancels."""

from __future__ import annotations

import pytest
from scheduler_harness import Cluster, dag_of, fn, sched  # noqa: F401

from handoff.dag import DAG
from handoff.errors import FunctionError, TimeoutError
from handoff.scheduler import (
    CancelRun,
    CancelTasks,
    NodeLost,
    ResultLost,
    TaskFinished,
)

# -- concurrency ---------------------------------------------------------------------------


def test_max_concurrency_bounds_in_flight_functions(sched):
    c = Cluster(sched, {"a": {}, "b": {}})
    c.submit(dag_of(*[fn(k) for k in range(10)]), max_concurrency=3)
    seen = 0
    while c.running:
        assert len(c.running) <= 3
        seen = max(seen, len(c.running))
        c.finish(c.running_ids()[0])
    assert seen == 3 and c.finished["r"].error is None


def turns_of_two_runs(c, at_once):
    """Submit two runs of four tasks that each take a whole cpu of the cluster's one node,
    finish the oldest running task until none is left (``at_once`` in flight while enough
    are left); the run of each, in that order."""
    c.submit(dag_of(*[fn(k, cost={"cpu": 1}) for k in range(4)], id="one"), run_id="r1")
    c.submit(dag_of(*[fn(k, cost={"cpu": 1}) for k in range(4)], id="two"), run_id="r2")
    turns = []
    while c.order:
        assert len(c.running) == min(at_once, 8 - len(turns))
        run_id, i = c.order[0]
        turns.append(run_id)
        c.finish(i, run_id)
    assert c.finished["r1"].error is None and c.finished["r2"].error is None
    assert c.idle()
    return turns


def test_runs_are_isolated_and_take_turns(sched):
    c = Cluster(sched, {"a": {"cpu": 1}}, lookahead=0)
    assert turns_of_two_runs(c, at_once=1) == ["r1", "r2", "r1", "r2", "r1", "r2", "r1", "r2"]


def test_runs_take_turns_with_queued_ahead_work(sched):
    # one running, one queued ahead: r1 queued its second task ahead before r2 arrived;
    # then the runs alternate
    c = Cluster(sched, {"a": {"cpu": 1}})
    assert turns_of_two_runs(c, at_once=2) == ["r1", "r1", "r2", "r1", "r2", "r1", "r2", "r2"]


def test_a_failing_run_does_not_disturb_another(sched):
    c = Cluster(sched, {"a": {}, "b": {}})
    c.submit(dag_of(fn("x"), fn("y", ["x"]), id="good"), run_id="good")
    c.submit(dag_of(fn("x"), fn("boom"), id="bad"), run_id="bad", max_retries=0)
    c.finish("boom", "bad", ok=False)
    assert isinstance(c.finished["bad"].error, FunctionError)
    assert ("bad", "a", [0]) in c.cancelled or ("bad", "b", [0]) in c.cancelled
    c.drain()
    assert c.finished["good"].error is None and c.idle()


# -- failures and retries ------------------------------------------------------------------


def test_failed_attempt_is_retried_on_another_node(sched):
    c = Cluster(sched, {"a": {"cpu": 1}, "b": {"cpu": 1}})
    c.submit(dag_of(fn("x", cost={"cpu": 1})), max_retries=2)
    first = c.node_of("x")
    c.finish("x", ok=False)
    assert c.node_of("x") != first
    c.finish("x", ok=False)
    c.finish("x")
    assert c.finished["r"].error is None
    assert c.orch.run("r").function_stats()["x"].attempts == 3
    assert c.idle()


def test_retry_uses_the_failed_node_if_nothing_else_fits(sched):
    c = Cluster(sched, {"a": {"cpu": 1}, "b": {}})
    c.submit(dag_of(fn("x", cost={"cpu": 1})), max_retries=1)
    c.finish("x", ok=False)
    assert c.node_of("x") == "a"


def test_attempts_run_out_fail_fast(sched):
    c = Cluster(sched, {"a": {"cpu": 4}, "b": {"cpu": 4}})
    c.submit(
        dag_of(
            fn("boom", cost={"cpu": 1}),
            fn("slow1", cost={"cpu": 1}),
            fn("slow2", cost={"cpu": 4}),
            fn("later", ["slow1"]),
        ),
        max_retries=1,
    )
    c.finish("boom", ok=False)
    node = c.node_of("boom")
    out = c.finish("boom", ok=False)
    fin = c.finished["r"]
    err = fin.error
    assert isinstance(err, FunctionError)
    assert (err.function_id, err.node, err.attempts, err.exc_type, err.message) == (
        "boom",
        node,
        2,
        "ValueError",
        "boom broke",
    )
    assert err.remote_traceback == "Traceback ..."
    assert fin.error_info.exc_blob == b"blob"
    assert any(isinstance(i, CancelTasks) for i in out)
    assert not c.running and c.idle()
    assert c.orch.active_runs == []
    # late results of cancelled tasks are ignored
    assert c.orch.handle(TaskFinished("r", 1, 1, "a", True)) == []


def test_function_max_retries_overrides_the_runs(sched):
    c = Cluster(sched, {"a": {}})
    c.submit(dag_of(fn("x", max_retries=0), fn("y")), max_retries=5)
    c.finish("x", ok=False)
    assert c.finished["r"].error.attempts == 1
    c = Cluster(sched, {"a": {}})
    c.submit(dag_of(fn("x", max_retries=2)), max_retries=0)
    c.finish("x", ok=False)
    c.finish("x", ok=False)
    c.finish("x")
    assert c.finished["r"].error is None


def test_failure_without_error_report_still_says_what_failed(sched):
    c = Cluster(sched, {"a": {}})
    c.submit(dag_of(fn("x")), max_retries=0)
    i = c.index("r", "x")
    c.handle(TaskFinished("r", i, 1, "a", False, None, 0, 1))
    err = c.finished["r"].error
    assert (
        isinstance(err, FunctionError) and err.function_id == "x" and err.exc_type == "UnknownError"
    )


def test_late_and_unknown_events_are_ignored(sched):
    c = Cluster(sched, {"a": {}, "b": {}})
    c.submit(dag_of(fn("x"), fn("y", ["x"])), max_retries=3)
    i = c.index("r", "x")
    assert c.orch.handle(TaskFinished("nope", i, 1, "a", True)) == []
    assert c.orch.handle(TaskFinished("r", i, 7, "a", True)) == []  # stale attempt
    assert c.orch.handle(TaskFinished("r", 1, 1, "a", True)) == []  # never dispatched
    assert (
        c.orch.handle(
            ResultLost("nope", 0), CancelRun("nope", TimeoutError("x")), NodeLost("ghost")
        )
        == []
    )
    c.finish("x", ok=False)  # attempt 1 failed, attempt 2 dispatched
    assert c.orch.handle(TaskFinished("r", i, 1, "a", True)) == []
    c.drain()
    assert c.orch.handle(TaskFinished("r", 1, 1, "a", True)) == []
    with pytest.raises(TypeError, match="does not handle"):
        c.orch.handle("not an event")


# -- cancel --------------------------------------------------------------------------------


def test_cancel_run_cancels_in_flight_and_releases_everything(sched):
    c = Cluster(sched, {"a": {"cpu": 2}, "b": {"cpu": 2}}, lookahead=0)
    c.submit(dag_of(*[fn(k, cost={"cpu": 1}) for k in range(6)]))
    assert len(c.running) == 4
    reason = TimeoutError("run of DAG 'd'", 3.0)
    c.handle(CancelRun("r", reason))
    assert c.finished["r"].error is reason
    assert {node for _, node, _ in c.cancelled} == {"a", "b"}
    assert not c.running and c.idle()
    assert c.orch.handle(CancelRun("r", reason)) == []


def test_cancel_run_cancels_queued_ahead_tasks_too(sched):
    c = Cluster(sched, {"a": {"cpu": 2}, "b": {"cpu": 2}})
    c.submit(dag_of(*[fn(k, cost={"cpu": 1}) for k in range(8)]))
    assert len(c.running) == 6 and c.orch.queued_ahead() == {"a": 1, "b": 1}
    ahead = c.orch.run("r").queued_ahead()
    c.handle(CancelRun("r", TimeoutError("run of DAG 'd'", 3.0)))
    cancelled = {(node, i) for _, node, indices in c.cancelled for i in indices}
    assert {(node, i) for i, node in ahead.items()} <= cancelled and len(cancelled) == 6
    assert not c.running and c.idle() and c.orch.queued_ahead() == {}

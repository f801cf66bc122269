"""One state per task: the transition table, ``validate_state`` and the debug setting."""

from __future__ import annotations

import pytest
from scheduler_harness import Cluster, dag_of, fn, sched  # noqa: F401

from handoff.config import NodeConfig
from handoff.errors import FunctionError
from handoff.scheduler import NodeJoined, Orchestrator, RunSpec, TaskStatus, Tick
from handoff.scheduler.tasks import ALLOWED, TaskState, TaskStateError, transition

S = TaskStatus


def test_an_illegal_transition_names_both_states():
    task = TaskState(3)
    assert task.status == S.WAITING
    named = "task 3 of run 'r': illegal transition WAITING -> DONE"
    with pytest.raises(TaskStateError, match=named):
        transition(task, S.DONE, "r")
    assert task.status == S.WAITING
    for status in (S.READY, S.DISPATCHED, S.DONE, S.READY, S.QUEUED_AHEAD, S.FAILED):
        transition(task, status)
    assert task.status == S.FAILED
    assert TaskState(0, inline=True).status == S.INLINE


def test_the_table_matches_the_checks_and_final_states_have_no_way_out():
    for old in TaskStatus:
        for new in TaskStatus:
            task = TaskState(0)
            task.status = old
            if new in ALLOWED[old]:
                transition(task, new)
                assert task.status == new
            else:
                with pytest.raises(TaskStateError) as err:
                    transition(task, new)
                assert (err.value.old, err.value.new) == (old, new)
    assert not ALLOWED[S.FAILED] and not ALLOWED[S.CANCELLED] and not ALLOWED[S.INLINE]


def test_statuses_follow_a_run(sched):
    c = Cluster(sched, {"a": {"gpu": 1}}, lookahead=1)
    c.submit(dag_of(fn("x", cost={"gpu": 1}), fn("y", cost={"gpu": 1}), fn("z", ["x", "y"])))
    state = c.orch.run("r")
    x, y, z = (c.index("r", f) for f in "xyz")
    assert [state.task(i).status for i in (x, y, z)] == [S.DISPATCHED, S.QUEUED_AHEAD, S.WAITING]
    c.finish("x")
    assert state.task(x).status == S.DONE and state.task(x).location == "a"
    assert state.task(y).status == S.DISPATCHED  # claimed once x gave the gpu back
    c.finish("y")
    assert state.task(z).status == S.DISPATCHED and state.task(z).attempt == 1
    c.finish("z")
    assert {state.task(i).status for i in (x, y, z)} == {S.DONE}


def test_a_failed_run_marks_the_failing_task_and_cancels_the_rest(sched):
    c = Cluster(sched, {"a": {"cpu": 2}})
    c.submit(dag_of(fn("bad"), fn("ok"), fn("later", ["ok"])), max_retries=0)
    c.finish("bad", ok=False)
    assert isinstance(c.finished["r"].error, FunctionError)
    state = c.orch.run("r")
    statuses = {f: state.task(c.index("r", f)).status for f in ("bad", "ok", "later")}
    assert statuses == {"bad": S.FAILED, "ok": S.CANCELLED, "later": S.CANCELLED}
    state.validate_state()


@pytest.fixture
def busy_cluster(sched):
    c = Cluster(sched, {"a": {"cpu": 2}, "b": {"cpu": 1}}, slots={"a": 2, "b": 1})
    c.submit(dag_of(*[fn(k, cost={"cpu": 1}) for k in range(6)], fn("sink", list(range(6)))))
    return c


def corrupt_queue(c):
    state = c.orch.run("r")
    state.parked[next(iter(state.parked))].pop() if state.parked else state.queue.pop()


def corrupt_status(c):
    state = c.orch.run("r")
    task = next(t for t in state.tasks if t.status == S.DISPATCHED)
    task.status = S.DONE  # behind the table's back: no location, still in the in-flight map


def corrupt_claim(c):
    c.ledger.release_vec(c.ledger.node_index("a"), c.ledger.resource_vector({"cpu": 1}))


def corrupt_count(c):
    c.orch.nodes.busy["a"] += 1


def corrupt_ahead(c):
    state = c.orch.run("r")
    c.orch.nodes.ahead.setdefault("b", []).append((state, next(iter(state.inflight))))


def corrupt_queued_count(c):
    c.orch.nodes.queued += 1


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (corrupt_queue, "misses"),
        (corrupt_status, "in-flight map"),
        (corrupt_claim, "claim"),
        (corrupt_count, "in-flight counts"),
        (corrupt_ahead, "queued-ahead"),
        (corrupt_queued_count, "queued ahead counted"),
    ],
)
def test_validate_state_finds_each_kind_of_drift(busy_cluster, corrupt, message):
    busy_cluster.orch.validate_state()  # positive control: the same state, untouched, is valid
    corrupt(busy_cluster)
    with pytest.raises(AssertionError, match=message):
        busy_cluster.orch.validate_state()


def test_the_debug_setting_validates_after_every_event(sched):
    ledger = sched.ResourceLedger()
    orch = Orchestrator(ledger, "a", debug_state=True)
    orch.handle(NodeJoined("a", {"cpu": 1}))
    d = dag_of(fn("x", cost={"cpu": 1}), fn("y", cost={"cpu": 1}))
    g = d.compile()
    orch.submit(RunSpec("r", d.id, g, [d.functions[i] for i in g.ids], deadline=5.0))
    orch.handle(Tick(1.0))  # valid: nothing raised
    orch.nodes.busy["a"] += 1
    with pytest.raises(AssertionError, match="in-flight counts"):
        orch.handle(Tick(2.0))
    quiet = Orchestrator(sched.ResourceLedger(), "a")
    quiet.handle(NodeJoined("a", {"cpu": 1}))
    quiet.nodes.busy["a"] += 1
    quiet.handle(Tick(2.0))  # without the setting nobody looks


def test_the_debug_setting_is_read_from_the_environment(monkeypatch, tmp_path):
    kw = dict(name="n", resources={"cpu": 1}, workers=1, runtime_dir=str(tmp_path))
    kw["store_limit"] = "1M"
    monkeypatch.delenv("HANDOFF_DEBUG_STATE", raising=False)
    assert NodeConfig(**kw).debug_state is False
    monkeypatch.setenv("HANDOFF_DEBUG_STATE", "1")
    assert NodeConfig(**kw).debug_state is True
    assert NodeConfig(**kw, debug_state=False).debug_state is False


def test_waiting_work_says_node_by_node_why(sched):
    c = Cluster(sched, {"a": {"cpu": 2}, "b": {"cpu": 1, "gpu": 1}}, lookahead=0)
    c.submit(dag_of(fn("x", cost={"cpu": 2}), fn("y", cost={"cpu": 2}), fn("g", cost={"gpu": 1})))
    assert c.running_ids() == ["g", "x"]
    assert c.orch.waiting("r") == {
        "y": "waits for room: node 'a' has cpu=0 of the 2 it needs free; "
        "node 'b' is too small (has cpu=1 of the 2 it needs)"
    }
    c.submit(dag_of(*[fn(k) for k in range(3)], id="z"), run_id="z", max_concurrency=1)
    assert c.orch.waiting("z") == {
        k: "the run already has max_concurrency=1 tasks in flight" for k in (1, 2)
    }
    c.finish("x")
    assert c.orch.waiting("r") == {}


def test_waiting_work_names_the_lost_node_it_is_held_for_and_the_queue_it_waits_in(sched):
    c = Cluster(sched, {"a": {"gpu": 1}, "b": {"gpu": 1}}, lookahead=1)
    c.submit(dag_of(fn("p", node="b"), *[fn(k, cost={"gpu": 1}) for k in range(3)]), deadline=9.0)
    c.lose("b")
    reasons = c.orch.waiting("r")
    assert reasons["p"] == (
        "pinned to node 'b', which was lost: held until it joins again or the run's timeout"
    )
    ahead = [fid for fid, why in reasons.items() if why.startswith("queued ahead")]
    assert [reasons[f] for f in ahead] == [
        "queued ahead on node 'a', which has gpu=0 of the 1 it needs free"
    ]


def test_nodes_with_the_same_reason_share_it(sched):
    caps = {f"n{k}": {"cpu": 1} for k in range(7)}
    caps["g"] = {"cpu": 1, "gpu": 1}
    c = Cluster(sched, caps, lookahead=0)
    c.submit(dag_of(fn("a", cost={"gpu": 1}), fn("b", cost={"gpu": 1})))
    assert c.running_ids() == ["a"]
    assert c.orch.waiting("r") == {
        "b": "waits for room: nodes 'n0', 'n1', 'n2', 'n3', 'n4' and 2 more are too small "
        "(have no gpu); node 'g' has gpu=0 of the 1 it needs free"
    }

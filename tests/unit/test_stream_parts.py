"""Streaming pipelines without processes: the credit router, replica claims in a node's job
table, the pipeline spec a DAG becomes, and the stream messages on the wire."""

from __future__ import annotations

import pytest

from handoff import DAG, Argument, Function
from handoff.errors import InvalidFunctionError, ItemError, ValidationError
from handoff.node.execution.jobs import (
    JobStatus, JobSubmitted, NodeJobs, ReplicaClaimed, ReplicaReleased, RunOnWorker, WorkerFinished,
)
from handoff.node.streams.routing import Router
from handoff.protocol import decode, encode
from handoff.protocol.rows import ErrorRow, Leaf
from handoff.protocol.streams import (
    ItemRow, OutRow, ReplicaRow, StageCall, StageHook, StageRow, StreamOpen, StreamOut,
)
from handoff.stream.spec import build_spec


def stage(index, consumers=(), slots=(), parallelism=1, batch_size=0):
    call = None if not slots else StageCall(0, "variadic", [Leaf(k) for k in range(len(slots))])
    return StageRow(index, list(consumers), list(slots), parallelism, batch_size, 0.0, -1,
                    not consumers, call, None)


class Sent:
    def __init__(self):
        self.items: list[tuple[int, int, int]] = []  # (seq, stage, replica)

    def __call__(self, row: ReplicaRow, item: ItemRow, frames: list) -> None:
        assert (row.stage, row.replica) == (item.stage, item.replica)
        self.items.append((item.seq, item.stage, item.replica))


def test_router_holds_values_past_the_window_and_acks_let_them_go():
    sent = Sent()
    router = Router("a", [stage(0, [1]), stage(1, [], [0], parallelism=2)], window=2, join_window=100, deliver=sent)
    router.set_plan([ReplicaRow(1, 0, "a", 0), ReplicaRow(1, 1, "b", 0)])
    for seq in range(6):
        router.send(0, seq, [b"v"], "a")
    assert len(sent.items) == 4 and router.held_count == 2  # two replicas x a window of two
    assert sorted(r for _, _, r in sent.items) == [0, 0, 1, 1]  # least busy first
    router.on_ack(0, 1, 1, 0, 1)
    assert sent.items[-1] == (4, 1, 1) and router.held_count == 1
    router.on_ack(0, 1, 0, 7, 1)  # an ack from an older generation frees nothing
    assert router.held_count == 1


def test_router_sends_a_join_s_inputs_to_one_replica_per_item():
    sent = Sent()
    stages = [stage(0, [2]), stage(1, [2]), stage(2, [], [0, 1], parallelism=3)]
    router = Router("a", stages, window=2, join_window=100, deliver=sent)
    router.set_plan([ReplicaRow(2, r, "a", 0) for r in range(3)])
    for seq in range(9):
        router.send(0, seq, [b"x"], "a")
        router.send(1, seq, [b"y"], "a")
    by_seq: dict[int, set] = {}
    for seq, _, replica in sent.items:
        by_seq.setdefault(seq, set()).add(replica)
    assert all(replicas == {seq % 3} for seq, replicas in by_seq.items())


def test_a_new_placement_resets_the_window_of_a_re_created_replica_and_forget_drops_held():
    sent = Sent()
    router = Router("a", [stage(0, [1]), stage(1, [], [0])], window=1, join_window=100, deliver=sent)
    router.set_plan([ReplicaRow(1, 0, "dead", 0)])
    for seq in range(3):
        router.send(0, seq, [b"v"], "a")
    assert router.held_count == 2
    router.forget({2})
    assert router.held_count == 1
    router.set_plan([ReplicaRow(1, 0, "b", 1)])
    assert sent.items == [(0, 1, 0), (1, 1, 0)] and router.held_count == 0


def test_a_replica_holds_its_claim_and_jobs_wait_behind_it():
    jobs = NodeJobs("me", {"cpu": 2.0})
    jobs.handle(ReplicaClaimed("r1", {"cpu": 2.0}))
    jobs.validate_state()
    out = jobs.handle(JobSubmitted(1, "run", 0, "driver", {"cpu": 1.0}, [], "job"))
    assert out == [] and jobs.jobs[1].status is JobStatus.BLOCKED
    out = jobs.handle(ReplicaReleased("r1"))
    jobs.validate_state()
    assert out == [RunOnWorker("job")]
    # a replica placed while jobs hold the room takes its claim as soon as they end
    jobs.handle(ReplicaClaimed("r2", {"cpu": 2.0}))
    assert jobs.replicas["r2"][1] is False
    jobs.handle(WorkerFinished(1, None))
    jobs.validate_state()
    assert jobs.replicas["r2"][1] is True and jobs.free()["cpu"] == 0.0


def double(x):
    return 2 * x


def add(a, b):
    return a + b


def test_a_dag_becomes_stages_with_slots_consumers_and_sinks():
    dag = DAG()
    dag.add_function(Function(id="x", type="input"))
    dag.add_function(Function(id="plus", args=["x"], code=double, type="inline"))
    dag.add_function(Function(id="d", args=["plus"], code=double, parallelism=3))
    dag.add_function(Function(id="j", args=["x", Argument("d", deserialization_fn=double)], code=add,
                              batch_size=4, batch_timeout=0.5))
    spec = build_spec(dag)
    assert spec.function_ids == ["x", "d", "j"] and spec.inputs == [0] and spec.sinks == [2]
    x, d, j = spec.stages
    assert x.call is None and x.consumers == [1, 2]
    assert d.slots == [0] and d.parallelism == 3 and isinstance(d.call.children[0], StageCall)  # inline
    assert j.slots == [0, 1] and j.batch_size == 4 and j.batch_timeout == 0.5 and j.sink
    assert isinstance(j.call.children[1], StageHook) and j.call.children[1].slot == 1


def test_dags_that_are_not_pipelines_are_refused():
    with pytest.raises(ValidationError, match="type='input'"):
        build_spec(DAG().add_function(Function(id="a", code=double)))
    dag = DAG().add_function(Function(id="x", type="input"))
    with pytest.raises(InvalidFunctionError, match="feeds no function"):
        build_spec(dag)
    with pytest.raises(InvalidFunctionError, match="takes no code, args"):
        DAG().add_function(Function(id="x", type="input", code=double, args=["y"]))
    with pytest.raises(InvalidFunctionError, match="no init, parallelism or batch_size"):
        DAG().add_function(Function(id="i", code=double, type="inline", parallelism=2))
    with pytest.raises(InvalidFunctionError, match="init must be"):
        DAG().add_function(Function(id="i", code=double, init=3))  # type: ignore[arg-type]


def test_stream_messages_cross_the_wire_with_any_function_ids():
    spec = build_spec(DAG().add_function(Function(id=("in", 1), type="input"))
                      .add_function(Function(id=("out", 2), args=[("in", 1)], code=double)))
    msg = StreamOpen("a", "s", spec.function_ids, spec.stages, [ReplicaRow(1, 0, "a", 0)], 64, 3, blobs=spec.blobs)
    back = decode(encode(msg))
    assert back.function_ids == [("in", 1), ("out", 2)] and back.stages == spec.stages
    out = StreamOut("a", "s", [OutRow(3, 1, ErrorRow("E", "m", "tb"), -1), OutRow(4, 1, None, 0)], blobs=[[b"v"]])
    assert decode(encode(out)) == out


def test_an_item_error_pickles_with_its_data():
    import pickle

    err = pickle.loads(pickle.dumps(ItemError(5, ("f", 1), "ValueError", "bad", "tb")))
    assert (err.item, err.function_id, err.exc_type, err.message, err.remote_traceback) == (5, ("f", 1), "ValueError", "bad", "tb")
    assert "item 5 failed in function ('f', 1): ValueError: bad" in str(err)

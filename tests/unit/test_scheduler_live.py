"""Live runs in the pure scheduler: functions added while the run goes on, each settling on
its own (success, failure with its dependents, cancel, withdrawal), node loss, closing.
Every step is followed by ``validate_state()``."""

from __future__ import annotations

from concurrent.futures import CancelledError

import pytest

from handoff import _core
from handoff.dag import Function
from handoff.errors import AllocationError, FunctionError
from handoff.scheduler import (
    CancelRun, CancelTasks, Dispatch, ErrorInfo, NodeLost, Orchestrator, ReleaseRun, RunFinished,
    RunSpec, TaskFinished,
)
from handoff.scheduler.live import LiveRun, empty_graph
from handoff.scheduler.tasks import TaskStatus


def noop(*args):
    return None


class Live:
    """One live run on an orchestrator with nodes ``a`` and ``b`` (2 cpus each)."""

    def __init__(self, slots=64, retries=0):
        self.ledger = _core.ResourceLedger()
        for name in ("a", "b"):
            self.ledger.register(name, {"cpu": 2})
        self.orch = Orchestrator(self.ledger, "a", default_slots=slots, debug_state=True)
        self.out = self.orch.submit_live(RunSpec("r", "d", empty_graph(), [], max_retries=retries))
        self.run = self.orch.run("r")
        assert isinstance(self.run, LiveRun)
        self.running: dict[int, tuple[str, int]] = {}
        self.count = 0

    def add(self, *deps_lists, **kw):
        functions, deps = [], []
        first = self.count
        for ins in deps_lists:
            functions.append(Function(id=f"f{self.count}", code=noop, **kw))
            deps.append(list(ins))
            self.count += 1
        self.apply(self.orch.extend("r", functions, deps))
        return list(range(first, self.count))

    def apply(self, out):
        self.out = out
        for ins in out:
            if isinstance(ins, Dispatch):
                for i, attempt in ins.tasks:
                    self.running[i] = (ins.node, attempt)
            elif isinstance(ins, CancelTasks):
                for i in ins.indices:
                    self.running.pop(i, None)
        return out

    def finish(self, i, ok=True):
        node, attempt = self.running.pop(i)
        info = None if ok else ErrorInfo("ValueError", "bad")
        return self.apply(self.orch.handle(TaskFinished("r", i, attempt, node, ok, info)))

    def settled(self):
        got, self.run.settled = self.run.settled, []
        return {i: err for i, err, _ in got}


def test_functions_added_later_run_on_inputs_added_earlier():
    live = Live()
    a, b = live.add([], [])
    assert set(live.running) == {a, b}
    (c,) = live.add([a, b])
    assert c not in live.running
    live.finish(a)
    assert live.settled() == {a: None}
    live.finish(b)
    assert c in live.running
    live.finish(c)
    assert live.settled() == {b: None, c: None}
    (d,) = live.add([c])  # an input completed before it was added
    assert d in live.running


def test_a_failure_settles_the_function_and_its_dependents_only():
    live = Live()
    a, b = live.add([], [])
    c, d = live.add([a], [b])
    (e,) = live.add([c])
    live.finish(a, ok=False)
    got = live.settled()
    assert set(got) == {a, c, e} and all(isinstance(err, FunctionError) for err in got.values())
    assert got[c] is got[a] and got[e] is got[a]
    assert live.run.tasks[a].status == TaskStatus.FAILED
    assert live.run.tasks[c].status == TaskStatus.CANCELLED
    assert not live.run.finished
    live.finish(b)
    live.finish(d)
    assert live.settled() == {b: None, d: None}
    (f,) = live.add([a])  # added after its input failed: settles at once with that error
    assert live.settled()[f] is got[a]


def test_retries_are_the_runs_then_the_functions_own():
    live = Live(retries=1)
    (a,) = live.add([])
    live.finish(a, ok=False)
    assert a in live.running and not live.settled()  # retried
    live.finish(a, ok=False)
    assert isinstance(live.settled()[a], FunctionError)
    (b,) = live.add([], max_retries=0)
    live.finish(b, ok=False)
    assert isinstance(live.settled()[b], FunctionError)


def test_a_function_that_fits_no_node_settles_with_an_allocation_error():
    live = Live()
    (a,) = live.add([], cost={"cpu": 8})
    (b,) = live.add([], node="nowhere")
    (c,) = live.add([a])
    got = live.settled()
    assert isinstance(got[a], AllocationError) and isinstance(got[b], AllocationError)
    assert got[c] is got[a]
    assert not live.running


def test_cancel_of_pending_work_and_withdrawal_of_placed_work():
    live = Live(slots=1)
    a, b, c = live.add([], [], [])
    assert set(live.running) == {a, b}  # one slot on each node
    (d,) = live.add([c])
    live.apply(live.orch.settle_live("r", [c], CancelledError()))
    got = live.settled()
    assert set(got) == {c, d} and isinstance(got[c], CancelledError)
    node, _ = live.running.pop(a)
    live.apply(live.orch.settle_live("r", [a], CancelledError(), withdrawn=True))
    assert not any(isinstance(ins, CancelTasks) for ins in live.out)  # its node never heard of it
    assert live.orch.node_load()[node] == 0


def test_a_lost_node_re_places_running_work_and_recomputes_lost_values():
    live = Live()
    live.add([], [], [])
    on_a = sorted(i for i, (node, _) in live.running.items() if node == "a")
    assert len(on_a) >= 2
    done, busy = on_a[0], on_a[1]
    live.finish(done)
    assert live.settled() == {done: None}
    live.apply(live.orch.handle(NodeLost("a", 0.0)))
    assert live.running[done][0] == "b" and live.running[busy][0] == "b"  # recompute, re-place
    for i in list(live.running):
        live.finish(i)
    assert done not in live.settled()  # settled once only
    assert live.run.relocated and live.run.tasks[done].location == "b"


def test_closing_ends_the_run_once_everything_settled():
    live = Live()
    (a,) = live.add([])
    assert live.orch.close_live("r") == []
    out = live.finish(a)
    assert any(isinstance(ins, RunFinished) and ins.error is None for ins in out)
    assert any(isinstance(ins, ReleaseRun) for ins in out)
    assert live.run.finished


def test_cancelling_the_run_ends_every_open_function():
    live = Live()
    a, b = live.add([], [])
    live.finish(a, ok=False)
    out = live.apply(live.orch.handle(CancelRun("r", FunctionError("x", "a", 1, "E", "m"))))
    assert any(isinstance(ins, RunFinished) for ins in out)
    assert live.run.finished and live.run.tasks[b].status == TaskStatus.CANCELLED
    assert live.run.tasks[a].status == TaskStatus.FAILED


@pytest.mark.parametrize("n", [1, 50])
def test_many_batches_keep_the_state_valid(n):
    live = Live(slots=3)
    for k in range(n):
        live.add([], *([[live.count - 1]] if live.count else []))
        while live.running:
            live.finish(next(iter(live.running)), ok=(k % 7 != 3))
    assert live.run.open == 0


@pytest.mark.parametrize("seed", range(6))
def test_random_steps_keep_every_invariant(seed):
    """Random additions (random inputs, some costed or pinned), completions, failures, cancels
    and withdrawals, a node lost and back; the orchestrator validates its state after every
    step, and in the end every function has settled exactly once."""
    import random

    from handoff.scheduler import NodeJoined

    rng = random.Random(seed)
    live = Live(slots=rng.choice([1, 2, 8]), retries=rng.choice([0, 1]))
    seen: dict[int, object] = {}
    lost_node = False
    for _ in range(300):
        step = rng.random()
        if step < 0.35 or not live.count:
            n = rng.randint(1, 4)
            deps = [rng.sample(range(live.count), k=min(live.count, rng.randint(0, 2))) for _ in range(n)]
            kw = rng.choice([{}, {}, {"cost": {"cpu": 1}}, {"node": "b"}, {"max_retries": 1}])
            live.add(*deps, **kw)
        elif step < 0.75 and live.running:
            live.finish(rng.choice(sorted(live.running)), ok=rng.random() < 0.8)
        elif step < 0.85:
            open_ = [i for i in range(live.count) if not live.run.is_settled(i)]
            if open_:
                i = rng.choice(open_)
                withdrawn = i in live.running and rng.random() < 0.5
                if withdrawn:
                    live.running.pop(i)
                live.apply(live.orch.settle_live("r", [i], CancelledError(), withdrawn=withdrawn))
        elif step < 0.9 and not lost_node:
            live.apply(live.orch.handle(NodeLost("a", 0.0)))
            live.running = {i: v for i, v in live.running.items() if v[0] != "a"}
            lost_node = True
        elif step < 0.95 and lost_node:
            live.apply(live.orch.handle(NodeJoined("a", {"cpu": 2})))
            lost_node = False
        for i, err in live.settled().items():
            assert i not in seen, f"function {i} settled twice"
            seen[i] = err
    if lost_node:
        live.apply(live.orch.handle(NodeJoined("a", {"cpu": 2})))
    live.apply(live.orch.close_live("r"))
    for _ in range(10 * live.count + 10):
        if not live.running:
            break
        live.finish(sorted(live.running)[0])
    for i, err in live.settled().items():
        assert i not in seen
        seen[i] = err
    assert sorted(seen) == list(range(live.count))
    assert live.run.finished

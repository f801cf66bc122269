"""Shared harness of the scheduler tests: a fake node layer around one Orchestrator.

``Cluster`` plays the node layer: it records Dispatches as running tasks, finishes them on
request, and after every step calls ``Orchestrator.validate_state()`` (every task's status
against the indexes kept beside it, node counters, queued-ahead queues, ledger claims) and
checks that no node holds more than its slots. ``sched`` wires the scheduler to one core
implementation; the random drivers are shared by the randomized tests.
"""

from __future__ import annotations

import random

import pytest

import handoff.scheduler.orchestrator as orchestrator_module
import handoff.scheduler.placement as placement_module
import handoff.scheduler.placer as placer_module
import handoff.scheduler.run as run_module
from handoff.dag import DAG, Collocated, Function
from handoff.errors import TimeoutError
from handoff.scheduler import (
    CancelRun, CancelTasks, Dispatch, ErrorInfo, NodeJoined, NodeLost, Orchestrator, ReleaseRun,
    ResultLost, RunFinished, RunSpec, TaskFinished, Tick,
)


@pytest.fixture
def sched(core, monkeypatch):
    """The scheduler wired to one core implementation (ledger, tracker and allocate alike)."""
    for module in (run_module, orchestrator_module, placement_module, placer_module):
        monkeypatch.setattr(module, "_core", core)
    return core


def noop(*args):
    return None


def fn(fid, args=(), **kw):
    return Function(id=fid, code=noop, args=list(args), **kw)


def dag_of(*functions, id="d"):
    d = DAG(id)
    for f in functions:
        d.add_function(f)
    return d


class Cluster:
    """Plays the node layer around one Orchestrator."""

    def __init__(self, core, nodes, slots=None, local="local", lookahead=None):
        self.ledger = core.ResourceLedger()
        kw = {} if lookahead is None else {"lookahead": lookahead}
        self.orch = Orchestrator(self.ledger, local, **kw)
        self.running: dict[tuple[str, int], tuple[int, str]] = {}  # (run, index) -> (attempt, node)
        self.order: list[tuple[str, int]] = []  # dispatch order of what is running
        self.dispatched: list[tuple[str, int, int, str]] = []
        self.cancelled: list[tuple[str, str, list]] = []
        self.finished: dict[str, RunFinished] = {}
        self.released: dict[str, list] = {}
        self.dags: dict[str, DAG] = {}
        self.clock = 0.0
        for name, s in (slots or {}).items():
            self.orch.set_node_slots(name, s)
        self.apply(self.orch.handle(*[NodeJoined(n, c) for n, c in nodes.items()]))

    # driving
    def apply(self, instructions):
        for ins in instructions:
            if isinstance(ins, Dispatch):
                assert ins.tasks, "empty dispatch"
                for i, a in ins.tasks:
                    key = (ins.run_id, i)
                    assert key not in self.running, f"{key} dispatched twice"
                    self.running[key] = (a, ins.node)
                    self.order.append(key)
                    self.dispatched.append((ins.run_id, i, a, ins.node))
            elif isinstance(ins, CancelTasks):
                self.cancelled.append((ins.run_id, ins.node, list(ins.indices)))
                for i in ins.indices:
                    assert self.running.pop((ins.run_id, i))[1] == ins.node
            elif isinstance(ins, RunFinished):
                assert ins.run_id not in self.finished, "finished twice"
                self.finished[ins.run_id] = ins
            elif isinstance(ins, ReleaseRun):
                self.released[ins.run_id] = list(ins.nodes)
            else:
                raise AssertionError(f"unexpected instruction {ins!r}")
        self.order = [k for k in self.order if k in self.running]
        self.check()
        return instructions

    def check(self):
        self.orch.validate_state()
        load, slots = self.orch.node_load(), self.orch.nodes.slots
        for name, n in load.items():
            assert n <= slots[name], f"node {name!r}: {n} tasks in flight, {slots[name]} slots"
        for run_id in self.orch.active_runs:
            state = self.orch.run(run_id)
            for (r, i), (attempt, node) in self.running.items():
                if r == run_id:  # what the node layer runs is what the run has in flight
                    task = state.task(i)
                    assert (task.node, task.attempt) == (node, attempt), (task, node, attempt)

    def submit(self, dag, run_id="r", **kw):
        g = dag.compile()
        self.dags[run_id] = dag
        spec = RunSpec(run_id, dag.id, g, [dag.functions[i] for i in g.ids], **kw)
        return self.apply(self.orch.submit(spec))

    def index(self, run_id, fid):
        return self.dags[run_id].compile().index[fid]

    def node_of(self, fid, run_id="r"):
        return self.running[(run_id, self.index(run_id, fid))][1]

    def running_ids(self, run_id="r"):
        ids = self.dags[run_id].compile().ids
        return sorted((ids[i] for r, i in self.running if r == run_id), key=str)

    def finish(self, fid, run_id="r", ok=True, error=None):
        i = self.index(run_id, fid)
        attempt, node = self.running.pop((run_id, i))
        self.clock += 1
        if not ok and error is None:
            error = ErrorInfo("ValueError", f"{fid} broke", "Traceback ...", b"blob")
        ev = TaskFinished(run_id, i, attempt, node, ok, error, self.clock - 0.5, self.clock)
        return self.apply(self.orch.handle(ev))

    def finish_index(self, run_id, i, ok=True):
        """Finish task ``i`` of ``run_id`` (the randomized drivers pick tasks by index)."""
        return self.finish(self.dags[run_id].compile().ids[i], run_id, ok=ok)

    def lose_an_input(self, rng, run_id, i):
        """Task ``i``'s fetch of one of its computed inputs (chosen by ``rng``) fails: that
        attempt ends with ResultLost. False if it has no computed input."""
        state = self.orch.run(run_id)
        inputs = [j for j in state.effective_inputs(i) if state.location(j) is not None]
        if not inputs:
            return False
        attempt, _ = self.running.pop((run_id, i))
        self.handle(ResultLost(run_id, rng.choice(inputs), i, attempt))
        return True

    def toggle_a_node(self, rng, down, caps, now):
        """A node of ``caps`` (chosen by ``rng``) changes: one of ``down`` comes back (more
        likely, and always when nothing runs), or, with fewer than two down, one dies."""
        if down and (rng.random() < 0.6 or not self.order):
            name = rng.choice(sorted(down))
            down.discard(name)
            self.handle(NodeJoined(name, caps[name]))
        elif len(down) < 2:
            name = rng.choice(sorted(set(caps) - down))
            down.add(name)
            self.lose(name, now)

    def handle(self, *events):
        return self.apply(self.orch.handle(*events))

    def drain(self, fail=lambda run_id, fid, attempt, node: False, limit=100_000):
        """Finish running tasks, oldest first, until nothing runs."""
        steps = 0
        while self.order:
            steps += 1
            assert steps < limit
            run_id, i = self.order[0]
            attempt, node = self.running[(run_id, i)]
            fid = self.dags[run_id].compile().ids[i]
            self.finish(fid, run_id, ok=not fail(run_id, fid, attempt, node))
        return self.finished

    def lose(self, node, now=0.0):
        """``node`` dies with what runs on it."""
        for key in [k for k, (_, n) in self.running.items() if n == node]:
            del self.running[key]
        return self.handle(NodeLost(node, now))

    def idle(self):
        return not self.ledger.used_matrix().any() and not any(self.orch.node_load().values())



def random_dag(rng, n, pin_rate=0.03):
    fs = []
    for k in range(n):
        deps = rng.sample(range(k), min(k, rng.randint(0, 3)))
        kw = {}
        roll = rng.random()
        if roll < 0.4:
            kw["cost"] = {"cpu": rng.choice([1, 2]), **({"mem": 100} if rng.random() < 0.3 else {})}
        elif roll < 0.5 and k:
            kw["type"] = "inline"
        elif roll < 0.55 and k and not fs[k - 1].is_inline:
            kw["node"] = Collocated(k - 1)
        elif roll < 0.55 + pin_rate:
            kw["node"] = rng.choice(["n0", "n1"])
        fs.append(fn(k, deps, **kw))
    return dag_of(*fs, id=f"rand{n}")


def drive_random_runs(sched, seed, lookahead=None):
    """Three random runs with failures, a lost node, joins, cancels, lost results."""
    rng = random.Random(seed)
    strategy = ("first_available", "load_balanced", "cost_optimized")[seed % 3]
    c = Cluster(
        sched,
        {f"n{k}": {"cpu": 4, "mem": 1000} for k in range(4)},
        slots={f"n{k}": rng.randint(1, 4) for k in range(4)},
        lookahead=lookahead,
    )
    runs = {f"r{k}": random_dag(rng, rng.randint(5, 40)) for k in range(3)}
    for run_id, d in runs.items():
        c.submit(
            d,
            run_id=run_id,
            strategy=strategy,
            max_retries=2,
            max_concurrency=rng.choice([None, 2, 5]),
        )
    lost_one = False
    finished_before_loss: set = set()
    steps = 0
    while c.order:
        steps += 1
        assert steps < 10_000
        run_id, i = c.order[rng.randrange(len(c.order))]
        roll = rng.random()
        if roll < 0.02 and not lost_one:
            lost_one = True
            finished_before_loss = set(c.finished)
            c.lose("n1")
            continue
        if roll < 0.025:
            c.handle(NodeJoined(f"extra{steps}", {"cpu": 2, "mem": 100}))
            continue
        if roll < 0.03 and rng.random() < 0.2:
            c.handle(CancelRun(run_id, TimeoutError("run", 1.0)))
            continue
        if roll < 0.05 and c.lose_an_input(rng, run_id, i):
            continue
        c.finish_index(run_id, i, ok=rng.random() > 0.1)
    return c, runs, finished_before_loss


def drive_random_restarts(sched, seed, lookahead=None):
    """Three random runs with deadlines and pins while nodes die and come back."""
    rng = random.Random(1000 + seed)
    strategy = ("first_available", "load_balanced", "cost_optimized")[seed % 3]
    caps = {f"n{k}": {"cpu": 4, "mem": 1000} for k in range(4)}
    c = Cluster(
        sched, caps, slots={f"n{k}": rng.randint(1, 4) for k in range(4)}, lookahead=lookahead
    )
    runs = {f"r{k}": random_dag(rng, rng.randint(5, 40), pin_rate=0.15) for k in range(3)}
    for k, (run_id, d) in enumerate(runs.items()):
        c.submit(
            d,
            run_id=run_id,
            strategy=strategy,
            max_retries=2,
            max_concurrency=rng.choice([None, 2, 5]),
            deadline=None if k == 2 and seed % 2 else rng.choice([5.0, 20.0, 60.0]),
        )
    down: set = set()
    now = 0.0
    steps = 0
    while c.order or down:
        steps += 1
        assert steps < 10_000
        now += 0.25
        roll = rng.random()
        if roll < 0.04 or not c.order:
            c.toggle_a_node(rng, down, caps, now)
            if not c.order and not c.orch.active_runs:
                break
            continue
        if roll < 0.1:
            c.handle(Tick(now))
            continue
        run_id, i = c.order[rng.randrange(len(c.order))]
        c.finish_index(run_id, i, ok=rng.random() > 0.05)
    return c, runs, down


GPU = {"gpu": 1}


def gpu_dag(n, id="g", **kw):
    """``n`` independent functions each needing one gpu."""
    return dag_of(*[fn(k, cost=GPU, **kw) for k in range(n)], id=id)


def ahead_of(c, run_id="r"):
    """The tasks of ``run_id`` queued ahead, by node."""
    return c.orch.run(run_id).queued_ahead()

"""NodeJobs: the node side of a job as a pure state machine (no sockets, no processes)."""

from __future__ import annotations

import random

import pytest

from handoff.node.execution.jobs import (
    REMEMBER, ArgumentArrived, ArgumentFailed, CancelOnWorkers, Cancelled, CapacityChanged,
    DiscardResult, FetchArgument, JobStatus, JobSubmitted, NodeJobs, OriginLost, ReportDone,
    ReportLostInput, RunForgotten, RunOnWorker, WorkerFinished,
)


class Harness:
    """Drives NodeJobs and checks its invariants after every step."""

    def __init__(self, caps=None):
        self.jobs = NodeJobs("me", caps or {"cpu": 2.0})
        self.next_id = 0

    def handle(self, *events):
        out = self.jobs.handle(*events)
        self.jobs.validate_state()
        return out

    def submit(self, run="r", index=0, origin="driver", cost=None, refs=0):
        self.next_id += 1
        job = ("job", self.next_id)
        refs = [("ref", self.next_id, k) for k in range(refs)]
        out = self.handle(JobSubmitted(self.next_id, run, index, origin, cost, refs, job))
        return self.next_id, job, out

    def status(self, job_id):
        state = self.jobs.jobs.get(job_id)
        return None if state is None else state.status


def kinds(out):
    return [type(i).__name__ for i in out]


def test_a_job_without_arguments_goes_to_the_pool_and_reports_when_it_finishes():
    h = Harness()
    jid, job, out = h.submit()
    assert out == [RunOnWorker(job)]
    assert h.status(jid) is JobStatus.ON_POOL
    out = h.handle(WorkerFinished(jid, "result"))
    assert out == [ReportDone(job, "result")]
    assert h.jobs.jobs == {}


def test_arguments_are_fetched_before_the_job_runs():
    h = Harness()
    jid, job, out = h.submit(refs=2)
    assert out == [FetchArgument(jid, ("ref", jid, 0)), FetchArgument(jid, ("ref", jid, 1))]
    assert h.status(jid) is JobStatus.FETCHING
    assert h.handle(ArgumentArrived(jid)) == []
    assert h.handle(ArgumentArrived(jid)) == [RunOnWorker(job)]
    assert h.status(jid) is JobStatus.ON_POOL


def test_a_failed_argument_reports_a_lost_input_once_and_later_news_is_ignored():
    h = Harness()
    jid, job, _ = h.submit(refs=2)
    out = h.handle(ArgumentFailed(jid, "b", "x", "gone"))
    assert out == [ReportLostInput(job, "b", "x", "gone")]
    assert h.handle(ArgumentFailed(jid, "b", "y", "gone"), ArgumentArrived(jid)) == []
    assert h.jobs.jobs == {}


def test_admission_blocks_on_the_nodes_own_capacity_and_admits_in_order_on_release():
    h = Harness({"cpu": 2.0})
    a, job_a, out_a = h.submit(index=0, cost={"cpu": 2.0})
    b, job_b, out_b = h.submit(index=1, cost={"cpu": 1.0})
    c, job_c, out_c = h.submit(index=2, cost={"cpu": 1.0})
    assert out_a == [RunOnWorker(job_a)] and out_b == [] and out_c == []
    assert h.status(b) is JobStatus.BLOCKED and h.jobs.used() == {"cpu": 2.0}
    out = h.handle(WorkerFinished(a, "ra"))
    assert out == [ReportDone(job_a, "ra"), RunOnWorker(job_b), RunOnWorker(job_c)]
    assert h.jobs.used() == {"cpu": 2.0}


def test_capacity_change_admits_blocked_jobs_and_keeps_claims():
    h = Harness({"cpu": 1.0})
    a, job_a, _ = h.submit(index=0, cost={"cpu": 1.0})
    b, job_b, out = h.submit(index=1, cost={"cpu": 1.0})
    assert out == []
    assert h.handle(CapacityChanged({"cpu": 2.0})) == [RunOnWorker(job_b)]
    assert h.jobs.used() == {"cpu": 2.0}


def test_cancel_ends_fetching_and_blocked_jobs_at_once_and_holds_claims_of_running_ones():
    h = Harness({"cpu": 1.0})
    running, job_r, _ = h.submit(index=0, cost={"cpu": 1.0})
    blocked, _, _ = h.submit(index=1, cost={"cpu": 1.0})
    fetching, _, _ = h.submit(index=2, refs=1)
    other, job_o, _ = h.submit(run="other", index=0)
    out = h.handle(Cancelled("r", None))
    assert out == [CancelOnWorkers([job_r])]
    assert h.status(running) is JobStatus.CANCELLING
    assert h.status(blocked) is None and h.status(fetching) is None
    assert h.status(other) is JobStatus.ON_POOL
    assert h.jobs.used() == {"cpu": 1.0}  # the code may still run until the pool says it ended
    assert h.handle(ArgumentArrived(fetching)) == []
    out = h.handle(WorkerFinished(running, "late"))
    assert out == [DiscardResult("late")]
    assert h.jobs.used().get("cpu", 0.0) == 0.0


def test_cancel_of_some_indices_leaves_the_others():
    h = Harness()
    a, job_a, _ = h.submit(index=0)
    b, _, _ = h.submit(index=1)
    assert h.handle(Cancelled("r", frozenset({0}))) == [CancelOnWorkers([job_a])]
    assert h.status(b) is JobStatus.ON_POOL


def test_a_remembered_cancellation_drops_a_job_whose_arguments_complete_later():
    h = Harness()
    h.handle(Cancelled("r", None))
    jid, _, _ = h.submit(index=3, refs=1)
    assert h.handle(ArgumentArrived(jid)) == []
    assert h.jobs.jobs == {}
    h.handle(RunForgotten("r"))
    jid, job, _ = h.submit(index=3, refs=1)
    assert h.handle(ArgumentArrived(jid)) == [RunOnWorker(job)]


def test_a_task_sent_again_after_a_cancellation_of_its_index_runs():
    """The orchestrator moved a queued-ahead task away (cancelling it here) and later sends
    it back, e.g. as a retry: the new attempt arrives after the cancel, so it runs."""
    h = Harness({"cpu": 2.0})
    running, _, _ = h.submit(index=0, cost={"cpu": 2.0})
    queued, _, _ = h.submit(index=3, cost={"cpu": 2.0}, refs=1)
    h.handle(ArgumentArrived(queued))
    assert h.status(queued) is JobStatus.BLOCKED
    assert h.handle(Cancelled("r", frozenset({3}))) == []  # moved to another node
    assert h.status(queued) is None
    again, job, out = h.submit(index=3, cost={"cpu": 2.0}, refs=1)
    assert kinds(out) == ["FetchArgument"]
    h.handle(ArgumentArrived(again))
    assert h.status(again) is JobStatus.BLOCKED
    assert kinds(h.handle(WorkerFinished(running, "r0"))) == ["ReportDone", "RunOnWorker"]
    assert h.status(again) is JobStatus.ON_POOL


def test_remembered_cancellations_are_bounded():
    h = Harness()
    for k in range(REMEMBER + 10):
        h.handle(Cancelled(f"run-{k}", None))
    assert len(h.jobs.cancelled) == REMEMBER


def test_a_lost_origin_ends_its_jobs_but_not_this_nodes_own():
    h = Harness()
    theirs, job_t, _ = h.submit(origin="b")
    fetching, _, _ = h.submit(origin="b", index=1, refs=1)
    mine, _, _ = h.submit(origin="me", index=2)
    assert h.handle(OriginLost("b")) == [CancelOnWorkers([job_t])]
    assert h.status(fetching) is None and h.status(mine) is JobStatus.ON_POOL
    assert h.handle(OriginLost("me")) == []


def test_a_finish_for_an_unknown_job_is_discarded():
    h = Harness()
    assert h.handle(WorkerFinished(99, "stray")) == [DiscardResult("stray")]


def test_validate_state_catches_a_claim_the_ledger_does_not_hold():
    h = Harness()
    jid, _, _ = h.submit(cost={"cpu": 1.0})
    h.jobs.ledger.release("me", {"cpu": 1.0})
    with pytest.raises(AssertionError, match="ledger"):
        h.jobs.validate_state()


@pytest.mark.parametrize("seed", range(20))
def test_random_event_sequences_keep_the_invariants_and_never_overcommit(seed):
    """Random submissions, arrivals, failures, finishes and cancels; every claim is released."""
    rng = random.Random(seed)
    h = Harness({"cpu": 3.0})
    fetching: dict[int, int] = {}
    on_pool: set[int] = set()
    reported: set[int] = set()
    most = 3.0
    for _ in range(300):
        roll = rng.random()
        if roll < 0.3:
            refs = rng.randrange(3)
            jid, _, out = h.submit(run=f"r{rng.randrange(3)}", index=rng.randrange(5),
                                   origin=rng.choice(["driver", "b"]),
                                   cost={"cpu": float(rng.randrange(1, 3))} if rng.random() < 0.7 else None,
                                   refs=refs)
            fetching[jid] = refs
        elif roll < 0.5 and fetching:
            jid = rng.choice(list(fetching))
            out = h.handle(ArgumentArrived(jid) if rng.random() < 0.9 else ArgumentFailed(jid, "b", "k", "x"))
        elif roll < 0.8 and on_pool:
            jid = rng.choice(sorted(on_pool))
            on_pool.discard(jid)
            out = h.handle(WorkerFinished(jid, jid))
        elif roll < 0.9:
            out = h.handle(Cancelled(f"r{rng.randrange(3)}", None if rng.random() < 0.5 else frozenset({rng.randrange(5)})))
        elif roll < 0.95:
            out = h.handle(OriginLost("b"))
        else:
            out = h.handle(CapacityChanged({"cpu": float(rng.randrange(2, 5))}))
        for ins in out:
            if isinstance(ins, RunOnWorker):
                on_pool.add(ins.job[1])
            elif isinstance(ins, ReportDone):
                assert ins.job[1] not in reported
                reported.add(ins.job[1])
        fetching = {j: n for j, n in fetching.items() if h.status(j) is JobStatus.FETCHING}
        most = max(most, h.jobs.caps["cpu"])
        assert h.jobs.used().get("cpu", 0.0) <= most + 1e-9
    while on_pool:  # the pool ends everything it was given; blocked jobs then fit in turn
        jid = min(on_pool)
        on_pool.discard(jid)
        for ins in h.handle(WorkerFinished(jid, jid)):
            if isinstance(ins, RunOnWorker):
                on_pool.add(ins.job[1])
    assert h.jobs.count(JobStatus.ON_POOL) == h.jobs.count(JobStatus.CANCELLING) == 0
    assert h.jobs.count(JobStatus.BLOCKED) == 0
    assert h.jobs.used().get("cpu", 0.0) == 0.0

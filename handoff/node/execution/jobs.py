"""The node's side of a job, as a pure state machine: events in, instructions out, no sockets.

A job is one attempt of a function sent here to run. It fetches its arguments (FETCHING),
waits for this node's free resources if it has a cost (BLOCKED), is handed to the worker
pool (ON_POOL), and ends when the pool reports it finished: its claim is released and its
result reported to the run's orchestrator. A cancelled job on the pool is CANCELLING until
the pool reports its end (its claim is held until the code stopped, so the node never
over-commits); its result is then discarded. Jobs in other states end on cancel at once.

Rules:
- Admission happens once every argument is here, against this node's own ledger; blocked
  jobs are admitted in arrival order whenever a claim is released or the capacity changes.
- A failed argument fetch ends the job with a lost-input report (the orchestrator recomputes
  the input); later news about that job is ignored.
- A run's cancellation as a whole is remembered (the last ``REMEMBER`` runs, until the run
  is forgotten): a job of it whose arguments complete later is dropped. A cancellation of
  some indices ends the jobs here and is not remembered: one sender's messages arrive in
  order, so a job of that index sent later is a newer attempt (a task moved back, a retry).
- When the member that sent a job is lost, its jobs end here: nobody would take the result.
- A stream replica hosted here holds its cost for its whole life (``ReplicaClaimed`` until
  ``ReplicaReleased``); one that does not fit now takes its claim before any blocked job does.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

import msgspec

from handoff import _core

__all__ = [
    "JobStatus", "JobState", "NodeJobs", "JobStateError",
    "JobSubmitted", "ArgumentArrived", "ArgumentFailed", "WorkerFinished", "Cancelled",
    "OriginLost", "RunForgotten", "CapacityChanged", "ReplicaClaimed", "ReplicaReleased",
    "FetchArgument", "RunOnWorker", "CancelOnWorkers", "ReportDone", "ReportLostInput", "DiscardResult",
]

REMEMBER = 1000  # cancelled runs remembered for jobs whose arguments are still coming


class JobStatus(Enum):
    FETCHING = "fetching"
    BLOCKED = "blocked"
    ON_POOL = "on_pool"
    CANCELLING = "cancelling"


class JobStateError(AssertionError):
    """An invariant of the job table broke (raised by ``validate_state``)."""


@dataclass(slots=True, eq=False)
class JobState:
    job_id: int
    run_id: str
    index: int
    origin: str
    cost: dict | None
    job: Any  # what the pool runs; opaque here
    status: JobStatus = JobStatus.FETCHING
    missing: int = 0  # arguments not fetched yet
    claimed: bool = False


class _Value(msgspec.Struct, frozen=True):
    """Events and instructions are immutable values; msgspec's frozen structs are built in C,
    several times faster than frozen dataclasses (one of each is made per job)."""


# ---- events ------------------------------------------------------------------------
class JobSubmitted(_Value, frozen=True):
    job_id: int
    run_id: str
    index: int
    origin: str
    cost: dict | None
    refs: list  # one opaque reference per argument to fetch
    job: Any


class ArgumentArrived(_Value, frozen=True):
    job_id: int


class ArgumentFailed(_Value, frozen=True):
    job_id: int
    node: str
    key: Any
    error: str | None


class WorkerFinished(_Value, frozen=True):
    """The pool is done with the job (ran, failed, timed out, or stopped after a cancel)."""

    job_id: int
    result: Any = None  # opaque; handed back in ReportDone or DiscardResult


class Cancelled(_Value, frozen=True):
    run_id: str
    indices: frozenset | None  # None: the whole run


class OriginLost(_Value, frozen=True):
    origin: str


class RunForgotten(_Value, frozen=True):
    run_id: str


class CapacityChanged(_Value, frozen=True):
    caps: dict


class ReplicaClaimed(_Value, frozen=True):
    key: Any
    cost: dict


class ReplicaReleased(_Value, frozen=True):
    key: Any


# ---- instructions -------------------------------------------------------------------
class FetchArgument(_Value, frozen=True):
    job_id: int
    ref: Any


class RunOnWorker(_Value, frozen=True):
    job: Any


class CancelOnWorkers(_Value, frozen=True):
    jobs: list


class ReportDone(_Value, frozen=True):
    job: Any
    result: Any


class ReportLostInput(_Value, frozen=True):
    job: Any
    node: str
    key: Any
    error: str | None


class DiscardResult(_Value, frozen=True):
    result: Any


@dataclass
class NodeJobs:
    """Every job on this node, one ``JobState`` each, and the node's own resource ledger."""

    name: str
    caps: dict
    jobs: dict[int, JobState] = field(default_factory=dict)
    blocked: deque = field(default_factory=deque)  # job ids in arrival order
    cancelled: dict = field(default_factory=dict)  # run_id -> None: runs cancelled whole, ordered
    replicas: dict = field(default_factory=dict)  # stream replica key -> [cost, claim held]

    def __post_init__(self) -> None:
        self.ledger = _core.ResourceLedger()
        self.ledger.register(self.name, dict(self.caps))
        self._handlers: dict[type, Callable[[Any, list], None]] = {
            JobSubmitted: self._submitted, ArgumentArrived: self._arrived,
            ArgumentFailed: self._failed, WorkerFinished: self._finished,
            Cancelled: self._cancelled, OriginLost: self._origin_lost,
            RunForgotten: self._forgotten, CapacityChanged: self._capacity,
            ReplicaClaimed: self._replica_claimed, ReplicaReleased: self._replica_released,
        }

    def handle(self, *events: Any) -> list:
        out: list = []
        for event in events:
            self._handlers[type(event)](event, out)
        return out

    # ---- reading -----------------------------------------------------------------
    def used(self) -> dict:
        return self.ledger.used(self.name)

    def free(self) -> dict:
        return self.ledger.free(self.name)

    def count(self, status: JobStatus) -> int:
        return sum(1 for s in self.jobs.values() if s.status is status)

    # ---- handlers ----------------------------------------------------------------
    def _submitted(self, ev: JobSubmitted, out: list) -> None:
        state = JobState(ev.job_id, ev.run_id, ev.index, ev.origin, ev.cost or None, ev.job)
        self.jobs[ev.job_id] = state
        if not ev.refs:
            self._admit(state, out)
            return
        state.missing = len(ev.refs)
        for ref in ev.refs:
            out.append(FetchArgument(ev.job_id, ref))

    def _arrived(self, ev: ArgumentArrived, out: list) -> None:
        state = self.jobs.get(ev.job_id)
        if state is None or state.status is not JobStatus.FETCHING:
            return  # ended meanwhile (cancelled, an argument failed)
        state.missing -= 1
        if state.missing > 0:
            return
        if state.run_id in self.cancelled:
            del self.jobs[ev.job_id]
            return
        self._admit(state, out)

    def _failed(self, ev: ArgumentFailed, out: list) -> None:
        state = self.jobs.get(ev.job_id)
        if state is None or state.status is not JobStatus.FETCHING:
            return
        del self.jobs[ev.job_id]
        out.append(ReportLostInput(state.job, ev.node, ev.key, ev.error))

    def _finished(self, ev: WorkerFinished, out: list) -> None:
        state = self.jobs.get(ev.job_id)
        if state is None or state.status not in (JobStatus.ON_POOL, JobStatus.CANCELLING):
            out.append(DiscardResult(ev.result))
            return
        del self.jobs[ev.job_id]
        if state.status is JobStatus.ON_POOL:
            out.append(ReportDone(state.job, ev.result))
        else:
            out.append(DiscardResult(ev.result))
        if state.claimed:
            state.claimed = False
            self.ledger.release(self.name, state.cost)
            self._admit_blocked(out)

    def _cancelled(self, ev: Cancelled, out: list) -> None:
        if ev.indices is None:
            self.cancelled[ev.run_id] = None
            if len(self.cancelled) > REMEMBER:
                del self.cancelled[next(iter(self.cancelled))]
        self._cancel([s for s in self.jobs.values() if s.run_id == ev.run_id
                      and (ev.indices is None or s.index in ev.indices)], out)

    def _origin_lost(self, ev: OriginLost, out: list) -> None:
        if ev.origin != self.name:
            self._cancel([s for s in self.jobs.values() if s.origin == ev.origin], out)

    def _forgotten(self, ev: RunForgotten, out: list) -> None:
        self.cancelled.pop(ev.run_id, None)

    def _capacity(self, ev: CapacityChanged, out: list) -> None:
        self.caps = dict(ev.caps)
        self.ledger.register(self.name, self.caps)  # claims held are kept
        self._admit_blocked(out)

    def _replica_claimed(self, ev: ReplicaClaimed, out: list) -> None:
        if ev.key not in self.replicas:
            self.replicas[ev.key] = [ev.cost, self.ledger.request(self.name, ev.cost)]

    def _replica_released(self, ev: ReplicaReleased, out: list) -> None:
        found = self.replicas.pop(ev.key, None)
        if found is not None and found[1]:
            self.ledger.release(self.name, found[0])
            self._admit_blocked(out)

    # ---- transitions ---------------------------------------------------------------
    def _admit(self, state: JobState, out: list) -> None:
        if state.cost is not None:
            if not self.ledger.request(self.name, state.cost):
                state.status = JobStatus.BLOCKED
                self.blocked.append(state.job_id)
                return
        self._start(state, out)

    def _start(self, state: JobState, out: list) -> None:
        """Hand an admitted job to the pool, holding its claim if it has a cost."""
        state.claimed = state.cost is not None
        state.status = JobStatus.ON_POOL
        out.append(RunOnWorker(state.job))

    def _admit_blocked(self, out: list) -> None:
        for entry in self.replicas.values():  # replicas first: they were placed on this room
            if not entry[1]:
                entry[1] = self.ledger.request(self.name, entry[0])
        if not self.blocked:
            return
        still: deque = deque()
        for job_id in self.blocked:
            state = self.jobs.get(job_id)
            if state is None or state.status is not JobStatus.BLOCKED:
                continue
            if self.ledger.request(self.name, state.cost):
                self._start(state, out)
            else:
                still.append(job_id)
        self.blocked = still

    def _cancel(self, states: list[JobState], out: list) -> None:
        on_pool = []
        for state in states:
            if state.status is JobStatus.ON_POOL:
                state.status = JobStatus.CANCELLING
                on_pool.append(state.job)
            elif state.status is not JobStatus.CANCELLING:
                del self.jobs[state.job_id]  # fetching or blocked: nothing holds it
        if self.blocked:
            self.blocked = deque(j for j in self.blocked if j in self.jobs)
        if on_pool:
            out.append(CancelOnWorkers(on_pool))

    # ---- invariants --------------------------------------------------------------
    def validate_state(self) -> None:
        claimed: dict[str, float] = {}
        for job_id, state in self.jobs.items():
            if state.job_id != job_id:
                raise JobStateError(f"job {job_id} holds the state of job {state.job_id}")
            if state.status is JobStatus.FETCHING and state.missing <= 0:
                raise JobStateError(f"job {job_id} is fetching with no argument missing")
            if state.status is not JobStatus.FETCHING and state.missing != 0:
                raise JobStateError(f"job {job_id} is {state.status.value} with arguments missing")
            if state.claimed:
                if state.status not in (JobStatus.ON_POOL, JobStatus.CANCELLING) or state.cost is None:
                    raise JobStateError(f"job {job_id} holds a claim while {state.status.value}")
                for name, amount in state.cost.items():
                    claimed[name] = claimed.get(name, 0.0) + amount
            elif state.cost is not None and state.status in (JobStatus.ON_POOL, JobStatus.CANCELLING):
                raise JobStateError(f"job {job_id} with a cost is on the pool without a claim")
        for cost, held in self.replicas.values():
            if held:
                for name, amount in cost.items():
                    claimed[name] = claimed.get(name, 0.0) + amount
        blocked = [j for j, s in self.jobs.items() if s.status is JobStatus.BLOCKED]
        if sorted(blocked) != sorted(self.blocked):
            raise JobStateError(f"blocked queue {list(self.blocked)} vs blocked jobs {blocked}")
        used = self.ledger.used(self.name)
        for name in set(used) | set(claimed):
            if abs(used.get(name, 0.0) - claimed.get(name, 0.0)) > 1e-9:
                raise JobStateError(f"ledger holds {used.get(name, 0.0)} {name}, the jobs' claims "
                                    f"{claimed.get(name, 0.0)}")
        if len(self.cancelled) > REMEMBER:
            raise JobStateError("more remembered cancellations than REMEMBER")

"""JobRunner: feeds the job state machine (jobs.py) and carries out its instructions on the
worker pool, the fetching client and the reports to each run's orchestrator."""

from __future__ import annotations

import itertools
import logging
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Callable

from handoff.node.data.values import blob_nbytes, dumps_value, is_local, release_frames
from handoff.node.execution.jobs import (
    ArgumentArrived, ArgumentFailed, CancelOnWorkers, Cancelled, CapacityChanged, DiscardResult,
    FetchArgument, JobSubmitted, NodeJobs, OriginLost, ReplicaClaimed, ReplicaReleased, ReportDone,
    ReportLostInput, RunForgotten, RunOnWorker, WorkerFinished,
)
from handoff.node.execution.threads import ThreadPool
from handoff.node.execution.workers import Job, WorkerPool
from handoff.protocol.messages import Done
from handoff.protocol.rows import ErrorRow, LostInput, ResultRow, TaskRow, Tree, ValueRef

if TYPE_CHECKING:
    from handoff.node.server import Node

log = logging.getLogger("handoff.node")

__all__ = ["JobRunner"]


class JobRunner:
    """The jobs sent to this node: owns the state machine, the pool, and the outbox of
    finished rows per remote orchestrator."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.name = node.name
        self.store = node.store
        self.jobs = NodeJobs(node.name, dict(node.config.resources))
        self.pool: WorkerPool | None = None
        self._ids = itertools.count(1)
        self._outbox: dict[str, list] = defaultdict(list)  # origin node -> [(row, blob)]
        self._outbox_blobs: dict[str, int] = defaultdict(int)  # origin node -> blobs in its box
        self._debug = node.config.debug_state

    def start(self) -> WorkerPool:
        cfg = self.node.config
        if cfg.executor == "thread":
            self.pool = ThreadPool(cfg.workers, self.name, self._pool_finished, self.node.post)
        else:
            self.pool = WorkerPool(cfg.workers, self.name, self._pool_finished, self.node.shm_owner)
        self.pool.start()
        return self.pool

    @property
    def started_pool(self) -> WorkerPool:
        """The pool, which ``start`` makes (jobs and hooks arrive only after it)."""
        assert self.pool is not None, "JobRunner.start() makes the pool"
        return self.pool

    def handle(self, *events: Any) -> None:
        instructions = self.jobs.handle(*events)
        if self._debug:
            self.jobs.validate_state()
        for ins in instructions:
            kind = type(ins)
            if kind is RunOnWorker:
                self.started_pool.submit(ins.job)
            elif kind is ReportDone:
                self._report(ins.job, *ins.result)
            elif kind is FetchArgument:
                self._fetch(ins.job_id, ins.ref)
            elif kind is DiscardResult:
                if ins.result is not None and ins.result[2] is not None:
                    release_frames(ins.result[2])
            elif kind is CancelOnWorkers:
                ended = self.started_pool.cancel(ins.jobs)
                if ended:
                    self.handle(*(WorkerFinished(job.job_id) for job in ended))
            elif kind is ReportLostInput:
                self.node.counters["lost_inputs"] += 1
                err = ErrorRow("ResultLost", f"input {ins.key!r} could not be fetched from node "
                               f"{ins.node!r}: {ins.error}", "")
                now = time.time()
                self._report(ins.job, False, err, None, now, now, LostInput(ins.node, ins.key))

    # ---- events from the node ------------------------------------------------------
    def accept_task_rows(self, origin: str, dag_id: Any, rows: list[tuple[TaskRow, list]]) -> None:
        """Tasks as (row, blobs) pairs: from this node's own orchestrator, or decoded."""
        events = []
        begun = None
        for row, blobs in rows:
            run_id, index, cost = row.run_id, row.index, row.cost
            if run_id != begun:  # the rows of a Dispatch are of one run
                self.store.begin_run(run_id, dag_id)
                begun = run_id
            job = Job(run_id, index, row.attempt, row.tree, blobs, origin, dag_id, row.function_id,
                      cost, row.timeout, job_id=next(self._ids), cache_key=row.cache_key,
                      cache_path=self._cache_path(row.cache_key))
            if row.load:  # a result-cache hit: computed only if the entry went meanwhile
                frames = self.node.cache.load(row.cache_key)
                if frames is not None:
                    now = time.time()
                    self._report(job, True, None, frames, now, now, cached=True)
                    continue
            if row.refs:
                job.fetch_start = time.time()
            events.append(JobSubmitted(job.job_id, run_id, index, origin, cost, row.refs, job))
        self.handle(*events)

    def cancel(self, run_id: str, indices: list | None) -> None:
        self.handle(Cancelled(run_id, None if indices is None else frozenset(indices)))

    def forget_run(self, run_id: str) -> None:
        """The run is over: its cancellations need not be remembered, its values may spill."""
        self.store.end_run(run_id)
        self.handle(RunForgotten(run_id))

    def origin_lost(self, origin: str) -> None:
        """``origin`` is dead or gone: the work it sent here has nobody to report to."""
        before = {s.run_id for s in self.jobs.jobs.values() if s.origin == origin}
        self.handle(OriginLost(origin))
        if before and origin != self.name:
            log.info("%s: cancelled the work of %d runs from %s", self.name, len(before), origin)

    def claim_replica(self, key: Any, cost: dict) -> None:
        """A stream replica hosted here holds ``cost`` until ``release_replica(key)``."""
        self.handle(ReplicaClaimed(key, cost))

    def release_replica(self, key: Any) -> None:
        self.handle(ReplicaReleased(key))

    def set_capacity(self, caps: dict) -> None:
        self.handle(CapacityChanged(dict(caps)))

    def run_hook(self, tree: Tree, blobs: list, on_done: Callable) -> None:
        """A serialization hook: runs on the pool outside the job table, reports to ``on_done``."""
        job = Job("", -1, 0, tree, blobs, on_done=on_done, job_id=next(self._ids))
        self.started_pool.submit(job)

    # ---- instructions --------------------------------------------------------------
    def _fetch(self, job_id: int, ref: ValueRef) -> None:
        node, key, slot = ref.node, ref.key, ref.slot
        job = self.jobs.jobs[job_id].job
        hook = job.blobs[ref.hook] if ref.hook >= 0 else None

        def filled(frames: list | None, error: str | None) -> None:
            if frames is None:
                self.handle(ArgumentFailed(job_id, node, key, error))
                return
            job.blobs[slot] = frames
            job.bytes_in += blob_nbytes(frames)
            job.fetch_end = time.time()
            self.handle(ArgumentArrived(job_id))

        self.node.fetching.fetch_value(node, ref.dag_id, key, hook, filled)

    def _pool_finished(self, job: Job, ok: bool, error: Any, frames: Any, started: float,
                       finished: float) -> None:
        if job.on_done is not None:
            job.on_done(ok, error, frames)
            return
        self.handle(WorkerFinished(job.job_id, (ok, error, frames, started, finished)))

    def _cache_path(self, key: str) -> str:
        """Where a worker process writes a result-cache entry; "" when this node writes it
        (the thread executor's values are objects in this process)."""
        if not key or isinstance(self.pool, ThreadPool):
            return ""
        return self.node.cache.disk.path_of(key)

    def _report(self, job: Job, ok: bool, error: ErrorRow | None, frames: Any, started: float,
                finished: float, lost: LostInput | None = None, cached: bool = False) -> None:
        nbytes = 0
        if lost is None:
            self.node.counters["attempts_succeeded" if ok else "attempts_failed"] += 1
            if not ok:
                self.node.status.attempt_failed(job.dag_id, job.key, job.attempt, error)
        if ok:
            if job.cache_key and not cached:  # written before the orchestrator hears of it
                if job.cache_path:  # by the worker process
                    self.node.cache.disk.note_written(job.cache_key)
                else:
                    self.node.cache.save(job.cache_key, frames)
            nbytes = blob_nbytes(frames)
            self.store.put(job.dag_id, job.key, frames, nbytes)
            self.store.register_location(job.dag_id, job.key, self.name, held=True)
        blob = None if ok else frames
        if blob is not None and is_local(blob) and job.origin != self.name:
            try:  # an exception object from a thread-executor attempt, for a remote driver
                blob = dumps_value(blob[0].obj)
            except Exception:
                blob = None
        if job.origin == self.name:
            row = ResultRow(job.run_id, job.index, job.attempt, ok, started, finished, nbytes, error,
                            -1, lost, job.worker, job.fetch_start, job.fetch_end, job.bytes_in, cached)
            self.node.runs.local_events.append((row, blob))
            return
        box = self._outbox[job.origin]
        pos = -1
        if blob is not None:  # the Done's blobs are the box's exceptions, in order
            pos = self._outbox_blobs[job.origin]
            self._outbox_blobs[job.origin] = pos + 1
        row = ResultRow(job.run_id, job.index, job.attempt, ok, started, finished, nbytes, error,
                        pos, lost, job.worker, job.fetch_start, job.fetch_end, job.bytes_in, cached)
        box.append((row, blob))

    def flush(self) -> None:
        """End of a loop iteration: one Done per remote orchestrator, then feed the workers."""
        for origin, items in self._outbox.items():
            if items:
                rows = [row for row, _ in items]
                blobs = [b for _, b in items if b is not None]  # rows index these (_report)
                self.node.transport.send(origin, Done(self.name, rows, blobs))
        self._outbox.clear()
        self._outbox_blobs.clear()
        self.started_pool.pump()

    def stats(self) -> dict:
        pool = self.started_pool.stats()
        pool.setdefault("running", sum(len(w.inflight) for w in self.started_pool.workers.values()))
        pool["blocked"] = len(self.jobs.blocked)
        pool["used"] = self.jobs.used()
        return pool

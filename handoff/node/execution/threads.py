"""``--executor thread``: run user code in a thread pool inside the node process.

For work that releases the GIL (numpy, I/O) and for values too costly to pickle: results stay
in the node as Python objects (``LocalValue``) and are pickled only when a peer fetches one.
Admission and claims are the job state machine's, queueing the WorkerPool's; what differs is
how jobs run. A thread cannot be killed: an attempt past its timeout is reported failed at once and
its thread's eventual result is dropped, but the thread stays busy until the code returns.
"""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from handoff.node.data.values import LocalValue, dumps_value
from handoff.node.execution.worker import Evaluator, describe
from handoff.node.execution.workers import Job, Reporter, WorkerPool
from handoff.protocol.rows import ErrorRow

__all__ = ["ThreadPool"]


class ThreadPool(WorkerPool):
    def __init__(self, size: int, name: str, report: Reporter, post: Callable):
        super().__init__(size, name, report)
        self.post = post  # runs a callable on the loop thread
        self.running: dict[int, Job] = {}
        self._busy = 0  # threads executing user code, timed-out ones included
        self._executor: ThreadPoolExecutor | None = None
        self._evaluator = Evaluator()
        self._thread = threading.local()  # .slot: the thread's number, the record's worker slot
        self._slots = itertools.count()

    def start(self) -> None:
        self._executor = ThreadPoolExecutor(self.size, thread_name_prefix=f"handoff-{self.name}")

    def ready_count(self) -> int:
        return self.size

    def channels(self) -> dict:
        return {}

    def stop(self, timeout: float = 2.0) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def pump(self) -> None:
        while self.queue and self._busy < self.size and self._executor is not None:
            job = self.queue.popleft()
            if job.cancelled:
                continue
            job.sent_at = time.monotonic()
            self.running[job.job_id] = job
            self._busy += 1
            self._executor.submit(self._run, job)

    def _run(self, job: Job) -> None:
        slot = getattr(self._thread, "slot", None)
        if slot is None:
            slot = self._thread.slot = next(self._slots)
        job.worker = slot
        started = time.time()
        try:
            value = self._evaluator.evaluate(job.tree, job.blobs)
            ok, error, frames = True, None, [LocalValue(value)]
        except BaseException as exc:  # user code may raise anything
            ok, error, frames = False, describe(exc), [LocalValue(exc)]
        finished = time.time()
        self.post(self._finish, job, ok, error, frames, started, finished)

    def _finish(self, job: Job, ok: bool, error: Any, frames: list, started: float, finished: float) -> None:
        self._busy -= 1
        if self.running.pop(job.job_id, None) is None:
            return  # timed out or cancelled: already reported or not wanted
        self.jobs.pop(job.job_id, None)
        self.completed += 1
        self.report(job, ok, error, frames, started, finished)

    def check(self) -> None:
        now = time.monotonic()
        for job in list(self.running.values()):
            if job.timeout is not None and now - job.sent_at > job.timeout:
                self._abandon(job)
                self.report(job, False, ErrorRow("TimeoutError", f"attempt exceeded its timeout of {job.timeout:g} s", ""),
                            None, time.time(), time.time())

    def _abandon(self, job: Job) -> None:
        self.running.pop(job.job_id, None)
        self.jobs.pop(job.job_id, None)

    def cancel(self, jobs: list[Job]) -> list[Job]:
        """A thread cannot be stopped: a running job ends here now, its thread's result is dropped."""
        ended = [job for job in jobs if job.job_id in self.running]
        for job in ended:
            job.cancelled = True
            self._abandon(job)
        return ended + super().cancel(jobs)

    def serialize(self, frames: list, callback: Callable) -> None:
        """Pickle an in-process value off the loop thread, for a peer that fetches it."""
        def work() -> None:
            try:
                out = dumps_value(frames[0].obj)
            except Exception as exc:
                self.post(callback, None, f"value could not be pickled for a peer: {exc}")
                return
            self.post(callback, out, None)

        assert self._executor is not None, "ThreadPool.start() makes the executor"
        self._executor.submit(work)

    def stats(self) -> dict:
        out = super().stats()
        out.update(workers=self.size, ready=self.size, running=len(self.running), busy_threads=self._busy)
        return out

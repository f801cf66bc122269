"""A node's worker processes: batching, timeouts, and replacing workers that die or must be
killed. Admission and claims are the job state machine's (jobs.py); the pool does process I/O.

Lives in the event loop; it never runs user code itself.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import struct
import tempfile
import uuid
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from handoff.errors import ProtocolError
from handoff.node.execution.pipes import NodeEnd, socket_pair
from handoff.protocol import decode, encode
from handoff.protocol.messages import Message, WorkerDone, WorkerReady, WorkerRun, WorkerStop
from handoff.protocol.rows import ErrorRow, JobRow, Tree

log = logging.getLogger("handoff.workers")

__all__ = ["Job", "WorkerPool"]

BATCH_MAX = 128  # jobs per WorkerRun message when jobs are short
FAST_JOB = 0.002  # seconds; code that runs shorter than this on average is sent in batches
MEDIUM_JOB = 0.025  # below this a worker also holds one job in waiting, hiding the round trip
UNKNOWN_JOB = 0.05  # what code never seen before is assumed to take: one job per worker
MAX_START_FAILURES = 5


@dataclass(slots=True, eq=False)
class Job:
    """One attempt of a function (or a hook) to run on this node."""

    run_id: str
    index: int
    attempt: int
    tree: Tree
    blobs: list
    origin: str = ""
    dag_id: Any = None
    key: Hashable = None
    cost: dict | None = None
    timeout: float | None = None
    on_done: Callable | None = None  # hook jobs report here instead of to an orchestrator
    job_id: int = 0
    worker: int = -1
    sent_at: float = 0.0
    cancelled: bool = False
    code_key: int = 0
    cache_key: str = ""  # write the result to the node's result cache under this key
    cache_path: str = ""  # where: a worker process writes it before reporting
    fetch_start: float = 0.0  # time.time() bounds of the argument fetch, for the run's record
    fetch_end: float = 0.0
    bytes_in: int = 0


@dataclass(slots=True, eq=False)
class Worker:
    slot: int
    proc: subprocess.Popen
    channel: NodeEnd
    ready: bool = False  # said WorkerReady
    inflight: deque = field(default_factory=deque)  # jobs in the order the worker runs them
    exclusive: bool = False  # running a job with a timeout: nothing else is sent to it
    started: float = 0.0
    current_path: str = ""  # the worker writes the id of the job it is running here
    owner: Any = None  # a stream replica that holds this worker: it gets its messages and its loss

    def running_job_id(self) -> int:
        try:
            with open(self.current_path, "rb") as f:
                return struct.unpack("q", f.read(8))[0]
        except (OSError, struct.error):
            return -1  # unknown: blame the oldest unreported job

    def discard_current_file(self) -> None:
        try:
            os.unlink(self.current_path)
        except OSError:
            pass


Reporter = Callable[[Job, bool, Any, Any, float, float], None]


class WorkerPool:
    """Queues admitted jobs and feeds them to worker processes over their socket pairs; reports
    every job it was given when it ends, cancelled ones included."""

    def __init__(self, size: int, name: str, report: Reporter, shm_owner: str | None = None):
        self.size = size
        self.name = name
        self.report = report  # (job, ok, error, frames, started, finished)
        self.workers: dict[int, Worker] = {}
        self.generation = 0  # bumped whenever the set of worker channels changes
        self.queue: deque[Job] = deque()  # admitted, waiting for a worker
        self.jobs: dict[int, Job] = {}
        self._next_slot = 0
        self.durations: dict[int, float] = {}  # code key -> running average of its run time
        self.completed = 0
        self.batches = 0  # WorkerRun messages sent
        self.replaced = 0
        self.start_failures = 0  # workers in a row that died before saying ready
        self.broken: str | None = None
        self.env = _worker_env()
        self.shm_owner = shm_owner
        self.stopping = False
        self._files = f"handoff-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.retiring: list[tuple[subprocess.Popen, float]] = []  # replicas told to stop

    # ---- processes ------------------------------------------------------------------
    def start(self) -> None:
        for _ in range(self.size):
            self._spawn()

    def _spawn(self, owner: Any = None) -> Worker | None:
        if self.stopping:
            return None
        slot = self._next_slot
        self._next_slot += 1
        current = os.path.join(tempfile.gettempdir(), f"{self._files}-w{slot}.job")
        with open(current, "wb") as f:
            f.write(bytes(8))
        node_end, worker_end = socket_pair()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "handoff.node.execution.worker", str(worker_end.fileno()), str(slot),
                 current, *([self.shm_owner] if self.shm_owner and owner is None else [])],
                env=self.env,
                stdin=subprocess.DEVNULL,
                pass_fds=[worker_end.fileno()],
            )
        except OSError as exc:  # out of processes or fds: try again at the next check
            node_end.close()
            os.unlink(current)
            self.start_failures += 1
            log.error("could not start a worker process: %s", exc)
            return None
        finally:
            worker_end.close()  # the child has it; the node must not, or it never sees EOF
        worker = self.workers[slot] = Worker(slot, proc, channel=NodeEnd(node_end), started=time.monotonic(),
                                             current_path=current, owner=owner)
        self.generation += 1
        return worker

    # ---- workers held by stream replicas (node/streams) --------------------------------
    def spawn_dedicated(self, owner: Any) -> Worker | None:
        """A worker process outside the pool's share, for ``owner`` (a replica) alone: its
        messages go to ``owner.on_worker_message(worker, msg)``, its death to
        ``owner.on_worker_lost(worker, error, running)``; None if no process could start."""
        return self._spawn(owner)

    def take_idle(self, owner: Any) -> Worker | None:
        """A ready pool worker with nothing to do, handed to ``owner`` for good (the pool starts
        a replacement at its next check); None if every worker is busy."""
        for w in self.workers.values():
            if w.owner is None and w.ready and not w.inflight and not w.exclusive and not w.channel.closed:
                w.owner = owner
                return w
        return None

    def retire(self, worker: Worker) -> None:
        """Stop a dedicated worker: told to stop, killed if it has not exited within a second."""
        if self.workers.get(worker.slot) is not worker:
            return
        del self.workers[worker.slot]
        self.generation += 1
        try:
            if worker.ready:
                worker.channel.send(encode(WorkerStop()))
                worker.channel.flush()
            worker.channel.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        worker.channel.close()
        worker.discard_current_file()
        self.retiring.append((worker.proc, time.monotonic() + 1.0))

    def kill_dedicated(self, worker: Worker) -> None:
        """Kill a dedicated worker now (stuck on an expired item); no loss is reported."""
        if self.workers.get(worker.slot) is not worker:
            return
        del self.workers[worker.slot]
        self.generation += 1
        worker.channel.close()
        worker.discard_current_file()
        try:
            worker.proc.kill()
        except OSError:
            pass
        self.retiring.append((worker.proc, time.monotonic()))

    def _reap_retiring(self) -> None:
        now = time.monotonic()
        still = []
        for proc, deadline in self.retiring:
            if proc.poll() is not None:
                continue
            if now >= deadline:
                try:
                    proc.kill()
                except OSError:
                    pass
            still.append((proc, deadline))
        self.retiring = still

    def ready_count(self) -> int:
        return sum(1 for w in self.workers.values() if w.ready and w.owner is None)

    def _pool_size(self) -> int:
        return sum(1 for w in self.workers.values() if w.owner is None)

    def stop(self, timeout: float = 2.0) -> None:
        self.stopping = True  # nothing is respawned from here on
        for w in self.workers.values():
            try:
                if w.ready:
                    w.channel.send(encode(WorkerStop()))
                    w.channel.flush()
                w.channel.sock.shutdown(socket.SHUT_WR)  # end of file stops a worker too
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for w in self.workers.values():
            try:
                w.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
            w.discard_current_file()
            w.channel.close()
        self.workers.clear()
        for proc, _ in self.retiring:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.retiring.clear()
        self.generation += 1

    # ---- admission ------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        self.jobs[job.job_id] = job
        if job.blobs and job.blobs[0]:
            job.code_key = hash(_bytes(job.blobs[0][0]))
        if len(self.durations) > 10000:
            self.durations.clear()
        self.queue.append(job)  # the loop pumps once per iteration, so jobs go out in batches

    # ---- feeding workers ------------------------------------------------------------
    def _estimate(self, job: Job) -> float:
        return self.durations.get(job.code_key, UNKNOWN_JOB)

    def _cap(self, estimate: float) -> int:
        """Jobs a worker may hold: many short ones, two medium ones, or one long one."""
        if estimate < FAST_JOB:
            return 2 * BATCH_MAX
        return 2 if estimate < MEDIUM_JOB else 1

    def pump(self) -> None:
        queue = self.queue
        # each ready worker's share of what is queued now: computed once, so a backlog goes
        # out in one batch per worker rather than in ever smaller halves
        share = -(-len(queue) // max(1, self.ready_count()))
        while queue:
            head = queue[0]
            if head.cancelled:
                queue.popleft()
                continue
            estimate = self._estimate(head)
            cap = self._cap(estimate) if head.timeout is None else 1
            worker = self._pick_worker(cap)
            if worker is None:
                return
            if head.timeout is not None:
                batch = [queue.popleft()]
                worker.exclusive = True
            elif estimate >= FAST_JOB:
                batch = [queue.popleft()]
            else:
                n = min(cap - len(worker.inflight), share, BATCH_MAX)
                batch = []
                estimates = self.durations.get
                while queue and len(batch) < n:
                    job = queue[0]
                    if job.cancelled:
                        queue.popleft()
                        continue
                    if job.timeout is not None or estimates(job.code_key, UNKNOWN_JOB) >= FAST_JOB:
                        break
                    batch.append(queue.popleft())
            self._send(worker, batch)

    def _pick_worker(self, cap: int) -> Worker | None:
        best = None
        for w in self.workers.values():
            if not w.ready or w.exclusive or len(w.inflight) >= cap or w.channel.closed or w.owner is not None:
                continue
            if best is None or len(w.inflight) < len(best.inflight):
                best = w
        return best

    def _send(self, worker: Worker, batch: list[Job]) -> None:
        now = time.monotonic()
        rows: list[JobRow] = []
        blobs: list[list] = []
        for job in batch:
            job.worker = worker.slot
            job.sent_at = now
            worker.inflight.append(job)
            rows.append(JobRow(job.job_id, job.tree, len(blobs), len(job.blobs), job.cache_path))
            blobs.extend(job.blobs)
        worker.channel.send(encode(WorkerRun(rows, blobs)))
        self.batches += 1

    # ---- worker messages ------------------------------------------------------------
    def channels(self) -> dict[int, Worker]:
        """fd -> worker, for the loop to poll."""
        return {w.channel.fd: w for w in self.workers.values() if not w.channel.closed}

    def read(self, worker: Worker) -> None:
        """The loop saw the worker's channel readable (or writable)."""
        if self.workers.get(worker.slot) is not worker:
            return
        worker.channel.flush()
        for frames in worker.channel.read():
            try:
                self.handle(worker, decode(frames))
            except ProtocolError as exc:
                log.warning("dropped a message from worker %s: %s", worker.slot, exc)
            except Exception:  # one bad message must not cost the others
                log.exception("internal error handling a message from worker %s", worker.slot)
        if worker.channel.closed and self.workers.get(worker.slot) is worker:
            # its end closed (it died, or closed the socket): replace it now, or the loop
            # would wake for the end of file until the process is reaped
            if not worker.ready:
                self.start_failures += 1
            how = _reap(worker.proc)
            self._lost_worker(worker, ErrorRow("WorkerDied", f"the worker process running it {how}", ""))

    def handle(self, worker: Worker, msg: Message) -> None:
        if isinstance(msg, WorkerDone):
            self._done(worker, msg)
        elif isinstance(msg, WorkerReady):
            w = self.workers.get(msg.worker)
            if w is not worker or w.proc.pid != msg.pid:
                log.warning("ignored a worker that this node did not start (pid %s)", msg.pid)
                return
            w.ready = True
            self.start_failures = 0  # the loop pumps work to it at the end of this iteration
            if w.owner is not None:
                w.owner.on_worker_message(w, msg)
        elif worker.owner is not None:
            worker.owner.on_worker_message(worker, msg)

    def _done(self, worker: Worker, msg: WorkerDone) -> None:
        if self.workers.get(worker.slot) is not worker:
            return
        jobs, inflight, durations, report = self.jobs, worker.inflight, self.durations, self.report
        for row in msg.results:
            job = jobs.pop(row.job_id, None)
            if job is None:
                continue
            if inflight and inflight[0] is job:  # a worker runs its jobs in order
                inflight.popleft()
            else:
                try:
                    inflight.remove(job)
                except ValueError:
                    pass
            worker.exclusive = False
            self.completed += 1
            started, finished, blob = row.started, row.finished, row.blob
            took = finished - started if finished > started else 0.0
            old = durations.get(job.code_key)
            durations[job.code_key] = took if old is None else 0.7 * old + 0.3 * took
            report(job, row.ok, row.error, msg.blobs[blob] if 0 <= blob < len(msg.blobs) else None,
                   started, finished)

    # ---- failures, timeouts, cancellation ------------------------------------------
    def check(self) -> None:
        """Called by a timer: enforce timeouts, notice dead workers, replace them."""
        now = time.monotonic()
        if self.broken is not None and not self.workers:
            while self.queue:
                job = self.queue.popleft()
                self.jobs.pop(job.job_id, None)
                self.report(job, False, ErrorRow("WorkerDied", self.broken, ""), None, time.time(), time.time())
        for w in list(self.workers.values()):
            if w.exclusive and w.inflight:
                job = w.inflight[0]
                if job.timeout is not None and now - job.sent_at > job.timeout:
                    self._kill(w, job, ErrorRow("TimeoutError", f"attempt exceeded its timeout of {job.timeout:g} s", ""))
                    continue
            code = w.proc.poll()
            if code is not None:
                self.read(w)  # results it sent before it died still count (and counts a
                # failed start when it sees the channel closed)
                if not w.ready and self.workers.get(w.slot) is w:
                    self.start_failures += 1
                if self.workers.get(w.slot) is w:
                    self._lost_worker(w, ErrorRow("WorkerDied", f"the worker process running it {exit_description(code)}", ""))
            elif not w.ready and now - w.started > 60:
                log.error("worker %s did not start within 60 s; replacing it", w.slot)
                self._kill(w, None, None)
        if self.retiring:
            self._reap_retiring()
        if (self._pool_size() < self.size and not self.stopping and self.broken is None
                and self.start_failures < MAX_START_FAILURES):
            self._spawn()  # a start that failed earlier (no processes or fds left then)

    def _kill(self, w: Worker, culprit: Job | None, error: ErrorRow | None) -> None:
        try:
            w.proc.kill()
            w.proc.wait(5)
        except Exception:
            pass
        self._lost_worker(w, error, culprit)

    def _lost_worker(self, w: Worker, error: ErrorRow | None, culprit: Job | None = None) -> None:
        """The worker is gone: charge the job it was running (``culprit``, or the one its
        current-job file names) and re-queue the rest, which are not attempts."""
        self.workers.pop(w.slot, None)
        w.channel.close()
        self.generation += 1
        if w.owner is not None:
            running = w.running_job_id()
            w.discard_current_file()
            w.owner.on_worker_lost(w, error, running)
            return
        inflight = list(w.inflight)
        w.inflight.clear()
        if culprit is None and inflight:
            running = w.running_job_id()
            if running < 0:
                culprit = inflight[0]
            else:
                culprit = next((j for j in inflight if j.job_id == running), None)
        w.discard_current_file()
        requeue = []
        for job in inflight:
            job.worker = -1
            if job.cancelled or (job is culprit and error is not None):
                self.jobs.pop(job.job_id, None)
                self.report(job, False, error, None, job.sent_at, time.time())
            else:
                requeue.append(job)
        self.queue.extendleft(reversed(requeue))
        self.replaced += 1
        if self.start_failures >= MAX_START_FAILURES:
            if self.broken is None and not self.workers:
                self.broken = (f"worker processes exit before they start ({self.start_failures} in a "
                               "row); their error output is on this node's stderr")
                log.error("%s", self.broken)
            return
        self._spawn()

    def cancel(self, jobs: list[Job]) -> list[Job]:
        """Stop these jobs: the queued ones end now (returned); a worker running one is killed;
        the others are reported when their worker gets to them."""
        for job in jobs:
            job.cancelled = True
        ended = [j for j in self.queue if j.cancelled]
        if ended:
            self.queue = deque(j for j in self.queue if not j.cancelled)
            for job in ended:
                self.jobs.pop(job.job_id, None)
        for w in list(self.workers.values()):
            if not any(j.cancelled for j in w.inflight):
                continue
            running = w.running_job_id()
            if any(j.cancelled and (j.job_id == running or running < 0) for j in w.inflight):
                self._kill(w, None, None)  # stop the code that is running now
        return ended

    def stats(self) -> dict:
        return {
            "workers": self._pool_size(),
            "replicas": len(self.workers) - self._pool_size(),
            "ready": self.ready_count(),
            "queued": len(self.queue),
            "completed": self.completed,
            "batches": self.batches,
            "replaced": self.replaced,
            "pids": sorted(w.proc.pid for w in self.workers.values() if w.owner is None),
            "replica_pids": sorted(w.proc.pid for w in self.workers.values() if w.owner is not None),
        }


def exit_description(code: int | None) -> str:
    """How a worker process ended, in words a user can act on."""
    if code is None:
        return "closed its channel and was killed"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name} (signal {-code})"
    return f"exited with code {code}"


def _reap(proc: subprocess.Popen, wait: float = 1.0) -> str:
    """The exit of a worker whose channel closed: it is normally already gone (the kernel
    closes its files as it exits); one that lingers is killed."""
    try:
        return exit_description(proc.wait(wait))
    except subprocess.TimeoutExpired:
        pass
    try:
        proc.kill()
        proc.wait(5)
    except Exception:
        pass
    return exit_description(None)


def _bytes(frame: Any) -> bytes:
    if type(frame) is bytes:  # a payload made by this node: its hash is cached
        return frame
    return frame.bytes if hasattr(frame, "bytes") else bytes(frame)


def _worker_env() -> dict:
    """The driver's import path, so functions pickled by reference import in the worker."""
    env = dict(os.environ)
    paths = [p for p in sys.path if p]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    cwd = os.getcwd()
    if cwd not in paths:
        paths.insert(0, cwd)
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env

"""A worker process: runs the user code that its node sends, and nothing else.

Started by the node as ``python -m handoff.node.execution.worker FD WORKER_ID ...``; talks to the node
over one end of a Unix socket pair (handoff.node.execution.pipes); exits when told to, or when its
node is gone (its end of the pair closes).
"""

from __future__ import annotations

import mmap
import os
import signal
import struct
import sys
import threading
import time
import traceback
from collections import OrderedDict
from typing import Any

from handoff.cache.disk import write_entry
from handoff.errors import PicklableException, ProtocolError
from handoff.node.execution.pipes import WorkerEnd
from handoff.node.data.values import dumps_value, loads_args, loads_payload, loads_value
from handoff.protocol import decode, encode
from handoff.protocol.messages import WorkerDone, WorkerReady, WorkerRun, WorkerStop
from handoff.protocol.rows import Call, ErrorRow, Hook, JobResultRow, Leaf, Tree
from handoff.protocol.streams import ReplicaStart
from handoff.node.streams.replica import serve_replica

FLUSH_AFTER = 0.002  # send finished results at least this often while a batch runs
SPIN = 0.0002  # after a batch, poll this long for the next one before sleeping


CODE_CACHE_BYTES = 64 << 20  # decoded code kept per worker, counted by its pickled size


class Evaluator:
    """Builds calls from argument trees (see handoff.protocol.rows) and runs them.

    Decoded code is cached by its frame (shared by every function that runs that code),
    least recently used first out, within ``limit`` bytes; extra arguments are decoded per
    call and never kept, so nothing of a run outlives its jobs but its code."""

    def __init__(self, limit: int = CODE_CACHE_BYTES) -> None:
        self._code: OrderedDict[bytes, tuple] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()  # the thread executor shares one Evaluator
        self.cached_bytes = 0

    def payload(self, frames: list) -> tuple:
        fn, bound = self.code(frames[0])
        if len(frames) < 2:
            return fn, bound
        extra = loads_args(frames[1])
        return fn, (bound + extra if bound else extra)

    def code(self, frame: Any) -> tuple:
        key = frame if type(frame) is bytes else bytes(_buffer(frame))
        cache = self._code
        with self._lock:
            found = cache.get(key)
            if found is not None:
                cache.move_to_end(key)
                return found
        found = loads_payload(key)
        size = len(key)
        if size <= self._limit // 4:  # one huge closure must not flush everything else
            with self._lock:
                if key not in cache:
                    cache[key] = found
                    self.cached_bytes += size
                while self.cached_bytes > self._limit:
                    old, _ = cache.popitem(last=False)
                    self.cached_bytes -= len(old)
        return found

    def evaluate(self, node: Tree, blobs: list) -> Any:
        if type(node) is Leaf:
            return loads_value(blobs[node.slot])
        if type(node) is Call:
            fn, extra = self.payload(blobs[node.payload])
            args = [self.evaluate(child, blobs) for child in node.children]
            if node.inclusion == "as_list":
                return fn(args, *extra)
            return fn(*args, *extra)
        if type(node) is Hook:
            fn, extra = self.payload(blobs[node.hook])
            return fn(self.evaluate(node.child, blobs), node.source, node.target, *extra)
        raise ProtocolError(f"unknown argument tree node {type(node).__name__}")


def _buffer(frame: Any) -> Any:
    return frame.buffer if hasattr(frame, "buffer") else frame


def run_job(evaluator: Evaluator, tree: Tree, blobs: list, shm_owner: str | None = None) -> tuple:
    """(ok, error, frames, returned): the pickled result, or the error and the pickled
    exception, and when the user's code returned (pickling is part of moving the value)."""
    try:
        value = evaluator.evaluate(tree, blobs)
    except BaseException as exc:  # user code may raise anything, SystemExit and
        # KeyboardInterrupt included: the worker ignores SIGINT, so one raised here is the code's
        return False, describe(exc), _pickled_exception(exc), time.time()
    returned = time.time()
    try:
        return True, None, dumps_value(value, shm_owner), returned
    except BaseException as exc:
        error = ErrorRow(
            "PicklingError",
            f"the result ({type(value).__name__}) could not be pickled: {exc}",
            traceback.format_exc(),
        )
        return False, error, None, returned


def save_to_cache(path: str, frames: list, worker_id: int) -> None:
    """The node's result cache, written here so a large value does not stall the node's loop;
    a failure costs the entry, not the result."""
    try:
        write_entry(path, frames)
    except Exception as exc:
        print(f"handoff worker {worker_id}: could not write the cache entry {path}: {exc}", file=sys.stderr)


def describe(exc: BaseException) -> ErrorRow:
    return ErrorRow(type(exc).__qualname__, str(exc), "".join(traceback.format_exception(exc)))


def _pickled_exception(exc: BaseException) -> list | None:
    for holder in (exc, PicklableException(exc)):  # the second skips a mismatched __init__
        try:
            frames = dumps_value(holder)
            loads_value(frames)  # an exception that pickles but cannot be rebuilt is no use
            return frames
        except BaseException:
            continue
    return None


class Spin:
    """How long to poll for the next batch: SPIN while the machine has a core to spare,
    nothing when it is oversubscribed (polling then takes the CPU from the node that would
    send the next batch). Rechecked once a second."""

    def __init__(self) -> None:
        self._cores = os.cpu_count() or 1
        self._next = 0.0
        self._value = SPIN

    def seconds(self) -> float:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + 1.0
            try:
                busy = os.getloadavg()[0] >= self._cores
            except OSError:
                busy = False
            self._value = 0.0 if busy else SPIN
        return self._value


class CurrentJob:
    """Which job this worker is running, in a file its node reads if the worker dies: the
    node then blames that job alone and re-queues the others (finished but unreported, or
    not started) without charging them an attempt."""

    def __init__(self, path: str | None):
        self._map = None
        if path:
            fd = os.open(path, os.O_RDWR)
            try:
                self._map = mmap.mmap(fd, 8)
            finally:
                os.close(fd)

    def set(self, job_id: int) -> None:
        if self._map is not None:
            self._map[:8] = _JOB.pack(job_id)


_JOB = struct.Struct("q")


def serve(fd: int, worker_id: int, current_path: str | None = None,
          shm_owner: str | None = None) -> None:
    # Ctrl-C in a terminal reaches the whole process group: the node decides what stops,
    # and a worker must not report the user's code as failed because of it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = WorkerEnd(fd)
    channel.send(encode(WorkerReady(worker_id, os.getpid())))
    evaluator = Evaluator()
    current = CurrentJob(current_path)
    spin = Spin()
    try:
        while True:
            frames = channel.recv(spin.seconds())
            if frames is None:  # the node closed its end, or is gone
                return
            try:
                msg = decode(frames)
            except ProtocolError as exc:
                print(f"handoff worker {worker_id}: dropped {exc}", file=sys.stderr)
                continue
            if isinstance(msg, WorkerStop):
                return
            if isinstance(msg, WorkerRun):
                run_batch(channel, worker_id, evaluator, msg, shm_owner, current)
            elif isinstance(msg, ReplicaStart):  # from now on this process is a stream replica
                # no shared memory: a replica's values are dropped by whoever takes them last
                serve_replica(channel, msg, evaluator, None, current, lambda: channel.recv(spin.seconds()))
                return
    finally:
        channel.close()


def run_batch(channel: WorkerEnd, worker_id: int, evaluator: Evaluator, msg: WorkerRun,
              shm_owner: str | None, current: CurrentJob) -> None:
    rows: list[JobResultRow] = []
    blobs: list = []
    last_flush = time.perf_counter()
    for job in msg.jobs:
        job_id, first = job.job_id, job.first
        started = time.time()
        current.set(job_id)
        ok, error, frames, finished = run_job(evaluator, job.tree, msg.blobs[first:first + job.count], shm_owner)
        if ok and job.cache_path:
            save_to_cache(job.cache_path, frames, worker_id)
        current.set(0)
        blob = -1
        if frames is not None:
            blob = len(blobs)
            blobs.append(frames)
        rows.append(JobResultRow(job_id, ok, started, finished, error, blob))
        now = time.perf_counter()
        if now - last_flush > FLUSH_AFTER:
            channel.send(encode(WorkerDone(worker_id, rows, blobs)))
            rows, blobs, last_flush = [], [], now
    if rows:
        channel.send(encode(WorkerDone(worker_id, rows, blobs)))


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3, 4):
        sys.exit("usage: python -m handoff.node.execution.worker FD WORKER_ID [CURRENT_JOB_FILE [SHM_OWNER]]")
    serve(int(args[0]), int(args[1]), args[2] if len(args) > 2 else None, args[3] if len(args) > 3 else None)


if __name__ == "__main__":
    main()

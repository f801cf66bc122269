"""A replica inside its worker process: runs ``init`` once, then the stage's code on each item
(or each batch) its node sends, keeping the state between calls.

The worker's main loop hands over here on ``ReplicaStart``; the process stays a replica until
its node stops it (``WorkerStop`` or the end of its channel) or kills it.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from handoff.errors import ProtocolError
from handoff.node.data.values import dumps_value, loads_value
from handoff.protocol import decode, encode
from handoff.protocol.messages import WorkerStop
from handoff.protocol.rows import ErrorRow, Leaf
from handoff.protocol.streams import (
    ReplicaDone, ReplicaItemRow, ReplicaReady, ReplicaResultRow, ReplicaRun, ReplicaStart,
    StageArg, StageCall, StageHook,
)

if TYPE_CHECKING:
    from handoff.node.execution.pipes import WorkerEnd
    from handoff.node.execution.worker import CurrentJob, Evaluator

__all__ = ["serve_replica", "StageRunner"]

FLUSH_AFTER = 0.002  # seconds: finished items go back at least this often while a message runs


class _ItemFailed(Exception):
    def __init__(self, error: ErrorRow):
        self.error = error


class StageRunner:
    """The stage's code with its state; turns items (value frames) into result frames."""

    def __init__(self, msg: ReplicaStart, evaluator: Evaluator, shm_owner: str | None):
        from handoff.node.execution.worker import describe

        self._describe = describe
        self.node = msg.node
        self.call = msg.call
        self.blobs = msg.blobs
        self.batch = msg.batch
        self.evaluator = evaluator
        self.shm_owner = shm_owner
        self.fn, self.extra = evaluator.payload(self.blobs[msg.call.payload])
        self.has_init = msg.init >= 0
        self.state: Any = None
        if self.has_init:
            init, bound = evaluator.payload(self.blobs[msg.init])
            self.state = init(*bound)

    # ---- building the arguments of one item -------------------------------------------
    def _value(self, arg: StageArg, values: list, sources: list[str]) -> Any:
        kind = type(arg)
        if kind is Leaf:
            return values[arg.slot]  # type: ignore[union-attr]
        if kind is StageHook:
            hook: StageHook = arg  # type: ignore[assignment]
            value = values[hook.slot]
            source = sources[hook.slot]
            if hook.always or source != self.node:
                for blob in (hook.ser, hook.deser):
                    if blob >= 0:
                        fn, extra = self.evaluator.payload(self.blobs[blob])
                        value = fn(value, source, self.node, *extra)
            return value
        call: StageCall = arg  # type: ignore[assignment]
        fn, extra = self.evaluator.payload(self.blobs[call.payload])
        args = [self._value(child, values, sources) for child in call.children]
        return fn(args, *extra) if call.inclusion == "as_list" else fn(*args, *extra)

    def arguments(self, row: ReplicaItemRow, blobs: list) -> list:
        """The top call's arguments for one item; _ItemFailed if a hook or inline function raised."""
        try:
            values = [loads_value(blobs[row.first + k]) for k in range(row.count)]
            args = [self._value(child, values, row.sources) for child in self.call.children]
        except BaseException as exc:
            raise _ItemFailed(self._describe(exc)) from None
        return [args] if self.call.inclusion == "as_list" else args

    # ---- running ------------------------------------------------------------------------
    def run_one(self, args: list) -> Any:
        if not self.has_init:
            return self.fn(*args, *self.extra)
        out = self.fn(self.state, *args, *self.extra)
        result, self.state = _pair(out, "(result, new_state)")
        return result

    def run_batch(self, batch: list) -> list:
        if self.has_init:
            out = self.fn(self.state, batch, *self.extra)
            results, self.state = _pair(out, "(results, new_state)")
        else:
            results = self.fn(batch, *self.extra)
        try:
            n = len(results)
        except TypeError:
            raise TypeError(f"a batch function must return a list, got {type(results).__name__}") from None
        if n != len(batch):
            raise ValueError(f"the batch function returned {n} results for a batch of {len(batch)} items")
        return list(results)

    def done_row(self, seq: int, value: Any, blobs: list) -> ReplicaResultRow:
        try:
            frames = dumps_value(value, self.shm_owner)
        except BaseException as exc:
            return ReplicaResultRow(seq, ErrorRow("PicklingError", f"the result ({type(value).__name__}) "
                                                  f"could not be pickled: {exc}", ""), -1)
        blobs.append(frames)
        return ReplicaResultRow(seq, None, len(blobs) - 1)


def _pair(out: Any, what: str) -> tuple[Any, Any]:
    if not isinstance(out, tuple) or len(out) != 2:
        raise TypeError(f"with init, the code must return {what}, got {type(out).__name__}")
    return out[0], out[1]


def serve_replica(channel: WorkerEnd, msg: ReplicaStart, evaluator: Evaluator,
                  shm_owner: str | None, current: CurrentJob, recv: Callable[[], list | None]) -> None:
    """Run init, say ready, then serve ReplicaRun messages until told to stop."""
    from handoff.node.execution.worker import describe

    try:
        runner = StageRunner(msg, evaluator, shm_owner)
    except BaseException as exc:
        channel.send(encode(ReplicaReady(describe(exc))))
        return
    channel.send(encode(ReplicaReady(None)))
    outbox = Outbox(channel)
    while True:
        frames = recv()
        if frames is None:
            return
        try:
            got = decode(frames)
        except ProtocolError as exc:
            print(f"handoff replica: dropped {exc}", file=sys.stderr)
            continue
        if isinstance(got, WorkerStop):
            return
        if isinstance(got, ReplicaRun):
            if got.batch:
                _run_batch(outbox, runner, got, current)
            else:
                _run_items(outbox, runner, got, current)


class Outbox:
    """Finished items on their way to the node: sent in groups while items are fast, and never
    held back more than FLUSH_AFTER by a slow item that follows (a thread sends them then)."""

    def __init__(self, channel: WorkerEnd):
        self.channel = channel
        self.lock = threading.Lock()
        self.rows: list[ReplicaResultRow] = []
        self.blobs: list = []
        self.since = 0.0  # when the oldest unsent row was added
        self.wake = threading.Event()
        self.closed = False
        self.thread = threading.Thread(target=self._watch, name="handoff-replica-outbox", daemon=True)
        self.thread.start()

    def add(self, row: ReplicaResultRow, frames: list | None) -> None:
        with self.lock:
            if frames is not None:
                self.blobs.append(frames)
                row = ReplicaResultRow(row.seq, row.error, len(self.blobs) - 1)
            if not self.rows:
                self.since = time.perf_counter()
                self.wake.set()
            self.rows.append(row)
            # a value with out-of-band buffers goes now: the buffers are the caller's memory,
            # which its next call may change (a replica reusing a buffer in its state)
            if (frames is not None and len(frames) > 1) or time.perf_counter() - self.since > FLUSH_AFTER:
                self._send()

    def flush(self) -> None:
        with self.lock:
            self._send()

    def _send(self) -> None:
        if self.rows:
            rows, blobs = self.rows, self.blobs
            self.rows, self.blobs = [], []
            self.channel.send(encode(ReplicaDone(rows, blobs)))

    def _watch(self) -> None:
        while not self.closed:
            self.wake.wait()
            self.wake.clear()
            while not self.closed:
                with self.lock:
                    if not self.rows:
                        break
                    due = self.since + FLUSH_AFTER - time.perf_counter()
                    if due <= 0:
                        self._send()
                        break
                time.sleep(due)


def _run_items(outbox: Outbox, runner: StageRunner, msg: ReplicaRun, current: CurrentJob) -> None:
    for row in msg.rows:
        current.set(row.seq + 1)
        blobs: list = []
        try:
            value = runner.run_one(runner.arguments(row, msg.blobs))
        except _ItemFailed as failed:
            outbox.add(ReplicaResultRow(row.seq, failed.error, -1), None)
        except BaseException as exc:
            outbox.add(ReplicaResultRow(row.seq, runner._describe(exc), -1), None)
        else:
            done = runner.done_row(row.seq, value, blobs)
            outbox.add(done, blobs[0] if blobs else None)
        current.set(0)
    outbox.flush()


def _run_batch(outbox: Outbox, runner: StageRunner, msg: ReplicaRun, current: CurrentJob) -> None:
    batch, seqs = [], []
    for row in msg.rows:
        try:
            args = runner.arguments(row, msg.blobs)
        except _ItemFailed as failed:
            outbox.add(ReplicaResultRow(row.seq, failed.error, -1), None)
            continue
        batch.append(args[0] if len(args) == 1 else tuple(args))
        seqs.append(row.seq)
    if seqs:
        current.set(seqs[0] + 1)
        try:
            results = runner.run_batch(batch)
        except BaseException as exc:
            error = runner._describe(exc)
            for seq in seqs:
                outbox.add(ReplicaResultRow(seq, error, -1), None)
        else:
            for seq, value in zip(seqs, results):
                blobs: list = []
                done = runner.done_row(seq, value, blobs)
                outbox.add(done, blobs[0] if blobs else None)
        current.set(0)
    outbox.flush()

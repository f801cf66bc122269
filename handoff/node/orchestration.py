"""The node's side of orchestrating runs: feed the scheduler's state machine with events and
turn its instructions into messages and results."""

from __future__ import annotations

import logging
import sys
import time
from collections import defaultdict
from typing import Any

from handoff import _core
from handoff.errors import FunctionError, HandoffError, TimeoutError
from handoff.node.runs import ExecutionResult, Results, RunContext, chain_error
from handoff.protocol.messages import Cancel, Dispatch, Done, RunEnded
from handoff.scheduler import (
    CancelRun, CancelTasks, Dispatch as DispatchTasks, ErrorInfo, NodeJoined, NodeLost,
    NodeUpdated, Orchestrator, ReleaseRun, ResultLost, RunFinished, RunSpec, TaskFinished, Tick,
)

log = logging.getLogger("handoff.orchestration")

__all__ = ["Runs", "progress_printer"]


class Runs:
    """The runs this node's driver submitted: owns the scheduler's state machine, its ledger of
    the cluster's claims, and each run's context; turns instructions into messages."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.name = node.name
        self.transport = node.transport
        self.ledger = _core.ResourceLedger()
        self.orchestrator = Orchestrator(self.ledger, self.name, debug_state=node.config.debug_state)
        self.runs: dict[str, RunContext] = {}
        self.local_events: list = []  # (row, blob) of this node's own tasks that finished
        self._timeouts: dict[str, list] = {}

    def __len__(self) -> int:
        return len(self.runs)

    # ---- cluster changes ------------------------------------------------------------
    def node_joined(self, name: str, caps: dict) -> None:
        self._apply(self.orchestrator.handle(NodeJoined(name, dict(caps))))

    def node_updated(self, name: str, caps: dict) -> None:
        self._apply(self.orchestrator.handle(NodeUpdated(name, dict(caps))))

    def node_lost(self, name: str) -> None:
        self._apply(self.orchestrator.handle(NodeLost(name, time.monotonic())))

    def tick(self) -> None:
        """Lets runs that wait for a lost pinned node give up when their timeout runs out."""
        if self.orchestrator.next_deadline is not None:
            self._apply(self.orchestrator.handle(Tick(time.monotonic())))

    # ---- submitting -----------------------------------------------------------------
    def submit_run(self, ctx: RunContext, options: dict) -> None:
        """On the loop thread: start ``ctx``; its future resolves when the run ends."""
        if not self.node.running:
            raise HandoffError(f"node {self.name!r} is shutting down")
        now = time.monotonic()
        timeout = options.get("timeout")
        spec = RunSpec(
            run_id=ctx.run_id, dag_id=ctx.dag_id, graph=ctx.graph, functions=ctx.functions,
            strategy=options["allocation_strategy"], max_retries=options["max_retries"],
            max_concurrency=options["max_concurrency"], now=now,
            deadline=None if timeout is None else now + timeout,
        )
        self.runs[ctx.run_id] = ctx
        try:
            instructions = self.orchestrator.submit(spec)
        except BaseException:
            self.runs.pop(ctx.run_id, None)
            raise
        if options.get("timeout") is not None:
            seconds = options["timeout"]

            def expire() -> None:
                if ctx.run_id not in self.runs:
                    return
                if self.orchestrator.run(ctx.run_id).awaiting:  # say which node never came back
                    self._apply(self.orchestrator.handle(Tick(time.monotonic() + 1e-3)))
                if ctx.run_id in self.runs:
                    err = TimeoutError(f"run of DAG {ctx.dag_id!r}", seconds)
                    self._apply(self.orchestrator.handle(CancelRun(ctx.run_id, err)))

            self._timeouts[ctx.run_id] = self.node.after(seconds, expire)
        self._apply(instructions)

    def cancel_run(self, run_id: str, reason: HandoffError) -> None:
        if run_id in self.runs:
            self._apply(self.orchestrator.handle(CancelRun(run_id, reason)))

    # ---- events from executing nodes ---------------------------------------------------
    def process_local_events(self) -> None:
        rows, self.local_events = self.local_events, []
        self._finished_rows(self.name, rows)

    def on_done(self, msg: Done) -> None:
        rows = []
        for row in msg.results:
            blob = msg.blobs[row[8]] if row[8] >= 0 and row[8] < len(msg.blobs) else None
            rows.append((row, blob))
        self._finished_rows(msg.sender, rows)

    def _finished_rows(self, node: str, rows: list) -> None:
        events: list = []
        for row, blob in rows:
            run_id, index, attempt, ok, started, finished, _nbytes, error, _b, lost = row
            ctx = self.runs.get(run_id)
            if ctx is None:
                continue
            if lost is not None:
                lost_index = ctx.graph.index.get(lost[1])
                if lost_index is not None:
                    events.append(ResultLost(run_id, lost_index, index, attempt, lost[0]))
                    continue
            info = None
            if not ok:
                exc_type, message, tb = error
                info = ErrorInfo(exc_type, message, tb, blob)
            elif ctx.progress is not None:
                ctx.done_count += 1
                try:
                    ctx.progress(ctx.done_count, ctx.total)
                except Exception:  # the user's callback must not stop the run or the node
                    log.exception("progress callback of DAG %r raised; progress reports stop", ctx.dag_id)
                    ctx.progress = None
            events.append(TaskFinished(run_id, index, attempt, node, ok, info, started, finished))
        if events:
            self._apply(self.orchestrator.handle(*events))

    # ---- instructions ---------------------------------------------------------------
    def _apply(self, instructions: list) -> None:
        dispatch: dict[tuple[str, str], list] = defaultdict(list)
        for ins in instructions:
            if isinstance(ins, DispatchTasks):
                dispatch[(ins.run_id, ins.node)].extend(ins.tasks)
            elif isinstance(ins, CancelTasks):
                self._cancel_tasks(ins.run_id, ins.node, ins.indices)
            elif isinstance(ins, RunFinished):
                self._run_finished(ins)
            elif isinstance(ins, ReleaseRun):
                for node in ins.nodes:
                    if node == self.name:
                        self.node.forget_run(ins.run_id)
                    else:
                        self.transport.send(node, RunEnded(self.name, ins.run_id))
        for (run_id, node), tasks in dispatch.items():
            self._dispatch(run_id, node, tasks)

    def _dispatch(self, run_id: str, node: str, tasks: list) -> None:
        ctx = self.runs.get(run_id)
        if ctx is None:
            return
        state = self.orchestrator.run(run_id)
        location = state.location
        if node == self.name:
            self.node.accept_task_rows(self.name, ctx.dag_id, [ctx.task(i, a, node, location) for i, a in tasks])
            return
        rows, blobs = [], []
        for index, attempt in tasks:
            row, task_blobs = ctx.task(index, attempt, node, location)
            row += [len(blobs), len(task_blobs)]
            rows.append(row)
            blobs.extend(task_blobs)
        if not self.transport.send(node, Dispatch(self.name, ctx.dag_id, rows, blobs)):
            log.warning("%s: no link to %s for dispatch; the failure detector will re-place", self.name, node)

    def _cancel_tasks(self, run_id: str, node: str, indices: Any) -> None:
        idx = None if indices is None else list(indices)
        if node == self.name:
            self.node.cancel_jobs(run_id, idx)
        else:
            self.transport.send(node, Cancel(self.name, run_id, idx))

    def _run_finished(self, ins: RunFinished) -> None:
        ctx = self.runs.pop(ins.run_id, None)
        timer = self._timeouts.pop(ins.run_id, None)
        if timer is not None:
            self.node.cancel_timer(timer)
        try:
            if ctx is not None and not ctx.future.done():
                self._resolve(ctx, ins)
        finally:
            self.orchestrator.forget(ins.run_id)

    def _resolve(self, ctx: RunContext, ins: RunFinished) -> None:
        if ins.error is not None:
            error = ins.error
            info = ins.error_info
            if isinstance(error, FunctionError) and info is not None:
                error = chain_error(error, info.exc_blob)
            ctx.future.set_exception(error)
            return
        state = self.orchestrator.run(ins.run_id)
        ids = ctx.graph.ids
        inline = ctx.graph.inline
        allocations = {ids[i]: state.location(i) for i in range(len(ids)) if not inline[i]}
        for fid, node in allocations.items():
            self.node.store.register_location(ctx.dag_id, fid, node)
        stats = {ids[i]: s for i, s in state.stats.items()}
        result = ExecutionResult(ctx.dag_id, Results(self.node, ctx.dag_id, allocations), allocations, stats)
        ctx.future.set_result(result)

    def fail_all(self, error: HandoffError) -> None:
        for run_id in list(self.runs):
            self.cancel_run(run_id, error)
        for ctx in list(self.runs.values()):
            if not ctx.future.done():
                ctx.future.set_exception(error)
        self.runs.clear()


def progress_printer():
    """A progress callback that rewrites one line on stderr at most 5 times a second."""
    last = [0.0]

    def show(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] > 0.2:
            last[0] = now
            end = "\n" if done == total else ""
            sys.stderr.write(f"\rhandoff: {done}/{total} functions done{end}")
            sys.stderr.flush()

    return show

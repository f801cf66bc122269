"""The runs a node orchestrates: each run's payloads, argument trees and result (built in the
caller's thread), and ``Runs``, which turns the scheduler's instructions into messages.

Built in the caller's thread (pickling the functions there, so an unpicklable function
fails before the run starts), then owned by the event loop.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterator, cast

import numpy as np

from handoff import _core
from handoff.dag import DAG, Argument, CompiledGraph, Function
from handoff.errors import FunctionError, HandoffError, ResultNotFound, TimeoutError, remote_error
from handoff.node.data.values import dumps_args, dumps_payload, loads_value
from handoff.observe.record import RunRecord

from handoff.protocol.messages import Cancel, Dispatch, Done, RunEnded
from handoff.protocol.rows import Call, Hook, Leaf, ResultRow, TaskRow, Tree, ValueRef
from handoff.scheduler import (
    CancelRun, CancelTasks, Dispatch as DispatchTasks, ErrorInfo, FunctionStats, NodeJoined, NodeLost,
    NodeUpdated, Orchestrator, ReleaseRun, ResultLost, RunFinished, RunSpec, TaskFinished, Tick,
)
from handoff.scheduler.outcome import Placements, StatsView

if TYPE_CHECKING:
    from handoff.node.server import Node, Timer

__all__ = ["RunContext", "ExecutionResult", "Results", "Runs", "prepare_run"]

log = logging.getLogger("handoff.runs")


class PayloadPickler:
    """Payload blobs for one run: each distinct code object is pickled once (by identity),
    each function's extra arguments on their own (see ``values.dumps_payload``)."""

    def __init__(self) -> None:
        # id(code) -> (code kept alive, its frame, the blob of a call with no extra arguments)
        self._code: dict[int, tuple[Any, bytes, list]] = {}

    def blob(self, code: Any, extra: Any) -> list:
        """The payload blob; functions that share code and have no extra arguments share one
        (blobs are never changed once made)."""
        found = self._code.get(id(code))
        if found is None:
            frame = dumps_payload(code)
            found = self._code[id(code)] = (code, frame, [frame])
        return [found[1], dumps_args(extra)] if extra else found[2]

    def hook(self, hook: Any) -> list | None:
        if hook is None:
            return None
        if callable(hook):
            return self.blob(hook, ())
        fn, extra = hook
        return self.blob(fn, extra)


@dataclass(eq=False)
class RunContext:
    run_id: str
    dag: DAG
    graph: CompiledGraph
    functions: list[Function]
    payloads: list[list]  # per function: its payload blob (frames)
    hooks: dict[tuple[int, int], tuple[list | None, list | None, bool]]
    future: Future = field(default_factory=Future)
    progress: Callable[[int, int], None] | None = None
    done_count: int = 0
    record: RunRecord | None = None  # progress counters, and every attempt's timing and bytes
    # the result cache (handoff.cache.plan): keys of cache=True functions, hits -> their node,
    # the functions as the scheduler sees them (hits pinned, free), attempts loaded from a cache
    cache_keys: dict[int, str] = field(default_factory=dict)
    hits: dict[int, str] = field(default_factory=dict)
    scheduled: list[Function] | None = None
    loaded: dict[int, int] = field(default_factory=dict)
    live = False  # a live run's context is a ``handoff.node.live.LiveContext``
    # the graph's dependency lists, read per dispatch through memoryviews of its arrays (no
    # copy, and no Python list a function; indexing a memoryview gives a plain int)
    indptr: memoryview = field(init=False, repr=False)
    indices: memoryview = field(init=False, repr=False)
    inline: memoryview = field(init=False, repr=False)

    def __post_init__(self) -> None:
        g = self.graph
        self.indptr = np.ascontiguousarray(g.indptr, dtype=np.int64).data
        self.indices = np.ascontiguousarray(g.indices, dtype=np.int64).data
        self.inline = np.ascontiguousarray(g.inline, dtype=np.uint8).data

    @property
    def total(self) -> int:
        """Functions that produce a result (inline ones don't)."""
        return len(self.graph.ids) - int(self.graph.inline.sum())

    @property
    def dag_id(self) -> Any:
        return self.dag.id

    def task(
        self, index: int, attempt: int, target: str, location: Callable[[int], str | None],
        first: int = 0,
    ) -> tuple[TaskRow, list]:
        """(row, blobs) for a Dispatch message: the argument tree of ``index`` as run on
        ``target``, with a value slot (an empty blob) for each result to fetch; the blobs
        will be the message's from ``first`` on."""
        blobs: list = []
        refs: list[ValueRef] = []
        tree = self._tree(index, target, location, blobs, refs)
        fn = self.functions[index]
        row = TaskRow(self.run_id, index, attempt, fn.id, dict(fn.cost) if fn.cost else None,
                      fn.timeout, tree, refs, first, len(blobs), self.cache_keys.get(index, ""),
                      index in self.hits)
        return row, blobs

    def _tree(
        self, j: int, target: str, location: Callable[[int], str | None], blobs: list,
        refs: list[ValueRef],
    ) -> Call:
        fn = self.functions[j]
        k = len(blobs)
        blobs.append(self.payloads[j])
        children: list[Tree] = []
        indices, inline, lo = self.indices, self.inline, self.indptr[j]
        for pos in range(self.indptr[j + 1] - lo):
            dep = indices[lo + pos]
            if inline[dep]:
                children.append(self._tree(dep, target, location, blobs, refs))
                continue
            source = location(dep)
            slot = len(blobs)
            blobs.append([])
            leaf: Tree = Leaf(slot)
            hook_pos = -1
            hooks = self.hooks.get((j, pos))
            if hooks is not None:
                ser, deser, always = hooks
                if always or source != target:
                    if ser is not None:
                        hook_pos = len(blobs)
                        blobs.append(ser)
                    if deser is not None:
                        leaf = Hook(len(blobs), source, target, leaf)
                        blobs.append(deser)
            refs.append(ValueRef(cast(str, source), self.dag.id, self.graph.ids[dep], hook_pos, slot))
            children.append(leaf)
        return Call(k, fn.argument_inclusion, children)


def prepare_run(dag: DAG, progress: Callable | None = None, record: bool = True) -> RunContext:
    """Validate ``dag`` and pickle every code object and every function's extra arguments
    once; raises before anything is sent. ``record``: keep every attempt's record."""
    from handoff.errors import InvalidFunctionError

    graph = dag.compile()
    functions = [dag.functions[i] for i in graph.ids]
    for fn in functions:
        if fn.streams_only:
            raise InvalidFunctionError(fn.id, "input functions, init and batch_size belong to "
                                              "pipelines: run this DAG with handoff.stream()")
    payloads: list[list] = []
    hooks: dict = {}
    pickler = PayloadPickler()
    for j, fn in enumerate(functions):
        try:
            payloads.append(pickler.blob(fn.code, fn.extra_args))
        except Exception as exc:
            raise InvalidFunctionError(
                fn.id, f"{_unpicklable_part(fn)} cannot be pickled for shipping: {type(exc).__name__}: {exc}"
            ) from exc
        for pos, arg in enumerate(fn.args):
            if isinstance(arg, Argument) and (arg.serialization_fn or arg.deserialization_fn):
                try:
                    hooks[(j, pos)] = (
                        pickler.hook(arg.serialization_fn),
                        pickler.hook(arg.deserialization_fn),
                        arg.always,
                    )
                except Exception as exc:
                    raise InvalidFunctionError(
                        fn.id, f"the hooks of argument {arg.id!r} cannot be pickled: {exc}"
                    ) from exc
    return RunContext(uuid.uuid4().hex, dag, graph, functions, payloads, hooks, progress=progress,
                      record=RunRecord(dag.id, graph, functions, keep=record))


def _unpicklable_part(fn: Function) -> str:
    """Which of ``fn``'s code and extra arguments will not pickle, for the error message."""
    import cloudpickle

    for i, value in enumerate(fn.extra_args):
        try:
            cloudpickle.dumps(value)
        except Exception:
            return f"extra_args[{i}] ({type(value).__name__})"
    return "its code"


class Results(Mapping):
    """Read-only mapping of function id to value; a remote value is fetched on first access."""

    def __init__(self, node: Node, dag_id: Any, locations: Mapping[Hashable, str]):
        self._node = node
        self._dag_id = dag_id
        self._locations = locations
        self._cache: dict[Hashable, Any] = {}
        self._lock = threading.Lock()

    def location(self, fid: Hashable) -> str:
        try:
            return self._locations[fid]
        except KeyError:
            raise ResultNotFound(self._dag_id, fid) from None

    def __getitem__(self, fid: Hashable) -> Any:
        with self._lock:
            if fid in self._cache:
                return self._cache[fid]
        node = self.location(fid)
        frames = self._node.fetch_frames(node, self._dag_id, fid)
        value = loads_value(frames)
        with self._lock:
            self._cache[fid] = value
        return value

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._locations)

    def __len__(self) -> int:
        return len(self._locations)

    def __repr__(self) -> str:
        return f"Results({len(self)} values of DAG {self._dag_id!r})"


@dataclass(frozen=True)
class ExecutionResult:
    """What a run produced: its values, where each ran, and (``record``) every attempt."""

    dag_id: Any
    results: Results
    allocations: Mapping[Hashable, str]  # a dict, or a Placements over compact arrays
    stats: Mapping[Hashable, FunctionStats]
    record: RunRecord | None = None

    def __repr__(self) -> str:
        return f"ExecutionResult(dag_id={self.dag_id!r}, {len(self.results)} results)"

    def to_trace(self, path: Any) -> Any:
        """Write the run as Chrome trace-event JSON (Perfetto, chrome://tracing); returns the path."""
        from handoff.observe.trace import write_trace

        return write_trace(self._recorded("to_trace"), path)

    def report(self, path: Any) -> Any:
        """Write the run's self-contained HTML report; returns the path."""
        from handoff.observe.report import write_report

        return write_report(self._recorded("report"), path)

    def view(self) -> dict:
        """The run's view document (the report page's data; see ``handoff.observe.page``)."""
        from handoff.observe.view import build_view

        return build_view(self._recorded("view"))

    def _recorded(self, what: str) -> RunRecord:
        if self.record is None or not self.record.keep:
            raise HandoffError(f"{what}() needs the run's record: this run was executed with record=False")
        return self.record


def typed_error(error: FunctionError, exc_blob: list | None) -> FunctionError:
    """``error`` as ``errors.remote_error`` makes it: also of the original exception's class,
    with ``.cause``, when the pickled original unpickles here."""
    original = None
    if exc_blob:
        try:
            loaded = loads_value(exc_blob)
            if isinstance(loaded, BaseException):
                original = loaded
        except Exception:  # its class cannot be imported here: the plain error says what it was
            pass
    typed = remote_error(error.function_id, error.node, error.attempts, error.exc_type,
                         error.message, error.remote_traceback, original)
    typed.__dict__.update({k: v for k, v in error.__dict__.items() if k not in typed.__dict__})
    return typed


class Runs:
    """The runs this node's driver submitted: owns the scheduler's state machine, its ledger of
    the cluster's claims, and each run's context; turns instructions into messages."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.name = node.name
        self.transport = node.transport
        self.ledger = _core.ResourceLedger()
        self.orchestrator = Orchestrator(self.ledger, self.name, debug_state=node.config.debug_state)
        self.runs: dict[str, RunContext] = {}
        self.live: dict[str, Any] = {}  # live runs (handoff.node.live), also in ``runs``
        self.local_events: list = []  # (row, blob) of this node's own tasks that finished
        self._timeouts: dict[str, Timer] = {}

    def __len__(self) -> int:
        return len(self.runs)

    # ---- cluster changes ------------------------------------------------------------
    def node_joined(self, name: str, caps: dict) -> None:
        self._apply(self.orchestrator.handle(NodeJoined(name, dict(caps))))

    def node_updated(self, name: str, caps: dict) -> None:
        self._apply(self.orchestrator.handle(NodeUpdated(name, dict(caps))))

    def node_lost(self, name: str) -> None:
        for ctx in self.runs.values():  # a hit pinned to a lost holder runs anywhere, computed
            lost = [i for i, holder in ctx.hits.items() if holder == name]
            if lost:
                self.orchestrator.run(ctx.run_id).unpin(lost)
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
            run_id=ctx.run_id, dag_id=ctx.dag_id, graph=ctx.graph,
            functions=ctx.scheduled or ctx.functions,
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
        self.node.status.run_started(ctx)
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
        blobs = msg.blobs
        rows = [(row, blobs[row.blob] if 0 <= row.blob < len(blobs) else None) for row in msg.results]
        self._finished_rows(msg.sender, rows)

    def _finished_rows(self, node: str, rows: list[tuple[ResultRow, list | None]]) -> None:
        events: list = []
        for row, blob in rows:
            run_id, index, attempt, ok = row.run_id, row.index, row.attempt, row.ok
            ctx = self.runs.get(run_id)
            if ctx is None:
                continue
            first = ctx.record.add(node, row) if ctx.record is not None else ok
            lost = row.lost
            if lost is not None:
                lost_index = ctx.graph.index.get(lost.function_id)
                if lost_index is not None:
                    events.append(ResultLost(run_id, lost_index, index, attempt, lost.node))
                    continue
            info = None
            if not ok:
                error = row.error
                if error is None:  # the executing node's fault: a failure must say why
                    raise ValueError(f"run {run_id}: a failed attempt of task {index} has no error")
                info = ErrorInfo(error.exc_type, error.message, error.traceback, blob)
            elif row.cached:
                ctx.loaded[index] = attempt
            if ok and ctx.progress is not None and first:  # a function run again counts once
                ctx.done_count += 1
                try:
                    ctx.progress(ctx.done_count, ctx.total)
                except Exception:  # the user's callback must not stop the run or the node
                    log.exception("progress callback of DAG %r raised; progress reports stop", ctx.dag_id)
                    ctx.progress = None
            events.append(TaskFinished(run_id, index, attempt, node, ok, info, row.started, row.finished))
        if events:
            self._apply(self.orchestrator.handle(*events))

    # ---- instructions ---------------------------------------------------------------
    def _apply(self, instructions: list) -> None:
        if self.live:
            from handoff.node import live

            live.settle(self)
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
        if ctx.live:
            from handoff.node import live

            tasks = live.claim(self, cast(live.LiveContext, ctx), tasks)
            if not tasks:
                return
        state = self.orchestrator.run(run_id)
        location = state.location
        if ctx.record is not None:
            ctx.record.dispatched(tasks)
        if node == self.name:
            self.node.accept_task_rows(self.name, ctx.dag_id, [ctx.task(i, a, node, location) for i, a in tasks])
            return
        rows: list[TaskRow] = []
        blobs: list[list] = []
        for index, attempt in tasks:
            row, task_blobs = ctx.task(index, attempt, node, location, len(blobs))
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
            if ctx is not None and ctx.live:
                from handoff.node import live

                live.finished(self, cast(live.LiveContext, ctx), ins)
            elif ctx is not None and not ctx.future.done():
                self._resolve(ctx, ins)
        finally:
            self.orchestrator.forget(ins.run_id)

    def _resolve(self, ctx: RunContext, ins: RunFinished) -> None:
        if ctx.record is not None:
            ctx.record.end(failed=ins.error is not None)
        if ins.error is not None:
            self._fail(ctx, ins)
            return
        outcome = self.orchestrator.run(ins.run_id).outcome()
        # a run that ended without an error has a location for every function it ran
        allocations = Placements(outcome)
        self.node.store.register_locations(ctx.dag_id, allocations)
        state = self.orchestrator.run(ins.run_id)
        cached = frozenset(i for i, attempt in ctx.loaded.items() if state.attempt(i) == attempt)
        result = ExecutionResult(ctx.dag_id, Results(self.node, ctx.dag_id, allocations), allocations,
                                 StatsView(outcome, cached), ctx.record)
        ctx.future.set_result(result)

    def _fail(self, ctx: RunContext, ins: RunFinished) -> None:
        """Raise the run's error in the caller, with what was computed before it (``.result``)."""
        error = cast(HandoffError, ins.error)
        info = ins.error_info
        if isinstance(error, FunctionError) and info is not None:
            error = typed_error(error, info.exc_blob)
        try:
            state = self.orchestrator.run(ins.run_id)
            allocations, stats = state.allocations(), state.function_stats()
        except KeyError:  # ended before the scheduler made its state
            allocations, stats = {}, {}
        error.result = ExecutionResult(ctx.dag_id, Results(self.node, ctx.dag_id, allocations),
                                       allocations, stats, ctx.record)
        ctx.future.set_exception(error)

    def fail_all(self, error: HandoffError) -> None:
        for run_id in list(self.runs):
            self.cancel_run(run_id, error)
        for ctx in list(self.runs.values()):
            if not ctx.future.done():
                ctx.future.set_exception(error)
        self.runs.clear()


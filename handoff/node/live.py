"""The driver side of a live run (``handoff.Executor``): submissions in, settled futures out.

Callers' threads append submissions to ``LiveContext.pending`` and wake the loop once per
batch; on the loop, ``drain`` adds the whole batch to the run with one orchestrator call
(so many ``submit`` calls between two loop turns go out as one dispatch per node). Before a
function is sent, its future is moved to running (``claim``): a future cancelled before
that is withdrawn and never runs. Settled functions are handed, one batch per loop turn, to
the caller's ``sink`` (``handoff.executor`` completes the futures on its own thread, so no
user callback ever runs on the loop).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import CancelledError, Future
from typing import TYPE_CHECKING, Any, Callable, cast

from handoff.dag import DAG
from handoff.errors import FunctionError, HandoffError, TimeoutError
from handoff.node.runs import RunContext, typed_error
from handoff.protocol.rows import Call, Leaf, Tree, ValueRef
from handoff.scheduler import RunSpec
from handoff.scheduler.live import LiveRun, empty_graph

if TYPE_CHECKING:
    from handoff.node.runs import Runs
    from handoff.scheduler.events import ErrorInfo, RunFinished

__all__ = ["LiveContext", "Settled", "start", "drain", "cancel", "close", "claim", "settle", "finished", "release"]

log = logging.getLogger("handoff.live")

# what the sink gets per settled function: (its future, value frames when the value is on
# this node, the node holding the value, error or None)
Settled = tuple[Future, Any, Any, Any]


class LiveContext(RunContext):
    """A ``RunContext`` whose functions and payloads grow, with one future per function."""

    live = True

    def __init__(self, run_id: str, dag_id: Any, sink: Callable[[list[Settled] | None], None]) -> None:
        super().__init__(run_id, DAG(dag_id), empty_graph(), [], [], {})
        self.inputs: list[list[int]] = []  # per function: the functions whose values it takes
        self.sink = sink
        self.futures: list[Future | None] = []  # by index; None once settled
        self.started = bytearray()  # futures moved to running
        self.pending: deque = deque()  # (future, Function, deps, payload) from callers' threads
        self.posted = False  # a drain is on its way to the loop
        self.state: LiveRun | None = None
        self.timeouts: dict[int, float] = {}  # per-function timeouts, to name a timeout's error
        self.moved = threading.Condition()  # notified when a settled function's value moved
        self.prefetching = 0  # values being brought here before their futures complete
        self.ended = False
        self.release = False  # drop the values when the run ends (the executor is gone)

    @property
    def total(self) -> int:
        return len(self.functions)

    def _tree(
        self, j: int, target: str, location: Callable[[int], str | None], blobs: list,
        refs: list[ValueRef],
    ) -> Call:
        """``RunContext._tree`` for a live run: its graph grows, so its inputs are read from
        ``inputs`` (no inline functions, no argument hooks)."""
        k = len(blobs)
        blobs.append(self.payloads[j])
        children: list[Tree] = []
        ids, dag_id = self.graph.ids, self.dag.id
        for dep in self.inputs[j]:
            slot = len(blobs)
            blobs.append([])
            refs.append(ValueRef(cast(str, location(dep)), dag_id, ids[dep], -1, slot))
            children.append(Leaf(slot))
        return Call(k, "variadic", children)


def start(runs: Runs, ctx: LiveContext, options: dict) -> None:
    """On the loop: open the live run of ``ctx``."""
    if not runs.node.running:
        raise HandoffError(f"node {runs.name!r} is shutting down")
    spec = RunSpec(
        run_id=ctx.run_id, dag_id=ctx.dag_id, graph=ctx.graph, functions=[],
        strategy=options["allocation_strategy"], max_retries=options["max_retries"],
    )
    instructions = runs.orchestrator.submit_live(spec)
    run = runs.orchestrator.run(ctx.run_id)
    assert isinstance(run, LiveRun)
    ctx.state = run
    ctx.graph = run.graph  # one growing graph, shared
    ctx.functions = run.functions
    runs.runs[ctx.run_id] = ctx
    runs.live[ctx.run_id] = ctx
    runs._apply(instructions)


def drain(runs: Runs, ctx: LiveContext) -> None:
    """On the loop: add every pending submission of ``ctx`` to its run, in one call."""
    ctx.posted = False  # before taking: a submission appended from now on posts again
    pending = ctx.pending
    if not pending or ctx.run_id not in runs.runs:
        return
    functions, deps = [], []
    payloads, futures, started = ctx.payloads, ctx.futures, ctx.started
    entries = ctx.inputs
    while pending:
        fut, fn, ins, payload = pending.popleft()
        functions.append(fn)
        deps.append(ins)
        payloads.append(payload)
        futures.append(fut)
        started.append(0)
        entries.append(ins)
        if fn.timeout is not None:
            ctx.timeouts[len(futures) - 1] = fn.timeout
    runs._apply(runs.orchestrator.extend(ctx.run_id, functions, deps))


def cancel(runs: Runs, ctx: LiveContext, index: int) -> None:
    """On the loop: the caller cancelled the future of ``index`` while it was pending."""
    run = ctx.state
    if run is None or run.finished or index >= len(run.tasks) or run.is_settled(index):
        return  # not added yet (it is withdrawn when placed), or over already
    runs._apply(runs.orchestrator.settle_live(ctx.run_id, [index], CancelledError()))


def close(runs: Runs, ctx: LiveContext) -> None:
    """On the loop: no more submissions; the run ends once every function has settled."""
    drain(runs, ctx)
    if ctx.run_id in runs.runs:
        runs._apply(runs.orchestrator.close_live(ctx.run_id))


def release(runs: Runs, ctx: LiveContext) -> None:
    """On the loop: nobody can read the run's values any more (its executor is gone): close
    it, and drop its values on every node once it has ended."""
    ctx.release = True
    if ctx.ended or ctx.run_id not in runs.runs:
        runs.node.clear_everywhere(ctx.dag_id)
    else:
        close(runs, ctx)


def claim(runs: Runs, ctx: LiveContext, tasks: list) -> list:
    """The tasks of a Dispatch whose futures could be moved to running; the others were
    cancelled by their callers and are withdrawn, unsent."""
    futures, started = ctx.futures, ctx.started
    keep, withdrawn = [], []
    for task in tasks:
        i = task[0]
        if not started[i]:
            started[i] = 1
            fut = futures[i]
            if fut is not None and not fut.set_running_or_notify_cancel():
                withdrawn.append(i)
                continue
        keep.append(task)
    if withdrawn:
        runs._apply(runs.orchestrator.settle_live(ctx.run_id, withdrawn, CancelledError(), withdrawn=True))
    return keep


def settle(runs: Runs) -> None:
    """Hand what the live runs settled since the last call to their sinks."""
    for ctx in runs.live.values():
        run = ctx.state
        if run is None or not (run.settled or run.relocated):
            continue
        batch, run.settled = run.settled, []
        out: list[Settled] = []
        store, here, dag_id = runs.node.store, runs.name, ctx.dag_id
        ids, tasks, futures = run.graph.ids, run.tasks, ctx.futures
        faithful: dict[int, BaseException] = {}  # one caller-side error per distinct error
        for i, error, info in batch:
            fut = futures[i]
            if fut is None:
                continue
            futures[i] = None
            if error is None:
                node = tasks[i].location
                if node == here:
                    out.append((fut, store.get(dag_id, ids[i]), node, None))
                elif fut._done_callbacks:
                    _prefetch(runs, ctx, fut, node, ids[i])
                else:
                    out.append((fut, None, node, None))
            else:
                exc = faithful.get(id(error))
                if exc is None:
                    exc = faithful[id(error)] = _caller_error(ctx, error, info)
                out.append((fut, None, None, exc))
        _deliver(ctx, out)
        if run.relocated:
            run.relocated = False
            with ctx.moved:
                ctx.moved.notify_all()


def _prefetch(runs: Runs, ctx: LiveContext, fut: Future, node: Any, key: Any) -> None:
    """Bring a value from ``node`` before its future completes: the future has callbacks
    (``asyncio.wrap_future`` reads the value on an event loop, which must not wait). If it
    cannot be had, the future completes without it and ``result()`` finds it later."""

    def arrived(frames: list | None, error: str | None) -> None:
        ctx.prefetching -= 1
        _deliver(ctx, [(fut, frames, node, None)])
        if ctx.ended and not ctx.prefetching:
            ctx.sink(None)

    ctx.prefetching += 1
    runs.node.fetching.fetch_value(node, ctx.dag_id, key, None, arrived)


def finished(runs: Runs, ctx: LiveContext, ins: RunFinished) -> None:
    """The live run ended: futures still open get the run's error (a cancel, a shutdown)."""
    settle(runs)
    runs.live.pop(ctx.run_id, None)
    error: BaseException = ins.error if ins.error is not None else HandoffError(
        f"the run of executor {ctx.dag_id!r} ended"
    )
    ctx.ended = True
    out: list[Settled] = [(fut, None, None, error) for fut in ctx.futures if fut is not None]
    ctx.futures = []
    while ctx.pending:  # submitted while the run ended: never added
        out.append((ctx.pending.popleft()[0], None, None, error))
    _deliver(ctx, out)
    if not ctx.prefetching:
        ctx.sink(None)  # the last batch
    with ctx.moved:
        ctx.moved.notify_all()
    ctx.future.set_result(None)
    if ctx.release:
        runs.node.clear_everywhere(ctx.dag_id)


def _deliver(ctx: LiveContext, out: list[Settled] | None) -> None:
    if not out:
        return
    try:
        ctx.sink(out)
    except Exception:
        log.exception("executor %r: could not hand over %d results", ctx.dag_id, len(out))


def _caller_error(ctx: LiveContext, error: BaseException, info: ErrorInfo | None) -> BaseException:
    """What ``future.result()`` raises: a timed-out function's ``handoff.TimeoutError``,
    otherwise the error of the remote exception's own type (``runs.typed_error``)."""
    if not isinstance(error, FunctionError):
        return error
    if info is not None:
        error = typed_error(error, info.exc_blob)
    if error.exc_type == "TimeoutError":
        index = ctx.state.graph.index.get(error.function_id) if ctx.state is not None else None
        seconds = ctx.timeouts.get(index) if index is not None else None
        if seconds is not None:
            timeout = TimeoutError(f"function {error.function_id!r}", seconds)
            timeout.__cause__ = error
            return timeout
    return error

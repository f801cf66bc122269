"""``handoff.Executor``: the ``concurrent.futures`` interface over one live run.

Every ``submit`` adds a function to the executor's live run (``handoff.scheduler.live``):
it is placed, retried and recovered after a node loss like any function of a DAG, and its
value stays on the node that produced it. A future passed as an argument (also inside a
list, tuple or dict) makes the new function depend on it; its value goes from node to node.
``future.result()`` reads a value held on another node only when called.
"""

from __future__ import annotations

import itertools
import logging
import pickle
import queue
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures as cf
from functools import partial
from typing import Any

from handoff import api
from handoff.dag import retries_problem, timeout_problem
from handoff.decorator import Slot, fill_slots
from handoff.errors import HandoffError, ResultNotFound
from handoff.node import live
from handoff.node.data.values import dumps_args, dumps_payload, loads_value
from handoff.scheduler.live import LiveFunction
from handoff.scheduler.tasks import TaskStatus

__all__ = ["Executor", "ExecutorFuture"]

log = logging.getLogger("handoff.executor")

_OPTIONS = ("cost", "node", "max_retries", "timeout")
_CONTAINERS = (list, tuple, dict)
_SCALARS = frozenset({int, float, complex, str, bytes, bool, type(None)})
_GONE = (TaskStatus.FAILED, TaskStatus.CANCELLED)  # a lost value that will not come back


class _Lazy:
    """A future's result until ``result()`` reads it: the value's frames when they are on
    this node (unpickled by the reader, not the node's loop), None when on another node."""

    __slots__ = ("frames",)

    def __init__(self, frames: list | None) -> None:
        self.frames = frames


class ExecutorFuture(cf.Future):
    """A ``concurrent.futures.Future`` of one submitted call.

    ``cancel()`` succeeds only while the call is pending (not yet sent to a node); a
    cancelled call never runs. A value held on another node is fetched by the first
    ``result()`` that asks for it (or before callbacks run, when some are registered).
    """

    def __init__(self, core: _Core, index: int, function_id: str) -> None:
        super().__init__()
        self._core = core
        self._index = index
        self.function_id = function_id  # its value's key: handoff.get_value(ex.dag_id, it)

    def __repr__(self) -> str:
        return super().__repr__().replace("<Future", f"<ExecutorFuture {self.function_id}", 1)

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        core = self._core
        core.node.post(live.cancel, core.runs, core.ctx, self._index)
        return True

    def result(self, timeout: float | None = None) -> Any:
        value = super().result(timeout)
        if type(value) is _Lazy:
            value = self._core.read(self)
        return value

    def add_done_callback(self, fn: Callable[[cf.Future], object]) -> None:
        """As ``Future.add_done_callback``; a callback never runs on the node's loop: one
        due there runs on the executor's callback thread."""
        super().add_done_callback(partial(self._core.callback, fn))


class _Bound:
    """Calls ``fn`` with the values of the futures it was given put back in their places.

    Run on the worker as ``_Bound(fn)(v0, ..., vN, args, kwargs)``: ``v`` are the inputs'
    values in dependency order, ``args`` and ``kwargs`` hold a ``Slot`` for each."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable) -> None:
        self.fn = fn

    def __reduce__(self) -> tuple:
        return (_Bound, (self.fn,))

    def __call__(self, *values: Any) -> Any:
        args, kwargs = values[-2], values[-1]
        inputs = values[:-2]
        return self.fn(*fill_slots(args, inputs), **fill_slots(kwargs, inputs))


def _process_chunk(fn: Callable, chunk: list[tuple]) -> list:
    """One task of ``map`` with a chunksize: ``fn`` over a chunk of argument tuples."""
    return [fn(*args) for args in chunk]


class _Chunk(list):
    """A chunk of ``map``'s argument tuples that holds only plain values (no futures, no
    code): shipped as a plain list with plain pickle, not scanned for futures."""


def _chunks(items: Iterator[tuple], size: int) -> Iterator[list[tuple]]:
    while True:
        chunk = list(itertools.islice(items, size))
        if not chunk:
            return
        if _SCALARS.issuperset(map(type, itertools.chain.from_iterable(chunk))):
            yield _Chunk(chunk)
        else:
            yield chunk


def _unbound(args: tuple) -> bool:
    """No future among ``args`` (and no container that could hold one)."""
    for a in args:
        if type(a) in _CONTAINERS or isinstance(a, cf.Future):
            return False
    return True


def _check_call_options(options: dict) -> dict:
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(_OPTIONS)}")
    out = {k: v for k, v in options.items() if v is not None}
    if "max_retries" in out:
        problem = retries_problem(out["max_retries"])
        if problem:
            raise ValueError(problem)
    if "timeout" in out:
        problem = timeout_problem(out["timeout"])
        if problem:
            raise ValueError(problem)
        out["timeout"] = float(out["timeout"])
    cost = out.get("cost")
    if cost is not None:
        if not isinstance(cost, dict) or any(
            not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 for v in cost.values()
        ):
            raise ValueError(f"cost must be a dict of non-negative numbers, got {cost!r}")
        out["cost"] = dict(cost)
    node = out.get("node")
    if node is not None and not isinstance(node, str):
        raise ValueError(f"node must be a node name, got {node!r}")
    return out


class _Core:
    """What an executor and its option views share: the live run and its bookkeeping."""

    def __init__(self, max_retries: int, allocation_strategy: str, timeout: float | None) -> None:
        self.node = api.current_node()
        self.runs = self.node.runs
        self.lock = threading.Lock()
        self.count = itertools.count()
        self.code: dict[int, tuple[Any, bytes, str]] = {}  # id(fn) -> (fn, frame, name)
        self.bound: dict[int, _Bound] = {}  # id(fn) -> its _Bound
        self.shut = False
        self.default_timeout = timeout
        self.dag_id = f"executor-{uuid.uuid4().hex[:12]}"
        self.callbacks: queue.SimpleQueue = queue.SimpleQueue()
        self.ctx = live.LiveContext(uuid.uuid4().hex, self.dag_id, _sink(weakref.ref(self), self.callbacks))
        options = {"max_retries": max_retries, "allocation_strategy": allocation_strategy}
        self.node.call(live.start, self.runs, self.ctx, options).result()
        self.loop_thread = self.node._thread
        self.completer = threading.Thread(
            target=_run_callbacks, args=(self.callbacks,),
            name=f"handoff-executor-{self.dag_id}", daemon=True,
        )
        self.completer.start()
        weakref.finalize(self, _release, self.node, self.runs, self.ctx)

    def frame(self, fn: Any, cache: bool = True) -> tuple[bytes, str]:
        """The pickled code of ``fn`` (once per distinct function object, unless not
        ``cache``: a one-off callable such as a joblib batch) and its name."""
        found = self.code.get(id(fn)) if cache else None
        if found is None:
            name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
            found = (fn, dumps_payload(fn), str(name))
            if cache:
                self.code[id(fn)] = found
        return found[1], found[2]

    def submit(
        self, options: dict, fn: Callable, args: tuple, kwargs: dict, cache: bool = True
    ) -> ExecutorFuture:
        if not callable(fn):
            raise TypeError(f"submit() needs a callable, got {type(fn).__name__}")
        deps: list[int] = []
        if not kwargs and _SCALARS.issuperset(map(type, args)):  # the common case, first
            frame, name = self.frame(fn, cache)
            payload = [frame, pickle.dumps(list(args), protocol=5)] if args else [frame]
        elif args and type(args[0]) is _Chunk:  # map's chunk of plain argument tuples
            frame, name = self.frame(fn)
            payload = [frame, pickle.dumps([list(args[0])], protocol=5)]
        elif kwargs or not _unbound(args):
            found: dict[int, int] = {}
            targs = _template(self, args, found)
            tkwargs = _template(self, kwargs, found)
            deps = list(found)
            if deps:
                frame, name = self.frame(_bound(self, fn))
                payload = [frame, dumps_args([targs, tkwargs])]
            else:
                frame, name = self.frame(fn if not kwargs else _bound(self, fn))
                extra = list(args) if not kwargs else [targs, tkwargs]
                payload = [frame, dumps_args(extra)] if extra else [frame]
        else:
            frame, name = self.frame(fn, cache)
            payload = [frame, dumps_args(args)]
        ctx = self.ctx
        with self.lock:
            if self.shut:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if ctx.ended or not self.node.running:
                raise HandoffError(f"executor {self.dag_id} cannot take calls: its node stopped")
            i = next(self.count)
            fid = f"{name}-{i}"
            fut = ExecutorFuture(self, i, fid)
            function = LiveFunction(
                fid, options.get("cost"), options.get("node"),
                options.get("max_retries"), options.get("timeout", self.default_timeout),
            )
            ctx.pending.append((fut, function, deps, payload))
        if not ctx.posted:
            ctx.posted = True
            self.node.post(live.drain, self.runs, ctx)
        return fut

    def complete(self, batch: list | None) -> None:
        """On the node's loop: complete settled futures (``node.live.settle``); None: the
        run is over, the callback thread may stop."""
        if batch is None:
            self.callbacks.put(None)
            return
        for fut, frames, _holder, error in batch:
            try:
                if error is not None:
                    fut.set_exception(error)
                else:
                    fut.set_result(_Lazy(frames))
            except cf.InvalidStateError:  # cancelled meanwhile
                pass

    def callback(self, fn: Callable[[cf.Future], object], fut: cf.Future) -> None:
        if threading.current_thread() is self.loop_thread:
            self.callbacks.put((fn, fut))
        else:
            fn(fut)

    def read(self, fut: ExecutorFuture) -> Any:
        """The value of a settled call, unpickled here; fetched first if it is on another
        node (once: it is kept)."""
        lazy = fut._result  # two readers may both unpickle: equal values, the last one kept
        if type(lazy) is not _Lazy:
            return lazy
        frames = lazy.frames if lazy.frames is not None else self._fetch(fut._index)
        value = fut._result = loads_value(frames)
        return value

    def _fetch(self, i: int) -> list:
        state = self.ctx.state
        assert state is not None
        fid = state.graph.ids[i]
        deadline = time.monotonic() + 60.0
        while True:
            node = state.tasks[i].location
            if node is not None:
                try:
                    return self.node.fetch_frames(node, self.dag_id, fid)
                except ResultNotFound:
                    pass
            # its node was lost: the run computes it again; wait until it has moved
            moved = self.ctx.moved
            with moved:
                task = state.tasks[i]
                if not moved.wait_for(
                    lambda: task.location not in (None, node) or state.finished or task.status in _GONE,
                    timeout=max(0.0, deadline - time.monotonic()),
                ) or task.location in (None, node):
                    raise ResultNotFound(self.dag_id, fid, node)

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        with self.lock:
            first = not self.shut
            self.shut = True
        if cancel_futures:
            for fut in _snapshot(self.ctx.futures) + [p[0] for p in _snapshot(self.ctx.pending)]:
                if fut is not None:
                    fut.cancel()
        if first:
            self.node.post(live.close, self.runs, self.ctx)
        if wait:
            self.ctx.future.result()
            if threading.current_thread() is not self.completer:  # a callback may shut down
                self.completer.join()


def _snapshot(items: Any) -> list:
    """A copy of a list or deque the loop may be changing meanwhile."""
    while True:
        try:
            return list(items)
        except RuntimeError:  # a deque changed during the copy
            continue


def _bound(core: _Core, fn: Callable) -> _Bound:
    """One ``_Bound`` per function object, so its code is pickled once."""
    found = core.bound.get(id(fn))
    if found is None:
        found = core.bound[id(fn)] = _Bound(fn)
    return found


def _template(core: _Core, obj: Any, found: dict[int, int]) -> Any:
    """``obj`` with each future of this executor replaced by a ``Slot`` (``found``: index of
    the future's function -> its slot)."""
    t = type(obj)
    if isinstance(obj, cf.Future):
        if not isinstance(obj, ExecutorFuture) or obj._core is not core:
            raise TypeError("a future passed as an argument must come from the same handoff.Executor")
        k = found.get(obj._index)
        if k is None:
            k = found[obj._index] = len(found)
        return Slot(k)
    if t is list:
        return [_template(core, x, found) for x in obj]
    if t is tuple:
        return tuple(_template(core, x, found) for x in obj)
    if t is dict:
        return {k: _template(core, v, found) for k, v in obj.items()}
    return obj


def _run_callbacks(callbacks: queue.SimpleQueue) -> None:
    """The executor's callback thread: runs the done-callbacks that became due on the
    node's loop (a slow or blocking callback must not stall the node)."""
    while True:
        item = callbacks.get()
        if item is None:
            return
        fn, fut = item
        try:
            fn(fut)
        except Exception:
            log.exception("exception calling callback for %r", fut)


def _sink(ref: weakref.ref, callbacks: queue.SimpleQueue) -> Callable[[list | None], None]:
    """What the node's loop hands settled calls to: the executor's ``complete``, reached
    through a weak reference (the node must not keep a forgotten executor alive)."""

    def sink(batch: list | None) -> None:
        core = ref()
        if core is not None:
            core.complete(batch)
        elif batch is None:
            callbacks.put(None)

    return sink


def _release(node: Any, runs: Any, ctx: live.LiveContext) -> None:
    """The executor is gone (garbage-collected): end its run once its calls have settled,
    then drop its values on every node."""
    if node.running:
        node.post(live.release, runs, ctx)


class Executor(cf.Executor):
    """A ``concurrent.futures.Executor`` that runs calls on the Handoff cluster.

    Parameters
    ----------
    max_retries:
        Retries of a call that raises (a node loss does not use them up).
    allocation_strategy:
        ``"first_available"``, ``"load_balanced"`` or ``"cost_optimized"``.
    timeout:
        Default seconds per attempt of each call (``options(timeout=...)`` overrides it);
        a call that runs out of them fails with ``handoff.TimeoutError``.
    """

    def __init__(
        self, max_retries: int = 3, allocation_strategy: str = "first_available",
        timeout: float | None = None,
    ) -> None:
        from handoff._core import STRATEGIES

        if allocation_strategy not in STRATEGIES:
            raise ValueError(
                f"unknown allocation_strategy {allocation_strategy!r}; valid: {', '.join(STRATEGIES)}"
            )
        problem = retries_problem(max_retries) or (timeout is not None and timeout_problem(timeout))
        if problem:
            raise ValueError(problem)
        self._core = _Core(int(max_retries), allocation_strategy, None if timeout is None else float(timeout))
        self._options: dict = {}

    def __repr__(self) -> str:
        state = "shut down" if self._core.shut else "running"
        return f"<handoff.Executor {self._core.dag_id} {state}>"

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> ExecutorFuture:
        """Schedule ``fn(*args, **kwargs)``; futures among the arguments are its inputs."""
        return self._core.submit(self._options, fn, args, kwargs)

    def map(
        self, fn: Callable, *iterables: Iterable, timeout: float | None = None, chunksize: int = 1
    ) -> Iterator:
        """``map(fn, *iterables)`` on the cluster, results in order; ``chunksize`` calls per
        task. As with the standard executors, the iterables are read at once and results are
        yielded as they come; ``timeout`` counts from this call."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        results = super().map(
            partial(_process_chunk, fn), _chunks(zip(*iterables), chunksize), timeout=timeout
        )
        return _chain(results)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new submissions; ``cancel_futures`` cancels the pending ones; ``wait`` waits
        until every submitted call has settled."""
        self._core.shutdown(wait, cancel_futures)

    def options(self, **options: Any) -> Executor:
        """A view of this executor that submits with ``cost``, ``node``, ``max_retries`` and
        ``timeout`` (None leaves one as it is)."""
        checked = _check_call_options(options)
        view = object.__new__(type(self))
        view._core = self._core
        view._options = {**self._options, **checked}
        return view

    @property
    def dag_id(self) -> str:
        """The id under which the executor's values are stored on the nodes."""
        return self._core.dag_id


def _chain(results: Iterator[list]) -> Iterator:
    for chunk in results:
        yield from chunk

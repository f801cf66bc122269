"""``handoff.stream``: a DAG as a long-lived pipeline, bounded, ordered and fault tolerant.

The ``Pipeline`` lives in the caller's thread: it pickles pushed values, blocks ``push`` at
``max_pending`` items in flight, and yields results in push order from a reorder buffer that
the coordinator (on the node's loop) fills. Values are unpickled here, never on the loop.
"""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any, Hashable, Iterable, Iterator

from handoff.errors import HandoffError, ItemError
from handoff.errors import TimeoutError as HandoffTimeout
from handoff.node.data.values import dumps_value, loads_value
from handoff.stream.spec import PipelineSpec, build_spec, check_options

if TYPE_CHECKING:
    from handoff.node.server import Node
    from handoff.node.streams.coordinator import Coordinator

__all__ = ["Pipeline", "PipelineState", "stream"]

OPEN_TIMEOUT = 120.0  # seconds for every replica to start and run init


class PipelineState:
    """What the coordinator (loop thread) and the pipeline (caller's thread) share: the reorder
    buffer, the counts, and the end."""

    def __init__(self, max_pending: int):
        self.cond = threading.Condition()
        self.max_pending = max_pending
        self.done: dict[int, Any] = {}  # settled, not yet yielded: frames by sink, or ItemError
        self.pushed = 0
        self.yielded = 0
        self.completed = 0
        self.finished = False  # stopped: no more results will come
        self.error: HandoffError | None = None

    def deliver(self, seq: int, result: Any) -> None:
        with self.cond:
            self.done[seq] = result
            self.completed += 1
            if seq == self.yielded:
                self.cond.notify_all()

    def fail(self, error: HandoffError) -> None:
        with self.cond:
            if self.error is None:
                self.error = error
            self.cond.notify_all()

    def finish(self) -> None:
        with self.cond:
            self.finished = True
            self.cond.notify_all()


def stream(dag: Any, *, max_pending: int = 1000, item_timeout: float | None = None, errors: str = "yield",
           allocation_strategy: str = "first_available", max_retries: int = 3) -> Pipeline:
    """Open ``dag`` as a pipeline; returns once every replica has run its ``init``.

    Parameters
    ----------
    max_pending:
        Items in flight (pushed and not yet yielded by ``results()``) at most; ``push`` blocks
        beyond it.
    item_timeout:
        Seconds from ``push``: an item with no output by then becomes an ``ItemError``
        (``exc_type="TimeoutError"``) and a replica stuck on it is replaced.
    errors:
        ``"yield"``: a failed item's ``ItemError`` is yielded in its place; ``"raise"``:
        ``results()`` raises it.
    allocation_strategy:
        How replicas with a ``cost`` are spread: ``"first_available"``, ``"load_balanced"``
        or ``"cost_optimized"``.
    max_retries:
        Times an item is run again after the worker process running it died.

    Raises a ValidationError for a DAG that is not a pipeline, ``AllocationError`` when a
    replica's cost fits no node, ``FunctionError`` when an ``init`` raises, ValueError for a
    bad option.
    """
    from handoff.api import current_node

    check_options(max_pending, item_timeout, errors, allocation_strategy, max_retries)
    spec = build_spec(dag)
    options = {"max_pending": int(max_pending), "item_timeout": None if item_timeout is None else float(item_timeout),
               "allocation_strategy": allocation_strategy, "max_retries": int(max_retries)}
    return Pipeline(current_node(), spec, options, errors)


class Pipeline:
    """A running pipeline; a context manager that stops it on exit."""

    def __init__(self, node: Node, spec: PipelineSpec, options: dict, errors: str):
        from handoff.node.streams.coordinator import Coordinator

        self._node = node
        self._spec = spec
        self._errors = errors
        self._state = state = PipelineState(options["max_pending"])
        self._coordinator: Coordinator = Coordinator(node.streams, spec, options, state)
        self.id = self._coordinator.id
        self._seq = itertools.count()
        self._closed = False
        self._stopped = False
        self._inbox: deque = deque()  # pushed items the loop has not taken yet
        self._inbox_lock = threading.Lock()
        self._drain_posted = False
        self._single_input = len(spec.inputs) == 1
        self._single_sink = len(spec.sinks) == 1
        node.call(node.streams.coordinate, self._coordinator).result()
        try:
            self._coordinator.opened.result(OPEN_TIMEOUT)
        except BaseException as exc:
            self.stop()
            if isinstance(exc, TimeoutError) and not isinstance(exc, HandoffError):
                raise HandoffTimeout("starting the pipeline's replicas", OPEN_TIMEOUT) from None
            raise
        # a pipeline dropped without stop() must not keep replicas and claims
        self._finalizer = weakref.finalize(self, _stop_on_loop, node, self.id)

    # ---- context manager ----------------------------------------------------------------------
    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        s = self._state
        return f"<Pipeline {self.id[:8]} pushed={s.pushed} completed={s.completed} in_flight={s.pushed - s.yielded}>"

    # ---- input --------------------------------------------------------------------------------
    def push(self, value: Any, timeout: float | None = None) -> int:
        """Feed one item; returns its sequence number (0, 1, 2, ... in call order). Blocks while
        ``max_pending`` items are in flight; raises ``handoff.TimeoutError`` after ``timeout``."""
        if self._closed:
            raise HandoffError("push() after close(): the pipeline takes no more input")
        state = self._state
        if timeout is not None and timeout <= 0 and state.pushed - state.yielded >= state.max_pending:
            raise HandoffTimeout(f"push (max_pending={state.max_pending} items in flight)", timeout)
        frames = self._frames(value)
        with state.cond:
            if state.pushed - state.yielded >= state.max_pending:
                deadline = None if timeout is None else time.monotonic() + timeout
                while state.pushed - state.yielded >= state.max_pending:
                    self._check_alive()
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise HandoffTimeout(f"push (max_pending={state.max_pending} items in flight)", timeout)
                    state.cond.wait(left)
            self._check_alive()
            seq = next(self._seq)
            state.pushed += 1
        with self._inbox_lock:
            self._inbox.append((seq, frames))
            post = not self._drain_posted
            self._drain_posted = True
        if post:
            self._node.post(self._drain)
        return seq

    def _frames(self, value: Any) -> list:
        if self._single_input:
            return [dumps_value(value)]
        ids = self._spec.input_ids
        if not isinstance(value, dict):
            raise ValueError(f"this pipeline has {len(ids)} inputs ({', '.join(map(repr, ids))}): "
                             "push a dict with one value per input")
        unknown = [k for k in value if k not in ids]
        missing = [k for k in ids if k not in value]
        if unknown or missing:
            raise ValueError(f"push() needs exactly the inputs {ids!r}; missing {missing!r}, unknown {unknown!r}")
        return [dumps_value(value[k]) for k in ids]

    def _drain(self) -> None:
        """On the loop: hand every pushed item to the coordinator, in order."""
        with self._inbox_lock:
            items = list(self._inbox)
            self._inbox.clear()
            self._drain_posted = False
        self._coordinator.push(items)

    def _check_alive(self) -> None:
        state = self._state
        if state.error is not None:
            raise state.error
        if state.finished or self._stopped:
            raise HandoffError("the pipeline is stopped")

    def close(self) -> None:
        """No more input: ``results()`` ends after the last pushed item; partial batches run."""
        if self._closed:
            return
        self._closed = True
        if not self._stopped:
            self._node.post(self._close_on_loop)

    def _close_on_loop(self) -> None:
        if self._drain_posted or self._inbox:
            self._drain()
        self._coordinator.close()

    # ---- output -------------------------------------------------------------------------------
    def results(self, timeout: float | None = None) -> Iterator[Any]:
        """Outputs in push order: the sink's value (``{sink_id: value}`` with several sinks), or
        an ``ItemError``. Ends after the last item once ``close()`` was called. ``timeout``
        bounds each wait for the next item (``handoff.TimeoutError``)."""
        while True:
            found, result = self._next(timeout)
            if not found:
                return
            yield self._value(result)

    def _next(self, timeout: float | None) -> tuple[bool, Any]:
        state = self._state
        deadline = None if timeout is None else time.monotonic() + timeout
        with state.cond:
            while True:
                seq = state.yielded
                if seq in state.done:
                    result = state.done.pop(seq)
                    state.yielded += 1
                    state.cond.notify_all()  # a push may be waiting for room
                    return True, result
                if state.error is not None:
                    raise state.error
                if state.finished or (self._closed and seq >= state.pushed):
                    return False, None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise HandoffTimeout(f"waiting for item {seq}", timeout)
                state.cond.wait(left)

    def _value(self, result: Any) -> Any:
        if isinstance(result, ItemError):
            if self._errors == "raise":
                raise result
            return result
        if self._single_sink:
            (frames,) = result.values()
            return loads_value(frames)
        ids = self._spec.function_ids
        return {ids[stage]: loads_value(result[stage]) for stage in self._spec.sinks}

    def map(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """Push every value of ``iterable`` and yield the outputs in order, with at most
        ``max_pending`` in flight; closes the pipeline at the end and stops it when the
        generator ends (exhausted, closed or collected)."""
        state = self._state
        source = iter(iterable)
        exhausted = False
        try:
            while True:
                while not exhausted and state.pushed - state.yielded < state.max_pending:
                    try:
                        value = next(source)
                    except StopIteration:
                        exhausted = True
                        self.close()
                        break
                    self.push(value)
                if exhausted and state.yielded >= state.pushed:
                    return
                found, result = self._next(None)
                if not found:
                    return
                yield self._value(result)
        finally:
            self.stop()

    # ---- state and teardown ---------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """``{"pushed", "completed", "in_flight", "functions": {fid: {"items", "items_per_s",
        "replicas"}}}``."""
        state = self._state
        with state.cond:
            out: dict[str, Any] = {"pushed": state.pushed, "completed": state.completed,
                                   "in_flight": state.pushed - state.yielded}
        try:
            detail = self._node.call(self._coordinator.stats).result(10)
        except Exception:
            detail = {"functions": {}}
        out["functions"] = detail["functions"]
        return out

    def stop(self) -> None:
        """End every replica and release every claim (waits for the loop to send the orders)."""
        if self._stopped:
            return
        self._stopped = True
        self._closed = True
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer.detach()
        try:
            self._node.call(self._node.streams.stop_coordinated, self.id).result(10)
        except Exception:
            pass  # the node is stopping: it ends its pipelines itself
        self._state.finish()


def _stop_on_loop(node: Node, stream_id: str) -> None:
    node.post(node.streams.stop_coordinated, stream_id)

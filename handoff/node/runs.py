"""The orchestrating node's view of one run: payloads, argument trees, and the result.

Built in the caller's thread (pickling the functions there, so an unpicklable function
fails before the run starts), then owned by the event loop.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterator

from handoff.dag import DAG, Argument, CompiledGraph, Function
from handoff.errors import HandoffError, ResultNotFound
from handoff.node.data.values import dumps_args, dumps_payload, loads_value

__all__ = ["RunContext", "ExecutionResult", "Results", "prepare_run"]


class PayloadPickler:
    """Payload blobs for one run: each distinct code object is pickled once (by identity),
    each function's extra arguments on their own (see ``values.dumps_payload``)."""

    def __init__(self) -> None:
        self._code: dict[int, tuple[Any, bytes]] = {}  # id(code) -> (code kept alive, frame)

    def blob(self, code: Any, extra: Any) -> list:
        found = self._code.get(id(code))
        if found is None:
            found = self._code[id(code)] = (code, dumps_payload(code))
        return [found[1], dumps_args(extra)] if extra else [found[1]]

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
    deps: list[list[tuple[int, int, bool]]]  # per function: (position, dependency, inline?)
    future: Future = field(default_factory=Future)
    progress: Callable[[int, int], None] | None = None
    done_count: int = 0

    @property
    def total(self) -> int:
        """Functions that produce a result (inline ones don't)."""
        return len(self.graph.ids) - int(self.graph.inline.sum())

    @property
    def dag_id(self) -> Any:
        return self.dag.id

    def task(self, index: int, attempt: int, target: str, location: Callable[[int], str]) -> tuple:
        """(row, blobs) for a Dispatch message: the argument tree of ``index`` as run on
        ``target``, with a value slot (an empty blob) for each result to fetch."""
        blobs: list = []
        refs: list = []
        tree = self._tree(index, target, location, blobs, refs)
        fn = self.functions[index]
        row = [self.run_id, index, attempt, fn.id, dict(fn.cost) if fn.cost else None,
               fn.timeout, tree, refs]
        return row, blobs

    def _tree(self, j: int, target: str, location, blobs: list, refs: list) -> list:
        fn = self.functions[j]
        k = len(blobs)
        blobs.append(self.payloads[j])
        children = []
        for pos, dep, inline in self.deps[j]:
            if inline:
                children.append(self._tree(dep, target, location, blobs, refs))
                continue
            source = location(dep)
            slot = len(blobs)
            blobs.append([])
            leaf: list = ["v", slot]
            hook_pos = -1
            hooks = self.hooks.get((j, pos))
            if hooks is not None:
                ser, deser, always = hooks
                if always or source != target:
                    if ser is not None:
                        hook_pos = len(blobs)
                        blobs.append(ser)
                    if deser is not None:
                        leaf = ["h", len(blobs), source, target, leaf]
                        blobs.append(deser)
            refs.append([source, self.dag.id, self.graph.ids[dep], hook_pos, slot])
            children.append(leaf)
        return ["c", k, fn.argument_inclusion, children]


def prepare_run(dag: DAG, progress: Callable | None = None) -> RunContext:
    """Validate ``dag`` and pickle every code object and every function's extra arguments
    once; raises before anything is sent."""
    from handoff.errors import InvalidFunctionError

    graph = dag.compile()
    functions = [dag.functions[i] for i in graph.ids]
    payloads: list[list] = []
    hooks: dict = {}
    pickler = PayloadPickler()
    for j, fn in enumerate(functions):
        try:
            payloads.append(pickler.blob(fn.code, fn.extra_args))
        except Exception as exc:
            raise InvalidFunctionError(
                fn.id, f"its code or extra_args cannot be pickled for shipping: {type(exc).__name__}: {exc}"
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
    index, inline = graph.index, graph.inline.tolist()
    deps = []
    for fn in functions:  # resolved here, in the caller's thread, not per task in the loop
        ids = [index[arg.id if isinstance(arg, Argument) else arg] for arg in fn.args]
        deps.append([(pos, dep, inline[dep]) for pos, dep in enumerate(ids)])
    return RunContext(uuid.uuid4().hex, dag, graph, functions, payloads, hooks, deps, progress=progress)


class Results(Mapping):
    """Read-only mapping of function id to value; a remote value is fetched on first access."""

    def __init__(self, node, dag_id: Any, locations: dict[Hashable, str]):
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
    dag_id: Any
    results: Results
    allocations: dict
    stats: dict

    def __repr__(self) -> str:
        return f"ExecutionResult(dag_id={self.dag_id!r}, {len(self.results)} results)"


def chain_error(error: HandoffError, exc_blob: list | None) -> HandoffError:
    """Attach the original exception as ``__cause__`` when it unpickles here."""
    if exc_blob:
        try:
            original = loads_value(exc_blob)
            if isinstance(original, BaseException):
                error.__cause__ = original
        except Exception:
            pass
    return error

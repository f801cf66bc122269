"""The DAG model: Function, Argument, Collocated, DAG and its validation."""

from __future__ import annotations

import math
import uuid
from array import array
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any, Callable, Hashable, Iterator, Mapping, Sequence

import numpy as np

from handoff.errors import (
    CycleError,
    DuplicateFunctionError,
    InvalidFunctionError,
    MissingFunctionError,
)

__all__ = ["Function", "Argument", "Collocated", "DAG", "new", "CompiledGraph"]

TYPES = ("regular", "inline", "input")
MAX_PARALLELISM = 1000
MAX_BATCH = 1_000_000
MAX_TIMEOUT = 30 * 24 * 3600.0  # seconds: any longer is a typo, and inf/1e300 overflow deadlines
MAX_RETRIES = 1000
INCLUSIONS = ("variadic", "as_list")

Hook = Callable[..., Any] | tuple  # a callable or (callable, [extra, ...])


@dataclass(frozen=True)
class Collocated:
    """Place a function on the same node as another function."""

    function_id: Hashable


@dataclass(frozen=True)
class Argument:
    """A dependency with hooks that run when the value crosses nodes.

    ``serialization_fn(value, source_node, target_node, *extra)`` runs on the producer's
    node, ``deserialization_fn(data, source_node, target_node, *extra)`` on the consumer's.
    Both are skipped when producer and consumer share a node, unless ``always`` is true.
    """

    id: Hashable
    serialization_fn: Hook | None = None
    deserialization_fn: Hook | None = None
    always: bool = False


@dataclass(kw_only=True, eq=False)
class Function:
    """One node of the DAG: ``code`` applied to the results of ``args`` and then ``extra_args``."""

    id: Hashable
    code: Callable[..., Any] | None = None  # required except for type="input"
    args: Sequence[Hashable | Argument] = field(default_factory=list)
    extra_args: Sequence[Any] = field(default_factory=list)
    argument_inclusion: str = "variadic"
    cost: Mapping[str, float] | None = None
    node: str | Collocated | None = None
    type: str = "regular"
    max_retries: int | None = None
    timeout: float | None = None
    group: str | None = None
    cache: bool = False
    # streaming (handoff.stream); execute() refuses a DAG that sets them
    init: Callable[[], Any] | None = None
    parallelism: int = 1
    batch_size: int | None = None
    batch_timeout: float | None = None

    @property
    def group_name(self) -> str:
        """The group progress, pictures and reports count it in: ``group``, else the code's
        qualified name (``"input"`` for a stream's input, which has no code)."""
        if self.group is not None:
            return self.group
        return "input" if self.code is None else code_group(self.code)

    @property
    def dependency_ids(self) -> list[Hashable]:
        return [a.id if isinstance(a, Argument) else a for a in self.args]

    @property
    def is_inline(self) -> bool:
        return self.type == "inline"

    @property
    def is_input(self) -> bool:
        return self.type == "input"

    @property
    def streams_only(self) -> bool:
        """Uses a field that only ``handoff.stream`` gives a meaning to."""
        return self.is_input or self.init is not None or self.batch_size is not None


def code_group(code: Any) -> str:
    """A callable's qualified name (a partial's function's; a callable object's class's)."""
    while hasattr(code, "func") and not hasattr(code, "__qualname__"):
        code = code.func  # functools.partial and its kin
    name = getattr(code, "__qualname__", None)
    return name if isinstance(name, str) else type(code).__qualname__


def new(id: Hashable | None = None) -> "DAG":
    """A new, empty DAG (``handoff.new()`` mirrors ``Handoff.new/0``)."""
    return DAG(id)


def _check_function(fn: Function) -> None:
    """Rules that need only the function itself; raised by add_function."""
    fid = fn.id
    if fn.type not in TYPES:
        raise InvalidFunctionError(fid, f"unknown type {fn.type!r}; valid: {', '.join(TYPES)}")
    if fn.is_input:
        _check_input(fn)
        return
    if not callable(fn.code):
        raise InvalidFunctionError(fid, f"code must be callable, got {type(fn.code).__name__}")
    _check_streaming(fn)
    if fn.argument_inclusion not in INCLUSIONS:
        raise InvalidFunctionError(
            fid,
            f"unknown argument_inclusion {fn.argument_inclusion!r}; valid: {', '.join(INCLUSIONS)}",
        )
    if isinstance(fn.args, (str, bytes)) or not isinstance(fn.args, Sequence):
        raise InvalidFunctionError(fid, "args must be a list of function ids")
    if isinstance(fn.extra_args, (str, bytes)) or not isinstance(fn.extra_args, Sequence):
        raise InvalidFunctionError(fid, "extra_args must be a list")
    for a in fn.args:
        dep = a.id if isinstance(a, Argument) else a
        try:
            hash(dep)
        except TypeError:
            raise InvalidFunctionError(fid, f"dependency id {dep!r} is not hashable") from None
        if isinstance(a, Argument):
            for name in ("serialization_fn", "deserialization_fn"):
                _check_hook(fid, name, getattr(a, name))
    if fn.cost is not None:
        if not isinstance(fn.cost, Mapping):
            raise InvalidFunctionError(fid, "cost must be a mapping of resource name to amount")
        for res, amount in fn.cost.items():
            if not isinstance(res, str):
                raise InvalidFunctionError(fid, f"resource names must be strings, got {res!r}")
            if isinstance(amount, bool) or not isinstance(amount, Real) or not math.isfinite(amount):
                raise InvalidFunctionError(fid, f"cost of {res!r} must be a finite number, got {amount!r}")
            if amount < 0:
                raise InvalidFunctionError(fid, f"cost of {res!r} must not be negative, got {amount!r}")
    if fn.group is not None and (not isinstance(fn.group, str) or not fn.group):
        raise InvalidFunctionError(fid, f"group must be a non-empty string or None, got {fn.group!r}")
    if fn.node is not None and not isinstance(fn.node, (str, Collocated)):
        raise InvalidFunctionError(fid, "node must be a node name, Collocated(function_id) or None")
    if fn.is_inline and fn.node is not None:
        raise InvalidFunctionError(fid, "an inline function runs inside its consumers and cannot be placed")
    if not isinstance(fn.cache, bool):
        raise InvalidFunctionError(fid, f"cache must be True or False, got {fn.cache!r}")
    if fn.cache and fn.is_inline:
        raise InvalidFunctionError(fid, "an inline function has no result of its own to cache")
    problem = fn.max_retries is not None and retries_problem(fn.max_retries)
    problem = problem or (fn.timeout is not None and timeout_problem(fn.timeout))
    if problem:
        raise InvalidFunctionError(fid, problem)


def _check_input(fn: Function) -> None:
    """An input is fed by ``push``: nothing to run, nothing to place."""
    given = [name for name, value in (
        ("code", fn.code), ("args", list(fn.args)), ("extra_args", list(fn.extra_args)),
        ("cost", fn.cost), ("node", fn.node), ("init", fn.init), ("batch_size", fn.batch_size),
        ("batch_timeout", fn.batch_timeout), ("timeout", fn.timeout),
    ) if value not in (None, [])]
    if fn.parallelism != 1:
        given.append("parallelism")
    if given:
        raise InvalidFunctionError(
            fn.id, f"an input function is fed by push and takes no {', '.join(given)}")


def _check_streaming(fn: Function) -> None:
    fid = fn.id
    if fn.init is not None and not callable(fn.init):
        raise InvalidFunctionError(fid, f"init must be a zero-argument callable, got {type(fn.init).__name__}")
    p = fn.parallelism
    if isinstance(p, bool) or not isinstance(p, Integral) or not 1 <= int(p) <= MAX_PARALLELISM:
        raise InvalidFunctionError(fid, f"parallelism must be an int from 1 to {MAX_PARALLELISM}, got {p!r}")
    b = fn.batch_size
    if b is not None and (isinstance(b, bool) or not isinstance(b, Integral) or not 1 <= int(b) <= MAX_BATCH):
        raise InvalidFunctionError(fid, f"batch_size must be None or an int from 1 to {MAX_BATCH}, got {b!r}")
    if fn.batch_timeout is not None:
        if b is None:
            raise InvalidFunctionError(fid, "batch_timeout needs a batch_size (the most items a batch holds)")
        problem = timeout_problem(fn.batch_timeout, "batch_timeout")
        if problem:
            raise InvalidFunctionError(fid, problem)
    if fn.is_inline and (fn.init is not None or p != 1 or b is not None):
        raise InvalidFunctionError(
            fid, "an inline function runs inside its consumers: no init, parallelism or batch_size")


def timeout_problem(value: Any, name: str = "timeout") -> str:
    """Why ``value`` is not a usable timeout in seconds ('' when it is): the one rule for all."""
    if (isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value)
            or not 0 < float(value) <= MAX_TIMEOUT):
        return (f"{name} must be a finite number of seconds between 0 (exclusive) and "
                f"{MAX_TIMEOUT:.0f} (30 days), got {value!r}")
    return ""


def retries_problem(value: Any, name: str = "max_retries") -> str:
    """Why ``value`` is not a usable retry count ('' when it is)."""
    if (isinstance(value, bool) or not isinstance(value, Integral)
            or not 0 <= int(value) <= MAX_RETRIES):
        return f"{name} must be an int from 0 to {MAX_RETRIES}, got {value!r}"
    return ""


def _check_hook(fid: Hashable, name: str, hook: Any) -> None:
    if hook is None or callable(hook):
        return
    if (
        isinstance(hook, (tuple, list))
        and len(hook) == 2
        and callable(hook[0])
        and isinstance(hook[1], (list, tuple))
    ):
        return
    raise InvalidFunctionError(fid, f"{name} must be a callable or a (callable, [extra, ...]) pair")


@dataclass(frozen=True)
class CompiledGraph:
    """A validated DAG as integer arrays: function i depends on indices[indptr[i]:indptr[i+1]]."""

    ids: list[Hashable]
    index: dict[Hashable, int]
    indptr: np.ndarray
    indices: np.ndarray
    inline: np.ndarray  # uint8 mask


def effective_inputs(indptr: list[int], indices: list[int], inline: Sequence[int], i: int) -> list[int]:
    """The non-inline functions whose values function ``i`` fetches, looking through inline
    ones, each once, in dependency order (``CompiledGraph``'s arrays as lists, for speed)."""
    direct = indices[indptr[i]:indptr[i + 1]]
    if not any(inline[d] for d in direct):
        return list(dict.fromkeys(direct))
    out: list[int] = []
    seen: set[int] = set()
    stack = direct[::-1]
    while stack:
        d = stack.pop()
        if inline[d]:
            stack.extend(indices[indptr[d]:indptr[d + 1]][::-1])
        elif d not in seen:
            seen.add(d)
            out.append(d)
    return out


class DAG:
    """A directed acyclic graph of functions, kept in insertion order.

    The dependency lists are kept as flat integer arrays while functions are added, so that
    validating a million functions is a pass over arrays in the compiled core.
    """

    def __init__(self, id: Hashable | None = None):
        self.id: Hashable = uuid.uuid4().hex if id is None else id
        self.functions: dict[Hashable, Function] = {}
        self._index: dict[Hashable, int] = {}
        self._ids: list[Hashable] = []
        self._indptr = array("q", [0])
        self._indices = array("q")
        self._inline = bytearray()
        self._forward: list[tuple[int, Hashable]] = []  # (position in _indices, id not yet added)
        self._collocated: list[Function] = []  # checked at validation: targets may come later
        self._validated = False
        # _ids, _index and the arrays are shared with the last CompiledGraph (a run of a million
        # functions would copy about 100 bytes a function); the next add_function copies them
        self._shared = False

    def __repr__(self) -> str:
        return f"DAG({self.id!r}, {len(self.functions)} functions)"

    def __len__(self) -> int:
        return len(self.functions)

    def __contains__(self, fid: object) -> bool:
        return fid in self.functions

    def __iter__(self) -> Iterator[Function]:
        return iter(self.functions.values())

    def __getitem__(self, fid: Hashable) -> Function:
        return self.functions[fid]

    def add_function(self, fn: Function) -> "DAG":
        """Add ``fn``; returns the DAG so calls chain. Raises DuplicateFunctionError."""
        if not isinstance(fn, Function):
            raise TypeError(f"add_function takes a handoff.Function, got {type(fn).__name__}")
        try:
            hash(fn.id)
        except TypeError:
            raise InvalidFunctionError(fn.id, "id must be hashable") from None
        if fn.id in self._index:
            raise DuplicateFunctionError(fn.id)
        _check_function(fn)
        if self._shared:  # a compiled graph (a run, a result) keeps reading the old ones
            self._index, self._ids, self._shared = dict(self._index), list(self._ids), False
            self._indptr, self._indices = array("q", self._indptr), array("q", self._indices)
            self._inline = bytearray(self._inline)
        index = self._index
        indices = self._indices
        for dep in fn.dependency_ids:
            pos = index.get(dep, -1)
            if pos < 0:
                self._forward.append((len(indices), dep))
            indices.append(pos)
        self._indptr.append(len(indices))
        index[fn.id] = len(self._ids)
        self._ids.append(fn.id)
        self._inline.append(1 if fn.type == "inline" else 0)
        self.functions[fn.id] = fn
        if isinstance(fn.node, Collocated):
            self._collocated.append(fn)
        self._validated = False
        return self

    def compile(self) -> CompiledGraph:
        """Validate and return the integer form; raises a ValidationError subclass."""
        from handoff import _core

        if self._forward:
            index = self._index
            still = []
            for pos, dep in self._forward:
                found = index.get(dep, -1)
                if found < 0:
                    still.append((pos, dep))
                else:
                    self._indices[pos] = found
            self._forward = still
            if still:
                pos, dep = still[0]
                owner = int(np.searchsorted(np.frombuffer(self._indptr, dtype=np.int64), pos, "right")) - 1
                raise MissingFunctionError(self._ids[owner], dep)
        n = len(self._ids)
        indptr = np.frombuffer(self._indptr, dtype=np.int64)
        indices = np.frombuffer(self._indices, dtype=np.int64) if len(self._indices) else np.zeros(0, np.int64)
        inline = np.frombuffer(bytes(self._inline), dtype=np.uint8) if n else np.zeros(0, np.uint8)
        if not self._validated:
            cycle = _core.find_cycle(n, indptr, indices)
            if cycle is not None:
                raise CycleError([self._ids[i] for i in cycle])
            self._check_placement()
            self._validated = True
        self._shared = True  # its arrays are views of ours (a frombuffer view forbids resizing)
        return CompiledGraph(self._ids, self._index, indptr, indices, inline)

    def validate(self) -> None:
        """Raise a ValidationError subclass if the DAG breaks a rule; return None otherwise."""
        self.compile()

    def to_mermaid(self) -> str:
        """A Mermaid flowchart of the DAG (pins and costs shown; one box per group past 500
        functions). Raises a ValidationError subclass for an invalid DAG."""
        from handoff.observe.pictures import to_mermaid

        return to_mermaid(self)

    def to_dot(self) -> str:
        """A Graphviz DOT digraph of the DAG, like ``to_mermaid``; no Graphviz is needed."""
        from handoff.observe.pictures import to_dot

        return to_dot(self)

    def topological_order(self) -> list[Hashable]:
        """Function ids in an order where every function follows its dependencies."""
        from handoff import _core

        g = self.compile()
        return [g.ids[i] for i in _core.topological_order(len(g.ids), g.indptr, g.indices)]

    def _check_placement(self) -> None:
        functions = self.functions
        for fn in self._collocated:
            if isinstance(fn.node, Collocated):
                target = functions.get(fn.node.function_id)
                if target is None:
                    raise InvalidFunctionError(
                        fn.id, f"collocated with {fn.node.function_id!r}, which is not in the DAG"
                    )
                if target.is_inline or target.is_input:
                    raise InvalidFunctionError(
                        fn.id, f"collocated with {target.type} function {target.id!r}, which is never placed"
                    )
                if target.id == fn.id:
                    raise InvalidFunctionError(fn.id, "collocated with itself")

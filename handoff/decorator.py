"""The decorator API: ``@handoff.fn`` functions return lazy ``Ref``s that build the same DAGs
as ``Function`` records; ``run`` executes them and ``dag_of`` gives the DAG.

A call ``f(a, b=r)`` makes one ``Function`` at once (so a ref used twice is one function):
refs among the arguments, also inside lists, tuples and dicts, become its dependencies and
everything else stays a constant. A call whose refs all come first, as plain positional
arguments, is exactly ``Function(code=f, args=[ref ids], extra_args=[the rest])``; any
other shape calls a small adapter (``_Apply``) that puts the values back where the refs were.
"""

from __future__ import annotations

import itertools
import threading
import typing
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Callable, Generic, TypeVar, cast, overload

from handoff.dag import DAG, Function

if TYPE_CHECKING:
    from typing_extensions import ParamSpec

    from handoff.node.runs import ExecutionResult
else:
    from typing import ParamSpec

__all__ = ["fn", "Ref", "RemoteFunction", "run", "dag_of"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T", covariant=True)
A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")
D = TypeVar("D")

OPTIONS = ("cost", "node", "max_retries", "timeout", "type", "cache", "group")

_counters: dict[str, Iterator[int]] = {}
_counters_lock = threading.Lock()


def _next_id(name: str) -> str:
    with _counters_lock:
        counter = _counters.get(name)
        if counter is None:
            counter = _counters[name] = itertools.count()
        return f"{name}-{next(counter)}"


class Ref(Generic[T]):
    """The future value of one call of a decorated function; pass it to other calls (it
    becomes an edge), to ``handoff.run`` (its value) or ``handoff.dag_of`` (the DAG)."""

    __slots__ = ("function", "deps", "_arity", "_item", "_parts")

    def __init__(self, function: Function, deps: tuple[Ref[Any], ...], arity: int | None,
                 item: int | None = None) -> None:
        self.function = function
        self.deps = deps  # distinct refs this call depends on, in argument order
        self._arity = arity  # length of the annotated tuple it returns, if fixed
        self._item = item  # for a projection: the index it takes from its one dependency
        self._parts: list[Ref[Any]] | None = None  # its projections, made once

    @property
    def id(self) -> Hashable:
        """The function id in the DAG (``"{qualname}-{n}"``)."""
        return self.function.id

    def __repr__(self) -> str:
        return f"Ref({self.function.id!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # a ref inside something other than a list, tuple or dict would be shipped as a
        # constant (with its whole function), not become an edge
        raise TypeError(
            f"{self!r} cannot be sent as a value: pass refs as arguments, directly or inside "
            "lists, tuples and dicts, where they become dependencies")

    def __iter__(self) -> Iterator[Ref[Any]]:
        """``a, b = f()`` for a function annotated to return ``tuple[A, B]``: one ref per
        element, each an inline projection (computed inside its consumers, no task of its
        own). ``unpack()`` does the same with each element's type kept."""
        if self._arity is None:
            raise TypeError(
                f"cannot unpack {self!r}: its function is not annotated to return a fixed-length "
                "tuple (tuple[A, B, ...]); annotate it, or pass the ref on whole")
        if self._parts is None:
            self._parts = [_project(self, k) for k in range(self._arity)]
        return iter(self._parts)

    @overload
    def unpack(self: Ref[tuple[A]]) -> tuple[Ref[A]]: ...
    @overload
    def unpack(self: Ref[tuple[A, B]]) -> tuple[Ref[A], Ref[B]]: ...
    @overload
    def unpack(self: Ref[tuple[A, B, C]]) -> tuple[Ref[A], Ref[B], Ref[C]]: ...
    @overload
    def unpack(self: Ref[tuple[A, B, C, D]]) -> tuple[Ref[A], Ref[B], Ref[C], Ref[D]]: ...
    @overload
    def unpack(self: Ref[Any]) -> tuple[Ref[Any], ...]: ...

    def unpack(self: Ref[Any]) -> tuple[Ref[Any], ...]:
        """The elements of a tuple-returning call as typed refs (see ``__iter__``)."""
        return tuple(self)


def _item(value: Any, k: int) -> Any:
    return value[k]


def _project(ref: Ref[Any], k: int) -> Ref[Any]:
    function = Function(id=f"{ref.id}[{k}]", code=_item, args=[ref.id], extra_args=[k], type="inline")
    return Ref(function, (ref,), None, k)


class Slot:
    """Where the value of dependency ``index`` goes in a call's argument template (the
    decorator's refs and the Executor's futures alike)."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        return (Slot, (self.index,))

    def __eq__(self, other: object) -> bool:
        return type(other) is Slot and other.index == self.index

    def __hash__(self) -> int:
        return hash((Slot, self.index))


class _Apply:
    """Calls the user's function with dependency values put back into the argument template
    (``template`` is the last extra argument: ``(args, kwargs)`` with ``Slot`` markers)."""

    __slots__ = ("__wrapped__",)

    def __init__(self, func: Callable[..., Any]) -> None:
        self.__wrapped__ = func

    def __call__(self, *values: Any) -> Any:
        *deps, (args, kwargs) = values
        return self.__wrapped__(*fill_slots(args, deps), **fill_slots(kwargs, deps))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Apply, (self.__wrapped__,))


def fill_slots(template: Any, values: Sequence[Any]) -> Any:
    """``template`` with each ``Slot`` replaced by its value (lists, tuples and dicts rebuilt)."""
    kind = type(template)
    if kind is Slot:
        return values[template.index]
    if kind is list:
        return [fill_slots(x, values) for x in template]
    if kind is tuple:
        return tuple(fill_slots(x, values) for x in template)
    if kind is dict:
        return {k: fill_slots(v, values) for k, v in template.items()}
    return template


def _template(value: Any, slots: dict[int, int], deps: list[Ref[Any]]) -> Any:
    """``value`` with each ref replaced by the ``Slot`` of its (deduplicated) dependency."""
    kind = type(value)
    if isinstance(value, Ref):
        k = slots.get(id(value))
        if k is None:
            k = slots[id(value)] = len(deps)
            deps.append(value)
        return Slot(k)
    if kind is list:
        return [_template(x, slots, deps) for x in value]
    if kind is tuple:
        return tuple(_template(x, slots, deps) for x in value)
    if kind is dict:
        return {k: _template(v, slots, deps) for k, v in value.items()}
    return value


def _has_ref(value: Any) -> bool:
    kind = type(value)
    if isinstance(value, Ref):
        return True
    if kind is list or kind is tuple:
        return any(_has_ref(x) for x in value)
    if kind is dict:
        return any(_has_ref(v) for v in value.values())
    return False


def _tuple_arity(func: Callable[..., Any]) -> int | None:
    """n when ``func`` is annotated to return ``tuple[X1, ..., Xn]``, else None."""
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # unresolvable forward references: no unpacking, nothing else lost
        return None
    ret = hints.get("return")
    if typing.get_origin(ret) is not tuple:
        return None
    args = typing.get_args(ret)
    if not args or (len(args) == 2 and args[1] is Ellipsis) or args == ((),):
        return None
    return len(args)


class RemoteFunction(Generic[P, R]):
    """A decorated function: calling it returns a ``Ref``; ``local`` calls the plain function."""

    def __init__(self, func: Callable[P, R], options: Mapping[str, Any]) -> None:
        unknown = set(options) - set(OPTIONS)
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(sorted(unknown))}; valid: {', '.join(OPTIONS)}")
        if not callable(func):
            raise TypeError(f"@handoff.fn decorates a callable, got {func!r}")
        self.func = func
        self.fn_options = dict(options)
        self.name = getattr(func, "__qualname__", None) or type(func).__qualname__
        self._apply = _Apply(func)
        self._arity = _tuple_arity(func)
        self.__doc__ = getattr(func, "__doc__", None)
        self.__wrapped__ = func

    def __repr__(self) -> str:
        return f"<handoff.fn {self.name}>"

    def local(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the plain function here, now."""
        return self.func(*args, **kwargs)

    def options(self, **options: Any) -> RemoteFunction[P, R]:
        """The same function with some options changed (``f.options(cost={"gpu": 1})``)."""
        return RemoteFunction(self.func, {**self.fn_options, **options})

    # Arguments may be refs in place of values, which ParamSpec cannot say (each parameter
    # would be ``T | Ref[T]``): they are not checked here, the result's type is.
    def __call__(self, *args: Any, **kwargs: Any) -> Ref[R]:
        fid = _next_id(self.name)
        n_refs = 0
        while n_refs < len(args) and isinstance(args[n_refs], Ref):
            n_refs += 1
        simple = not kwargs and not any(_has_ref(a) for a in args[n_refs:])
        if simple:
            refs = cast(list[Ref[Any]], list(args[:n_refs]))
            function = Function(id=fid, code=self.func, args=[r.id for r in refs],
                                extra_args=list(args[n_refs:]), **self.fn_options)
            deps = tuple(dict.fromkeys(refs))
        else:
            dep_list: list[Ref[Any]] = []
            slots: dict[int, int] = {}
            template = (_template(list(args), slots, dep_list), _template(kwargs, slots, dep_list))
            function = Function(id=fid, code=self._apply, args=[r.id for r in dep_list],
                                extra_args=[template], **self.fn_options)
            deps = tuple(dep_list)
        return Ref(function, deps, self._arity)


@overload
def fn(func: Callable[P, R], /) -> RemoteFunction[P, R]: ...


@overload
def fn(
    *,
    cost: Mapping[str, float] | None = None,
    node: str | None = None,
    max_retries: int | None = None,
    timeout: float | None = None,
    type: str = "regular",
    cache: bool = False,
    group: str | None = None,
) -> Callable[[Callable[P, R]], RemoteFunction[P, R]]: ...


def fn(func: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Decorate a function so that calling it builds a DAG instead of running it.

    ``@handoff.fn`` or ``@handoff.fn(cost=..., node=..., max_retries=..., timeout=...,
    type=..., cache=..., group=...)``, the ``Function`` fields of the same names.
    """
    if func is not None:
        if options:
            raise TypeError("use @handoff.fn or @handoff.fn(option=...), not both")
        return RemoteFunction(func, {})
    RemoteFunction(_no_op, options)  # check the options where they are written

    def decorate(f: Callable[P, R]) -> RemoteFunction[P, R]:
        return RemoteFunction(f, options)

    return decorate


def _no_op() -> None:
    return None


def _refs_in(x: Any) -> list[Ref[Any]]:
    found: list[Ref[Any]] = []
    stack = [x]
    while stack:
        value = stack.pop()
        if isinstance(value, Ref):
            found.append(value)
        elif type(value) in (list, tuple):
            stack.extend(reversed(value))
        elif type(value) is dict:
            stack.extend(reversed(list(value.values())))
    return found


id_of = id  # a ref's identity: two calls with equal arguments are still two functions


def dag_of(x: Any, id: Hashable | None = None) -> DAG:
    """The DAG that computes ``x`` (a ref, or a list, tuple or dict of refs): every function
    the refs depend on, each once, dependencies first."""
    roots = _refs_in(x)
    if not roots:
        raise TypeError(f"dag_of() takes a handoff.Ref, or a list, tuple or dict of them, got {x!r}")
    dag = DAG(id)
    seen: set[int] = set()
    # iterative post-order: chains of many thousand calls must not hit the recursion limit
    for root in roots:
        if id_of(root) in seen:
            continue
        stack: list[tuple[Ref[Any], bool]] = [(root, False)]
        while stack:
            ref, expanded = stack.pop()
            key = id_of(ref)
            if key in seen:
                continue
            if expanded:
                seen.add(key)
                dag.add_function(ref.function)
                continue
            stack.append((ref, True))
            for dep in reversed(ref.deps):
                if id_of(dep) not in seen:
                    stack.append((dep, False))
    return dag


K = TypeVar("K")


@overload
def run(x: Ref[R], **options: Any) -> R: ...
@overload
def run(x: list[Ref[R]], **options: Any) -> list[R]: ...
@overload
def run(x: dict[K, Ref[R]], **options: Any) -> dict[K, R]: ...
@overload
def run(x: Any, **options: Any) -> Any: ...


def run(x: Any, **options: Any) -> Any:
    """Execute the DAG of ``x`` and return its values in ``x``'s shape (a ref's value, or a
    list, tuple or dict of them); takes ``handoff.execute``'s options."""
    from handoff.api import execute

    dag = dag_of(x)
    for ref in _refs_in(x):
        if ref.function.is_inline and ref._item is None:
            raise ValueError(f"{ref!r} is an inline function, which has no result of its own; "
                             "run a function that uses it")
    result = execute(dag, **options)
    return _values(x, result)


def _values(x: Any, result: ExecutionResult) -> Any:
    if isinstance(x, Ref):
        if x._item is not None:
            return _values(x.deps[0], result)[x._item]
        return result.results[x.id]
    if type(x) is list:
        return [_values(v, result) for v in x]
    if type(x) is tuple:
        return tuple(_values(v, result) for v in x)
    if type(x) is dict:
        return {k: _values(v, result) for k, v in x.items()}
    return x

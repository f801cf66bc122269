"""Lineage keys of the result cache: what a function's result depends on, as a hex digest.

A function's key hashes its code identity (module, qualified name, its code object with
its constants and the names it uses, defaults, closure values, and the code of the
same-module functions it calls), its extra arguments (through a canonical pickle: sets
sorted, functions by code identity) and the keys of its inputs, never their values, so a
large input is not hashed. The function id, DAG id, ``node`` and ``cost`` are not part of
it: the same call in another DAG, or placed elsewhere, is the same result.
"""

from __future__ import annotations

import functools
import hashlib
import io
import pickle
import types
from typing import Any, Callable, Iterable, Sequence

import cloudpickle

from handoff.dag import Argument, Function
from handoff.errors import InvalidFunctionError

__all__ = ["KeyBuilder", "lineage_keys", "UnhashableValue"]

VERSION = b"handoff-cache-1"


class UnhashableValue(TypeError):
    """A value that neither pickle nor cloudpickle can turn into bytes to hash."""


class _KeyPickler(pickle.Pickler):
    """Pickle that hashes the same for equal values across processes: functions are replaced
    by their code identity (pickle would name them; cloudpickle output is not stable). Sets
    are sorted before (``_canonical``): their order follows string hashes, which change per
    process."""

    def __init__(self, file: io.BytesIO, builder: KeyBuilder) -> None:
        super().__init__(file, protocol=5)
        self._builder = builder

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (types.FunctionType, functools.partial, types.MethodType)):
            return (_marker, (self._builder.code_identity(obj),))
        return NotImplemented


def _marker(digest: str) -> str:
    return digest


CANONICAL_BUDGET = 10_000  # containers' items visited to sort sets; past it, left as they are


class _SortedSet:
    """A set in sorted order, for hashing only (pickle writes sets in iteration order and
    does not let ``reducer_override`` see them)."""

    __slots__ = ("kind", "items")

    def __init__(self, kind: str, items: list) -> None:
        self.kind = kind
        self.items = items

    def __reduce__(self) -> tuple[Any, ...]:
        return (_SortedSet, (self.kind, self.items))


def _canonical(value: Any, budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        return value
    kind = type(value)
    if kind is list:
        return [_canonical(x, budget) for x in value]
    if kind is tuple:
        return tuple(_canonical(x, budget) for x in value)
    if kind is dict:
        return {k: _canonical(v, budget) for k, v in value.items()}
    if kind is set or kind is frozenset:
        items = [_canonical(x, budget) for x in value]
        try:
            items.sort()
        except TypeError:  # unorderable members: their own order (a miss at worst)
            pass
        return _SortedSet(kind.__name__, items)
    return value


class KeyBuilder:
    """Code identities and value digests, memoized for one run (a code object used by a
    thousand functions is hashed once)."""

    def __init__(self) -> None:
        self._code: dict[int, tuple[Any, str]] = {}  # id(callable) -> (kept alive, digest)

    # ---- values -------------------------------------------------------------------
    def value_digest(self, value: Any) -> str:
        """sha256 of ``value``'s canonical pickle; UnhashableValue when it has none."""
        buf = io.BytesIO()
        try:
            _KeyPickler(buf, self).dump(_canonical(value, [CANONICAL_BUDGET]))
            data = buf.getvalue()
        except Exception:
            try:
                data = cloudpickle.dumps(value, protocol=5)
            except Exception as exc:
                raise UnhashableValue(f"{type(value).__name__} cannot be pickled: {exc}") from exc
        return hashlib.sha256(data).hexdigest()

    # ---- code ---------------------------------------------------------------------
    def code_identity(self, code: Callable[..., Any]) -> str:
        found = self._code.get(id(code))
        if found is not None:
            return found[1]
        self._code[id(code)] = (code, "cycle")  # a function that refers to itself
        digest = hashlib.sha256(repr(self._identity(code)).encode()).hexdigest()
        self._code[id(code)] = (code, digest)
        return digest

    def _identity(self, code: Any) -> tuple:
        if isinstance(code, types.FunctionType):
            return self._function(code)
        if isinstance(code, functools.partial):
            return ("partial", self.code_identity(code.func), self.value_digest(code.args),
                    self.value_digest(code.keywords))
        if isinstance(code, types.MethodType):
            return ("method", self.code_identity(code.__func__), self.value_digest(code.__self__))
        if isinstance(code, (type, types.BuiltinFunctionType)):
            return ("named", getattr(code, "__module__", ""), getattr(code, "__qualname__", repr(code)))
        kind = type(code)  # a callable instance: its class's __call__ and its state
        call = getattr(kind, "__call__", None)
        call_id = self.code_identity(call) if isinstance(call, types.FunctionType) else ""
        return ("instance", kind.__module__, kind.__qualname__, call_id, self.value_digest(code))

    def _function(self, f: types.FunctionType) -> tuple:
        closure: tuple[str, ...] = ()
        if f.__closure__:
            closure = tuple(self._cell(c) for c in f.__closure__)
        helpers = []
        module = f.__module__
        for name in sorted(_names(f.__code__)):
            obj = f.__globals__.get(name)
            if isinstance(obj, types.FunctionType) and obj.__module__ == module and obj is not f:
                helpers.append((name, self.code_identity(obj)))
        return ("function", module, f.__qualname__, _code_digest(f.__code__),
                self.value_digest(f.__defaults__), self.value_digest(f.__kwdefaults__),
                closure, tuple(helpers))

    def _cell(self, cell: Any) -> str:
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            return "empty"
        return self.value_digest(value)

    # ---- functions ----------------------------------------------------------------
    def function_key(self, fn: Function, input_keys: Sequence[str]) -> str:
        """The key of ``fn`` given its inputs' keys (in ``fn.args`` order)."""
        h = hashlib.sha256(VERSION)
        h.update(self.code_identity(fn.code).encode() if fn.code is not None else b"<input>")
        h.update(fn.argument_inclusion.encode())
        for i, value in enumerate(fn.extra_args):
            try:
                h.update(self.value_digest(value).encode())
            except UnhashableValue as exc:
                raise InvalidFunctionError(
                    fn.id, f"extra_args[{i}] cannot be hashed for the result cache key: {exc}; "
                    "pass it as the result of another function, or turn the cache off") from None
        for arg, key in zip(fn.args, input_keys):
            h.update(b"<" + key.encode() + b">")
            if isinstance(arg, Argument):  # hooks may change the value a consumer sees
                for hook in (arg.serialization_fn, arg.deserialization_fn):
                    h.update(self._hook(hook).encode())
        return h.hexdigest()

    def _hook(self, hook: Any) -> str:
        if hook is None:
            return "-"
        if callable(hook):
            return self.code_identity(hook)
        fn, extra = hook
        return self.code_identity(fn) + self.value_digest(list(extra))


def _names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _code_digest(code: types.CodeType) -> str:
    """The code object's bytecode, constants (nested code objects recursively) and the
    names it uses; not its file or line numbers, so moving a function is not a change."""
    h = hashlib.sha256()
    h.update(code.co_code)
    h.update(repr((code.co_argcount, code.co_kwonlyargcount, code.co_flags, code.co_names,
                   code.co_varnames, code.co_freevars)).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            h.update(_code_digest(const).encode())
        else:
            h.update(repr((type(const).__name__, const)).encode())
    return h.hexdigest()


def lineage_keys(
    functions: Sequence[Function],
    deps: Sequence[Sequence[int]],
    wanted: Iterable[int],
    builder: KeyBuilder | None = None,
) -> dict[int, str]:
    """``{index: key}`` for the ``wanted`` functions and everything they depend on.

    ``deps[i]`` are the indices of ``functions[i]``'s inputs in ``args`` order. Raises
    ``InvalidFunctionError`` naming the function and argument that cannot be hashed.
    """
    builder = builder or KeyBuilder()
    keys: dict[int, str] = {}
    for start in wanted:
        stack: list[tuple[int, bool]] = [(start, False)]
        while stack:  # iterative: a chain of many thousand functions is fine
            i, expanded = stack.pop()
            if i in keys:
                continue
            if expanded:
                keys[i] = builder.function_key(functions[i], [keys[d] for d in deps[i]])
                continue
            stack.append((i, True))
            stack.extend((d, False) for d in deps[i] if d not in keys)
    return keys

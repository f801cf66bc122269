"""The HandoffError tree. Every error keeps its data as attributes and reads well as text."""

from __future__ import annotations

import builtins
from typing import Any, Hashable, Mapping, Sequence

__all__ = [
    "HandoffError",
    "ValidationError",
    "DuplicateFunctionError",
    "MissingFunctionError",
    "CycleError",
    "InvalidFunctionError",
    "AllocationError",
    "FunctionError",
    "NodeLostError",
    "ResultNotFound",
    "TimeoutError",
    "ProtocolError",
    "AuthenticationError",
    "remote_error",
    "ItemError",
]


class HandoffError(Exception):
    """Base of every error Handoff raises on purpose."""

    # a run that ends in an error sets it: the partial ExecutionResult (stats, to_trace, report)
    result: Any = None

    # errors cross process boundaries; keep their attributes (not the local partial result)
    def __reduce__(self) -> tuple[Any, ...]:
        state = {k: v for k, v in self.__dict__.items() if k != "result"}
        return (_rebuild_error, (type(self), state, self.args))


def _rebuild_error(
    cls: type[BaseException], state: dict[str, Any], args: tuple[Any, ...]
) -> BaseException:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class ValidationError(HandoffError):
    """The DAG breaks a rule; raised by ``DAG.validate()`` and at ``execute``."""


class DuplicateFunctionError(ValidationError):
    def __init__(self, function_id: Hashable):
        self.function_id = function_id
        super().__init__(f"function {function_id!r} is already in the DAG")


class MissingFunctionError(ValidationError):
    def __init__(self, function_id: Hashable, missing_id: Hashable):
        self.function_id = function_id
        self.missing_id = missing_id
        super().__init__(f"function {function_id!r} depends on {missing_id!r}, which is not in the DAG")


class CycleError(ValidationError):
    def __init__(self, cycle: Sequence[Hashable]):
        self.cycle = list(cycle)
        path = " -> ".join(repr(c) for c in self.cycle)
        super().__init__(f"the DAG has a cycle: {path}")


class InvalidFunctionError(ValidationError):
    def __init__(self, function_id: Hashable, reason: str):
        self.function_id = function_id
        self.reason = reason
        super().__init__(f"function {function_id!r} is invalid: {reason}")


class AllocationError(HandoffError):
    def __init__(
        self,
        function_id: Hashable,
        cost: Mapping[str, float] | None,
        capacities: Mapping[str, Mapping[str, float]],
        reason: str | None = None,
    ):
        self.function_id = function_id
        self.cost = dict(cost or {})
        self.capacities = {n: dict(c) for n, c in capacities.items()}
        self.reason = reason or "its cost fits no node's total capacity"
        nodes = ", ".join(f"{n}={c}" for n, c in self.capacities.items()) or "no nodes"
        super().__init__(
            f"cannot place function {function_id!r} (cost {self.cost}): {self.reason}; nodes: {nodes}"
        )


class FunctionError(HandoffError):
    """A function raised on every attempt; carries the remote exception's type, message and traceback.

    ``cause`` is the original exception when it could be unpickled here (also the
    ``__cause__``). Raised by ``execute`` through ``remote_error``, it is also an instance of
    the original's class when that class can be combined with it, so ``except ValueError:``
    catches a ``ValueError`` raised on another node.
    """

    cause: BaseException | None = None

    def __init__(
        self,
        function_id: Hashable,
        node: str | None,
        attempts: int,
        exc_type: str,
        message: str,
        remote_traceback: str = "",
    ):
        self._fill(function_id, node, attempts, exc_type, message, remote_traceback)

    def _fill(self, function_id: Hashable, node: str | None, attempts: int, exc_type: str,
              message: str, remote_traceback: str) -> None:
        # BaseException's __init__, not super()'s: in a typed subclass the next class is
        # the remote one, whose __init__ may want other arguments
        self.function_id = function_id
        self.node = node
        self.attempts = attempts
        self.exc_type = exc_type
        self.message = message
        self.remote_traceback = remote_traceback
        BaseException.__init__(
            self,
            f"function {function_id!r} failed on node {node!r} after {attempts} attempt(s): "
            f"{exc_type}: {message}",
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_error, (type(self), self._state(), self.args))

    def _state(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k != "result"}  # not the local partial result
        if state.get("cause") is not None:  # its class's __init__ may not take its args
            state["cause"] = PicklableException(state["cause"])
        return state

    def __str__(self) -> str:
        # not super().__str__(): a typed subclass may also be a KeyError, which repr()s it
        text = str(self.args[0]) if self.args else ""
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return text


_TYPED: dict[type, type[FunctionError] | None] = {}  # remote class -> FunctionError subclass (None: cannot be)


def _typed_class(remote: type) -> type[FunctionError] | None:
    """``FunctionError(Remote)``, a subclass of both, made once per class; None when the
    two cannot be combined (another instance layout, a class that forbids subclassing, not
    an ``Exception``: a KeyboardInterrupt from user code must not escape ``except Exception``)."""
    if remote in _TYPED:
        return _TYPED[remote]
    typed: type[FunctionError] | None = None
    if issubclass(remote, Exception) and not issubclass(remote, FunctionError):
        try:
            typed = type(
                f"FunctionError({remote.__qualname__})",
                (FunctionError, remote),
                {"__module__": __name__, "__reduce__": _reduce_typed, "__init__": FunctionError.__init__,
                 "__str__": FunctionError.__str__},
            )
        except TypeError:  # layout conflict (OSError, UnicodeError ...), final class
            typed = None
    _TYPED[remote] = typed
    return typed


def _reduce_typed(self: FunctionError) -> tuple[Any, ...]:
    remote = next(c for c in type(self).__bases__ if c is not FunctionError)
    return (_rebuild_typed, (remote, self._state(), self.args))


def _rebuild_typed(remote: type, state: dict[str, Any], args: tuple[Any, ...]) -> FunctionError:
    cls = _typed_class(remote) or FunctionError
    err = cls.__new__(cls)
    BaseException.__init__(err, *args)
    err.__dict__.update(state)
    return err


class PicklableException:
    """Pickles as the exception it holds, rebuilt without calling its class's ``__init__``
    (whose signature may not match ``args``: pickle's default would call ``cls(*args)``)."""

    def __init__(self, exc: BaseException):
        self.exc = exc

    def __reduce__(self) -> tuple[Any, ...]:
        exc = self.exc
        return (_rebuild_exception, (type(exc), exc.args, getattr(exc, "__dict__", {}).copy()))


def _rebuild_exception(cls: type[BaseException], args: tuple[Any, ...],
                       state: dict[str, Any]) -> BaseException:
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


def remote_error(
    function_id: Hashable,
    node: str | None,
    attempts: int,
    exc_type: str,
    message: str,
    remote_traceback: str = "",
    cause: BaseException | None = None,
) -> FunctionError:
    """The ``FunctionError`` to raise for a function that failed remotely.

    With ``cause`` (the original exception, unpickled here) the error is also an instance of
    ``type(cause)`` when the classes can be combined; it keeps the cause's attributes (its
    ``__dict__``; the FunctionError fields win on a clash) without calling the remote class's
    ``__init__``, whose arguments are unknown. Otherwise it is a plain FunctionError that
    still names the remote type. ``cause`` is kept as ``.cause`` and ``__cause__``.
    """
    typed = _typed_class(type(cause)) if cause is not None else None
    err: FunctionError | None = None
    if typed is not None:
        try:
            made = typed.__new__(typed)
            made.__dict__.update(getattr(cause, "__dict__", {}))
            if isinstance(cause, OSError):  # fields of its own, not in __dict__
                for name in ("errno", "strerror", "filename", "filename2"):
                    setattr(made, name, getattr(cause, name))
            made._fill(function_id, node, attempts, exc_type, message, remote_traceback)
            err = made
        except Exception:  # a remote class whose __new__ wants arguments, a read-only attribute
            err = None
    if err is None:
        err = FunctionError(function_id, node, attempts, exc_type, message, remote_traceback)
    err.cause = cause
    if cause is not None:
        err.__cause__ = cause
    return err


class NodeLostError(HandoffError):
    def __init__(self, node: str, function_ids: Sequence[Hashable] = (), reason: str = ""):
        self.node = node
        self.function_ids = list(function_ids)
        self.reason = reason or "the node was declared dead"
        what = f" while holding {self.function_ids}" if self.function_ids else ""
        super().__init__(f"node {node!r} was lost{what}: {self.reason}")


class ResultNotFound(HandoffError, KeyError):
    def __init__(self, dag_id: Any, key: Hashable, node: str | None = None):
        self.dag_id = dag_id
        self.key = key
        self.node = node
        where = f" on node {node!r}" if node else ""
        super().__init__(f"no value for {key!r} in DAG {dag_id!r}{where}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class TimeoutError(HandoffError, builtins.TimeoutError):
    def __init__(self, what: str, seconds: float | None = None):
        self.what = what
        self.seconds = seconds
        after = f" after {seconds:g} s" if seconds is not None else ""
        super().__init__(f"{what} timed out{after}")


class ProtocolError(HandoffError):
    def __init__(self, reason: str, peer: Any = None):
        self.reason = reason
        self.peer = peer
        src = f" from {peer!r}" if peer is not None else ""
        super().__init__(f"bad message{src}: {reason}")


class AuthenticationError(HandoffError):
    def __init__(self, reason: str, peer: Any = None):
        self.reason = reason
        self.peer = peer
        src = f" ({peer!r})" if peer is not None else ""
        super().__init__(f"authentication failed{src}: {reason}")


class ItemError(HandoffError):
    """One item of a stream failed (its stage raised, its worker died too often, or it ran
    past ``item_timeout``); ``results()`` yields it in the item's place, the stream goes on."""

    def __init__(
        self,
        item: int,
        function_id: Hashable,
        exc_type: str,
        message: str,
        remote_traceback: str = "",
    ):
        self.item = item
        self.function_id = function_id
        self.exc_type = exc_type
        self.message = message
        self.remote_traceback = remote_traceback
        super().__init__(f"item {item} failed in function {function_id!r}: {exc_type}: {message}")

    def __str__(self) -> str:
        text = super().__str__()
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return text

"""Every message that crosses a socket, declared once.

A message is a frozen, slotted dataclass with a unique ``op``. Its plain fields travel in a
msgpack header; a message with ``blobs`` also carries opaque byte frames (pickled values,
out-of-band buffers) after the header, never copied or inspected by the codec.

Argument trees (``Task.tree``) tell a worker how to build a call:
``["v", k]`` the value in blob k; ``["c", k, inclusion, [children]]`` call the payload in blob k
with the children's values; ``["h", k, source, target, child]`` apply the hook in blob k as
``fn(value, source, target, *extra)``. A payload blob is ``[code]`` or ``[code, args]``: ``code``
a cloudpickled ``(callable, bound_args)``, the same frame for every function of a run that
runs that callable (so it keys run-time estimates and the workers' code caches); ``args`` the
function's own extra arguments, a pickled list appended to ``bound_args``.
"""

from __future__ import annotations

from dataclasses import Field, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:  # typing.dataclass_transform is 3.11+; mypy ships typing_extensions' stubs
    from typing_extensions import dataclass_transform
else:
    def dataclass_transform(**_: Any) -> Any:
        return lambda decorator: decorator

VERSION = 1

REGISTRY: dict[str, type["Message"]] = {}


class Message:
    op: ClassVar[str] = ""
    # per plain field: the types a decoded value may have
    _kinds: ClassVar[tuple[tuple[type, ...], ...]] = ()
    _names: ClassVar[tuple[str, ...]] = ()
    if TYPE_CHECKING:  # what @message gives every subclass; the codec builds them by position
        __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

        def __init__(self, *values: Any, **named: Any) -> None: ...


M = TypeVar("M", bound=Message)


@dataclass_transform(frozen_default=True)
def message(cls: type[M]) -> type[M]:
    """Register a dataclass as a wire message: frozen, slotted, unique op."""
    cls = dataclass(frozen=True, slots=True)(cls)
    if cls.op in REGISTRY:
        raise RuntimeError(f"duplicate message op {cls.op!r}")
    plain = [f for f in fields(cls) if f.name != "blobs"]
    cls._names = tuple(f.name for f in plain)
    cls._kinds = tuple(_KINDS[_annotation(f)] for f in plain)
    REGISTRY[cls.op] = cls
    return cls


def _annotation(f: Field[Any]) -> str:
    return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "Any")


_KINDS: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (float, int),
    "bool": (bool,),
    "bytes": (bytes,),
    "list": (list, tuple),
    "dict": (dict,),
    "Any": (object,),
    "str | None": (str, type(None)),
    "float | None": (float, int, type(None)),
    "list | None": (list, tuple, type(None)),
}


# ---- connection set-up and membership -------------------------------------------------

@message
class Hello(Message):
    """First message a node sends to a peer: who it is and how to reach it."""

    op: ClassVar[str] = "hello"
    name: str
    address: str
    incarnation: int
    caps: dict
    version: int = VERSION
    host: str = ""  # processes with the same host id share /dev/shm


@message
class Refuse(Message):
    """The receiver will not talk to the sender (name taken, wrong version)."""

    op: ClassVar[str] = "refuse"
    name: str
    reason: str


@message
class Gossip(Message):
    """A membership digest: rows of the sender's table."""

    op: ClassVar[str] = "gossip"
    sender: str
    rows: list


@message
class Leave(Message):
    op: ClassVar[str] = "leave"
    sender: str


# ---- task dispatch --------------------------------------------------------------------

@message
class Dispatch(Message):
    """Tasks for the receiving node to run. ``tasks`` rows:
    [run_id, index, attempt, function id, cost, timeout, tree, value_refs, first, count]:
    the task's own blobs are ``blobs[first:first + count]`` (payloads, hooks, and empty value
    slots); ``value_refs`` rows are [node, dag_id, key, hook blob or -1, value slot]."""

    op: ClassVar[str] = "dispatch"
    sender: str
    dag_id: Any
    tasks: list
    blobs: list = field(default_factory=list)


@message
class Done(Message):
    """Attempts that ended on the sender. ``results`` rows:
    [run_id, index, attempt, ok, started, finished, nbytes, error, blob, lost] where error is
    None or [exc_type, message, traceback], blob indexes the pickled exception (-1 if none),
    and lost is None or [node, function id] of an input that could not be fetched."""

    op: ClassVar[str] = "done"
    sender: str
    results: list
    blobs: list = field(default_factory=list)


@message
class Cancel(Message):
    """Cancel these attempts of a run (all of the run's tasks when ``indices`` is None)."""

    op: ClassVar[str] = "cancel"
    sender: str
    run_id: str
    indices: list | None = None


@message
class RunEnded(Message):
    """A run the sender orchestrated is over: per-run state (cancellations) may go."""

    op: ClassVar[str] = "run_ended"
    sender: str
    run_id: str


# ---- the result store -----------------------------------------------------------------

@message
class Fetch(Message):
    """Ask for stored values, many at once. ``rows``: [request, dag_id, key, target, hook]
    where hook is -1 or the blob holding a serialization hook to apply on the holder's node
    before sending (``target`` is the consumer's node)."""

    op: ClassVar[str] = "fetch"
    sender: str
    rows: list
    blobs: list = field(default_factory=list)


@message
class Value(Message):
    """Replies to Fetch, many at once. ``rows``: [request, error, blob]: blob indexes the
    value's frames, or is -1 with ``error`` saying why there is none."""

    op: ClassVar[str] = "value"
    sender: str
    rows: list
    blobs: list = field(default_factory=list)


@message
class ValuePart(Message):
    """One part of a large reply to Fetch: ``blobs[0][0]`` goes at ``offset`` of frame
    ``frame`` of the value, whose frames have ``sizes``; ``index`` of ``total`` parts."""

    op: ClassVar[str] = "value_part"
    sender: str
    request: int
    index: int
    total: int
    sizes: list
    frame: int
    offset: int
    blobs: list = field(default_factory=list)


@message
class PartAck(Message):
    """The receiver has part ``index``: the sender may send another."""

    op: ClassVar[str] = "part_ack"
    sender: str
    request: int
    index: int


@message
class Store(Message):
    """Store a value on the receiver (``store_value`` from a peer)."""

    op: ClassVar[str] = "store"
    sender: str
    dag_id: Any
    key: Any
    blobs: list = field(default_factory=list)


@message
class Clear(Message):
    op: ClassVar[str] = "clear"
    sender: str
    dag_id: Any


@message
class Locate(Message):
    """Where are these values of a DAG? The receiver answers with Located (``get_result``
    and ``synchronize`` ask every peer when their own node does not know)."""

    op: ClassVar[str] = "locate"
    sender: str
    request: int
    dag_id: Any
    keys: list


@message
class Located(Message):
    """Replies to Locate: ``holders[i]`` is the node holding ``keys[i]`` (the sender itself if
    stored there, else the node its data-location registry names) or None."""

    op: ClassVar[str] = "located"
    sender: str
    request: int
    holders: list


@message
class Ping(Message):
    op: ClassVar[str] = "ping"
    sender: str
    request: int


@message
class Pong(Message):
    op: ClassVar[str] = "pong"
    sender: str
    request: int
    stats: dict


# ---- node <-> its worker processes ---------------------------------------------------

@message
class WorkerReady(Message):
    op: ClassVar[str] = "w_ready"
    worker: int
    pid: int


@message
class WorkerRun(Message):
    """Jobs for a worker: rows [job_id, tree, first, count]; a tree's blob numbers index
    its own ``blobs[first:first + count]``."""

    op: ClassVar[str] = "w_run"
    jobs: list
    blobs: list = field(default_factory=list)


@message
class WorkerDone(Message):
    """Rows [job_id, ok, started, finished, error, blob]: ``blob`` indexes the pickled value
    (ok) or the pickled exception (-1 if it would not pickle); error is None or
    [exc_type, message, traceback]."""

    op: ClassVar[str] = "w_done"
    worker: int
    results: list
    blobs: list = field(default_factory=list)


@message
class WorkerStop(Message):
    op: ClassVar[str] = "w_stop"

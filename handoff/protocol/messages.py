"""Every message that crosses a socket, declared once.

A message is a frozen, slotted dataclass with a unique ``op``. Its plain fields travel in a
msgpack header, checked against their annotations at decode (rows and argument trees are the
typed structs of ``rows.py``); a message with ``blobs`` also carries opaque byte frames (pickled
values, out-of-band buffers) after the header, never copied or inspected by the codec.

A payload blob is ``[code]`` or ``[code, args]``: ``code`` a cloudpickled ``(callable,
bound_args)``, the same frame for every function of a run that runs that callable (so it keys
run-time estimates and the workers' code caches); ``args`` the function's own extra arguments, a
pickled list appended to ``bound_args``.
"""

from __future__ import annotations

from dataclasses import Field, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, get_type_hints

from handoff.protocol.rows import (
    FetchRow, JobResultRow, JobRow, MemberRow, ResultRow, TaskRow, ValueRow,
)

if TYPE_CHECKING:  # typing.dataclass_transform is 3.11+; mypy ships typing_extensions' stubs
    from typing_extensions import dataclass_transform
else:
    def dataclass_transform(**_: Any) -> Any:
        return lambda decorator: decorator

VERSION = 1

REGISTRY: dict[str, type["Message"]] = {}


class Message:
    op: ClassVar[str] = ""
    _names: ClassVar[tuple[str, ...]] = ()  # the plain fields, in wire order
    _types: ClassVar[tuple[Any, ...]] = ()  # their annotations, which the codec decodes to
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
    hints = get_type_hints(cls)
    cls._names = tuple(f.name for f in plain)
    cls._types = tuple(hints[f.name] for f in plain)
    REGISTRY[cls.op] = cls
    return cls


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
    rows: list[MemberRow]


@message
class Leave(Message):
    op: ClassVar[str] = "leave"
    sender: str


# ---- task dispatch --------------------------------------------------------------------

@message
class Dispatch(Message):
    """Tasks for the receiving node to run; a task's own blobs (payloads, hooks, and empty
    value slots its refs fill) are ``blobs[first:first + count]``."""

    op: ClassVar[str] = "dispatch"
    sender: str
    dag_id: Any
    tasks: list[TaskRow]
    blobs: list = field(default_factory=list)


@message
class Done(Message):
    """Attempts that ended on the sender; a row's ``blob`` indexes ``blobs``."""

    op: ClassVar[str] = "done"
    sender: str
    results: list[ResultRow]
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
    """Ask for stored values, many at once (a row's hook indexes ``blobs``)."""

    op: ClassVar[str] = "fetch"
    sender: str
    rows: list[FetchRow]
    blobs: list = field(default_factory=list)


@message
class Value(Message):
    """Replies to Fetch, many at once (a row's blob indexes ``blobs``)."""

    op: ClassVar[str] = "value"
    sender: str
    rows: list[ValueRow]
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


# ---- cluster status (python -m handoff status, the dashboard) -------------------------

@message
class StatusQuery(Message):
    """A status client asks a node for the cluster's state; sent before (instead of) a hello
    and answered with a StatusReport on the same connection (handoff.node.status)."""

    op: ClassVar[str] = "status_query"
    request: int


@message
class StatusAsk(Message):
    """A member asks a peer for its own load, runs and recent failures."""

    op: ClassVar[str] = "status_ask"
    sender: str
    request: int


@message
class StatusReport(Message):
    """Replies to StatusAsk (one node's report) and to StatusQuery (the cluster's document)."""

    op: ClassVar[str] = "status_report"
    sender: str
    request: int
    report: dict


# ---- the result cache (handoff.cache) ----------------------------------------------------

@message
class CacheQuery(Message):
    """Which of these result-cache keys does your disk cache hold? (answered by CacheHeld)"""

    op: ClassVar[str] = "cache_query"
    sender: str
    request: int
    keys: list[str]


@message
class CacheClear(Message):
    """Empty your disk cache (answered by CacheHeld with the number of entries removed)."""

    op: ClassVar[str] = "cache_clear"
    sender: str
    request: int


@message
class CacheHeld(Message):
    op: ClassVar[str] = "cache_held"
    sender: str
    request: int
    keys: list[str]
    removed: int = 0


# ---- node <-> its worker processes ---------------------------------------------------

@message
class WorkerReady(Message):
    op: ClassVar[str] = "w_ready"
    worker: int
    pid: int


@message
class WorkerRun(Message):
    """Jobs for a worker (a row's tree indexes its own ``blobs[first:first + count]``)."""

    op: ClassVar[str] = "w_run"
    jobs: list[JobRow]
    blobs: list = field(default_factory=list)


@message
class WorkerDone(Message):
    """Jobs a worker ended (a row's blob indexes ``blobs``)."""

    op: ClassVar[str] = "w_done"
    worker: int
    results: list[JobResultRow]
    blobs: list = field(default_factory=list)


@message
class WorkerStop(Message):
    op: ClassVar[str] = "w_stop"

"""The typed rows and argument-tree nodes that messages carry, checked by the codec at decode.

Each is a frozen ``msgspec.Struct`` encoded as a msgpack array (``array_like``): on the wire a
row costs what a positional list did, and a malformed one fails at decode with the path of the
field. Fields typed ``Any`` hold user values (DAG ids, function ids): the codec pickles the ones
msgpack cannot carry as they are (see ``codec.py``).

Argument trees tell a worker how to build a call: a ``Leaf`` is the value in blob ``slot``; a
``Call`` calls the payload in blob ``payload`` with its children's values; a ``Hook`` applies the
hook in blob ``hook`` as ``fn(value, source, target, *extra)`` to its child's value.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Union

import msgspec

__all__ = [
    "Leaf", "Hook", "Call", "Tree", "ValueRef", "TaskRow", "ErrorRow", "LostInput", "ResultRow",
    "FetchRow", "ValueRow", "JobRow", "JobResultRow", "MemberStatus", "MemberRow",
]


class Leaf(msgspec.Struct, frozen=True, gc=False, array_like=True, tag="v"):
    """An argument's value: the frames in blob ``slot`` (filled by a fetch, or a local value)."""

    slot: int


class Hook(msgspec.Struct, frozen=True, gc=False, array_like=True, tag="h"):
    """A deserialization hook in blob ``hook`` applied to ``child``'s value."""

    hook: int
    source: str | None
    target: str
    child: Tree


class Call(msgspec.Struct, frozen=True, gc=False, array_like=True, tag="c"):
    """Call the payload in blob ``payload`` with the children's values, ``inclusion`` says how."""

    payload: int
    inclusion: str
    children: list[Tree]


Tree = Union[Leaf, Hook, Call]


class ValueRef(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """An input to fetch: ``key`` of DAG ``dag_id`` from ``node`` into blob ``slot``; ``hook`` is
    -1 or the blob of a serialization hook to run on the holder's node."""

    node: str
    dag_id: Any
    key: Any
    hook: int
    slot: int


class TaskRow(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """One task of a Dispatch; its own blobs are ``blobs[first:first + count]``."""

    run_id: str
    index: int
    attempt: int
    function_id: Any
    cost: dict[str, float] | None
    timeout: float | None
    tree: Call
    refs: list[ValueRef]
    first: int = 0
    count: int = 0
    cache_key: str = ""  # result-cache key: the value is written to the node's cache
    load: bool = False  # a cache hit here: load the value instead of computing it


class ErrorRow(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """An exception as text: its type's name, its message and the remote traceback."""

    exc_type: str
    message: str
    traceback: str


class LostInput(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """An input that could not be fetched: function ``function_id``'s value on ``node``."""

    node: str
    function_id: Any


class ResultRow(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """One attempt that ended (a Done row): ``blob`` indexes the pickled exception, -1 if none.

    For the run's record (all times ``time.time()`` on the executing node): ``worker`` is the
    worker slot that ran it (-1: none), ``fetch_start``/``fetch_end`` bound the fetch of its
    arguments (0.0 when it fetched none), ``bytes_in`` is what was fetched, ``nbytes`` the
    result's size."""

    run_id: str
    index: int
    attempt: int
    ok: bool
    started: float
    finished: float
    nbytes: int
    error: ErrorRow | None
    blob: int
    lost: LostInput | None
    worker: int = -1
    fetch_start: float = 0.0
    fetch_end: float = 0.0
    bytes_in: int = 0
    cached: bool = False  # loaded from the node's result cache, not computed


class FetchRow(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """One value asked for; ``hook`` is -1 or the blob of a hook to apply before sending it to
    ``target`` (the consumer's node)."""

    request: int
    dag_id: Any
    key: Any
    target: str
    hook: int


class ValueRow(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """The reply to one FetchRow: ``blob`` indexes the value's frames, or is -1 and ``error``
    says why there is none."""

    request: int
    error: str | None
    blob: int


class JobRow(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """One job for a worker; the tree's blob numbers index ``blobs[first:first + count]``."""

    job_id: int
    tree: Tree
    first: int
    count: int
    cache_path: str = ""  # write the result here too (the node's result cache) before reporting


class JobResultRow(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """One job a worker ended: ``blob`` indexes the pickled value (ok) or exception (-1 if it
    would not pickle)."""

    job_id: int
    ok: bool
    started: float
    finished: float
    error: ErrorRow | None
    blob: int


class MemberStatus(Enum):
    """A cluster member's status; the value is what a gossip row carries."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


class MemberRow(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """One member of a gossip digest (see node/cluster/membership.py for the merge rules)."""

    name: str
    address: str
    incarnation: int
    heartbeat: int
    status: MemberStatus
    caps: dict[str, float]
    caps_version: int
    free: dict[str, float]

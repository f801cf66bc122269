"""The messages and rows of streaming pipelines (``handoff.stream``), declared like the rest of
the wire: frozen messages with an ``op``, typed ``msgspec`` rows encoded as arrays.

A pipeline has stages (input functions and the functions that run as replicas), numbered in
topological order. The driver opens it on every node that hosts a replica (``StreamOpen``);
items then move between those nodes as ``StreamItems`` (peer to peer, value frames out of
band), each receiver returns credits as ``StreamAcks``, and the nodes that run sinks send
``StreamOut`` to the driver. Between a node and the worker process that holds a replica:
``ReplicaStart`` (run ``init``), ``ReplicaRun`` (items, or one batch), ``ReplicaDone``.

A stage's call is a ``StageCall`` tree: a ``Leaf``'s slot is the item's value from the stage's
slot-th upstream stage (an item's values are the slots' frames, in slot order); a ``StageHook``
applies an ``Argument``'s hooks to a slot's value; a nested ``StageCall`` is an inline function.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any, ClassVar, Union

import msgspec

from handoff.protocol.messages import Message, message
from handoff.protocol.rows import ErrorRow, Leaf

__all__ = [
    "StageHook", "StageCall", "StageArg", "StageRow", "ReplicaRow", "ItemRow", "AckRow", "OutRow",
    "BufferedRow", "ProgressRow", "ReplicaItemRow", "ReplicaResultRow",
    "StreamOpen", "StreamPlan", "StreamReady", "StreamItems", "StreamAcks", "StreamOut",
    "StreamForget", "StreamClose", "StreamBuffered", "StreamFlush", "StreamProgress", "StreamStop",
    "ReplicaStart", "ReplicaReady", "ReplicaRun", "ReplicaDone",
]


class StageHook(msgspec.Struct, frozen=True, gc=False, array_like=True, tag="sh"):
    """An Argument's hooks (blobs ``ser`` and ``deser`` of the stage, -1 for none) applied to
    the value in ``slot`` when it was made on another node (always, if ``always``)."""

    ser: int
    deser: int
    always: bool
    slot: int


class StageCall(msgspec.Struct, frozen=True, gc=False, array_like=True, tag="sc"):
    """Call the payload in stage blob ``payload`` with the children's values."""

    payload: int
    inclusion: str
    children: list[StageArg]


StageArg = Union[Leaf, StageHook, StageCall]


class StageRow(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """One stage: an input (``call`` None) or a function run by ``parallelism`` replicas.
    ``slots``: the upstream stage of each value slot; ``batch_size`` 0 means no batching;
    ``init`` is -1 or the blob of the init payload; its blobs are ``blobs[first:first+count]``."""

    index: int
    consumers: list[int]
    slots: list[int]
    parallelism: int
    batch_size: int
    batch_timeout: float
    init: int
    sink: bool
    call: StageCall | None
    cost: dict[str, float] | None
    first: int = 0
    count: int = 0


class ReplicaRow(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """Replica ``replica`` of ``stage`` lives on ``node``; ``generation`` grows each time it is
    re-created, so that acks and results of an older one are told apart."""

    stage: int
    replica: int
    node: str
    generation: int


class ItemRow(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """Item ``seq``'s value from stage ``edge`` (made on ``source``) for slot ``slot`` of
    replica ``replica`` of ``stage``; ``blob`` indexes the message's blobs."""

    seq: int
    stage: int
    replica: int
    slot: int
    edge: int
    source: str
    blob: int


class AckRow(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """``count`` items that stage ``edge`` sent to ``replica`` of ``stage`` are done there:
    the sender may send as many more."""

    edge: int
    stage: int
    replica: int
    generation: int
    count: int


class OutRow(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """A sink's value for item ``seq`` (``blob``), or the error that ended the item at ``stage``."""

    seq: int
    stage: int
    error: ErrorRow | None
    blob: int


class BufferedRow(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """The items a replica of a batching stage holds in its partial batch."""

    stage: int
    replica: int
    seqs: list[int]


class ProgressRow(msgspec.Struct, frozen=True, gc=False, array_like=True):
    stage: int
    replica: int
    items: int


class ReplicaItemRow(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """An item for a replica's worker: its slots' values are ``blobs[first:first+count]``,
    made on ``sources`` (one node name per slot)."""

    seq: int
    first: int
    count: int
    sources: list[str]


class ReplicaResultRow(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """An item the worker ended: its value in ``blobs[blob]``, or ``error``."""

    seq: int
    error: ErrorRow | None
    blob: int


# ---- between nodes ---------------------------------------------------------------------

@message
class StreamOpen(Message):
    """Open pipeline ``stream`` on the receiver: every stage (``function_ids[i]`` is stage i's
    id) and the current placement of every replica; the receiver starts those it hosts."""

    op: ClassVar[str] = "s_open"
    sender: str
    stream: str
    function_ids: Any
    stages: list[StageRow]
    replicas: list[ReplicaRow]
    window: int
    max_retries: int
    blobs: list = field(default_factory=list)


@message
class StreamPlan(Message):
    """The placement changed (replicas re-created): start the new local ones, route to the rest."""

    op: ClassVar[str] = "s_plan"
    sender: str
    stream: str
    replicas: list[ReplicaRow]


@message
class StreamReady(Message):
    """A replica ran its init (``error`` None) or could not."""

    op: ClassVar[str] = "s_ready"
    sender: str
    stream: str
    stage: int
    replica: int
    generation: int
    error: ErrorRow | None


@message
class StreamItems(Message):
    op: ClassVar[str] = "s_items"
    sender: str
    stream: str
    rows: list[ItemRow]
    blobs: list = field(default_factory=list)


@message
class StreamAcks(Message):
    op: ClassVar[str] = "s_acks"
    sender: str
    stream: str
    rows: list[AckRow]


@message
class StreamOut(Message):
    """Sink values and item errors, for the driver."""

    op: ClassVar[str] = "s_out"
    sender: str
    stream: str
    rows: list[OutRow]
    blobs: list = field(default_factory=list)


@message
class StreamForget(Message):
    """These items are settled (failed or expired): drop what is held of them; with
    ``expired``, a replica running one is replaced."""

    op: ClassVar[str] = "s_forget"
    sender: str
    stream: str
    seqs: list[int]
    expired: bool


@message
class StreamClose(Message):
    """No more input: report partial batches (StreamBuffered) from now on."""

    op: ClassVar[str] = "s_close"
    sender: str
    stream: str


@message
class StreamBuffered(Message):
    op: ClassVar[str] = "s_buffered"
    sender: str
    stream: str
    rows: list[BufferedRow]


@message
class StreamFlush(Message):
    """Every item still in flight waits in a partial batch: run those batches now."""

    op: ClassVar[str] = "s_flush"
    sender: str
    stream: str


@message
class StreamProgress(Message):
    op: ClassVar[str] = "s_progress"
    sender: str
    stream: str
    rows: list[ProgressRow]


@message
class StreamStop(Message):
    """End the pipeline: its replicas stop and their claims are released."""

    op: ClassVar[str] = "s_stop"
    sender: str
    stream: str


# ---- between a node and the worker process that holds a replica -----------------------

@message
class ReplicaStart(Message):
    """Become a replica: decode the call (and init), run init; answer ReplicaReady."""

    op: ClassVar[str] = "r_start"
    node: str
    call: StageCall
    init: int
    batch: bool
    blobs: list = field(default_factory=list)


@message
class ReplicaReady(Message):
    op: ClassVar[str] = "r_ready"
    error: ErrorRow | None


@message
class ReplicaRun(Message):
    """Items to run one by one, or (``batch``) as one batch."""

    op: ClassVar[str] = "r_run"
    rows: list[ReplicaItemRow]
    batch: bool
    blobs: list = field(default_factory=list)


@message
class ReplicaDone(Message):
    op: ClassVar[str] = "r_done"
    rows: list[ReplicaResultRow]
    blobs: list = field(default_factory=list)

"""What goes into the orchestrator and what comes out: small immutable values.

Events carry everything the state machine needs, time included (it never reads a clock).
Instructions say what the node layer must do; it turns them into wire messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import msgspec

from handoff.dag import CompiledGraph, Function
from handoff.errors import HandoffError

__all__ = [
    "RunSpec",
    "FunctionStats",
    "ErrorInfo",
    "TaskFinished",
    "NodeJoined",
    "NodeUpdated",
    "NodeLost",
    "CancelRun",
    "Tick",
    "ResultLost",
    "Event",
    "Dispatch",
    "CancelTasks",
    "RunFinished",
    "ReleaseRun",
    "Instruction",
]


# -- a run's input and output --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FunctionStats:
    """How one function's result was produced: where, in how many attempts, and when."""

    node: str | None
    attempts: int
    started_at: float | None
    finished_at: float | None
    cached: bool = False  # loaded from a node's result cache, not computed


@dataclass(eq=False)
class RunSpec:
    """What the node layer submits to start a run.

    ``functions`` are in index order (``functions[i].id == graph.ids[i]``). With
    ``local_only`` every function runs on the orchestrator's own node and costs and pins
    are ignored (``execute_local``).

    ``deadline`` is when the run's timeout expires, on the same clock as the events'
    ``now`` (submit time + timeout), or None without a timeout. It only decides how long
    work pinned to a lost node waits for that node to come back (see ``Tick``); the node
    layer still enforces the timeout itself with ``CancelRun``.
    """

    run_id: str
    dag_id: Any
    graph: CompiledGraph
    functions: Sequence[Function]
    strategy: str = "first_available"
    max_retries: int = 3
    max_concurrency: int | None = None
    now: float = 0.0
    local_only: bool = False
    deadline: float | None = None


# -- events --------------------------------------------------------------------------------


class _Value(msgspec.Struct, frozen=True):
    """Events and instructions: immutable, compared by value; msgspec's frozen structs are
    built in C, several times faster than frozen dataclasses (one TaskFinished per attempt)."""


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """What a failed attempt raised, as reported by the node that ran it.

    ``exc_blob`` is the pickled exception (its frames) when it could be pickled, so the caller
    can chain the original; the state machine never unpickles it.
    """

    exc_type: str
    message: str
    traceback: str = ""
    exc_blob: list | None = None


class TaskFinished(_Value, frozen=True):
    """Attempt ``attempt`` of function ``index`` ended on ``node`` (``ok`` or with ``error``)."""

    run_id: str
    index: int
    attempt: int
    node: str
    ok: bool
    error: ErrorInfo | None = None
    started: float = 0.0
    finished: float = 0.0


class NodeJoined(_Value, frozen=True):
    """A node is live with these capacities (registers it in the ledger)."""

    name: str
    caps: Mapping[str, float] = msgspec.field(default_factory=dict)


class NodeUpdated(_Value, frozen=True):
    """A node's capacities changed; its current claims are kept."""

    name: str
    caps: Mapping[str, float] = msgspec.field(default_factory=dict)


class NodeLost(_Value, frozen=True):
    """A node was declared dead: its work is re-placed and its results recomputed.

    Work pinned to it waits for it to come back (``NodeJoined`` with the same name) when
    its run has a ``deadline`` still ahead of ``now``; otherwise that run fails with
    ``NodeLostError``.
    """

    name: str
    now: float = 0.0


class Tick(_Value, frozen=True):
    """Time passed (sent every fraction of a second): runs whose work has waited for a lost
    pinned node past their ``deadline`` fail with ``NodeLostError``. O(1) when none waits."""

    now: float


class CancelRun(_Value, frozen=True):
    """Stop a run (user cancel or run timeout); ``reason`` is what the run ends with."""

    run_id: str
    reason: HandoffError


class ResultLost(_Value, frozen=True):
    """The result of ``index`` could not be fetched from ``node``: recompute it.

    When the fetch was made for a task (``consumer``, ``attempt``), that attempt is over,
    does not count as a failure, and the consumer runs again once the input is back. If
    the result has moved since (recomputed elsewhere), only the consumer reruns.
    """

    run_id: str
    index: int
    consumer: int | None = None
    attempt: int | None = None
    node: str | None = None


Event = (
    TaskFinished
    | NodeJoined
    | NodeUpdated
    | NodeLost
    | Tick
    | CancelRun
    | ResultLost
)


# -- instructions --------------------------------------------------------------------------


class Dispatch(_Value, frozen=True):
    """Run these ``(index, attempt)`` tasks of a run on ``node``.

    Their resources are claimed in the orchestrator's ledger, except for tasks queued ahead
    (``RunState.queued_ahead()``): the node runs those once its own resources free up, as it
    does for any task that arrives while they are busy.
    """

    run_id: str
    node: str
    tasks: list[tuple[int, int]]


class CancelTasks(_Value, frozen=True):
    """Stop these in-flight functions of a run on ``node``; their results no longer matter."""

    run_id: str
    node: str
    indices: list[int]


class RunFinished(_Value, frozen=True):
    """The run is over: ``error`` is None on success; ``error_info`` reports the failed attempt."""

    run_id: str
    error: HandoffError | None = None
    error_info: ErrorInfo | None = None


class ReleaseRun(_Value, frozen=True):
    """The run is over: ``nodes`` may drop per-run caches (fetched arguments); results stay."""

    run_id: str
    nodes: list[str]


Instruction = Dispatch | CancelTasks | RunFinished | ReleaseRun

"""One task's state in a run: a status from ``TaskStatus``, moved only along allowed transitions.

Modelled on dask's worker ``TaskState`` and its transition table: every status change goes
through ``transition``, which refuses a move the table does not list with a
``TaskStateError`` naming both statuses. The run's other containers (ready queue, parked
classes, in-flight map) are indexes over these states, checked by ``validate_state``.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["TaskState", "TaskStateError", "TaskStatus", "ALLOWED", "transition"]


class TaskStatus(IntEnum):
    """Where a task is in its run. In flight = ``QUEUED_AHEAD`` or ``DISPATCHED``."""

    INLINE = 0  # never scheduled on its own: evaluated inside each consumer's task
    WAITING = 1  # some input is not complete yet
    READY = 2  # inputs complete; in the run's queue, not tried yet
    PARKED = 3  # tried, fits no node's free resources now: waits in its cost class
    BLOCKED = 4  # an input's result was lost and is being recomputed: waits for it
    HELD = 5  # pinned to a lost node the run waits for (until the run's deadline)
    QUEUED_AHEAD = 6  # dispatched ahead of its resources: holds no claim yet
    DISPATCHED = 7  # dispatched holding its claim (running, or about to on its node)
    DONE = 8  # result held by ``location``
    FAILED = 9  # its attempts ran out: the run ended with its error
    CANCELLED = 10  # the run ended before it completed


S = TaskStatus
_PLACEABLE = (S.READY, S.PARKED)
# old status -> statuses it may move to
ALLOWED: dict[TaskStatus, frozenset[TaskStatus]] = {
    S.INLINE: frozenset(),
    S.WAITING: frozenset({S.READY, S.CANCELLED}),
    S.READY: frozenset({S.PARKED, S.BLOCKED, S.HELD, S.QUEUED_AHEAD, S.DISPATCHED, S.CANCELLED}),
    S.PARKED: frozenset({S.READY, S.BLOCKED, S.HELD, S.QUEUED_AHEAD, S.DISPATCHED, S.CANCELLED}),
    S.BLOCKED: frozenset({S.READY, S.CANCELLED}),
    S.HELD: frozenset({S.READY, S.CANCELLED}),
    # queued ahead: claims on its node (DISPATCHED), completes early (DONE), fails and is
    # retried or cut short (READY), runs out of attempts (FAILED), or its run ends
    S.QUEUED_AHEAD: frozenset({S.DISPATCHED, S.DONE, S.READY, S.FAILED, S.CANCELLED}),
    S.DISPATCHED: frozenset({S.DONE, S.READY, S.FAILED, S.CANCELLED}),
    S.DONE: frozenset({S.READY}),  # its result was lost: recomputed
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}
# the same table as bit masks, indexed by status: one list index and a shift per check
_MASKS = [sum(1 << new for new in ALLOWED[old]) for old in TaskStatus]


class TaskStateError(AssertionError):
    """A task was moved along a transition the table does not allow: a scheduler bug."""

    def __init__(self, index: int, old: TaskStatus, new: TaskStatus, run_id: str = ""):
        self.index, self.old, self.new, self.run_id = index, old, new, run_id
        where = f" of run {run_id!r}" if run_id else ""
        super().__init__(
            f"task {index}{where}: illegal transition {TaskStatus(old).name} -> "
            f"{TaskStatus(new).name}"
        )

    def __reduce__(self) -> tuple[type[TaskStateError], tuple[int, TaskStatus, TaskStatus, str]]:
        return (type(self), (self.index, self.old, self.new, self.run_id))


class TaskState:
    """One function of a run: its status and everything recorded about its attempts."""

    __slots__ = (
        "index",
        "status",
        "attempt",
        "failures",
        "recoveries",
        "node",
        "location",
        "avoid",
        "recompute",
    )

    def __init__(self, index: int, inline: bool = False):
        self.index = index
        self.status = S.INLINE if inline else S.WAITING
        self.attempt = 0  # number of the latest dispatch (a stale report's differs)
        self.failures = 0  # failed attempts: these count against max_retries
        self.recoveries = 0  # re-runs after a lost node or result: these do not
        self.node: str | None = None  # where it is in flight
        self.location: str | None = None  # the node holding its result
        self.avoid: str | None = None  # a retry prefers another node than this one
        self.recompute = False  # completed once, its result lost: being computed again

    def __repr__(self) -> str:
        where = f" on {self.node}" if self.node else ""
        return f"<TaskState {self.index} {self.status.name}{where} attempt={self.attempt}>"

    @property
    def in_flight(self) -> bool:
        return self.status == S.DISPATCHED or self.status == S.QUEUED_AHEAD


def transition(task: TaskState, new: TaskStatus, run_id: str = "") -> None:
    """Move ``task`` to ``new``; a move the table does not allow raises ``TaskStateError``."""
    if not _MASKS[task.status] >> new & 1:
        raise TaskStateError(task.index, task.status, new, run_id)
    task.status = new

"""Pure state machine for DAG runs: events in, instructions out; no sockets, threads or clocks.

The node layer feeds ``Orchestrator.submit(RunSpec)`` and ``Orchestrator.handle(*events)``
and carries out the instructions they return. All runs share the cluster
``ResourceLedger``: a task's claim is taken when it is dispatched (or, queued ahead, when
its node's resources free up) and released when its attempt ends (or its run stops), so the
ledger never over-commits.

Placement, in short:

- A function is placed once its inputs are complete (``ReadyTracker``) and none of them is
  being recomputed. Functions with a cost go through ``_core.allocate`` with the run's
  strategy; zero-cost ones only need a slot (below).
- Slots: each node takes at most ``slots`` in-flight tasks from this orchestrator (64 by
  default, ``set_node_slots``). That spreads zero-cost work: ``load_balanced`` sends it to
  the node with the fewest in-flight tasks, the other strategies fill nodes in ledger order.
- A function that fits some node's total capacity but nothing's free resources now waits,
  "parked" by cost class; parked classes are retried whenever resources are released or
  nodes join, and a class whose head does not fit is skipped for the rest of that round,
  so waiting work costs O(classes) per round, not O(waiting functions).
- Lookahead: an executing node queues a task whose resources are busy and starts it as
  soon as they free up, so such a function need not wait here for a TaskFinished round
  trip: up to ``lookahead`` tasks per node (``Orchestrator(lookahead=1)``; 0 turns it off)
  are dispatched "queued ahead" to a node whose total capacity fits them (pins and
  collocation groups honoured), the node with the fewest queued-ahead tasks first, then by
  the run's strategy. They hold no claim, so the ledger never over-commits; they count as
  in flight (slots, max_concurrency, cancels, lost nodes). When claims on a node are
  released (or it grows), its queued-ahead tasks take their claims, oldest first, up to the
  first that does not fit, before anything else is placed. One that finishes before that
  (the node could start it early) simply completes: it has no claim to give back. A node
  that frees resources (or joins) with nothing queued ahead on it, and that ready work
  leaves free, takes tasks queued ahead on other nodes that fit them now: each is cancelled
  where it waited and dispatched there with its claim as a new attempt, so a task queued
  behind long work never waits while another node could run it (pinned tasks and
  collocation group members stay on their node).
- Fairness: runs take turns: each round, runs with work are served least recently served
  first (oldest first among equals), each with an equal share of the free slots, then
  leftovers go round again in the same order.
- Collocation means the same node, not the same time: the first member of a group to be
  placed picks the group's node among those whose total capacity fits each member alone,
  preferring one that fits their summed cost; the others go there and the ledger runs
  them one after another when they do not fit side by side.
- When a costed function's chosen node has no free slot, or the function must avoid the
  node it just failed on, or it is the first of a collocation group, the choice is made
  among the allowed nodes, ranked by ``_core.rank_nodes`` (the allocator's own scores;
  ``handoff.scheduler.placement``).

Task state: each function of a run has one ``TaskState`` whose ``TaskStatus`` changes only
along the table in ``handoff.scheduler.tasks``; ``Orchestrator.validate_state()`` checks the
containers kept beside it (tests call it after every step; ``HANDOFF_DEBUG_STATE=1`` makes
nodes call it after every event).

Lost nodes: work that ran there is re-placed and results only they held are recomputed
(neither counts as a failed attempt). Work pinned to the lost node (``Function.node``,
members of a collocation group with such a pin, or a whole ``local_only`` run) cannot
move: if its run has a ``deadline`` it is held until a node of that name joins again
(then placed like any other work, with new attempt numbers), and the run fails with
``NodeLostError`` on the first ``Tick`` past the deadline; without a deadline the run fails
at once. Collocation groups with no explicit pin are not held: they are placed anew, all
together, wherever they fit.
"""

from handoff.scheduler.events import (
    CancelRun,
    CancelTasks,
    Dispatch,
    ErrorInfo,
    Event,
    FunctionStats,
    Instruction,
    NodeJoined,
    NodeLost,
    NodeUpdated,
    ReleaseRun,
    ResultLost,
    RunFinished,
    RunSpec,
    TaskFinished,
    Tick,
)
from handoff.scheduler.orchestrator import DEFAULT_LOOKAHEAD, DEFAULT_SLOTS, Orchestrator
from handoff.scheduler.run import RunState
from handoff.scheduler.tasks import TaskState, TaskStateError, TaskStatus

__all__ = [
    "Orchestrator",
    "DEFAULT_SLOTS",
    "DEFAULT_LOOKAHEAD",
    "RunSpec",
    "RunState",
    "TaskState",
    "TaskStatus",
    "TaskStateError",
    "FunctionStats",
    "Event",
    "ErrorInfo",
    "TaskFinished",
    "NodeJoined",
    "NodeUpdated",
    "NodeLost",
    "Tick",
    "CancelRun",
    "ResultLost",
    "Instruction",
    "Dispatch",
    "CancelTasks",
    "RunFinished",
    "ReleaseRun",
]

"""Pure state machine for DAG runs: events in, instructions out; no sockets, threads or clocks."""

from handoff.scheduler.events import (
    CancelRun,
    CancelTasks,
    Dispatch,
    ErrorInfo,
    Event,
    Instruction,
    NodeJoined,
    NodeLost,
    NodeUpdated,
    ReleaseRun,
    ResultCopied,
    ResultLost,
    RunFinished,
    TaskFinished,
)
from handoff.scheduler.orchestrator import DEFAULT_SLOTS, Orchestrator
from handoff.scheduler.run import FunctionStats, RunSpec, RunState

__all__ = [
    "Orchestrator",
    "DEFAULT_SLOTS",
    "RunSpec",
    "RunState",
    "FunctionStats",
    "Event",
    "ErrorInfo",
    "TaskFinished",
    "NodeJoined",
    "NodeUpdated",
    "NodeLost",
    "CancelRun",
    "ResultLost",
    "ResultCopied",
    "Instruction",
    "Dispatch",
    "CancelTasks",
    "RunFinished",
    "ReleaseRun",
]

"""Handoff: DAGs of Python functions, run on one machine or a cluster, placed by resources."""

from handoff.dag import DAG, Argument, Collocated, Function, new
from handoff.errors import (
    AllocationError,
    AuthenticationError,
    CycleError,
    DuplicateFunctionError,
    FunctionError,
    HandoffError,
    InvalidFunctionError,
    ItemError,
    MissingFunctionError,
    NodeLostError,
    ProtocolError,
    ResultNotFound,
    TimeoutError,
    ValidationError,
)
from handoff.allocation import Allocator, SimpleAllocator
from handoff.resources import ResourceTracker, SimpleResourceTracker
from handoff.scheduler import FunctionStats
from handoff.node.runs import ExecutionResult
from handoff.api import (
    cache_clear,
    clear,
    cluster_status,
    dashboard_url,
    discover_nodes,
    execute,
    execute_distributed,
    execute_local,
    get_local_value,
    get_result,
    get_value,
    lookup_data_location,
    node_name,
    node_stats,
    register_data_location,
    register_local_node,
    register_node,
    resources_available,
    start,
    stop,
    store_result,
    store_value,
    synchronize,
)
from handoff.decorator import Ref, RemoteFunction, dag_of, fn, run
from handoff.stream.pipeline import Pipeline, stream
from handoff.executor import Executor
from handoff.aio import execute_async, run_async

__version__ = "0.1.0"

__all__ = [
    "DAG", "Function", "Argument", "Collocated", "new",
    "HandoffError", "ValidationError", "DuplicateFunctionError", "MissingFunctionError",
    "CycleError", "InvalidFunctionError", "AllocationError", "FunctionError", "NodeLostError",
    "ResultNotFound", "TimeoutError", "ProtocolError", "AuthenticationError",
    "Allocator", "SimpleAllocator", "ResourceTracker", "SimpleResourceTracker",
    "FunctionStats", "ExecutionResult",
    "execute", "execute_distributed", "execute_local", "start", "stop", "node_name", "node_stats",
    "register_local_node", "register_node", "resources_available", "discover_nodes",
    "store_value", "get_local_value", "get_value", "get_result", "synchronize", "store_result",
    "register_data_location", "lookup_data_location", "clear",
    "cache_clear", "fn", "Ref", "RemoteFunction", "run", "dag_of",
    "cluster_status", "dashboard_url",
    "stream", "Pipeline", "ItemError",
    "Executor", "execute_async", "run_async",
]

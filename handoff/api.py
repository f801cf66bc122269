"""The module-level facade: start a node in this process, run DAGs, reach the stores."""

from __future__ import annotations

import atexit
import dataclasses
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from numbers import Integral
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterable, Mapping

from handoff._core.strategies import STRATEGIES
from handoff.config import NodeConfig, check_resources
from handoff.dag import DAG, retries_problem, timeout_problem
from handoff.errors import HandoffError, ResultNotFound
from handoff.errors import TimeoutError as HandoffTimeout
from handoff.observe.progress import wait_for_result
from handoff.node.runs import ExecutionResult, prepare_run
from handoff.node.data.values import dumps_value, loads_value

if TYPE_CHECKING:
    from handoff.node.server import Node

__all__ = [
    "start", "stop", "node_name", "node_stats", "execute", "execute_distributed", "execute_local",
    "register_local_node", "register_node", "resources_available", "discover_nodes",
    "store_value", "get_local_value", "get_value", "get_result", "synchronize", "store_result",
    "register_data_location", "lookup_data_location", "clear", "current_node", "dashboard_url",
    "cluster_status", "cache_clear",
]

EXECUTE_OPTIONS = ("max_retries", "allocation_strategy", "max_concurrency", "timeout", "progress", "allocator",
                   "record", "cache")
START_TIMEOUT = 60.0
MAX_CONCURRENCY = 1_000_000

_lock = threading.RLock()
_node: Node | None = None


def start(
    name: str | None = None,
    listen: str | None = None,
    join: str | list[str] | None = None,
    resources: Mapping[str, float] | None = None,
    workers: int | None = None,
    key_file: str | None = None,
    *,
    insecure: bool = False,
    executor: str = "process",
    suspect_after: float = 1.0,
    dead_after: float = 2.0,
    join_timeout: float = 10.0,
    shared_memory: bool = True,
    store_limit: int | str | None = None,
    dashboard: str | None = None,
    cache_dir: str | None = None,
    cache_size: int | str | None = None,
) -> str:
    """Start the embedded node in this process (the driver becomes a full peer); returns its name.

    ``dashboard="127.0.0.1:8787"`` also serves the live dashboard there (port 0: a free
    port; ``dashboard_url()`` tells where)."""
    global _node
    from handoff.node.server import Node
    from handoff.security import load_curve

    with _lock:
        if _node is not None:
            raise HandoffError(f"a node ({_node.name!r}) is already running here; call handoff.stop() first")
        config = NodeConfig(
            name=name or "", listen=listen or "tcp://127.0.0.1:0", join=join or (),
            resources=dict(resources) if resources else {}, workers=workers or 0,
            executor=executor, key_file=key_file, insecure=insecure,
            suspect_after=suspect_after, dead_after=dead_after, join_timeout=join_timeout,
            shared_memory=shared_memory, store_limit=store_limit, dashboard=dashboard,
            cache_dir=cache_dir or "", cache_size=cache_size,
        )
        curve = load_curve(config)
        node = Node(config, curve).start()
        try:
            _wait_ready(node, config)
        except BaseException:
            node.stop()
            raise
        _node = node
        return node.name


def _wait_ready(node: Node, config: NodeConfig) -> None:
    # read on the loop thread, which owns it
    def state() -> tuple[int, str | None, bool, str | None]:
        pool = node.pool
        assert pool is not None  # start() made it
        return pool.ready_count(), pool.broken, node.joined(), node.join_error

    deadline = time.monotonic() + START_TIMEOUT
    while True:
        ready, broken, _, _ = node.call(state).result()
        if ready:
            break
        if broken:
            raise HandoffError(f"node {node.name!r}: {broken}")
        if time.monotonic() > deadline:
            raise HandoffError(f"node {node.name!r}: no worker process started within {START_TIMEOUT:g} s")
        time.sleep(0.01)
    deadline = time.monotonic() + config.join_timeout
    while True:
        _, _, joined, join_error = node.call(state).result()
        if joined:
            break
        if join_error:
            raise HandoffError(join_error)
        if time.monotonic() > deadline:
            raise HandoffError(
                f"could not join the cluster at {', '.join(config.join)} within "
                f"{config.join_timeout:g} s: no node answered (is the address right and the node up?)"
            )
        time.sleep(0.02)


def stop() -> None:
    """Stop the embedded node: its workers end and its peers are told."""
    global _node
    with _lock:
        node, _node = _node, None
    if node is not None:
        node.stop()


atexit.register(stop)


def current_node() -> Node:
    """The embedded node, started with default settings on first use."""
    with _lock:
        if _node is None:
            start()
        assert _node is not None  # start() set it or raised
        return _node


def node_name() -> str:
    """The local (embedded) node's name; starts it with default settings if needed."""
    return current_node().name


def node_stats(name: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
    """A node's state as plain data: this process's node, or member ``name`` asked over the wire.

    The keys (docs/guide.md, "Observing a node"): ``name``, ``address``, ``members``,
    ``membership``, ``ledger``, ``runs``, ``validating_state``, ``pool``, ``store``,
    ``counters``, ``dropped_messages``, ``blocked_peers``, ``rejected_connections``, ``curve``,
    ``dashboard`` (its URL, or None).

    With no ``name`` the local node is started with default settings if needed, like the other
    calls; asking a peer needs this process's node running and joined to its cluster (a node
    answers members only). Raises ``HandoffError`` when ``name`` is not a member or is lost
    before it answers, ``handoff.TimeoutError`` when no answer comes within ``timeout`` s.
    """
    problem = timeout_problem(timeout)
    if problem:
        raise ValueError(problem)
    n: Node | None
    if name is None:
        n = current_node()
    else:
        with _lock:
            n = _node
        if n is None:
            raise HandoffError(
                f"node_stats({name!r}) asks through this process's node, and none is running: "
                "start it joined to the cluster first (handoff.start(join=...))")
    try:
        if name is None or name == n.name:
            return n.call(n.node_stats).result(timeout)
        return n.peer_stats(name, timeout)
    except FutureTimeout:
        raise HandoffTimeout(f"waiting for node {name or n.name!r} to report its stats", timeout) from None


def dashboard_url() -> str | None:
    """The URL of this process's node's dashboard (``start(dashboard=...)``), None without one."""
    with _lock:
        node = _node
    return node.dashboard.url if node is not None and node.dashboard is not None else None


def cluster_status(timeout: float = 5.0) -> dict[str, Any]:
    """The cluster's state as ``python -m handoff status --json`` prints it, asked through
    this process's node (started with default settings if needed)."""
    problem = timeout_problem(timeout)
    if problem:
        raise ValueError(problem)
    n = current_node()
    fut: Future = Future()

    def answer(doc: dict) -> None:
        if not fut.done():
            fut.set_result(doc)

    n.post(n.status.gather, answer)
    try:
        result: dict[str, Any] = fut.result(timeout)
        return result
    except FutureTimeout:
        raise HandoffTimeout("waiting for the cluster's status", timeout) from None


# ---- running DAGs --------------------------------------------------------------------

def _check_options(max_retries: Any, allocation_strategy: Any, max_concurrency: Any, timeout: Any,
                   progress: Any, unknown: dict) -> dict:
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(sorted(unknown))}; valid: {', '.join(EXECUTE_OPTIONS)}")
    if allocation_strategy not in STRATEGIES:
        raise ValueError(
            f"unknown allocation_strategy {allocation_strategy!r}; valid: {', '.join(STRATEGIES)}")
    problem = retries_problem(max_retries) or (timeout is not None and timeout_problem(timeout))
    if problem:
        raise ValueError(problem)
    if max_concurrency is not None and (
        isinstance(max_concurrency, bool) or not isinstance(max_concurrency, Integral)
        or not 1 <= int(max_concurrency) <= MAX_CONCURRENCY
    ):
        raise ValueError(
            f"max_concurrency must be None or an int from 1 to {MAX_CONCURRENCY}, got {max_concurrency!r}")
    if not (isinstance(progress, bool) or (isinstance(progress, str) and progress == "auto") or callable(progress)):
        raise ValueError(f'progress must be "auto", True, False or a callable(done, total), got {progress!r}')
    return {"max_retries": int(max_retries), "allocation_strategy": allocation_strategy,
            "max_concurrency": None if max_concurrency is None else int(max_concurrency),
            "timeout": None if timeout is None else float(timeout)}


def execute(
    dag: DAG,
    *,
    max_retries: int = 3,
    allocation_strategy: str = "first_available",
    max_concurrency: int | None = None,
    timeout: float | None = None,
    progress: bool | str | Callable[[int, int], None] = "auto",
    allocator: Any = None,
    record: bool = True,
    cache: bool = True,
    **unknown: Any,
) -> ExecutionResult:
    """Run ``dag`` on the cluster this process belongs to (an embedded local node by default).

    Parameters
    ----------
    max_retries:
        Retries of a function that raises (attempts = retries + 1); a Function's own
        ``max_retries`` overrides it. Node losses do not use them up.
    allocation_strategy:
        ``"first_available"``, ``"load_balanced"`` or ``"cost_optimized"``.
    max_concurrency:
        At most this many functions of the run in flight at once.
    timeout:
        Seconds for the whole run; past it, ``handoff.TimeoutError`` and every claim released.
    progress:
        ``"auto"``: a live display per function group on stderr when it is a terminal and
        the run lasts over a second; True: always; False: never; a callable gets
        ``(done, total)`` after each completion.
    allocator:
        A ``handoff.Allocator``: its ``allocate(functions, caps)`` is called once with the
        total capacities of the live nodes, and its answer is taken as pins
        (``handoff.allocation.apply_plan``; a plan that cannot hold is an ``AllocationError``).
    record:
        Keep every attempt's record (node, worker, times, bytes) for ``to_trace`` and
        ``report``; about 70 bytes an attempt.
    cache:
        False ignores the result cache for this run: functions with ``cache=True`` are
        neither looked up nor written.

    Raises a ValidationError subclass for a bad DAG, ``AllocationError`` when a function fits
    no node, ``FunctionError`` when a function runs out of attempts, ``NodeLostError``,
    ``handoff.TimeoutError``, and ValueError for an unknown or bad option.
    """
    if not isinstance(dag, DAG):
        raise TypeError(f"execute() takes a handoff.DAG, got {type(dag).__name__}")
    options = _check_options(max_retries, allocation_strategy, max_concurrency, timeout, progress, unknown)
    if not isinstance(cache, bool):
        raise ValueError(f"cache must be True or False, got {cache!r}")
    if allocator is not None and not callable(getattr(allocator, "allocate", None)):
        raise ValueError(f"allocator must have an allocate(functions, caps) method, got {allocator!r}")
    if not isinstance(record, bool):
        raise ValueError(f"record must be True or False, got {record!r}")
    node = current_node()
    if allocator is not None:
        from handoff.allocation import apply_plan

        dag.validate()
        dag = apply_plan(dag, allocator, node.call(node.ledger.capacities).result())
    ctx = prepare_run(dag, progress if callable(progress) else None, record=record)
    if cache:
        from handoff.cache.plan import plan_cache

        plan_cache(node, ctx)
    node.call(node.submit_run, ctx, options).result()
    try:
        return wait_for_result(ctx.future, ctx.record, progress)
    except KeyboardInterrupt:
        node.call(node.cancel_run, ctx.run_id, HandoffError("cancelled by the driver"))
        raise


execute_distributed = execute


def execute_local(dag: DAG, **opts: Any) -> ExecutionResult:
    """Run every function on the local node, ignoring ``node`` and ``cost``; takes
    ``execute``'s options."""
    if not isinstance(dag, DAG):
        raise TypeError(f"execute_local() takes a handoff.DAG, got {type(dag).__name__}")
    here = node_name()
    local = DAG(dag.id)
    for fn in dag:
        local.add_function(dataclasses.replace(fn, cost=None, node=None if fn.is_inline else here))
    return execute(local, **opts)


# ---- resources --------------------------------------------------------------------------

def register_local_node(caps: Mapping[str, float]) -> None:
    """Set this node's capacities; claims of running functions are kept."""
    register_node(node_name(), caps)


def register_node(node: str, caps: Mapping[str, float]) -> None:
    """Set a node's capacities (and let the cluster know); claims of running functions are kept."""
    caps = check_resources(caps)
    n = current_node()
    n.call(n.register, node, caps).result()


def resources_available(node: str, req: Mapping[str, float]) -> bool:
    """Whether ``node`` has ``req`` free right now, as this node's ledger sees it."""
    req = check_resources(req or {})
    n = current_node()

    def check() -> bool:
        if not n.ledger.has_node(node):
            return False
        return n.ledger.available(node, req)

    return n.call(check).result()


def discover_nodes() -> dict[str, dict[str, float]]:
    """The live cluster as gossip sees it: ``{node_name: capacities}``."""
    n = current_node()
    return n.call(n.discover).result()


# ---- results and data locations ----------------------------------------------------------

def store_value(dag_id: Any, id: Hashable, value: Any) -> None:
    """Keep ``value`` in this node's store under (dag_id, id)."""
    store_result(dag_id, id, value)


def store_result(dag_id: Any, fid: Hashable, value: Any, origin_node: str | None = None) -> None:
    """Store a result locally and record where it came from (this node by default)."""
    frames = dumps_value(value)
    n = current_node()

    def put() -> None:
        n.store.put(dag_id, fid, frames)
        n.store.register_location(dag_id, fid, origin_node or n.name)

    n.call(put).result()


def get_local_value(dag_id: Any, id: Hashable) -> Any:
    """A value from this node's own store; ResultNotFound (a KeyError) if it is not here."""
    n = current_node()
    frames = n.call(n.store.get, dag_id, id).result()
    if frames is None:
        raise ResultNotFound(dag_id, id, n.name)
    return loads_value(frames)


def get_value(dag_id: Any, id: Hashable, from_node: str | None = None) -> Any:
    """A value from this node's store, or fetched from ``from_node`` (or where the registry says)."""
    n = current_node()
    if from_node is None:
        frames = n.call(n.store.get, dag_id, id).result()
        if frames is not None:
            return loads_value(frames)
        from_node = n.call(n.store.location, dag_id, id).result()
        if from_node is None or from_node == n.name:
            raise ResultNotFound(dag_id, id, n.name)
    return loads_value(n.fetch_frames(from_node, dag_id, id))


def get_result(dag_id: Any, id: Hashable, timeout: float = 5.0) -> Any:
    """Wait up to ``timeout`` seconds for a result to exist anywhere in the cluster, and
    fetch it from its origin node.

    Found, in this order: in this node's store; on the node this node's data-location
    registry names; on a node that a peer names when asked (the peer stores it, or its
    registry knows where it is). A store or registration on this node wakes the wait at
    once; peers are asked again at a falling rate (after 50 ms, doubling to once a second).
    The timeout bounds the whole call, transfer included. Raises ``handoff.TimeoutError``
    when the value is not found in time, ValueError for a timeout outside (0, 30 days].
    """
    problem = timeout_problem(timeout)
    if problem:
        raise ValueError(problem)
    n = current_node()
    found = n.find_values(dag_id, [id], float(timeout), wait=True)
    if id not in found:
        raise HandoffTimeout(f"waiting for result {id!r} of DAG {dag_id!r} anywhere in the cluster", timeout)
    return loads_value(found[id])


def synchronize(dag_id: Any, function_ids: Iterable[Hashable], timeout: float = 5.0) -> dict[Hashable, Any]:
    """``{fid: value}`` of those ``function_ids`` that exist now somewhere in the cluster,
    each fetched from its origin node; ids that cannot be found are absent.

    Looks once, where ``get_result`` looks, without waiting for values to appear; the
    ``timeout`` bounds the peers' answers and the transfers (a holder that does not answer
    in time counts as not holding the value). ValueError for a timeout outside (0, 30 days].
    """
    if isinstance(function_ids, (str, bytes)) or not isinstance(function_ids, Iterable):
        raise TypeError(f"function_ids must be a list of function ids, got {function_ids!r}")
    problem = timeout_problem(timeout)
    if problem:
        raise ValueError(problem)
    ids = list(dict.fromkeys(function_ids))
    if not ids:
        return {}
    n = current_node()
    found = n.find_values(dag_id, ids, float(timeout), wait=False)
    return {fid: loads_value(found[fid]) for fid in ids if fid in found}


def register_data_location(dag_id: Any, data_id: Hashable, node: str) -> None:
    """Record, on this node, that ``node`` holds (dag_id, data_id)."""
    n = current_node()
    n.call(n.store.register_location, dag_id, data_id, node).result()


def lookup_data_location(dag_id: Any, data_id: Hashable) -> str | None:
    """The node this node knows to hold (dag_id, data_id), or None if it knows none."""
    n = current_node()
    return n.call(n.store.location, dag_id, data_id).result()


def cache_clear() -> dict[str, int]:
    """Empty the result cache of every live node; ``{node: entries removed}`` of those that
    answered (a node that does not answer in time keeps its entries)."""
    n = current_node()
    return n.cache.clear_everywhere()


def clear(dag_id: Any) -> None:
    """Drop a DAG's values and locations on every node of the cluster."""
    n = current_node()
    n.call(n.clear_everywhere, dag_id).result()

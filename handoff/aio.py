"""asyncio: ``await handoff.execute_async(dag)``, ``await handoff.run_async(ref)``; the
event loop never waits on the runtime.

The DAG is built, checked and pickled in a thread of the loop's default executor, the run
is submitted to the node's own loop, and its end reaches the event loop through
``asyncio.wrap_future``; values are read in a thread too (one may be on another node).
Cancelling the awaiting task cancels the run on every node.
"""

from __future__ import annotations

import asyncio
from typing import Any

from handoff.dag import DAG
from handoff.errors import HandoffError

__all__ = ["execute_async", "run_async"]


async def execute_async(dag: DAG, **options: Any) -> Any:
    """``handoff.execute(dag, **options)`` as a coroutine; returns the ``ExecutionResult``.

    Takes the options of ``execute``; ``progress`` draws the live display only when True
    (not by default: an event loop's program seldom owns the terminal). Cancelling the task
    that awaits it stops the run: in-flight work is cancelled on every node.
    """
    from handoff import api
    from handoff.node.runs import prepare_run

    if not isinstance(dag, DAG):
        raise TypeError(f"execute_async() takes a handoff.DAG, got {type(dag).__name__}")
    allocator = options.pop("allocator", None)
    cache = options.pop("cache", True)
    record = options.pop("record", True)
    progress = options.get("progress", False)
    checked = api._check_options(
        options.pop("max_retries", 3), options.pop("allocation_strategy", "first_available"),
        options.pop("max_concurrency", None), options.pop("timeout", None),
        options.pop("progress", False), options,
    )
    if not isinstance(cache, bool):
        raise ValueError(f"cache must be True or False, got {cache!r}")
    if not isinstance(record, bool):
        raise ValueError(f"record must be True or False, got {record!r}")
    if allocator is not None and not callable(getattr(allocator, "allocate", None)):
        raise ValueError(f"allocator must have an allocate(functions, caps) method, got {allocator!r}")
    loop = asyncio.get_running_loop()

    def prepare() -> Any:  # in a thread: starting a node, validating, pickling, asking caches
        node = api.current_node()
        plan = dag
        if allocator is not None:
            from handoff.allocation import apply_plan

            dag.validate()
            plan = apply_plan(dag, allocator, node.call(node.ledger.capacities).result())
        ctx = prepare_run(plan, progress if callable(progress) else None, record=record)
        if cache:
            from handoff.cache.plan import plan_cache

            plan_cache(node, ctx)
        return node, ctx

    node, ctx = await loop.run_in_executor(None, prepare)
    await asyncio.wrap_future(node.call(node.submit_run, ctx, checked))
    try:
        if progress is True:  # the display draws from a thread of its own while it waits
            from handoff.observe.progress import wait_for_result

            return await loop.run_in_executor(None, wait_for_result, ctx.future, ctx.record, True)
        return await asyncio.wrap_future(ctx.future)
    except asyncio.CancelledError:
        node.post(node.cancel_run, ctx.run_id, HandoffError("cancelled by the driver"))
        raise


async def run_async(x: Any, **options: Any) -> Any:
    """``handoff.run(x, **options)`` as a coroutine: runs the DAG of a ref (or of a list,
    tuple or dict of refs) and returns the values in the same shape."""
    from handoff.decorator import _refs_in, _values, dag_of

    loop = asyncio.get_running_loop()
    for ref in _refs_in(x):
        if ref.function.is_inline and ref._item is None:
            raise ValueError(f"{ref!r} is an inline function, which has no result of its own; "
                             "run a function that uses it")
    dag = await loop.run_in_executor(None, dag_of, x)
    result = await execute_async(dag, **options)
    return await loop.run_in_executor(None, _values, x, result)

"""The baseline that bench_runtime.py compares handoff against: a plain process pool.

``run_with_pool(dag, pool)`` drives a ``handoff.DAG`` with a
``concurrent.futures.ProcessPoolExecutor`` the way one would by hand: in-degree counters,
submit every ready function, take completions as they come (a done-callback feeds a queue,
so each completion costs O(1) however many functions are pending; ``wait(FIRST_COMPLETED)``
over thousands of futures would make the baseline quadratic), hand each result to the
argument lists of its dependents, submit the ones that became ready. Every result travels back through
the driver (that is what a plain pool does). Functions must be picklable by reference
(module-level), since the pool pickles them with the standard pickle.

Only what the benchmarks use is supported: ``args`` (plain ids, variadic), ``extra_args``,
``argument_inclusion``. No inline functions, no costs, no retries.
"""

from __future__ import annotations

from collections.abc import Hashable
import queue
from concurrent.futures import Executor
from typing import Any

from handoff.dag import DAG


def _call(code, inclusion: str, dep_values: list, extra: list) -> Any:
    if inclusion == "as_list":
        return code(dep_values, *extra)
    return code(*dep_values, *extra)


def run_with_pool(dag: DAG, pool: Executor) -> dict[Hashable, Any]:
    """Run every function of ``dag`` on ``pool``; return ``{function id: result}``."""
    fns = {fn.id: fn for fn in dag}
    # dependency slots: each consumer keeps a list of argument values, filled as producers end
    dependents: dict[Hashable, list[tuple[Hashable, int]]] = {fid: [] for fid in fns}
    missing: dict[Hashable, int] = {}
    argvals: dict[Hashable, list] = {}
    for fid, fn in fns.items():
        deps = fn.dependency_ids
        argvals[fid] = [None] * len(deps)
        missing[fid] = len(deps)
        for slot, dep in enumerate(deps):
            dependents[dep].append((fid, slot))

    results: dict[Hashable, Any] = {}
    finished: queue.SimpleQueue = queue.SimpleQueue()  # (function id, future)

    def submit(fid: Hashable) -> None:
        fn = fns[fid]
        fut = pool.submit(
            _call, fn.code, fn.argument_inclusion, argvals.pop(fid), list(fn.extra_args)
        )
        fut.add_done_callback(lambda f, fid=fid: finished.put((fid, f)))

    pending = 0
    for fid, n in missing.items():
        if n == 0:
            submit(fid)
            pending += 1
    while pending:
        fid, fut = finished.get()
        pending -= 1
        value = fut.result()  # re-raises a failure: no retries in the baseline
        results[fid] = value
        for consumer, slot in dependents[fid]:
            argvals[consumer][slot] = value
            missing[consumer] -= 1
            if missing[consumer] == 0:
                submit(consumer)
                pending += 1
    if len(results) != len(fns):
        raise RuntimeError(f"baseline finished {len(results)} of {len(fns)} functions")
    return results

"""W1 as a user's script runs it: functions defined in ``__main__`` (so cloudpickle ships them
by value), one embedded node. Run by bench_runtime.py; prints one JSON line of timings.

    python bench/w1_main.py N ROUNDS WORKERS
"""

from __future__ import annotations

import json
import sys
import time

import handoff
from handoff import DAG, Function


def noop(i):
    return 1


def total(xs):
    return sum(xs)


def build(n: int) -> DAG:
    dag = DAG()
    for i in range(n):
        dag.add_function(Function(id=i, code=noop, extra_args=[i]))
    dag.add_function(Function(id="sum", code=total, args=list(range(n)), argument_inclusion="as_list"))
    return dag


def main() -> None:
    n, rounds, workers = (int(x) for x in sys.argv[1:4])
    handoff.start(workers=workers)
    try:
        warm = build(n)  # ships the code to both workers, as the other workloads' warm-up does
        ok = handoff.execute(warm).results["sum"] == n
        handoff.clear(warm.id)
        seconds = []
        for _ in range(rounds):
            dag = build(n)
            t0 = time.perf_counter()
            result = handoff.execute(dag)
            seconds.append(time.perf_counter() - t0)
            ok = ok and result.results["sum"] == n
            handoff.clear(dag.id)
    finally:
        handoff.stop()
    print(json.dumps({"ok": ok, "seconds": seconds}))


if __name__ == "__main__":
    main()

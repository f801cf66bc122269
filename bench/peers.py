"""The runtime workloads on handoff, Dask and Ray in one run, so the README's peer figures
come from something in the repository.

Run with::

    pip install -e ".[bench]"      # dask[distributed] and ray; either may be left out
    python bench/peers.py [--rounds 3] [--only W1,W2,W5]

Each runner gets 2 worker processes on this machine: handoff one embedded node with
``workers=2``; Dask a ``LocalCluster`` of 2 worker processes with one thread each; Ray
``ray.init(num_cpus=2)``. A runner that is not installed is skipped with the reason printed.
Workloads (as in bench_runtime.py): W1, 10,000 independent functions, each given its own
argument, and one that sums their results (functions/s); W2, a chain of 1,000 ``x + 1``
steps (microseconds per step); W5, 200 functions sleeping 10 ms (makespan; ideal 1.0 s).
Every round's results are checked; the table shows the mean of the rounds (and the best).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Callable

W1_N = 10_000
W2_N = 1_000
W5_N, W5_SLEEP = 200, 0.01
WORKERS = 2


def ident(i):
    return i


def total(*xs):
    return sum(xs)


def inc(x):
    return x + 1


def nap(i):
    time.sleep(W5_SLEEP)
    return i


W1_SUM = sum(range(W1_N))
W5_SUM = sum(range(W5_N))


# ---- handoff ------------------------------------------------------------------------------
class Handoff:
    name = "handoff"

    def __init__(self):
        import handoff

        self.h = handoff
        handoff.start(workers=WORKERS)

    def w1(self) -> int:
        from handoff import DAG, Function

        dag = DAG()
        for i in range(W1_N):
            dag.add_function(Function(id=i, code=ident, extra_args=[i]))
        dag.add_function(Function(id="sum", code=total, args=list(range(W1_N))))
        return self._run(dag, "sum")

    def w2(self) -> int:
        from handoff import DAG, Function

        dag = DAG().add_function(Function(id=0, code=inc, extra_args=[0]))
        for i in range(1, W2_N):
            dag.add_function(Function(id=i, code=inc, args=[i - 1]))
        return self._run(dag, W2_N - 1)

    def w5(self) -> int:
        from handoff import DAG, Function

        dag = DAG()
        for i in range(W5_N):
            dag.add_function(Function(id=i, code=nap, extra_args=[i]))
        result = self.h.execute(dag)
        value = sum(result.results[i] for i in range(W5_N))
        self.h.clear(dag.id)
        return value

    def _run(self, dag, last) -> int:
        result = self.h.execute(dag)
        value = result.results[last]
        self.h.clear(dag.id)
        return value

    def close(self) -> None:
        self.h.stop()


# ---- Dask ---------------------------------------------------------------------------------
class Dask:
    name = "dask"

    def __init__(self):
        from dask.distributed import Client, LocalCluster

        self.cluster = LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                                    dashboard_address=None)
        self.client = Client(self.cluster)

    def w1(self) -> int:
        futures = self.client.map(ident, range(W1_N), pure=False)
        return self.client.submit(total, *futures, pure=False).result()

    def w2(self) -> int:
        f = self.client.submit(inc, 0, pure=False)
        for _ in range(1, W2_N):
            f = self.client.submit(inc, f, pure=False)
        return f.result()

    def w5(self) -> int:
        return sum(self.client.gather(self.client.map(nap, range(W5_N), pure=False)))

    def close(self) -> None:
        self.client.close()
        self.cluster.close()


# ---- Ray ----------------------------------------------------------------------------------
class Ray:
    name = "ray"

    def __init__(self):
        import ray

        self.ray = ray
        ray.init(num_cpus=WORKERS, include_dashboard=False, logging_level="ERROR")
        self.ident, self.total = ray.remote(ident), ray.remote(total)
        self.inc, self.nap = ray.remote(inc), ray.remote(nap)

    def w1(self) -> int:
        refs = [self.ident.remote(i) for i in range(W1_N)]
        return self.ray.get(self.total.remote(*refs))

    def w2(self) -> int:
        ref = self.inc.remote(0)
        for _ in range(1, W2_N):
            ref = self.inc.remote(ref)
        return self.ray.get(ref)

    def w5(self) -> int:
        return sum(self.ray.get([self.nap.remote(i) for i in range(W5_N)]))

    def close(self) -> None:
        self.ray.shutdown()


RUNNERS = (Handoff, Dask, Ray)
WORKLOADS: dict[str, tuple[str, int, Callable[[float], str]]] = {
    "W1": ("w1", W1_SUM, lambda s: f"{(W1_N + 1) / s:,.0f} fn/s"),
    "W2": ("w2", W2_N, lambda s: f"{s / W2_N * 1e6:,.0f} us/step"),
    "W5": ("w5", W5_SUM, lambda s: f"{s:.2f} s"),
}


def measure(runner, workloads: list[str], rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for w in workloads:
        method, expected, _ = WORKLOADS[w]
        run = getattr(runner, method)
        if run() != expected:  # warm-up: workers started, code shipped
            raise AssertionError(f"{runner.name} {w}: wrong result")
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            value = run()
            times.append(time.perf_counter() - t0)
            if value != expected:
                raise AssertionError(f"{runner.name} {w}: {value!r}, expected {expected!r}")
        out[w] = times
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", default=",".join(WORKLOADS), help="workloads, e.g. W1,W2")
    args = p.parse_args(argv)
    workloads = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        p.error(f"unknown workload(s) {unknown}; known: {', '.join(WORKLOADS)}")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    results: dict[str, dict[str, list[float]]] = {}
    versions: dict[str, str] = {}
    for cls in RUNNERS:
        try:
            runner = cls()
        except ImportError as exc:
            print(f"skipping {cls.name}: not installed ({exc.name or exc}); "
                  f'pip install -e ".[bench]" brings it', flush=True)
            continue
        try:
            versions[cls.name] = _version(cls.name)
            print(f"running {cls.name} {versions[cls.name]} ...", flush=True)
            results[cls.name] = measure(runner, workloads, args.rounds)
        finally:
            runner.close()
    load = "/".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"\npeers: mean of {args.rounds} rounds (best in brackets); {os.cpu_count()} cpus, "
          f"{WORKERS} worker processes each, Python {platform.python_version()}, "
          f"load average now {load}\n")
    names = list(results)
    print("| workload | " + " | ".join(f"{n} {versions[n]}" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for w in workloads:
        show = WORKLOADS[w][2]
        cells = [f"{show(sum(t) / len(t))} ({show(min(t))})"
                 for t in (results[n][w] for n in names)]
        print(f"| {w} | " + " | ".join(cells) + " |")
    return 0


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version({"dask": "distributed"}.get(name, name))
    except PackageNotFoundError:
        return "(source)"


if __name__ == "__main__":
    sys.exit(main())

"""A 1,000,000-function layered DAG executed end to end on the embedded node.

Run with::

    python -m pytest bench/bench_scale.py --benchmark-only -p no:cacheprovider -s

1,000 layers x 1,000 functions; a first-layer function returns its extra argument, every other
one adds two results of the layer before (``add(a, b)``), so every result is a small int stored
on the embedded node. 2 worker processes. ``SCALE_LAYERS`` (default 1000) makes it smaller.

What is measured (the DAG is built beforehand and not timed):
- wall time of ``handoff.execute`` and functions/s;
- the driver's extra peak memory per function: the process's peak RSS during ``execute``
  (sampled every 5 ms, and once after it returns) minus its RSS just before, over the number
  of functions. The process is the driver and its embedded node, so this counts the compiled
  graph, the scheduler's state, the payloads, the store holding every (small) result and the
  returned ``ExecutionResult`` (allocations and stats). It does not count the user's own DAG
  (the ``Function`` objects: reported apart as ``dag_bytes_per_function``) or the worker
  processes. The target is at most 500 bytes (Dask documents about 1 kB a task of scheduler
  state alone); 1,226 was measured before the compact containers.
- with ``SCALE_TRACE=1``, tracemalloc's top allocation sites at the run's end (slow).
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import psutil
import pytest

import handoff

# the workload is the integration tests' (tests/integration/test_scale.py runs it at 100,000)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from nodes import layered_sums  # noqa: E402

LAYERS = int(os.environ.get("SCALE_LAYERS", "1000"))
WIDTH = 1_000
pytestmark = pytest.mark.timeout(1800)  # the run takes minutes on a loaded 2-core machine

TARGET_BYTES = 500
BEFORE_BYTES = 1_226  # the same measure before the compact containers
DASK_BYTES = 1_000  # Dask's documented scheduler state per task


class PeakRSS:
    """The largest RSS of this process seen while the block runs (sampled every 5 ms)."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.peak = 0
        self._done = threading.Event()

    def __enter__(self) -> "PeakRSS":
        self.before = self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self._done.set()
        self._thread.join()


@pytest.fixture(scope="module")
def node():
    handoff.start(workers=2)
    small = layered_sums(2, 10)  # warm the workers and code paths
    handoff.execute(small)
    yield
    handoff.stop()


def test_million_function_layered_dag(benchmark, node):
    n = LAYERS * WIDTH
    gc.collect()
    rss = psutil.Process().memory_info().rss
    dag = layered_sums(LAYERS, WIDTH)
    gc.collect()
    dag_bytes = (psutil.Process().memory_info().rss - rss) / n
    trace = os.environ.get("SCALE_TRACE") == "1"
    out: dict = {}

    def run() -> None:
        gc.collect()
        if trace:
            tracemalloc.start()
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            r = handoff.execute(dag)
            out["wall"] = time.perf_counter() - t0
        if trace:
            out["top"] = tracemalloc.take_snapshot().statistics("lineno")[:15]
            out["traced_peak"] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        out["extra"] = mem.peak - mem.before
        out["result"] = r

    benchmark.pedantic(run, rounds=1, iterations=1)
    r = out["result"]
    assert len(r.results) == n
    assert r.results[(1, 0)] == 1 and r.results[(1, WIDTH - 1)] == WIDTH - 1
    per_function = out["extra"] / n
    info = benchmark.extra_info
    info.update(functions=n, wall_s=round(out["wall"], 2),
                functions_per_s=round(n / out["wall"]),
                driver_extra_peak_bytes_per_function=round(per_function),
                dag_bytes_per_function=round(dag_bytes),
                ratio_to_target=round(per_function / TARGET_BYTES, 2),
                ratio_to_before=round(per_function / BEFORE_BYTES, 2),
                ratio_to_dask_scheduler=round(per_function / DASK_BYTES, 2))
    lines = [
        "", f"bench_scale: {n:,} functions in {out['wall']:.1f} s ({n / out['wall']:,.0f} functions/s)",
        f"  driver's extra peak memory: {per_function:,.0f} bytes/function "
        f"(target {TARGET_BYTES}: x{per_function / TARGET_BYTES:.2f}; before {BEFORE_BYTES}: "
        f"x{per_function / BEFORE_BYTES:.2f}; Dask ~{DASK_BYTES}: x{per_function / DASK_BYTES:.2f})",
        f"  the user's DAG itself: {dag_bytes:,.0f} bytes/function (not counted above)",
    ]
    if trace:
        lines.append(f"  tracemalloc peak {out['traced_peak'] / n:,.0f} bytes/function; top sites:")
        lines += [f"    {s.size / n:7.1f} B/f  {s.traceback}" for s in out["top"]]
    print("\n".join(lines))

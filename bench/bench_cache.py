"""The result cache on a 1,000-function re-run, against the same DAG with the cache off.

Run with::

    python -m pytest bench/bench_cache.py --benchmark-only -p no:cacheprovider -s

One embedded node with 2 worker processes and its cache in a temporary directory next to
the default one (``~/.cache``: file creation costs differ a lot between file systems; on
the machine this was written on, a file made in /tmp took 2.4 ms, in ~/.cache 0.2 ms). The DAG:
1,000 functions with ``cache=True``, each ~0.5 ms of Python arithmetic on its own argument,
and one ``as_list`` function that sums them (not cached). Measured in the same session:
- ``off``: ``execute(dag, cache=False)``, everything computed (the baseline);
- ``cold``: ``execute(dag)`` on an empty cache: keys computed, every node asked, every
  value computed and written (the cache's overhead);
- ``warm``: ``execute(dag)`` again: 1,000 hits loaded, only the sum computed.
The summary prints seconds and the ratios to ``off``; nothing is asserted about time.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile

import pytest

import handoff
from handoff import DAG, Function
from handoff.config import default_cache_dir

N = 1_000
ROUNDS = 3
WORKERS = 2
_times: dict[str, list[float]] = {}


def work(i: int) -> int:
    """About 0.5 ms of arithmetic that depends on ``i``."""
    total = 0
    for k in range(5_000):
        total += (k * i) % 7
    return total


def build() -> DAG:
    dag = DAG()
    for i in range(N):
        dag.add_function(Function(id=f"w{i}", code=work, extra_args=[i], cache=True))
    dag.add_function(Function(id="sum", code=sum, args=[f"w{i}" for i in range(N)],
                              argument_inclusion="as_list"))
    return dag


EXPECTED = sum(work(i) for i in range(N))


@pytest.fixture(scope="module")
def node():
    parent = os.path.dirname(default_cache_dir())
    os.makedirs(parent, exist_ok=True)
    directory = tempfile.mkdtemp(prefix="handoff-bench-cache-", dir=parent)
    handoff.stop()
    handoff.start(workers=WORKERS, cache_dir=directory)
    yield
    handoff.stop()
    shutil.rmtree(directory, ignore_errors=True)
    if _times:
        off = statistics.median(_times["off"])
        print(f"\n1,000-function re-run, {WORKERS} workers, load average {os.getloadavg()[0]:.2f}:")
        for name in ("off", "cold", "warm"):
            t = statistics.median(_times[name])
            print(f"  {name:<5} {t:7.3f} s   {t / off:5.2f}x of cache=False")


def timed(name: str, benchmark, run, setup=None) -> None:
    def once():
        result = run()
        assert result.results["sum"] == EXPECTED
        return result

    benchmark.pedantic(once, setup=setup, rounds=ROUNDS, iterations=1)
    _times[name] = list(benchmark.stats.stats.data)
    benchmark.extra_info["median_s"] = statistics.median(_times[name])


def test_off(benchmark, node):
    dag = build()
    timed("off", benchmark, lambda: handoff.execute(dag, cache=False))


def test_cold(benchmark, node):
    dag = build()
    def empty() -> None:
        handoff.cache_clear()

    timed("cold", benchmark, lambda: handoff.execute(dag), setup=empty)


def test_warm(benchmark, node):
    dag = build()
    handoff.execute(dag)  # fills the cache (a no-op when test_cold left it full)
    result = handoff.execute(dag)
    assert sum(s.cached for s in result.stats.values()) == N
    timed("warm", benchmark, lambda: handoff.execute(dag))

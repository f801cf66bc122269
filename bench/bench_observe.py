"""What seeing a run costs: W1 (10,000 no-op functions and one sum, as in bench_runtime.py)
with the per-attempt record and the progress display on and off, in the same session.

Run with::

    python -m pytest bench/bench_observe.py --benchmark-only -p no:cacheprovider -s

Variants, interleaved round by round so that the machine's load hits them alike:
- ``bare``: ``record=False, progress=False`` (the baseline);
- ``record``: ``record=True, progress=False`` (the default off a terminal);
- ``record+progress``: ``record=True, progress=True`` with stderr on a pseudo-terminal, so the
  display really draws (four times a second).
The summary prints each variant's median wall seconds and the median CPU seconds of this
process (the driver and its embedded node's loop, where recording and drawing happen; the
workers are other processes), each with its ratio to ``bare``. On a shared machine the CPU
ratio is the steadier one. The targets are at most 1.05 (reported, not enforced).
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time

import pytest

import handoff
from handoff import DAG, Function

WORKERS = 2
W1_N = 10_000
ROUNDS = 5
VARIANTS = {"bare": (False, False), "record": (True, False), "record+progress": (True, True)}


def noop(i):
    return 1


def total_list(xs):
    return sum(xs)


def dag_w1() -> DAG:
    dag = DAG()
    for i in range(W1_N):
        dag.add_function(Function(id=i, code=noop, extra_args=[i]))
    dag.add_function(Function(id="sum", code=total_list, args=list(range(W1_N)), argument_inclusion="as_list"))
    return dag


class Terminal:
    """A pseudo-terminal standing in for stderr while the display draws; its output is read
    and dropped by a thread."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.file = open(self.slave, "w", encoding="utf-8", closefd=False)
        self.drained = 0
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.drained += len(chunk)

    def close(self) -> None:
        self.file.close()
        os.close(self.slave)
        os.close(self.master)
        self.reader.join(5)


@pytest.fixture(scope="module")
def node():
    name = handoff.start(workers=WORKERS)
    warm = dag_w1()
    assert handoff.execute(warm, progress=False).results["sum"] == W1_N
    handoff.clear(warm.id)
    yield name
    handoff.stop()


def run_variant(record: bool, progress: bool, terminal: Terminal) -> tuple[float, float]:
    dag = dag_w1()
    saved = sys.stderr
    if progress:
        sys.stderr = terminal.file
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        result = handoff.execute(dag, record=record, progress=progress)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        sys.stderr = saved
    assert result.results["sum"] == W1_N
    if record:
        assert result.record is not None and len(result.record) == W1_N + 1
    handoff.clear(dag.id)
    return seconds, cpu


@pytest.mark.timeout(1800)
def test_w1_record_and_progress(benchmark, node):
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
    terminal = Terminal()

    def run_all() -> None:
        for r in range(ROUNDS):
            order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
            for name in order:
                wall, used = run_variant(*VARIANTS[name], terminal)
                times[name].append(wall)
                cpu[name].append(used)

    try:
        benchmark.pedantic(run_all, rounds=1, iterations=1)
    finally:
        terminal.close()
    assert terminal.drained > 0  # the display drew on the terminal
    base, base_cpu = statistics.median(times["bare"]), statistics.median(cpu["bare"])
    lines = [f"W1 ({W1_N + 1} functions, {WORKERS} workers, {ROUNDS} interleaved rounds; "
             f"load average {os.getloadavg()[0]:.1f}); targets: ratios <= 1.05"]
    for name in VARIANTS:
        wall, used = statistics.median(times[name]), statistics.median(cpu[name])
        benchmark.extra_info[name] = {"median_s": wall, "ratio_to_bare": wall / base, "seconds": times[name],
                                      "median_cpu_s": used, "cpu_ratio_to_bare": used / base_cpu}
        lines.append(f"  {name:<16} wall {wall:.3f} s (ratio {wall / base:.3f})   "
                     f"driver cpu {used:.3f} s (ratio {used / base_cpu:.3f})")
    print("\n" + "\n".join(lines))

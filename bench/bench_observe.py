"""What seeing a run costs: W1 (10,000 no-op functions and one sum, as in bench_runtime.py)
with the per-attempt record and the progress display on and off, in the same session.

Run with::

    python -m pytest bench/bench_observe.py --benchmark-only -p no:cacheprovider -s

Variants, interleaved round by round so that the machine's load hits them alike:
- ``bare``: ``record=False, progress=False`` (the baseline);
- ``record``: ``record=True, progress=False`` (the default off a terminal);
- ``record+progress``: ``record=True, progress=True`` with stderr on a pseudo-terminal, so the
  display really draws (four times a second).
The summary prints each variant's median seconds and its ratio to ``bare``; the targets are
at most 1.05 (reported, not enforced).
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


def run_variant(record: bool, progress: bool, terminal: Terminal) -> float:
    dag = dag_w1()
    saved = sys.stderr
    if progress:
        sys.stderr = terminal.file
    try:
        t0 = time.perf_counter()
        result = handoff.execute(dag, record=record, progress=progress)
        seconds = time.perf_counter() - t0
    finally:
        sys.stderr = saved
    assert result.results["sum"] == W1_N
    if record:
        assert result.record is not None and len(result.record) == W1_N + 1
    handoff.clear(dag.id)
    return seconds


@pytest.mark.timeout(1800)
def test_w1_record_and_progress(benchmark, node):
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    terminal = Terminal()

    def run_all() -> None:
        for r in range(ROUNDS):
            order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
            for name in order:
                times[name].append(run_variant(*VARIANTS[name], terminal))

    try:
        benchmark.pedantic(run_all, rounds=1, iterations=1)
    finally:
        terminal.close()
    assert terminal.drained > 0  # the display drew on the terminal
    base = statistics.median(times["bare"])
    lines = [f"W1 ({W1_N + 1} functions, {WORKERS} workers, {ROUNDS} interleaved rounds; "
             f"load average {os.getloadavg()[0]:.1f})"]
    for name, seconds in times.items():
        median = statistics.median(seconds)
        ratio = median / base
        benchmark.extra_info[name] = {"median_s": median, "ratio_to_bare": ratio, "seconds": seconds}
        lines.append(f"  {name:<16} median {median:.3f} s  ratio {ratio:.3f}  (target <= 1.05)")
    print("\n" + "\n".join(lines))

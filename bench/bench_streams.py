"""Streaming pipelines (``handoff.stream``) against ``multiprocessing.Pool(2).imap``, in one run.

Run with::

    python -m pytest bench/bench_streams.py --benchmark-only -p no:cacheprovider -s

Workloads (each timed once per round; the same functions in both runners):
- S1 throughput: ``STREAM_N`` tiny items (default 100,000) through an input, a stage with
  ``parallelism=2`` and a batched stage (``batch_size=64``), against
  ``Pool(2).imap(composed, items, chunksize=64)``: items/s and their ratio; per-item latency
  (push to yield) p50/p99 of the pipeline.
- S2 latency at a paced rate: ``STREAM_RATE`` items/s (default 1,000) for ``STREAM_SECONDS``
  (default 2): p50/p99 latency push to yield, through the same pipeline (its batched stage
  with a 0.2 ms ``batch_timeout``).
- S3 bandwidth: ``STREAM_MB_N`` 1 MB numpy arrays (default 500) made in one stage and
  reduced in the next (two replica processes, so each array crosses worker -> node ->
  worker), GB/s, against ``Pool(2).imap`` returning the arrays to the parent, which
  reduces them (one crossing).
- S4 memory: a stalled stage, ``STREAM_PUSHES`` push attempts (default 10,000,000) with
  ``timeout=0``: items held in flight (at most ``max_pending``) and the driver's RSS growth.

A summary prints at the end with the ratios; numbers are also in each benchmark's
``extra_info``. The machine may be shared: the summary gives the load average.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import threading
import time

import numpy as np
import psutil
import pytest

import handoff
from handoff import DAG, Function

N = int(os.environ.get("STREAM_N", "100000"))
RATE = int(os.environ.get("STREAM_RATE", "1000"))
SECONDS = float(os.environ.get("STREAM_SECONDS", "2"))
MB_N = int(os.environ.get("STREAM_MB_N", "500"))
PUSHES = int(os.environ.get("STREAM_PUSHES", "10000000"))
MAX_PENDING = 1000
S2_BATCH_TIMEOUT = 0.0002  # at 1,000 items/s a batch of 64 would take 64 ms to fill
MB_FLOATS = 131_072

RESULTS: dict[str, dict] = {}


def scale(x):
    return x * 3


def shift_batch(batch):
    return [x + 1 for x in batch]


def shift(x):
    return x + 1


def composed(x):
    return shift(scale(x))


def megabyte(seed):
    return np.full(MB_FLOATS, float(seed))


def first(a):
    return float(a[0])


def wait_forever(x, path):
    while not os.path.exists(path):
        time.sleep(0.05)
    return x


def tiny_dag(batch_timeout: float | None = None) -> DAG:
    dag = DAG()
    dag.add_function(Function(id="x", type="input"))
    dag.add_function(Function(id="scale", args=["x"], code=scale, parallelism=2))
    dag.add_function(Function(id="shift", args=["scale"], code=shift_batch, batch_size=64,
                              batch_timeout=batch_timeout))
    return dag


@pytest.fixture(scope="module", autouse=True)
def node():
    handoff.stop()
    handoff.start(name="bench-streams", workers=2)
    yield
    handoff.stop()
    print("\n" + "\n".join(summary_lines()))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_pipeline(n: int) -> tuple[float, list[float]]:
    """(items/s, per-item latencies in s) for n items pushed as fast as max_pending lets them."""
    pipe = handoff.stream(tiny_dag(), max_pending=MAX_PENDING)
    pushed_at = [0.0] * n
    latencies = [0.0] * n
    got: list[int] = []

    def read():
        for seq, out in enumerate(pipe.results()):
            latencies[seq] = time.perf_counter() - pushed_at[seq]
            got.append(out)

    reader = threading.Thread(target=read)
    start = time.perf_counter()
    reader.start()
    for i in range(n):
        pushed_at[i] = time.perf_counter()
        pipe.push(i)
    pipe.close()
    reader.join()
    took = time.perf_counter() - start
    pipe.stop()
    assert got == [3 * i + 1 for i in range(n)]
    return n / took, latencies


def run_pool(n: int) -> float:
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        list(pool.imap(composed, range(64), chunksize=64))  # started, like the pipeline
        start = time.perf_counter()
        got = list(pool.imap(composed, range(n), chunksize=64))
        took = time.perf_counter() - start
    assert got == [3 * i + 1 for i in range(n)]
    return n / took


def test_s1_throughput(benchmark):
    out: dict = {}

    def both():
        out["pool"] = run_pool(N)
        out["handoff"], out["latencies"] = run_pipeline(N)

    benchmark.pedantic(both, rounds=1, iterations=1)
    lat = out["latencies"]
    RESULTS["S1"] = {"handoff items/s": out["handoff"], "pool items/s": out["pool"],
                     "ratio": out["handoff"] / out["pool"], "p50 ms": 1000 * statistics.median(lat),
                     "p99 ms": 1000 * percentile(lat, 0.99)}
    benchmark.extra_info.update(RESULTS["S1"])


def test_s2_latency_at_a_paced_rate(benchmark):
    n = int(RATE * SECONDS)
    latencies: list[float] = []

    def paced():
        pipe = handoff.stream(tiny_dag(batch_timeout=S2_BATCH_TIMEOUT), max_pending=MAX_PENDING)
        pushed_at = [0.0] * n

        def read():
            for seq, _ in zip(range(n), pipe.results()):
                latencies.append(time.perf_counter() - pushed_at[seq])

        reader = threading.Thread(target=read)
        reader.start()
        start = time.perf_counter()
        for i in range(n):
            due = start + i / RATE
            while time.perf_counter() < due:
                time.sleep(max(0.0, due - time.perf_counter()) / 2)
            pushed_at[i] = time.perf_counter()
            pipe.push(i)
        reader.join()
        pipe.stop()

    benchmark.pedantic(paced, rounds=1, iterations=1)
    RESULTS["S2"] = {"rate items/s": RATE, "p50 ms": 1000 * statistics.median(latencies),
                     "p99 ms": 1000 * percentile(latencies, 0.99)}
    benchmark.extra_info.update(RESULTS["S2"])


def test_s3_megabyte_items_between_two_processes(benchmark):
    dag = DAG()
    dag.add_function(Function(id="seed", type="input"))
    dag.add_function(Function(id="make", args=["seed"], code=megabyte))
    dag.add_function(Function(id="reduce", args=["make"], code=first))
    out: dict = {}

    def both():
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            list(pool.imap(first, [np.zeros(1)] * 4))  # started
            start = time.perf_counter()
            got = [first(a) for a in pool.imap(megabyte, range(MB_N), chunksize=8)]  # one crossing per array
            assert got == [float(i) for i in range(MB_N)]
            out["pool"] = MB_N * 8 * MB_FLOATS / (time.perf_counter() - start) / 1e9
        with handoff.stream(dag, max_pending=64) as pipe:
            start = time.perf_counter()
            assert list(pipe.map(range(MB_N))) == [float(i) for i in range(MB_N)]
            out["handoff"] = MB_N * 8 * MB_FLOATS / (time.perf_counter() - start) / 1e9

    benchmark.pedantic(both, rounds=1, iterations=1)
    RESULTS["S3"] = {"handoff GB/s": out["handoff"], "pool GB/s": out["pool"],
                     "ratio": out["handoff"] / out["pool"]}
    benchmark.extra_info.update(RESULTS["S3"])


@pytest.mark.timeout(1800)
def test_s4_stalled_stage_holds_at_most_max_pending(benchmark, tmp_path):
    gate = str(tmp_path / "never")
    dag = DAG()
    dag.add_function(Function(id="x", type="input"))
    dag.add_function(Function(id="stalled", args=["x"], code=wait_forever, extra_args=[gate]))
    out: dict = {}

    def attempts():
        me = psutil.Process()
        with handoff.stream(dag, max_pending=MAX_PENDING) as pipe:
            base = me.memory_info().rss
            accepted = refused = 0
            for i in range(PUSHES):
                try:
                    pipe.push(i, timeout=0)
                    accepted += 1
                except handoff.TimeoutError:
                    refused += 1
            out.update(accepted=accepted, refused=refused, in_flight=pipe.stats()["in_flight"],
                       rss_growth_mb=(me.memory_info().rss - base) / 2**20)
            open(gate, "w").close()

    benchmark.pedantic(attempts, rounds=1, iterations=1)
    assert out["in_flight"] <= MAX_PENDING and out["accepted"] == MAX_PENDING
    RESULTS["S4"] = out
    benchmark.extra_info.update(out)


def summary_lines() -> list[str]:
    load = os.getloadavg()[0]
    lines = [f"bench_streams summary ({os.cpu_count()} cpus, load average {load:.1f}; one run each)"]
    for name, row in RESULTS.items():
        lines.append(f"  {name}: " + ", ".join(f"{k} {v:,.3g}" if isinstance(v, float) else f"{k} {v:,}"
                                                for k, v in row.items()))
    lines.append("  targets: S1 ratio >= 0.5; S2 p50 < 1 ms; S3 >= 1 GB/s; S4 in_flight <= max_pending")
    return lines

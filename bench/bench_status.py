"""The cost of being watched: a run's wall time while browsers poll the node's dashboard flat
out, against the same run unwatched, and a status query during a large run against one on an
idle node. Both as ratios of medians measured in the same run, rounds interleaved.

Run with ``pytest bench/bench_status.py -s`` (bench/ is not collected by default).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time

import handoff
from handoff import DAG, Function
from handoff.testing import wait_until

N = 400  # functions of the watched run
ROUNDS = 5
POLLERS = 4  # processes, each fetching /api/view, /api/state and /metrics in a loop
BIG = 20_000  # functions of the run a status query describes


def noop(i: int) -> int:
    return i


def many(n: int, dag_id: str) -> DAG:
    dag = DAG(dag_id)
    for i in range(n):
        dag.add_function(Function(id=i, code=noop, extra_args=[i]))
    return dag


def timed_run(dag: DAG) -> float:
    start = time.perf_counter()
    handoff.execute(dag, timeout=300)
    return time.perf_counter() - start


POLL = """
import sys, urllib.request
url, n = sys.argv[1], 0
while True:
    for route in ("api/view", "api/state", "metrics"):
        with urllib.request.urlopen(url + route, timeout=30) as response:
            response.read()
        n += 1
        print(n, flush=True)
"""


def test_a_dashboard_polled_flat_out_barely_slows_a_run(benchmark):
    handoff.stop()
    handoff.start(name="bench", workers=2, dashboard="127.0.0.1:0")
    try:
        url = handoff.dashboard_url()
        assert url is not None
        timed_run(many(N, "warm-up"))
        quiet, watched, requests = [], [], []
        for r in range(ROUNDS):
            quiet.append(timed_run(many(N, f"quiet-{r}")))
            pollers = [subprocess.Popen([sys.executable, "-c", POLL, url], stdout=subprocess.PIPE,
                                        text=True) for _ in range(POLLERS)]
            try:  # each has answered once: polling is under way
                for p in pollers:
                    assert p.stdout is not None and p.stdout.readline()
                watched.append(timed_run(many(N, f"watched-{r}")))
            finally:
                for p in pollers:
                    p.kill()
            counts = [int(p.communicate()[0].split()[-1]) for p in pollers]
            requests.append(sum(counts))
        ratio = statistics.median(watched) / statistics.median(quiet)
        benchmark.extra_info.update(quiet_median_s=statistics.median(quiet),
                                    watched_median_s=statistics.median(watched),
                                    requests_per_round=statistics.median(requests),
                                    watched_over_quiet=ratio)
        print(f"\n{N} functions: unwatched {statistics.median(quiet):.3f} s, watched by {POLLERS} "
              f"processes polling flat out ({statistics.median(requests):.0f} requests a round) "
              f"{statistics.median(watched):.3f} s: ratio {ratio:.2f}")
        benchmark.pedantic(lambda: timed_run(many(N, "last")), rounds=1, iterations=1)
    finally:
        handoff.stop()


def hold(path: str) -> int:
    wait_until(lambda: os.path.exists(path), 300, interval=0.02)
    return 0


def test_a_status_query_during_a_large_run(benchmark, tmp_path):
    handoff.stop()
    handoff.start(name="bench", workers=1, resources={"cpu": 1})
    release = str(tmp_path / "release")
    runner = threading.Thread(target=lambda: None)
    try:
        def query_times() -> list[float]:
            out = []
            for _ in range(ROUNDS * 2):
                start = time.perf_counter()
                handoff.cluster_status()
                out.append(time.perf_counter() - start)
            return out

        def view_times() -> list[float]:
            """The loop's cost of one dashboard snapshot's view document (built on the loop)."""
            from handoff.api import current_node

            node = current_node()
            status = node.status

            def build() -> float:
                start = time.perf_counter()
                status.view(status.document({node.name: status.report()}))
                return time.perf_counter() - start

            return [node.call(build).result() for _ in range(ROUNDS * 2)]

        idle = query_times()
        idle_view = view_times()
        dag = DAG("big")
        dag.add_function(Function(id="gate", code=hold, extra_args=[release], cost={"cpu": 1}))
        for i in range(BIG):
            dag.add_function(Function(id=i, code=noop, extra_args=[i], cost={"cpu": 1}))
        def run() -> None:
            try:
                handoff.execute(dag, timeout=600)
            except handoff.HandoffError:
                pass  # stopped below, once measured

        runner = threading.Thread(target=run)
        runner.start()
        assert wait_until(lambda: handoff.cluster_status()["runs"], 120)
        busy = query_times()
        busy_view = view_times()
        ratio = statistics.median(busy) / statistics.median(idle)
        view_ratio = statistics.median(busy_view) / statistics.median(idle_view)
        doc = handoff.cluster_status()
        [run] = doc["runs"]
        benchmark.extra_info.update(idle_median_s=statistics.median(idle),
                                    busy_median_s=statistics.median(busy), busy_over_idle=ratio,
                                    view_idle_median_s=statistics.median(idle_view),
                                    view_busy_median_s=statistics.median(busy_view),
                                    view_busy_over_idle=view_ratio,
                                    view_rebuild_s=max(busy_view),
                                    waiting_count=run["waiting_count"])
        print(f"\nstatus query: idle node {statistics.median(idle) * 1000:.1f} ms, during a "
              f"{BIG}-function run ({run['waiting_count']} waiting) "
              f"{statistics.median(busy) * 1000:.1f} ms: ratio {ratio:.1f}; the dashboard's view "
              f"document {statistics.median(idle_view) * 1000:.1f} ms idle, "
              f"{statistics.median(busy_view) * 1000:.1f} ms busy (ratio {view_ratio:.1f}), "
              f"{max(busy_view) * 1000:.0f} ms when rebuilt (at most once a second, and at "
              f"most a tenth of the time)")
        benchmark.pedantic(handoff.cluster_status, rounds=1, iterations=1)
    finally:
        open(release, "w").close()
        handoff.stop()
        runner.join(60)

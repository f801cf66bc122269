"""End-to-end runtime benchmarks: handoff on one embedded node against a plain process pool.

Run with::

    python -m pytest bench/bench_runtime.py --benchmark-only -p no:cacheprovider -s

Every workload runs twice in the same session: ``handoff.execute(dag)`` on one embedded node
with 2 worker processes, and the same DAG driven by ``concurrent.futures.ProcessPoolExecutor(2)``
with a ready-queue loop (``bench/baseline.py``). Only the run is timed; each DAG is built
beforehand and each run is checked for the right results. Targets are reported, not enforced.

Workloads:
- W1: 10,000 independent no-op functions, each with its own extra argument
  (``extra_args=[i]``), and one ``as_list`` function that sums all their results (functions/s).
  Also against ``pool-submit``: the process pool with one ``submit`` per task and nothing else.
- W1-same: the same with ``extra_args=[0]`` for all (W1 should be within 1.3x of it).
- W1-main: W1 in a script run as a subprocess (``bench/w1_main.py``), its functions defined in
  ``__main__`` and so pickled by value; the script times its own runs.
- W2: a chain of 1,000 dependent ``x + 1`` steps (microseconds per step).
- W3: 100 layers x 1,000 functions, each after the first layer summing two of the layer
  before (seconds end to end).
- W5: 200 functions each sleeping 10 ms, on 2 workers (makespan; ideal 1.0 s).
- W6: 1,000 functions each returning a 1 MB numpy array, into one consumer (seconds).

At the end of the module a summary table prints the metrics, the baseline and the ratio,
then the target ratios; the same numbers are in each benchmark's ``extra_info``
(``--benchmark-json`` keeps them). The machine may be shared: the table gives the load average.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

import handoff
from handoff import DAG, Function, _core

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from baseline import run_with_pool

WORKERS = 2
W1_N = 10_000
W2_N = 1_000
W3_LAYERS, W3_WIDTH = 100, 1_000
W5_N, W5_SLEEP = 200, 0.01
W5_IDEAL = W5_N * W5_SLEEP / WORKERS
W6_N, W6_FLOATS = 1_000, 131_072  # 1 MB arrays

ROUNDS = 5
BASELINE_ROUNDS = {"W1": 5, "W1-same": 5, "W2": 3, "W3": 1, "W5": 3, "W6": 2}
HERE = os.path.dirname(os.path.abspath(__file__))

# ---- the functions (module-level, so the process pool can pickle them by reference) ----


def noop(i):
    return 1


def total(*xs):
    return sum(xs)


def total_list(xs):
    return sum(xs)


def megabyte(i):
    return np.full(W6_FLOATS, i, dtype=np.float64)


def firsts(arrays):
    return int(sum(a[0] for a in arrays))


def inc(x):
    return x + 1


def one():
    return 1


def nap():
    time.sleep(W5_SLEEP)
    return 1


# ---- the DAGs ------------------------------------------------------------------------


def dag_w1(distinct: bool = True) -> DAG:
    dag = DAG()
    add = dag.add_function
    for i in range(W1_N):
        add(Function(id=i, code=noop, extra_args=[i if distinct else 0]))
    add(Function(id="sum", code=total_list, args=list(range(W1_N)), argument_inclusion="as_list"))
    return dag


def dag_w1_same() -> DAG:
    return dag_w1(distinct=False)


def dag_w2() -> DAG:
    dag = DAG()
    add = dag.add_function
    add(Function(id=0, code=inc, extra_args=[0]))
    for i in range(1, W2_N):
        add(Function(id=i, code=inc, args=[i - 1]))
    return dag


def dag_w3() -> DAG:
    dag = DAG()
    add = dag.add_function
    w = W3_WIDTH
    for j in range(w):
        add(Function(id=(0, j), code=one))
    for k in range(1, W3_LAYERS):
        for j in range(w):
            add(Function(id=(k, j), code=total, args=[(k - 1, j), (k - 1, (j + 1) % w)]))
    return dag


def dag_w5() -> DAG:
    dag = DAG()
    for i in range(W5_N):
        dag.add_function(Function(id=i, code=nap))
    return dag


def dag_w6() -> DAG:
    dag = DAG()
    for i in range(W6_N):
        dag.add_function(Function(id=i, code=megabyte, extra_args=[i]))
    dag.add_function(Function(id="firsts", code=firsts, args=list(range(W6_N)), argument_inclusion="as_list"))
    return dag


def check_w6(results) -> None:
    assert results["firsts"] == W6_N * (W6_N - 1) // 2


def check_w1(results) -> None:
    assert results["sum"] == W1_N
    assert len(results) == W1_N + 1


def check_w2(results) -> None:
    assert results[W2_N - 1] == W2_N
    assert len(results) == W2_N


def check_w3(results) -> None:
    expected = 2 ** (W3_LAYERS - 1)  # each layer doubles: every function sums two of the last
    last = W3_LAYERS - 1
    assert all(results[(last, j)] == expected for j in range(W3_WIDTH))
    assert len(results) == W3_LAYERS * W3_WIDTH


def check_w5(results) -> None:
    assert len(results) == W5_N and all(results[i] == 1 for i in range(W5_N))


WORKLOADS = {
    "W1": (dag_w1, check_w1),
    "W1-same": (dag_w1_same, check_w1),
    "W1-main": (None, None),  # a subprocess script: see bench_main
    "W2": (dag_w2, check_w2),
    "W3": (dag_w3, check_w3),
    "W5": (dag_w5, check_w5),
    "W6": (dag_w6, check_w6),
}

W1_RATE = ("functions/s", lambda s: (W1_N + 1) / s, "fmt_rate", lambda v: v >= 10_000, True)
# metric: (name, unit, from seconds, target text, target met, higher is better)
METRICS = {
    "W1": W1_RATE,
    "W1-same": W1_RATE,
    "W1-main": W1_RATE,
    "W2": ("us/step", lambda s: s / W2_N * 1e6, "fmt_us", lambda v: v <= 150, False),
    "W3": ("s end to end", lambda s: s, "fmt_s", lambda v: v <= 10.0, False),
    "W5": ("makespan s", lambda s: s, "fmt_s", lambda v: v <= 1.05 * W5_IDEAL, False),
    "W6": ("s end to end", lambda s: s, "fmt_s", lambda v: True, False),
}
TARGETS = {
    "W1": ">= 10,000 fn/s and >= 1.0x baseline",
    "W1-same": ">= 10,000 fn/s",
    "W1-main": ">= 10,000 fn/s",
    "W2": "<= 150 us/step",
    "W3": "<= 10 s",
    "W5": f"<= {1.05 * W5_IDEAL:.2f} s",
    "W6": "reported",
}

# (workload, "handoff", "baseline" or "pool-submit") -> seconds of each round
TIMES: dict[tuple[str, str], list[float]] = {}


# ---- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node():
    """One embedded node with 2 workers for every handoff workload, warmed up once."""
    name = handoff.start(workers=WORKERS)
    # warm-up: ships and caches the code of every workload's functions in both workers
    for make, check in (WORKLOADS["W1"], WORKLOADS["W2"], WORKLOADS["W5"], WORKLOADS["W6"]):
        dag = make()
        check(handoff.execute(dag).results)
        handoff.clear(dag.id)
    yield name
    handoff.stop()


@pytest.fixture(scope="module")
def pool():
    """The baseline: a process pool of 2, its processes started before anything is timed."""
    with ProcessPoolExecutor(WORKERS) as executor:
        list(executor.map(inc, range(2 * WORKERS)))
        yield executor


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    """Print the comparison table once every benchmark of the module has run."""
    yield
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if reporter is None or not TIMES:
        return
    lines = summary_lines()
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():  # teardown output is captured otherwise
        for line in lines:
            reporter.write_line(line)


# ---- the benchmarks ----------------------------------------------------------------------


def bench_handoff(benchmark, workload: str) -> None:
    if workload == "W1-main":
        bench_main(benchmark)
        return
    make, check = WORKLOADS[workload]
    times: list[float] = []  # handoff.execute alone; the check below is not in them
    checked: list[bool] = []

    def run_and_check(dag):
        t0 = time.perf_counter()
        result = handoff.execute(dag)
        times.append(time.perf_counter() - t0)
        check(result.results)
        checked.append(True)

    def teardown(dag):
        handoff.clear(dag.id)  # results stay in the node's store until cleared

    benchmark.pedantic(
        run_and_check, setup=lambda: ((make(),), {}), teardown=teardown, rounds=ROUNDS, iterations=1
    )
    assert len(checked) == ROUNDS
    record(benchmark, workload, "handoff", times)


def bench_main(benchmark) -> None:
    """W1 from a script whose functions live in ``__main__``; it prints its own timings."""
    out: list[dict] = []

    # the script imports the same handoff as this process, wherever that is installed from
    root = os.path.dirname(os.path.dirname(os.path.abspath(handoff.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}

    def run():
        proc = subprocess.run(
            [sys.executable, os.path.join(HERE, "w1_main.py"), str(W1_N), str(ROUNDS), str(WORKERS)],
            capture_output=True, text=True, timeout=600, env=env,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))

    benchmark.pedantic(run, rounds=1, iterations=1)
    (report,) = out
    assert report["ok"]
    record(benchmark, "W1-main", "handoff", report["seconds"])


def bench_baseline(benchmark, pool, workload: str) -> None:
    make, check = WORKLOADS[workload]
    times: list[float] = []  # the driver loop alone; the check below is not in them
    checked: list[bool] = []

    def run_and_check(dag):
        t0 = time.perf_counter()
        results = run_with_pool(dag, pool)
        times.append(time.perf_counter() - t0)
        check(results)
        checked.append(True)

    rounds = BASELINE_ROUNDS[workload]
    benchmark.pedantic(run_and_check, setup=lambda: ((make(),), {}), rounds=rounds, iterations=1)
    assert len(checked) == rounds
    record(benchmark, workload, "baseline", times)


def bench_pool_submit(benchmark, pool) -> None:
    """W1 as one would write it without a DAG: one ``submit`` per task, then the sum."""
    times: list[float] = []

    def run():
        t0 = time.perf_counter()
        futures = [pool.submit(noop, i) for i in range(W1_N)]
        result = total_list([f.result() for f in futures])
        times.append(time.perf_counter() - t0)
        assert result == W1_N

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    record(benchmark, "W1", "pool-submit", times)


GROUPS = {
    "W1": "W1 10k independent (distinct args) + sum",
    "W1-same": "W1-same 10k independent (equal args) + sum",
    "W1-main": "W1-main: W1 with functions in __main__",
    "W2": "W2 chain of 1,000",
    "W3": "W3 100 x 1,000 layered",
    "W5": "W5 200 x sleep 10 ms",
    "W6": "W6 1,000 x 1 MB numpy into one",
}


# Each ratio compares runs made close together in time, so that a change in the machine's
# load during the session (it may be shared) skews it as little as possible.
CASES = [
    ("W1-same", "handoff"), ("W1", "handoff"), ("W1", "pool-submit"), ("W1", "baseline"),
    ("W1-same", "baseline"), ("W1-main", "handoff"),
    ("W2", "handoff"), ("W2", "baseline"), ("W3", "handoff"), ("W3", "baseline"),
    ("W5", "handoff"), ("W5", "baseline"), ("W6", "handoff"), ("W6", "baseline"),
]


@pytest.mark.parametrize("workload, runner", CASES, ids=[f"{w}-{r}" for w, r in CASES])
def test_runtime(benchmark, request, workload, runner):
    benchmark.group = GROUPS[workload]
    if runner == "handoff":
        request.getfixturevalue("node")
        bench_handoff(benchmark, workload)
    elif runner == "baseline":
        bench_baseline(benchmark, request.getfixturevalue("pool"), workload)
    else:
        bench_pool_submit(benchmark, request.getfixturevalue("pool"))


# ---- reporting ---------------------------------------------------------------------------


def middle(xs: list[float]) -> float:
    """The median round: one round stalled by another process on a shared machine moves it
    less than it moves the mean."""
    return statistics.median(xs)


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def fmt(workload: str, value: float) -> str:
    unit = METRICS[workload][2]
    if unit == "fmt_rate":
        return f"{value:,.0f} fn/s"
    if unit == "fmt_us":
        return f"{value:.0f} us/step"
    return f"{value:.2f} s"


def ratio(workload: str, baseline: str = "baseline", against: str | None = None) -> float | None:
    """How many times better handoff is than ``baseline`` (> 1: handoff wins): median baseline
    time over median handoff time; ``against`` takes the baseline time from another workload."""
    h = TIMES.get((workload, "handoff"))
    b = TIMES.get((against or workload, baseline))
    if not h or not b:
        return None
    return middle(b) / middle(h)


# (label, ratio function, target text, target met)
TARGET_RATIOS = [
    ("W1 (distinct args) time / W1-same time",
     lambda: None if ratio("W1", "handoff", "W1-same") is None else 1 / ratio("W1", "handoff", "W1-same"),
     "<= 1.3", lambda r: r <= 1.3),
    ("W1 speed / pool with one submit per task", lambda: ratio("W1", "pool-submit"),
     ">= 2.5x", lambda r: r >= 2.5),
    ("W1 speed / ProcessPool DAG baseline", lambda: ratio("W1"), ">= 1.0x", lambda r: r >= 1.0),
    ("W1-main time / W1 time",
     lambda: None if ratio("W1-main", "handoff", "W1") is None else 1 / ratio("W1-main", "handoff", "W1"),
     "reported", lambda r: True),
    ("W2 speed / ProcessPool baseline (per step)", lambda: ratio("W2"), ">= 1.0x", lambda r: r >= 1.0),
    ("W6 speed / ProcessPool baseline", lambda: ratio("W6"), "reported", lambda r: True),
]


def record(benchmark, workload: str, who: str, times: list[float]) -> None:
    TIMES[(workload, who)] = times
    name, to_metric, _, _, _ = METRICS[workload]
    info = benchmark.extra_info
    info["workload"] = workload
    info["runner"] = who
    info["metric"] = name
    info["seconds"] = times
    info["value_mean"] = to_metric(mean(times))
    info["value_median"] = to_metric(middle(times))
    info["value_best"] = to_metric(min(times))
    for label, compute, target, met in TARGET_RATIOS:
        r = compute()
        if r is not None:  # each benchmark carries every ratio known when it ends
            info[label] = {"ratio": r, "target": target, "met": met(r)}
    r = ratio(workload)
    if r is not None:
        info["speedup_vs_baseline"] = r


def summary_lines() -> list[str]:
    cpus = os.cpu_count()
    load = "/".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    lines = [
        "",
        (
            f"bench_runtime summary (medians over rounds; {cpus} cpus, {WORKERS} workers, "
            f"Python {platform.python_version()}, {platform.machine()}, "
            f"core {_core.IMPLEMENTATION}, load average now {load}):"
        ),
        "",
        (
            "| workload | handoff | ProcessPool baseline | ratio (baseline time / handoff time) "
            "| target | met? |"
        ),
        "|---|---|---|---|---|---|",
    ]
    for workload in WORKLOADS:
        h, b = TIMES.get((workload, "handoff")), TIMES.get((workload, "baseline"))
        if not h and not b:
            continue
        to_metric, met = METRICS[workload][1], METRICS[workload][3]
        hv = to_metric(middle(h)) if h else None
        bv = to_metric(middle(b)) if b else None
        r = ratio(workload)
        ok = "?" if hv is None else ("yes" if met(hv) else "no")
        if workload == "W1" and hv is not None:
            ok = "yes" if met(hv) and (r is None or r >= 1.0) else "no"
        hcell = f"{fmt(workload, hv)} (best {fmt(workload, to_metric(min(h)))})" if h else "-"
        bcell = fmt(workload, bv) if b else "-"
        rcell = f"{r:.2f}x" if r is not None else "-"
        lines.append(f"| {workload} | {hcell} | {bcell} | {rcell} | {TARGETS[workload]} | {ok} |")
    p = TIMES.get(("W1", "pool-submit"))
    if p:
        lines.append(f"| W1 pool, one submit per task | - | {fmt('W1', METRICS['W1'][1](middle(p)))} | - | - | - |")
    lines += ["", "| target ratio (same run) | value | target | met? |", "|---|---|---|---|"]
    for label, compute, target, met in TARGET_RATIOS:
        r = compute()
        if r is not None:
            lines.append(f"| {label} | {r:.2f} | {target} | {'yes' if met(r) else 'no'} |")
    return lines

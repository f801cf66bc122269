"""Benchmarks of handoff._core: the compiled kernels against graphlib and the pure-Python twin.

Run with::

    python -m pytest bench/bench_core.py --benchmark-only -p no:cacheprovider

Groups:
- ``validate+order``: a 1,000 x 1,000 layered DAG (every function after the first layer reads
  two functions of the layer before), already built with ``handoff.DAG``. Measured: what
  ``validate()`` costs on a fresh DAG plus the topological order, against graphlib.
- ``kernels``: the cycle search and order alone on the same arrays, compiled and pure Python.
- ``ready-tracker``: a ReadyTracker over the same DAG, completing all 1,000,000 functions.
- ``ledger``/``allocate-*``: 100,000 ready functions over 100 nodes.
At the end, a summary prints ratios and microseconds per function.
"""

from __future__ import annotations

import graphlib

import numpy as np
import pytest

from handoff import _core
from handoff.dag import DAG, Function

LAYERS = 1000
WIDTH = 1000
NODES = 100
FUNCTIONS = 100_000

IMPLS = _core.implementations()
if "cython" not in IMPLS:
    raise ImportError(_core.NOT_BUILT)
CY, PY = IMPLS["cython"], IMPLS["python"]

RESULTS: dict[str, float] = {}  # benchmark name -> mean seconds per round


def noop(*args):
    return None


def record(benchmark, key: str) -> None:
    RESULTS[key] = benchmark.stats.stats.mean


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    """Print ratios and per-function costs once every benchmark of the module has run."""
    yield
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if reporter is None or not RESULTS:
        return
    r = RESULTS
    lines = ["", "bench_core summary (means):"]
    if "dag_validate_order" in r:
        lines.append(
            f"  validate + topological order, 1M functions: {r['dag_validate_order']:.3f} s"
        )
    if "graphlib" in r and "dag_validate_order" in r:
        lines.append(
            f"  graphlib.TopologicalSorter static_order: {r['graphlib']:.3f} s "
            f"({r['graphlib'] / r['dag_validate_order']:.1f}x slower)"
        )
    if "kernels_cython" in r and "kernels_python" in r:
        lines.append(
            f"  kernels only: cython {r['kernels_cython'] * 1e3:.1f} ms, "
            f"python {r['kernels_python']:.2f} s "
            f"({r['kernels_python'] / r['kernels_cython']:.0f}x)"
        )
    c, p = r.get("tracker_cython"), r.get("tracker_python")
    if c and p:
        per = LAYERS * WIDTH / 1e6
        lines.append(
            f"  ReadyTracker build + complete all: cython {c / per:.2f} us/function, "
            f"python {p / per:.2f} us/function ({p / c:.1f}x)"
        )
    for what in (
        "ledger_vec",
        "ledger_names",
        "first_available",
        "load_balanced",
        "cost_optimized",
    ):
        c, p = r.get(f"{what}_cython"), r.get(f"{what}_python")
        if c and p:
            lines.append(
                f"  {what}: cython {c / FUNCTIONS * 1e6:.2f} us/function, "
                f"python {p / FUNCTIONS * 1e6:.2f} us/function ({p / c:.0f}x)"
            )
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():  # teardown output is captured otherwise
        for line in lines:
            reporter.write_line(line)


# -- graph -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def layered_dag():
    dag = DAG("layered")
    add = dag.add_function
    for k in range(LAYERS):
        for j in range(WIDTH):
            args = [] if k == 0 else [f"f{k - 1}_{j}", f"f{k - 1}_{(j + 1) % WIDTH}"]
            add(Function(id=f"f{k}_{j}", code=noop, args=args))
    return dag


@pytest.mark.benchmark(group="validate+order")
def test_dag_validate_and_order(benchmark, layered_dag):
    assert _core.IMPLEMENTATION == "cython", (
        "unset HANDOFF_PURE_PYTHON to benchmark the compiled core"
    )

    def validate_and_order():
        layered_dag._validated = False  # measure validation, not the cached flag
        g = layered_dag.compile()
        return _core.topological_order(len(g.ids), g.indptr, g.indices)

    order = benchmark.pedantic(validate_and_order, rounds=5, warmup_rounds=1)
    assert len(order) == LAYERS * WIDTH
    record(benchmark, "dag_validate_order")


@pytest.mark.benchmark(group="validate+order")
def test_graphlib_static_order(benchmark, layered_dag):
    graph = {fn.id: fn.dependency_ids for fn in layered_dag}
    order = benchmark.pedantic(
        lambda: list(graphlib.TopologicalSorter(graph).static_order()), rounds=3
    )
    assert len(order) == LAYERS * WIDTH
    record(benchmark, "graphlib")


@pytest.mark.benchmark(group="kernels")
@pytest.mark.parametrize("impl", [CY, PY], ids=["cython", "python"])
def test_kernels_cycle_and_order(benchmark, layered_dag, impl):
    g = layered_dag.compile()
    n = len(g.ids)

    def kernels():
        assert impl.find_cycle(n, g.indptr, g.indices) is None
        return impl.topological_order(n, g.indptr, g.indices)

    rounds = 5 if impl is CY else 2
    assert len(benchmark.pedantic(kernels, rounds=rounds)) == n
    record(benchmark, f"kernels_{impl.name}")


@pytest.mark.benchmark(group="ready-tracker")
@pytest.mark.parametrize("impl", [CY, PY], ids=["cython", "python"])
def test_ready_tracker_completes_everything(benchmark, layered_dag, impl):
    g = layered_dag.compile()
    n = len(g.ids)
    order = _core.topological_order(n, g.indptr, g.indices).tolist()

    def run():
        tracker = impl.ReadyTracker(n, g.indptr, g.indices, g.inline)
        complete = tracker.complete
        for i in order:
            complete(i)
        return tracker.remaining

    assert benchmark.pedantic(run, rounds=3 if impl is CY else 1) == 0
    record(benchmark, f"tracker_{impl.name}")


# -- ledger and allocator ----------------------------------------------------------------


def cluster_caps() -> dict[str, dict[str, float]]:
    """100 nodes: 1,500 cpus and 6,000,000 MB each, a quarter of them with 200 gpus."""
    return {
        f"node{j}": {"cpu": 1500.0, "memory": 6e6, **({"gpu": 200.0} if j % 4 == 0 else {})}
        for j in range(NODES)
    }


def workload() -> np.ndarray:
    """100,000 functions over (cpu, memory, gpu): 1-4 cpus, 0.5-4 GB, 5% with a gpu.

    About 60% of them fit at once, so allocation meets both placements and refusals.
    """
    rng = np.random.default_rng(0)
    reqs = np.zeros((FUNCTIONS, 3))
    reqs[:, 0] = rng.integers(1, 5, FUNCTIONS)
    reqs[:, 1] = rng.integers(500, 4001, FUNCTIONS)
    reqs[:, 2] = rng.random(FUNCTIONS) < 0.05
    return reqs


def fresh_ledger(impl):
    led = impl.ResourceLedger()
    for node, caps in cluster_caps().items():
        led.register(node, caps)
    led.resource_vector({"cpu": 0, "memory": 0, "gpu": 0})
    return led


REQS = workload()
ROWS = list(REQS)
NAMED = [{"cpu": r[0], "memory": r[1], "gpu": r[2]} for r in REQS.tolist()]


@pytest.mark.benchmark(group="ledger")
@pytest.mark.parametrize("impl", [CY, PY], ids=["cython", "python"])
def test_ledger_request_release_vectors(benchmark, impl):
    led = fresh_ledger(impl)
    request, release = led.request_vec, led.release_vec

    def cycle():
        granted = [request(f % NODES, ROWS[f]) for f in range(FUNCTIONS)]
        for f in range(FUNCTIONS):
            if granted[f]:
                release(f % NODES, ROWS[f])
        return sum(granted)

    assert benchmark.pedantic(cycle, rounds=5 if impl is CY else 2) > 0
    assert not led.used_matrix().any()
    record(benchmark, f"ledger_vec_{impl.name}")


@pytest.mark.benchmark(group="ledger")
@pytest.mark.parametrize("impl", [CY, PY], ids=["cython", "python"])
def test_ledger_request_release_by_name(benchmark, impl):
    led = fresh_ledger(impl)
    names = [f"node{f % NODES}" for f in range(FUNCTIONS)]

    def cycle():
        granted = [led.request(names[f], NAMED[f]) for f in range(FUNCTIONS)]
        for f in range(FUNCTIONS):
            if granted[f]:
                led.release(names[f], NAMED[f])
        return sum(granted)

    assert benchmark.pedantic(cycle, rounds=3 if impl is CY else 1) > 0
    record(benchmark, f"ledger_names_{impl.name}")


@pytest.mark.parametrize("impl", [CY, PY], ids=["cython", "python"])
@pytest.mark.parametrize("strategy", _core.STRATEGIES)
def test_allocate(benchmark, impl, strategy):
    benchmark.group = f"allocate-{strategy}"
    pinned = np.full(FUNCTIONS, -1, dtype=np.int64)
    placed = []

    def setup():
        return (fresh_ledger(impl), REQS, pinned, strategy), {}

    def run(*args):
        out = impl.allocate(*args)
        placed.append(int((out >= 0).sum()))
        return out

    benchmark.pedantic(run, setup=setup, rounds=5 if impl is CY else 2)
    benchmark.extra_info["placed"] = placed[-1]
    assert 0.4 * FUNCTIONS < placed[-1] < FUNCTIONS
    record(benchmark, f"{strategy}_{impl.name}")

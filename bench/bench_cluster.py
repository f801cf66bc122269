"""Cluster benchmarks: handoff across real ``python -m handoff.node`` processes on loopback.

Run with::

    python -m pytest bench/bench_cluster.py --benchmark-only -p no:cacheprovider -s

The node processes are started with ``tests/integration/nodes.py`` and stopped by PID when
each fixture ends; the driver (this process) joins them with ``handoff.start(join=...)``.
Results are checked in every round; speed is reported, never asserted.

Workloads:
- W4: a 100 MB float64 array produced on node a and consumed on node b (both pinned), the
  driver holding no resources. Effective transfer rate = 100 MB / (consumer ``started_at`` -
  producer ``finished_at``) from ``result.stats`` (producer worker -> node a -> node b ->
  consumer worker, with the orchestration in between); also the rate until the consumer has
  read one item of every page (``finished_at``), which counts a value that is mapped rather
  than copied; the end-to-end time of ``execute``; and the driver fetching the value itself
  with ``handoff.get_value(dag_id, fid, from_node="a")`` (until it returns, and until every
  page was read). Baseline: raw pyzmq, one 100 MB zero-copy frame DEALER -> ROUTER over
  loopback TCP (two contexts in this process), timed from send to received.
- W6: 40 functions each costing ``{"gpu": 1}`` and sleeping 20 ms; node a has cpu=2, node b
  cpu=2,gpu=1 (2 workers each). All must land on b (asserted); makespan of ``execute``
  against the ideal 0.8 s (one gpu), and the mean idle gap between consecutive tasks on b.
- W1: 10,000 no-op functions and one sum, over nodes a and b plus the driver (cpu=0, one
  worker), against the same DAG on one local embedded node with 2 workers. Zero-cost
  functions may land on the driver too: the allocation counts per node are reported.
- Gossip: 8 node processes (1 worker each), each joining the one before: started one after
  another (each once the previous one is up), and launched all at once. Seconds until every
  node's membership, asked over the wire by the driver (which joins the first node), holds
  all 8.

At the end of the module a summary table prints every metric with its target; the same
numbers are in each benchmark's ``extra_info`` (``--benchmark-json`` keeps them).
"""

from __future__ import annotations

import itertools
import os
import platform
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import zmq

import handoff
from handoff import DAG, Function, _core

BENCH_DIR = Path(__file__).resolve().parent
INTEGRATION_DIR = BENCH_DIR.parent / "tests" / "integration"
sys.path.insert(0, str(INTEGRATION_DIR))
from nodes import PACKAGE_ROOT, start_node, wait_for, wait_listening

pytestmark = pytest.mark.timeout(300)

# W4
W4_BYTES = 100_000_000  # "100 MB"; rates are in GB/s = 1e9 bytes/s
W4_ROUNDS = 3
W4_TARGET_GBPS = 2.5
RAW_ROUNDS = 5
# W6
W6_N, W6_SLEEP = 40, 0.02
W6_IDEAL = W6_N * W6_SLEEP  # one gpu in the cluster: strictly one after another
W6_ROUNDS = 5
# W1
W1_N = 10_000
W1_ROUNDS = 3
LOCAL_WORKERS = 2
# Gossip
GOSSIP_NODES = 8
GOSSIP_ROUNDS = 3
GOSSIP_TIMEOUT = 30.0

# metric name -> list of values (one per round); filled by the benchmarks, read by the summary
VALUES: dict[str, list] = {}


# ---- the functions (module-level: nodes import this module, bench/ is on their path) ----


def make_array(n_bytes: int, offset: float) -> np.ndarray:
    return np.arange(n_bytes // 8, dtype=np.float64) + offset


PAGE_STRIDE = 4096 // 8  # float64 items per 4 KiB page


def digest(a: np.ndarray) -> tuple:
    """A fingerprint that reads one item of every 4 KiB page: cheap, but a value that is only
    mapped (not yet copied in) has to be brought in whole before it returns."""
    return (a.dtype.str, a.nbytes, float(a[::PAGE_STRIDE].sum()), float(a[0]), float(a[-1]))


def gpu_nap(i: int) -> int:
    time.sleep(W6_SLEEP)
    return i


def noop():
    return 1


def total(*xs):
    return sum(xs)


# ---- the DAGs ------------------------------------------------------------------------


def dag_w4(offset: float, n_bytes: int = W4_BYTES) -> DAG:
    dag = DAG()
    dag.add_function(Function(id="produce", code=make_array, extra_args=[n_bytes, offset], node="a"))
    dag.add_function(Function(id="consume", code=digest, args=["produce"], node="b"))
    return dag


def dag_w6() -> DAG:
    dag = DAG()
    for i in range(W6_N):
        dag.add_function(Function(id=i, code=gpu_nap, extra_args=[i], cost={"gpu": 1}))
    return dag


def dag_w1() -> DAG:
    dag = DAG()
    add = dag.add_function
    for i in range(W1_N):
        add(Function(id=i, code=noop))
    add(Function(id="sum", code=total, args=list(range(W1_N))))
    return dag


def check_w1(result) -> None:
    assert result.results["sum"] == W1_N
    assert len(result.results) == W1_N + 1


# ---- fixtures ----------------------------------------------------------------------------


def node_env() -> dict[str, str]:
    """Node processes import this module (to unpickle its functions): put bench/ on their path."""
    paths = [str(PACKAGE_ROOT), str(INTEGRATION_DIR), str(BENCH_DIR),
             *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


def stop_all(nodes: list) -> None:
    """Stop node processes by PID (NodeProcess.stop), in parallel."""
    if nodes:
        with ThreadPoolExecutor(len(nodes)) as ex:
            list(ex.map(lambda n: n.stop(), nodes))


@pytest.fixture(scope="class")
def local_node():
    """One embedded node with 2 workers and nothing else (the local W1 figure)."""
    handoff.stop()
    name = handoff.start(workers=LOCAL_WORKERS)
    try:
        dag = dag_w1()  # warm-up: ships and caches the code in both workers
        check_w1(handoff.execute(dag))
        handoff.clear(dag.id)
        yield name
    finally:
        handoff.stop()


@pytest.fixture(scope="class")
def cluster():
    """Nodes a (cpu=2) and b (cpu=2, gpu=1), 2 workers each, and the driver (cpu=0, 1 worker)."""
    handoff.stop()
    env = node_env()
    nodes = []
    try:
        a = start_node("a", "cpu=2", workers=2, env=env)
        nodes.append(a)
        nodes.append(start_node("b", "cpu=2,gpu=1", workers=2, join=a.address, env=env))
        handoff.start(name="driver", join=a.address, resources={"cpu": 0}, workers=1)
        assert wait_for(lambda: set(handoff.discover_nodes()) == {"a", "b", "driver"})
        # warm-up: every worker imports numpy and this module and caches the code
        small = dag_w4(0.0, n_bytes=8 * 1024)
        assert handoff.execute(small).results["consume"] == digest(make_array(8 * 1024, 0.0))
        handoff.clear(small.id)
        for make, check in ((dag_w6, None), (dag_w1, check_w1)):
            dag = make()
            result = handoff.execute(dag)
            if check:
                check(result)
            handoff.clear(dag.id)
        yield {n.name: n for n in nodes}
    finally:
        handoff.stop()
        stop_all(nodes)


@pytest.fixture(scope="class")
def spawned():
    """Node processes a benchmark starts; whatever is still running is stopped at the end."""
    handoff.stop()
    nodes: list = []
    try:
        yield nodes
    finally:
        handoff.stop()
        stop_all(nodes)


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    """Print the table once every benchmark of the module has run."""
    yield
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if reporter is None or not VALUES:
        return
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():  # teardown output is captured otherwise
        for line in summary_lines():
            reporter.write_line(line)


# ---- helpers -----------------------------------------------------------------------------


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def gbps(seconds: float, n_bytes: int = W4_BYTES) -> float:
    return n_bytes / seconds / 1e9


def record(benchmark, metric: str, values: list, **extra) -> None:
    VALUES[metric] = values
    info = benchmark.extra_info
    info[metric] = values
    if values and all(isinstance(v, (int, float)) for v in values):
        info[metric + "_mean"] = mean(values)
    info.update(extra)


# ---- W4 baseline: raw pyzmq ----------------------------------------------------------


def raw_zmq_rate(payload: np.ndarray) -> float:
    """DEALER -> ROUTER over loopback TCP, one 100 MB zero-copy frame; GB/s from send to received."""
    ctx_rx, ctx_tx = zmq.Context(), zmq.Context()  # two io threads, as two processes would have
    router = ctx_rx.socket(zmq.ROUTER)
    dealer = ctx_tx.socket(zmq.DEALER)
    got: dict = {}

    def receive() -> None:
        frames = router.recv_multipart(copy=False)
        got["t"] = time.perf_counter()
        got["frames"] = frames

    try:
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer.connect(f"tcp://127.0.0.1:{port}")
        dealer.send(b"hello")
        assert router.recv_multipart()[1] == b"hello"  # connected before anything is timed
        rx = threading.Thread(target=receive)
        rx.start()
        t0 = time.perf_counter()
        dealer.send(memoryview(payload).cast("B"), copy=False)
        rx.join(60)
        assert not rx.is_alive()
        received = np.frombuffer(got["frames"][1].buffer, dtype=np.float64)
        assert received.nbytes == W4_BYTES
        assert received[0] == payload[0] and received[-1] == payload[-1]
        return gbps(got["t"] - t0)
    finally:
        got.clear()
        dealer.close(0)
        router.close(0)
        ctx_tx.term()
        ctx_rx.term()


@pytest.mark.benchmark(group="W4 100 MB a -> b")
def test_w4_raw_pyzmq_baseline(benchmark):
    payload = make_array(W4_BYTES, 0.0)
    rates: list[float] = []
    benchmark.pedantic(lambda: rates.append(raw_zmq_rate(payload)), rounds=RAW_ROUNDS, iterations=1)
    assert len(rates) == RAW_ROUNDS
    record(benchmark, "w4_raw_zmq_gbps", rates)


# ---- W1 helper, and the local figure (one embedded node, 2 workers) --------------------------


def bench_w1(benchmark, metric: str) -> None:
    rates, allocations = [], []

    def run(dag):
        t0 = time.perf_counter()
        result = handoff.execute(dag)
        rates.append((W1_N + 1) / (time.perf_counter() - t0))
        check_w1(result)
        allocations.append(dict(sorted(Counter(result.allocations.values()).items())))
        handoff.clear(dag.id)

    benchmark.pedantic(run, setup=lambda: ((dag_w1(),), {}), rounds=W1_ROUNDS, iterations=1)
    assert len(rates) == W1_ROUNDS
    record(benchmark, metric, rates)
    VALUES[metric + "_allocations"] = allocations
    benchmark.extra_info[metric + "_allocations"] = allocations


@pytest.mark.usefixtures("local_node")
class TestW1Local:
    @pytest.mark.benchmark(group="W1 10k no-ops + sum")
    def test_w1_local(self, benchmark):
        bench_w1(benchmark, "w1_local_fps")


# ---- W4, W6, W1 on one cluster: a (cpu=2), b (cpu=2, gpu=1), driver (cpu=0) ---------------


@pytest.mark.usefixtures("cluster")
class TestCluster:
    """One cluster for W4, W6 and W1, set up and warmed up once."""

    @pytest.mark.benchmark(group="W4 100 MB a -> b")
    def test_w4_node_to_node(self, benchmark):
        offsets = iter(range(1, 1000))
        rates, read_rates, e2e, gaps = [], [], [], []

        def setup():
            offset = float(next(offsets))
            return (dag_w4(offset), offset), {}

        def run(dag, offset):
            t0 = time.perf_counter()
            result = handoff.execute(dag)
            e2e.append(time.perf_counter() - t0)
            assert result.allocations == {"produce": "a", "consume": "b"}
            assert result.results["consume"] == digest(make_array(W4_BYTES, offset))
            produced, consumed = result.stats["produce"], result.stats["consume"]
            gap = consumed.started_at - produced.finished_at
            assert gap > 0
            gaps.append(gap)
            rates.append(gbps(gap))
            # until the consumer has read every page (digest): counts a value that is mapped
            # rather than copied, whose bytes arrive on first touch
            read_rates.append(gbps(consumed.finished_at - produced.finished_at))
            handoff.clear(dag.id)

        benchmark.pedantic(run, setup=setup, rounds=W4_ROUNDS, iterations=1)
        assert len(rates) == W4_ROUNDS
        record(benchmark, "w4_effective_gbps", rates, w4_gap_s=gaps)
        record(benchmark, "w4_read_gbps", read_rates)
        record(benchmark, "w4_end_to_end_s", e2e)

    @pytest.mark.benchmark(group="W4 100 MB a -> b")
    def test_w4_driver_get_value(self, benchmark):
        dag = dag_w4(0.5)
        result = handoff.execute(dag)
        assert result.results.location("produce") == "a"
        expected = make_array(W4_BYTES, 0.5)
        want = digest(expected)
        rates, read_rates, seconds = [], [], []

        def run():
            t0 = time.perf_counter()
            value = handoff.get_value(dag.id, "produce", from_node="a")
            t1 = time.perf_counter()
            got = digest(value)  # every page read once: a mapped value is brought in here
            t2 = time.perf_counter()
            assert got == want
            assert np.array_equal(value, expected)
            seconds.append(t1 - t0)
            rates.append(gbps(t1 - t0))
            read_rates.append(gbps(t2 - t0))
            del value

        try:
            benchmark.pedantic(run, rounds=W4_ROUNDS, iterations=1)
        finally:
            handoff.clear(dag.id)
        assert len(rates) == W4_ROUNDS
        record(benchmark, "w4_driver_fetch_gbps", rates, w4_driver_fetch_s=seconds)
        record(benchmark, "w4_driver_fetch_read_gbps", read_rates)

    @pytest.mark.benchmark(group="W6 40 x gpu=1 sleep 20 ms")
    def test_w6_gpu_placement(self, benchmark):
        makespans, spans, gaps, on_gpu = [], [], [], []

        def run(dag):
            t0 = time.perf_counter()
            result = handoff.execute(dag)
            makespans.append(time.perf_counter() - t0)
            assert dict(result.results) == {i: i for i in range(W6_N)}
            share = sum(node == "b" for node in result.allocations.values()) / W6_N
            on_gpu.append(100.0 * share)
            assert share == 1.0, Counter(result.allocations.values())
            stats = sorted(result.stats.values(), key=lambda s: s.started_at)
            spans.append(stats[-1].finished_at - stats[0].started_at)
            gaps.append(1e3 * mean([b.started_at - a.finished_at for a, b in itertools.pairwise(stats)]))
            handoff.clear(dag.id)

        benchmark.pedantic(run, setup=lambda: ((dag_w6(),), {}), rounds=W6_ROUNDS, iterations=1)
        assert len(makespans) == W6_ROUNDS
        record(benchmark, "w6_pct_on_gpu", on_gpu)
        record(benchmark, "w6_makespan_s", makespans, w6_ideal_s=W6_IDEAL)
        record(benchmark, "w6_worker_span_s", spans)
        record(benchmark, "w6_gap_ms", gaps)

    @pytest.mark.benchmark(group="W1 10k no-ops + sum")
    def test_w1_cluster(self, benchmark):
        bench_w1(benchmark, "w1_cluster_fps")


# ---- Gossip: 8 nodes in a chain ----------------------------------------------------------


def members_of(name: str) -> set:
    try:
        return set(handoff.api.current_node().peer_stats(name, timeout=5.0)["members"])
    except handoff.HandoffError:  # not (yet) known to the driver
        return set()


def await_convergence(names: list[str], since: float) -> tuple[float, float | None]:
    """Poll until every node's membership (asked over the wire) holds all of ``names``;
    returns when that happened and when the driver's own view first held them all."""
    everyone = set(names)
    seen_at: dict[str, float] = {}
    driver_at = None
    deadline = since + GOSSIP_TIMEOUT
    while len(seen_at) < len(names) and time.perf_counter() < deadline:
        if driver_at is None and everyone <= set(handoff.discover_nodes()):
            driver_at = time.perf_counter()
        for name in names:
            if name not in seen_at and everyone <= members_of(name):
                seen_at[name] = time.perf_counter()
        time.sleep(0.005)
    assert len(seen_at) == len(names), f"not converged in {GOSSIP_TIMEOUT} s: only {sorted(seen_at)}"
    return max(seen_at.values()), driver_at


def gossip_chain(spawned: list, round_no: int) -> dict:
    """One after another, each node started once the one before is up (listening and joined)."""
    names = [f"c{round_no}-{i}" for i in range(GOSSIP_NODES)]
    t_first = time.perf_counter()
    first = start_node(names[0], "cpu=1", workers=1)
    spawned.append(first)
    # the driver joins the head of the chain first, so that it is there before the others
    handoff.start(name=f"driver-c{round_no}", join=first.address, resources={"cpu": 0}, workers=1)
    prev = first
    for name in names[1:]:
        prev = start_node(name, "cpu=1", workers=1, join=prev.address)
        spawned.append(prev)
    t_last = time.perf_counter()  # the last node has joined (it prints "listening" after)
    t_conv, driver_at = await_convergence(names, t_last)
    return {
        "chain_from_first_start_s": t_conv - t_first,
        "chain_after_last_joined_s": t_conv - t_last,
        "chain_driver_view_after_last_joined_s": None if driver_at is None else driver_at - t_last,
    }


def gossip_burst(spawned: list, round_no: int) -> dict:
    """All 8 launched at once, each told to join the one before (which may not be up yet)."""
    names = [f"b{round_no}-{i}" for i in range(GOSSIP_NODES)]
    t0 = time.perf_counter()
    prev = None
    for name in names:
        prev = start_node(name, "cpu=1", workers=1, join=prev and prev.address, wait=False)
        spawned.append(prev)
    handoff.start(name=f"driver-b{round_no}", join=spawned[0].address, resources={"cpu": 0}, workers=1)
    t_conv, driver_at = await_convergence(names, t0)
    for node in spawned:
        wait_listening(node)  # every one of them did start and join
    return {
        "burst_from_launch_s": t_conv - t0,
        "burst_driver_view_from_launch_s": None if driver_at is None else driver_at - t0,
    }


def bench_gossip(benchmark, spawned, one_round) -> None:
    rounds = iter(range(GOSSIP_ROUNDS))
    out: list[dict] = []

    def run():
        try:
            out.append(one_round(spawned, next(rounds)))
        finally:
            handoff.stop()
            stop_all(spawned)
            spawned.clear()

    benchmark.pedantic(run, rounds=GOSSIP_ROUNDS, iterations=1)
    assert len(out) == GOSSIP_ROUNDS
    for key in out[0]:
        record(benchmark, "gossip_" + key, [o[key] for o in out])


@pytest.mark.benchmark(group="Gossip 8 nodes")
def test_gossip_8_nodes_chain(benchmark, spawned):
    bench_gossip(benchmark, spawned, gossip_chain)


@pytest.mark.benchmark(group="Gossip 8 nodes")
def test_gossip_8_nodes_burst(benchmark, spawned):
    bench_gossip(benchmark, spawned, gossip_burst)


# ---- reporting ---------------------------------------------------------------------------


def summary_lines() -> list[str]:
    def v(metric):
        xs = [x for x in VALUES.get(metric) or () if x is not None]
        return (mean(xs), min(xs), max(xs)) if xs else None

    def rng(x, f="{:.2f}"):
        return f"{f.format(x[0])} [{f.format(x[1])}-{f.format(x[2])}]"

    def yes(ok):
        return "yes" if ok else "no"

    cpus = os.cpu_count()
    load = "/".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    lines = [
        "",
        (
            f"bench_cluster summary (mean [min-max] over rounds; {cpus} cpus, "
            f"Python {platform.python_version()}, {platform.machine()}, "
            f"core {_core.IMPLEMENTATION}, load average now {load}):"
        ),
        "",
        "| workload | result | target / comparison | met? |",
        "|---|---|---|---|",
    ]
    add = lines.append
    raw = v("w4_raw_zmq_gbps")
    vs_raw = (lambda x: f"; {x[0] / raw[0]:.2f}x raw pyzmq") if raw else (lambda x: "")
    eff = v("w4_effective_gbps")
    if eff:
        add(f"| W4 100 MB a -> b, effective (consumer start - producer finish) | {rng(eff)} GB/s "
            f"| >= {W4_TARGET_GBPS} GB/s (Dask w2w 2.2, Ray 0.7){vs_raw(eff)} "
            f"| {yes(eff[0] >= W4_TARGET_GBPS)} |")
    read = v("w4_read_gbps")
    if read:
        add(f"| W4 a -> b until the consumer read every page | {rng(read)} GB/s "
            f"| same target{vs_raw(read)} | {yes(read[0] >= W4_TARGET_GBPS)} |")
    e2e = v("w4_end_to_end_s")
    if e2e:
        add(f"| W4 end to end (execute: produce on a, consume on b) | {rng(e2e, '{:.3f}')} s | report | - |")
    fetch, fetch_read = v("w4_driver_fetch_gbps"), v("w4_driver_fetch_read_gbps")
    if fetch:
        more = f"; with every page read {rng(fetch_read)} GB/s{vs_raw(fetch_read)}" if fetch_read else ""
        add(f"| W4 driver get_value(from_node=\"a\") | returns at {rng(fetch)} GB/s{more} | report | - |")
    if raw:
        add(f"| W4 raw pyzmq DEALER->ROUTER, one 100 MB zero-copy frame | {rng(raw)} GB/s "
            f"| baseline (earlier on this machine: 1.3-1.8 GB/s) | - |")
    pct = v("w6_pct_on_gpu")
    if pct:
        add(f"| W6 placed on the gpu node | {pct[1]:.0f} % (lowest round) | 100 % | {yes(pct[1] == 100)} |")
    mk = v("w6_makespan_s")
    if mk:
        span, gap = v("w6_worker_span_s"), v("w6_gap_ms")
        more = f"; first start to last finish {span[0]:.3f} s" if span else ""
        more += f"; idle gap between tasks on b {gap[0]:.2f} ms" if gap else ""
        add(f"| W6 makespan, 40 x 20 ms on the one gpu | {rng(mk, '{:.3f}')} s = "
            f"{mk[0] / W6_IDEAL:.3f}x ideal{more} | <= {1.05 * W6_IDEAL:.2f} s = 1.05x {W6_IDEAL:.1f} s "
            f"(Dask 1.05x, Ray 1.10x) | {yes(mk[0] <= 1.05 * W6_IDEAL)} |")
    cl, lo = v("w1_cluster_fps"), v("w1_local_fps")
    if cl:
        allocs = VALUES.get("w1_cluster_fps_allocations") or []
        alloc = ", ".join(f"{k} {n}" for k, n in allocs[-1].items()) if allocs else ""
        cmp = f"local (1 node, 2 workers) {rng(lo, '{:,.0f}')} fn/s; {cl[0] / lo[0]:.2f}x local" if lo else "-"
        add(f"| W1 10k no-ops + sum, nodes a, b + driver (cpu 0) | {rng(cl, '{:,.0f}')} fn/s; "
            f"placed (last round): {alloc} | {cmp} | - |")
    elif lo:
        add(f"| W1 10k no-ops + sum, local | {rng(lo, '{:,.0f}')} fn/s | report | - |")
    chain = v("gossip_chain_from_first_start_s")
    if chain:
        after, drv = v("gossip_chain_after_last_joined_s"), v("gossip_chain_driver_view_after_last_joined_s")
        more = f"; {after[0] * 1e3:.0f} ms after the last node joined" if after else ""
        more += f" (driver's discover_nodes: {drv[0] * 1e3:.0f} ms)" if drv else ""
        add(f"| Gossip: 8 nodes started in a chain, all see all 8 | {rng(chain)} s from the first "
            f"start{more} | no target (gossip every 0.2 s, fanout 3) | - |")
    burst = v("gossip_burst_from_launch_s")
    if burst:
        drv = v("gossip_burst_driver_view_from_launch_s")
        more = f" (driver's discover_nodes: {drv[0]:.2f} s)" if drv else ""
        add(f"| Gossip: 8 nodes launched at once, each joining the one before | {rng(burst)} s "
            f"from launch{more} | no target | - |")
    return lines

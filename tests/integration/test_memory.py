"""Bounded memory with real node processes: the store budget spills, dead nodes' files are
swept by survivors, and a long soak keeps every process's RSS bounded."""

from __future__ import annotations

import os
import tempfile
import threading
import time

import numpy as np
import psutil
import pytest

import handoff
from handoff import DAG, Function
from handoff.node.data import shm
from handoff.testing import LocalCluster
from nodes import wait_for

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(not shm.available(), reason="needs a writable /dev/shm (Linux)"),
]

MB = 1024 * 1024


def block(i, nbytes):
    return np.full(nbytes // 8, i, dtype=np.float64)


def summarize(arr, i, big):
    return arr * 2 if big else float(arr[0]) + i


def files_of(pid: int) -> list[str]:
    """Every file a node process with this pid made: shm buffers, job files, spill dirs."""
    prefix = f"handoff-{pid}-"
    out = []
    for directory in (shm.SHM_DIR, tempfile.gettempdir()):
        out += [os.path.join(directory, n) for n in os.listdir(directory) if n.startswith(prefix)]
    return out


@pytest.fixture
def driver():
    handoff.stop()
    yield
    handoff.stop()


def test_store_limit_spills_old_values_and_every_one_reads_back(driver):
    with LocalCluster(1, names=["store"], extra_args=["--store-limit", "64M"]) as cluster:
        cluster.connect()
        node = cluster["store"]
        results, peak = [], 0
        for i in range(100):
            dag = DAG(f"memory-{i}").add_function(
                Function(id="big", code=block, extra_args=[i, 4 * MB], node="store"))
            results.append(handoff.execute(dag))
            if i % 10 == 9:
                peak = max(peak, handoff.node_stats("store")["store"]["memory_bytes"])
        stats = handoff.node_stats("store")["store"]
        assert stats["limit"] == 64 * MB
        assert peak <= 64 * MB and stats["memory_bytes"] <= 64 * MB
        assert stats["spills"] > 0 and stats["spilled_values"] >= 100 - 64 // 4
        assert stats["disk_bytes"] >= stats["spilled_values"] * 4 * MB
        assert stats["values"] == 100
        for i, r in enumerate(results):  # nothing lost: each value reads back, spilled or not
            value = r.results["big"]
            assert value.shape == (512 * 1024,) and value[0] == i and value[-1] == i
        after = handoff.node_stats("store")["store"]
        assert after["loads"] >= stats["spilled_values"]
        assert after["memory_bytes"] <= 64 * MB
        for i in range(100):
            handoff.clear(f"memory-{i}")
        assert wait_for(lambda: handoff.node_stats("store")["store"]["disk_bytes"] == 0)
    assert wait_for(lambda: not files_of(node.pid), timeout=10)


def test_files_of_a_killed_node_are_swept_by_a_survivor_within_seconds(driver):
    # the limit matters on the victim only: the keeper stores nothing
    with LocalCluster(2, names=["keeper", "victim"], resources=[{"cpu": 1}, {"cpu": 2}], workers=2,
                      extra_args=["--store-limit", "4M"]) as cluster:
        cluster.connect()
        keeper, victim = cluster["keeper"], cluster["victim"]
        dag = DAG("doomed")
        for i in range(3):  # 2 MB results: shared memory; past 4 MB some spill to disk
            dag.add_function(Function(id=i, code=block, extra_args=[i, 2 * MB], node="victim"))
        handoff.execute(dag)
        left = files_of(victim.pid)
        assert any(p.startswith(shm.SHM_DIR) for p in left), left
        assert any(p.endswith(".job") for p in left), left
        assert any(p.endswith(".spill") for p in left), left
        workers = [p.pid for p in psutil.Process(victim.pid).children(recursive=True)]
        assert workers
        cluster.kill("victim")  # kill -9: node and its workers, by pid
        killed_at = time.monotonic()
        assert wait_for(lambda: not files_of(victim.pid), timeout=10), files_of(victim.pid)
        took = time.monotonic() - killed_at
        print(f"files of the killed node swept in {took:.1f} s")
        assert keeper.running
        keeper_pid = keeper.pid
    assert not files_of(keeper_pid)


class PeakRSS:
    """Samples the RSS of a set of processes (and their children) on a thread, keeps peaks."""

    def __init__(self, pids: list[int]):
        self.pids = pids
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self.pids:
                try:
                    proc = psutil.Process(pid)
                    for p in [proc, *proc.children(recursive=True)]:
                        rss = p.memory_info().rss
                        self.peaks[p.pid] = max(self.peaks.get(p.pid, 0), rss)
                except psutil.NoSuchProcess:
                    pass
            self._stop.wait(0.05)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


RSS_BOUND = 400 * MB  # per process: node, each worker, driver


@pytest.mark.slow
def test_soak_of_3000_dags_with_large_arguments_keeps_every_process_bounded(driver):
    with LocalCluster(1, names=["soak"], resources={"cpu": 2}, workers=2,
                      extra_args=["--store-limit", "32M"]) as cluster:
        cluster.connect()
        node = cluster["soak"]
        arg = np.random.default_rng(0).random(MB // 8)  # 1 MB argument to every DAG
        n, checked = 3000, 0
        with PeakRSS([os.getpid(), node.pid]) as rss:
            for i in range(n):
                big = i % 10 == 0  # every tenth returns a 1 MB array, kept without clear
                dag = DAG(f"soak-{i}").add_function(
                    Function(id="f", code=summarize, extra_args=[arg, i, big], node="soak"))
                r = handoff.execute(dag)
                if i % 100 == 0:  # reading results back (spilled ones from disk) is part of it
                    got = r.results["f"]
                    assert got[0] == arg[0] * 2 if big else got == arg[0] + i
                    checked += 1
        stats = handoff.node_stats("soak")["store"]
        for dag_i in (0, 10, 1000, 2990):
            np.testing.assert_array_equal(handoff.get_value(f"soak-{dag_i}", "f", "soak"), arg * 2)
        peaks = dict(rss.peaks)
        print("peak RSS MB:", {pid: round(v / MB) for pid, v in sorted(peaks.items())},
              "store:", stats)
        assert checked == n // 100 and stats["values"] == n
        assert stats["memory_bytes"] <= 32 * MB and stats["spills"] > 0
        assert len(peaks) >= 4  # the driver, the node and its two workers were measured
        assert max(peaks.values()) < RSS_BOUND, peaks  # 3 GB of arguments, 300 MB of results
    assert wait_for(lambda: not files_of(node.pid), timeout=10)

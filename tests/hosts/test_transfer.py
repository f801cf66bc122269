"""A 1 GB array crosses hosts: over TCP (each host has its own /dev/shm), in parts, correct
to the byte; the throughput is reported."""

from __future__ import annotations

import pytest
from hosts_harness import measured, start_driver

import handoff
from handoff import DAG, Argument, Function

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

GIB = 1 << 30
PATIENT = ["--suspect-after", "5", "--dead-after", "10"]
BASELINE_BYTES = 256 << 20
RECEIVE = """
import mmap, socket, sys, time
s = socket.create_server((sys.argv[1], 7002)); print("up", flush=True)
c, _ = s.accept(); size = int(sys.argv[2]); got = 0; t0 = None
buf = memoryview(mmap.mmap(-1, size))  # a fresh buffer of the value's size, as a node fills
while got < size and (n := c.recv_into(buf[got:])):
    t0 = t0 or time.perf_counter(); got += n
print("received", got, time.perf_counter() - t0, flush=True)
"""
SEND = """
import socket, sys
data = bytes(int(sys.argv[2])); c = socket.create_connection((sys.argv[1], 7002), 30)
c.sendall(data); c.close()
"""


def make_array(nbytes: int):
    import numpy as np

    return np.arange(nbytes // 8, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)


def fingerprint(array) -> dict:
    """What the bytes are, and where this ran (host name, shared-memory files there)."""
    import hashlib
    import os
    import socket

    return {"sha256": hashlib.sha256(memoryview(array).cast("B")).hexdigest(),
            "nbytes": int(array.nbytes), "host": socket.gethostname(),
            "shm_files": len(os.listdir("/dev/shm"))}


def test_a_1gb_array_crosses_hosts_over_tcp_in_parts_byte_for_byte(make_hosts, key):
    hosts = make_hosts(2)
    key_file = key(hosts)
    # this test is about the bytes: a detector with room for a machine loaded by other tests
    # (tests/hosts/test_partition.py and test_slow_link.py test detection at the defaults)
    one = ["--workers", "1", "--resources", "cpu=1", *PATIENT]
    h1 = hosts.start_node("h1", key_file=key_file, args=one)
    hosts.start_node("h2", key_file=key_file, join=h1.address, args=one)
    start_driver(hosts, h1.address, key_file, ["h1", "h2"], suspect_after=5.0, dead_after=10.0)
    dag = DAG()
    dag.add_function(Function(id="make", code=make_array, extra_args=[GIB], node="h1"))
    dag.add_function(Function(id="at_source", code=fingerprint, args=[Argument("make")], node="h1"))
    dag.add_function(Function(id="across", code=fingerprint, args=[Argument("make")], node="h2"))
    sent_before = handoff.node_stats("h1")["counters"].get("parts_sent", 0)
    result = handoff.execute(dag, timeout=240)  # results are fetched on access: make stays on h1
    source, across = result.results["at_source"], result.results["across"]
    assert source["host"] == "h1" and across["host"] == "h2"
    assert source["nbytes"] == across["nbytes"] == GIB
    assert across["sha256"] == source["sha256"]
    assert source["shm_files"] >= 1  # on h1 the value lives in h1's /dev/shm ...
    h1_stats, h2_stats = handoff.node_stats("h1"), handoff.node_stats("h2")
    parts = h1_stats["counters"]["parts_sent"] - sent_before
    assert parts >= GIB // (16 << 20)  # ... and reached h2 over TCP in 16 MB parts
    assert h2_stats["counters"]["bytes_fetched"] >= GIB
    made, arrived = result.stats["make"], result.stats["across"]
    seconds = arrived.started_at - made.finished_at  # fetch of 1 GiB, into h2's store
    raw = raw_tcp_seconds(hosts)  # the same run's baseline: a bare socket over the same link
    measured(f"1 GiB h1 -> h2 over TCP with CURVE in {parts} parts: {seconds:.2f} s, "
             f"{GIB / seconds / 1e9:.3f} GB/s (producer returned -> consumer started); bare "
             f"Python socket into a fresh buffer over the same link {BASELINE_BYTES / raw / 1e9:.3f} GB/s")


def raw_tcp_seconds(hosts) -> float:
    receiver = hosts.python("h2", "-c", RECEIVE, hosts["h2"].address, str(BASELINE_BYTES),
                            label="receiver")
    receiver.wait_for("up")
    sender = hosts.python("h1", "-c", SEND, hosts["h2"].address, str(BASELINE_BYTES), label="sender")
    assert sender.wait() == 0, sender.output()
    assert receiver.wait() == 0, receiver.output()
    _, got, seconds = receiver.wait_for("received").split()
    assert int(got) == BASELINE_BYTES
    return float(seconds)

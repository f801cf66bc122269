"""A slow link (100 ms round trips between every two nodes, made by delay relays since the
kernel here may lack netem) causes no false death verdicts at the default detector."""

from __future__ import annotations

import statistics

import pytest
from hosts_harness import measured, start_driver

import handoff
from handoff import DAG, Argument, Function
from handoff.testing.hosts import NODE_PORT
from handoff.testing.relay import DelayRelay

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ONE_WAY = 0.05  # seconds added each way: every node-to-node round trip crosses two relays
WAVES = 12  # of three 0.5 s functions each, passing 1 MB arrays: about 8 s, 4x dead-after


def step(*inputs):
    """Workload: half a second of a running function, then a 1 MB array for the next wave."""
    import time

    import numpy as np

    time.sleep(0.5)
    return np.full(1 << 17, sum(int(a[0]) for a in inputs) + 1, dtype=np.int64)


def test_100ms_round_trips_cause_no_false_death_verdicts(make_hosts, key):
    hosts = make_hosts(3)
    key_file = key(hosts)
    relays = {name: DelayRelay(hosts.root_address, (hosts[name].address, NODE_PORT), ONE_WAY)
              for name in ("h1", "h2", "h3")}
    try:
        one = ["--workers", "1", "--resources", "cpu=1"]
        hosts.start_node("h1", key_file=key_file, args=one + ["--advertise", relays["h1"].address])
        for name in ("h2", "h3"):
            hosts.start_node(name, key_file=key_file, join=relays["h1"].address,
                             args=one + ["--advertise", relays[name].address])
        start_driver(hosts, relays["h1"].address, key_file, ["h1", "h2", "h3"])
        names = ["driver", "h1", "h2", "h3"]
        before = {n: handoff.node_stats(n)["membership"] for n in names}
        for view in before.values():
            for name in ("h1", "h2", "h3"):
                assert view[name]["address"] == relays[name].address  # all traffic is relayed

        dag = DAG()
        for wave in range(WAVES):
            for i in range(3):
                inputs = [Argument(f"w{wave - 1}-{j}") for j in range(3)] if wave else []
                dag.add_function(Function(id=f"w{wave}-{i}", code=step, args=inputs, cost={"cpu": 1}))
        result = handoff.execute(dag, timeout=240)
        assert int(result.results[f"w{WAVES - 1}-0"][0]) == sum(3 ** k for k in range(WAVES))

        after = {n: handoff.node_stats(n)["membership"] for n in names}
        for viewer in names:
            for name in names:
                row, was = after[viewer][name], before[viewer][name]
                assert (row["status"], row["incarnation"]) == ("alive", was["incarnation"]), (viewer, name)
        logs = {name: p.output() for name in ("h1", "h2", "h3") for p in hosts[name].processes}
        assert not [n for n, log in logs.items() if " is dead" in log or "declared this node dead" in log]
        suspects = sum(log.count(" is suspect") for log in logs.values())
        for relay in relays.values():
            assert relay.stats.bytes_in > 0 and relay.stats.bytes_out > 0
        delays = [d for r in relays.values() for d in r.stats.delays]
        hosts_of = {result.stats[f].node for f in result.results}
        assert hosts_of == {"h1", "h2", "h3"}
    finally:
        for relay in relays.values():
            relay.close()
    measured(f"slow link: {WAVES * 3} functions over {WAVES} waves with 100 ms node-to-node "
             f"round trips (relay delay per chunk: median {statistics.median(delays) * 1000:.0f} ms "
             f"one way, {len(delays)} chunks): no death verdict, {suspects} suspect hints")

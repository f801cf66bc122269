"""Gossip membership benchmarks: convergence of a simulated 1,000-node cluster, healing after a
pause, and merge cost.

Run with ``pytest bench/bench_gossip.py`` (bench/ is not collected by default). The round
counts land in each benchmark's ``extra_info`` (see ``--benchmark-json``).
"""

from __future__ import annotations

import random
import time

import msgspec
import pytest

from handoff.node.cluster.membership import DEAD, MemberRow, MembershipTable

CAPS = {"cpu": 8.0, "memory": 16000.0, "gpu": 1.0}
N = 1000


def make_tables(n: int, seed: int, **kwargs) -> dict[str, MembershipTable]:
    rng = random.Random(seed)
    return {
        f"node-{i}": MembershipTable(
            f"node-{i}",
            f"tcp://10.0.{i // 256}.{i % 256}:5555",
            CAPS,
            incarnation=1,
            rng=random.Random(rng.getrandbits(64)),
            **kwargs,
        )
        for i in range(n)
    }


def join_all_via_seed(tables: dict[str, MembershipTable], now: float = 0.0) -> None:
    """Every node says hello to node-0 at once: node-0 knows all, the others know node-0."""
    seed = tables["node-0"]
    for name, table in tables.items():
        if name != "node-0":
            seed.merge([table.me.row()], now)
            table.merge([seed.me.row()], now)


def gossip_round(tables: dict[str, MembershipTable], now: float,
                 paused: frozenset[str] = frozenset()) -> None:
    """One synchronous round: every running node ticks and pushes its digest to its targets
    and to the dead members it probes; a paused node neither sends nor receives."""
    outbox = []
    for table in tables.values():
        if table.name in paused:
            continue
        table.tick(now)
        digest = table.digest()
        outbox.extend((target, table.name, digest) for target in table.gossip_targets())
        outbox.extend((target, table.name, digest) for target, _ in table.probe_targets(now))
    for target, sender, digest in outbox:
        if target in paused:
            continue
        receiver = tables[target]
        receiver.merge(digest, now)
        receiver.heard_from(sender, now)


def converge(n: int, seed: int, interval: float = 0.1, limit: int = 50) -> tuple[int, list[float]]:
    """Rounds until every node knows every other node, and the wall time of each round."""
    tables = make_tables(n, seed)
    join_all_via_seed(tables)
    round_times: list[float] = []
    now = 0.0
    while any(len(t.addresses()) != n - 1 for t in tables.values()):
        if len(round_times) == limit:
            raise AssertionError(f"{n} nodes did not converge in {limit} rounds")
        now += interval
        start = time.perf_counter()
        gossip_round(tables, now)
        round_times.append(time.perf_counter() - start)
    return len(round_times), round_times


def test_rounds_to_converge_1000_nodes(benchmark):
    seeds = iter(range(1_000))
    results: list[tuple[int, list[float]]] = []

    def run() -> None:
        results.append(converge(N, next(seeds)))

    benchmark.pedantic(run, rounds=3, iterations=1)
    rounds = [r for r, _ in results]
    per_round = [t for _, times in results for t in times]
    benchmark.extra_info["nodes"] = N
    benchmark.extra_info["fanout"] = 3
    benchmark.extra_info["rounds_to_converge"] = rounds
    benchmark.extra_info["mean_round_seconds_all_nodes"] = sum(per_round) / len(per_round)
    benchmark.extra_info["mean_round_ms_per_node"] = 1e3 * sum(per_round) / len(per_round) / N
    assert max(rounds) <= 15


def heal_after_pause(n: int, seed: int, pause: float, interval: float = 0.1) -> int:
    """Rounds from the end of one member's pause (long enough to be declared dead by all)
    until every table holds every member alive again."""
    tables = make_tables(n, seed, max_tick_gap=0.5)
    join_all_via_seed(tables)
    now = 0.0
    for _ in range(40):  # converge, and let the members talk to each other directly
        now += interval
        gossip_round(tables, now)
    victim = frozenset({"node-7"})
    for _ in range(round(pause / interval)):
        now += interval
        gossip_round(tables, now, paused=victim)
    assert all(t.get("node-7").status is DEAD for t in tables.values() if t.name != "node-7")
    for rounds in range(1, 100):
        now += interval
        gossip_round(tables, now)
        if all(len(t.addresses()) == n - 1 for t in tables.values()):
            return rounds
    raise AssertionError(f"{n} nodes did not heal in 100 rounds")


def test_rounds_to_heal_200_nodes_after_a_3s_pause(benchmark):
    seeds = iter(range(1_000))
    rounds: list[int] = []
    benchmark.pedantic(lambda: rounds.append(heal_after_pause(200, next(seeds), 3.0)),
                       rounds=3, iterations=1)
    benchmark.extra_info["nodes"] = 200
    benchmark.extra_info["rounds_to_heal"] = rounds
    assert max(rounds) <= 20  # 2 s at a 0.1 s interval


@pytest.fixture(scope="module")
def full_cluster_digest() -> tuple[MembershipTable, list[MembershipTable]]:
    """A table that already knows 1,000 peers, and those peers."""
    peers = list(make_tables(N, seed=0).values())
    table = MembershipTable("observer", "tcp://10.9.9.9:5555", CAPS, incarnation=1)
    table.merge([p.me.row() for p in peers], 0.0)
    return table, peers


def on_the_wire(peers: list[MembershipTable]) -> list:
    return msgspec.msgpack.decode(msgspec.msgpack.encode([p.me.row() for p in peers]), type=list[MemberRow])


def test_merge_1000_rows_all_heartbeats_advanced(benchmark, full_cluster_digest):
    """The steady state: every row carries a newer heartbeat than we have."""
    table, peers = full_cluster_digest
    clock = iter(range(1, 1_000_000))

    def fresh_digest():
        for peer in peers:
            peer.me.heartbeat += 1
        return (on_the_wire(peers), float(next(clock))), {}

    benchmark.pedantic(table.merge, setup=fresh_digest, rounds=200, iterations=1)
    benchmark.extra_info["rows"] = N
    assert benchmark.stats.stats.median < 0.010


def test_merge_1000_rows_nothing_new(benchmark, full_cluster_digest):
    table, peers = full_cluster_digest
    table.merge(on_the_wire(peers), 0.0)
    digest = on_the_wire(peers)
    benchmark(table.merge, digest, 0.0)
    benchmark.extra_info["rows"] = N
    assert benchmark.stats.stats.median < 0.010


def test_merge_1000_unknown_rows(benchmark, full_cluster_digest):
    """A newcomer learning the whole cluster from one digest (every row is a join)."""
    _, peers = full_cluster_digest
    digest = on_the_wire(peers)

    def newcomer():
        return (MembershipTable("new", "tcp://10.9.9.8:5555", CAPS, incarnation=1),), {}

    benchmark.pedantic(lambda t: t.merge(digest, 0.0), setup=newcomer, rounds=100, iterations=1)
    benchmark.extra_info["rows"] = N
    assert benchmark.stats.stats.median < 0.010


def test_digest_1000_rows_and_encode(benchmark, full_cluster_digest):
    table, _ = full_cluster_digest
    packed = benchmark(lambda: msgspec.msgpack.encode(table.digest()))
    benchmark.extra_info["rows"] = len(table)
    benchmark.extra_info["encoded_bytes"] = len(packed)


# ---- at scale: 20 real node processes, and the protocol simulated at 1,000 and 10,000 ----------

REAL_NODES = 20


@pytest.mark.timeout(900)
def test_gossip_20_real_nodes(benchmark):
    """20 node processes (1 worker each) joining one seed: time until every node sees every
    other (20 process start-ups included), gossip bytes each node sends a second once converged
    (``node_stats()["counters"]["gossip_bytes_sent"]`` over a 10 s window, this process's
    driver node among the members), and the time from a kill -9 until the driver's node and
    then every other node no longer list the victim (``dead_after`` is 2 s), and the time for
    it to start again and be seen by all (one process start-up included)."""
    import handoff
    from handoff.testing import LocalCluster, wait_until

    names = [f"g{i:02d}" for i in range(REAL_NODES)]
    out: dict = {}

    def run() -> None:
        t0 = time.monotonic()
        with LocalCluster(REAL_NODES, names=names, workers=1, timeout=300) as cluster:
            out["converge_s"] = time.monotonic() - t0
            cluster.connect()
            try:
                def sent() -> dict[str, int]:
                    return {n: cluster.node_stats(n)["counters"].get("gossip_bytes_sent", 0)
                            for n in names}

                before, t1 = sent(), time.monotonic()
                wait_until(lambda: time.monotonic() - t1 >= 10.0, timeout=15.0)
                after, t2 = sent(), time.monotonic()
                rates = [(after[n] - before[n]) / (t2 - t1) for n in names]
                out["bytes_per_node_per_s"] = sum(rates) / len(rates)
                msgs = cluster.node_stats(names[0])["counters"].get("gossip_sent", 0)
                out["bytes_per_message"] = after[names[0]] / max(1, msgs)
                victim = names[-1]
                killed = time.monotonic()
                cluster.kill(victim)
                wait_until(lambda: victim not in handoff.discover_nodes(), timeout=60.0, interval=0.02)
                out["detect_driver_s"] = time.monotonic() - killed
                wait_until(lambda: all(victim not in cluster.node_stats(n)["members"]
                                       for n in names[:-1]), timeout=60.0, interval=0.05)
                out["detect_all_s"] = time.monotonic() - killed
                t3 = time.monotonic()  # the victim comes back: a join into 19 running nodes
                cluster.restart(victim)
                out["rejoin_s"] = time.monotonic() - t3
            finally:
                handoff.stop()

    benchmark.pedantic(run, rounds=1, iterations=1)
    info = benchmark.extra_info
    info.update(nodes=REAL_NODES, **{k: round(v, 3) for k, v in out.items()})
    info["detect_driver_over_dead_after"] = round(out["detect_driver_s"] / 2.0, 2)
    print(f"\n20 real nodes: converged {out['converge_s']:.1f} s after launch; "
          f"{out['bytes_per_node_per_s']:,.0f} gossip bytes/node/s "
          f"({out['bytes_per_message']:,.0f} bytes a message); a kill -9 seen by the driver "
          f"after {out['detect_driver_s']:.2f} s, by every node after {out['detect_all_s']:.2f} s "
          f"(dead_after 2 s); restarted and seen by all after {out['rejoin_s']:.1f} s")


@pytest.mark.timeout(1800)
def test_gossip_simulated_1000_and_10000_nodes(benchmark):
    """``bench/gossip_model.py``: the vectorised model at 1,000 and 10,000 nodes, checked in the
    same run against real MembershipTables (the exact simulation) at 200."""
    import sys
    import os

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import gossip_model as G

    reports: dict = {}

    def run() -> None:
        reports["exact-200"] = G.exact(200)
        reports["model-200"] = G.model(200)
        reports["model-1000"] = G.model(1000)
        reports["model-10000"] = G.model(10_000)

    benchmark.pedantic(run, rounds=1, iterations=1)
    lines = ["", f"gossip simulated (interval {G.INTERVAL} s, fanout {G.FANOUT}, dead_after {G.DEAD_AFTER} s):"]
    for key, r in reports.items():
        benchmark.extra_info[key] = r.__dict__
        lines.append(
            f"  {key:12s} converge {r.rounds_to_converge:3d} rounds ({r.seconds(r.rounds_to_converge):.1f} s), "
            f"{r.messages_per_node_per_s:.0f} msgs/node/s, {r.bytes_per_node_per_s / 1e3:,.0f} kB/node/s, "
            f"max heartbeat silence {r.max_age_rounds} rounds, false deaths {r.false_deaths}, "
            f"death seen after {r.seconds(r.detect_first_rounds):.1f}-{r.seconds(r.detect_last_rounds):.1f} s")
    print("\n".join(lines))

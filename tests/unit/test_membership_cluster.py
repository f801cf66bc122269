"""MembershipTable in simulated clusters: convergence, death detection, healing (no network)."""

from __future__ import annotations


import pytest
from membership_harness import Cluster, contacted_pair, join, make, run_ticks, wire

from handoff.node.cluster.membership import ALIVE, DEAD, LEFT
from handoff.node.cluster.membership import EventKind as E


# -------------------------------------------------------------------- simulation
@pytest.mark.slow
def test_thousand_members_converge_within_15_rounds():
    cluster = Cluster(1000, seed=1)
    cluster.converge_via("node-0", within=15)
    assert not [e for e in cluster.log if e[2].kind in (E.SUSPECT, E.DEAD)]


def test_fifty_members_converge_and_stay_healthy():
    cluster = Cluster(50, seed=3)
    cluster.converge_via("node-0", within=10)
    for _ in range(100):  # 10 s of steady gossip: no false suspicion
        cluster.round()
    assert [e for e in cluster.log if e[2].kind is not E.JOINED] == []


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_stopped_member_is_declared_dead_by_all_others(seed):
    interval = 0.1
    cluster = Cluster(50, seed=seed, interval=interval)
    cluster.join_all_via("node-0")
    for _ in range(30):
        cluster.round()
    assert cluster.converged()
    victim = "node-17"
    stopped_at = cluster.now
    cluster.stopped.add(victim)
    declared: dict[str, float] = {}
    while len(declared) < 49 and cluster.now < stopped_at + 10:
        cluster.round()
        for now, observer, event in cluster.log:
            if event == (E.DEAD, victim):
                declared.setdefault(observer, now)
    assert len(declared) == 49
    dead_after = cluster.tables["node-0"].dead_after
    assert max(declared.values()) - stopped_at <= dead_after + 3 * interval + 1e-9
    others = [e for e in cluster.log if e[2].kind in (E.SUSPECT, E.DEAD) and e[2].name != victim]
    assert others == []


# ------------------------------------------------------------------ healing


def test_dead_member_we_talked_to_is_probed_at_a_slow_rate_until_probe_for():
    a, _ = contacted_pair(probe_interval=1.0, probe_for=3.0)
    run_ticks(a, 0.0, 2.0)
    assert a.get("b").status == DEAD
    a.validate_state()
    b_address = a.get("b").address
    assert a.probe_targets(2.0) == [("b", b_address)]
    assert a.probe_targets(2.5) == []  # not before the interval
    assert a.probe_targets(3.0) == [("b", b_address)]
    assert a.probing() == {"b": b_address}
    assert a.probe_targets(5.1) == []  # probe_for is over
    assert a.probing() == {}
    a.validate_state()


def test_member_known_only_from_gossip_is_never_probed():
    a, b, c = make("a"), make("b"), make("c")
    join(a, b)
    c.merge(wire(a.digest()), 0.0)  # c knows b only through a's gossip
    run_ticks(c, 0.0, 2.0)
    assert c.get("b").status == DEAD
    assert c.probe_targets(2.0) == []
    c.validate_state()


def test_left_member_is_not_probed():
    a, b = contacted_pair()
    b.leave()
    a.merge(wire(b.digest()), 0.1)
    assert a.get("b").status == LEFT
    assert a.probe_targets(5.0) == []
    a.validate_state()


def test_probe_tells_the_paused_member_it_is_dead_and_it_rejoins_everywhere():
    a, b = contacted_pair(max_tick_gap=0.5)
    a.tick(0.0)
    b.tick(0.0)
    run_ticks(a, 0.0, 3.0)  # b is paused: a declares it dead at 2.0
    assert a.get("b").status == DEAD
    # b wakes up at 3.0: its first tick knows it was stalled and blames nobody
    assert b.tick(3.0) == [(E.STALLED, "b")]
    assert b.get("a").status == ALIVE
    (probe,) = a.probe_targets(3.0)
    assert probe[0] == "b"
    assert b.merge(wire(a.digest()), 3.0) == [(E.REFUTED, "b")]  # it learns it was declared dead
    b.validate_state()
    assert a.merge(wire(b.digest()), 3.1) == [(E.JOINED, "b")]
    assert a.probing() == {}
    assert a.get("b").status == ALIVE and a.get("b").incarnation == b.incarnation
    a.validate_state()
    assert run_ticks(a, 3.1, 4.0) == []


def test_both_sides_declared_dead_heal_by_probing_each_other():
    """A partition: each side declared the other dead; both probe, both refute, both rejoin."""
    a, b = contacted_pair()
    run_ticks(a, 0.0, 2.0)
    run_ticks(b, 0.0, 2.0)
    assert a.get("b").status == DEAD and b.get("a").status == DEAD
    # the partition ends: the probes cross
    to_b, to_a = a.digest(), b.digest()
    assert [n for n, _ in a.probe_targets(2.5)] == ["b"]
    assert [n for n, _ in b.probe_targets(2.5)] == ["a"]
    assert b.merge(wire(to_b), 2.5) == [(E.REFUTED, "b")]
    assert a.merge(wire(to_a), 2.5) == [(E.REFUTED, "a")]
    assert a.merge(wire(b.digest()), 2.6) == [(E.JOINED, "b")]
    assert b.merge(wire(a.digest()), 2.6) == [(E.JOINED, "a")]
    for table in (a, b):
        table.validate_state()
        assert set(table.addresses(include_self=True)) == {"a", "b"}


def test_probe_soon_hastens_the_next_probe_but_not_beyond_a_quarter_interval():
    a, _ = contacted_pair(probe_interval=2.0)
    run_ticks(a, 0.0, 2.0)
    assert [n for n, _ in a.probe_targets(2.0)] == ["b"]
    a.probe_soon("b", 2.1)
    assert a.probe_targets(2.1) == []  # probed 0.1 s ago: wait a quarter interval
    assert [n for n, _ in a.probe_targets(2.5)] == ["b"]
    a.probe_soon("nobody", 2.5)  # unknown names are ignored


def test_forget_drops_a_member_that_never_spoke_but_keeps_contacted_ones():
    a, b, c = make("a"), make("b"), make("c")
    join(a, b)
    join(a, c)
    a.heard_from("c", 0.1)
    assert a.forget("b")
    assert "b" not in a
    assert not a.forget("c")
    assert not a.forget("a")
    a.validate_state()
    assert a.merge(wire(b.digest()), 0.2) == [(E.JOINED, "b")]  # no tombstone: it may come back


def test_table_refuses_new_members_past_max_members():
    a = make("a", max_members=3)
    rows = [make(f"x{i}").me.row() for i in range(5)]
    events = a.merge(wire(rows), 0.0)
    assert [e.name for e in events] == ["x0", "x1"]
    assert a.refused_members == 3
    a.validate_state()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paused_member_heals_back_into_a_simulated_cluster(seed):
    """Paused for 3 s (declared dead by all), then resumed: one cluster again within 2 s."""
    cluster = Cluster(12, seed=seed, max_tick_gap=0.5)
    cluster.join_all_via("node-0")
    while not cluster.one_cluster():
        cluster.round()
    for _ in range(10):  # everyone talks to everyone directly
        cluster.round()
    victim = "node-5"
    cluster.stopped.add(victim)
    paused_at = cluster.now
    while cluster.now < paused_at + 3.0:
        cluster.round()
    assert all(t.get(victim).status == DEAD for n, t in cluster.tables.items() if n != victim)
    cluster.stopped.discard(victim)
    resumed_at = cluster.now
    while not cluster.one_cluster():
        cluster.round()
        assert cluster.now - resumed_at <= 2.0, "did not heal"
    victim_events = [e for when, who, e in cluster.log if who == victim and when > resumed_at]
    assert (E.STALLED, victim) in victim_events
    assert not [e for e in victim_events if e.kind is E.DEAD]  # it blamed nobody for its pause

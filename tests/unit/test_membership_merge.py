"""MembershipTable merge rules: dead and left members, caps and free, gossip targets."""

from __future__ import annotations


import pytest
from membership_harness import CAPS, join, make, row_of, run_ticks, wire

from handoff.node.cluster.membership import (
    ALIVE,
    DEAD,
    LEFT,
    SUSPECT,
    MembershipTable,
)
from handoff.node.cluster.membership import EventKind as E


# ------------------------------------------------------------------ dead and left
def test_dead_member_is_not_revived_by_stale_rows():
    a, b = make("a"), make("b")
    join(a, b)
    run_ticks(a, 0.0, 2.0)
    for step in range(5):
        b.tick(step * 0.1)
    assert a.merge(wire([b.me.row()]), 2.1) == []  # same incarnation, higher heartbeat
    assert a.get("b").status == DEAD
    assert "b" not in a.gossip_targets()


def test_restart_with_higher_incarnation_is_a_new_member():
    a, b = make("a"), make("b", incarnation=1)
    join(a, b)
    run_ticks(a, 0.0, 2.0)
    reborn = MembershipTable("b", "tcp://127.0.0.1:7777", {"cpu": 2.0}, incarnation=2)
    assert a.merge(wire(reborn.digest()), 2.1) == [(E.JOINED, "b")]
    member = a.get("b")
    assert (member.status, member.incarnation, member.address) == (ALIVE, 2, "tcp://127.0.0.1:7777")
    assert member.caps == {"cpu": 2.0}
    assert run_ticks(a, 2.1, 3.0) == []  # its clock starts at the rejoin


def test_restart_of_a_member_still_held_alive_is_reported():
    a, b = make("a"), make("b", incarnation=1)
    join(a, b)
    for _ in range(10):
        b.tick(0.0)
    reborn = MembershipTable("b", "tcp://127.0.0.1:7777", CAPS, incarnation=2)
    assert a.merge(wire(reborn.digest()), 0.5) == [(E.RESTARTED, "b")]
    assert a.get("b").heartbeat == 0  # the new instance's counter, even though it is lower
    assert a.merge(wire(b.digest()), 0.6) == []  # the old instance's rows are stale now


def test_peer_cannot_declare_us_dead_we_refute_with_a_new_incarnation():
    a, b = make("a"), make("b")
    join(a, b)
    run_ticks(a, 0.0, 2.0)  # a declares b dead
    assert b.merge(wire(a.digest()), 2.0) == [(E.REFUTED, "b")]
    assert b.me.status == ALIVE
    assert b.incarnation == 2
    assert a.merge(wire(b.digest()), 2.1) == [(E.JOINED, "b")]
    assert a.get("b").status == ALIVE


def test_peer_suspicion_is_not_adopted_and_not_refuted():
    a, b, c = make("a"), make("b"), make("c")
    join(a, b)
    join(a, c)
    b.merge(wire(a.digest()), 0.0)
    run_ticks(a, 0.0, 1.0)
    assert a.get("c").status == SUSPECT
    assert b.merge(wire(a.digest()), 1.0) == []
    assert b.get("c").status == ALIVE
    assert c.merge(wire(a.digest()), 1.0) == []
    assert c.incarnation == 1  # its next heartbeat clears the suspicion; no churn


def test_peer_death_claim_needs_news_at_least_as_fresh_as_ours():
    a, b, c = make("a"), make("b"), make("c")
    for other in (b, c):
        join(a, other)
    join(b, c)
    run_ticks(a, 0.0, 2.0)  # a declares b and c dead at heartbeat 0
    c.tick(1.0)
    b.merge(wire(c.digest()), 1.0)  # b has heard c's heartbeat 1: a's claim is stale
    events = b.merge(wire(a.digest()), 2.0)
    assert (E.DEAD, "c") not in events
    assert b.get("c").status == ALIVE
    late = make("e")  # saw c only at the heartbeat a had: a's claim is believed
    late.merge(wire([row_of(a, "c", status=ALIVE)]), 2.0)
    assert late.merge(wire([row_of(a, "c")]), 2.1) == [(E.DEAD, "c")]


def test_left_member_is_dropped_without_waiting():
    a, b = make("a"), make("b")
    join(a, b)
    b.leave()
    assert b.me.status == LEFT
    assert "b" not in b.alive()
    assert a.merge(wire(b.digest()), 0.1) == [(E.LEFT, "b")]
    assert "b" not in a.alive()
    assert a.gossip_targets() == []
    assert a.merge(wire([row_of(a, "b", status=ALIVE, heartbeat=99)]), 0.2) == []
    b.tick(0.3)
    assert b.me.heartbeat == 1  # a left node's heartbeat stops
    assert a.tick(5.0) == []  # no death for a member that left


def test_dead_rows_spread_then_are_forgotten_and_stay_forgotten():
    a, b = make("a", forget_after=10.0), make("b")
    join(a, b)
    run_ticks(a, 0.0, 2.0)
    assert "b" in {row.name for row in a.digest()}  # the news still spreads
    a.tick(12.0)
    assert a.get("b") is None
    assert "b" not in {row.name for row in a.digest()}
    assert a.merge(wire(b.digest()), 12.1) == []  # a stale row does not bring it back
    assert a.get("b") is None
    reborn = MembershipTable("b", "tcp://127.0.0.1:1", CAPS, incarnation=2)
    assert a.merge(wire(reborn.digest()), 12.2) == [(E.JOINED, "b")]


def test_unknown_dead_rows_are_not_added_but_block_stale_rows():
    a, b, c = make("a"), make("b"), make("c")
    join(a, b)
    run_ticks(a, 0.0, 2.0)
    assert c.merge(wire(a.digest()), 2.0) == [(E.JOINED, "a")]
    assert c.get("b") is None
    assert c.merge(wire(b.digest()), 2.1) == []  # b's own stale row, same incarnation
    assert c.get("b") is None


def test_conflict_when_a_live_instance_of_our_name_is_newer():
    a, imposter, b = make("a", incarnation=1), make("a", incarnation=5), make("b")
    join(a, b)
    b.merge(wire(imposter.digest()), 0.0)
    assert a.merge(wire(b.digest()), 0.0) == [(E.CONFLICT, "a")]
    assert a.merge(wire(b.digest()), 0.1) == []  # reported once
    assert a.incarnation == 1


def test_newer_dead_instance_of_our_name_makes_us_newer_still():
    a, b = make("a", incarnation=3), make("b")
    join(a, b)
    b.merge(wire([row_of(a, "a", incarnation=9, status=DEAD)]), 0.0)
    assert a.merge(wire(b.digest()), 0.0) == [(E.REFUTED, "a")]
    assert a.incarnation == 10


# ------------------------------------------------------------- caps and free
def test_own_caps_and_free_propagate():
    a, b = make("a"), make("b")
    join(a, b)
    a.update_caps("a", {"cpu": 4.0, "gpu": 1.0})
    a.update_free("a", {"cpu": 1.0, "gpu": 0.0})
    events = b.merge(wire(a.digest()), 0.1)
    assert events == [(E.CAPS, "a")]
    assert b.get("a").caps == {"cpu": 4.0, "gpu": 1.0}
    assert b.get("a").free == {"cpu": 1.0, "gpu": 0.0}
    assert b.get("a").last_advanced == 0.1  # a free update advances the heartbeat


def test_remote_caps_override_spreads_to_everyone_including_the_owner():
    a, b, c = make("a"), make("b"), make("c")
    for x, y in ((a, b), (a, c), (b, c)):
        join(x, y)
    c.update_caps("b", {"cpu": 64.0})  # register_node("b", ...) called on c
    assert a.merge(wire(c.digest()), 0.1) == [(E.CAPS, "b")]
    b.tick(0.2)
    assert b.merge(wire(a.digest()), 0.2) == [(E.CAPS, "b")]
    assert b.me.caps == {"cpu": 64.0}
    b.tick(0.3)  # b's own later rows keep the override rather than undoing it
    a.merge(wire(b.digest()), 0.3)
    assert a.get("b").caps == {"cpu": 64.0}
    assert a.get("b").heartbeat == 2


def test_concurrent_caps_overrides_converge():
    a, b, c = make("a"), make("b"), make("c")
    for x, y in ((a, b), (a, c), (b, c)):
        join(x, y)
    a.update_caps("c", {"cpu": 1.0})
    b.update_caps("c", {"cpu": 2.0})  # same caps_version, different value
    a.merge(wire(b.digest()), 0.1)
    b.merge(wire(a.digest()), 0.1)
    c.merge(wire(a.digest()), 0.1)
    assert a.get("c").caps == b.get("c").caps == c.me.caps


def test_caps_of_unknown_member_and_free_of_another_member_are_refused():
    a = make("a")
    with pytest.raises(KeyError, match="unknown member 'zz'"):
        a.update_caps("zz", {"cpu": 1.0})
    with pytest.raises(ValueError, match="reported by their owner"):
        a.update_free("b", {"cpu": 1.0})


def test_caps_dicts_are_copied_from_callers():
    caps = {"cpu": 2.0}
    a = MembershipTable("a", "tcp://127.0.0.1:1", caps, incarnation=1)
    caps["cpu"] = 99.0
    assert a.me.caps == {"cpu": 2.0}


# ----------------------------------------------------------------- gossip targets
def test_gossip_targets_are_live_peers_only():
    a = make("a", fanout=3, seed=42)
    peers = [make(f"p{i}") for i in range(10)]
    for peer in peers:
        join(a, peer)
    run_ticks(a, 0.0, 1.0)
    for peer in peers[:3]:
        peer.tick(1.0)
        a.merge(wire(peer.digest()), 1.0)
    run_ticks(a, 1.0, 2.0)  # p3..p9 are dead now; p0..p2 alive
    peers[0].leave()
    a.merge(wire(peers[0].digest()), 2.0)
    for _ in range(50):
        targets = a.gossip_targets()
        assert len(targets) == len(set(targets)) == 2
        assert set(targets) == {"p1", "p2"}


def test_gossip_targets_pick_fanout_distinct_peers_deterministically():
    def picks(seed):
        a = make("a", fanout=3, seed=seed)
        for i in range(20):
            join(a, make(f"p{i}"))
        return [a.gossip_targets() for _ in range(20)]

    rounds = picks(7)
    assert rounds == picks(7)
    for targets in rounds:
        assert len(targets) == len(set(targets)) == 3
        assert "a" not in targets
    assert len({tuple(t) for t in rounds}) > 1


def test_lone_node_has_no_targets():
    assert make("a").gossip_targets() == []

"""MembershipTable: gossip merge rules, failure detector and simulated clusters (no network)."""

from __future__ import annotations

import random

import msgspec
import pytest

from handoff.errors import ProtocolError
from handoff.node.cluster.membership import (
    ALIVE,
    DEAD,
    LEFT,
    SUSPECT,
    MembershipEvent,
    MembershipTable,
)
from handoff.node.cluster.membership import EventKind as E
from handoff.protocol.codec import decode, encode
from handoff.protocol.messages import Gossip
from handoff.protocol.rows import MemberRow

CAPS = {"cpu": 8.0, "memory": 16000.0}


def make(name: str, *, incarnation: int = 1, seed: int = 0, **kwargs) -> MembershipTable:
    return MembershipTable(
        name,
        f"tcp://127.0.0.1:{5000 + sum(map(ord, name))}",
        CAPS,
        incarnation=incarnation,
        rng=random.Random(seed),
        **kwargs,
    )


def wire(rows: list[MemberRow]) -> list[MemberRow]:
    """What a peer receives: the digest after a trip through the codec."""
    return decode(encode(Gossip("peer", rows))).rows


def row_of(table: MembershipTable, member: str, **changes) -> MemberRow:
    """One row of ``table``'s digest, with some fields replaced."""
    return msgspec.structs.replace(table.get(member).row(), **changes)


def join(a: MembershipTable, b: MembershipTable, now: float = 0.0) -> None:
    """The join handshake: ``b`` says hello to ``a`` and gets ``a``'s digest back."""
    a.merge(wire(b.digest()), now)
    b.merge(wire(a.digest()), now)


class Cluster:
    """N tables gossiping in synchronous rounds: each running table ticks, then sends its
    digest to its gossip targets; messages to stopped tables are lost."""

    def __init__(self, n: int, *, seed: int = 0, interval: float = 0.1, **kwargs) -> None:
        rng = random.Random(seed)
        self.names = [f"node-{i}" for i in range(n)]
        self.tables = {name: make(name, seed=rng.getrandbits(64), **kwargs) for name in self.names}
        self.interval = interval
        self.now = 0.0
        self.rounds = 0
        self.stopped: set[str] = set()
        self.log: list[tuple[float, str, MembershipEvent]] = []
        # invariants re-checked after every step; O(n) each, so not for the 1000-node runs
        self.checked = n <= 64

    def check(self, table: MembershipTable) -> None:
        if self.checked:
            table.validate_state()

    def join_all_via(self, seed_name: str) -> None:
        seed = self.tables[seed_name]
        for name, table in self.tables.items():
            if name != seed_name:
                seed.merge([table.me.row()], self.now)
                table.merge([seed.me.row()], self.now)

    def running(self) -> list[MembershipTable]:
        return [t for n, t in self.tables.items() if n not in self.stopped]

    def round(self) -> None:
        self.rounds += 1
        self.now = round(self.now + self.interval, 9)
        outbox = []
        for table in self.running():
            self.log.extend((self.now, table.name, e) for e in table.tick(self.now))
            self.check(table)
            digest = table.digest()
            outbox.extend((target, table.name, digest) for target in table.gossip_targets())
            # dead members are probed with the same digest (it tells them they are dead)
            outbox.extend((target, table.name, digest) for target, _ in table.probe_targets(self.now))
        for target, sender, digest in outbox:
            if target in self.stopped:
                continue
            table = self.tables[target]
            self.log.extend((self.now, target, e) for e in table.merge(digest, self.now))
            self.check(table)
            self.log.extend((self.now, target, e) for e in table.heard_from(sender, self.now))
            self.check(table)

    def converged(self) -> bool:
        n = len(self.names) - len(self.stopped)
        return all(len(t.addresses()) == n - 1 for t in self.running())

    def one_cluster(self) -> bool:
        """Every table holds every member alive (the healed state)."""
        return all(set(t.addresses(include_self=True)) == set(self.names) for t in self.tables.values())


# ------------------------------------------------------------------ construction
def test_new_table_knows_only_itself_and_digest_is_plain_data():
    table = make("a", incarnation=7)
    assert list(table.alive()) == ["a"]
    assert table.me.status == ALIVE
    assert table.incarnation == 7
    (row,) = table.digest()
    assert msgspec.structs.asdict(row) == {
        "name": "a",
        "address": table.me.address,
        "incarnation": 7,
        "heartbeat": 0,
        "status": ALIVE,
        "caps": CAPS,
        "caps_version": 0,
        "free": CAPS,
    }
    raw = msgspec.msgpack.decode(msgspec.msgpack.encode([row]))
    assert raw == [["a", table.me.address, 7, 0, "alive", CAPS, 0, CAPS]]  # a plain array


def test_default_incarnation_grows_across_restarts():
    first = MembershipTable("a", "tcp://127.0.0.1:1", CAPS)
    second = MembershipTable("a", "tcp://127.0.0.1:1", CAPS)
    assert second.incarnation > first.incarnation


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"suspect_after": 2.0, "dead_after": 1.0}, "suspect_after < dead_after"),
        ({"suspect_after": 0.0}, "suspect_after < dead_after"),
        ({"fanout": 0}, "fanout"),
        ({"forget_after": -1.0}, "forget_after"),
    ],
)
def test_bad_settings_are_refused(kwargs, words):
    with pytest.raises(ValueError, match=words):
        make("a", **kwargs)


# ------------------------------------------------------------------------ joins
def test_join_propagates_through_the_seed():
    a, b, c = make("a"), make("b"), make("c")
    join(a, b)
    join(a, c)
    assert set(a.alive()) == {"a", "b", "c"}
    assert set(b.alive()) == {"a", "b"}
    events = b.merge(wire(a.digest()), 0.1)
    assert events == [(E.JOINED, "c")]
    assert set(b.alive()) == {"a", "b", "c"}
    assert b.get("c").address == c.me.address
    assert b.merge(wire(a.digest()), 0.2) == []  # nothing new the second time


def test_join_event_is_a_named_tuple():
    a, b = make("a"), make("b")
    (event,) = a.merge(wire(b.digest()), 0.0)
    assert event.kind is E.JOINED and event.name == "b"


# -------------------------------------------------------------------- heartbeats
def test_tick_advances_own_heartbeat_and_peers_see_it():
    a, b = make("a"), make("b")
    join(a, b)
    for step in range(1, 4):
        a.tick(step * 0.1)
    assert a.me.heartbeat == 3
    b.merge(wire(a.digest()), 0.5)
    assert b.get("a").heartbeat == 3
    assert b.get("a").last_advanced == 0.5


def test_lower_or_equal_heartbeat_does_not_reset_last_advanced():
    a, b = make("a"), make("b")
    join(a, b)
    a.tick(0.1)
    b.merge(wire(a.digest()), 0.1)
    old = wire(a.digest())
    b.merge(old, 0.9)
    assert b.get("a").last_advanced == 0.1
    b.merge(wire([row_of(a, "a", heartbeat=0)]), 0.9)
    assert b.get("a").heartbeat == 1


# -------------------------------------------------------------- failure detector
def run_ticks(table: MembershipTable, start: float, stop: float, step: float = 0.1):
    """Tick every ``step`` seconds over (start, stop]; returns [(time, event), ...]."""
    seen = []
    for i in range(1, round((stop - start) / step) + 1):
        now = round(start + i * step, 9)
        seen.extend((now, e) for e in table.tick(now))
        table.validate_state()
    return seen


def test_silent_member_is_suspected_after_1s_then_dead_after_2s():
    a, b = make("a"), make("b")
    join(a, b)
    assert run_ticks(a, 0.0, 3.0) == [(1.0, (E.SUSPECT, "b")), (2.0, (E.DEAD, "b"))]
    assert a.get("b").status == DEAD
    assert "b" not in a.alive()


def test_long_silence_goes_straight_to_dead():
    a, b = make("a"), make("b")
    join(a, b)
    assert a.tick(0.5) == []
    assert a.tick(2.5) == [(E.DEAD, "b")]


def test_suspect_recovers_when_its_heartbeat_advances():
    a, b = make("a"), make("b")
    join(a, b)
    run_ticks(a, 0.0, 1.5)
    assert a.get("b").status == SUSPECT
    b.tick(1.5)
    assert a.merge(wire(b.digest()), 1.5) == [(E.ALIVE, "b")]
    assert a.get("b").status == ALIVE
    assert run_ticks(a, 1.5, 2.4) == []  # the clock restarted at 1.5


def test_suspicion_timer_restarts_from_the_last_advance():
    a, b = make("a"), make("b")
    join(a, b)
    run_ticks(a, 0.0, 1.5)
    b.tick(1.5)
    a.merge(wire(b.digest()), 1.5)
    assert run_ticks(a, 1.5, 4.0) == [(2.5, (E.SUSPECT, "b")), (3.5, (E.DEAD, "b"))]


def test_heard_from_is_a_sign_of_life():
    a, b = make("a"), make("b")
    join(a, b)
    run_ticks(a, 0.0, 1.2)
    assert a.get("b").status == SUSPECT
    assert a.heard_from("b", 1.2) == [(E.ALIVE, "b")]
    assert a.heard_from("b", 1.5) == []
    assert a.get("b").last_advanced == 1.5
    assert a.heard_from("stranger", 1.5) == []
    assert run_ticks(a, 1.5, 2.5) == [(2.5, (E.SUSPECT, "b"))]


def test_heard_from_does_not_revive_the_dead():
    a, b = make("a"), make("b")
    join(a, b)
    run_ticks(a, 0.0, 2.0)
    assert a.heard_from("b", 2.1) == []
    assert a.get("b").status == DEAD


def test_stall_of_our_own_is_not_held_against_peers():
    a, b = make("a", max_tick_gap=0.5), make("b")
    join(a, b)
    assert a.tick(0.1) == []
    assert a.tick(5.0) == [(E.STALLED, "a")]  # we were paused for 4.9 s: b is not to blame
    assert a.get("b").status == ALIVE
    assert run_ticks(a, 5.0, 6.0) == [(5.9, (E.SUSPECT, "b"))]


def test_without_max_tick_gap_a_stall_counts_as_silence():
    a, b = make("a"), make("b")
    join(a, b)
    a.tick(0.1)
    assert a.tick(5.0) == [(E.DEAD, "b")]


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


# --------------------------------------------------------------- misc helpers
def test_name_taken_refuses_a_duplicate_live_name():
    a, b = make("a"), make("b", incarnation=1)
    join(a, b)
    assert a.name_taken("b", 2, "tcp://10.9.9.9:1")  # another process, elsewhere
    assert not a.name_taken("b", 2, b.me.address)  # b restarted on its own address
    assert not a.name_taken("b", 1, b.me.address)  # b itself, saying hello again
    assert a.name_taken("a", 99, a.me.address)  # our own name is never free
    assert not a.name_taken("nobody", 1, "tcp://10.9.9.9:1")
    run_ticks(a, 0.0, 2.0)
    assert not a.name_taken("b", 2, "tcp://10.9.9.9:1")  # the old b is dead


def test_addresses_and_alive():
    a, b = make("a"), make("b")
    join(a, b)
    assert a.addresses() == {"b": b.me.address}
    assert a.addresses(include_self=True) == {"a": a.me.address, "b": b.me.address}
    assert set(a.alive()) == {"a", "b"}
    assert "b" in a and len(a) == 2


@pytest.mark.parametrize(
    "bad",
    [
        "garbage",
        None,
        ["b"],
        ["b", "addr", "1", 0, "alive", CAPS, 0, CAPS],
        ["b", "addr", 1, 0, "zombie", CAPS, 0, CAPS],
        ["b", "addr", 1, 0, "alive", {"cpu": "many"}, 0, CAPS],
        [["unhashable"], "addr", 1, 0, "alive", CAPS, 0, CAPS],
        ["b", "addr", 1, "9", "alive", CAPS, 0, CAPS],
        ["b", "addr", 1, 0, "alive", CAPS, 0],
    ],
)
def test_a_digest_with_a_row_of_the_wrong_shape_is_refused_at_decode(bad):
    frames = encode(Gossip("b", make("b").digest()))
    assert decode(frames).rows[0].name == "b"  # the untouched message decodes
    header = msgspec.msgpack.decode(frames[0])
    header[2][1].insert(0, bad)  # the fields: [sender, rows]
    with pytest.raises(ProtocolError, match="rows"):
        decode([msgspec.msgpack.encode(header), *frames[1:]])


@pytest.mark.parametrize(
    "changes",
    [
        {"free": {"cpu": float("nan")}},
        {"caps": {"cpu": -1.0}},
        {"free": {"cpu": float("inf")}},
        {"name": ""},
    ],
)
def test_rows_with_values_that_make_no_sense_are_dropped_not_raised(changes):
    a, b = make("a"), make("b")
    bad = row_of(b, "b", **changes)
    events = a.merge(wire([bad, *make("c").digest()]), 0.0)
    assert events == [(E.JOINED, "c")]
    assert a.malformed_rows == 1


def test_senseless_free_resources_of_a_known_member_are_dropped():
    a, b = make("a"), make("b")
    join(a, b)
    assert a.merge(wire([row_of(a, "b", heartbeat=5, free={"cpu": -2.0})]), 0.1) == []
    assert a.merge(wire([row_of(a, "b", heartbeat=5, free={"cpu": float("nan")})]), 0.1) == []
    assert a.malformed_rows == 2
    assert a.get("b").heartbeat == 0


# -------------------------------------------------------------------- simulation
@pytest.mark.slow
def test_thousand_members_converge_within_15_rounds():
    cluster = Cluster(1000, seed=1)
    cluster.join_all_via("node-0")
    while not cluster.converged():
        cluster.round()
        assert cluster.rounds <= 15
    assert not [e for e in cluster.log if e[2].kind in (E.SUSPECT, E.DEAD)]


def test_fifty_members_converge_and_stay_healthy():
    cluster = Cluster(50, seed=3)
    cluster.join_all_via("node-0")
    while not cluster.converged():
        cluster.round()
    assert cluster.rounds <= 10
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
def contacted_pair(**kwargs) -> tuple[MembershipTable, MembershipTable]:
    """a and b joined, each having heard from the other directly."""
    a, b = make("a", **kwargs), make("b", **kwargs)
    join(a, b)
    a.heard_from("b", 0.0)
    b.heard_from("a", 0.0)
    return a, b


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

"""MembershipTable: construction, joins, heartbeats, failure detector, row checks (no network)."""

from __future__ import annotations


import msgspec
import pytest
from membership_harness import CAPS, join, make, row_of, run_ticks, wire

from handoff.errors import ProtocolError
from handoff.node.cluster.membership import ALIVE, DEAD, SUSPECT, MembershipTable
from handoff.node.cluster.membership import EventKind as E
from handoff.protocol.codec import decode, encode
from handoff.protocol.messages import Gossip


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

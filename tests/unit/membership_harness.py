"""Shared harness of the MembershipTable tests: tables, the wire trip, joins, simulated clusters."""

from __future__ import annotations

import random

import msgspec

from handoff.node.cluster.membership import MembershipEvent, MembershipTable
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

    def converge_via(self, seed_name: str, within: int) -> None:
        """Every member joins through ``seed_name``; gossip until all know all, which must
        take at most ``within`` rounds."""
        self.join_all_via(seed_name)
        while not self.converged():
            self.round()
            assert self.rounds <= within

    def one_cluster(self) -> bool:
        """Every table holds every member alive (the healed state)."""
        return all(set(t.addresses(include_self=True)) == set(self.names) for t in self.tables.values())



def run_ticks(table: MembershipTable, start: float, stop: float, step: float = 0.1):
    """Tick every ``step`` seconds over (start, stop]; returns [(time, event), ...]."""
    seen = []
    for i in range(1, round((stop - start) / step) + 1):
        now = round(start + i * step, 9)
        seen.extend((now, e) for e in table.tick(now))
        table.validate_state()
    return seen


def contacted_pair(**kwargs) -> tuple[MembershipTable, MembershipTable]:
    """a and b joined, each having heard from the other directly."""
    a, b = make("a", **kwargs), make("b", **kwargs)
    join(a, b)
    a.heard_from("b", 0.0)
    b.heard_from("a", 0.0)
    return a, b

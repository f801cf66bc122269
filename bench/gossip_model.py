"""Gossip membership at 1,000 and 10,000 nodes, simulated in one process.

Two simulations of the protocol of ``handoff.node.cluster.membership`` (push gossip of the
full digest to ``fanout`` random live peers every ``interval`` seconds; a member whose
heartbeat has not advanced for ``dead_after`` seconds is declared dead):

- ``exact``: N real ``MembershipTable`` instances on a simulated clock, every digest delivered
  at the end of its round (what ``tests/unit/membership_harness.py`` does). Costs O(N^2) row
  merges a round, so it is for N up to about 1,000.
- ``model``: the same protocol vectorised with numpy, for 10,000. Joining: who knows whom is an
  N x N bit matrix; each node pushes its known set to ``fanout`` peers drawn uniformly from the
  live members it knows (a digest merge is a bitwise or of rows). Detection: heartbeat ages
  for a random sample of ``sample`` member columns (every member is alike, so a sample gives
  the distribution): each round every age grows by one, each member's own is 0, and a receiver
  keeps the smaller of its age and the sender's (a merge keeps the newer heartbeat).

Both report rounds to converge, messages and bytes each node sends a second (a digest's bytes
are its rows times the size of one ``MemberRow`` on the wire, measured), the largest heartbeat
age in the steady state (which must stay under ``dead_after`` or live nodes are declared dead)
and the rounds from a death until the first and the last live node declare it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import msgspec
import numpy as np

from handoff.node.cluster.membership import DEAD, MembershipTable

CAPS = {"cpu": 8.0, "memory": 16000.0, "gpu": 1.0}
INTERVAL = 0.2  # NodeConfig.gossip_interval
FANOUT = 3
DEAD_AFTER = 2.0


def row_bytes(n: int) -> float:
    """Bytes one member's row takes in a digest, for names and addresses like node-1234."""
    rows = [MembershipTable(f"node-{i}", f"tcp://10.0.{i // 256 % 256}.{i % 256}:5555", CAPS,
                            incarnation=1).me.row() for i in range(n - 100, n)]
    return len(msgspec.msgpack.encode(rows)) / len(rows)


@dataclass
class Report:
    nodes: int
    rounds_to_converge: int
    messages_per_node_per_s: float  # steady state, gossip only
    bytes_per_node_per_s: float
    max_age_rounds: int  # largest heartbeat age any live node holds, steady state
    detect_first_rounds: int  # from a death until the first live node declares it dead
    detect_last_rounds: int  # ... until every live node has
    false_deaths: int  # live members declared dead by someone in the steady state

    def seconds(self, rounds: int) -> float:
        return rounds * INTERVAL


# ---- exact: real tables ---------------------------------------------------------------------


def exact(n: int, seed: int = 0, steady: int = 30, dead_after: float = DEAD_AFTER) -> Report:
    rng = random.Random(seed)
    tables = {
        f"node-{i}": MembershipTable(f"node-{i}", f"tcp://10.0.{i // 256}.{i % 256}:5555", CAPS,
                                     incarnation=1, suspect_after=dead_after / 2,
                                     dead_after=dead_after, max_members=max(4096, n),
                                     rng=random.Random(rng.getrandbits(64)))
        for i in range(n)
    }
    seed_table = tables["node-0"]
    for name, table in tables.items():  # every node says hello to node-0 at once
        if name != "node-0":
            seed_table.merge([table.me.row()], 0.0)
            table.merge([seed_table.me.row()], 0.0)
    now, stopped = 0.0, set()
    deaths: dict[str, list[int]] = {}  # member -> rounds at which some table declared it dead
    sent = [0]

    def one_round(r: int) -> None:
        nonlocal now
        now = round(now + INTERVAL, 9)
        outbox = []
        for table in tables.values():
            if table.name in stopped:
                continue
            for kind, name in table.tick(now):
                if kind.value == "dead":
                    deaths.setdefault(name, []).append(r)
            digest = table.digest()
            targets = table.gossip_targets()
            sent[0] += len(targets)
            outbox.extend((t, table.name, digest) for t in targets)
        for target, sender, digest in outbox:
            if target not in stopped:
                tables[target].merge(digest, now)
                tables[target].heard_from(sender, now)

    r = 0
    while any(len(t.addresses()) != n - 1 for t in tables.values()):
        r += 1
        if r > 200:
            raise AssertionError(f"{n} nodes did not converge in 200 rounds")
        one_round(r)
    converged = r
    sent[0] = 0
    deaths.clear()
    max_age = 0
    for _ in range(steady):
        r += 1
        one_round(r)
        max_age = max(max_age, max(round((now - m.last_advanced) / INTERVAL)
                                   for t in tables.values() for m in t.alive().values()
                                   if m is not t.me))
    messages = sent[0] / steady / n / INTERVAL
    false_deaths = len(deaths)
    victim = f"node-{n // 2}"
    stopped.add(victim)
    died = r
    while not all(t.get(victim) is None or t.get(victim).status is DEAD
                  for name, t in tables.items() if name != victim):
        r += 1
        if r - died > 200:
            raise AssertionError(f"the death of {victim} was not detected in 200 rounds")
        one_round(r)
    found = deaths.get(victim, [r])
    return Report(n, converged, messages, messages * (n * row_bytes(n) + 40), max_age,
                  min(found) - died, max(found) - died, false_deaths)


# ---- model: vectorised --------------------------------------------------------------------------


def _pick_targets(known: np.ndarray, senders: np.ndarray, n: int, fanout: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(sender, target) pairs: each sender pushes to up to ``fanout`` distinct peers it knows."""
    counts = known[senders].sum(axis=1) - 1  # not itself
    src, dst = [], []
    few = senders[counts <= 4 * fanout]
    for s in few:  # nodes that know only a few peers (early in a join): draw from their list
        peers = np.flatnonzero(known[s])
        peers = peers[peers != s]
        if len(peers):
            chosen = rng.choice(peers, size=min(fanout, len(peers)), replace=False)
            src.append(np.full(len(chosen), s))
            dst.append(chosen)
    many = senders[counts > 4 * fanout]
    if len(many):  # the others: rejection-sample random members until fanout known ones
        need = np.full(len(many), fanout)
        while need.any():
            rows = np.flatnonzero(need)
            cand = rng.integers(0, n, size=(len(rows), 8 * fanout))
            ok = known[many[rows][:, None], cand] & (cand != many[rows][:, None])
            for k, row in enumerate(rows):
                hits = cand[k][ok[k]]
                got = hits[np.sort(np.unique(hits, return_index=True)[1])][: need[row]]
                if len(got):
                    src.append(np.full(len(got), many[row]))
                    dst.append(got)
                    need[row] -= len(got)
    if not src:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(src), np.concatenate(dst)


def model(n: int, seed: int = 0, sample: int = 64, steady: int = 30,
          dead_after: float = DEAD_AFTER, fanout: int = FANOUT) -> Report:
    rng = np.random.default_rng(seed)
    everyone = np.arange(n)
    # joining from node 0: it knows everyone, everyone knows it and itself
    known = np.zeros((n, n), dtype=bool)
    known[0, :] = True
    known[:, 0] = True
    known[everyone, everyone] = True
    rounds = 0
    while not known.all():
        rounds += 1
        if rounds > 200:
            raise AssertionError(f"{n} nodes did not converge in 200 rounds")
        src, dst = _pick_targets(known, everyone, n, fanout, rng)
        before = known.copy()  # every message carries its sender's digest as the round began
        order = np.argsort(dst, kind="stable")
        src, dst = src[order], dst[order]
        for lo in range(0, len(src), 2048):  # in chunks: 2,048 digests of n bits at a time
            s, d = src[lo:lo + 2048], dst[lo:lo + 2048]
            starts = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])
            merged = np.logical_or.reduceat(before[s], starts, axis=0)
            known[d[starts]] |= merged
    # steady state: heartbeat ages (in rounds) of ``sample`` members, as every node sees them
    cols = rng.choice(n, size=min(sample, n), replace=False)
    diag = (cols, np.arange(len(cols)))
    age = np.zeros((n, len(cols)), dtype=np.int32)  # rounds since the heartbeat known was made
    since = np.zeros((n, len(cols)), dtype=np.int32)  # rounds since that heartbeat last advanced
    limit = round(dead_after / INTERVAL)
    max_age, false_deaths, messages = 0, 0, 0
    alive = np.ones(n, dtype=bool)
    alive_col = np.ones(len(cols), dtype=bool)

    def one_round() -> tuple[np.ndarray, int]:
        """Returns ``since`` (what the detector reads) and the messages sent."""
        nonlocal age, since
        senders = np.flatnonzero(alive)
        src = np.repeat(senders, fanout)
        dst = rng.integers(0, n - 1, size=len(src))
        dst += dst >= src  # never itself (the model's peers are uniform: all know all by now)
        keep = alive[dst]  # a message to a dead node is lost
        new = age + 1
        np.minimum.at(new, dst[keep], age[src[keep]] + 1)
        new[diag] = np.where(alive[cols], 0, new[diag])  # a live member's own heartbeat
        since = np.where(new < age + 1, 0, since + 1)
        age = new
        return since, len(src)

    for _ in range(steady * 2):  # reach the steady state, then measure
        one_round()
    for _ in range(steady):
        a, sent = one_round()
        messages += sent
        max_age = max(max_age, int(a.max()))
        false_deaths += int((a >= limit).any(axis=0).sum())  # live members someone declares dead
    victim_col = 0
    victim = cols[victim_col]
    alive[victim] = False
    first = last = None
    for r in range(1, 500):
        a, _ = one_round()
        dead_seen = a[alive, victim_col] >= limit
        if first is None and dead_seen.any():
            first = r
        if dead_seen.all():
            last = r
            break
    if first is None or last is None:
        raise AssertionError("the death was not detected in 500 rounds")
    per_node = messages / steady / n / INTERVAL
    return Report(n, rounds, per_node, per_node * (n * row_bytes(n) + 40), max_age,
                  first, last, false_deaths)

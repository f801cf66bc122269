"""Gossip membership and failure detection: a pure state machine (no sockets, no threads, no clock).

Every node keeps a :class:`MembershipTable` with one row per member it knows. Each gossip
interval the node loop calls :meth:`~MembershipTable.tick` (its own heartbeat advances and
stale members are suspected or declared dead) and sends :meth:`~MembershipTable.digest` to
:meth:`~MembershipTable.gossip_targets`; a received digest goes to
:meth:`~MembershipTable.merge`. Time is always passed in (the loop's monotonic clock) so the
table is deterministic and testable without waiting.

Rules, in the order they are applied to one row of a peer's digest:

- A higher incarnation is a new instance of that member (a restart, or a refutation): the
  row replaces ours wholesale. Rows with a lower incarnation are stale and ignored.
- At the same incarnation, "dead" and "left" are final: a dead member only comes back with
  a higher incarnation, whatever heartbeat a stale row carries.
- "left" is only ever written by the member itself, so it is always believed.
- "dead" from a peer is believed only when that peer had seen at least the heartbeat we
  have: a peer with older news (for example one that was paused) cannot kill a member that
  we know is alive.
- "suspect" is a local opinion and is never adopted from a peer: the suspected member's
  next heartbeat clears it everywhere without churn.
- A higher heartbeat is a sign of life: it resets the local "last advanced" time, carries
  the member's free resources, and turns a suspect back into alive.
- Capacities merge independently, by ``caps_version``, so that an override made on any
  node (``register_node(remote, caps)``) spreads to everyone, the member itself included.
- Nobody can kill us: a row saying we are dead (or left) at our incarnation is refuted by
  bumping our incarnation, so the cluster sees a new instance of us.

Failure detection is local: a member whose heartbeat has not advanced for ``suspect_after``
seconds becomes "suspect", and after ``dead_after`` seconds (counted from the same last
advance) "dead". Dead and left rows are still gossiped for ``forget_after`` seconds so the
news reaches everyone, then dropped; a tombstone then keeps stale rows from reviving them.

Healing (SWIM, see ``members.Prober``): dead members we had heard from are probed.

Tuning: a heartbeat reaches a node through a chain of a few gossip hops, so the news a node
holds is a few rounds old. Keep the gossip interval at or below ``dead_after / 10`` (0.1 to
0.2 s with the defaults): in simulation, 50 nodes at 0.2 s never declare a live node dead
but do raise occasional "suspect" events, and at 0.5 s they declare live nodes dead. Act on
"dead", "left" and "restarted"; treat "suspect" as a hint.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from handoff.node.cluster.members import (
    ALIVE, DEAD, GONE_EVENT, LEFT, LIVE, SUSPECT, EventKind, Member, MemberRow, MembershipEvent,
    MemberStatus, Probe, Prober, caps_win, is_resources, is_sound,
)

__all__ = [
    "ALIVE", "DEAD", "LEFT", "LIVE", "SUSPECT", "EventKind", "Member", "MemberRow", "MemberStatus",
    "MembershipEvent", "MembershipTable", "Probe",
]

class MembershipTable:
    """Gossip membership table of one node plus its failure detector.

    Parameters
    ----------
    name, address, caps:
        This node's name, the address peers connect to, and its resource capacities.
    incarnation:
        Identifies this process instance. The default (wall-clock nanoseconds) grows across
        restarts, so a restarted node with the same name is seen as a new instance.
    suspect_after, dead_after:
        Seconds without a heartbeat advance before a member is suspected, and declared dead
        (both counted from the last advance).
    fanout:
        Peers the digest goes to per gossip round.
    forget_after:
        Seconds that dead and left rows keep being gossiped before they are dropped.
    max_tick_gap:
        If set and two ticks are further apart than this, the gap is taken as this node's own
        stall (GC pause, suspended machine) and not held against peers. None disables it.
    probe_interval, probe_for:
        A dead member we had heard from directly is probed every ``probe_interval`` seconds
        for ``probe_for`` seconds after it was declared dead.
    max_members:
        Rows the table holds at most; rows of new members past it are dropped (counted in
        ``refused_members``), so a flood of made-up rows cannot grow it without bound.
    rng:
        Source of randomness for :meth:`gossip_targets` (inject a seeded one in tests).
    """

    def __init__(
        self,
        name: str,
        address: str,
        caps: Mapping[str, float],
        *,
        incarnation: int | None = None,
        suspect_after: float = 1.0,
        dead_after: float = 2.0,
        fanout: int = 3,
        forget_after: float = 60.0,
        max_tick_gap: float | None = None,
        probe_interval: float = 1.0,
        probe_for: float = 600.0,
        max_members: int = 4096,
        rng: random.Random | None = None,
    ) -> None:
        if not name:
            raise ValueError("MembershipTable needs a non-empty node name")
        if not 0 < suspect_after < dead_after:
            raise ValueError(
                f"need 0 < suspect_after < dead_after, got suspect_after={suspect_after}, "
                f"dead_after={dead_after}"
            )
        if fanout < 1:
            raise ValueError(f"fanout must be at least 1, got {fanout}")
        if forget_after < 0:
            raise ValueError(f"forget_after must be >= 0, got {forget_after}")
        if probe_interval <= 0 or probe_for < 0:
            raise ValueError(
                f"need probe_interval > 0 and probe_for >= 0, got probe_interval="
                f"{probe_interval}, probe_for={probe_for}"
            )
        if max_members < 1:
            raise ValueError(f"max_members must be at least 1, got {max_members}")
        self.name = name
        self.suspect_after = float(suspect_after)
        self.dead_after = float(dead_after)
        self.fanout = fanout
        self.forget_after = float(forget_after)
        self.max_tick_gap = max_tick_gap
        self.probe_interval = float(probe_interval)
        self.probe_for = float(probe_for)
        self.max_members = max_members
        self.malformed_rows = 0  # rows dropped by merge() because their values made no sense
        self.refused_members = 0  # rows of new members dropped because the table was full
        self._rng = rng if rng is not None else random.Random()
        self._me = Member(
            name=name,
            address=address,
            caps=dict(caps),
            free=dict(caps),
            incarnation=time.time_ns() if incarnation is None else incarnation,
        )
        self._members: dict[str, Member] = {name: self._me}
        # Live peers (never us), ordered by last_advanced: tick() reads only the stale front.
        self._age: OrderedDict[str, Member] = OrderedDict()
        # Dead and left members, ordered by status_since, until forgotten.
        self._gone: OrderedDict[str, Member] = OrderedDict()
        # Forgotten instances: name -> (incarnation, since); stale rows must not revive them.
        self._tombstones: OrderedDict[str, tuple[int, float]] = OrderedDict()
        # Dead members we keep probing (see the module docstring), by name.
        self._prober = Prober(self.probe_interval, self.probe_for)
        self._conflict_seen = -1
        self._last_tick: float | None = None

    # ----------------------------------------------------------------- reading
    @property
    def me(self) -> Member:
        """Our own row."""
        return self._me

    @property
    def incarnation(self) -> int:
        return self._me.incarnation

    def get(self, name: str) -> Member | None:
        """The row for ``name`` in any status, or None if unknown (or forgotten)."""
        return self._members.get(name)

    def alive(self) -> dict[str, Member]:
        """Members not declared dead or left (suspects included), us included unless we left."""
        return {n: m for n, m in self._members.items() if m.status in LIVE}

    def addresses(self, include_self: bool = False) -> dict[str, str]:
        """``{name: address}`` of live members; peers only unless ``include_self``."""
        found = {n: m.address for n, m in self._age.items()}
        if include_self and self._me.status in LIVE:
            found[self.name] = self._me.address
        return found

    def __contains__(self, name: object) -> bool:
        return name in self._members

    def __len__(self) -> int:
        return len(self._members)

    def name_taken(self, name: str, incarnation: int, address: str | None = None) -> bool:
        """Whether a join hello from (``name``, ``incarnation``, ``address``) would duplicate a
        live member: a live instance with that name and a different incarnation exists, at a
        different address (the same address means a restart of that node) or it is us."""
        member = self._members.get(name)
        if member is None or member.status not in LIVE or member.incarnation == incarnation:
            return False
        if member is self._me:
            return True
        return address is None or address != member.address

    # ---------------------------------------------------------------- gossiping
    def digest(self) -> list[MemberRow]:
        """Every row we know (dead and left ones until forgotten)."""
        return [m.row() for m in self._members.values()]

    def gossip_targets(self) -> list[str]:
        """Up to ``fanout`` distinct random live peers (never us, never dead or left)."""
        peers = list(self._age)
        if len(peers) <= self.fanout:
            self._rng.shuffle(peers)
            return peers
        return self._rng.sample(peers, self.fanout)

    # ----------------------------------------------------------------- own row
    def update_caps(self, name: str, caps: Mapping[str, float]) -> None:
        """Set ``name``'s capacities here; the new ``caps_version`` makes it win everywhere."""
        member = self._members.get(name)
        if member is None:
            raise KeyError(f"cannot update capacities of unknown member {name!r}")
        member.caps = dict(caps)
        member.caps_version += 1

    def update_free(self, name: str, free: Mapping[str, float]) -> None:
        """Set our free resources; they ride on our heartbeat, which advances now."""
        if name != self.name:
            raise ValueError(
                f"free resources are reported by their owner: {self.name!r} cannot set "
                f"those of {name!r}"
            )
        self._me.free = dict(free)
        self._me.heartbeat += 1

    def leave(self) -> None:
        """Mark us as left (graceful shutdown): peers drop us without waiting to detect it.

        Send one last digest afterwards; the heartbeat bump makes the row win everywhere.
        """
        if self._me.status != LEFT:
            self._me.status = LEFT
            self._me.heartbeat += 1

    # ------------------------------------------------------------ time passing
    def tick(self, now: float) -> list[MembershipEvent]:
        """Advance our heartbeat and run the failure detector at local time ``now``.

        Returns the "suspect" and "dead" events of this tick (a member silent for longer
        than ``dead_after`` goes straight to "dead"), and "stalled" first if this node was
        itself paused since the last tick. ``now`` must not go backwards.
        """
        me = self._me
        if me.status != LEFT:
            me.heartbeat += 1
        last, self._last_tick = self._last_tick, now
        events: list[MembershipEvent] = []
        if self.max_tick_gap is not None and last is not None and now - last > self.max_tick_gap:
            # We were stalled, not the peers: keep the silence each had before the stall, and
            # let the node probe them before anyone can be declared dead.
            shift = now - last
            for member in self._age.values():
                member.last_advanced = min(now, member.last_advanced + shift)
            events.append(MembershipEvent(EventKind.STALLED, self.name))

        stale: list[Member] = []
        for member in self._age.values():
            if now - member.last_advanced < self.suspect_after:
                break
            stale.append(member)
        for member in stale:
            if now - member.last_advanced >= self.dead_after:
                self._set_gone(member, DEAD, now)
                events.append(MembershipEvent(EventKind.DEAD, member.name))
            elif member.status == ALIVE:
                member.status = SUSPECT
                member.status_since = now
                events.append(MembershipEvent(EventKind.SUSPECT, member.name))

        horizon = now - self.forget_after
        while self._gone:
            name, member = next(iter(self._gone.items()))
            if member.status_since > horizon:
                break
            del self._gone[name]
            del self._members[name]
            self._tombstones[name] = (member.incarnation, now)
            self._tombstones.move_to_end(name)
        while self._tombstones:
            name, (_, since) = next(iter(self._tombstones.items()))
            if since > horizon:
                break
            del self._tombstones[name]
        return events

    def heard_from(self, name: str, now: float) -> list[MembershipEvent]:
        """Any direct message from ``name`` is a sign of life: refresh it (a suspect is alive)."""
        member = self._members.get(name)
        if member is None or member.status not in LIVE or member is self._me:
            return []
        member.contacted = True
        self._advanced(member, now)
        if member.status == SUSPECT:
            member.status = ALIVE
            member.status_since = now
            return [MembershipEvent(EventKind.ALIVE, name)]
        return []

    # ----------------------------------------------------------------- probing
    def probe_targets(self, now: float) -> list[tuple[str, str]]:
        """``(name, address)`` of the dead members due for a probe at ``now``: send each our
        digest (it tells them they were declared dead). Probes past ``probe_for`` end."""
        return self._prober.due(now)

    def probe_soon(self, name: str, now: float) -> None:
        """A dead member just spoke to us (it does not know it is dead): probe it on the
        next :meth:`probe_targets`, but not more often than four times per interval."""
        self._prober.soon(name, now)

    def probing(self) -> dict[str, str]:
        """``{name: address}`` of the dead members being probed."""
        return {name: probe.address for name, probe in self._prober.probes.items()}

    def forget(self, name: str) -> bool:
        """Drop a live member that never spoke to us directly (a hello whose sender did not
        follow up): no tombstone, no probing. False if ``name`` is us, unknown or contacted."""
        member = self._members.get(name)
        if member is None or member is self._me or member.contacted:
            return False
        del self._members[name]
        self._age.pop(name, None)
        self._gone.pop(name, None)
        self._prober.stop(name)
        return True

    def validate_state(self) -> None:
        """Check the table's invariants; AssertionError says which one broke."""
        me = self._me
        assert self._members.get(self.name) is me, "our own row is missing or replaced"
        assert self.name not in self._age and self.name not in self._gone, "we are in a peer index"
        for name, member in self._members.items():
            assert member.name == name, f"row {name!r} holds member {member.name!r}"
            assert isinstance(member.status, MemberStatus), f"{name!r} has status {member.status!r}"
            if member is me:
                continue
            live = member.status in LIVE
            assert (name in self._age) == live, f"{name!r} ({member.status}) vs the live index"
            assert (name in self._gone) == (not live), f"{name!r} ({member.status}) vs the gone index"
            assert name not in self._tombstones, f"{name!r} is both a member and a tombstone"
        assert set(self._age) | set(self._gone) | {self.name} == set(self._members), "stray index entry"
        ages = [m.last_advanced for m in self._age.values()]
        assert ages == sorted(ages), "live index is not ordered by last advance"
        sinces = [m.status_since for m in self._gone.values()]
        assert sinces == sorted(sinces), "gone index is not ordered by status time"
        for name, probe in self._prober.probes.items():
            probed = self._members.get(name)
            assert probed is None or probed.status == DEAD, f"probing {name!r}, which is {probed.status}"
            assert probed is None or probed.incarnation == probe.incarnation, f"probe of an old {name!r}"
            assert name != self.name, "probing ourselves"
        assert len(self._members) <= self.max_members, "more members than max_members"

    # ------------------------------------------------------------------ merging
    def merge(self, rows: Iterable[MemberRow], now: float) -> list[MembershipEvent]:
        """Merge a peer's digest at local time ``now``; returns what changed.

        The codec checked the rows' types; rows whose values make no sense (see
        ``is_sound``) are dropped and counted in ``malformed_rows``, never raised.
        """
        events: list[MembershipEvent] = []
        members = self._members
        age = self._age
        me = self._me
        for row in rows:
            member = members.get(row.name)
            # Fast paths for the common cases once converged: a row with nothing new, and a
            # plain heartbeat advance of a healthy peer.
            if (
                member is not None
                and row.incarnation == member.incarnation
                and row.caps_version == member.caps_version
                and row.caps == member.caps
            ):
                heartbeat = row.heartbeat
                status = row.status
                if heartbeat <= member.heartbeat:
                    if status is ALIVE or status is member.status:
                        continue
                elif (
                    (status is ALIVE or status is SUSPECT)
                    and member.status is ALIVE
                    and member is not me
                    and (row.free == member.free or is_resources(row.free))
                ):
                    member.heartbeat = heartbeat
                    member.free = row.free
                    member.last_advanced = now
                    age.move_to_end(member.name)
                    continue
            if not is_sound(row):
                self.malformed_rows += 1
                continue
            if member is None:
                self._merge_unknown(row, now, events)
            elif member is self._me:
                self._merge_own(row, now, events)
            else:
                self._merge_known(member, row, now, events)
        return events

    def _merge_unknown(self, row: MemberRow, now: float, events: list[MembershipEvent]) -> None:
        name, incarnation = row.name, row.incarnation
        tomb = self._tombstones.get(name)
        if tomb is not None and incarnation <= tomb[0]:
            return
        if row.status not in LIVE:
            # News of a death we never saw alive: remember it so stale rows cannot revive it.
            self._tombstones[name] = (incarnation, now)
            self._tombstones.move_to_end(name)
            return
        if len(self._members) >= self.max_members:
            self.refused_members += 1
            return
        self._tombstones.pop(name, None)
        self._prober.stop(name)
        member = Member(
            name=name,
            address=row.address,
            caps=row.caps,
            free=row.free,
            heartbeat=row.heartbeat,
            incarnation=incarnation,
            caps_version=row.caps_version,
            last_advanced=now,
            status_since=now,
        )
        self._members[name] = member
        self._age[name] = member
        events.append(MembershipEvent(EventKind.JOINED, name))

    def _merge_known(
        self, member: Member, row: MemberRow, now: float, events: list[MembershipEvent]
    ) -> None:
        name, status, heartbeat = row.name, row.status, row.heartbeat
        if row.incarnation > member.incarnation:
            was_live = member.status in LIVE
            member.contacted = False  # a new instance: it has not spoken to us yet
            self._prober.stop(name)
            member.address = row.address
            member.incarnation = row.incarnation
            member.heartbeat = heartbeat
            member.caps = row.caps
            member.caps_version = row.caps_version
            member.free = row.free
            if status in LIVE:
                self._set_live(member, now)
                kind = EventKind.RESTARTED if was_live else EventKind.JOINED
                events.append(MembershipEvent(kind, name))
            else:
                self._set_gone(member, status, now)
                if was_live:
                    events.append(MembershipEvent(GONE_EVENT[status], name))
            return
        if row.incarnation < member.incarnation or member.status not in LIVE:
            return  # stale, or final for this incarnation
        if status is LEFT or (status is DEAD and heartbeat >= member.heartbeat):
            member.heartbeat = max(member.heartbeat, heartbeat)
            self._set_gone(member, status, now)
            events.append(MembershipEvent(GONE_EVENT[status], name))
            return
        if heartbeat > member.heartbeat:
            member.heartbeat = heartbeat
            member.free = row.free
            self._advanced(member, now)
            if member.status is SUSPECT:
                member.status = ALIVE
                member.status_since = now
                events.append(MembershipEvent(EventKind.ALIVE, name))
        if caps_win(row.caps, row.caps_version, member.caps, member.caps_version):
            member.caps = row.caps
            member.caps_version = row.caps_version
            events.append(MembershipEvent(EventKind.CAPS, name))

    def _merge_own(self, row: MemberRow, now: float, events: list[MembershipEvent]) -> None:
        incarnation, status = row.incarnation, row.status
        me = self._me
        if me.status is LEFT or incarnation < me.incarnation:
            return
        if incarnation > me.incarnation:
            if status in LIVE:
                if incarnation != self._conflict_seen:
                    self._conflict_seen = incarnation
                    events.append(MembershipEvent(EventKind.CONFLICT, self.name))
                return
            # A newer instance of our name is dead (our clock went back across a restart).
            self._refute(incarnation, events)
            return
        if status is DEAD or status is LEFT:
            self._refute(incarnation, events)
            return
        if caps_win(row.caps, row.caps_version, me.caps, me.caps_version):
            # An override of our capacities made on another node.
            me.caps = row.caps
            me.caps_version = row.caps_version
            events.append(MembershipEvent(EventKind.CAPS, self.name))

    def _refute(self, incarnation: int, events: list[MembershipEvent]) -> None:
        self._me.incarnation = incarnation + 1
        self._me.heartbeat += 1
        events.append(MembershipEvent(EventKind.REFUTED, self.name))

    # ------------------------------------------------------------- bookkeeping
    def _advanced(self, member: Member, now: float) -> None:
        member.last_advanced = now
        self._age.move_to_end(member.name)

    def _set_live(self, member: Member, now: float) -> None:
        self._gone.pop(member.name, None)
        self._prober.stop(member.name)
        member.status = ALIVE
        member.status_since = now
        member.last_advanced = now
        self._age[member.name] = member
        self._age.move_to_end(member.name)

    def _set_gone(self, member: Member, status: MemberStatus, now: float) -> None:
        self._age.pop(member.name, None)
        member.status = status
        member.status_since = now
        self._gone[member.name] = member
        self._gone.move_to_end(member.name)
        if status == DEAD and member.contacted:
            self._prober.start(member, now)
        else:
            self._prober.stop(member.name)

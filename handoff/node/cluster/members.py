"""Membership rows: statuses, one member's row (gossiped as a ``MemberRow``), the events a
table reports, and the checks a row from the network must pass (see membership.py for the
merge rules).

Healing (SWIM): "dead" may be wrong (a paused process, a partition). A dead member that we
had heard from directly keeps being probed: :meth:`~MembershipTable.probe_targets` names it
every ``probe_interval`` seconds for ``probe_for`` seconds, and the node sends it our digest,
which says it is dead. A live member that reads that refutes it with a higher incarnation
(the rule above) and says hello again, and every table takes it back as "joined". Members we
only know from gossip are never probed here (a stranger's made-up row cannot make us connect
anywhere); the nodes that talked to them probe them. A tick that comes much later than the
previous one means this node itself was stalled: nobody is declared dead on it, and it
returns a "stalled" event so the node re-probes its peers at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple

from handoff.protocol.rows import MemberRow, MemberStatus

__all__ = [
    "ALIVE", "DEAD", "LEFT", "SUSPECT", "EventKind", "Member", "MemberRow", "MemberStatus",
    "MembershipEvent", "Probe", "Prober",
]


ALIVE = MemberStatus.ALIVE
SUSPECT = MemberStatus.SUSPECT
DEAD = MemberStatus.DEAD
LEFT = MemberStatus.LEFT
LIVE = frozenset((ALIVE, SUSPECT))


class EventKind(Enum):
    """What a :class:`MembershipEvent` reports (see there)."""

    JOINED = "joined"
    RESTARTED = "restarted"
    SUSPECT = "suspect"
    ALIVE = "alive"
    DEAD = "dead"
    LEFT = "left"
    CAPS = "caps"
    REFUTED = "refuted"
    CONFLICT = "conflict"
    STALLED = "stalled"


#: The event a member going to a final status is reported as.
GONE_EVENT = {DEAD: EventKind.DEAD, LEFT: EventKind.LEFT}


class MembershipEvent(NamedTuple):
    """A change in the table that the node loop may act on; compares equal to ``(kind, name)``.

    Kinds:

    - ``"joined"``: a member we did not know (or whose previous instance was dead, left or
      forgotten) is alive.
    - ``"restarted"``: a member we held alive or suspect is back with a higher incarnation:
      the old instance is gone (treat it like ``"dead"``: its work and results are lost) and
      the new one is alive, possibly at a new address.
    - ``"suspect"``: its heartbeat has not advanced for ``suspect_after`` seconds.
    - ``"alive"``: a suspect member showed a sign of life again (nothing was lost).
    - ``"dead"``: declared dead, here or by a peer that had newer news than us.
    - ``"left"``: it shut down gracefully.
    - ``"caps"``: its capacities changed (a peer's update or an override from elsewhere).
    - ``"refuted"`` (our own name): a peer declared us dead, so we took a new incarnation;
      the cluster now treats us as a new instance and re-places work given to the old one.
    - ``"conflict"`` (our own name): a live instance with our name and a higher incarnation
      exists elsewhere; two processes use the same name.
    - ``"stalled"`` (our own name): this tick came more than ``max_tick_gap`` after the last
      one, so this node was paused; peers were not blamed for it. Re-probe them now.
    """

    kind: EventKind
    name: str


@dataclass(slots=True)
class Member:
    """One row of the membership table.

    ``last_advanced``, ``status_since`` and ``contacted`` (we heard from this instance
    directly, so its address is worth probing once it is declared dead) are local
    bookkeeping and are never gossiped. Treat a Member returned by the table as read-only: the
    table replaces ``caps`` and ``free`` dicts instead of mutating them, so sharing is safe.
    """

    name: str
    address: str
    caps: dict[str, float]
    free: dict[str, float]
    heartbeat: int = 0
    incarnation: int = 0
    status: MemberStatus = ALIVE
    caps_version: int = 0
    last_advanced: float = 0.0
    status_since: float = 0.0
    contacted: bool = False

    def row(self) -> MemberRow:
        """This member as a digest row."""
        return MemberRow(
            self.name,
            self.address,
            self.incarnation,
            self.heartbeat,
            self.status,
            self.caps,
            self.caps_version,
            self.free,
        )


@dataclass(slots=True)
class Probe:
    """A dead member we keep knocking on: where, which instance, and when next."""

    address: str
    incarnation: int
    next_at: float
    until: float
    last_at: float = float("-inf")


def is_resources(value: Any) -> bool:
    if type(value) is not dict:
        return False
    for key, amount in value.items():
        kind = type(amount)
        if type(key) is not str or (kind is not float and kind is not int):
            return False
        if kind is float and amount - amount != 0.0:  # nan or infinity
            return False
        if amount < 0:
            return False
    return True


def is_sound(row: MemberRow) -> bool:
    """Whether a row's values make sense (its types were checked at decode); else it is dropped."""
    return row.name != "" and is_resources(row.caps) and is_resources(row.free)


def caps_win(
    caps: dict[str, float], version: int, other: dict[str, float], other_version: int
) -> bool:
    """Whether capacities ``caps`` at ``version`` beat ``other``; ties break on content so
    two concurrent overrides with the same version still converge to one answer."""
    if version != other_version:
        return version > other_version
    return caps != other and sorted(caps.items()) > sorted(other.items())


class Prober:
    """The dead members a table keeps knocking on (SWIM healing), by name."""

    def __init__(self, interval: float, duration: float) -> None:
        self.interval = interval
        self.duration = duration
        self.probes: dict[str, Probe] = {}

    def start(self, member: Member, now: float) -> None:
        self.probes[member.name] = Probe(member.address, member.incarnation, now, now + self.duration)

    def stop(self, name: str) -> None:
        self.probes.pop(name, None)

    def due(self, now: float) -> list[tuple[str, str]]:
        """``(name, address)`` due for a probe at ``now``; probes past their time end."""
        due: list[tuple[str, str]] = []
        for name, probe in list(self.probes.items()):
            if now >= probe.until:
                del self.probes[name]
            elif now >= probe.next_at:
                probe.last_at = now
                probe.next_at = now + self.interval
                due.append((name, probe.address))
        return due

    def soon(self, name: str, now: float) -> None:
        """Probe ``name`` at the next :meth:`due`, but not more often than four times per interval."""
        probe = self.probes.get(name)
        if probe is not None:
            probe.next_at = min(probe.next_at, max(now, probe.last_at + self.interval / 4))

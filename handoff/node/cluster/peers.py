"""The node's side of the cluster: hellos, gossip rounds, probes, and acting on membership events.

Who may make this node connect where: only an accepted hello (its sender's own address, at
most MAX_PENDING_JOINS of them waiting for the sender to follow up) and gossip from accepted
members. A refused hello is answered on the connection it came in on. A member admitted by a
hello that never sends anything else is forgotten after JOIN_FOLLOW_UP seconds.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from handoff.config import check_resources
from handoff.errors import HandoffError
from handoff.node.cluster.membership import (
    ALIVE, DEAD, LEFT, LIVE, EventKind, Member, MemberRow, MembershipEvent, MembershipTable,
)
from handoff.protocol.codec import encode
from handoff.protocol.messages import VERSION, Gossip, Hello, Leave, Refuse
from handoff.transport.sockets import DropLog, LinkEvent

if TYPE_CHECKING:
    from handoff.node.server import Node

log = logging.getLogger("handoff.peers")

__all__ = ["Peers", "BUSY"]

REJOIN_EVERY = 1.0  # seconds between hellos to the join addresses while this node is alone
MAX_PENDING_JOINS = 32  # hello-admitted members that have not spoken since
JOIN_FOLLOW_UP = 10.0  # seconds such a member has to send something besides its hello
BUSY = "too many joins in progress; the joining node retries"  # a refusal that is not final


class Peers:
    """Knowing, reaching and losing peers: the membership table and the links to members.

    Owns the table, which ROUTER identity belongs to which member, and who was greeted; tells
    the node (which routes to the other components) when members join, change or are lost.
    """

    def __init__(self, node: Node) -> None:
        self.node = node
        self.name = node.name
        self.config = node.config
        self.transport = node.transport
        self.table: MembershipTable | None = None
        self._identities: dict[bytes, str] = {}  # ROUTER identity -> peer that said hello on it
        self._greeted: set[str] = set()
        self._pending_joins: dict[str, float] = {}  # hello-admitted member -> follow-up deadline
        self._knocks: OrderedDict[bytes, str] = OrderedDict()  # identity -> dead member probing us
        self._last_join_hello = float("-inf")
        self._refusals = DropLog("hellos refused")
        self.peer_hosts: dict[str, str] = {}
        self.join_error: str | None = None

    @property
    def membership(self) -> MembershipTable:
        """The membership table, which ``start`` makes (the handlers run only after it)."""
        assert self.table is not None, "Peers.start() makes the membership table"
        return self.table

    @property
    def capacity(self) -> dict:
        """What this node advertises: its own row's capacities (one place, gossiped)."""
        return dict(self.table.me.caps if self.table is not None else self.config.resources)

    def start(self) -> None:
        cfg = self.config
        self.table = MembershipTable(
            self.name, self.transport.address, cfg.resources,
            suspect_after=cfg.suspect_after, dead_after=cfg.dead_after,
            max_tick_gap=max(cfg.suspect_after / 2, 4 * cfg.gossip_interval),
        )
        self.node.member_joined(self.name, cfg.resources)
        self._hello_join_addresses()
        self.node.every(cfg.gossip_interval, self._gossip_round)

    def stop(self) -> None:
        if self.table is None:
            return
        self.membership.leave()
        for name in list(self.membership.alive()):
            if name != self.name:
                self.transport.send(name, Leave(self.name))

    def _hello(self) -> Hello:
        return Hello(self.name, self.transport.address, self.membership.incarnation,
                     self.capacity, VERSION, self.node.host_id)

    def joined(self) -> bool:
        """Whether this node knows at least one peer (or was not asked to join any)."""
        return not self.config.join or len(self.membership.alive()) > 1

    def _alone(self) -> bool:
        return len(self.membership.alive()) <= 1

    def _hello_join_addresses(self) -> None:
        """Say hello to every join address on a fresh, watched link (a failed handshake
        there means the key is wrong)."""
        self._last_join_hello = time.monotonic()
        for address in self.config.join:
            link = f"@{address}"
            if self.transport.connect(link, address, watch=True):
                self.transport.send(link, self._hello())
            elif self.join_error is None:
                self.join_error = f"cannot connect to the join address {address!r}"

    # ---- links ------------------------------------------------------------------------
    def ensure_link(self, name: str, address: str) -> bool:
        """A DEALER to a member, with our hello sent first; False if the address is unusable."""
        if name == self.name:
            return False
        if not self.transport.connected(name) and not self.transport.connect(name, address):
            return False
        if name not in self._greeted:
            self._greeted.add(name)
            self.transport.send(name, self._hello())
        return True

    def drop_link(self, name: str) -> None:
        self.transport.disconnect(name)
        self.node.link_dropped(name)
        self._greeted.discard(name)
        self._pending_joins.pop(name, None)
        for identity in [i for i, n in self._identities.items() if n == name]:
            del self._identities[identity]
        self.node.requests.fail_peer(name, f"node {name!r} is gone")

    def is_member(self, msg: Any, identity: bytes) -> bool:
        name = self._identities.get(identity)
        return name is not None and name == getattr(msg, "sender", None)

    def _probe(self, name: str, address: str) -> None:
        """Knock on a dead member: a fresh link, our hello, and our digest (which tells it
        that it was declared dead, so a live one refutes and says hello again)."""
        self._greeted.discard(name)
        if self.transport.connect(name, address):
            self.transport.send(name, self._hello())
            self.transport.send(name, Gossip(self.name, self._digest()))

    # ---- incoming -------------------------------------------------------------------
    def on_hello(self, identity: bytes, msg: Hello) -> None:
        said = self._identities.get(identity)
        if said is not None and said != msg.name:
            self.transport.reject(identity, f"hello as {msg.name!r} on a connection that said "
                                            f"hello as {said!r}")
            return
        if msg.version != VERSION:
            self._refuse(identity, msg, f"wire version {msg.version}, this node speaks {VERSION}")
            return
        if msg.name == self.name:
            if msg.incarnation != self.membership.incarnation:
                self._refuse(identity, msg, f"the name {msg.name!r} is taken by a live node")
            return
        if self.membership.name_taken(msg.name, msg.incarnation, msg.address):
            self._refuse(identity, msg, f"the name {msg.name!r} is taken by a live node")
            return
        try:
            caps = check_resources(msg.caps)
        except ValueError as exc:
            self._refuse(identity, msg, f"bad capacities: {exc}")
            return
        table = self.membership
        member = table.get(msg.name)
        if member is not None and not _live(member) and member.incarnation >= msg.incarnation:
            # a member we declared dead that does not know it yet: tell it by a probe, to the
            # address we knew (not to one named in this hello)
            if member.status == DEAD:
                table.probe_soon(msg.name, time.monotonic())
                self._note_knock(identity, msg.name)
            return
        new = member is None or member.incarnation != msg.incarnation
        if new and len(self._pending_joins) >= MAX_PENDING_JOINS:
            self._refuse(identity, msg, BUSY)
            return
        link = f"@{msg.address}"
        if msg.address in self.config.join and self.transport.connected(link):
            self.transport.disconnect(link)  # our join link: it is this peer
        row = MemberRow(msg.name, msg.address, msg.incarnation, 0, ALIVE, caps, 0, caps)
        self.membership_events(table.merge([row], time.monotonic()))
        member = table.get(msg.name)
        if member is None:
            self._refuse(identity, msg, BUSY)  # the table is full
            return
        if not _live(member) or member.incarnation != msg.incarnation:
            return  # a stale hello
        # after the merge: a "restarted" event drops the links of the old instance
        self._identities[identity] = msg.name
        self.transport.greet(identity)
        self.peer_hosts[msg.name] = msg.host
        if not member.contacted:
            self._pending_joins.setdefault(msg.name, time.monotonic() + JOIN_FOLLOW_UP)
        if self.ensure_link(msg.name, member.address):
            self.transport.send(msg.name, Gossip(self.name, self._digest()))

    def _refuse(self, identity: bytes, msg: Hello, reason: str) -> None:
        self.transport.reply(identity, Refuse(self.name, reason))
        self.transport.reject(identity, f"refused hello from {msg.name!r}: {reason}")

    def on_link(self, event: LinkEvent) -> None:
        """A refusal or a failed handshake on one of our own links."""
        if self.joined():
            return  # both only mean something to a node that is still joining
        if event.refusal is not None:
            if event.refusal.reason == BUSY:
                log.info("%s: %s is busy with other joins; retrying", self.name, event.address)
                return
            self.join_error = f"node {event.refusal.name!r} refused this node: {event.refusal.reason}"
        elif event.handshake_failed and event.peer.startswith("@"):
            source = (f"key file {self.config.key_file!r}" if self.config.key_file
                      else "this user's default key")
            public = self.transport.curve.public.decode()[:8] if self.transport.curve else "-"
            self.join_error = (
                f"node at {event.address} rejected this node's key ({source}, public key "
                f"{public}...): every node of a cluster needs the same cluster key"
            )
        else:
            return
        log.error("%s: %s", self.name, self.join_error)

    def on_gossip(self, msg: Gossip) -> None:
        self.node.counters["gossip_received"] += 1
        self.membership_events(self.membership.merge(msg.rows, time.monotonic()))

    def on_leave(self, name: str) -> None:
        member = self.membership.get(name)
        if member is not None:
            row = MemberRow(name, member.address, member.incarnation, member.heartbeat + 1, LEFT,
                            member.caps, member.caps_version, member.free)
            self.membership_events(self.membership.merge([row], time.monotonic()))

    def heard_from(self, name: str) -> None:
        self._pending_joins.pop(name, None)
        self.membership_events(self.membership.heard_from(name, time.monotonic()))

    def heard_from_stranger(self, identity: bytes, msg: Any) -> None:
        """A message on a connection that is not a member's: if a dead member sent it, it
        does not know it is dead yet, so probe it now. If it is the digest of a dead member's
        probe, take from it only our own row: after a partition both sides declared the other
        dead, and each ignores the other's hellos, so the news that we were declared dead
        (which we refute, coming back as a new instance that it accepts) comes only this way."""
        sender = getattr(msg, "sender", None)
        member = self.membership.get(sender) if isinstance(sender, str) else None
        if not isinstance(sender, str) or member is None or member.status != DEAD:
            return
        now = time.monotonic()
        self.membership.probe_soon(sender, now)
        if isinstance(msg, Gossip) and self._knocks.pop(identity, None) == sender:
            own = [row for row in msg.rows if row.name == self.name]
            self.membership_events(self.membership.merge(own, now))

    def _note_knock(self, identity: bytes, name: str) -> None:
        """A dead member said hello on ``identity``: let its digest, which follows, be read
        (only for our own row, by ``heard_from_stranger``)."""
        self._knocks[identity] = name
        self._knocks.move_to_end(identity)
        while len(self._knocks) > MAX_PENDING_JOINS:
            self._knocks.popitem(last=False)
        self.transport.greet(identity)

    # ---- rounds ---------------------------------------------------------------------
    def _digest(self) -> list[MemberRow]:
        return self.membership.digest()

    def _gossip_round(self) -> None:
        table = self.membership
        now = time.monotonic()
        table.update_free(self.name, self.node.free_resources())
        self.membership_events(table.tick(now))
        digest = None
        size = 0
        counters = self.node.counters
        for name in table.gossip_targets():
            member = table.get(name)
            if member is None or not self.ensure_link(name, member.address):
                continue
            if digest is None:
                digest = self._digest()
                size = sum(len(f) for f in encode(Gossip(self.name, digest)))
            if self.transport.send(name, Gossip(self.name, digest)):
                counters["gossip_sent"] += 1  # node_stats()["counters"]: bandwidth of gossip
                counters["gossip_bytes_sent"] += size
        for name, address in table.probe_targets(now):
            self._probe(name, address)
        if self.config.join and self._alone() and now - self._last_join_hello >= REJOIN_EVERY:
            self._hello_join_addresses()
        for name in [n for n, deadline in self._pending_joins.items() if deadline <= now]:
            del self._pending_joins[name]
            if table.forget(name):
                self._refusals.note(0, "%s: forgot %s: it said hello but nothing since",
                                    self.name, name)
                self.drop_link(name)
                self.node.member_lost(name, gone=False)

    def _reintroduce(self) -> None:
        """Say hello (and send our digest) to every live peer again, on the links we have."""
        self._greeted.clear()
        digest = self._digest()
        for name, address in self.membership.addresses().items():
            if self.ensure_link(name, address):
                self.transport.send(name, Gossip(self.name, digest))

    def membership_events(self, events: list[MembershipEvent]) -> None:
        for kind, name in events:
            if name == self.name:
                self._own_event(kind)
                continue
            member = self.membership.get(name)
            if kind is EventKind.JOINED or kind is EventKind.RESTARTED:
                if kind is EventKind.RESTARTED:
                    self.drop_link(name)
                    self.node.member_lost(name, gone=False)
                assert member is not None  # the table reports a join of a row it holds
                log.info("%s: node %s joined at %s", self.name, name, member.address)
                self.ensure_link(name, member.address)
                self.node.member_joined(name, member.caps)
            elif kind is EventKind.DEAD or kind is EventKind.LEFT:
                # a peer that left said goodbye: news, not a problem
                level = logging.WARNING if kind is EventKind.DEAD else logging.INFO
                log.log(level, "%s: node %s is %s", self.name, name, kind.value)
                self.drop_link(name)
                self.node.member_lost(name, gone=True)  # nobody is left to collect its results
            elif kind is EventKind.CAPS and member is not None:
                self.node.member_updated(name, member.caps)
            elif kind is EventKind.SUSPECT:
                log.info("%s: node %s is suspect", self.name, name)

    def _own_event(self, kind: EventKind) -> None:
        if kind is EventKind.CONFLICT:
            log.error("%s: another live node uses this name", self.name)
        elif kind is EventKind.CAPS:  # someone registered new capacities for this node
            self.node.member_updated(self.name, self.capacity)
        elif kind is EventKind.STALLED:
            # this node was paused: ask everyone for news before anyone can be declared dead
            log.warning("%s: this node was stalled; probing its peers", self.name)
            self._reintroduce()
        elif kind is EventKind.REFUTED:
            # peers declared us dead and dropped what they owed us (results, fetches): rejoin
            # as a new instance, and re-place the work we had given them
            log.warning("%s: the cluster declared this node dead; rejoining as a new instance",
                        self.name)
            self._reintroduce()
            for name, member in self.membership.alive().items():
                if name != self.name:
                    self.node.member_lost(name, gone=False)
                    self.node.member_joined(name, member.caps)

    # ---- the API's view -------------------------------------------------------------
    def discover(self) -> dict[str, dict]:
        return {name: dict(m.caps) for name, m in self.membership.alive().items()}

    def register(self, name: str, caps: dict) -> None:
        member = self.membership.get(name)
        if member is None:
            raise HandoffError(f"node {name!r} is not in the cluster; known: {sorted(self.discover())}")
        self.membership.update_caps(name, caps)
        self.node.member_updated(name, member.caps)  # update_caps replaced the row's caps


def _live(member: Member) -> bool:
    return member.status in LIVE

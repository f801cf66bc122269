"""The node's side of the cluster: hellos, gossip rounds, and acting on membership events."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

from handoff.config import check_resources
from handoff.node.membership import MembershipTable
from handoff.protocol.messages import VERSION, Gossip, Hello, Leave, Refuse

log = logging.getLogger("handoff.peers")

__all__ = ["PeerMixin"]


class PeerMixin:
    """Mixed into Node: everything about knowing, reaching and losing peers."""

    def _init_peers(self) -> None:
        self.membership: MembershipTable | None = None
        self._identities: dict[bytes, str] = {}  # ROUTER identity -> peer that said hello on it
        self._pending_by_node: dict[str, set] = defaultdict(set)
        self._greeted: set[str] = set()
        self.peer_hosts: dict[str, str] = {}
        self.join_error: str | None = None

    def _start_peers(self) -> None:
        cfg = self.config
        self.membership = MembershipTable(
            self.name, self.address, cfg.resources,
            suspect_after=cfg.suspect_after, dead_after=cfg.dead_after,
            max_tick_gap=max(cfg.suspect_after / 2, 4 * cfg.gossip_interval),
        )
        self.orchestrator_node_joined(self.name, cfg.resources)
        for address in cfg.join:
            link = f"@{address}"
            self.transport.connect(link, address)
            self.transport.send(link, self._hello())
        self.every(cfg.gossip_interval, self._gossip_round)

    def _stop_peers(self) -> None:
        if self.membership is None:
            return
        self.membership.leave()
        for name in list(self.membership.alive()):
            if name != self.name:
                self.transport.send(name, Leave(self.name))

    def _hello(self) -> Hello:
        return Hello(self.name, self.address, self.membership.incarnation,
                     dict(self.config.resources), VERSION, self.host_id)

    def joined(self) -> bool:
        """Whether this node knows at least one peer (or was not asked to join any)."""
        return not self.config.join or len(self.membership.alive()) > 1

    # ---- links ------------------------------------------------------------------------
    def _ensure_link(self, name: str, address: str) -> None:
        if name == self.name:
            return
        if not self.transport.connected(name):
            self.transport.connect(name, address)
        if name not in self._greeted:
            self._greeted.add(name)
            self.transport.send(name, self._hello())

    def _drop_link(self, name: str) -> None:
        self.transport.disconnect(name)
        self._forget_transfers(name)
        self._greeted.discard(name)
        for identity in [i for i, n in self._identities.items() if n == name]:
            del self._identities[identity]
        for request in self._pending_by_node.pop(name, ()):
            cb = self._pending.pop(request, None)
            if cb is not None:
                cb(None, f"node {name!r} is gone")

    def _is_member(self, msg: Any, identity: bytes) -> bool:
        name = self._identities.get(identity)
        return name is not None and name == getattr(msg, "sender", None)

    # ---- incoming -------------------------------------------------------------------
    def _on_hello(self, identity: bytes, msg: Hello) -> None:
        if msg.version != VERSION:
            self._refuse(msg, f"wire version {msg.version}, this node speaks {VERSION}")
            return
        if msg.name == self.name:
            if msg.incarnation != self.membership.incarnation:
                self._refuse(msg, f"the name {msg.name!r} is taken by a live node")
            return
        if self.membership.name_taken(msg.name, msg.incarnation, msg.address):
            self._refuse(msg, f"the name {msg.name!r} is taken by a live node")
            return
        try:
            caps = check_resources(msg.caps)
        except ValueError as exc:
            self._refuse(msg, f"bad capacities: {exc}")
            return
        self._identities[identity] = msg.name
        self.transport.greet(identity)
        self.peer_hosts[msg.name] = msg.host
        for link in [f"@{msg.address}"]:
            if self.transport.connected(link):  # our join link: it is this peer
                self.transport.disconnect(link)
        row = [msg.name, msg.address, msg.incarnation, 0, "alive", caps, 0, caps]
        self._membership_events(self.membership.merge([row], time.monotonic()))
        self._ensure_link(msg.name, msg.address)
        self.transport.send(msg.name, Gossip(self.name, self._digest()))

    def _refuse(self, msg: Hello, reason: str) -> None:
        log.warning("%s: refused %r at %s: %s", self.name, msg.name, msg.address, reason)
        link = f"!{msg.address}"
        self.transport.connect(link, msg.address)
        self.transport.send(link, Refuse(self.name, reason))
        self.after(1.0, lambda: self.transport.disconnect(link))

    def _on_refuse(self, msg: Refuse) -> None:
        if self.joined():
            return  # a refusal only means something to a node that is still joining
        self.join_error = f"node {msg.name!r} refused this node: {msg.reason}"
        log.error("%s: %s", self.name, self.join_error)

    def _on_gossip(self, msg: Gossip) -> None:
        self._membership_events(self.membership.merge(msg.rows, time.monotonic()))

    def _on_leave(self, name: str) -> None:
        member = self.membership.get(name)
        if member is not None:
            self._membership_events(self.membership.merge(
                [[name, member.address, member.incarnation, member.heartbeat + 1, "left",
                  member.caps, member.caps_version, member.free]], time.monotonic()))

    def _heard_from(self, name: str) -> None:
        self._membership_events(self.membership.heard_from(name, time.monotonic()))

    # ---- rounds ---------------------------------------------------------------------
    def _digest(self) -> list:
        return [list(row) for row in self.membership.digest()]

    def _gossip_round(self) -> None:
        table = self.membership
        table.update_free(self.name, self.pool.ledger.free(self.name))
        self._membership_events(table.tick(time.monotonic()))
        digest = None
        for name in table.gossip_targets():
            member = table.get(name)
            if member is None:
                continue
            self._ensure_link(name, member.address)
            digest = digest or self._digest()
            self.transport.send(name, Gossip(self.name, digest))

    def _membership_events(self, events: list) -> None:
        for kind, name in events:
            if name == self.name:
                if kind == "conflict":
                    log.error("%s: another live node uses this name", self.name)
                elif kind == "caps":  # someone registered new capacities for this node
                    caps = dict(self.membership.me.caps)
                    self.config.resources = caps
                    self.pool.set_capacity(caps)
                    self.orchestrator_node_updated(self.name, caps)
                continue
            member = self.membership.get(name)
            if kind in ("joined", "restarted"):
                if kind == "restarted":
                    self._drop_link(name)
                    self.orchestrator_node_lost(name)
                log.info("%s: node %s joined at %s", self.name, name, member.address)
                self._ensure_link(name, member.address)
                self.orchestrator_node_joined(name, member.caps)
            elif kind in ("dead", "left"):
                log.warning("%s: node %s is %s", self.name, name, kind)
                self._drop_link(name)
                self.cancel_jobs_from(name)
                self.orchestrator_node_lost(name)
            elif kind == "caps" and member is not None:
                self.orchestrator_node_updated(name, member.caps)
            elif kind == "suspect":
                log.info("%s: node %s is suspect", self.name, name)

    # ---- the API's view -------------------------------------------------------------
    def discover(self) -> dict[str, dict]:
        return {name: dict(m.caps) for name, m in self.membership.alive().items()}

    def register(self, name: str, caps: dict) -> None:
        if name == self.name:
            self.config.resources = dict(caps)
            self.pool.set_capacity(caps)
        elif self.membership.get(name) is None:
            from handoff.errors import HandoffError

            raise HandoffError(f"node {name!r} is not in the cluster; known: {sorted(self.discover())}")
        self.membership.update_caps(name, caps)
        self.orchestrator_node_updated(name, caps)

"""ValueSearch: finds stored values anywhere in the cluster for ``get_result`` and ``synchronize``."""

from __future__ import annotations

import time
from functools import partial
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, Hashable

from handoff.protocol.messages import Locate

if TYPE_CHECKING:
    from handoff.node.server import Node, Timer

__all__ = ["ValueSearch", "ASK_FIRST", "ASK_EVERY"]

ASK_FIRST = 0.05  # seconds before a waiting search asks its peers again; doubles each round
ASK_EVERY = 1.0  # ... up to once a second: a long wait costs each peer one small message a second


class ValueSearch:
    """Finds stored values anywhere in the cluster for ``get_result`` and ``synchronize``.

    Owned by the loop thread. A key is taken from the first of: this node's store; the node
    this node's data-location registry names; a node that a peer names when asked (Locate:
    the peer itself if it stores the key, else its registry's entry). Peers are asked only
    about keys the registry does not place, or whose registered holder failed. Each holder is
    tried once per round. One-shot (``wait=False``): a single round; keys nobody holds are
    left out. Waiting: wakes at once on a local store or registration, starts a new round
    after 50 ms, doubling up to once a second, and ends at the deadline with what it found.
    """

    def __init__(self, node: Node, dag_id: Any, keys: list, wait: bool, deadline: float,
                 future: Future) -> None:
        self.node = node
        self.dag_id = dag_id
        self.wait = wait
        self.deadline = deadline
        self.future = future
        self.missing = dict.fromkeys(keys)  # ordered set
        self.found: dict[Hashable, list] = {}
        self.holders: dict[Hashable, list[str]] = {k: [] for k in keys}  # not yet tried this round
        self.tried: dict[Hashable, set[str]] = {k: set() for k in keys}
        self.asked: set[Hashable] = set()  # keys the peers were asked about this round
        self.fetching: set[Hashable] = set()
        self.asking: dict[int, str] = {}  # outstanding Locate request -> peer
        self.cancels: list[Callable[[], None]] = []
        self.timers: list[Timer] = []  # the deadline and the next round
        self.interval = ASK_FIRST
        self.in_round = False
        self.done = False

    def start(self) -> None:
        store = self.node.store
        for key in list(self.missing):
            frames = store.get(self.dag_id, key)
            if frames is not None:
                self._found(key, frames)
        if self.done:
            return
        if self.wait:
            for key in self.missing:
                self.cancels.append(store.wait(self.dag_id, key, partial(self._found, key)))
                self.cancels.append(store.watch_location(self.dag_id, key, partial(self._offer, key)))
        self.timers.append(self.node.after(max(0.0, self.deadline - time.monotonic()), self._finish))
        self._round()

    def _round(self) -> None:
        if self.done:
            return
        self.in_round = True  # a holder that fails at once must not settle a one-shot search
        self.asked.clear()
        for key in list(self.missing):
            self.tried[key].clear()
            holder = self.node.store.location(self.dag_id, key)
            if holder is not None:
                self._offer(key, holder)
        self._ask_peers([k for k in self.missing if k not in self.fetching and k not in self.asked])
        self.in_round = False
        if self.wait:
            del self.timers[1:]  # this round's own timer has fired
            self.timers.append(self.node.after(self.interval, self._round))
            self.interval = min(2 * self.interval, ASK_EVERY)
        else:
            self._settle()

    def _ask_peers(self, keys: list) -> None:
        """One Locate per live peer (and per call: a round, or a holder that failed)."""
        if self.done or not keys:
            return
        self.asked.update(keys)
        node = self.node
        busy = set(self.asking.values())
        for peer in node.peers.membership.alive():
            if peer == node.name or (self.wait and peer in busy):
                continue  # a waiting search keeps one question per peer in flight
            cell: list = []  # the reply names its request, known once it is opened

            def located(holders: Any, error: str | None, cell: list = cell) -> None:
                self._located(cell[0], keys, holders)

            request = node.requests.open(peer, located)
            cell.append(request)
            self.asking[request] = peer
            if not node.transport.send(peer, Locate(node.name, request, self.dag_id, keys)):
                self._forget(request)

    def _located(self, request: int, keys: list, holders: Any) -> None:
        self.asking.pop(request, None)
        if self.done:
            return
        if isinstance(holders, list) and len(holders) == len(keys):
            for key, holder in zip(keys, holders):
                if isinstance(holder, str):
                    self._offer(key, holder)
        self._settle()

    def _offer(self, key: Hashable, holder: str) -> None:
        """``holder`` may have ``key``: fetch it from there unless a fetch is under way."""
        if self.done or key not in self.missing or holder == self.node.name:
            return  # a value stored here arrives through the store's waiter
        if holder not in self.tried[key] and holder not in self.holders[key]:
            self.holders[key].append(holder)
        self._fetch_next(key)

    def _fetch_next(self, key: Hashable) -> None:
        if key in self.fetching or not self.holders[key]:
            return
        holder = self.holders[key].pop(0)
        self.tried[key].add(holder)
        self.fetching.add(key)

        def fetched(frames: list | None, error: str | None) -> None:
            self.fetching.discard(key)
            if self.done:
                return
            if frames is not None:
                self._found(key, frames)
                return
            self._fetch_next(key)
            if key not in self.fetching and key not in self.asked:
                self._ask_peers([key])  # the registered holder failed: someone else may have it
            self._settle()

        self.node.fetching.fetch_value(holder, self.dag_id, key, None, fetched)

    def _found(self, key: Hashable, frames: list) -> None:
        if self.done or key not in self.missing:
            return
        del self.missing[key]
        self.found[key] = frames
        if not self.missing:
            self._finish()

    def _settle(self) -> None:
        """One-shot: done once every peer answered and no fetch is under way."""
        if not (self.wait or self.done or self.in_round or self.asking or self.fetching):
            self._finish()

    def _forget(self, request: int) -> None:
        peer = self.asking.pop(request, None)
        if peer is not None:
            self.node.requests.close(request, peer)

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        for cancel in self.cancels:
            cancel()
        for entry in self.timers:
            self.node.cancel_timer(entry)
        for request in list(self.asking):
            self._forget(request)
        if not self.future.done():
            self.future.set_result(self.found)

"""Requests this node sent to peers and awaits a reply to: id -> callback, indexed by peer."""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any, Callable

__all__ = ["Requests"]

Reply = Callable[[Any, "str | None"], None]  # (answer, None) or (None, error)


class Requests:
    """Owned by the loop thread; a peer that is lost fails all of its requests at once."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._callbacks: dict[int, Reply] = {}
        self._by_peer: dict[str, set[int]] = defaultdict(set)

    def open(self, peer: str, callback: Reply) -> int:
        request = next(self._ids)
        self._callbacks[request] = callback
        self._by_peer[peer].add(request)
        return request

    def close(self, request: int, peer: str) -> Reply | None:
        """The request is answered (or given up): its callback, None if it was closed already."""
        peers = self._by_peer.get(peer)
        if peers is not None:
            peers.discard(request)
            if not peers:
                del self._by_peer[peer]
        return self._callbacks.pop(request, None)

    def answer(self, request: int, peer: str, value: Any, error: str | None = None) -> None:
        callback = self.close(request, peer)
        if callback is not None:
            callback(value, error)

    def __contains__(self, request: int) -> bool:
        return request in self._callbacks

    def peer_of(self, request: int) -> str:
        return next((p for p, reqs in self._by_peer.items() if request in reqs), "")

    def fail_peer(self, peer: str, error: str) -> None:
        for request in self._by_peer.pop(peer, ()):
            callback = self._callbacks.pop(request, None)
            if callback is not None:
                callback(None, error)

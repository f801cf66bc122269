"""The result cache's part of a node: its disk cache, the answers it gives peers, and the
questions a driver asks every live node (which keys do you hold? empty your cache)."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any, Callable

from handoff.cache.disk import DiskCache
from handoff.node.data.values import dumps_value, is_local
from handoff.protocol.messages import CacheClear, CacheHeld, CacheQuery

if TYPE_CHECKING:
    from handoff.node.server import Node

log = logging.getLogger("handoff.cache")

__all__ = ["NodeCache"]

ASK_TIMEOUT = 5.0  # seconds a driver waits for the nodes' answers; a silent node holds nothing


class NodeCache:
    """Owned by the node's loop thread, except ``ask_everyone``/``clear_everywhere``, which
    callers use from their own thread."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.disk = DiskCache(node.config.cache_dir, int(node.config.cache_size or 0))

    # ---- this node ------------------------------------------------------------------
    def load(self, key: str) -> list | None:
        return self.disk.get(key)

    def save(self, key: str, frames: list) -> None:
        """Write a computed value (on the loop: before the run's orchestrator hears of it)."""
        try:
            if is_local(frames):  # a thread-executor value, kept as an object
                frames = dumps_value(frames[0].obj)
            self.disk.put(key, frames)
        except Exception as exc:  # a value that will not pickle: the run is not at fault
            log.warning("%s: could not cache %s: %s", self.node.name, key, exc)

    # ---- peers' questions -----------------------------------------------------------
    def on_message(self, msg: Any) -> None:
        node = self.node
        if isinstance(msg, CacheQuery):
            node.transport.send(msg.sender, CacheHeld(node.name, msg.request, self.disk.held(msg.keys)))
        elif isinstance(msg, CacheClear):
            node.transport.send(msg.sender, CacheHeld(node.name, msg.request, [], self.disk.clear()))
        elif isinstance(msg, CacheHeld):
            node.requests.answer(msg.request, msg.sender, msg)

    # ---- asking every node (from a caller's thread) -------------------------------------
    def ask_everyone(self, keys: list[str], timeout: float = ASK_TIMEOUT) -> dict[str, list[str]]:
        """``{node: keys it holds}`` over the live members, one request each; a member that
        does not answer within ``timeout`` counts as holding none."""
        answers = self._gather(lambda: self.disk.held(keys), lambda name, r: CacheQuery(name, r, keys),
                               timeout)
        return {name: held.keys if isinstance(held, CacheHeld) else held for name, held in answers.items()}

    def clear_everywhere(self, timeout: float = ASK_TIMEOUT) -> dict[str, int]:
        """Empty every live member's cache; ``{node: entries removed}`` of those that answered."""
        answers = self._gather(self.disk.clear, lambda name, r: CacheClear(name, r), timeout)
        return {name: a.removed if isinstance(a, CacheHeld) else a for name, a in answers.items()}

    def _gather(self, local: Callable[[], Any], make: Callable[[str, int], Any],
                timeout: float) -> dict[str, Any]:
        node = self.node
        answers: dict[str, Any] = {}
        lock = threading.Lock()
        done: Future = Future()
        opened: list[tuple[int, str]] = []

        def start() -> None:
            members = [n for n in node.peers.membership.alive() if n != node.name]
            waiting = set(members)

            def answered(name: str) -> Callable[[Any, str | None], None]:
                def callback(value: Any, error: str | None) -> None:
                    with lock:
                        if value is not None:
                            answers[name] = value
                        waiting.discard(name)
                        if not waiting and not done.done():
                            done.set_result(None)
                return callback

            for name in members:
                request = node.requests.open(name, answered(name))
                opened.append((request, name))
                if not node.transport.send(name, make(node.name, request)):
                    node.requests.close(request, name)
                    waiting.discard(name)
            answers[node.name] = local()
            if not waiting and not done.done():
                done.set_result(None)

        node.call(start).result(timeout)
        try:
            done.result(timeout)
        except FutureTimeout:
            log.warning("%s: %s did not answer about the result cache within %g s", node.name,
                        sorted({n for _, n in opened} - set(answers)), timeout)

            def give_up() -> None:
                for request, name in opened:
                    node.requests.close(request, name)

            node.call(give_up)
        with lock:
            return dict(answers)

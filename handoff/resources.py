"""Resource tracking: the ``ResourceTracker`` protocol and ``SimpleResourceTracker``.

A tracker knows each node's capacities and what is claimed on it. Claims are
all-or-nothing and never over-commit; re-registering a node keeps its current claims.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, runtime_checkable

from handoff import _core

__all__ = ["ResourceTracker", "SimpleResourceTracker"]

Resources = Mapping[str, float]


@runtime_checkable
class ResourceTracker(Protocol):
    """What Handoff needs from something that tracks resources across nodes."""

    def register(self, node: str, caps: Resources) -> None:
        """Set ``node``'s capacities, keeping what is currently claimed on it."""

    def available(self, node: str, req: Resources | None) -> bool:
        """Whether ``req`` fits ``node``'s free resources now."""

    def request(self, node: str, req: Resources | None) -> bool:
        """Claim ``req`` on ``node`` if all of it fits now; returns whether it did."""

    def release(self, node: str, req: Resources | None) -> None:
        """Give back a claim made with ``request``."""

    def capabilities(self, node: str | None = None) -> Any:
        """``node``'s capacities, or ``{node: capacities}`` for every node."""


class SimpleResourceTracker:
    """A ResourceTracker over the compiled ``ResourceLedger`` (nodes x resources arrays).

    Unknown nodes have nothing available: ``available`` and ``request`` return False,
    ``release`` does nothing (the node, and its claims, are gone).

    Examples
    --------
    >>> tracker = SimpleResourceTracker()
    >>> tracker.register("a", {"cpu": 4})
    >>> tracker.request("a", {"cpu": 3}), tracker.available("a", {"cpu": 2})
    (True, False)
    """

    def __init__(self, ledger: _core.ResourceLedger | None = None):
        self.ledger = _core.ResourceLedger() if ledger is None else ledger

    def __repr__(self) -> str:
        return f"SimpleResourceTracker({self.ledger.nodes})"

    @property
    def nodes(self) -> list[str]:
        """Registered nodes, in registration order."""
        return list(self.ledger.nodes)

    def register(self, node: str, caps: Resources) -> None:
        self.ledger.register(node, dict(caps))

    def unregister(self, node: str) -> None:
        """Forget ``node`` and its claims; unknown nodes are ignored."""
        if self.ledger.has_node(node):
            self.ledger.unregister(node)

    def available(self, node: str, req: Resources | None) -> bool:
        if not self.ledger.has_node(node):
            return False
        return bool(self.ledger.available(node, _checked(req)))

    def request(self, node: str, req: Resources | None) -> bool:
        if not self.ledger.has_node(node):
            return False
        return bool(self.ledger.request(node, _checked(req)))

    def release(self, node: str, req: Resources | None) -> None:
        if self.ledger.has_node(node):
            self.ledger.release(node, _checked(req))

    def capabilities(self, node: str | None = None) -> Any:
        """``node``'s capacities (KeyError if unknown), or ``{node: capacities}`` for all."""
        if node is None:
            return self.ledger.capacities()
        return self.ledger.capacity(node)

    def free(self, node: str) -> dict[str, float]:
        """``node``'s resources not claimed now (KeyError if unknown)."""
        return self.ledger.free(node)


def _checked(req: Resources | None) -> dict:
    if req is None:
        return {}
    if not isinstance(req, Mapping):
        raise TypeError(
            f"a resource request must be a mapping of name to amount, got {type(req).__name__}"
        )
    return dict(req)

"""Wait for the cluster, as this process's node sees it, to gain or lose members."""

from __future__ import annotations

import time
from typing import Callable, Iterable

from handoff.errors import TimeoutError as HandoffTimeout

__all__ = ["wait_until", "wait_for_members", "wait_for_departure"]

POLL = 0.05  # seconds between looks at the membership table


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = POLL) -> bool:
    """Look at ``predicate()`` every ``interval`` s until it is true (True) or ``timeout`` s
    have passed (False, after one last look): the bounded way for a test to wait for an event
    it can observe but not subscribe to."""
    deadline = time.monotonic() + timeout
    while not predicate():
        left = deadline - time.monotonic()
        if left <= 0:
            return bool(predicate())
        time.sleep(min(interval, left))
    return True


def _wait(names: Iterable[str], timeout: float, gone: bool) -> dict[str, dict[str, float]]:
    import handoff

    if isinstance(names, str):
        raise TypeError(f"names must be a list of node names, got the string {names!r}")
    wanted = set(names)
    deadline = time.monotonic() + timeout
    while True:
        seen = handoff.discover_nodes()
        waiting = wanted & set(seen) if gone else wanted - set(seen)
        if not waiting:
            return seen
        if time.monotonic() >= deadline:
            break
        time.sleep(min(POLL, max(0.0, deadline - time.monotonic())))
    listed = ", ".join(sorted(map(str, waiting)))
    what = f"nodes {listed} to leave" if gone else f"nodes {listed} to join"
    raise HandoffTimeout(f"waiting for {what} (members now: {', '.join(sorted(seen))})", timeout)


def wait_for_members(names: Iterable[str], timeout: float = 30.0) -> dict[str, dict[str, float]]:
    """Wait until ``handoff.discover_nodes()`` lists every one of ``names``; returns what it
    lists then. ``handoff.TimeoutError`` after ``timeout`` s names the missing ones."""
    return _wait(names, timeout, gone=False)


def wait_for_departure(names: Iterable[str], timeout: float = 30.0) -> dict[str, dict[str, float]]:
    """Wait until ``handoff.discover_nodes()`` lists none of ``names`` (they were declared
    dead or left). ``handoff.TimeoutError`` after ``timeout`` s names those still listed."""
    return _wait(names, timeout, gone=True)

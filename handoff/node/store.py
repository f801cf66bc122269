"""A node's result store and data-location registry, per DAG id.

Values are kept as the frames a worker produced (pickle bytes plus out-of-band buffers), so
the event loop never unpickles user data and a value is served to peers without re-pickling.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Hashable

from handoff.node.values import release_frames

__all__ = ["ValueStore"]

Waiter = Callable[[list], None]


class ValueStore:
    def __init__(self) -> None:
        self._values: dict[Any, dict[Hashable, list]] = defaultdict(dict)
        self._locations: dict[Any, dict[Hashable, str]] = defaultdict(dict)
        self._waiters: dict[tuple, list[Waiter]] = defaultdict(list)
        self._watchers: dict[tuple, list[Callable[[str], None]]] = defaultdict(list)  # on registration
        self.bytes_served = 0
        self.fetches_served = 0

    def put(self, dag_id: Any, key: Hashable, frames: list) -> None:
        table = self._values[dag_id]
        old = table.get(key)
        if old is not None and old is not frames:
            release_frames(old)
        table[key] = frames
        waiters = self._waiters.pop((dag_id, key), None)
        if waiters:
            for w in waiters:
                w(frames)

    def get(self, dag_id: Any, key: Hashable) -> list | None:
        table = self._values.get(dag_id)
        return None if table is None else table.get(key)

    def has(self, dag_id: Any, key: Hashable) -> bool:
        table = self._values.get(dag_id)
        return table is not None and key in table

    def wait(self, dag_id: Any, key: Hashable, waiter: Waiter) -> Callable[[], None]:
        """Call ``waiter(frames)`` once the value is stored; returns a function that cancels."""
        found = self.get(dag_id, key)
        if found is not None:
            waiter(found)
            return lambda: None
        self._waiters[(dag_id, key)].append(waiter)

        def cancel() -> None:
            waiters = self._waiters.get((dag_id, key))
            if waiters and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[(dag_id, key)]

        return cancel

    def register_location(self, dag_id: Any, key: Hashable, node: str) -> None:
        self._locations[dag_id][key] = node
        for watcher in list(self._watchers.get((dag_id, key), ())):
            watcher(node)

    def watch_location(self, dag_id: Any, key: Hashable, watcher: Callable[[str], None]) -> Callable[[], None]:
        """Call ``watcher(node)`` on every registration of the key's location; returns a
        function that stops watching."""
        self._watchers[(dag_id, key)].append(watcher)

        def cancel() -> None:
            watchers = self._watchers.get((dag_id, key))
            if watchers and watcher in watchers:
                watchers.remove(watcher)
                if not watchers:
                    del self._watchers[(dag_id, key)]

        return cancel

    def location(self, dag_id: Any, key: Hashable) -> str | None:
        table = self._locations.get(dag_id)
        return None if table is None else table.get(key)

    def clear(self, dag_id: Any) -> None:
        for frames in self._values.pop(dag_id, {}).values():
            release_frames(frames)
        self._locations.pop(dag_id, None)

    def stats(self) -> dict:
        return {
            "dags": len(self._values),
            "values": sum(len(t) for t in self._values.values()),
            "bytes_served": self.bytes_served,
            "fetches_served": self.fetches_served,
        }

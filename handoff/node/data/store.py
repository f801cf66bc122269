"""A node's result store and data-location registry, per DAG id, within a memory budget.

Values are kept as the frames a worker produced (pickle bytes plus out-of-band buffers), so
the event loop never unpickles user data and a value is served to peers without re-pickling.
Past ``limit`` bytes in memory, values spill to the node's spill directory, least recently
used first and values of DAGs with no run in progress here before those of active ones; a
spilled value is served from disk (``SpillDir.read``) and is never lost.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from handoff.node.data.spill import SpillDir, SpilledValue
from handoff.node.data.values import blob_nbytes, dumps_value, has_shared, is_local, release_frames

log = logging.getLogger("handoff.store")

__all__ = ["ValueStore", "UNLINK_GRACE"]

Waiter = Callable[[list], None]

# Seconds a spilled value's shared-memory files outlive its last hand-out: a consumer on this
# host that was given the descriptor maps the file within that time.
UNLINK_GRACE = 10.0


@dataclass(slots=True, eq=False)
class _Entry:
    frames: list | None  # None once spilled
    nbytes: int  # bytes in memory while not spilled (an estimate for thread-executor objects)
    dag_id: Any
    key: Hashable
    spilled: SpilledValue | None = None
    unspillable: bool = False  # could not be pickled or written: stays in memory
    handed_out: float = float("-inf")  # when its frames were last given to a consumer
    # neighbours in the store's LRU list while the frames are in memory
    prev: _Entry | None = field(default=None, repr=False)
    next: _Entry | None = field(default=None, repr=False)


class _LRU:
    """The entries whose frames are in memory, least recently used first: a doubly linked list
    through the entries themselves, so tracking a value costs two slots, not an ordered-dict
    node and a key tuple (a million small results would pay about 160 bytes each)."""

    def __init__(self) -> None:
        self.head: _Entry | None = None
        self.tail: _Entry | None = None
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def append(self, entry: _Entry) -> None:
        entry.prev, entry.next = self.tail, None
        if self.tail is None:
            self.head = entry
        else:
            self.tail.next = entry
        self.tail = entry
        self.size += 1

    def remove(self, entry: _Entry) -> None:
        """Unlink ``entry``, which must be in the list."""
        prev, nxt = entry.prev, entry.next
        if prev is None:
            self.head = nxt
        else:
            prev.next = nxt
        if nxt is None:
            self.tail = prev
        else:
            nxt.prev = prev
        entry.prev = entry.next = None
        self.size -= 1

    def touch(self, entry: _Entry) -> None:
        """Make ``entry``, which must be in the list, the most recently used."""
        if entry is not self.tail:
            self.remove(entry)
            self.append(entry)

    def __iter__(self) -> Iterator[_Entry]:
        entry = self.head
        while entry is not None:
            nxt = entry.next
            yield entry
            entry = nxt


class ValueStore:
    def __init__(self, limit: int | None = None, spill_dir: str | None = None,
                 clock: Callable[[], float] = time.monotonic, grace: float = UNLINK_GRACE) -> None:
        self.limit = limit
        self.spill = SpillDir(spill_dir)
        self.clock = clock
        self.grace = grace
        self._values: dict[Any, dict[Hashable, _Entry]] = defaultdict(dict)
        self._lru = _LRU()  # entries whose frames are in memory, oldest first
        self._runs: dict[str, Any] = {}  # runs in progress on this node -> their DAG id
        self._active: Counter = Counter()  # DAG id -> runs in progress
        self._releasing: deque = deque()  # (when, frames, nbytes): shm files of spilled values
        self._locations: dict[Any, dict[Hashable, str]] = defaultdict(dict)
        # DAG id -> where its last run left each result (a read-only mapping over arrays, so
        # that a run of a million functions adds no dict entry a function); ``_locations``
        # holds what was registered one by one since, and what older runs alone computed
        self._run_locations: dict[Any, Mapping[Hashable, str]] = {}
        self._held_by: dict[Any, str] = {}  # DAG id -> this node's name, for the values held here
        self._waiters: dict[tuple, list[Waiter]] = defaultdict(list)
        self._watchers: dict[tuple, list[Callable[[str], None]]] = defaultdict(list)  # on registration
        self.memory_bytes = 0
        self.disk_bytes = 0
        self.releasing_bytes = 0
        self.spills = 0
        self.loads = 0
        self.spill_failures = 0
        self.bytes_served = 0
        self.fetches_served = 0

    # ---- values -----------------------------------------------------------------------
    def put(self, dag_id: Any, key: Hashable, frames: list, nbytes: int = 0) -> None:
        """Keep a value; ``nbytes``, when known, is ``blob_nbytes(frames)`` (spares measuring)."""
        table = self._values[dag_id]
        old = table.get(key)
        if old is not None:
            self._drop(dag_id, key, old, release=old.frames is not frames)
        entry = table[key] = _Entry(frames, nbytes or _size(frames), dag_id, key)
        self._lru.append(entry)
        self.memory_bytes += entry.nbytes
        waiters = self._waiters.pop((dag_id, key), None)
        if waiters:
            if len(frames) > 1:
                entry.handed_out = self.clock()
            for w in waiters:
                w(frames)
        self._fit()

    def get(self, dag_id: Any, key: Hashable) -> list | None:
        """The value's frames (read back from disk if it was spilled), or None."""
        table = self._values.get(dag_id)
        entry = None if table is None else table.get(key)
        if entry is None:
            return None
        if entry.frames is not None:
            if len(entry.frames) > 1:  # only out-of-band frames may be shared memory: see _spill
                entry.handed_out = self.clock()
            self._lru.touch(entry)
            return entry.frames
        entry.handed_out = self.clock()
        assert entry.spilled is not None  # an entry holds its frames or its spilled record
        try:
            frames = self.spill.read(entry.spilled)
        except OSError as exc:
            log.error("spilled value %r of DAG %r could not be read back: %s", key, dag_id, exc)
            return None
        self.loads += 1
        return frames

    def has(self, dag_id: Any, key: Hashable) -> bool:
        table = self._values.get(dag_id)
        return table is not None and key in table

    def spilled(self, dag_id: Any, key: Hashable) -> bool:
        """Whether the value is on disk rather than in memory."""
        table = self._values.get(dag_id)
        entry = None if table is None else table.get(key)
        return entry is not None and entry.frames is None

    def active(self, dag_id: Any) -> bool:
        """Whether a run of the DAG is in progress on this node (its values spill last)."""
        return dag_id in self._active

    def wait(self, dag_id: Any, key: Hashable, waiter: Waiter) -> Callable[[], None]:
        """Call ``waiter(frames)`` once the value is stored; returns a function that cancels."""
        found = self.get(dag_id, key)
        if found is not None:
            waiter(found)
            return lambda: None
        return _subscribe(self._waiters, (dag_id, key), waiter)

    def clear(self, dag_id: Any) -> None:
        for key, entry in self._values.pop(dag_id, {}).items():
            self._drop(dag_id, key, entry, release=True)
        self._locations.pop(dag_id, None)
        self._run_locations.pop(dag_id, None)
        self._held_by.pop(dag_id, None)

    # ---- runs in progress: their DAGs' values spill last --------------------------------
    def begin_run(self, run_id: str, dag_id: Any) -> None:
        if run_id not in self._runs:
            self._runs[run_id] = dag_id
            self._active[dag_id] += 1

    def end_run(self, run_id: str) -> None:
        dag_id = self._runs.pop(run_id, None)
        if dag_id is None:
            return
        self._active[dag_id] -= 1
        if self._active[dag_id] <= 0:
            del self._active[dag_id]
        self._fit()

    # ---- the budget -----------------------------------------------------------------------
    def _fit(self) -> None:
        if self.limit is None:
            return
        while self.memory_bytes > self.limit:
            victim = self._victim()
            if victim is None:
                return
            self._spill(*victim)

    def _victim(self) -> tuple | None:
        """The least recently used value of a DAG with no run here, else of an active one."""
        fallback = None
        for entry in self._lru:
            if entry.unspillable:
                continue
            if entry.dag_id not in self._active:
                return (entry.dag_id, entry.key), entry
            if fallback is None:
                fallback = ((entry.dag_id, entry.key), entry)
        return fallback

    def _spill(self, k: tuple, entry: _Entry) -> None:
        frames = entry.frames
        assert frames is not None  # the LRU holds the entries whose frames are in memory
        try:
            # the thread executor's objects are pickled here, on the loop: spilling them is rare
            record = self.spill.write(dumps_value(frames[0].obj) if is_local(frames) else frames)
        except Exception as exc:  # unpicklable object, disk full: keep it in memory
            entry.unspillable = True
            self.spill_failures += 1
            log.warning("value %r of DAG %r stays in memory (spilling failed: %s)", k[1], k[0], exc)
            return
        self._lru.remove(entry)
        self.memory_bytes -= entry.nbytes
        self.disk_bytes += record.nbytes
        self.spills += 1
        entry.frames, entry.spilled = None, record
        if has_shared(frames):
            self._release_later(frames, entry.nbytes, entry.handed_out + self.grace)

    def _release_later(self, frames: list, nbytes: int, when: float) -> None:
        if when <= self.clock():
            release_frames(frames)
            return
        self._releasing.append((when, frames, nbytes))
        self.releasing_bytes += nbytes

    def tick(self) -> None:
        """A timer: unlink the shared-memory files of spilled values once their grace is over."""
        now = self.clock()
        keep: deque = deque()
        for when, frames, nbytes in self._releasing:
            if when <= now:
                release_frames(frames)
                self.releasing_bytes -= nbytes
            else:
                keep.append((when, frames, nbytes))
        self._releasing = keep

    def _drop(self, dag_id: Any, key: Hashable, entry: _Entry, release: bool) -> None:
        if entry.frames is not None:
            self._lru.remove(entry)
            self.memory_bytes -= entry.nbytes
            if release:
                release_frames(entry.frames)
        if entry.spilled is not None:
            self.spill.remove(entry.spilled)
            self.disk_bytes -= entry.spilled.nbytes

    def close(self) -> None:
        """At shutdown: unlink pending shared-memory files and remove the spill directory."""
        for _, frames, _ in self._releasing:
            release_frames(frames)
        self._releasing.clear()
        self.releasing_bytes = 0
        self.spill.close()

    # ---- data locations -----------------------------------------------------------------
    def register_location(self, dag_id: Any, key: Hashable, node: str, held: bool = False) -> None:
        """``held``: ``node`` is this store's own node and the value is in this store; that is
        remembered once per DAG, not once per value."""
        if held and key in self._values.get(dag_id, ()):
            self._held_by[dag_id] = node
            table = self._locations.get(dag_id)
            if table is not None:
                table.pop(key, None)
        else:
            self._locations[dag_id][key] = node
        for watcher in list(self._watchers.get((dag_id, key), ())):
            watcher(node)

    def register_locations(self, dag_id: Any, locations: Mapping[Hashable, str]) -> None:
        """Register every location of a finished run at once; ``locations`` is kept, not copied."""
        table = self._locations[dag_id]
        older = self._run_locations.get(dag_id)
        if older is not None:  # what only the older run computed stays known
            for key in older:
                if key not in locations and key not in table:
                    table[key] = older[key]
        for key in [k for k in table if k in locations]:
            del table[key]
        self._run_locations[dag_id] = locations
        for (d, key), watchers in list(self._watchers.items()):
            if d == dag_id and key in locations:
                node = locations[key]
                for watcher in list(watchers):
                    watcher(node)

    def watch_location(self, dag_id: Any, key: Hashable, watcher: Callable[[str], None]) -> Callable[[], None]:
        """Call ``watcher(node)`` on every registration of the key's location; returns a
        function that stops watching."""
        return _subscribe(self._watchers, (dag_id, key), watcher)

    def location(self, dag_id: Any, key: Hashable) -> str | None:
        """Where the value is: as registered one by one, else this node if it holds it, else
        as the DAG's last run left it."""
        table = self._locations.get(dag_id)
        node = None if table is None else table.get(key)
        if node is None and self.has(dag_id, key):
            node = self._held_by.get(dag_id)
        if node is None:
            mapping = self._run_locations.get(dag_id)
            if mapping is not None:
                node = mapping.get(key)
        return node

    def stats(self) -> dict:
        return {
            "dags": len(self._values),
            "values": sum(len(t) for t in self._values.values()),
            "limit": self.limit,
            "memory_bytes": self.memory_bytes,
            "disk_bytes": self.disk_bytes,
            "releasing_bytes": self.releasing_bytes,
            "spilled_values": sum(1 for t in self._values.values() for e in t.values() if e.frames is None),
            "spills": self.spills,
            "loads": self.loads,
            "spill_failures": self.spill_failures,
            "bytes_served": self.bytes_served,
            "fetches_served": self.fetches_served,
        }


def _subscribe(table: dict[tuple, list], key: tuple, callback: Callable) -> Callable[[], None]:
    """Add ``callback`` to ``table[key]``; returns a function that takes it out again (and
    the key, once its list is empty)."""
    table[key].append(callback)

    def cancel() -> None:
        callbacks = table.get(key)
        if callbacks and callback in callbacks:
            callbacks.remove(callback)
            if not callbacks:
                del table[key]

    return cancel


def _size(frames: list) -> int:
    """Bytes a value holds: its frames, or for a thread-executor object an estimate (buffers of
    arrays and bytes-like objects, one level into lists, tuples and dicts, else shallow sizes)."""
    if not is_local(frames):
        return blob_nbytes(frames)
    obj = frames[0].obj
    if isinstance(obj, dict):
        items = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        items = list(obj)
    else:
        return _object_size(obj)
    return sys.getsizeof(obj) + sum(_object_size(x) for x in items[:1000])


def _object_size(obj: Any) -> int:
    nbytes = getattr(obj, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    try:
        return memoryview(obj).nbytes
    except TypeError:
        return sys.getsizeof(obj)

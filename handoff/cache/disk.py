"""A node's result cache on disk: one content file per key, bounded in bytes, least recently
used evicted first.

A value is stored as the frames a worker produced (its pickle stream and out-of-band
buffers) in one file, ``<key>.v``, named by its key (a hex digest): a small header (magic,
frame count, frame sizes) and the frames. Files are written to a temporary name and renamed
into place, so a reader sees a whole file or none, and several nodes may share a directory
(same key, same value: the last rename wins). A hit refreshes the file's mtime, which is the
recency that eviction goes by. The in-memory index (key -> size) is rebuilt from the
directory when the node starts and when an eviction pass runs, so files that other processes
wrote or removed are counted.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import tempfile
import uuid
from collections import OrderedDict
from typing import Any, Iterable, Sequence

from handoff.node.data import shm

log = logging.getLogger("handoff.cache")

__all__ = ["DiskCache", "KEY_PATTERN", "write_entry"]

MAGIC = b"HOC1"
_HEAD = struct.Struct("<4sI")
_SIZE = struct.Struct("<Q")
KEY_PATTERN = re.compile(r"^[0-9a-f]{16,128}$")
EVICT_TO = 0.9  # an eviction pass frees down to this fraction of the bound


class DiskCache:
    """Owned by the node's loop thread; the directory is made on the first write."""

    def __init__(self, path: str, limit: int) -> None:
        self.path = path
        self.limit = limit
        self._index: OrderedDict[str, int] | None = None  # key -> bytes, oldest first
        self.total = 0
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self.evictions = 0

    # ---- index ----------------------------------------------------------------------
    def _scan(self) -> OrderedDict[str, int]:
        entries: list[tuple[float, str, int]] = []
        try:
            with os.scandir(self.path) as it:
                for e in it:
                    name = e.name
                    if not name.endswith(".v") or not KEY_PATTERN.match(name[:-2]):
                        continue
                    try:
                        st = e.stat()
                    except OSError:  # removed meanwhile
                        continue
                    entries.append((st.st_mtime, name[:-2], st.st_size))
        except FileNotFoundError:
            pass
        entries.sort()
        index: OrderedDict[str, int] = OrderedDict((key, size) for _, key, size in entries)
        self._index = index
        self.total = sum(index.values())
        return index

    def _entries(self) -> OrderedDict[str, int]:
        return self._index if self._index is not None else self._scan()

    def path_of(self, key: str) -> str:
        """Where the entry of ``key`` lives (a worker process writes it there: ``write_entry``)."""
        return self._file(key)

    def _file(self, key: str) -> str:
        if not KEY_PATTERN.match(key):
            raise ValueError(f"a cache key is a hex digest, got {key!r}")
        return os.path.join(self.path, key + ".v")

    # ---- reading ------------------------------------------------------------------
    def held(self, keys: Iterable[str]) -> list[str]:
        """The keys among ``keys`` whose value is here now (the directory is the truth)."""
        out = []
        for key in keys:
            if KEY_PATTERN.match(key) and os.path.exists(self._file(key)):
                out.append(key)
        return out

    def get(self, key: str) -> list | None:
        """The value's frames, or None when it is not here (or the file is damaged)."""
        path = self._file(key)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            self.misses += 1
            return None
        frames = _decode(data)
        if frames is None:
            log.warning("cache file %s is damaged; removing it", path)
            self._remove(key)
            self.misses += 1
            return None
        try:
            os.utime(path)
        except OSError:
            pass
        index = self._entries()
        if key in index:
            index.move_to_end(key)
        else:
            index[key] = len(data)
            self.total += len(data)
        self.hits += 1
        return frames

    # ---- writing ------------------------------------------------------------------
    def put(self, key: str, frames: Sequence[Any]) -> bool:
        """Store a value's frames under ``key``; False (and nothing left behind) when it is
        larger than the bound or the disk refuses."""
        path = self._file(key)
        size = entry_size(frames)
        if size > self.limit:
            log.info("not caching %s: %d bytes is more than the cache's bound of %d", key, size, self.limit)
            return False
        try:
            write_entry(path, frames)
        except OSError as exc:
            log.warning("could not write cache entry %s in %s: %s", key, self.path, exc)
            return False
        self._account(key, size)
        return True

    def note_written(self, key: str) -> None:
        """Count an entry that a worker process wrote (``write_entry``); one over the bound
        is removed, and the least recently used go when the total passes it."""
        try:
            size = os.stat(self._file(key)).st_size
        except OSError:  # the worker could not write it (it said why on its stderr)
            return
        if size > self.limit:
            self._remove(key)
            return
        self._account(key, size)

    def _account(self, key: str, size: int) -> None:
        index = self._entries()
        old = index.pop(key, 0)
        index[key] = size
        self.total += size - old
        self.writes += 1
        if self.total > self.limit:
            self._evict()

    def _evict(self) -> None:
        index = self._scan()  # others' files count too
        target = int(self.limit * EVICT_TO)
        while self.total > target and index:
            key, size = index.popitem(last=False)
            _unlink(self._file(key))
            self.total -= size
            self.evictions += 1

    def _remove(self, key: str) -> None:
        _unlink(self._file(key))
        index = self._entries()
        self.total -= index.pop(key, 0)

    def clear(self) -> int:
        """Remove every entry; returns how many there were."""
        index = self._scan()
        for key in list(index):
            _unlink(self._file(key))
        n = len(index)
        index.clear()
        self.total = 0
        return n

    def stats(self) -> dict:
        index = self._entries()
        return {"path": self.path, "limit": self.limit, "bytes": self.total, "entries": len(index),
                "hits": self.hits, "misses": self.misses, "writes": self.writes,
                "evictions": self.evictions}


def entry_size(frames: Sequence[Any]) -> int:
    return _HEAD.size + _SIZE.size * len(frames) + sum(_view(f).nbytes for f in frames)


def write_entry(path: str, frames: Sequence[Any]) -> None:
    """Write a value's frames to ``path`` whole or not at all (a temporary file renamed into
    place); makes the directory. OSError leaves nothing behind."""
    views = [_view(f) for f in frames]
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{uuid.uuid4().hex[:8]}-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_HEAD.pack(MAGIC, len(views)))
            for v in views:
                f.write(_SIZE.pack(v.nbytes))
            for v in views:
                f.write(v)
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def _view(frame: Any) -> memoryview:
    if shm.is_descriptor(frame):
        frame = shm.open_descriptor(frame)
    view = memoryview(frame.buffer if hasattr(frame, "buffer") else frame)
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def _decode(data: bytes) -> list | None:
    if len(data) < _HEAD.size:
        return None
    magic, count = _HEAD.unpack_from(data, 0)
    pos = _HEAD.size
    if magic != MAGIC or len(data) < pos + _SIZE.size * count:
        return None
    sizes = [_SIZE.unpack_from(data, pos + _SIZE.size * i)[0] for i in range(count)]
    pos += _SIZE.size * count
    if pos + sum(sizes) != len(data):
        return None
    view = memoryview(data)
    frames: list = []
    for size in sizes:
        frames.append(bytes(view[pos:pos + size]) if not frames else view[pos:pos + size])
        pos += size
    return frames


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass

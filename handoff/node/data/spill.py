"""A node's spill directory: values moved out of memory to disk, and served from there.

Each spilled value is one file per frame: ``<n>.h`` holds the pickle stream, ``<n>.<i>`` the
i-th out-of-band buffer. Loading a value back reads only the pickle stream; each buffer is
handed out as a descriptor of its file (see ``shm``), so consumers on this host map it
through the page cache and a peer on another host is sent the bytes, read from the mapping.
The directory is ``handoff-<pid>-<token>.spill`` in the temp dir, mode 0700, removed when
the node stops (or by a surviving node's sweep if it is killed).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from typing import Any, Sequence

from handoff.node.data import shm

__all__ = ["SpillDir", "SpilledValue"]

_WRITE_CHUNK = 1 << 26


@dataclass(slots=True)
class SpilledValue:
    """Where one value's frames are on disk."""

    head: str
    buffers: list[tuple[str, int]]  # (path, size) per out-of-band buffer
    nbytes: int


class SpillDir:
    """Creates its directory on first use; ``close`` removes it with everything in it."""

    def __init__(self, parent: str | None = None):
        self.parent = parent or tempfile.gettempdir()
        self.path = ""
        self._names = itertools.count()

    def _ensure(self) -> str:
        if not self.path:
            path = os.path.join(self.parent, f"handoff-{os.getpid()}-{uuid.uuid4().hex[:8]}.spill")
            os.mkdir(path, 0o700)
            self.path = path
        return self.path

    def write(self, frames: Sequence[Any]) -> SpilledValue:
        """Copy a value's frames to new files; OSError (disk full) leaves nothing behind."""
        base = os.path.join(self._ensure(), str(next(self._names)))
        written: list[str] = []
        try:
            head = f"{base}.h"
            written.append(head)
            total = _write_view(head, _view(frames[0]))
            buffers = []
            for i, frame in enumerate(frames[1:]):
                path = f"{base}.{i}"
                written.append(path)
                if shm.is_descriptor(frame):
                    size = _copy_file(shm.descriptor_path(frame), path, shm.descriptor_size(frame))
                else:
                    size = _write_view(path, _view(frame))
                buffers.append((path, size))
                total += size
        except BaseException:
            for path in written:
                _unlink(path)
            raise
        return SpilledValue(head, buffers, total)

    @staticmethod
    def read(value: SpilledValue) -> list:
        """The value's frames: its pickle stream as bytes, each buffer as a file descriptor."""
        with open(value.head, "rb") as f:
            head = f.read()
        return [head, *(shm.describe_file(path, size) for path, size in value.buffers)]

    @staticmethod
    def remove(value: SpilledValue) -> None:
        _unlink(value.head)
        for path, _ in value.buffers:
            _unlink(path)

    def close(self) -> None:
        if self.path:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = ""


def _view(frame: Any) -> memoryview:
    view = memoryview(frame.buffer if hasattr(frame, "buffer") else frame)
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def _write_view(path: str, data: memoryview) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        written = 0
        while written < data.nbytes:
            written += os.write(fd, data[written:written + _WRITE_CHUNK])
    finally:
        os.close(fd)
    return data.nbytes


def _copy_file(source: str, path: str, size: int) -> int:
    """Copy a shared-memory file in the kernel (sendfile), not through this process."""
    src = os.open(source, os.O_RDONLY)
    try:
        dst = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            copied = 0
            while copied < size:
                n = os.sendfile(dst, src, copied, size - copied)
                if n == 0:
                    raise OSError(f"{source} is shorter than its descriptor says")
                copied += n
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return size


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass

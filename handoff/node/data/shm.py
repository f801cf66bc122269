"""Large buffers in shared memory, for nodes and workers on one host.

A worker writes each out-of-band buffer of at least ``SHM_MIN`` bytes to a file in
``/dev/shm`` once, and sends a small descriptor frame in its place. Every process on the
host (its node, the driver, a peer node, the consumer's worker) maps the file instead of
receiving the bytes; a peer on another host gets the bytes, read from the mapping. The node
that stores the value owns the file and unlinks it when the value is dropped.

A descriptor is told apart from a buffer by its size: buffers smaller than ``OOB_MIN`` never
travel out of band, and descriptors are always smaller than that.
"""

from __future__ import annotations

import itertools
import mmap
import os
import struct
import uuid
from typing import Any

__all__ = [
    "SHM_DIR", "SHM_MIN", "host_id", "write_buffer", "is_descriptor", "descriptor_size",
    "descriptor_path", "describe_file", "open_descriptor", "unlink_descriptor", "owner_prefix",
    "remove_owned",
]

SHM_DIR = "/dev/shm"
SHM_MIN = 1024 * 1024
_MAGIC = b"handoff-shm\x00"
_HEAD = struct.Struct("!12sQ")  # magic, size; the path follows
_counter = itertools.count()
_writer = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"  # tells this process's files apart


def available() -> bool:
    return os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK)


def host_id() -> str:
    """Same string for processes that can share /dev/shm files, different across hosts."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    return f"{os.uname().nodename}/{boot}" if available() else ""


def owner_prefix() -> str:
    """A file-name prefix for one node instance: ``handoff-<pid>-<token>`` (the pid lets a
    later node sweep the files of a dead one)."""
    return f"handoff-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def write_buffer(raw: memoryview, owner: str) -> bytes | None:
    """Copy ``raw`` into a new shared-memory file named for its ``owner`` (a node's prefix);
    its descriptor, or None if there is no room."""
    path = os.path.join(SHM_DIR, f"{owner}-{_writer}-{next(_counter)}")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return None
    try:
        data = raw.cast("B") if raw.format != "B" or raw.ndim != 1 else raw
        size = data.nbytes
        written = 0
        while written < size:  # write(2) fills tmpfs about twice as fast as a fresh mapping
            written += os.write(fd, data[written:written + (1 << 26)])
    except (OSError, ValueError, BufferError, TypeError):
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
        return None
    os.close(fd)
    return describe_file(path, size)


def describe_file(path: str, size: int) -> bytes:
    """A descriptor for the first ``size`` bytes of any file on this host (a spilled buffer
    is served this way from its spill file)."""
    return _HEAD.pack(_MAGIC, size) + path.encode()


def _bytes(frame: Any) -> bytes:
    if hasattr(frame, "bytes"):
        return frame.bytes
    return bytes(frame)


def is_descriptor(frame: Any) -> bool:
    n = frame.nbytes if isinstance(frame, memoryview) else len(frame)
    if n < _HEAD.size or n > 4096:
        return False
    return _bytes(frame)[:12] == _MAGIC


def _parse(frame: Any) -> tuple[int, str]:
    data = _bytes(frame)
    _, size = _HEAD.unpack_from(data)
    return size, data[_HEAD.size:].decode()


def descriptor_size(frame: Any) -> int:
    return _parse(frame)[0]


def descriptor_path(frame: Any) -> str:
    return _parse(frame)[1]


def open_descriptor(frame: Any) -> memoryview:
    """A private, writable (copy-on-write) mapping of the buffer a descriptor names."""
    size, path = _parse(frame)
    if size == 0:
        return memoryview(bytearray())
    fd = os.open(path, os.O_RDONLY)
    try:
        m = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    return memoryview(m)


def unlink_descriptor(frame: Any) -> None:
    try:
        os.unlink(_parse(frame)[1])
    except OSError:
        pass


def remove_owned(owner: str) -> int:
    """Remove every file a node instance owns (at its shutdown)."""
    removed = 0
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return 0
    prefix = f"{owner}-"
    for name in names:
        if name.startswith(prefix):
            try:
                os.unlink(os.path.join(SHM_DIR, name))
                removed += 1
            except OSError:
                pass
    return removed

"""The channel between a node and one of its worker processes: a Unix socket pair carrying
length-prefixed frames (the same frames the codec makes for ZeroMQ).

A ZeroMQ ipc round trip costs ~90 µs here, most of it hand-offs between ZeroMQ's I/O threads;
a socket pair costs ~5 µs. Worker traffic is one peer, local and trusted, so it needs none
of ZeroMQ's routing. Layout of a message: u32 frame count, then per frame u64 length and
the bytes. The node side never blocks: it reads what is there and queues what it cannot
write yet; the worker side blocks, as a worker has nothing else to do.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from collections import deque
from typing import Any

__all__ = ["NodeEnd", "WorkerEnd", "MAX_FRAMES", "socket_pair"]

_COUNT = struct.Struct("!I")
_LEN = struct.Struct("!Q")
MAX_FRAMES = 1 << 20
ORPHAN_CHECK = 1.0  # seconds a worker waits before it checks that its node still lives
_READ = 1 << 18  # bytes asked for per recv
_BIG = 1 << 20  # frames this large are filled in place instead of cut out of the buffer
_COPY = 1 << 16  # frames smaller than this are copied into the message's buffer when sent


def _pack(frames: list) -> list:
    """The pieces to write for one message: the small frames copied with their headers into
    one buffer (one system call for a small message), each large frame a view of its own."""
    head = _LEN.pack
    small = bytearray(_COUNT.pack(len(frames)))
    out: list = []
    for f in frames:
        if type(f) is bytes:  # most frames: no view needed to copy it
            n = len(f)
            if n < _COPY:
                small += head(n)
                small += f
                continue
            view = memoryview(f)
        else:
            view = memoryview(f.buffer if hasattr(f, "buffer") else f).cast("B")
            n = view.nbytes
            if n < _COPY:
                small += head(n)
                small += view
                continue
        small += head(n)
        out.append(small)
        out.append(view)
        small = bytearray()
    if small:
        out.append(small)
    return out


class _Parser:
    """Cuts complete messages out of a byte stream, in time linear in its length: finished
    frames are kept, never parsed again, and a large frame is filled in place."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.count: int | None = None  # frames of the message being read
        self.frames: list = []
        self.big: bytearray | None = None  # a large frame being filled
        self.filled = 0

    def feed(self, data: bytes) -> list[list]:
        out: list = []
        view = memoryview(data)
        if self.big is not None:
            take = min(len(self.big) - self.filled, len(view))
            self.big[self.filled:self.filled + take] = view[:take]
            self.filled += take
            view = view[take:]
            if self.filled < len(self.big):
                return out
            frame, self.big = self.big, None
            self._add(frame, out)
        self.buf += view
        self._parse(out)
        return out

    def _add(self, frame: Any, out: list) -> None:
        self.frames.append(frame)
        if len(self.frames) == self.count:
            out.append(self.frames)
            self.frames, self.count = [], None

    def _parse(self, out: list) -> None:
        buf = self.buf
        pos = 0
        with memoryview(buf) as mv:
            while True:
                if self.count is None:
                    if len(buf) - pos < _COUNT.size:
                        break
                    (count,) = _COUNT.unpack_from(buf, pos)
                    if count > MAX_FRAMES:
                        raise ValueError(f"a message of {count} frames")
                    pos += _COUNT.size
                    if count == 0:
                        out.append([])
                        continue
                    self.count, self.frames = count, []
                if len(buf) - pos < _LEN.size:
                    break
                (n,) = _LEN.unpack_from(buf, pos)
                if n >= _BIG:
                    pos += _LEN.size
                    frame = bytearray(n)
                    avail = min(n, len(buf) - pos)
                    frame[:avail] = mv[pos:pos + avail]
                    pos += avail
                    if avail < n:
                        self.big, self.filled = frame, avail
                        break
                    self._add(frame, out)
                    continue
                if len(buf) - pos - _LEN.size < n:
                    break
                pos += _LEN.size
                self._add(mv[pos:pos + n].tobytes(), out)
                pos += n
        if pos:
            del buf[:pos]


class WorkerEnd:
    """The worker's end: blocking reads and writes."""

    def __init__(self, fd: int):
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(True)  # MSG_DONTWAIT below polls; select() bounds the sleep
        self._parser = _Parser()
        self._ready: deque = deque()
        self._parent = os.getppid()

    def recv(self, spin: float = 0.0) -> list | None:
        """The next message; first polls for up to ``spin`` seconds without sleeping, since
        a chain's next task often arrives within microseconds and waking costs more. None
        when the node is gone (its end closed, or this process was orphaned)."""
        deadline = time.perf_counter() + spin if spin else 0.0
        while not self._ready:
            if deadline:
                try:
                    data = self.sock.recv(_READ, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    if time.perf_counter() >= deadline:
                        deadline = 0.0
                    continue
            else:
                ready, _, _ = select.select([self.sock], [], [], ORPHAN_CHECK)
                if not ready:
                    if os.getppid() != self._parent:
                        return None  # orphaned: a fork of the node may still hold its end
                    continue
                data = self.sock.recv(_READ)
            if not data:
                return None
            self._ready.extend(self._parser.feed(data))
        return self._ready.popleft()

    def send(self, frames: list) -> None:
        for piece in _pack(frames):
            self.sock.sendall(piece)

    def close(self) -> None:
        self.sock.close()


class NodeEnd:
    """The node's end: non-blocking; ``read()`` yields complete messages (lists of frames)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        sock.setblocking(False)
        self.fd = sock.fileno()
        self.closed = False
        self._out: deque = deque()
        self._parser = _Parser()

    # ---- writing ----------------------------------------------------------------------
    @property
    def wants_write(self) -> bool:
        return bool(self._out)

    def send(self, frames: list) -> None:
        self._out.extend(map(memoryview, _pack(frames)))  # views: a partial write slices them
        self.flush()

    def flush(self) -> None:
        out = self._out
        while out:
            piece = out[0]
            try:
                n = self.sock.send(piece)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.closed = True
                out.clear()
                return
            if n < len(piece):
                out[0] = piece[n:]
                return
            out.popleft()

    # ---- reading ----------------------------------------------------------------------
    def read(self) -> list[list]:
        """Every complete message that has arrived; sets ``closed`` at end of file."""
        out: list = []
        while True:
            try:
                data = self.sock.recv(_READ)
            except (BlockingIOError, InterruptedError):
                return out
            except OSError:
                self.closed = True
                return out
            if not data:
                self.closed = True
                return out
            try:
                out.extend(self._parser.feed(data))
            except ValueError:
                self.closed = True
                return out
            if len(data) < _READ:
                return out  # drained: skip the system call that would only say so

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """(node side, worker side); the worker side is inheritable by the child process."""
    node, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    worker.set_inheritable(True)
    for s in (node, worker):
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        except OSError:
            pass
    return node, worker


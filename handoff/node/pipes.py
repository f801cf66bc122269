"""The channel between a node and one of its worker processes: a Unix socket pair carrying
length-prefixed frames (the same frames the codec makes for ZeroMQ).

A ZeroMQ ipc round trip costs ~90 µs here, most of it hand-offs between ZeroMQ's I/O threads;
a socket pair costs ~5 µs. Worker traffic is one peer, local and trusted, so it needs none
of ZeroMQ's routing. Layout of a message: u32 frame count, then per frame u64 length and
the bytes. The node side never blocks: it reads what is there and queues what it cannot
write yet; the worker side blocks, as a worker has nothing else to do.
"""

from __future__ import annotations

import socket
import struct
from collections import deque
from typing import Iterator

__all__ = ["NodeEnd", "WorkerEnd", "MAX_FRAMES", "socket_pair"]

_COUNT = struct.Struct("!I")
_LEN = struct.Struct("!Q")
MAX_FRAMES = 1 << 20
_READ = 1 << 20  # bytes asked for per recv while a small frame is read


def _pack(frames: list) -> list:
    out: list = [_COUNT.pack(len(frames))]
    for f in frames:
        view = memoryview(f.buffer if hasattr(f, "buffer") else f).cast("B")
        out.append(_LEN.pack(view.nbytes))
        if view.nbytes:
            out.append(view)
    return out


class WorkerEnd:
    """The worker's end: blocking reads and writes."""

    def __init__(self, fd: int):
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(True)

    def _read_exactly(self, n: int) -> bytearray | None:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:])
            if k == 0:
                return None  # the node is gone
            got += k
        return buf

    def recv(self) -> list | None:
        head = self._read_exactly(_COUNT.size)
        if head is None:
            return None
        (count,) = _COUNT.unpack(head)
        frames = []
        for _ in range(count):
            raw = self._read_exactly(_LEN.size)
            if raw is None:
                return None
            (length,) = _LEN.unpack(raw)
            frame = self._read_exactly(length) if length else bytearray()
            if frame is None:
                return None
            frames.append(frame)
        return frames

    def send(self, frames: list) -> None:
        pieces = _pack(frames)
        small = bytearray()
        for piece in pieces:  # coalesce the small pieces: one system call for a small message
            if len(piece) < 65536:
                small += piece
                continue
            if small:
                self.sock.sendall(small)
                small = bytearray()
            self.sock.sendall(piece)
        if small:
            self.sock.sendall(small)

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
        # reading state: 0 = frame count, 1 = a frame's length, 2 = a frame's bytes
        self._stage = 0
        self._buf = bytearray(_COUNT.size)
        self._view = memoryview(self._buf)
        self._got = 0
        self._left = 0
        self._frames: list = []

    # ---- writing ----------------------------------------------------------------------
    @property
    def wants_write(self) -> bool:
        return bool(self._out)

    def send(self, frames: list) -> None:
        small = bytearray()
        for piece in _pack(frames):
            if len(piece) < 65536:
                small += piece
            else:
                if small:
                    self._out.append(memoryview(small))
                    small = bytearray()
                self._out.append(piece)
        if small:
            self._out.append(memoryview(small))
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
    def read(self) -> Iterator[list]:
        while True:
            try:
                n = self.sock.recv_into(self._view[self._got:])
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.closed = True
                return
            if n == 0:
                self.closed = True
                return
            self._got += n
            if self._got < len(self._view):
                continue
            message = self._advance()
            if message is not None:
                yield message

    def _expect(self, size: int, stage: int) -> None:
        self._stage = stage
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self._got = 0

    def _advance(self) -> list | None:
        """The current piece is complete: move to the next; a finished message is returned."""
        if self._stage == 0:
            (self._left,) = _COUNT.unpack(self._buf)
            if self._left > MAX_FRAMES:
                self.closed = True
                return None
            self._frames = []
        elif self._stage == 1:
            (length,) = _LEN.unpack(self._buf)
            if length:
                self._expect(length, 2)
                return None
            self._frames.append(bytearray())
            self._left -= 1
        else:
            self._frames.append(self._buf)
            self._left -= 1
        if self._left > 0:
            self._expect(_LEN.size, 1)
            return None
        message, self._frames = self._frames, []
        self._expect(_COUNT.size, 0)
        return message

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


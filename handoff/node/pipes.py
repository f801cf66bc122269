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
import time
from collections import deque
from typing import Iterator

__all__ = ["NodeEnd", "WorkerEnd", "MAX_FRAMES", "socket_pair"]

_COUNT = struct.Struct("!I")
_LEN = struct.Struct("!Q")
MAX_FRAMES = 1 << 20
_READ = 1 << 18  # bytes asked for per recv


def _pack(frames: list) -> list:
    out: list = [_COUNT.pack(len(frames))]
    for f in frames:
        view = memoryview(f.buffer if hasattr(f, "buffer") else f).cast("B")
        out.append(_LEN.pack(view.nbytes))
        if view.nbytes:
            out.append(view)
    return out


class _Parser:
    """Cuts complete messages out of the bytes read so far (frames are copied out)."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def messages(self) -> list[list]:
        buf = self.buf
        out: list = []
        pos = 0
        while True:
            end = len(buf)
            if end - pos < _COUNT.size:
                break
            (count,) = _COUNT.unpack_from(buf, pos)
            if count > MAX_FRAMES:
                raise ValueError(f"a message of {count} frames")
            q = pos + _COUNT.size
            frames = []
            for _ in range(count):
                if end - q < _LEN.size:
                    break
                (n,) = _LEN.unpack_from(buf, q)
                q += _LEN.size
                if end - q < n:
                    break
                frames.append(bytes(buf[q:q + n]))
                q += n
            if len(frames) < count:
                break
            out.append(frames)
            pos = q
        if pos:
            del buf[:pos]
        return out


class WorkerEnd:
    """The worker's end: blocking reads and writes."""

    def __init__(self, fd: int):
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(True)
        self._parser = _Parser()
        self._ready: deque = deque()

    def recv(self, spin: float = 0.0) -> list | None:
        """The next message; first polls for up to ``spin`` seconds without sleeping, since
        a chain's next task often arrives within microseconds and waking costs more."""
        deadline = time.perf_counter() + spin if spin else 0.0
        while not self._ready:
            if deadline:
                try:
                    data = self.sock.recv(_READ, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    if time.perf_counter() < deadline:
                        continue
                    deadline = 0.0
                    continue
            else:
                data = self.sock.recv(_READ)
            if not data:
                return None  # the node is gone
            self._parser.buf += data
            self._ready.extend(self._parser.messages())
        return self._ready.popleft()

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
        self._parser = _Parser()

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
        parser = self._parser
        while True:
            try:
                data = self.sock.recv(_READ)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.closed = True
                return
            if not data:
                self.closed = True
                return
            parser.buf += data
            try:
                messages = parser.messages()
            except ValueError:
                self.closed = True
                return
            yield from messages
            if len(data) < _READ:
                return  # drained: skip the system call that would only say so

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


"""DelayRelay: a TCP relay that adds a fixed delay to everything it carries, both ways.

The kernels this runs on may have no ``netem``; a relay in user space makes a slow link:
a node listens on its own address and advertises the relay's (``--advertise``), so every
connection to it goes through the relay. Each chunk read is stamped with the time it may
leave (now + ``delay``) and queued; a writer per direction sends it when that time comes.
Reading goes on meanwhile, so the delay is latency only: it does not throttle throughput.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

__all__ = ["DelayRelay", "RelayStats"]

CHUNK = 1 << 16
START_TIMEOUT = 10.0


@dataclass
class RelayStats:
    """What a relay carried: connections, bytes each way, and the delays it actually added."""

    connections: int = 0
    bytes_in: int = 0  # towards the target
    bytes_out: int = 0  # back from the target
    delays: list[float] = field(default_factory=list)  # seconds, per chunk (the last 10000)


class DelayRelay:
    """Listen on ``host:port`` (``port`` 0: a free one) and relay every connection to
    ``target`` (``(host, port)``), ``delay`` seconds late each way; ``close()`` ends it."""

    def __init__(self, host: str, target: tuple[str, int], delay: float, port: int = 0) -> None:
        if delay < 0:
            raise ValueError(f"delay must be >= 0 seconds, got {delay!r}")
        self.target = target
        self.delay = float(delay)
        self.stats = RelayStats()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(host, port), daemon=True,
                                        name=f"delay-relay-{target[0]}:{target[1]}")
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT) or self._error is not None:
            self.close()
            raise RuntimeError(f"the relay could not listen on {host}:{port}: {self._error}")
        assert self._server is not None  # set before _ready
        bound = self._server.sockets[0].getsockname()
        self.host: str = bound[0]
        self.port: int = bound[1]

    @property
    def address(self) -> str:
        """``tcp://HOST:PORT``: what the relayed node advertises."""
        return f"tcp://{self.host}:{self.port}"

    def _main(self, host: str, port: int) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._relay, host, port))
        except OSError as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer, inbound=True),
                                 self._pipe(up_reader, writer, inbound=False))
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    inbound: bool) -> None:
        """One direction: chunks queued with the time they may leave, sent when it comes."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop = self._loop

        async def read() -> None:
            try:
                while data := await reader.read(CHUNK):
                    queue.put_nowait((loop.time() + self.delay, data))
            except (ConnectionError, OSError):
                pass
            queue.put_nowait((loop.time() + self.delay, b""))  # the end, also delayed

        async def write() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    break
                if len(self.stats.delays) < 10000:
                    self.stats.delays.append(loop.time() - due + self.delay)
                if inbound:
                    self.stats.bytes_in += len(data)
                else:
                    self.stats.bytes_out += len(data)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

        reading = asyncio.ensure_future(read())
        try:
            await write()
        except (ConnectionError, OSError):
            pass
        finally:
            reading.cancel()

    def close(self) -> None:
        """Stop listening and drop every relayed connection; safe twice."""
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(START_TIMEOUT)

    def __enter__(self) -> "DelayRelay":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

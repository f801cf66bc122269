"""The node-worker channel: length-prefixed frames over a Unix socket pair."""

import os
import threading

from handoff.node.execution.pipes import NodeEnd, WorkerEnd, socket_pair
from handoff.testing import thread_inside, wait_until


def _pair():
    node_sock, worker_sock = socket_pair()
    return NodeEnd(node_sock), WorkerEnd(os.dup(worker_sock.fileno())), worker_sock


def _read_all(end: NodeEnd, count: int, timeout: float = 5.0) -> list:
    import select

    got: list = []
    while len(got) < count:
        ready, _, _ = select.select([end.fd], [], [], timeout)
        assert ready, "nothing arrived"
        got.extend(end.read())
    return got


def test_messages_round_trip_with_empty_small_and_large_frames():
    node, worker, raw = _pair()
    try:
        big = os.urandom(3_000_000)  # larger than the socket buffers: several partial writes
        messages = [[b"head"], [b"", b"x"], [b"h", big], []]
        sender = threading.Thread(target=lambda: [worker.send(m) for m in messages])
        sender.start()
        got = _read_all(node, len(messages))
        sender.join(5)
        assert [[bytes(f) for f in m] for m in got] == [[bytes(f) for f in m] for m in messages]
    finally:
        node.close()
        worker.close()
        raw.close()


def test_node_side_never_blocks_and_flushes_later():
    node, worker, raw = _pair()
    try:
        big = b"y" * 20_000_000  # the socket cannot take it at once: the rest waits in the queue
        node.send([b"h", big])
        assert node.wants_write
        received = {}
        reader = threading.Thread(target=lambda: received.setdefault("m", worker.recv()))
        reader.start()
        while node.wants_write:
            node.flush()
        reader.join(10)
        assert received["m"][0] == b"h" and len(received["m"][1]) == len(big)
    finally:
        node.close()
        worker.close()
        raw.close()


def test_end_of_file_is_seen_on_both_sides():
    node, worker, raw = _pair()
    worker.close()
    raw.close()
    assert list(node.read()) == [] and node.closed
    node2, worker2, raw2 = _pair()
    node2.close()
    assert worker2.recv() is None
    worker2.close()
    raw2.close()


def test_several_large_frames_in_one_message_parse_in_linear_time():
    from handoff.node.execution.pipes import _Parser, _pack

    frames = [b"head", os.urandom(1 << 20) * 40, b"mid", b"z" * (40 << 20)]  # two 40 MB frames
    stream = b"".join(bytes(p) for p in _pack(frames))
    parser = _Parser()
    read = 256 * 1024  # arriving in 256 KB reads
    out, held = [], []
    for i in range(0, len(stream), read):
        out.extend(parser.feed(stream[i:i + read]))
        held.append(len(parser.buf))
    assert len(out) == 1 and [bytes(f) for f in out[0]] == frames
    # linear: a large frame is filled in place as it arrives, so unparsed bytes never pile
    # up past one read (a parser that re-scans its whole buffer holds all 80 MB here)
    assert max(held) <= read



def test_worker_recv_returns_none_when_the_node_end_closes_while_it_waits():
    node, worker, raw = _pair()
    me = threading.get_ident()
    seen = []

    def close_once_waiting() -> None:
        seen.append(wait_until(lambda: thread_inside(me, "recv"), 10, interval=0.001))
        node.close()

    closer = threading.Thread(target=close_once_waiting)
    closer.start()
    assert worker.recv(spin=0.001) is None
    closer.join(10)
    assert seen == [True]  # closed while recv waited, not before it started
    worker.close()
    raw.close()

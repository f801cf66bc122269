"""The wire codec: round trips, zero-copy blobs, and garbage that must become ProtocolError."""

import random

import numpy as np
import pytest

from handoff.errors import ProtocolError
from handoff.node.data.values import dumps_payload, dumps_value, loads_payload, loads_value
from handoff.protocol import REGISTRY, VERSION, decode, encode
from handoff.protocol.messages import Dispatch, Done, Fetch, Gossip, Hello, Value, WorkerRun


def test_every_message_type_is_registered_once_with_an_op():
    assert len(REGISTRY) == len({cls.op for cls in REGISTRY.values()})
    assert all(op for op in REGISTRY)


def test_round_trip_keeps_fields_and_tuple_keys():
    msg = Fetch("a", [[7, ("dag", 1), ("fn", 2), "b", -1]], [])
    out = decode(encode(msg))
    assert out == msg
    assert isinstance(out.rows[0][2], tuple)


def test_blobs_travel_as_separate_frames():
    msg = Dispatch("a", "d", [["r", 1, 0, "f", None, None, ["c", 0, "variadic", []], [], 0, 2]],
                   [[b"payload"], [b"x", b"y"]])
    frames = encode(msg)
    assert frames[1:] == [b"payload", b"x", b"y"]
    assert decode(frames).blobs == [[b"payload"], [b"x", b"y"]]


def test_large_numpy_buffers_go_out_of_band_without_copies():
    arr = np.arange(1_000_000, dtype=np.float64)
    frames = dumps_value(arr)
    assert len(frames) == 2
    assert len(frames[0]) < 1000  # the pickle stream holds no array data
    back = loads_value(frames)
    np.testing.assert_array_equal(back, arr)
    assert np.shares_memory(back, np.frombuffer(frames[1], dtype=np.float64))


def test_small_values_and_lambdas():
    assert loads_value(dumps_value({"a": [1, 2]})) == {"a": [1, 2]}
    fn = loads_value(dumps_value(lambda x: x + 1))
    assert fn(1) == 2
    code, extra = loads_payload(dumps_payload(lambda x, k: x * k, [3]))
    assert code(2, *extra) == 6


@pytest.mark.parametrize(
    "frames, reason",
    [
        ([], "empty"),
        ([b"\xc1"], "undecodable"),
        ([b"\x93\x01\x02\x03"], "is not .version"),
        ([encode(Gossip("a", []))[0].replace(b"gossip", b"gossiq")], "unknown message type"),
        ([b"\x94\x63\xa6gossip\x92\xa1a\x90\x90"], "wire version"),
        ([b"\x94\x01\xa6gossip\x91\xa1a\x90"], "expected 2 fields"),
        ([b"\x94\x01\xa6gossip\x92\x01\x90\x90"], "field 'sender'"),
        (encode(Value("a", [[1, None, 0]], [[b"x", b"y"]]))[:2], "expected 2 data frames"),
        ([encode(Gossip("a", []))[0], b"extra"], "expected 0 data frames"),
        ([b"\x94\x01\xa6gossip\x92\xa1a\x90\x91\x01", b"x"], "carries no data frames"),
    ],
)
def test_malformed_messages_raise_protocol_error(frames, reason):
    with pytest.raises(ProtocolError, match=reason):
        decode(frames)


def test_unknown_extension_type_is_rejected():
    import msgpack

    header = msgpack.packb([VERSION, "gossip", ["a", msgpack.ExtType(9, b"x")], []])
    with pytest.raises(ProtocolError, match="extension"):
        decode([header])


def test_random_garbage_never_escapes_as_another_exception():
    rng = random.Random(1)
    valid = encode(Done("n", [["r", 1, 0, True, 0.0, 1.0, 3, None, -1, None]], []))[0]
    for i in range(3000):
        if i % 2:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        else:  # mutate a valid header: flips, truncations
            data = bytearray(valid)
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data[: rng.randrange(1, len(data) + 1)])
        try:
            decode([data] + [b"x"] * rng.randrange(3))
        except ProtocolError:
            pass


def test_worker_run_rows():
    msg = WorkerRun([[1, ["c", 0, "variadic", []], 0, 1]], [[b"p"]])
    assert decode(encode(msg)) == msg


def test_hello_carries_version():
    msg = Hello("a", "tcp://127.0.0.1:1", 5, {"cpu": 2.0})
    assert decode(encode(msg)).version == VERSION

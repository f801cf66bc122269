"""The wire codec: round trips, zero-copy blobs, and garbage that must become ProtocolError."""

import enum
import random
import re

import numpy as np
import pytest

from handoff.errors import ProtocolError
from handoff.node.data.values import dumps_payload, dumps_value, loads_payload, loads_value
from handoff.protocol import REGISTRY, VERSION, decode, encode
from handoff.protocol.messages import Dispatch, Done, Fetch, Gossip, Hello, Locate, Value, WorkerRun
from handoff.protocol.rows import (
    Call, ErrorRow, FetchRow, Hook, JobRow, Leaf, LostInput, ResultRow, TaskRow, ValueRef, ValueRow,
)


class Colour(enum.Enum):
    RED = 1


def test_every_message_type_is_registered_once_with_an_op():
    assert len(REGISTRY) == len({cls.op for cls in REGISTRY.values()})
    assert all(op for op in REGISTRY)


def test_round_trip_keeps_fields_and_tuple_keys():
    msg = Fetch("a", [FetchRow(7, ("dag", 1), ("fn", 2), "b", -1)], [])
    out = decode(encode(msg))
    assert out == msg
    assert isinstance(out.rows[0].key, tuple)


@pytest.mark.parametrize("key", [("fn", (1, 2)), Colour.RED, frozenset({1}), "plain", 3, None])
def test_user_values_in_nested_rows_arrive_as_the_same_objects(key):
    tree = Call(0, "as_list", [Leaf(1), Hook(2, "a", "b", Leaf(3))])
    task = TaskRow("r", 1, 0, key, {"cpu": 1.0}, 2.5, tree, [ValueRef("n", key, key, -1, 1)], 0, 4)
    lost = ResultRow("r", 1, 0, False, 0.0, 1.0, 0, ErrorRow("E", "m", "tb"), -1, LostInput("n", key))
    for msg in (Dispatch("a", key, [task], [[b"p"], [], [b"h"], []]), Done("a", [lost], []),
                Fetch("a", [FetchRow(1, key, key, "b", -1)], []), Locate("a", 1, key, [key])):
        out = decode(encode(msg))
        assert out == msg
        assert [type(v) for v in _user_values(out)] == [type(v) for v in _user_values(msg)]


def _user_values(msg):
    if isinstance(msg, Dispatch):
        row = msg.tasks[0]
        return [msg.dag_id, row.function_id, row.refs[0].dag_id, row.refs[0].key]
    if isinstance(msg, Done):
        return [msg.results[0].lost.function_id]
    if isinstance(msg, Fetch):
        return [msg.rows[0].dag_id, msg.rows[0].key]
    return [msg.dag_id, *msg.keys]


def test_a_pickled_value_nested_in_a_row_is_refused_before_hello():
    frames = encode(Fetch("a", [FetchRow(1, ("dag",), "k", "b", -1)], []))
    with pytest.raises(ProtocolError, match="pickled value is not accepted"):
        decode(frames, pickles=False)
    assert decode(frames).rows[0].dag_id == ("dag",)


@pytest.mark.parametrize(
    "msg, field",
    [
        (Done("n", [["r", "one", 0, True, 0.0, 1.0, 3, None, -1, None]], []), "results[0].index"),
        (Done("n", [["r", 1, 0, True, 0.0, 1.0, 3, ["E", 1, ""], -1, None]], []),
         "results[0].error.message"),
        (Dispatch("a", "d", [["r", 1, 0, "f", None, None, ["c", 0, "variadic", []],
                              [["n", "d", "k", "x", 1]], 0, 1]], [[b"p"]]), "tasks[0].refs[0].hook"),
        (Dispatch("a", "d", [["r", 1, 0, "f", None, None, ["v", 0], [], 0, 1]], [[b"p"]]),
         "tasks[0].tree"),
        (Value("a", [[1, None]], []), "rows[0]"),
        (WorkerRun([[1, ["c", 0, "variadic", [["q", 1]]], 0, 1]], [[b"p"]]), "jobs[0].tree[3][0][0]"),
    ],
)
def test_a_malformed_row_is_a_protocol_error_naming_the_field(msg, field):
    with pytest.raises(ProtocolError, match=re.escape(f"field {field!r}")):
        decode(encode(msg))


def test_blobs_travel_as_separate_frames():
    msg = Dispatch("a", "d", [TaskRow("r", 1, 0, "f", None, None, Call(0, "variadic", []), [], 0, 2)],
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
        (encode(Value("a", [ValueRow(1, None, 0)], [[b"x", b"y"]]))[:2], "expected 2 data frames"),
        ([encode(Gossip("a", []))[0], b"extra"], "expected 0 data frames"),
        ([b"\x94\x01\xa6gossip\x92\xa1a\x90\x91\x01", b"x"], "carries no data frames"),
    ],
)
def test_malformed_messages_raise_protocol_error(frames, reason):
    with pytest.raises(ProtocolError, match=reason):
        decode(frames)


def test_unknown_extension_type_is_rejected():
    import msgpack

    header = msgpack.packb([VERSION, "clear", ["a", msgpack.ExtType(9, b"x")], []])
    with pytest.raises(ProtocolError, match="unknown msgpack extension 9"):
        decode([header])
    typed = msgpack.packb([VERSION, "gossip", ["a", msgpack.ExtType(1, b"x")], []])
    with pytest.raises(ProtocolError, match="field 'rows'"):  # no value is unpickled in a typed slot
        decode([typed])


def test_random_garbage_never_escapes_as_another_exception():
    rng = random.Random(1)
    valid = encode(Done("n", [ResultRow("r", 1, 0, True, 0.0, 1.0, 3, None, -1, None)], []))[0]
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
    msg = WorkerRun([JobRow(1, Call(0, "variadic", [Hook(1, None, "b", Leaf(2))]), 0, 3)],
                    [[b"p"], [b"h"], []])
    assert decode(encode(msg)) == msg


def test_hello_carries_version():
    msg = Hello("a", "tcp://127.0.0.1:1", 5, {"cpu": 2.0})
    assert decode(encode(msg)).version == VERSION

"""The result cache on the wire: its messages and the row fields it adds."""

from __future__ import annotations

import pytest

from handoff.errors import ProtocolError
from handoff.protocol import decode, encode
from handoff.protocol.messages import CacheClear, CacheHeld, CacheQuery, Dispatch, Done
from handoff.protocol.rows import Call, ResultRow, TaskRow

KEY = "ab" * 32


def test_cache_messages_round_trip():
    for msg in (CacheQuery("a", 3, [KEY, "cd" * 32]), CacheClear("a", 4), CacheHeld("b", 3, [KEY], 2)):
        assert decode(encode(msg)) == msg


def test_tasks_and_results_carry_the_cache_fields():
    task = TaskRow("r", 1, 0, "f", None, None, Call(0, "variadic", []), [], 0, 1, KEY, True)
    done = ResultRow("r", 1, 0, True, 0.0, 1.0, 8, None, -1, None, cached=True)
    assert decode(encode(Dispatch("a", "dag", [task], [[b"p"]]))).tasks[0] == task
    assert decode(encode(Done("a", [done], []))).results[0].cached is True


def test_rows_without_the_cache_fields_mean_no_cache():
    task = TaskRow("r", 1, 0, "f", None, None, Call(0, "variadic", []), [])
    assert (task.cache_key, task.load) == ("", False)
    assert ResultRow("r", 1, 0, True, 0.0, 1.0, 8, None, -1, None).cached is False


def test_a_query_with_keys_of_the_wrong_type_is_refused():
    frames = encode(CacheQuery("a", 1, [KEY]))
    bad = encode(CacheQuery("a", 1, [123]))  # type: ignore[list-item]
    assert decode(frames).keys == [KEY]
    with pytest.raises(ProtocolError):
        decode(bad)

"""The node's disk cache: whole files or none, a size bound, least recently used out first."""

from __future__ import annotations

import os

import numpy as np
import pytest

from handoff.cache.disk import DiskCache
from handoff.node.data.values import dumps_value, loads_value


def k(n: int) -> str:
    return f"{n:064x}"


def test_a_value_comes_back_with_its_buffers(tmp_path):
    cache = DiskCache(str(tmp_path / "c"), 1 << 30)
    value = {"a": np.arange(100_000, dtype=np.float64), "b": "text"}  # an out-of-band buffer
    frames = dumps_value(value)
    assert len(frames) == 2
    assert cache.get(k(1)) is None
    assert cache.put(k(1), frames)
    back = loads_value(cache.get(k(1)))
    assert back["b"] == "text" and np.array_equal(back["a"], value["a"])
    assert cache.held([k(1), k(2)]) == [k(1)]
    assert [n for n in os.listdir(tmp_path / "c")] == [k(1) + ".v"]  # no temporary file left


def test_the_directory_is_made_only_when_something_is_written(tmp_path):
    path = tmp_path / "never"
    cache = DiskCache(str(path), 1000)
    assert cache.get(k(1)) is None and cache.held([k(1)]) == []
    assert not path.exists()


def test_eviction_keeps_the_bound_and_drops_the_least_recently_used(tmp_path):
    value = dumps_value(b"x" * 1000)
    size = 8 + 8 * len(value) + sum(len(f) for f in value)
    cache = DiskCache(str(tmp_path), 4 * size)
    for n in range(4):
        assert cache.put(k(n), value)
        os.utime(tmp_path / f"{k(n)}.v", (1000 + n, 1000 + n))  # distinct ages, oldest first
    cache._index = None  # read the ages from the disk, as a restarted node would
    assert cache.get(k(0)) is not None  # now the most recently used
    assert cache.put(k(4), value)  # past the bound: the oldest unused go
    held = cache.held([k(n) for n in range(5)])
    assert k(0) in held and k(4) in held
    assert k(1) not in held
    assert cache.total <= 4 * size
    assert sum(os.path.getsize(tmp_path / f"{h}.v") for h in held) == cache.total
    assert cache.evictions >= 1


def test_a_value_larger_than_the_bound_is_not_cached(tmp_path):
    cache = DiskCache(str(tmp_path), 100)
    assert not cache.put(k(1), dumps_value(b"y" * 1000))
    assert cache.held([k(1)]) == []


def test_a_damaged_file_is_a_miss_and_is_removed(tmp_path):
    cache = DiskCache(str(tmp_path), 1 << 20)
    cache.put(k(1), dumps_value([1, 2, 3]))
    path = tmp_path / f"{k(1)}.v"
    path.write_bytes(path.read_bytes()[:-3])
    assert cache.get(k(1)) is None
    assert not path.exists()


def test_files_written_by_another_process_count(tmp_path):
    mine, theirs = DiskCache(str(tmp_path), 1 << 20), DiskCache(str(tmp_path), 1 << 20)
    theirs.put(k(7), dumps_value("shared"))
    assert mine.held([k(7)]) == [k(7)]
    assert loads_value(mine.get(k(7))) == "shared"
    assert mine.clear() == 1 and theirs.held([k(7)]) == []


def test_keys_must_be_hex_digests(tmp_path):
    cache = DiskCache(str(tmp_path), 1 << 20)
    with pytest.raises(ValueError, match="hex digest"):
        cache.put("../escape", dumps_value(1))
    assert cache.held(["../escape"]) == []


def test_entries_written_by_a_worker_are_counted_and_bounded(tmp_path):
    from handoff.cache.disk import entry_size, write_entry

    cache = DiskCache(str(tmp_path), 1000)
    small, big = dumps_value(b"s" * 100), dumps_value(b"b" * 2000)
    write_entry(cache.path_of(k(1)), small)  # as a worker process does
    cache.note_written(k(1))
    assert cache.total == entry_size(small) == os.path.getsize(tmp_path / f"{k(1)}.v")
    assert loads_value(cache.get(k(1))) == b"s" * 100
    write_entry(cache.path_of(k(2)), big)
    cache.note_written(k(2))  # over the bound: removed, not counted
    assert cache.held([k(1), k(2)]) == [k(1)] and cache.total == entry_size(small)
    cache.note_written(k(3))  # the worker could not write it: nothing to count
    assert cache.total == entry_size(small)

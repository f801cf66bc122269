"""The value store's budget: LRU spilling to disk, active runs last, nothing lost (no sockets)."""

import os

import numpy as np
import pytest

from handoff.config import NodeConfig, default_store_limit, parse_size
from handoff.node.data import shm
from handoff.node.__main__ import build_parser
from handoff.node.data.store import ValueStore
from handoff.node.data.values import LocalValue, dumps_value, expand_frames, has_shared, loads_value

MB = 1024 * 1024


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def spill_parent(tmp_path):
    return str(tmp_path)


def array_value(i: int, nbytes: int = MB) -> np.ndarray:
    return np.full(nbytes // 8, i, dtype=np.float64)


def make_store(spill_parent, limit, **kw) -> ValueStore:
    return ValueStore(limit=limit, spill_dir=spill_parent, **kw)


def test_past_the_limit_least_recently_used_values_spill_and_read_back(spill_parent):
    store = make_store(spill_parent, limit=3 * MB + MB // 2)
    try:
        for i in range(3):
            store.put("d", i, dumps_value(array_value(i)))
        assert store.stats()["spills"] == 0
        store.get("d", 0)  # 0 is now more recent than 1
        store.put("d", 3, dumps_value(array_value(3)))
        stats = store.stats()
        assert stats["spills"] == 1 and stats["spilled_values"] == 1
        assert store.spilled("d", 1) and not store.spilled("d", 0)
        assert stats["memory_bytes"] <= store.limit
        assert stats["disk_bytes"] >= MB
        assert store.has("d", 1)
        before = store.loads
        np.testing.assert_array_equal(loads_value(store.get("d", 1)), array_value(1))
        assert store.loads == before + 1
        for i in (0, 2, 3):
            np.testing.assert_array_equal(loads_value(store.get("d", i)), array_value(i))
    finally:
        store.close()


def test_values_of_active_runs_spill_only_after_finished_ones(spill_parent):
    store = make_store(spill_parent, limit=2 * MB + MB // 2)
    try:
        store.begin_run("r-active", "active")
        store.put("active", "a", dumps_value(array_value(1)))  # oldest, but its run goes on
        store.put("done", "b", dumps_value(array_value(2)))
        store.put("done", "c", dumps_value(array_value(3)))
        assert store.get("active", "a") is not None
        assert store.spilled("done", "b") and not store.spilled("done", "c")
        assert not store.spilled("active", "a")
        # nothing finished is left in memory: the active value goes too, rather than overrun
        store.put("active", "d", dumps_value(array_value(4)))
        store.put("active", "e", dumps_value(array_value(5)))
        assert store.memory_bytes <= store.limit
        assert store.spilled("active", "a")
        store.end_run("r-active")
        np.testing.assert_array_equal(loads_value(store.get("active", "a")), array_value(1))
    finally:
        store.close()


def test_ending_a_run_spills_its_values_if_over_budget(spill_parent):
    store = make_store(spill_parent, limit=MB + MB // 2)
    try:
        store.begin_run("r1", "x")
        store.begin_run("r1", "x")  # a second dispatch of the same run counts once
        store.put("x", 1, dumps_value(array_value(1)))
        store.put("x", 2, dumps_value(array_value(2)))
        spilled_while_active = store.spills
        assert spilled_while_active == 1 and store.memory_bytes <= store.limit
        assert store.active("x")
        store.end_run("r1")
        store.end_run("r1")
        assert not store.active("x")
    finally:
        store.close()


@pytest.mark.skipif(not shm.available(), reason="needs a writable /dev/shm (Linux)")
def test_shared_memory_files_of_a_spilled_value_outlive_their_last_hand_out(spill_parent):
    clock = Clock()
    owner = f"handoff-{os.getpid()}-{os.urandom(4).hex()}"
    store = make_store(spill_parent, limit=3 * MB, clock=clock, grace=10.0)
    try:
        frames = dumps_value(array_value(7, 2 * MB), shm_owner=owner)
        assert has_shared(frames)
        path = shm.descriptor_path(frames[1])
        store.put("d", "k", frames)
        handed = store.get("d", "k")  # handed out, then spilled by the next put
        store.put("d", "other", dumps_value(array_value(8, 2 * MB)))
        assert store.spilled("d", "k")
        assert os.path.exists(path) and store.releasing_bytes >= 2 * MB
        clock.now += 5
        store.tick()
        np.testing.assert_array_equal(loads_value(handed), array_value(7, 2 * MB))
        clock.now += 6
        store.tick()
        assert not os.path.exists(path) and store.releasing_bytes == 0
        again = store.get("d", "k")  # served from the spill file now
        assert shm.descriptor_path(again[1]).startswith(spill_parent)
        np.testing.assert_array_equal(loads_value(again), array_value(7, 2 * MB))
    finally:
        store.close()
        shm.remove_owned(owner)


@pytest.mark.skipif(not shm.available(), reason="needs a writable /dev/shm (Linux)")
def test_a_value_never_handed_out_releases_its_shared_memory_at_once(spill_parent):
    owner = f"handoff-{os.getpid()}-{os.urandom(4).hex()}"
    store = make_store(spill_parent, limit=MB)
    try:
        frames = dumps_value(array_value(1, 2 * MB), shm_owner=owner)
        path = shm.descriptor_path(frames[1])
        store.put("d", "k", frames)
        assert not os.path.exists(path)
        assert store.memory_bytes == 0 and store.releasing_bytes == 0
        np.testing.assert_array_equal(loads_value(store.get("d", "k")), array_value(1, 2 * MB))
    finally:
        store.close()
        shm.remove_owned(owner)


def test_thread_executor_objects_are_pickled_on_spill(spill_parent):
    store = make_store(spill_parent, limit=MB + MB // 2)
    try:
        store.put("d", "obj", [LocalValue({"array": array_value(3)})])
        assert store.memory_bytes >= 0
        store.put("d", "arr", [LocalValue(array_value(4))])
        store.put("d", "more", [LocalValue(array_value(5))])
        assert store.spilled("d", "arr")
        back = store.get("d", "arr")
        assert not isinstance(back[0], LocalValue)
        np.testing.assert_array_equal(loads_value(back), array_value(4))
    finally:
        store.close()


def test_an_unpicklable_object_stays_in_memory(spill_parent):
    store = make_store(spill_parent, limit=MB // 2)
    try:
        lock_value = [LocalValue((array_value(1), __import__("threading").Lock()))]
        store.put("d", "lock", lock_value)
        assert store.spill_failures == 1 and store.spills == 0
        assert store.get("d", "lock") is lock_value
        store.put("d", "arr", [LocalValue(array_value(2))])  # the next one spills instead
        assert store.spills == 1 and store.spilled("d", "arr")
    finally:
        store.close()


def test_clear_and_replace_remove_spill_files_and_close_removes_the_directory(spill_parent):
    store = make_store(spill_parent, limit=MB // 2)
    store.put("d", "k", dumps_value(array_value(1)))
    store.put("d", "k", dumps_value(array_value(2)))  # replaces a spilled value
    np.testing.assert_array_equal(loads_value(store.get("d", "k")), array_value(2))
    spill_dir = store.spill.path
    assert oct(os.stat(spill_dir).st_mode & 0o777) == "0o700"
    assert len(os.listdir(spill_dir)) == 2  # the pickle stream and one buffer
    assert store.disk_bytes >= MB
    store.clear("d")
    assert os.listdir(spill_dir) == [] and store.disk_bytes == 0 and store.memory_bytes == 0
    assert store.get("d", "k") is None
    store.close()
    assert not os.path.exists(spill_dir)


def test_without_a_limit_nothing_spills(spill_parent):
    store = ValueStore(spill_dir=spill_parent)
    for i in range(5):
        store.put("d", i, dumps_value(array_value(i)))
    assert store.spills == 0 and store.memory_bytes >= 5 * MB
    assert os.listdir(spill_parent) == []
    store.close()


def test_waiters_get_the_value_even_if_it_spills_at_once(spill_parent):
    store = make_store(spill_parent, limit=MB // 2)
    got = []
    store.wait("d", "k", got.append)
    store.put("d", "k", dumps_value(array_value(9)))
    assert store.spills == 1
    np.testing.assert_array_equal(loads_value(got[0]), array_value(9))
    store.close()


def test_a_spilled_value_expands_to_bytes_for_a_peer_on_another_host(spill_parent):
    store = make_store(spill_parent, limit=MB // 2)
    try:
        store.put("d", "k", dumps_value(array_value(6)))
        frames = store.get("d", "k")
        assert has_shared(frames)  # served as descriptors of the spill files
        expanded = expand_frames(frames)
        assert not has_shared(expanded)
        np.testing.assert_array_equal(loads_value(expanded), array_value(6))
    finally:
        store.close()


def test_store_limit_sizes_parse_and_bad_ones_say_what_is_accepted():
    assert parse_size("2G") == 2 << 30
    assert parse_size("500M") == 500 << 20
    assert parse_size("64MiB") == parse_size("64mb") == 64 << 20
    assert parse_size("1.5K") == 1536
    assert parse_size("1048576") == parse_size(1048576) == MB
    assert 0 < parse_size("10%") < parse_size("20%")
    for bad in ("", "abc", "-1G", "0", "12X", True, 1.5):
        with pytest.raises(ValueError, match="2G, 500M or 10%"):
            parse_size(bad)
    assert NodeConfig(resources={"cpu": 1}, store_limit="64M").store_limit == 64 << 20
    assert NodeConfig(resources={"cpu": 1}).store_limit == default_store_limit() > 0
    assert build_parser().parse_args(["--store-limit", "2G"]).store_limit == 2 << 30
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--store-limit", "lots"])


def test_node_config_is_settled_once_and_frozen():
    import dataclasses

    config = NodeConfig(name="n", resources={"cpu": 1}, workers=1, join="tcp://127.0.0.1:5555")
    assert config.join == ("tcp://127.0.0.1:5555",) and config.resources == {"cpu": 1.0}
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.resources = {"cpu": 8.0}

"""Large buffers through /dev/shm: written once, mapped everywhere, unlinked by the owner."""

import os

import numpy as np
import pytest

from handoff.node import shm
from handoff.node.values import (
    OOB_MIN, blob_nbytes, dumps_value, expand_frames, has_shared, loads_value, release_frames,
)

pytestmark = pytest.mark.skipif(not shm.available(), reason="needs a writable /dev/shm (Linux)")


def test_large_buffers_go_to_shared_memory_and_map_back():
    arr = np.arange(1_000_000, dtype=np.float64)  # 8 MB
    frames = dumps_value(arr, shm_owner=os.getpid())
    try:
        assert has_shared(frames)
        assert len(frames[1]) < OOB_MIN  # a descriptor, not the bytes
        assert blob_nbytes(frames) >= arr.nbytes
        back = loads_value(frames)
        np.testing.assert_array_equal(back, arr)
        back[0] = -1  # the mapping is private: writes do not reach the shared file
        assert loads_value(frames)[0] == 0
        expanded = expand_frames(frames)
        assert not has_shared(expanded)
        np.testing.assert_array_equal(loads_value(expanded), arr)
    finally:
        release_frames(frames)
    with pytest.raises(FileNotFoundError):
        loads_value(frames)


def test_small_buffers_and_no_owner_stay_in_frames():
    frames = dumps_value(np.arange(1000), shm_owner=os.getpid())
    assert not has_shared(frames)
    frames = dumps_value(np.arange(1_000_000), shm_owner=None)
    assert not has_shared(frames) and len(frames) == 2


def test_orphans_of_dead_processes_are_swept():
    path = os.path.join(shm.SHM_DIR, "handoff-999999999-test-0")
    with open(path, "wb") as f:
        f.write(b"x")
    assert shm.sweep_orphans() >= 1
    assert not os.path.exists(path)

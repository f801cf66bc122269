"""Large buffers through /dev/shm: written once, mapped everywhere, unlinked by the owner,
swept by any node once the owner is dead."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from handoff.node.data import shm
from handoff.node.data.sweep import owner_running, process_start, sweep_dead
from handoff.node.data.values import (
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


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _touch(path, mtime=None):
    with open(path, "wb") as f:
        f.write(b"x")
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_files_of_dead_processes_are_swept_and_live_ones_kept(tmp_path):
    dead = _dead_pid()
    d = str(tmp_path)
    shm_file = _touch(os.path.join(d, f"handoff-{dead}-0a1b2c3d-{dead}-abcdef-0"))
    job_file = _touch(os.path.join(d, f"handoff-{dead}-0a1b2c3d-w0.job"))
    spill_dir = os.path.join(d, f"handoff-{dead}-0a1b2c3d.spill")
    os.mkdir(spill_dir, 0o700)
    _touch(os.path.join(spill_dir, "0.h"))
    mine = _touch(os.path.join(d, f"handoff-{os.getpid()}-0a1b2c3d-w1.job"))
    runtime_dir = os.path.join(d, f"handoff-{dead}")  # not a node's file: no token
    os.mkdir(runtime_dir)
    other_dir = os.path.join(d, f"handoff-{dead}-0a1b2c3d")  # a directory but not a spill dir
    os.mkdir(other_dir)
    unrelated = _touch(os.path.join(d, f"handoff-{dead}-nothex-0"))
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    try:
        written_while_alive = _touch(os.path.join(d, f"handoff-{live.pid}-0a1b2c3d-w0.job"))
        # the same pid on a file written long before that process started: a reused pid
        reused = _touch(os.path.join(d, f"handoff-{live.pid}-0b1b2c3d-w0.job"), mtime=time.time() - 3600)
        assert sweep_dead((d,)) == 4
        for gone in (shm_file, job_file, spill_dir, reused):
            assert not os.path.exists(gone), gone
        for kept in (mine, runtime_dir, other_dir, unrelated, written_while_alive):
            assert os.path.exists(kept), kept
    finally:
        live.stdin.close()
        live.wait(10)


def test_sweep_rule_reads_process_start_times():
    assert process_start(os.getpid()) <= time.time()
    assert process_start(_dead_pid()) is None
    assert owner_running(12345, modified=100.0, started=99.0)
    assert not owner_running(12345, modified=100.0, started=200.0)
    assert not owner_running(12345, modified=100.0, started=None)

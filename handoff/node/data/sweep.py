"""Sweep files that dead node processes left on this host.

Every file a node creates is named ``handoff-<pid>-<hex token>...`` after the node's process:
shared-memory buffers in /dev/shm, its workers' current-job files (``...-w<slot>.job``) and
its spill directory (``....spill``) in the temp dir. A kill -9 leaves them behind; every
live node removes them on a timer. The rule: a file (or spill directory) is removed only if
this user owns it and no process with its pid is running that started before the file was
last modified. A pid taken over by another process started after the file was written
cannot be its writer, so the file goes; one started earlier is presumed to be the owner.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

import psutil

from handoff.node.data import shm

__all__ = ["sweep_dead", "owner_running", "process_start", "NAME"]

NAME = re.compile(r"handoff-(\d+)-[0-9a-f]{6,}(?:[-.].*)?")
START_SLACK = 2.0  # seconds: process start times are known to about a second


def process_start(pid: int) -> float | None:
    """When the running process ``pid`` started; None if none runs (or only a zombie);
    minus infinity if that cannot be known (it is then presumed the owner of anything)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        return float("-inf")


def owner_running(pid: int, modified: float, started: float | None) -> bool:
    """Whether the process that holds ``pid`` (started at ``started``) may have written a
    file last modified at ``modified``."""
    return pid == os.getpid() or (started is not None and started <= modified + START_SLACK)


def sweep_dead(directories: tuple[str, ...] | None = None) -> int:
    """Remove files and spill directories of dead node processes; how many were removed."""
    if directories is None:
        directories = (shm.SHM_DIR, tempfile.gettempdir())
    uid = os.getuid()
    removed = 0
    starts: dict[int, float | None] = {}
    for directory in directories:
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            match = NAME.fullmatch(entry.name)
            if match is None:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
                is_dir = entry.is_dir(follow_symlinks=False)
                if st.st_uid != uid or entry.is_symlink():
                    continue
            except OSError:
                continue
            if is_dir and not entry.name.endswith(".spill"):
                continue
            pid = int(match.group(1))
            if pid not in starts:
                starts[pid] = process_start(pid)
            if owner_running(pid, st.st_mtime, starts[pid]):
                continue
            try:
                if is_dir:
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed += 1
            except OSError:
                pass  # another node swept it first
    return removed

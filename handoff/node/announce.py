"""Nodes of this user on this machine, so ``python -m handoff status`` finds one without --join.

A running node keeps a small file (name, address, pid) in ``nodes/`` under the user's runtime
directory, the private directory that holds the per-user key; it is removed when the node
stops, and a file whose process is gone (a kill -9) is ignored and swept by the readers.
"""

from __future__ import annotations

import json
import logging
import os

from handoff.errors import HandoffError
from handoff.node.data.sweep import owner_running, process_start

__all__ = ["announce", "withdraw", "local_nodes"]

log = logging.getLogger("handoff.node")

SUBDIR = "nodes"


def announce(runtime_dir: str, name: str, address: str, token: str) -> str | None:
    """Write this node's file; its path, or None if the runtime directory is unusable."""
    from handoff.security import private_dir

    try:
        directory = private_dir(os.path.join(private_dir(runtime_dir), SUBDIR))
        path = os.path.join(directory, f"{os.getpid()}-{token}.json")
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"name": name, "address": address, "pid": os.getpid()}, f)
        os.replace(tmp, path)
        return path
    except (OSError, HandoffError) as exc:  # only `status` without --join needs it
        log.debug("%s: not announced in %s: %s", name, runtime_dir, exc)
        return None


def withdraw(path: str | None) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass


def local_nodes(runtime_dir: str) -> list[dict]:
    """``[{"name", "address", "pid"}]`` of this user's running nodes here, newest first."""
    directory = os.path.join(runtime_dir, SUBDIR)
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    found = []
    for entry in entries:
        if not entry.name.endswith(".json"):
            continue
        try:
            with open(entry.path, encoding="utf-8") as f:
                info = json.load(f)
            mtime = entry.stat().st_mtime
            pid = int(info["pid"])
            alive = owner_running(pid, mtime, process_start(pid))  # not a reused pid
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if alive:
            found.append((mtime, info))
        else:
            withdraw(entry.path)  # its process is gone
    return [info for _, info in sorted(found, key=lambda item: -item[0])]

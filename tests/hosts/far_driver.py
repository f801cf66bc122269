"""A driver on a host of its own (run by test_driver_loss.py): joins, submits functions that
run until released, prints "running" and waits for the run."""

from __future__ import annotations

import os
import sys

import handoff
from handoff import DAG, Function
from handoff.testing import wait_for_members, wait_until


def hold(release: str, pids: str) -> int:
    """Workload: notes its worker's pid, runs until ``release`` exists (bounded)."""
    open(os.path.join(pids, str(os.getpid())), "w").close()
    wait_until(lambda: os.path.exists(release), 240, interval=0.05)
    return os.getpid()


def main(listen: str, join: str, key_file: str, release: str, pids: str) -> int:
    handoff.start(name="far-driver", listen=listen, join=join, key_file=key_file,
                  resources={"cpu": 0}, workers=1)
    wait_for_members(["h1", "h2"], 60)
    dag = DAG()
    for i in range(4):  # two run, one per node, and two wait for a cpu
        dag.add_function(Function(id=f"hold{i}", code=hold, extra_args=[release, pids], cost={"cpu": 1}))
    print("running", flush=True)
    handoff.execute(dag, timeout=240)
    print("finished", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))

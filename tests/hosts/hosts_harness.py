"""What the tests across hosts share: a driver in this process, bounded waits, and the
figures they measured (printed in the terminal summary by conftest.py)."""

from __future__ import annotations

from typing import Any

import handoff
from handoff.testing import wait_for_members
from handoff.testing.hosts import Hosts

MEASURED: list[str] = []
WAIT = 60.0  # bounded waits: a loaded 2-core machine is slow


def start_driver(hosts: Hosts, join: str, key_file: str, members: list[str],
                 **options: Any) -> str:
    """This process as a host of its own (its address on the bridge), running a driver that
    offers no cpu, joined to ``join``; returns once it sees ``members``."""
    options.setdefault("resources", {"cpu": 0})
    options.setdefault("workers", 1)
    name = handoff.start(name="driver", listen=hosts.listen_here(), join=join,
                         key_file=key_file, **options)
    wait_for_members(members, WAIT)
    return name


def measured(line: str) -> None:
    """Report a measured figure in the terminal summary (tests never assert timings)."""
    MEASURED.append(line)

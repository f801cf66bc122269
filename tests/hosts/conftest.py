"""Tests across hosts: each test makes its hosts (network namespaces on a private bridge,
handoff.testing.hosts), which need root; they fail, with the reason, where that is missing.
Measured detection, recovery and transfer figures are printed in the terminal summary."""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator

import pytest
from hosts_harness import MEASURED

import handoff
from handoff.testing.hosts import Hosts, remove_leftovers


@pytest.fixture(scope="session", autouse=True)
def leftovers_removed() -> Iterator[None]:
    """Whatever a failed or interrupted test left (namespaces, links, processes) goes."""
    yield
    remove_leftovers()


@pytest.fixture
def make_hosts() -> Iterator[Callable[..., Hosts]]:
    """``make_hosts(n)``: n hosts, removed when the test ends, which checks nothing stays."""
    made: list[Hosts] = []

    def make(n: int = 3, **options: Any) -> Hosts:
        hosts = Hosts(n, **options)
        made.append(hosts)
        return hosts

    yield make
    handoff.stop()  # a driver here talks to the hosts: stop it first
    for hosts in made:
        hosts.close()
        assert hosts.made() == [], f"left behind: {hosts.made()}"


@pytest.fixture
def key(tmp_path: Any) -> Callable[[Hosts], str]:
    """``key(hosts)``: a new cluster key file (python -m handoff.keygen)."""
    def make(hosts: Hosts, name: str = "cluster.key") -> str:
        return hosts.keygen(os.path.join(tmp_path, name))
    return make


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if MEASURED:
        terminalreporter.section("measured across hosts")
        for line in MEASURED:
            terminalreporter.write_line(line)

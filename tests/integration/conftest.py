"""Integration tests keep the per-user node key in a runtime directory of their own."""

from __future__ import annotations

import pytest
from nodes import private_dir


@pytest.fixture(scope="session", autouse=True)
def private_runtime_dir():
    """Nodes and drivers started by the tests find their default key here (the processes
    inherit the environment), not in the user's real runtime directory; removed at the end."""
    with private_dir("XDG_RUNTIME_DIR", "handoff-test-runtime-") as path:
        yield path


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir():
    """Nodes' default result cache ($XDG_CACHE_HOME/handoff) in a directory of the tests' own,
    never the user's real cache; removed at the end."""
    with private_dir("XDG_CACHE_HOME", "handoff-test-cache-") as path:
        yield path

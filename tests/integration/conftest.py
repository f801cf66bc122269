"""Integration tests keep the per-user node key in a runtime directory of their own."""

from __future__ import annotations

import pytest
from nodes import private_runtime_dir as _private_runtime_dir


@pytest.fixture(scope="session", autouse=True)
def private_runtime_dir():
    """Nodes and drivers started by the tests find their default key here (the processes
    inherit the environment), not in the user's real runtime directory; removed at the end."""
    with _private_runtime_dir("handoff-test-runtime-") as path:
        yield path

"""Integration tests keep the per-user node key in a runtime directory of their own."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest


@pytest.fixture(scope="session", autouse=True)
def private_runtime_dir():
    """Nodes and drivers started by the tests find their default key here (the processes
    inherit the environment), not in the user's real runtime directory; removed at the end."""
    path = tempfile.mkdtemp(prefix="handoff-test-runtime-")
    os.chmod(path, 0o700)
    patch = pytest.MonkeyPatch()
    patch.setenv("XDG_RUNTIME_DIR", path)
    try:
        yield path
    finally:
        patch.undo()
        shutil.rmtree(path, ignore_errors=True)

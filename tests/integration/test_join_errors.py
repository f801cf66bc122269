"""A join that fails says why: the wrong key, or a refusal, not "no node answered"."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import handoff
from handoff.errors import HandoffError
from handoff.security import generate_key_text
from nodes import child_env, start_node

pytestmark = [pytest.mark.timeout(120)]


def write_key(path) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(generate_key_text())
    return str(path)


@pytest.fixture
def keyed_node(tmp_path):
    """n1 with key A; yields (node, key A, key B)."""
    handoff.stop()
    key_a, key_b = write_key(tmp_path / "a.key"), write_key(tmp_path / "b.key")
    node = start_node("n1", "cpu=1", workers=1, extra=["--key-file", key_a])
    try:
        yield node, key_a, key_b
    finally:
        handoff.stop()
        node.stop()


def test_driver_with_the_wrong_key_is_told_the_node_rejected_its_key(keyed_node):
    node, _, key_b = keyed_node
    with pytest.raises(HandoffError) as info:
        handoff.start(name="driver", join=node.address, key_file=key_b, resources={"cpu": 0},
                      workers=1, join_timeout=10)
    text = str(info.value)
    assert f"node at {node.address} rejected this node's key" in text
    assert key_b in text
    assert "no node answered" not in text


def test_node_process_with_the_wrong_key_exits_saying_so(keyed_node):
    node, _, key_b = keyed_node
    cmd = [sys.executable, "-m", "handoff.node", "--name", "n2", "--join", node.address,
           "--key-file", key_b, "--resources", "cpu=1", "--workers", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=60)
    assert proc.returncode == 3
    assert f"node at {node.address} rejected this node's key" in proc.stderr


def test_the_right_key_joins(keyed_node):
    """The positive control: the same probe with key A does join."""
    node, key_a, _ = keyed_node
    handoff.start(name="driver", join=node.address, key_file=key_a, resources={"cpu": 0},
                  workers=1, join_timeout=10)
    assert set(handoff.discover_nodes()) == {"driver", "n1"}


def test_refused_join_names_the_node_and_the_reason(keyed_node):
    """A second node with a taken name: the refusal comes back on the join connection."""
    node, key_a, _ = keyed_node
    with pytest.raises(HandoffError) as info:
        handoff.start(name="n1", join=node.address, key_file=key_a, resources={"cpu": 0},
                      workers=1, join_timeout=10)
    assert "node 'n1' refused this node: the name 'n1' is taken by a live node" in str(info.value)

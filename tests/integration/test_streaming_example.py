"""examples/streaming.py, run as a user would (a real process), its output checked."""

from __future__ import annotations


import numpy as np
import pytest

from test_examples import EXAMPLES, run

pytestmark = pytest.mark.timeout(180)


def test_streaming_example_prints_ordered_embeddings_and_the_failed_record():
    out = run(str(EXAMPLES / "streaming.py"), "--records", "30").stdout
    lines = out.splitlines()
    assert "record 13: failed in 'load': ValueError: record 13 is corrupt" in lines
    assert "29 of 29 embeddings match a local computation, in push order" in lines
    assert "embed: 29 items on" in out
    weights = np.linspace(0.0, 1.0, 16)
    expected = [round(float(np.random.default_rng(n).random(16) @ weights), 4) for n in range(5)]
    assert f"map: {expected}" in lines, out

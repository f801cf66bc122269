"""The gossip simulations of bench/gossip_model.py at a small N: the vectorised model agrees
with real MembershipTables on a simulated clock (rounds, not seconds: nothing is timed)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
import gossip_model as G  # noqa: E402

LIMIT = round(G.DEAD_AFTER / G.INTERVAL)  # rounds of silence before a member is declared dead


@pytest.mark.parametrize("simulate", [G.exact, G.model], ids=["exact", "model"])
def test_60_nodes_converge_from_one_seed_and_detect_a_death(simulate):
    r = simulate(60, seed=3)
    assert 2 <= r.rounds_to_converge <= 12  # an epidemic: about log(n) rounds, not n
    assert r.messages_per_node_per_s == pytest.approx(G.FANOUT / G.INTERVAL)
    assert r.bytes_per_node_per_s == pytest.approx(r.messages_per_node_per_s * (60 * G.row_bytes(60) + 40))
    assert r.false_deaths == 0 and r.max_age_rounds < LIMIT  # nobody alive is declared dead
    # nobody declares the death before dead_after, and everyone within a few rounds of gossip
    assert LIMIT <= r.detect_first_rounds <= r.detect_last_rounds <= LIMIT + 10


def test_model_and_exact_agree_on_the_same_cluster():
    exact, model = G.exact(60, seed=5), G.model(60, seed=5)
    assert abs(exact.rounds_to_converge - model.rounds_to_converge) <= 3
    assert abs(exact.detect_last_rounds - model.detect_last_rounds) <= 5

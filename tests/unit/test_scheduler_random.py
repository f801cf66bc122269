"""Randomized runs: failures, lost nodes, joins, cancels, lost results, restarts."""

from __future__ import annotations

import numpy as np
import pytest
from scheduler_harness import drive_random_restarts, drive_random_runs, sched  # noqa: F401

from handoff.errors import FunctionError, NodeLostError, TimeoutError

@pytest.mark.parametrize("lookahead", [0, 1, 3])
@pytest.mark.parametrize("seed", range(16))
def test_random_runs_end_with_every_result_and_no_claims(sched, seed, lookahead):
    c, runs, finished_before_loss = drive_random_runs(sched, seed, lookahead)
    assert set(c.finished) == set(runs)
    for run_id, d in runs.items():
        fin = c.finished[run_id]
        state = c.orch.run(run_id)
        if fin.error is None:
            regular = {f.id for f in d if not f.is_inline}
            assert set(state.allocations()) == regular
            if run_id not in finished_before_loss:
                assert all(node in c.orch.node_load() for node in state.allocations().values())
            for members in state.group_members:
                assert len({state.location(m) for m in members}) == 1
        else:
            assert isinstance(fin.error, (FunctionError, NodeLostError, TimeoutError))
    assert c.idle(), c.ledger.used_matrix()
    assert not np.asarray(c.ledger.used_matrix()).any()


@pytest.mark.parametrize("lookahead", [0, 1, 3])
@pytest.mark.parametrize("seed", range(12))
def test_random_runs_with_deadlines_survive_node_restarts(sched, seed, lookahead):
    c, runs, down = drive_random_restarts(sched, seed, lookahead)
    assert set(c.finished) == set(runs), (c.orch.active_runs, down)
    for run_id, d in runs.items():
        fin = c.finished[run_id]
        state = c.orch.run(run_id)
        if fin.error is None:
            assert set(state.allocations()) == {f.id for f in d if not f.is_inline}
            pins = {f.id: f.node for f in d if isinstance(f.node, str)}
            for fid, node in pins.items():
                assert state.allocations()[fid] == node
        else:
            assert isinstance(fin.error, (FunctionError, NodeLostError))
        assert not state.awaiting
    assert c.idle(), c.ledger.used_matrix()

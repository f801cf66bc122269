"""``execute(dag, allocator=...)``: a user Allocator's static plan, honoured on real nodes.

Nodes a (cpu=2) and b (cpu=1) run as processes; this process is the driver (cpu=0) and
orchestrates with ``HANDOFF_DEBUG_STATE=1``, so the scheduler's state is validated after
every event of these runs.
"""

from __future__ import annotations

import os

import pytest

import handoff
from handoff import DAG, Function
from handoff.testing import LocalCluster

pytestmark = pytest.mark.timeout(180)


class OddEven:
    """Odd ids to node a, even ids to node b; records the capacities it was given."""

    def __init__(self, odd="a", even="b"):
        self.odd, self.even, self.calls = odd, even, []

    def allocate(self, functions, caps):
        self.calls.append({n: dict(c) for n, c in caps.items()})
        return {f.id: self.odd if f.id % 2 else self.even for f in functions}


@pytest.fixture(scope="module")
def cluster():
    handoff.stop()
    before = os.environ.get("HANDOFF_DEBUG_STATE")
    os.environ["HANDOFF_DEBUG_STATE"] = "1"
    try:
        with LocalCluster(2, names=["a", "b"], resources=[{"cpu": 2}, {"cpu": 1}]) as nodes:
            nodes.connect()
            yield nodes
    finally:
        if before is None:
            os.environ.pop("HANDOFF_DEBUG_STATE", None)
        else:
            os.environ["HANDOFF_DEBUG_STATE"] = before


def chain(n, cost=None):
    dag = DAG()
    dag.add_function(Function(id=0, code=lambda: 0, cost=cost))
    for k in range(1, n):
        dag.add_function(Function(id=k, code=lambda x: x + 1, args=[k - 1], cost=cost))
    return dag


def test_the_plan_decides_where_every_function_runs(cluster):
    assert handoff.node_stats()["validating_state"]  # every event below is validated
    allocator = OddEven()
    r = handoff.execute(chain(8, cost={"cpu": 1}), allocator=allocator)
    assert r.allocations == {k: "a" if k % 2 else "b" for k in range(8)}
    assert r.results[7] == 7
    # once per run, with the live nodes' total capacities (the driver's cpu=0 is nothing)
    assert allocator.calls == [{"a": {"cpu": 2.0}, "b": {"cpu": 1.0}, "driver": {}}]
    swapped = handoff.execute(chain(4), allocator=OddEven(odd="b", even="a"))
    assert swapped.allocations == {0: "a", 1: "b", 2: "a", 3: "b"}


def test_a_plan_naming_a_missing_node_is_an_allocation_error(cluster):
    with pytest.raises(handoff.AllocationError, match="'ghost'") as info:
        handoff.execute(chain(3), allocator=OddEven(odd="ghost"))
    assert info.value.function_id == 1
    assert "which is not a live node" in info.value.reason


def test_a_plan_putting_a_big_cost_on_a_small_node_says_why(cluster):
    with pytest.raises(handoff.AllocationError) as info:
        handoff.execute(chain(2, cost={"cpu": 2}), allocator=OddEven())
    assert info.value.function_id == 0
    assert info.value.reason == (
        "the allocator placed it on node 'b', whose total capacity does not fit it: "
        "node 'b' has cpu=1 of the 2 it needs"
    )
    # the cluster is unharmed: the same DAG with a plan that fits runs
    r = handoff.execute(chain(2, cost={"cpu": 2}), allocator=OddEven(even="a"))
    assert r.allocations == {0: "a", 1: "a"}


def test_a_bad_allocator_option_is_refused_early(cluster):
    with pytest.raises(ValueError, match="allocator must have an allocate"):
        handoff.execute(chain(1), allocator=object())

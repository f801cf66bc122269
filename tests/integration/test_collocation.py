"""Collocation on a real node: members that fit only one at a time share the node in turn."""

from __future__ import annotations

import time

import pytest

import handoff
from handoff import Collocated, DAG, Function
from handoff.testing import LocalCluster

pytestmark = pytest.mark.timeout(120)


def hold(seconds, value):
    """Long enough that two attempts running side by side would overlap."""
    time.sleep(seconds)
    return value


@pytest.fixture(scope="module")
def node():
    """Node n (cpu 2, memory 8000, two workers) and this process as a driver with no resources."""
    handoff.stop()
    with LocalCluster(1, names=["n"], resources={"cpu": 2, "memory": 8000}, workers=2) as cluster:
        cluster.connect()
        yield cluster["n"]


def test_collocated_functions_that_fit_one_at_a_time_run_in_turn(node):
    dag = DAG()
    dag.add_function(Function(id="task_A", code=hold, extra_args=[0.3, "a"], node="n",
                              cost={"cpu": 1, "memory": 7900}))
    dag.add_function(Function(id="task_B", code=hold, extra_args=[0.3, "b"],
                              node=Collocated("task_A"), cost={"cpu": 1, "memory": 150}))
    result = handoff.execute(dag, timeout=60)
    assert dict(result.results) == {"task_A": "a", "task_B": "b"}
    assert result.allocations == {"task_A": "n", "task_B": "n"}
    a, b = result.stats["task_A"], result.stats["task_B"]
    first, second = sorted((a, b), key=lambda s: s.started_at)
    assert first.finished_at <= second.started_at  # the ledger ran them one after another
    assert handoff.resources_available("n", {"cpu": 2, "memory": 8000})  # every claim released


def test_collocated_functions_that_fit_together_may_overlap(node):
    """Control: the same pair with a cost that fits side by side does run side by side."""
    dag = DAG()
    dag.add_function(Function(id="x", code=hold, extra_args=[0.5, 1], node="n",
                              cost={"cpu": 1, "memory": 3000}))
    dag.add_function(Function(id="y", code=hold, extra_args=[0.5, 2], node=Collocated("x"),
                              cost={"cpu": 1, "memory": 3000}))
    result = handoff.execute(dag, timeout=60)
    x, y = result.stats["x"], result.stats["y"]
    assert result.allocations == {"x": "n", "y": "n"}
    assert max(x.started_at, y.started_at) < min(x.finished_at, y.finished_at)


def test_a_member_that_fits_no_node_alone_fails_the_run_naming_it(node):
    dag = DAG()
    dag.add_function(Function(id="task_A", code=hold, extra_args=[0, "a"], node="n",
                              cost={"memory": 7900}))
    dag.add_function(Function(id="huge", code=hold, extra_args=[0, "h"],
                              node=Collocated("task_A"), cost={"memory": 9000}))
    with pytest.raises(handoff.AllocationError) as info:
        handoff.execute(dag, timeout=60)
    assert info.value.function_id == "huge" and info.value.cost == {"memory": 9000.0}
    assert "'huge'" in str(info.value)

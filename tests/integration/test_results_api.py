"""get_result and synchronize find values anywhere in the cluster, over real node processes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

import handoff
from handoff import DAG, Function
from nodes import child_env, end_process, start_node, wait_for

pytestmark = pytest.mark.timeout(180)

# A second driver: an embedded node that stores what it reads on stdin, one JSON list
# [dag_id, key, value, origin_node] per line, and answers "stored"; it stops at EOF.
HELPER = r"""
import json, sys
import handoff
handoff.start(name="helper", join=sys.argv[1], resources={"cpu": 0}, workers=1)
print("ready", flush=True)
for line in sys.stdin:
    dag_id, key, value, origin = json.loads(line)
    handoff.store_result(dag_id, key, value, origin_node=origin)
    print("stored", flush=True)
handoff.stop()
"""


class Helper:
    """The second driver's process; ``store`` returns once the value is in its store."""

    def __init__(self, join: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HELPER, join], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, env=child_env())
        self._expect("ready")

    def _expect(self, word: str) -> None:
        seen = []
        for line in self.proc.stdout:
            if line.strip() == word:
                return
            seen.append(line)
        raise RuntimeError(f"helper exited before {word!r}: {''.join(seen)}")

    def store(self, dag_id, key, value, origin=None) -> None:
        self.proc.stdin.write(json.dumps([dag_id, key, value, origin]) + "\n")
        self.proc.stdin.flush()
        self._expect("stored")

    def stop(self) -> None:
        end_process(self.proc, close_stdin=True)


@pytest.fixture(scope="module")
def cluster():
    """Nodes ra and rb, a second driver ("helper"), and this process as driver."""
    handoff.stop()
    ra = start_node("ra", "cpu=2")
    procs = [ra]
    helper = None
    try:
        procs.append(start_node("rb", "cpu=2", join=ra.address))
        helper = Helper(ra.address)
        handoff.start(name="driver", join=ra.address, resources={"cpu": 0}, workers=1)
        assert wait_for(lambda: set(handoff.discover_nodes()) == {"ra", "rb", "helper", "driver"})
        yield helper
    finally:
        handoff.stop()
        if helper is not None:
            helper.stop()
        for p in procs:
            p.stop()


def make(value):
    return value


def test_get_result_fetches_a_value_computed_on_another_node(cluster):
    dag = DAG("remote-run")
    dag.add_function(Function(id="f", code=make, extra_args=[{"on": "ra"}], node="ra"))
    r = handoff.execute(dag)
    assert r.allocations["f"] == "ra"
    with pytest.raises(handoff.ResultNotFound):
        handoff.get_local_value(dag.id, "f")  # not here: it must come from ra
    assert handoff.get_result(dag.id, "f", timeout=10) == {"on": "ra"}


def test_get_result_finds_a_value_only_another_driver_knows_of(cluster):
    """Nothing on this node names the holder: the peers are asked."""
    cluster.store("other-driver", "k", [1, 2, 3])
    assert handoff.lookup_data_location("other-driver", "k") is None
    assert handoff.get_result("other-driver", "k", timeout=10) == [1, 2, 3]


def test_get_result_follows_a_registered_location(cluster):
    cluster.store("registered", "k", "from helper", origin="helper")
    handoff.register_data_location("registered", "k", "helper")
    assert handoff.get_result("registered", "k", timeout=10) == "from helper"


def test_a_wrong_registration_does_not_hide_the_real_holder(cluster):
    cluster.store("misregistered", "k", "real")
    handoff.register_data_location("misregistered", "k", "rb")  # rb does not have it
    assert handoff.get_result("misregistered", "k", timeout=10) == "real"


def test_the_same_id_under_two_dag_ids_stays_separate(cluster):
    cluster.store("dag-one", "x", 1)
    cluster.store("dag-two", "x", 2)
    handoff.store_value("dag-three", "x", 3)
    assert handoff.get_result("dag-one", "x", timeout=10) == 1
    assert handoff.get_result("dag-two", "x", timeout=10) == 2
    assert handoff.get_result("dag-three", "x", timeout=10) == 3
    assert handoff.synchronize("dag-two", ["x"]) == {"x": 2}
    with pytest.raises(handoff.TimeoutError):
        handoff.get_result("dag-four", "x", timeout=0.3)


def _locates_served(node: str) -> int:
    return handoff.node_stats(node)["counters"].get("locates_served", 0)


def _get_in_thread(dag_id, key, timeout) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def wait() -> None:
        try:
            out["value"] = handoff.get_result(dag_id, key, timeout=timeout)
        except Exception as exc:
            out["error"] = exc

    t = threading.Thread(target=wait)
    t.start()
    return t, out


def test_get_result_returns_a_value_computed_after_the_call_started(cluster):
    dag = DAG("late-run")
    dag.add_function(Function(id="late", code=make, extra_args=["late value"], node="rb"))
    assert handoff.synchronize(dag.id, ["late"]) == {}
    before = _locates_served("rb")
    t, out = _get_in_thread(dag.id, "late", 30)
    assert wait_for(lambda: _locates_served("rb") > before)  # the call is searching
    r = handoff.execute(dag)
    t.join(60)
    assert out == {"value": "late value"}
    assert r.allocations["late"] == "rb"


def test_get_result_returns_a_value_stored_on_a_peer_after_the_call_started(cluster):
    """No registration reaches this node: the peers asked again at a bounded rate find it."""
    assert handoff.synchronize("late-store", ["k"]) == {}
    before = _locates_served("helper")
    t, out = _get_in_thread("late-store", "k", 30)
    assert wait_for(lambda: _locates_served("helper") > before)  # asked before the value exists
    cluster.store("late-store", "k", {"late": True})
    t.join(60)
    assert out == {"value": {"late": True}}


def test_get_result_wakes_on_a_local_registration(cluster):
    cluster.store("late-registration", "k", "registered later")
    t, out = _get_in_thread("late-registration", "k", 30)
    handoff.register_data_location("late-registration", "k", "helper")
    t.join(60)
    assert out == {"value": "registered later"}


def test_a_value_that_never_exists_times_out(cluster):
    with pytest.raises(handoff.TimeoutError) as info:
        handoff.get_result("nowhere", "never", timeout=0.5)
    assert info.value.seconds == 0.5
    assert "never" in str(info.value)


def test_waiting_asks_each_peer_at_a_bounded_rate(cluster):
    """A 3-second wait costs each peer a handful of small messages, not a tight poll."""
    before = _locates_served("rb")
    with pytest.raises(handoff.TimeoutError):
        handoff.get_result("nowhere", "never", timeout=3)
    asked = _locates_served("rb") - before
    assert 1 <= asked <= 10


def test_synchronize_returns_the_values_it_finds_and_leaves_out_the_rest(cluster):
    dag = DAG("sync-run")
    dag.add_function(Function(id="on_ra", code=make, extra_args=["a"], node="ra"))
    dag.add_function(Function(id="on_rb", code=make, extra_args=["b"], node="rb"))
    handoff.execute(dag)
    handoff.store_value(dag.id, "here", "h")
    cluster.store(dag.id, "helper's", "x")
    got = handoff.synchronize(dag.id, ["on_ra", "on_rb", "here", "helper's", "missing", ("no", 1)])
    assert got == {"on_ra": "a", "on_rb": "b", "here": "h", "helper's": "x"}
    assert handoff.synchronize(dag.id, []) == {}


def test_synchronize_asks_the_peers_when_the_registered_node_is_gone(cluster):
    cluster.store("stale", "k", "still here")
    handoff.register_data_location("stale", "k", "ghost")  # no such node
    assert handoff.synchronize("stale", ["k"]) == {"k": "still here"}
    assert handoff.get_result("stale", "k", timeout=10) == "still here"

"""ResourceLedger of handoff._core, run against both implementations (the ``core`` fixture)."""

import math

import numpy as np
import pytest


@pytest.fixture
def ledger(core):
    led = core.ResourceLedger()
    led.register("a", {"cpu": 4, "memory": 8000})
    led.register("b", {"cpu": 16, "memory": 64000, "gpu": 2})
    return led


def test_nodes_and_resources_keep_their_order(core, ledger):
    assert ledger.nodes == ["a", "b"]
    assert ledger.resources == ["cpu", "memory", "gpu"]
    ledger.register("c", {"fpga": 1})
    assert ledger.nodes == ["a", "b", "c"]
    assert ledger.resources == ["cpu", "memory", "gpu", "fpga"]
    assert [ledger.node_index(n) for n in ledger.nodes] == [0, 1, 2]
    assert ledger.node_name(2) == "c"
    assert ledger.has_node("b") and not ledger.has_node("z")


def test_undeclared_resource_has_zero_capacity(ledger):
    assert ledger.capacity("a") == {"cpu": 4.0, "memory": 8000.0}
    assert not ledger.available("a", {"gpu": 1})
    assert ledger.capacity_matrix().tolist() == [[4, 8000, 0], [16, 64000, 2]]


def test_unknown_names_fail_clearly(core, ledger):
    with pytest.raises(KeyError, match="unknown node 'z'"):
        ledger.node_index("z")
    with pytest.raises(KeyError, match="unknown node"):
        ledger.request("z", {"cpu": 1})
    with pytest.raises(KeyError):
        ledger.unregister("z")
    with pytest.raises(IndexError, match="out of range"):
        ledger.node_name(2)
    with pytest.raises(IndexError, match="out of range"):
        ledger.request_vec(5, np.zeros(1))


def test_request_is_all_or_nothing(ledger):
    assert ledger.request("a", {"cpu": 3, "memory": 1000})
    assert not ledger.request("a", {"cpu": 2, "memory": 10})  # cpu would overflow: nothing taken
    assert ledger.used("a") == {"cpu": 3.0, "memory": 1000.0}
    assert ledger.free("a") == {"cpu": 1.0, "memory": 7000.0}


def test_never_over_commits(ledger):
    placed = 0
    while ledger.request("b", {"cpu": 3, "gpu": 0.5}):
        placed += 1
    assert placed == 4  # the gpu runs out first
    used = ledger.used_matrix()
    assert np.all(used <= ledger.capacity_matrix())
    assert ledger.used("b") == {"cpu": 12.0, "gpu": 2.0}


def test_release_subtracts_and_clamps_at_zero(ledger):
    ledger.request("a", {"cpu": 2})
    ledger.release("a", {"cpu": 1})
    assert ledger.used("a") == {"cpu": 1.0}
    ledger.release("a", {"cpu": 5, "memory": 100})
    assert ledger.used("a") == {}
    assert ledger.free("a") == {"cpu": 4.0, "memory": 8000.0}


def test_reregister_keeps_claims(ledger):
    assert ledger.request("b", {"cpu": 10, "gpu": 1})
    ledger.register("b", {"cpu": 12, "memory": 1000})  # gpu no longer declared
    assert ledger.nodes == ["a", "b"]
    assert ledger.capacity("b") == {"cpu": 12.0, "memory": 1000.0}
    assert ledger.used("b") == {"cpu": 10.0, "gpu": 1.0}
    assert not ledger.available("b", {"cpu": 3})
    assert ledger.available("b", {"cpu": 2})
    ledger.register("b", {"cpu": 8})  # shrunk below the claim: free is 0, nothing fits
    assert ledger.free("b") == {"cpu": 0.0}
    assert not ledger.available("b", {"cpu": 1})
    assert ledger.available("b", {})  # a function that needs nothing still fits


def test_unregister_keeps_the_order_of_the_rest(core, ledger):
    ledger.register("c", {"cpu": 1})
    ledger.request("c", {"cpu": 1})
    ledger.unregister("a")
    assert ledger.nodes == ["b", "c"]
    assert ledger.node_index("c") == 1
    assert ledger.used("c") == {"cpu": 1.0}
    ledger.register("a", {"cpu": 4})
    assert ledger.nodes == ["b", "c", "a"]
    assert ledger.used("a") == {}


def test_unknown_resource_fits_nowhere(ledger):
    assert not ledger.available("b", {"tpu": 1})
    assert not ledger.request("b", {"tpu": 1})
    assert "tpu" in ledger.resources
    assert not ledger.fits_total({"tpu": 1})
    assert ledger.fitting_nodes_total({"tpu": 1}) == []
    assert ledger.capacity("b") == {"cpu": 16.0, "memory": 64000.0, "gpu": 2.0}


def test_fits_total_ignores_claims(ledger):
    ledger.request("b", {"gpu": 2})
    assert ledger.fits_total({"gpu": 2})
    assert not ledger.fits_total({"gpu": 3})
    assert ledger.fitting_nodes_total({"cpu": 4}) == ["a", "b"]
    assert ledger.fitting_nodes_total({"cpu": 5}) == ["b"]
    assert ledger.fitting_nodes_total(None) == ["a", "b"]


def test_capacities(ledger):
    assert ledger.capacities() == {
        "a": {"cpu": 4.0, "memory": 8000.0},
        "b": {"cpu": 16.0, "memory": 64000.0, "gpu": 2.0},
    }


@pytest.mark.parametrize("bad", [-1, math.inf, math.nan])
def test_bad_capacity_is_rejected_without_change(core, ledger, bad):
    with pytest.raises(ValueError, match="capacity of 'cpu' on node 'c'"):
        ledger.register("c", {"new": 1, "cpu": bad})
    assert ledger.nodes == ["a", "b"]
    assert ledger.resources == ["cpu", "memory", "gpu"]


@pytest.mark.parametrize("bad", [-0.5, math.inf, math.nan])
def test_bad_request_is_rejected(ledger, bad):
    with pytest.raises(ValueError, match="'cpu' must be a finite number >= 0"):
        ledger.request("a", {"cpu": bad})
    with pytest.raises(ValueError, match="'cpu' must be a finite number >= 0"):
        ledger.request_vec(0, np.array([bad]))
    assert ledger.used("a") == {}


def test_rounding_does_not_refuse_an_exact_fit(core):
    led = core.ResourceLedger()
    led.register("n", {"cpu": 0.3, "memory": 3e10})
    assert led.request("n", {"cpu": 0.1, "memory": 1e10})
    assert led.request("n", {"cpu": 0.2, "memory": 2e10})  # 0.1 + 0.2 > 0.3 in floats
    assert not led.request("n", {"cpu": 1e-6})


def test_resource_vector(core, ledger):
    vec = ledger.resource_vector({"gpu": 1, "cpu": 2})
    assert vec.dtype == np.float64
    assert vec.tolist() == [2.0, 0.0, 1.0]
    assert ledger.resource_vector(None).tolist() == [0.0, 0.0, 0.0]
    assert ledger.resource_vector({"disk": 5}).tolist() == [0.0, 0.0, 0.0, 5.0]
    assert ledger.resources == ["cpu", "memory", "gpu", "disk"]


def test_vector_forms_zero_pad_short_vectors(ledger):
    assert ledger.available_vec(0, np.array([4.0]))
    assert not ledger.available_vec(0, np.array([4.5]))
    assert ledger.request_vec(0, [3.0, 1000.0])
    assert not ledger.request_vec(0, np.array([2.0]))
    assert ledger.used("a") == {"cpu": 3.0, "memory": 1000.0}
    ledger.release_vec(0, np.array([1.0]))
    assert ledger.used("a") == {"cpu": 2.0, "memory": 1000.0}
    assert ledger.request_vec(1, np.array([], dtype=np.float64))
    with pytest.raises(ValueError, match="4 entries but the ledger has 3 resources"):
        ledger.request_vec(0, np.zeros(4))
    with pytest.raises(ValueError, match="1-D"):
        ledger.request_vec(0, np.zeros((1, 2)))


def test_empty_ledger(core):
    led = core.ResourceLedger()
    assert led.nodes == [] and led.resources == []
    assert led.capacities() == {}
    assert not led.fits_total({"cpu": 1})
    assert not led.fits_total(None)
    assert led.capacity_matrix().shape == (0, 1)  # the query added the "cpu" column

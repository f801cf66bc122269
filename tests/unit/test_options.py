"""Option ranges: run options, per-function options and result timeouts name their valid range."""

from __future__ import annotations

import math

import pytest

import handoff
from handoff import DAG, Function
from handoff.dag import MAX_RETRIES, MAX_TIMEOUT

BAD_TIMEOUTS = [math.nan, math.inf, -math.inf, 1e300, MAX_TIMEOUT * 2, 0, -1, True, "5", [1]]
BAD_RETRIES = [-1, MAX_RETRIES + 1, 10**9, 2**63, 1.5, 3.0, True, "3", None]


def noop():
    return None


@pytest.fixture
def dag():
    return DAG().add_function(Function(id="f", code=noop))


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS)
def test_execute_rejects_a_bad_run_timeout_naming_the_range(dag, timeout):
    with pytest.raises(ValueError, match=r"timeout must be .*between 0 .* and 2592000"):
        handoff.execute(dag, timeout=timeout)


@pytest.mark.parametrize("retries", BAD_RETRIES)
def test_execute_rejects_absurd_max_retries_naming_the_range(dag, retries):
    with pytest.raises(ValueError, match=r"max_retries must be an int from 0 to 1000"):
        handoff.execute(dag, max_retries=retries)


@pytest.mark.parametrize("concurrency", [0, -3, 10**7, 1.0, True, "2", math.inf])
def test_execute_rejects_a_bad_max_concurrency_naming_the_range(dag, concurrency):
    with pytest.raises(ValueError, match=r"max_concurrency must be None or an int from 1 to 1000000"):
        handoff.execute(dag, max_concurrency=concurrency)


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS)
def test_function_timeout_out_of_range_is_an_invalid_function(timeout):
    with pytest.raises(handoff.InvalidFunctionError, match=r"timeout must be .*between 0 .* and 2592000") as info:
        DAG().add_function(Function(id="g", code=noop, timeout=timeout))
    assert info.value.function_id == "g"


@pytest.mark.parametrize("retries", [r for r in BAD_RETRIES if r is not None])
def test_function_max_retries_out_of_range_is_an_invalid_function(retries):
    with pytest.raises(handoff.InvalidFunctionError, match=r"max_retries must be an int from 0 to 1000") as info:
        DAG().add_function(Function(id="g", code=noop, max_retries=retries))
    assert info.value.function_id == "g"


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS + [None])
def test_get_result_and_synchronize_reject_a_bad_timeout(timeout):
    with pytest.raises(ValueError, match=r"timeout must be .*between 0 .* and 2592000"):
        handoff.get_result("d", "k", timeout=timeout)
    with pytest.raises(ValueError, match=r"timeout must be .*between 0 .* and 2592000"):
        handoff.synchronize("d", ["k"], timeout=timeout)


def test_synchronize_takes_a_list_of_ids():
    with pytest.raises(TypeError, match="function_ids"):
        handoff.synchronize("d", "k")


def test_numpy_integers_count_as_ints():
    import numpy as np

    DAG().add_function(Function(id="g", code=noop, max_retries=np.int64(2))).validate()


@pytest.mark.parametrize("timeout, retries", [
    (1e-3, 0), (0.5, 1), (MAX_TIMEOUT, MAX_RETRIES), (30 * 24 * 3600, 1000), (7, 999),
])
def test_values_in_range_are_accepted(timeout, retries):
    DAG().add_function(Function(id="g", code=noop, timeout=timeout, max_retries=retries)).validate()


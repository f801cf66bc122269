"""allocate() of handoff._core, run against both implementations (the ``core`` fixture).

Expected nodes are worked out by hand in the comments.
"""

import numpy as np
import pytest

A, B, C = 0, 1, 2


@pytest.fixture
def ledger(core):
    """a: cpu 4, mem 8; b: cpu 16, mem 64, gpu 2; c: cpu 8, mem 16. Columns: cpu, mem, gpu."""
    led = core.ResourceLedger()
    led.register("a", {"cpu": 4, "mem": 8})
    led.register("b", {"cpu": 16, "mem": 64, "gpu": 2})
    led.register("c", {"cpu": 8, "mem": 16})
    return led


def run(core, ledger, reqs, strategy, pinned=None, claim=True):
    """allocate() as a list; ragged rows are zero-padded to the longest, like short vectors."""
    if isinstance(reqs, list):
        width = max((len(r) for r in reqs), default=0)
        reqs = [list(r) + [0] * (width - len(r)) for r in reqs]
    reqs = np.array(reqs, dtype=np.float64)
    pins = None if pinned is None else np.array(pinned, dtype=np.int64)
    out = core.allocate(ledger, reqs, pins, strategy, claim)
    assert out.dtype == np.int64
    return out.tolist()


def test_strategy_names(core):
    assert core.STRATEGIES == ("first_available", "load_balanced", "cost_optimized")


def test_first_available_takes_the_first_node_with_room(core, ledger):
    # cpu 2 -> a (4 free); cpu 6 -> b; gpu 1 -> b; cpu 2 -> a (2 left); cpu 1 -> b (a is full)
    reqs = [[2, 0, 0], [6, 0, 0], [0, 0, 1], [2, 0, 0], [1, 0, 0]]
    assert run(core, ledger, reqs, "first_available") == [A, B, B, A, B]
    assert ledger.used("a") == {"cpu": 4.0}
    assert ledger.used("b") == {"cpu": 7.0, "gpu": 1.0}
    assert ledger.used("c") == {}


def test_load_balanced_minimizes_the_fullest_resource(core, ledger):
    # cpu 2, mem 2 on an empty cluster: a max(2/4, 2/8) = .5, b max(2/16, 2/64, 0/2) = .125,
    # c max(2/8, 2/16) = .25 -> b.
    assert run(core, ledger, [[2, 2, 0]], "load_balanced") == [B]


def test_load_balanced_sees_earlier_claims_and_breaks_ties_low(core, ledger):
    # cpu 8: a does not fit; b 8/16 = .5, c 8/8 = 1 -> b (cpu 8 used).
    # cpu 8: b 16/16 = 1, c 8/8 = 1 -> tie, lowest index -> b (cpu 16 used).
    # cpu 4: a 4/4 = 1, b does not fit, c 4/8 = .5 -> c.
    assert run(core, ledger, [[8], [8], [4]], "load_balanced") == [B, B, C]


def test_load_balanced_counts_resources_the_function_does_not_use(core, ledger):
    ledger.request("b", {"gpu": 2})  # b's gpu is fully used: its load is 1 whatever it runs
    # cpu 1: a max(1/4, 0) = .25, b max(1/16, 0, 2/2) = 1, c 1/8 = .125 -> c
    assert run(core, ledger, [[1]], "load_balanced") == [C]


def test_cost_optimized_is_best_fit(core, ledger):
    # Score (fit, spare): fit = sum of (free - req) / cap over the requested resources,
    # spare = sum of free / cap over the others; compared fit first.
    # cpu 4: fit a = (4-4)/4 = 0; b = 12/16 = .75; c = 4/8 = .5 -> a
    # cpu 4: a no longer fits; b = .75, c = .5 -> c
    # cpu 4, mem 16: a is full; b = 12/16 + 48/64 = 1.5; c = (4-4)/8 + (16-16)/16 = 0 -> c
    assert run(core, ledger, [[4], [4], [4, 16]], "cost_optimized") == [A, C, C]


def test_cost_optimized_scores_only_the_requested_resources_first(core):
    led = core.ResourceLedger()
    led.register("a", {"cpu": 2, "memory": 1000})
    led.register("b", {"cpu": 2, "gpu": 1})
    led.register("c", {"cpu": 4})  # columns: cpu, memory, gpu
    # cpu 1: fit a = 1/2 = .5, b = 1/2 = .5, c = 3/4 = .75 -> a or b;
    #        spare a = 1000/1000 = 1 (memory), b = 1/1 = 1 (gpu) -> exact tie -> a (lowest index).
    # (The old all-resources slack, a 1.5, b 1.5, c .75, sent it to the biggest node, c.)
    assert run(core, led, [[1]], "cost_optimized", claim=False) == [A]
    # cpu 1 x 4: a (as above); a fit 0/2 = 0 -> a (a's cpu is now full);
    # b .5 vs c .75 -> b, the tighter fit wins although its gpu counts against it only in spare;
    # b 0 vs c .75 -> b.
    assert run(core, led, [[1]] * 4, "cost_optimized") == [A, A, B, B]
    assert led.used("c") == {}


def test_cost_optimized_keeps_the_gpu_node_free(core):
    led = core.ResourceLedger()
    led.register("gpu-box", {"cpu": 8, "gpu": 1})
    led.register("cpu-box", {"cpu": 8})
    # cpu 2: fit 6/8 = .75 on both; spare gpu-box 1/1 = 1, cpu-box 0 -> cpu-box.
    # first_available picks gpu-box.
    assert run(core, led, [[2]], "cost_optimized", claim=False) == [1]
    assert run(core, led, [[2]], "first_available", claim=False) == [0]
    # a gpu function can only go to gpu-box
    assert run(core, led, [[1, 1]], "cost_optimized") == [0]


def test_cost_optimized_ties_on_fit_go_to_the_node_without_the_gpu(core):
    led = core.ResourceLedger()
    led.register("x", {"cpu": 2})
    led.register("y", {"cpu": 2, "gpu": 1})
    # cpu 1: fit x = y = 1/2; spare x 0, y 1/1 = 1 -> x.
    # cpu 1: fit x = 0/2 = 0, y = .5 -> x.  cpu 1: x is full -> y.
    assert run(core, led, [[1]] * 3, "cost_optimized") == [0, 0, 1]
    # gpu 1 (cpu 0): only y has a gpu; its fit (1-1)/1 = 0
    assert run(core, led, [[0, 1]], "cost_optimized") == [1]


def test_cost_optimized_zero_cost_goes_to_the_least_free_node(core, ledger):
    # Nothing requested: fit is 0 everywhere, so spare decides.
    # empty cluster: a 4/4 + 8/8 = 2, b 1 + 1 + 1 = 3, c 1 + 1 = 2 -> tie a, c -> a
    assert run(core, ledger, [[0, 0, 0]], "cost_optimized", claim=False) == [A]
    ledger.request("c", {"cpu": 4})
    # c: 4/8 + 16/16 = 1.5 < a 2 < b 3 -> c
    assert run(core, ledger, [[0, 0, 0]], "cost_optimized", claim=False) == [C]
    assert run(core, ledger, np.zeros((1, 0)), "cost_optimized", claim=False) == [C]


def test_cost_optimized_spare_counts_free_not_capacity(core):
    led = core.ResourceLedger()
    led.register("p", {"cpu": 2, "gpu": 1})
    led.register("q", {"cpu": 2, "gpu": 2})
    # cpu 1: fit p = q = 1/2; spare p = 1/1 = 1, q = 2/2 = 1 -> tie -> p
    assert run(core, led, [[1]], "cost_optimized", claim=False) == [0]
    led.request("q", {"gpu": 1})
    # cpu 1: fit still .5 on both; spare q = 1/2 = .5 < p 1 -> q
    assert run(core, led, [[1]], "cost_optimized", claim=False) == [1]
    # cpu 1, gpu 1: fit p = 1/2 + 0/1 = .5, q = 1/2 + 0/2 = .5; nothing unrequested -> p
    assert run(core, led, [[1, 1]], "cost_optimized", claim=False) == [0]


@pytest.mark.parametrize("strategy", ["first_available", "load_balanced", "cost_optimized"])
def test_pins_go_where_told_or_nowhere(core, ledger, strategy):
    # pinned to c: fits; pinned to a with cpu 5: a cannot hold it, so -1 though b could.
    reqs = [[5, 0, 0], [5, 0, 0], [0, 0, 1]]
    assert run(core, ledger, reqs, strategy, pinned=[C, A, -1]) == [C, -1, B]
    assert ledger.used("a") == {}
    assert ledger.used("c") == {"cpu": 5.0}


@pytest.mark.parametrize("strategy", ["first_available", "load_balanced", "cost_optimized"])
def test_claim_false_leaves_the_ledger_alone(core, ledger, strategy):
    before = ledger.used_matrix()
    out = run(core, ledger, [[4, 8, 0]] * 3, strategy, claim=False)
    assert out == [out[0]] * 3  # each sees the same free resources
    assert np.array_equal(ledger.used_matrix(), before)


@pytest.mark.parametrize("strategy", ["first_available", "load_balanced", "cost_optimized"])
def test_nothing_fits_gives_minus_one_and_claims_nothing(core, ledger, strategy):
    assert run(core, ledger, [[17], [0, 0, 3], [0, 100]], strategy) == [-1, -1, -1]
    assert not ledger.used_matrix().any()


@pytest.mark.parametrize("strategy", ["first_available", "load_balanced", "cost_optimized"])
def test_fills_the_cluster_without_over_committing(core, ledger, strategy):
    out = run(core, ledger, [[1, 1, 0]] * 40, strategy)
    assert out.count(-1) == 40 - 28  # 4 + 16 + 8 cpus
    assert np.all(ledger.used_matrix() <= ledger.capacity_matrix())


def test_short_request_vectors_are_zero_padded(core, ledger):
    ledger.resource_vector({"fpga": 1})  # a fourth resource no node has
    assert run(core, ledger, [[1]], "cost_optimized") == [A]
    assert run(core, ledger, np.zeros((2, 0)), "first_available") == [A, A]
    assert run(core, ledger, [[0, 0, 0, 1]], "first_available") == [-1]


def test_empty_batch(core, ledger):
    assert run(core, ledger, np.zeros((0, 3)), "load_balanced") == []


def test_no_nodes(core):
    led = core.ResourceLedger()
    assert run(core, led, np.zeros((2, 0)), "first_available") == [-1, -1]


def test_bad_arguments(core, ledger):
    reqs = np.ones((1, 1))
    with pytest.raises(ValueError, match="first_available, load_balanced, cost_optimized"):
        core.allocate(ledger, reqs, None, "round_robin")
    with pytest.raises(ValueError, match="4 resource columns but the ledger has 3"):
        core.allocate(ledger, np.ones((1, 4)), None, "first_available")
    with pytest.raises(ValueError, match="2-D"):
        core.allocate(ledger, np.ones(3), None, "first_available")
    with pytest.raises(ValueError, match=">= 0"):
        core.allocate(ledger, -reqs, None, "first_available")
    with pytest.raises(ValueError, match=">= 0"):
        core.allocate(ledger, reqs * np.nan, None, "first_available")
    with pytest.raises(ValueError, match="one per row"):
        core.allocate(ledger, reqs, np.array([-1, -1]), "first_available")
    with pytest.raises(ValueError, match=r"-1 or in \[0, 3\)"):
        core.allocate(ledger, reqs, np.array([3]), "first_available")
    with pytest.raises(TypeError):
        core.allocate({"a": {"cpu": 1}}, reqs, None, "first_available")


# -- rank_nodes ------------------------------------------------------------------------------


def test_rank_nodes_puts_nodes_with_room_first_then_by_score(core, ledger):
    # cpu 6 on a (cpu 4, no room), b (cpu 16), c (cpu 8):
    # load_balanced: b 6/16 < c 6/8, then a; cost_optimized: c (2/8 left + spare mem 1) beats
    # b (10/16 left), then a; first_available: room first (b, c) in the order given, then a.
    v = ledger.resource_vector({"cpu": 6})
    assert core.rank_nodes(ledger, v, [A, B, C], "load_balanced").tolist() == [B, C, A]
    assert core.rank_nodes(ledger, v, [A, B, C], "cost_optimized").tolist() == [C, B, A]
    assert core.rank_nodes(ledger, v, [C, A, B], "first_available").tolist() == [C, B, A]
    assert core.rank_nodes(ledger, v, [A], "cost_optimized").tolist() == [A]
    assert core.rank_nodes(ledger, v, [], "cost_optimized").tolist() == []
    assert ledger.used("b") == {}  # ranking claims nothing


def test_rank_nodes_breaks_exact_ties_by_spare_then_by_the_order_given(core):
    led = core.ResourceLedger()
    led.register("x", {"cpu": 4, "gpu": 1})
    led.register("y", {"cpu": 4})
    led.register("z", {"cpu": 4})
    v = led.resource_vector({"cpu": 2})
    # equal cpu leftovers; x keeps its free gpu for work that needs it, so it comes last
    assert core.rank_nodes(led, v, [0, 1, 2], "cost_optimized").tolist() == [1, 2, 0]
    assert core.rank_nodes(led, v, [2, 0, 1], "cost_optimized").tolist() == [2, 1, 0]
    assert core.rank_nodes(led, v, [2, 1, 0], "load_balanced").tolist() == [2, 1, 0]


def test_rank_nodes_names_the_valid_strategies(core, ledger):
    with pytest.raises(ValueError, match="first_available, load_balanced, cost_optimized"):
        core.rank_nodes(ledger, [1.0], [A], "cheapest")

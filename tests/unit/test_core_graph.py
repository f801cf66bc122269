"""Graph kernels of handoff._core, run against both implementations (the ``core`` fixture)."""

import itertools
import re

import numpy as np
import pytest


def csr(deps):
    """CSR arrays from a list of dependency lists."""
    indptr = np.zeros(len(deps) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(d) for d in deps])
    indices = np.array([d for ds in deps for d in ds], dtype=np.int64)
    return len(deps), indptr, indices


def chain(n):
    """Function i depends on i - 1: a chain n long."""
    indptr = np.concatenate([[0], np.arange(n, dtype=np.int64)]).astype(np.int64)
    indices = np.arange(n - 1, dtype=np.int64)
    return n, indptr, indices


def assert_is_cycle(cycle, deps):
    assert cycle[0] == cycle[-1]
    assert len(cycle) >= 2
    for a, b in itertools.pairwise(cycle):
        assert b in deps[a], f"{a} does not depend on {b}"


# -- reverse_csr -------------------------------------------------------------------------


def test_reverse_csr_lists_dependents_in_consumer_order(core):
    deps = [[], [0], [0, 1], [1, 0], []]
    rindptr, rindices = core.reverse_csr(*csr(deps))
    assert rindptr.dtype == np.int64 and rindices.dtype == np.int64
    got = [rindices[rindptr[i] : rindptr[i + 1]].tolist() for i in range(5)]
    assert got == [[1, 2, 3], [2, 3], [], [], []]


def test_reverse_csr_keeps_duplicates(core):
    rindptr, rindices = core.reverse_csr(*csr([[], [0, 0], [0]]))
    assert rindptr.tolist() == [0, 3, 3, 3]
    assert rindices.tolist() == [1, 1, 2]


def test_reverse_csr_empty_graph(core):
    rindptr, rindices = core.reverse_csr(0, np.zeros(1, np.int64), np.zeros(0, np.int64))
    assert rindptr.tolist() == [0]
    assert rindices.tolist() == []


def test_kernels_accept_read_only_and_non_int64_input(core):
    n, indptr, indices = csr([[], [0], [1]])
    indptr = indptr.astype(np.int32)
    indices.setflags(write=False)
    assert core.topological_order(n, indptr, indices).tolist() == [0, 1, 2]
    assert core.find_cycle(n, indptr, indices) is None


@pytest.mark.parametrize(
    "n, indptr, indices, message",
    [
        (-1, [0], [], "n must be >= 0"),
        (2, [0, 1], [0], "n + 1 = 3 entries"),
        (2, [1, 1, 1], [0], "indptr[0] must be 0"),
        (2, [0, 2, 1], [0, 0], "non-decreasing"),
        (2, [0, 1, 3], [0, 1], "exceeds len(indices)"),
        (2, [0, 0, 1], [2], "function 1 depends on 2, outside [0, 2)"),
        (2, [0, 1, 1], [-1], "function 0 depends on -1"),
    ],
)
def test_malformed_csr_is_rejected(core, n, indptr, indices, message):
    for kernel in (core.reverse_csr, core.find_cycle, core.topological_order, core.levels):
        with pytest.raises(ValueError, match=re.escape(message)):
            kernel(n, np.array(indptr), np.array(indices))


# -- find_cycle --------------------------------------------------------------------------


def test_acyclic_graph_has_no_cycle(core):
    assert core.find_cycle(*csr([[], [0], [0, 1], [2, 1]])) is None
    assert core.find_cycle(0, np.zeros(1, np.int64), np.zeros(0, np.int64)) is None


def test_self_dependency_is_a_two_element_cycle(core):
    cycle = core.find_cycle(*csr([[], [1]]))
    assert cycle.dtype == np.int64
    assert cycle.tolist() == [1, 1]


def test_two_cycle(core):
    assert core.find_cycle(*csr([[1], [0]])).tolist() == [0, 1, 0]


def test_long_cycle_path_follows_dependencies(core):
    n = 1000
    deps = [[(i + 1) % n] for i in range(n)]
    cycle = core.find_cycle(*csr(deps))
    assert cycle.tolist() == list(range(n)) + [0]


def test_cycle_reachable_only_from_a_later_start(core):
    # 0..4 form an acyclic diamond; 6 -> 7 -> 8 -> 9 -> 7 is found when the DFS starts at 5.
    deps = [[], [0], [0], [1, 2], [3], [6], [7], [8], [9], [7]]
    cycle = core.find_cycle(*csr(deps))
    assert cycle.tolist() == [7, 8, 9, 7]
    assert_is_cycle(cycle.tolist(), deps)


def test_first_cycle_in_dfs_order_is_returned(core):
    # Two cycles; the DFS from 0 visits 1 first (listed order) and finds 1 <-> 2 before 3 <-> 4.
    deps = [[1, 3], [2], [1], [4], [3]]
    assert core.find_cycle(*csr(deps)).tolist() == [1, 2, 1]


def test_million_chain_needs_no_recursion(core):
    n, indptr, indices = chain(1_000_000)
    assert core.find_cycle(n, indptr, indices) is None
    # Close the chain: 0 depends on n - 1, a cycle through every function.
    indices = np.concatenate([[n - 1], indices]).astype(np.int64)
    indptr = np.arange(n + 1, dtype=np.int64)
    cycle = core.find_cycle(n, indptr, indices)
    assert len(cycle) == n + 1
    assert cycle[0] == cycle[-1] == 0 and cycle[1] == n - 1 and cycle[-2] == 1


# -- topological_order and levels --------------------------------------------------------


def test_topological_order_is_kahn_fifo_in_index_order(core):
    deps = [[2], [], [], [0, 1], [1]]
    assert core.topological_order(*csr(deps)).tolist() == [1, 2, 4, 0, 3]


def test_topological_order_puts_every_dependency_first(core):
    rng = np.random.default_rng(7)
    n = 300
    perm = rng.permutation(n)  # random labels over a DAG built in rank order
    rank_deps = [
        rng.choice(r, size=min(r, rng.integers(0, 4)), replace=False).tolist() if r else []
        for r in range(n)
    ]
    deps = [[] for _ in range(n)]
    for r, ds in enumerate(rank_deps):
        deps[perm[r]] = [int(perm[d]) for d in ds]
    order = core.topological_order(*csr(deps))
    assert sorted(order.tolist()) == list(range(n))
    position = {f: k for k, f in enumerate(order.tolist())}
    for f, ds in enumerate(deps):
        for d in ds:
            assert position[d] < position[f]


def test_topological_order_is_short_on_a_cycle(core):
    deps = [[], [0, 3], [1], [2], [0]]
    order = core.topological_order(*csr(deps))
    assert order.tolist() == [0, 4]


def test_million_chain_order_and_levels(core):
    n, indptr, indices = chain(1_000_000)
    order = core.topological_order(n, indptr, indices)
    assert np.array_equal(order, np.arange(n))
    assert np.array_equal(core.levels(n, indptr, indices), np.arange(n))


def test_levels(core):
    deps = [[], [0], [0], [1, 2], [], [4, 3], [0, 0]]
    lv = core.levels(*csr(deps))
    assert lv.dtype == np.int64
    assert lv.tolist() == [0, 1, 1, 2, 0, 3, 1]


def test_levels_reject_a_cycle(core):
    with pytest.raises(ValueError, match="acyclic"):
        core.levels(*csr([[1], [0]]))


# -- ReadyTracker ------------------------------------------------------------------------


def tracker(core, deps, inline=()):
    mask = np.zeros(len(deps), np.uint8)
    mask[list(inline)] = 1
    return core.ReadyTracker(*csr(deps), mask)


def test_tracker_plain_dag(core):
    t = tracker(core, [[], [], [0, 1], [2], [2]])
    assert t.initial().tolist() == [0, 1]
    assert t.remaining == 5
    assert t.complete(1).tolist() == []
    assert t.complete(0).tolist() == [2]
    assert t.is_ready(2) and not t.is_ready(3)
    assert t.complete(2).tolist() == [3, 4]
    assert t.is_complete(2) and not t.is_ready(2)
    assert t.remaining == 2


def test_tracker_duplicate_dependency_counts_once_per_listing(core):
    t = tracker(core, [[], [0, 0]])
    assert t.initial().tolist() == [0]
    assert t.complete(0).tolist() == [1]


def test_tracker_regular_inline_regular(core):
    # 0 (regular) -> 1 (inline) -> 2 (regular): 2 waits for 0.
    t = tracker(core, [[], [0], [1]], inline=[1])
    assert t.initial().tolist() == [0]
    assert t.remaining == 2
    assert not t.is_ready(1) and not t.is_complete(1)
    assert t.complete(0).tolist() == [2]
    assert t.complete(2).tolist() == []
    assert t.remaining == 0


def test_tracker_inline_chain(core):
    # 0 -> 1 (inline) -> 2 (inline) -> 3; 3 also reads 1 directly.
    t = tracker(core, [[], [0], [1], [2, 1]], inline=[1, 2])
    assert t.initial().tolist() == [0]
    assert t.complete(0).tolist() == [3]


def test_tracker_inline_without_dependencies_is_transparent(core):
    # 1 (inline, no deps) feeds 2, so 2 is ready at once; 3 also waits for 0.
    t = tracker(core, [[], [], [1], [1, 0]], inline=[1])
    assert t.initial().tolist() == [0, 2]
    assert t.complete(2).tolist() == []
    assert t.complete(0).tolist() == [3]


def test_tracker_diamond_through_inline(core):
    # 0 feeds inline 1 and inline 2; 3 reads both, so it counts two paths to 0 and is reported once.
    t = tracker(core, [[], [0], [0], [1, 2]], inline=[1, 2])
    assert t.initial().tolist() == [0]
    assert t.complete(0).tolist() == [3]
    assert t.remaining == 1


def test_tracker_mixed_diamond_waits_for_every_producer(core):
    # 3 reads inline 2, which reads regulars 0 and 1.
    t = tracker(core, [[], [], [0, 1], [2]], inline=[2])
    assert t.initial().tolist() == [0, 1]
    assert t.complete(0).tolist() == []
    assert not t.is_ready(3)
    assert t.complete(1).tolist() == [3]


def test_tracker_reports_in_walk_order(core):
    # 0's dependents in index order: 1 (inline, feeding 4) then 2, 3; the walk goes depth-first.
    t = tracker(core, [[], [0], [0], [0], [1]], inline=[1])
    assert t.complete(0).tolist() == [4, 2, 3]


def test_tracker_errors(core):
    t = tracker(core, [[], [0], [1], [1]], inline=[1])
    with pytest.raises(ValueError, match="inline"):
        t.complete(1)
    with pytest.raises(ValueError, match="out of range"):
        t.complete(4)
    with pytest.raises(ValueError, match="out of range"):
        t.complete(-1)
    with pytest.raises(ValueError, match="out of range"):
        t.is_ready(9)
    with pytest.raises(ValueError, match="not ready"):
        t.complete(2)
    t.complete(0)
    with pytest.raises(ValueError, match="already completed"):
        t.complete(0)
    assert t.remaining == 2


def test_tracker_rejects_cycles_and_bad_masks(core):
    with pytest.raises(ValueError, match="acyclic"):
        tracker(core, [[1], [0]], inline=[1])
    with pytest.raises(ValueError, match="inline must be 1-D"):
        core.ReadyTracker(*csr([[], [0]]), np.zeros(3, np.uint8))


def test_tracker_runs_a_long_chain_with_inline_links(core):
    n, indptr, indices = chain(200_000)
    inline = np.zeros(n, np.uint8)
    inline[1::2] = 1  # every other function inline
    t = core.ReadyTracker(n, indptr, indices, inline)
    ready = t.initial().tolist()
    done = 0
    while ready:
        nxt = []
        for i in ready:
            nxt.extend(t.complete(i).tolist())
            done += 1
        ready = nxt
    assert done == n // 2 and t.remaining == 0

"""Allocation strategies: a node for each function of a batch, and nodes ranked for one function.

Both use the same scores; the loops over nodes x resources run in C on the ledger's matrices.
"""

import numpy as np

from libc.stdint cimport int64_t
from libc.math cimport isfinite

from handoff._core.ledger cimport ResourceLedger, slack_for
from handoff._core.strategies import STRATEGIES

cdef enum Strategy:
    FIRST_AVAILABLE = 0
    LOAD_BALANCED = 1
    COST_OPTIMIZED = 2


cdef double _load_after(
    ResourceLedger ledger, Py_ssize_t j, const double* v, Py_ssize_t k
) noexcept nogil:
    """Highest (used + req) / capacity over the resources node j declares."""
    cdef Py_ssize_t r
    cdef double c, x, worst = 0.0
    for r in range(ledger._r):
        c = ledger._cap[j, r]
        if c > 0:
            x = (ledger._used[j, r] + (v[r] if r < k else 0.0)) / c
            if x > worst:
                worst = x
    return worst


cdef double _fit_after(
    ResourceLedger ledger, Py_ssize_t j, const double* v, Py_ssize_t k, double* spare
) noexcept nogil:
    """Best-fit score of node j for requirement v: (primary, secondary), smaller is tighter.

    Returns the primary, the sum of (free - req) / capacity over the resources the function
    requests (req > 0) that node j declares (capacity > 0): the normalized leftover of what it
    uses. Stores in spare the secondary, the sum of free / capacity over the declared resources
    it does not request, so a node whose other resources (a gpu, say) are free is kept for the
    functions that need them. Both sums run in column order.
    """
    cdef Py_ssize_t r
    cdef double c, x, fit = 0.0, rest = 0.0
    for r in range(ledger._r):
        c = ledger._cap[j, r]
        if c > 0:
            x = v[r] if r < k else 0.0
            if x > 0:
                fit += ((c - ledger._used[j, r]) - x) / c
            else:
                rest += (c - ledger._used[j, r]) / c
    spare[0] = rest
    return fit


cdef Strategy _strategy(str name) except *:
    if name == "first_available":
        return FIRST_AVAILABLE
    if name == "load_balanced":
        return LOAD_BALANCED
    if name == "cost_optimized":
        return COST_OPTIMIZED
    raise ValueError(f"unknown allocation strategy {name!r}; valid: {', '.join(STRATEGIES)}")


def allocate(ResourceLedger ledger not None, reqs, pinned, str strategy, bint claim=True):
    """Choose a node for each row of reqs, in order; -1 where no node has the free resources now.

    Parameters
    ----------
    ledger : ResourceLedger
        Capacities and current claims; with ``claim`` true each placement is claimed on it,
        so later rows see earlier ones.
    reqs : float64[m, R']
        Requirement per function over the ledger's first R' resources (the rest are 0).
    pinned : int64[m] or None
        Node index a function must go to, or -1 to let the strategy choose.
    strategy : str
        One of STRATEGIES: ``first_available`` takes the lowest-index node with room;
        ``load_balanced`` the node whose fullest declared resource, (used + req) / capacity,
        is lowest; ``cost_optimized`` (best fit) the node with the smallest normalized leftover
        of the resources the function requests, sum of (free - req) / capacity, then, among
        exact ties, the least free of the resources it does not request, sum of
        free / capacity. Scores compare exactly; remaining ties go to the lowest index.
    claim : bool
        Whether to claim the chosen resources on the ledger.

    Returns
    -------
    int64[m]
        Node index per function, or -1.
    """
    cdef Strategy s = _strategy(strategy)
    req_arr = np.ascontiguousarray(reqs, dtype=np.float64)
    if req_arr.ndim != 2:
        raise ValueError(f"reqs must be 2-D (functions x resources), got shape {req_arr.shape}")
    cdef Py_ssize_t m = req_arr.shape[0], k = req_arr.shape[1], n = ledger._n
    if k > ledger._r:
        raise ValueError(f"reqs has {k} resource columns but the ledger has {ledger._r} resources")
    if not np.isfinite(req_arr).all() or (req_arr < 0).any():
        raise ValueError("reqs must be finite numbers >= 0")
    if pinned is None:
        pin_arr = np.full(m, -1, dtype=np.int64)
    else:
        pin_arr = np.ascontiguousarray(pinned, dtype=np.int64)
    if pin_arr.ndim != 1 or pin_arr.shape[0] != m:
        raise ValueError(
            f"pinned must be 1-D with {m} entries (one per row of reqs), got shape {pin_arr.shape}"
        )
    if m and (pin_arr.min() < -1 or pin_arr.max() >= n):
        raise ValueError(f"pinned node indices must be -1 or in [0, {n})")

    out_arr = np.empty(m, dtype=np.int64)
    cdef const double[:, ::1] rq = req_arr
    cdef const int64_t[::1] pin = pin_arr
    cdef int64_t[::1] out = out_arr
    cdef Py_ssize_t f, j, best
    cdef const double* v
    cdef double score, best_score = 0.0, spare = 0.0, best_spare = 0.0
    with nogil:
        for f in range(m):
            v = &rq[f, 0] if k > 0 else NULL
            best = -1
            if pin[f] >= 0:
                if ledger._fits(pin[f], v, k):
                    best = pin[f]
            else:
                for j in range(n):
                    if not ledger._fits(j, v, k):
                        continue
                    if s == FIRST_AVAILABLE:
                        best = j
                        break
                    if s == LOAD_BALANCED:
                        score = _load_after(ledger, j, v, k)
                        if best < 0 or score < best_score:
                            best = j
                            best_score = score
                    else:
                        score = _fit_after(ledger, j, v, k, &spare)
                        if (
                            best < 0
                            or score < best_score
                            or (score == best_score and spare < best_spare)
                        ):
                            best = j
                            best_score = score
                            best_spare = spare
            out[f] = best
            if best >= 0 and claim:
                ledger._claim(best, v, k)
    return out_arr


def rank_nodes(ResourceLedger ledger not None, req, rows, str strategy):
    """The nodes in rows, best first for one function needing req: allocate's choice, then the rest.

    Parameters
    ----------
    ledger : ResourceLedger
        Capacities and current claims; nothing is claimed.
    req : float64[R']
        Requirement over the ledger's first R' resources (the rest are 0).
    rows : int64[p]
        Node indices to rank (a subset of the ledger's nodes, in any order).
    strategy : str
        One of STRATEGIES, scored as in ``allocate``.

    Returns
    -------
    int64[p]
        rows reordered: those with the free resources for req now first, then the others;
        within each part by the strategy's score (``first_available`` has none), then, for
        ``cost_optimized``, the spare share of the unrequested resources; ties keep the order
        of rows. So over every node in index order, the first entry is what ``allocate``
        picks when anything fits.
    """
    cdef Strategy s = _strategy(strategy)
    v_arr = np.ascontiguousarray(req, dtype=np.float64)
    if v_arr.ndim != 1:
        raise ValueError(f"req must be 1-D (resources), got shape {v_arr.shape}")
    cdef Py_ssize_t k = v_arr.shape[0], n = ledger._n
    if k > ledger._r:
        raise ValueError(f"req has {k} resources but the ledger has {ledger._r}")
    if not np.isfinite(v_arr).all() or (v_arr < 0).any():
        raise ValueError("req must be finite numbers >= 0")
    row_arr = np.ascontiguousarray(rows, dtype=np.int64)
    if row_arr.ndim != 1:
        raise ValueError(f"rows must be 1-D (node indices), got shape {row_arr.shape}")
    cdef Py_ssize_t p = row_arr.shape[0]
    if p and (row_arr.min() < 0 or row_arr.max() >= n):
        raise ValueError(f"rows must be node indices in [0, {n})")

    misfit_arr = np.empty(p, dtype=np.uint8)
    score_arr = np.zeros(p, dtype=np.float64)
    spare_arr = np.zeros(p, dtype=np.float64)
    cdef const double[::1] vv = v_arr
    cdef const int64_t[::1] row = row_arr
    cdef unsigned char[::1] misfit = misfit_arr
    cdef double[::1] score = score_arr
    cdef double[::1] spare = spare_arr
    cdef const double* v = &vv[0] if k > 0 else NULL
    cdef Py_ssize_t q, j
    with nogil:
        for q in range(p):
            j = row[q]
            misfit[q] = not ledger._fits(j, v, k)
            if s == LOAD_BALANCED:
                score[q] = _load_after(ledger, j, v, k)
            elif s == COST_OPTIMIZED:
                score[q] = _fit_after(ledger, j, v, k, &spare[q])
    return row_arr[np.lexsort((spare_arr, score_arr, misfit_arr))]

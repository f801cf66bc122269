"""Pure-Python twin of allocator.pyx: allocate and rank_nodes with the three strategies."""

from __future__ import annotations

from typing import Any

import numpy as np

from handoff._core._reference.ledger import ResourceLedger, _slack_for
from handoff._core.strategies import STRATEGIES

__all__ = ["allocate", "rank_nodes"]


def _check_call(fn: str, ledger: Any, strategy: str) -> None:
    """The strategy and ledger checks both entry points make, with the compiled errors."""
    if strategy not in STRATEGIES:
        raise ValueError(
            f"unknown allocation strategy {strategy!r}; valid: {', '.join(STRATEGIES)}"
        )
    if not isinstance(ledger, ResourceLedger):
        raise TypeError(
            f"{fn} needs a {ResourceLedger.__module__}.ResourceLedger, "
            f"got {type(ledger).__name__}"
        )


def allocate(
    ledger: ResourceLedger, reqs: Any, pinned: Any, strategy: str, claim: bool = True
) -> np.ndarray:
    """Choose a node for each row of reqs, in order; -1 where no node has the free resources now.

    Same contract as ``handoff._core.allocator.allocate``; scores (``_scores``) are summed
    resource by resource, in column order, as the C loop does, so ties break identically:
    the smallest (score, spare), then the lowest node index. Comparisons are exact.
    """
    _check_call("allocate", ledger, strategy)
    req_arr = np.ascontiguousarray(reqs, dtype=np.float64)
    if req_arr.ndim != 2:
        raise ValueError(f"reqs must be 2-D (functions x resources), got shape {req_arr.shape}")
    m, k = req_arr.shape
    n, nres = len(ledger._nodes), len(ledger._resources)
    if k > nres:
        raise ValueError(f"reqs has {k} resource columns but the ledger has {nres} resources")
    if not np.isfinite(req_arr).all() or (req_arr < 0).any():
        raise ValueError("reqs must be finite numbers >= 0")
    pin_arr = (
        np.full(m, -1, dtype=np.int64)
        if pinned is None
        else np.ascontiguousarray(pinned, dtype=np.int64)
    )
    if pin_arr.ndim != 1 or pin_arr.shape[0] != m:
        raise ValueError(
            f"pinned must be 1-D with {m} entries (one per row of reqs), got shape {pin_arr.shape}"
        )
    if m and (pin_arr.min() < -1 or pin_arr.max() >= n):
        raise ValueError(f"pinned node indices must be -1 or in [0, {n})")

    used = ledger._used  # updated in place when claiming
    out = np.full(m, -1, dtype=np.int64)
    for f in range(m):
        v = np.zeros(nres, dtype=np.float64)
        v[:k] = req_arr[f]
        pin = int(pin_arr[f])
        if pin >= 0:
            best = pin if ledger._fits(pin, v) else -1
        else:
            candidates = np.flatnonzero(_fitting_now(ledger, v))
            if candidates.size == 0:
                best = -1
            elif strategy == "first_available":
                best = int(candidates[0])
            else:
                score, spare = _scores(ledger, v, strategy)
                score_c = score[candidates]
                tied = candidates[score_c == score_c.min()]  # exact ties only, like the C `<`
                best = int(tied[np.argmin(spare[tied])])  # 0 for load_balanced: lowest index
        out[f] = best
        if best >= 0 and claim:
            used[best] += v
    return out


def rank_nodes(ledger: ResourceLedger, req: Any, rows: Any, strategy: str) -> np.ndarray:
    """The nodes in rows, best first for one function needing req: allocate's choice, then the rest.

    Same contract as ``handoff._core.allocator.rank_nodes``: nodes with the free resources
    first, then by the strategy's (score, spare), ties in the order of rows.
    """
    _check_call("rank_nodes", ledger, strategy)
    v_arr = np.ascontiguousarray(req, dtype=np.float64)
    if v_arr.ndim != 1:
        raise ValueError(f"req must be 1-D (resources), got shape {v_arr.shape}")
    n, nres = len(ledger._nodes), len(ledger._resources)
    if v_arr.shape[0] > nres:
        raise ValueError(f"req has {v_arr.shape[0]} resources but the ledger has {nres}")
    if not np.isfinite(v_arr).all() or (v_arr < 0).any():
        raise ValueError("req must be finite numbers >= 0")
    row_arr = np.ascontiguousarray(rows, dtype=np.int64)
    if row_arr.ndim != 1:
        raise ValueError(f"rows must be 1-D (node indices), got shape {row_arr.shape}")
    if row_arr.shape[0] and (row_arr.min() < 0 or row_arr.max() >= n):
        raise ValueError(f"rows must be node indices in [0, {n})")
    v = np.zeros(nres, dtype=np.float64)
    v[: v_arr.shape[0]] = v_arr
    misfit = ~_fitting_now(ledger, v)[row_arr]
    if strategy == "first_available":
        score = spare = np.zeros(row_arr.shape[0])
    else:
        score, spare = (a[row_arr] for a in _scores(ledger, v, strategy))
    return row_arr[np.lexsort((spare, score, misfit))]


def _fitting_now(ledger: ResourceLedger, v: np.ndarray) -> np.ndarray:
    """Per node: whether v fits its free resources now (bool[n])."""
    cap, used = ledger._cap, ledger._used
    need = v > 0
    allowance = _slack_for(cap[:, need])
    return np.all(used[:, need] + v[need] <= cap[:, need] + allowance, axis=1)


def _scores(ledger: ResourceLedger, v: np.ndarray, strategy: str) -> tuple[np.ndarray, np.ndarray]:
    """Per node (score, spare) for a scored strategy, summed column by column as the C loop does.

    ``load_balanced``: score is the highest (used + req) / capacity over the declared
    resources, spare is 0. ``cost_optimized`` (best fit): score is the sum of
    (free - req) / capacity over the declared resources the function requests; spare the
    sum of free / capacity over the declared ones it does not (a node with a free gpu is
    kept for gpu work). Smaller is better for both.
    """
    cap, used = ledger._cap, ledger._used
    n, nres = cap.shape
    declared = cap > 0
    safe_cap = np.where(declared, cap, 1.0)
    score = np.zeros(n, dtype=np.float64)
    spare = np.zeros(n, dtype=np.float64)
    for r in range(nres):
        if strategy == "load_balanced":
            term = np.where(declared[:, r], (used[:, r] + v[r]) / safe_cap[:, r], 0.0)
            score = np.maximum(score, term)
        elif v[r] > 0:
            term = ((cap[:, r] - used[:, r]) - v[r]) / safe_cap[:, r]
            score = score + np.where(declared[:, r], term, 0.0)
        else:
            term = (cap[:, r] - used[:, r]) / safe_cap[:, r]
            spare = spare + np.where(declared[:, r], term, 0.0)
    return score, spare

"""Pure-Python twin of the compiled core: the same API and the same results, written plainly.

Used when ``HANDOFF_PURE_PYTHON=1`` and as the oracle the tests compare the Cython modules
against, so every tie-break and every error message mirrors graph.pyx, ledger.pyx and
allocator.pyx. Graph walks are plain loops over lists; the ledger and the allocator use
numpy per row, summing resources in the same order as the C loops so floats match exactly.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np

from handoff._core.strategies import STRATEGIES

__all__ = [
    "STRATEGIES",
    "ReadyTracker",
    "ResourceLedger",
    "allocate",
    "find_cycle",
    "levels",
    "rank_nodes",
    "reverse_csr",
    "topological_order",
]

# -- graph -------------------------------------------------------------------------------


def _checked_csr(n: Any, indptr: Any, indices: Any) -> tuple[int, np.ndarray, np.ndarray]:
    size = operator.index(n)
    if size < 0:
        raise ValueError(f"n must be >= 0, got {size}")
    ip = np.ascontiguousarray(indptr, dtype=np.int64)
    ix = np.ascontiguousarray(indices, dtype=np.int64)
    if ip.ndim != 1 or ip.shape[0] != size + 1:
        raise ValueError(
            f"indptr must be 1-D with n + 1 = {size + 1} entries, got shape {ip.shape}"
        )
    if ix.ndim != 1:
        raise ValueError(f"indices must be 1-D, got shape {ix.shape}")
    if ip[0] != 0:
        raise ValueError(f"indptr[0] must be 0, got {ip[0]}")
    drops = np.flatnonzero(ip[1:] < ip[:-1])
    if drops.size:
        i = int(drops[0])
        raise ValueError(f"indptr must be non-decreasing: indptr[{i + 1}] < indptr[{i}]")
    if ip[size] > ix.shape[0]:
        raise ValueError(f"indptr[n] = {ip[size]} exceeds len(indices) = {ix.shape[0]}")
    used = ix[: ip[size]]
    bad = np.flatnonzero((used < 0) | (used >= size))
    if bad.size:
        k = int(bad[0])
        owner = int(np.searchsorted(ip, k, "right")) - 1
        raise ValueError(f"function {owner} depends on {used[k]}, outside [0, {size})")
    return size, ip, ix


def _deps(size: int, ip: np.ndarray, ix: np.ndarray) -> list[list[int]]:
    p = ip.tolist()
    x = ix.tolist()
    return [x[p[i] : p[i + 1]] for i in range(size)]


def _dependents(size: int, deps: list[list[int]]) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(size)]
    for i, ds in enumerate(deps):
        for d in ds:
            out[d].append(i)
    return out


def _as_csr(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.zeros(len(lists) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(x) for x in lists], dtype=np.int64)
    flat = [v for x in lists for v in x]
    return indptr, np.array(flat, dtype=np.int64)


def reverse_csr(n: int, indptr: Any, indices: Any) -> tuple[np.ndarray, np.ndarray]:
    """Dependents of each function as CSR, each list in increasing consumer order."""
    size, ip, ix = _checked_csr(n, indptr, indices)
    return _as_csr(_dependents(size, _deps(size, ip, ix)))


def find_cycle(n: int, indptr: Any, indices: Any) -> np.ndarray | None:
    """The first cycle an iterative DFS meets, as [a, b, ..., a], each depending on the next.

    None if the graph is acyclic.
    """
    size, ip, ix = _checked_csr(n, indptr, indices)
    deps = _deps(size, ip, ix)
    color = [0] * size  # 0 unseen, 1 on the DFS stack, 2 finished
    pos = [0] * size
    for s in range(size):
        if color[s]:
            continue
        stack = [s]
        edges = [0]  # next edge to follow, per stack entry
        pos[s] = 0
        color[s] = 1
        while stack:
            u = stack[-1]
            e = edges[-1]
            if e < len(deps[u]):
                v = deps[u][e]
                edges[-1] = e + 1
                if color[v] == 0:
                    pos[v] = len(stack)
                    stack.append(v)
                    edges.append(0)
                    color[v] = 1
                elif color[v] == 1:
                    path = stack[pos[v] :] + [v]
                    return np.array(path, dtype=np.int64)
            else:
                color[u] = 2
                stack.pop()
                edges.pop()
    return None


def _order_and_levels(size: int, deps: list[list[int]]) -> tuple[list[int], list[int]]:
    dependents = _dependents(size, deps)
    indeg = [len(d) for d in deps]
    level = [0] * size
    queue = [i for i in range(size) if indeg[i] == 0]
    head = 0
    while head < len(queue):
        u = queue[head]
        head += 1
        for c in dependents[u]:
            level[c] = max(level[c], level[u] + 1)
            indeg[c] -= 1
            if indeg[c] == 0:
                queue.append(c)
    return queue, level


def topological_order(n: int, indptr: Any, indices: Any) -> np.ndarray:
    """Kahn's order (FIFO queue seeded in index order); shorter than n if there is a cycle."""
    size, ip, ix = _checked_csr(n, indptr, indices)
    order, _ = _order_and_levels(size, _deps(size, ip, ix))
    return np.array(order, dtype=np.int64)


def levels(n: int, indptr: Any, indices: Any) -> np.ndarray:
    """Level of each function: 0 with no dependencies, else 1 + the highest level among them."""
    size, ip, ix = _checked_csr(n, indptr, indices)
    order, level = _order_and_levels(size, _deps(size, ip, ix))
    if len(order) != size:
        raise ValueError("levels need an acyclic graph; find_cycle() shows the cycle")
    return np.array(level, dtype=np.int64)


class ReadyTracker:
    """Which non-inline functions are ready to run as others complete.

    Inline functions are transparent: a consumer of an inline function waits for that
    function's own inputs. Each non-inline function counts its paths to non-inline
    producers through inline functions; completing a producer walks the same paths down.
    """

    def __init__(self, n: int, indptr: Any, indices: Any, inline: Any):
        size, ip, ix = _checked_csr(n, indptr, indices)
        mask = np.ascontiguousarray(inline).astype(bool)
        if mask.ndim != 1 or mask.shape[0] != size:
            raise ValueError(f"inline must be 1-D with n = {size} entries, got shape {mask.shape}")
        deps = _deps(size, ip, ix)
        order, _ = _order_and_levels(size, deps)
        if len(order) != size:
            raise ValueError("ReadyTracker needs an acyclic graph; find_cycle() shows the cycle")
        self._n = size
        self._dependents = _dependents(size, deps)
        self._inline = mask.tolist()
        self._done = [False] * size
        self._count = [0] * size
        for i in range(size):
            if not self._inline[i]:
                self._walk(i, 1)
        regular = [i for i in range(size) if not self._inline[i]]
        self._remaining = len(regular)
        self._initial = [i for i in regular if self._count[i] == 0]

    def _walk(self, source: int, delta: int) -> list[int]:
        """Add delta to every non-inline function reached from source through inline ones.

        Visits in depth-first pre-order (dependents in increasing index); when delta is
        negative, returns the functions whose count dropped to 0, in the order reached.
        """
        found = []
        stack = list(reversed(self._dependents[source]))
        while stack:
            c = stack.pop()
            if self._inline[c]:
                stack.extend(reversed(self._dependents[c]))
            else:
                self._count[c] += delta
                if delta < 0 and self._count[c] == 0:
                    found.append(c)
        return found

    def _check(self, i: int) -> int:
        if not 0 <= i < self._n:
            raise ValueError(f"function index {i} is out of range [0, {self._n})")
        return operator.index(i)

    def initial(self) -> np.ndarray:
        """Non-inline functions ready at the start, ascending."""
        return np.array(self._initial, dtype=np.int64)

    def complete(self, i: int) -> np.ndarray:
        """Mark non-inline function i complete; return those it made ready, in walk order."""
        j = self._check(i)
        if self._inline[j]:
            raise ValueError(
                f"function {j} is inline: it never runs on its own, so it cannot complete"
            )
        if self._done[j]:
            raise ValueError(f"function {j} has already completed")
        if self._count[j] != 0:
            raise ValueError(
                f"function {j} is not ready: it waits for {self._count[j]} more input(s)"
            )
        self._done[j] = True
        self._remaining -= 1
        return np.array(self._walk(j, -1), dtype=np.int64)

    @property
    def remaining(self) -> int:
        """Number of non-inline functions not yet completed."""
        return self._remaining

    def is_ready(self, i: int) -> bool:
        """True if non-inline function i has all its inputs and has not completed."""
        j = self._check(i)
        return not self._inline[j] and not self._done[j] and self._count[j] == 0

    def is_complete(self, i: int) -> bool:
        return self._done[self._check(i)]


# -- ledger ------------------------------------------------------------------------------


def _slack_for(cap: np.ndarray | float) -> np.ndarray | float:
    """Rounding allowance when comparing against a capacity: 1e-9, relative above 1."""
    return 1e-9 * np.maximum(cap, 1.0)


def _check_amount(name: Hashable, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"amount of {name!r} must be a finite number >= 0, got {value!r}")


def _unknown_node(node: Hashable, nodes: list[Hashable]) -> str:
    shown = ", ".join(repr(name) for name in nodes[:10])
    more = f", ... ({len(nodes)} in all)" if len(nodes) > 10 else ""
    return f"unknown node {node!r}; registered nodes: [{shown}{more}]"


class ResourceLedger:
    """Capacities and claims of every node; nodes keep their registration order."""

    def __init__(self) -> None:
        self._nodes: list[Hashable] = []
        self._node_index: dict[Hashable, int] = {}
        self._resources: list[Hashable] = []
        self._resource_index: dict[Hashable, int] = {}
        self._cap = np.zeros((0, 0), dtype=np.float64)
        self._used = np.zeros((0, 0), dtype=np.float64)

    def __repr__(self) -> str:
        return f"ResourceLedger({len(self._nodes)} nodes, {len(self._resources)} resources)"

    def _add_resource(self, name: Hashable) -> int:
        col = self._resource_index.get(name, -1)
        if col >= 0:
            return col
        col = len(self._resources)
        self._resources.append(name)
        self._resource_index[name] = col
        zeros = np.zeros((len(self._nodes), 1), dtype=np.float64)
        self._cap = np.hstack([self._cap, zeros])
        self._used = np.hstack([self._used, zeros])
        return col

    def _row(self, node: Hashable) -> int:
        row = self._node_index.get(node, -1)
        if row < 0:
            raise KeyError(_unknown_node(node, self._nodes))
        return row

    def _check_row(self, i: int) -> None:
        if not 0 <= i < len(self._nodes):
            raise IndexError(f"node index {i} is out of range [0, {len(self._nodes)})")

    def _vec(self, vec: Any) -> np.ndarray:
        """vec zero-padded to len(resources), after checking it."""
        arr = np.ascontiguousarray(vec, dtype=np.float64)
        if arr.ndim != 1:
            raise ValueError(f"a resource vector must be 1-D, got shape {arr.shape}")
        k = arr.shape[0]
        if k > len(self._resources):
            raise ValueError(
                f"the vector has {k} entries but the ledger has {len(self._resources)} resources"
            )
        bad = np.flatnonzero(~np.isfinite(arr) | (arr < 0))
        if bad.size:
            _check_amount(self._resources[bad[0]], float(arr[bad[0]]))
        full = np.zeros(len(self._resources), dtype=np.float64)
        full[:k] = arr
        return full

    def _fits(self, i: int, v: np.ndarray) -> bool:
        cap = self._cap[i]
        need = v > 0
        return bool(np.all(self._used[i][need] + v[need] <= cap[need] + _slack_for(cap[need])))

    @property
    def nodes(self) -> list[Hashable]:
        """Node names in registration order."""
        return list(self._nodes)

    @property
    def resources(self) -> list[Hashable]:
        """Resource names in the order their columns were added."""
        return list(self._resources)

    def has_node(self, node: Hashable) -> bool:
        return node in self._node_index

    def node_index(self, node: Hashable) -> int:
        """Row of node; KeyError naming the registered nodes if unknown."""
        return self._row(node)

    def node_name(self, i: int) -> Hashable:
        self._check_row(i)
        return self._nodes[i]

    def resource_vector(self, req: Mapping[Hashable, float] | None) -> np.ndarray:
        """req as a float64 vector over all resources.

        Unknown names become new columns, with capacity 0 everywhere.
        """
        checked = {}
        for name, amount in (req or {}).items():
            value = float(amount)
            _check_amount(name, value)
            checked[name] = value
        for name in checked:
            self._add_resource(name)
        vec = np.zeros(len(self._resources), dtype=np.float64)
        for name, value in checked.items():
            vec[self._resource_index[name]] = value
        return vec

    def register(self, node: Hashable, caps: Mapping[Hashable, float]) -> None:
        """Set node's capacities; re-registering keeps claims; undeclared resources drop to 0."""
        checked = {}
        for name, amount in caps.items():
            value = float(amount)
            if not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"capacity of {name!r} on node {node!r} must be a finite number >= 0, "
                    f"got {amount!r}"
                )
            checked[name] = value
        for name in checked:
            self._add_resource(name)
        row = self._node_index.get(node, -1)
        if row < 0:
            row = len(self._nodes)
            self._nodes.append(node)
            self._node_index[node] = row
            zeros = np.zeros((1, len(self._resources)), dtype=np.float64)
            self._cap = np.vstack([self._cap, zeros])
            self._used = np.vstack([self._used, zeros])
        self._cap[row, :] = 0.0
        for name, value in checked.items():
            self._cap[row, self._resource_index[name]] = value

    def unregister(self, node: Hashable) -> None:
        """Forget node and its claims; later nodes move up one row, keeping their order."""
        row = self._row(node)
        self._cap = np.delete(self._cap, row, axis=0)
        self._used = np.delete(self._used, row, axis=0)
        del self._nodes[row]
        self._node_index = {name: i for i, name in enumerate(self._nodes)}

    def available(self, node: Hashable, req: Mapping[Hashable, float] | None) -> bool:
        """True if req fits node's free resources (capacity - used)."""
        row = self._row(node)
        return self.available_vec(row, self.resource_vector(req))

    def request(self, node: Hashable, req: Mapping[Hashable, float] | None) -> bool:
        """Claim req on node if all of it fits now; never over-commits. Returns whether it did."""
        row = self._row(node)
        return self.request_vec(row, self.resource_vector(req))

    def release(self, node: Hashable, req: Mapping[Hashable, float] | None) -> None:
        """Give back req on node; a claim never goes below 0."""
        row = self._row(node)
        self.release_vec(row, self.resource_vector(req))

    def free(self, node: Hashable) -> dict[Hashable, float]:
        """{resource: capacity - used} for the resources node declares, never below 0."""
        row = self._row(node)
        return {
            name: max(float(self._cap[row, r] - self._used[row, r]), 0.0)
            for r, name in enumerate(self._resources)
            if self._cap[row, r] > 0
        }

    def capacity(self, node: Hashable) -> dict[Hashable, float]:
        """{resource: capacity} for the resources node declares (capacity > 0)."""
        row = self._row(node)
        return {
            name: float(self._cap[row, r])
            for r, name in enumerate(self._resources)
            if self._cap[row, r] > 0
        }

    def used(self, node: Hashable) -> dict[Hashable, float]:
        """{resource: amount claimed} for the resources with a claim on node."""
        row = self._row(node)
        return {
            name: float(self._used[row, r])
            for r, name in enumerate(self._resources)
            if self._used[row, r] > 0
        }

    def capacities(self) -> dict[Hashable, dict[Hashable, float]]:
        """{node: capacity(node)} for every node, in registration order."""
        return {node: self.capacity(node) for node in self._nodes}

    def fits_total(self, req: Mapping[Hashable, float] | None) -> bool:
        """True if req fits some node's full capacity (ignoring current claims)."""
        return bool(self.fitting_nodes_total(req))

    def fitting_nodes_total(self, req: Mapping[Hashable, float] | None) -> list[Hashable]:
        """Names of the nodes whose full capacity fits req, in registration order."""
        v = self.resource_vector(req)
        need = v > 0
        cap = self._cap[:, need]
        ok = np.all(v[need] <= cap + _slack_for(cap), axis=1)
        return [self._nodes[i] for i in np.flatnonzero(ok)]

    def available_vec(self, i: int, vec: Any) -> bool:
        """available() for row i; vec may be shorter than resources (zero-padded)."""
        self._check_row(i)
        return self._fits(i, self._vec(vec))

    def request_vec(self, i: int, vec: Any) -> bool:
        """request() for row i; vec may be shorter than resources (zero-padded)."""
        self._check_row(i)
        v = self._vec(vec)
        if not self._fits(i, v):
            return False
        self._used[i] += v
        return True

    def release_vec(self, i: int, vec: Any) -> None:
        """release() for row i; vec may be shorter than resources (zero-padded)."""
        self._check_row(i)
        left = self._used[i] - self._vec(vec)
        self._used[i] = np.where(left > 0, left, 0.0)

    def capacity_matrix(self) -> np.ndarray:
        """Copy of the nodes x resources capacity matrix."""
        return self._cap.copy()

    def used_matrix(self) -> np.ndarray:
        """Copy of the nodes x resources matrix of claimed amounts."""
        return self._used.copy()


# -- allocator ---------------------------------------------------------------------------


def allocate(
    ledger: ResourceLedger, reqs: Any, pinned: Any, strategy: str, claim: bool = True
) -> np.ndarray:
    """Choose a node for each row of reqs, in order; -1 where no node has the free resources now.

    Same contract as ``handoff._core.allocator.allocate``; scores (``_scores``) are summed
    resource by resource, in column order, as the C loop does, so ties break identically:
    the smallest (score, spare), then the lowest node index. Comparisons are exact.
    """
    if strategy not in STRATEGIES:
        raise ValueError(
            f"unknown allocation strategy {strategy!r}; valid: {', '.join(STRATEGIES)}"
        )
    if not isinstance(ledger, ResourceLedger):
        raise TypeError(
            f"allocate needs a {ResourceLedger.__module__}.ResourceLedger, "
            f"got {type(ledger).__name__}"
        )
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
    if strategy not in STRATEGIES:
        raise ValueError(
            f"unknown allocation strategy {strategy!r}; valid: {', '.join(STRATEGIES)}"
        )
    if not isinstance(ledger, ResourceLedger):
        raise TypeError(
            f"rank_nodes needs a {ResourceLedger.__module__}.ResourceLedger, "
            f"got {type(ledger).__name__}"
        )
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

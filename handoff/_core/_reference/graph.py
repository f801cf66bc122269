"""Pure-Python twin of graph.pyx: CSR reversal, cycles, topological order, levels, readiness."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np


__all__ = ["ReadyTracker", "find_cycle", "levels", "reverse_csr", "topological_order"]


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

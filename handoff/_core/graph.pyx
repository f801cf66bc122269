"""Graph kernels on CSR arrays: reverse, cycle search, topological order, levels, readiness.

Function i depends on ``indices[indptr[i]:indptr[i+1]]``. Every loop is iterative and runs
on typed memoryviews without the GIL, so a million-function chain needs no recursion.
"""

import numpy as np

from libc.stdint cimport int64_t, uint8_t
from libc.string cimport memcpy

cimport numpy as cnp

cnp.import_array()


cdef object _int64_array(const int64_t* src, Py_ssize_t k):
    """A new int64 array holding src[:k]; cheaper than slicing and copying a buffer."""
    cdef cnp.npy_intp dims = k
    arr = cnp.PyArray_EMPTY(1, &dims, cnp.NPY_INT64, 0)
    if k:
        memcpy(cnp.PyArray_DATA(<cnp.ndarray>arr), src, k * sizeof(int64_t))
    return arr


cdef tuple _checked_csr(object n, object indptr, object indices):
    """(n, indptr, indices) as contiguous int64 arrays, after checking shape and range."""
    cdef Py_ssize_t size = n
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
    cdef const int64_t[::1] p = ip
    cdef const int64_t[::1] x = ix
    cdef Py_ssize_t i, k, bad = -1
    cdef int64_t d
    if p[0] != 0:
        raise ValueError(f"indptr[0] must be 0, got {p[0]}")
    for i in range(size):
        if p[i + 1] < p[i]:
            raise ValueError(f"indptr must be non-decreasing: indptr[{i + 1}] < indptr[{i}]")
    if p[size] > x.shape[0]:
        raise ValueError(f"indptr[n] = {p[size]} exceeds len(indices) = {x.shape[0]}")
    with nogil:
        for k in range(p[size]):
            d = x[k]
            if d < 0 or d >= size:
                bad = k
                break
    if bad >= 0:
        owner = int(np.searchsorted(ip, bad, "right")) - 1
        raise ValueError(f"function {owner} depends on {x[bad]}, outside [0, {size})")
    return size, ip, ix


cdef tuple _reverse(Py_ssize_t n, const int64_t[::1] p, const int64_t[::1] x):
    rip = np.zeros(n + 1, dtype=np.int64)
    rix = np.empty(p[n], dtype=np.int64)
    fill = np.empty(n, dtype=np.int64)
    cdef int64_t[::1] rp = rip
    cdef int64_t[::1] rx = rix
    cdef int64_t[::1] f = fill
    cdef Py_ssize_t i, k
    cdef int64_t d
    with nogil:
        for k in range(p[n]):
            rp[x[k] + 1] += 1
        for i in range(n):
            rp[i + 1] += rp[i]
            f[i] = rp[i]
        for i in range(n):  # consumers in index order, so each dependents list is sorted
            for k in range(p[i], p[i + 1]):
                d = x[k]
                rx[f[d]] = i
                f[d] += 1
    return rip, rix


def reverse_csr(n, indptr, indices):
    """Dependents of each function as CSR, each list in increasing consumer order."""
    size, ip, ix = _checked_csr(n, indptr, indices)
    return _reverse(size, ip, ix)


def find_cycle(n, indptr, indices):
    """The first cycle an iterative DFS meets, as [a, b, ..., a], each depending on the next.

    None if the graph is acyclic.
    """
    size, ip, ix = _checked_csr(n, indptr, indices)
    cdef Py_ssize_t N = size
    cdef const int64_t[::1] p = ip
    cdef const int64_t[::1] x = ix
    color_arr = np.zeros(N, dtype=np.uint8)  # 0 unseen, 1 on the DFS stack, 2 finished
    edge_arr = np.empty(N, dtype=np.int64)  # next edge to follow from each node on the stack
    stack_arr = np.empty(N, dtype=np.int64)
    pos_arr = np.empty(N, dtype=np.int64)  # where each node sits on the stack
    cdef uint8_t[::1] color = color_arr
    cdef int64_t[::1] edge = edge_arr
    cdef int64_t[::1] stack = stack_arr
    cdef int64_t[::1] pos = pos_arr
    cdef Py_ssize_t s, top, start = -1, end = -1
    cdef int64_t u, v
    with nogil:
        for s in range(N):
            if color[s] != 0:
                continue
            top = 0
            stack[0] = s
            pos[s] = 0
            color[s] = 1
            edge[s] = p[s]
            while top >= 0:
                u = stack[top]
                if edge[u] < p[u + 1]:
                    v = x[edge[u]]
                    edge[u] += 1
                    if color[v] == 0:
                        top += 1
                        stack[top] = v
                        pos[v] = top
                        color[v] = 1
                        edge[v] = p[v]
                    elif color[v] == 1:
                        start = pos[v]
                        end = top
                        break
                else:
                    color[u] = 2
                    top -= 1
            if start >= 0:
                break
    if start < 0:
        return None
    length = end - start + 1
    cycle = np.empty(length + 1, dtype=np.int64)
    cycle[:length] = stack_arr[start:end + 1]
    cycle[length] = stack_arr[start]
    return cycle


cdef tuple _order_and_levels(Py_ssize_t n, object ip, object rip, object rix):
    """Kahn's algorithm with a FIFO queue seeded in index order, computing levels on the way.

    Returns (count, order, level); count < n means a cycle kept some functions out.
    """
    cdef const int64_t[::1] p = ip
    cdef const int64_t[::1] rp = rip
    cdef const int64_t[::1] rx = rix
    queue_arr = np.empty(n, dtype=np.int64)
    level_arr = np.zeros(n, dtype=np.int64)
    indeg_arr = np.empty(n, dtype=np.int64)
    cdef int64_t[::1] queue = queue_arr
    cdef int64_t[::1] level = level_arr
    cdef int64_t[::1] indeg = indeg_arr
    cdef Py_ssize_t i, k, head = 0, tail = 0
    cdef int64_t u, c
    with nogil:
        for i in range(n):
            indeg[i] = p[i + 1] - p[i]
            if indeg[i] == 0:
                queue[tail] = i
                tail += 1
        while head < tail:
            u = queue[head]
            head += 1
            for k in range(rp[u], rp[u + 1]):
                c = rx[k]
                if level[u] + 1 > level[c]:
                    level[c] = level[u] + 1
                indeg[c] -= 1
                if indeg[c] == 0:
                    queue[tail] = c
                    tail += 1
    return tail, queue_arr, level_arr


def topological_order(n, indptr, indices):
    """Kahn's order (FIFO queue seeded in index order); shorter than n if there is a cycle."""
    size, ip, ix = _checked_csr(n, indptr, indices)
    rip, rix = _reverse(size, ip, ix)
    count, order, _ = _order_and_levels(size, ip, rip, rix)
    return order if count == size else order[:count].copy()


def levels(n, indptr, indices):
    """Level of each function: 0 with no dependencies, else 1 + the highest level among them."""
    size, ip, ix = _checked_csr(n, indptr, indices)
    rip, rix = _reverse(size, ip, ix)
    count, _, level = _order_and_levels(size, ip, rip, rix)
    if count != size:
        raise ValueError("levels need an acyclic graph; find_cycle() shows the cycle")
    return level


cdef class ReadyTracker:
    """Which non-inline functions are ready to run as others complete.

    Inline functions are transparent: a consumer of an inline function waits for that
    function's own inputs. Each non-inline function counts its paths to non-inline
    producers through inline functions; completing a producer walks the same paths down.
    """

    cdef Py_ssize_t n
    cdef Py_ssize_t _remaining
    cdef int64_t[::1] rp
    cdef int64_t[::1] rx
    cdef int64_t[::1] count
    cdef int64_t[::1] stack
    cdef int64_t[::1] out
    cdef uint8_t[::1] is_inline
    cdef uint8_t[::1] done
    cdef object _out_arr
    cdef object _initial

    def __init__(self, n, indptr, indices, inline):
        size, ip, ix = _checked_csr(n, indptr, indices)
        self.n = size
        mask = np.ascontiguousarray(inline).astype(bool).astype(np.uint8)
        if mask.ndim != 1 or mask.shape[0] != size:
            raise ValueError(f"inline must be 1-D with n = {size} entries, got shape {mask.shape}")
        rip, rix = _reverse(size, ip, ix)
        count, _, _ = _order_and_levels(size, ip, rip, rix)
        if count != size:
            raise ValueError("ReadyTracker needs an acyclic graph; find_cycle() shows the cycle")
        self.rp = rip
        self.rx = rix
        self.is_inline = mask
        self.done = np.zeros(size, dtype=np.uint8)
        self.count = np.zeros(size, dtype=np.int64)
        # The walk's stack holds unvisited siblings along one path of distinct nodes: <= edges.
        self.stack = np.empty(max(1, rix.shape[0]), dtype=np.int64)
        self._out_arr = np.empty(max(1, size), dtype=np.int64)
        self.out = self._out_arr
        cdef Py_ssize_t i, ready = 0
        with nogil:
            for i in range(self.n):
                if not self.is_inline[i]:
                    self._walk(i, 1)
            for i in range(self.n):
                if not self.is_inline[i]:
                    self._remaining += 1
                    if self.count[i] == 0:
                        self.out[ready] = i
                        ready += 1
        self._initial = self._out_arr[:ready].copy()

    cdef Py_ssize_t _walk(self, int64_t source, int64_t delta) noexcept nogil:
        """Add delta to every non-inline function reached from source through inline ones.

        Visits in depth-first pre-order (dependents in increasing index); when delta is
        negative, functions whose count drops to 0 are written to out; returns how many.
        """
        cdef Py_ssize_t top = 0, found = 0, k
        cdef int64_t c
        for k in range(self.rp[source + 1] - 1, self.rp[source] - 1, -1):
            self.stack[top] = self.rx[k]
            top += 1
        while top > 0:
            top -= 1
            c = self.stack[top]
            if self.is_inline[c]:
                for k in range(self.rp[c + 1] - 1, self.rp[c] - 1, -1):
                    self.stack[top] = self.rx[k]
                    top += 1
            else:
                self.count[c] += delta
                if delta < 0 and self.count[c] == 0:
                    self.out[found] = c
                    found += 1
        return found

    cdef int _check(self, object i) except -1:
        if not 0 <= i < self.n:
            raise ValueError(f"function index {i} is out of range [0, {self.n})")
        return 0

    def initial(self):
        """Non-inline functions ready at the start, ascending."""
        return self._initial.copy()

    def complete(self, i):
        """Mark non-inline function i complete; return those it made ready, in walk order."""
        self._check(i)
        cdef Py_ssize_t j = i
        if self.is_inline[j]:
            raise ValueError(
                f"function {j} is inline: it never runs on its own, so it cannot complete"
            )
        if self.done[j]:
            raise ValueError(f"function {j} has already completed")
        if self.count[j] != 0:
            raise ValueError(
                f"function {j} is not ready: it waits for {self.count[j]} more input(s)"
            )
        self.done[j] = 1
        self._remaining -= 1
        cdef Py_ssize_t found
        with nogil:
            found = self._walk(j, -1)
        return _int64_array(&self.out[0], found)

    @property
    def remaining(self):
        """Number of non-inline functions not yet completed."""
        return self._remaining

    def is_ready(self, i):
        """True if non-inline function i has all its inputs and has not completed."""
        self._check(i)
        cdef Py_ssize_t j = i
        return not self.is_inline[j] and not self.done[j] and self.count[j] == 0

    def is_complete(self, i):
        self._check(i)
        cdef Py_ssize_t j = i
        return bool(self.done[j])

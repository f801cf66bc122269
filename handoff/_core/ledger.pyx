"""ResourceLedger: capacity and claims of every node, as a nodes x resources float64 matrix.

Names map to rows and columns through dicts; the arithmetic runs on the matrices. A
resource a node does not declare has capacity 0 there. Amounts compare with a 1e-9
allowance (relative above 1), so sums of fractional costs do not fail by rounding.
"""

from libc.math cimport isfinite

import numpy as np

cimport numpy as cnp

cnp.import_array()


cdef int _check_amount(object name, double value) except -1:
    if not isfinite(value) or value < 0:
        raise ValueError(f"amount of {name!r} must be a finite number >= 0, got {value!r}")
    return 0


cdef str _unknown_node(object node, list nodes):
    shown = ", ".join(repr(name) for name in nodes[:10])
    more = f", ... ({len(nodes)} in all)" if len(nodes) > 10 else ""
    return f"unknown node {node!r}; registered nodes: [{shown}{more}]"


cdef class ResourceLedger:
    """Capacities and claims of every node; nodes keep their registration order."""

    def __cinit__(self):  # __cinit__ so the memoryviews exist even if a subclass skips __init__
        self._nodes = []
        self._node_index = {}
        self._resources = []
        self._resource_index = {}
        self._n = 0
        self._r = 0
        self._cap_buf = np.zeros((4, 4), dtype=np.float64)
        self._used_buf = np.zeros((4, 4), dtype=np.float64)
        self._cap = self._cap_buf
        self._used = self._used_buf

    def __repr__(self):
        return f"ResourceLedger({self._n} nodes, {self._r} resources)"

    # -- storage ---------------------------------------------------------------------

    cdef void _grow(self, Py_ssize_t rows, Py_ssize_t cols) except *:
        """Make room for rows x cols, doubling the buffers so growth is amortized."""
        cdef Py_ssize_t rcap = self._cap_buf.shape[0], ccap = self._cap_buf.shape[1]
        if rows <= rcap and cols <= ccap:
            return
        while rcap < rows:
            rcap *= 2
        while ccap < cols:
            ccap *= 2
        cap = np.zeros((rcap, ccap), dtype=np.float64)
        used = np.zeros((rcap, ccap), dtype=np.float64)
        cap[: self._n, : self._r] = self._cap_buf[: self._n, : self._r]
        used[: self._n, : self._r] = self._used_buf[: self._n, : self._r]
        self._cap_buf = cap
        self._used_buf = used
        self._cap = cap
        self._used = used

    cdef Py_ssize_t _add_resource(self, object name) except -1:
        cdef Py_ssize_t col = self._resource_index.get(name, -1)
        if col >= 0:
            return col
        self._grow(self._n, self._r + 1)
        col = self._r
        self._resources.append(name)
        self._resource_index[name] = col
        self._r += 1
        return col

    cdef Py_ssize_t _row(self, object node) except -1:
        cdef Py_ssize_t row = self._node_index.get(node, -1)
        if row < 0:
            raise KeyError(_unknown_node(node, self._nodes))
        return row

    cdef object _vec(self, object vec):
        """vec as a contiguous, checked float64 array of at most len(resources) entries."""
        cdef cnp.ndarray arr
        if (
            type(vec) is np.ndarray
            and cnp.PyArray_TYPE(<cnp.ndarray>vec) == cnp.NPY_FLOAT64
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>vec)
        ):
            arr = <cnp.ndarray>vec
        else:
            arr = np.ascontiguousarray(vec, dtype=np.float64)
        if arr.ndim != 1:
            raise ValueError(f"a resource vector must be 1-D, got shape {(<object>arr).shape}")
        cdef Py_ssize_t k = arr.shape[0], r
        if k > self._r:
            raise ValueError(f"the vector has {k} entries but the ledger has {self._r} resources")
        cdef const double* v = <const double*>cnp.PyArray_DATA(arr)
        for r in range(k):
            if not isfinite(v[r]) or v[r] < 0:
                _check_amount(self._resources[r], v[r])
        return arr

    cdef bint _fits(self, Py_ssize_t i, const double* v, Py_ssize_t k) noexcept nogil:
        cdef Py_ssize_t r
        cdef double c
        for r in range(k):
            if v[r] > 0:
                c = self._cap[i, r]
                if self._used[i, r] + v[r] > c + slack_for(c):
                    return False
        return True

    cdef void _claim(self, Py_ssize_t i, const double* v, Py_ssize_t k) noexcept nogil:
        cdef Py_ssize_t r
        for r in range(k):
            self._used[i, r] += v[r]

    cdef void _unclaim(self, Py_ssize_t i, const double* v, Py_ssize_t k) noexcept nogil:
        cdef Py_ssize_t r
        cdef double left
        for r in range(k):
            left = self._used[i, r] - v[r]
            self._used[i, r] = left if left > 0 else 0.0

    # -- names -----------------------------------------------------------------------

    @property
    def nodes(self):
        """Node names in registration order."""
        return list(self._nodes)

    @property
    def resources(self):
        """Resource names in the order their columns were added."""
        return list(self._resources)

    def has_node(self, node):
        return node in self._node_index

    def node_index(self, node):
        """Row of node; KeyError naming the registered nodes if unknown."""
        return self._row(node)

    def node_name(self, i):
        if not 0 <= i < self._n:
            raise IndexError(f"node index {i} is out of range [0, {self._n})")
        return self._nodes[i]

    def resource_vector(self, req):
        """req as a float64 vector over all resources.

        Unknown names become new columns, with capacity 0 everywhere.
        """
        cdef dict checked = {}
        if req is not None:
            for name, amount in req.items():
                value = float(amount)
                _check_amount(name, value)
                checked[name] = value
        for name in checked:
            self._add_resource(name)
        vec = np.zeros(self._r, dtype=np.float64)
        for name, value in checked.items():
            vec[self._resource_index[name]] = value
        return vec

    # -- nodes -----------------------------------------------------------------------

    def register(self, node, caps):
        """Set node's capacities; re-registering keeps claims; undeclared resources drop to 0."""
        cdef dict checked = {}
        for name, amount in caps.items():
            value = float(amount)
            if not isfinite(value) or value < 0:
                raise ValueError(
                    f"capacity of {name!r} on node {node!r} must be a finite number >= 0, "
                    f"got {amount!r}"
                )
            checked[name] = value
        for name in checked:
            self._add_resource(name)
        cdef Py_ssize_t row = self._node_index.get(node, -1)
        if row < 0:
            self._grow(self._n + 1, self._r)
            row = self._n
            self._nodes.append(node)
            self._node_index[node] = row
            self._n += 1
            self._used_buf[row, :] = 0.0
        self._cap_buf[row, :] = 0.0
        for name, value in checked.items():
            self._cap_buf[row, self._resource_index[name]] = value

    def unregister(self, node):
        """Forget node and its claims; later nodes move up one row, keeping their order."""
        cdef Py_ssize_t row = self._row(node)
        cdef Py_ssize_t n = self._n
        self._cap_buf[row : n - 1] = self._cap_buf[row + 1 : n]
        self._used_buf[row : n - 1] = self._used_buf[row + 1 : n]
        self._cap_buf[n - 1, :] = 0.0
        self._used_buf[n - 1, :] = 0.0
        del self._nodes[row]
        del self._node_index[node]
        for i in range(row, n - 1):
            self._node_index[self._nodes[i]] = i
        self._n -= 1

    # -- claims by name ----------------------------------------------------------------

    def available(self, node, req):
        """True if req fits node's free resources (capacity - used)."""
        cdef Py_ssize_t row = self._row(node)
        return self.available_vec(row, self.resource_vector(req))

    def request(self, node, req):
        """Claim req on node if all of it fits now; never over-commits. Returns whether it did."""
        cdef Py_ssize_t row = self._row(node)
        return self.request_vec(row, self.resource_vector(req))

    def release(self, node, req):
        """Give back req on node; a claim never goes below 0."""
        cdef Py_ssize_t row = self._row(node)
        self.release_vec(row, self.resource_vector(req))

    def free(self, node):
        """{resource: capacity - used} for the resources node declares, never below 0."""
        cdef Py_ssize_t row = self._row(node), r
        out = {}
        for r in range(self._r):
            if self._cap[row, r] > 0:
                left = self._cap[row, r] - self._used[row, r]
                out[self._resources[r]] = left if left > 0 else 0.0
        return out

    def capacity(self, node):
        """{resource: capacity} for the resources node declares (capacity > 0)."""
        cdef Py_ssize_t row = self._row(node), r
        return {
            self._resources[r]: self._cap[row, r] for r in range(self._r) if self._cap[row, r] > 0
        }

    def used(self, node):
        """{resource: amount claimed} for the resources with a claim on node."""
        cdef Py_ssize_t row = self._row(node), r
        return {
            self._resources[r]: self._used[row, r] for r in range(self._r) if self._used[row, r] > 0
        }

    def capacities(self):
        """{node: capacity(node)} for every node, in registration order."""
        return {node: self.capacity(node) for node in self._nodes}

    def fits_total(self, req):
        """True if req fits some node's full capacity (ignoring current claims)."""
        return bool(self._fitting_total(self.resource_vector(req), True))

    def fitting_nodes_total(self, req):
        """Names of the nodes whose full capacity fits req, in registration order."""
        return self._fitting_total(self.resource_vector(req), False)

    cdef object _fitting_total(self, object vec, bint first_only):
        cdef const double* v = <const double*>cnp.PyArray_DATA(<cnp.ndarray>vec)
        cdef Py_ssize_t i, r, k = vec.shape[0]
        cdef double c
        cdef bint ok
        out = []
        for i in range(self._n):
            ok = True
            for r in range(k):
                c = self._cap[i, r]
                if v[r] > 0 and v[r] > c + slack_for(c):
                    ok = False
                    break
            if ok:
                out.append(self._nodes[i])
                if first_only:
                    break
        return out

    # -- claims by vector (the allocator's fast path) ------------------------------------

    def available_vec(self, Py_ssize_t i, vec):
        """available() for row i; vec may be shorter than resources (zero-padded)."""
        self._check_row(i)
        arr = self._vec(vec)
        return self._fits(i, <const double*>cnp.PyArray_DATA(<cnp.ndarray>arr), arr.shape[0])

    def request_vec(self, Py_ssize_t i, vec):
        """request() for row i; vec may be shorter than resources (zero-padded)."""
        self._check_row(i)
        arr = self._vec(vec)
        cdef const double* v = <const double*>cnp.PyArray_DATA(<cnp.ndarray>arr)
        cdef Py_ssize_t k = arr.shape[0]
        if not self._fits(i, v, k):
            return False
        self._claim(i, v, k)
        return True

    def release_vec(self, Py_ssize_t i, vec):
        """release() for row i; vec may be shorter than resources (zero-padded)."""
        self._check_row(i)
        arr = self._vec(vec)
        self._unclaim(i, <const double*>cnp.PyArray_DATA(<cnp.ndarray>arr), arr.shape[0])

    cdef int _check_row(self, Py_ssize_t i) except -1:
        if not 0 <= i < self._n:
            raise IndexError(f"node index {i} is out of range [0, {self._n})")
        return 0

    # -- whole matrices (copies), for inspection and tests -------------------------------

    def capacity_matrix(self):
        """Copy of the nodes x resources capacity matrix."""
        return self._cap_buf[: self._n, : self._r].copy()

    def used_matrix(self):
        """Copy of the nodes x resources matrix of claimed amounts."""
        return self._used_buf[: self._n, : self._r].copy()

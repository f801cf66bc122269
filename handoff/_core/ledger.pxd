"""C-level view of ResourceLedger: the allocator cimports it to score nodes without Python."""


cdef inline double slack_for(double cap) noexcept nogil:
    """Rounding allowance when comparing against a capacity: 1e-9, relative above 1."""
    return 1e-9 * (cap if cap > 1.0 else 1.0)


cdef class ResourceLedger:
    cdef list _nodes
    cdef dict _node_index
    cdef list _resources
    cdef dict _resource_index
    cdef Py_ssize_t _n
    cdef Py_ssize_t _r
    cdef object _cap_buf
    cdef object _used_buf
    cdef double[:, ::1] _cap
    cdef double[:, ::1] _used

    cdef bint _fits(self, Py_ssize_t i, const double* v, Py_ssize_t k) noexcept nogil
    cdef void _claim(self, Py_ssize_t i, const double* v, Py_ssize_t k) noexcept nogil
    cdef void _unclaim(self, Py_ssize_t i, const double* v, Py_ssize_t k) noexcept nogil
    cdef void _grow(self, Py_ssize_t rows, Py_ssize_t cols) except *
    cdef Py_ssize_t _add_resource(self, object name) except -1
    cdef int _check_row(self, Py_ssize_t i) except -1
    cdef object _fitting_total(self, object vec, bint first_only)
    cdef Py_ssize_t _row(self, object node) except -1
    cdef object _vec(self, object vec)

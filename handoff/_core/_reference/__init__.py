"""Pure-Python twin of the compiled core: the same API and the same results, written plainly.

Used when ``HANDOFF_PURE_PYTHON=1`` and as the oracle the tests compare the Cython modules
against, so every tie-break and every error message mirrors graph.pyx, ledger.pyx and
allocator.pyx: one twin module per kernel (``graph``, ``ledger``, ``allocator``). Graph
walks are plain loops over lists; the ledger and the allocator use numpy per row, summing
resources in the same order as the C loops so floats match exactly.
"""

from __future__ import annotations

from handoff._core._reference.allocator import allocate, rank_nodes
from handoff._core._reference.graph import (
    ReadyTracker,
    find_cycle,
    levels,
    reverse_csr,
    topological_order,
)
from handoff._core._reference.ledger import ResourceLedger
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

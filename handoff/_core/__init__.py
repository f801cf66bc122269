"""Array kernels behind the DAG, the scheduler and the allocator, compiled or pure Python.

The compiled modules (Cython) are used unless ``HANDOFF_PURE_PYTHON=1``, which selects the
pure-Python twin in ``_reference`` (same API, same results; slower). The variable is read
(by ``handoff.config``) at import, because the choice must be made before any kernel is called.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING

from handoff.config import pure_python_from_env

__all__ = [
    "IMPLEMENTATION",
    "STRATEGIES",
    "ReadyTracker",
    "ResourceLedger",
    "allocate",
    "find_cycle",
    "implementations",
    "levels",
    "rank_nodes",
    "reverse_csr",
    "topological_order",
]

API = (
    "reverse_csr",
    "find_cycle",
    "topological_order",
    "levels",
    "ReadyTracker",
    "ResourceLedger",
    "allocate",
    "rank_nodes",
    "STRATEGIES",
)

NOT_BUILT = (
    "handoff's compiled core (handoff._core) is not built: run `pip install -e .` in the source "
    "tree (needs a C compiler), or set HANDOFF_PURE_PYTHON=1 to use the pure-Python twin"
)


def _compiled() -> SimpleNamespace:
    from handoff._core import allocator, graph, ledger

    return SimpleNamespace(
        name="cython",
        reverse_csr=graph.reverse_csr,
        find_cycle=graph.find_cycle,
        topological_order=graph.topological_order,
        levels=graph.levels,
        ReadyTracker=graph.ReadyTracker,
        ResourceLedger=ledger.ResourceLedger,
        allocate=allocator.allocate,
        rank_nodes=allocator.rank_nodes,
        STRATEGIES=allocator.STRATEGIES,
    )


def _python() -> SimpleNamespace:
    from handoff._core import _reference

    return SimpleNamespace(name="python", **{name: getattr(_reference, name) for name in API})


def implementations() -> dict[str, SimpleNamespace]:
    """Every available implementation by name ("cython", "python"), each with the full API.

    "cython" is absent only when the extension modules are not built.
    """
    found = {}
    try:
        found["cython"] = _compiled()
    except ImportError:
        pass
    found["python"] = _python()
    return found


if pure_python_from_env():
    _selected = _python()
else:
    try:
        _selected = _compiled()
    except ImportError as exc:
        raise ImportError(NOT_BUILT) from exc

IMPLEMENTATION: str = _selected.name
if TYPE_CHECKING:
    # the checker sees the compiled API through its stubs (.pyi); the twin has the same API,
    # which tests/unit/test_core_stubs.py holds to those stubs
    from handoff._core.allocator import STRATEGIES, allocate, rank_nodes
    from handoff._core.graph import ReadyTracker, find_cycle, levels, reverse_csr, topological_order
    from handoff._core.ledger import ResourceLedger
else:
    reverse_csr = _selected.reverse_csr
    find_cycle = _selected.find_cycle
    topological_order = _selected.topological_order
    levels = _selected.levels
    ReadyTracker = _selected.ReadyTracker
    ResourceLedger = _selected.ResourceLedger
    allocate = _selected.allocate
    rank_nodes = _selected.rank_nodes
    STRATEGIES = _selected.STRATEGIES
del _selected

"""Pure-Python twin of ledger.pyx: the nodes x resources ResourceLedger."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


__all__ = ["ResourceLedger"]


def _slack_for(cap: np.ndarray | float) -> np.ndarray | float:
    """Rounding allowance when comparing against a capacity: 1e-9, relative above 1."""
    return 1e-9 * np.maximum(cap, 1.0)


def _check_amount(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"amount of {name!r} must be a finite number >= 0, got {value!r}")


def _unknown_node(node: str, nodes: list[str]) -> str:
    shown = ", ".join(repr(name) for name in nodes[:10])
    more = f", ... ({len(nodes)} in all)" if len(nodes) > 10 else ""
    return f"unknown node {node!r}; registered nodes: [{shown}{more}]"


class ResourceLedger:
    """Capacities and claims of every node; nodes keep their registration order."""

    def __init__(self) -> None:
        self._nodes: list[str] = []
        self._node_index: dict[str, int] = {}
        self._resources: list[str] = []
        self._resource_index: dict[str, int] = {}
        self._cap = np.zeros((0, 0), dtype=np.float64)
        self._used = np.zeros((0, 0), dtype=np.float64)

    def __repr__(self) -> str:
        return f"ResourceLedger({len(self._nodes)} nodes, {len(self._resources)} resources)"

    def _add_resource(self, name: str) -> int:
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

    def _row(self, node: str) -> int:
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
    def nodes(self) -> list[str]:
        """Node names in registration order."""
        return list(self._nodes)

    @property
    def resources(self) -> list[str]:
        """Resource names in the order their columns were added."""
        return list(self._resources)

    def has_node(self, node: str) -> bool:
        return node in self._node_index

    def node_index(self, node: str) -> int:
        """Row of node; KeyError naming the registered nodes if unknown."""
        return self._row(node)

    def node_name(self, i: int) -> str:
        self._check_row(i)
        return self._nodes[i]

    def resource_vector(self, req: Mapping[str, float] | None) -> np.ndarray:
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

    def register(self, node: str, caps: Mapping[str, float]) -> None:
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

    def unregister(self, node: str) -> None:
        """Forget node and its claims; later nodes move up one row, keeping their order."""
        row = self._row(node)
        self._cap = np.delete(self._cap, row, axis=0)
        self._used = np.delete(self._used, row, axis=0)
        del self._nodes[row]
        self._node_index = {name: i for i, name in enumerate(self._nodes)}

    def available(self, node: str, req: Mapping[str, float] | None) -> bool:
        """True if req fits node's free resources (capacity - used)."""
        row = self._row(node)
        return self.available_vec(row, self.resource_vector(req))

    def request(self, node: str, req: Mapping[str, float] | None) -> bool:
        """Claim req on node if all of it fits now; never over-commits. Returns whether it did."""
        row = self._row(node)
        return self.request_vec(row, self.resource_vector(req))

    def release(self, node: str, req: Mapping[str, float] | None) -> None:
        """Give back req on node; a claim never goes below 0."""
        row = self._row(node)
        self.release_vec(row, self.resource_vector(req))

    def free(self, node: str) -> dict[str, float]:
        """{resource: capacity - used} for the resources node declares, never below 0."""
        row = self._row(node)
        return {
            name: max(float(self._cap[row, r] - self._used[row, r]), 0.0)
            for r, name in enumerate(self._resources)
            if self._cap[row, r] > 0
        }

    def capacity(self, node: str) -> dict[str, float]:
        """{resource: capacity} for the resources node declares (capacity > 0)."""
        row = self._row(node)
        return {
            name: float(self._cap[row, r])
            for r, name in enumerate(self._resources)
            if self._cap[row, r] > 0
        }

    def used(self, node: str) -> dict[str, float]:
        """{resource: amount claimed} for the resources with a claim on node."""
        row = self._row(node)
        return {
            name: float(self._used[row, r])
            for r, name in enumerate(self._resources)
            if self._used[row, r] > 0
        }

    def capacities(self) -> dict[str, dict[str, float]]:
        """{node: capacity(node)} for every node, in registration order."""
        return {node: self.capacity(node) for node in self._nodes}

    def fits_total(self, req: Mapping[str, float] | None) -> bool:
        """True if req fits some node's full capacity (ignoring current claims)."""
        return bool(self.fitting_nodes_total(req))

    def fitting_nodes_total(self, req: Mapping[str, float] | None) -> list[str]:
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

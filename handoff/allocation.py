"""Static allocation: the ``Allocator`` protocol, ``SimpleAllocator`` and ``apply_plan``.

``execute`` places functions as they become ready (``handoff.scheduler``); an Allocator
answers the planning question instead: given these functions and these nodes, where
would each one go? ``execute(dag, allocator=...)`` asks it once per run and takes its
answer as pins (``apply_plan``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Hashable, Iterable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from handoff import _core
from handoff.dag import DAG, Collocated, Function
from handoff.errors import AllocationError, DuplicateFunctionError, InvalidFunctionError
from handoff.scheduler.placement import (
    check_group,
    collocation_groups,
    group_costs,
    shortfall,
    unfit_reason,
)

__all__ = ["Allocator", "SimpleAllocator", "STRATEGIES", "apply_plan"]

STRATEGIES: tuple[str, ...] = tuple(_core.STRATEGIES)

Caps = Mapping[str, Mapping[str, float]]
Cost = Mapping[str, float] | None
# a unit's pin: a node, none, or the distinct nodes a group is pinned to (an error)
Pin = str | tuple[str, ...] | None


@runtime_checkable
class Allocator(Protocol):
    """Decides which node each function runs on."""

    def allocate(self, functions: Sequence[Function], caps: Caps) -> dict[Hashable, str]:
        """``{function_id: node}`` for every non-inline function in ``functions``."""


class SimpleAllocator:
    """Plans placements with one of the built-in strategies.

    The plan treats the functions as running concurrently, in the order given: each
    placement claims its cost, so later functions see what earlier ones took. When the
    next function fits some node's total capacity but no node's remaining capacity, a new
    *wave* starts: claims are reset and placement goes on (the earlier functions are
    assumed to have finished by then). Pinned functions go to their node, collocated ones
    (``Collocated``, transitively) all go where the group goes, placed as one unit: on a
    node that fits the sum of its members' costs when one does (they may run side by
    side), else on one that fits each member alone (they run one after another; the unit
    claims the largest cost per resource). Inline functions are left out of the plan.

    Parameters
    ----------
    strategy : str
        ``"first_available"``, ``"load_balanced"`` or ``"cost_optimized"``.

    Raises
    ------
    ValueError
        For an unknown strategy, naming the valid ones.
    """

    def __init__(self, strategy: str = "first_available"):
        if strategy not in STRATEGIES:
            raise ValueError(
                f"unknown allocation strategy {strategy!r}; valid: {', '.join(STRATEGIES)}"
            )
        self.strategy = strategy

    def __repr__(self) -> str:
        return f"SimpleAllocator({self.strategy!r})"

    def allocate(self, functions: Iterable[Function], caps: Caps) -> dict[Hashable, str]:
        """``{function_id: node}`` for every non-inline function, in the order given.

        Raises ``AllocationError(function_id, cost, capacities)`` when a function fits no
        node's total capacity (for a collocation group: no node fits each member), is
        pinned to a node not in ``caps``, or its group is pinned to two different nodes.
        """
        given = list(functions)
        for fn in given:
            if not isinstance(fn, Function):
                raise TypeError(f"allocate takes handoff.Function objects, got {type(fn).__name__}")
        fns = [fn for fn in given if not fn.is_inline]
        inline_ids = {fn.id for fn in given if fn.is_inline}
        ledger = _new_ledger(caps, ())
        capacities = ledger.capacities()
        units = [
            _checked_unit(ledger, capacities, members, costs, pin)
            for members, costs, pin in _units(fns, inline_ids)
        ]
        vecs = [ledger.resource_vector(cost) for _, cost, _ in units]
        resources = ledger.resources
        m = len(units)
        reqs = np.zeros((m, len(resources)), dtype=np.float64)
        for k, vec in enumerate(vecs):
            reqs[k, : vec.shape[0]] = vec
        pinned = np.array(
            [ledger.node_index(pin) if pin is not None else -1 for _, _, pin in units],
            dtype=np.int64,
        )
        names = ledger.nodes
        chosen = np.full(m, -1, dtype=np.int64)
        start, chunk = 0, 64
        while start < m:
            end = min(m, start + chunk)
            got = _core.allocate(ledger, reqs[start:end], pinned[start:end], self.strategy, True)
            misses = np.flatnonzero(got < 0)
            if not misses.size:
                chosen[start:end] = got
                start, chunk = end, chunk * 2
                continue
            k = int(misses[0])
            chosen[start : start + k] = got[:k]
            if k == 0 and _is_fresh(ledger):
                raise AssertionError(
                    "a unit that fits a node's total capacity did not fit an empty ledger"
                )
            ledger = _new_ledger(caps, resources)  # a new wave: what came before has finished
            start, chunk = start + k, max(16, 2 * k)
        plan: dict[Hashable, str] = {}
        by_id = {}
        for k, (members, _, _) in enumerate(units):
            for fid in members:
                by_id[fid] = names[int(chosen[k])]
        for fn in fns:
            plan[fn.id] = by_id[fn.id]
        return plan


def _new_ledger(caps: Caps, resources: Sequence[str]) -> _core.ResourceLedger:
    """A ledger with ``caps`` registered and the resource columns in ``resources`` order."""
    ledger = _core.ResourceLedger()
    for node, node_caps in caps.items():
        ledger.register(node, dict(node_caps))
    if resources:
        ledger.resource_vector({name: 0.0 for name in resources})
    return ledger


def _is_fresh(ledger: _core.ResourceLedger) -> bool:
    return not ledger.used_matrix().any()


def _units(
    fns: list[Function], inline_ids: set[Hashable]
) -> list[tuple[list[Hashable], list[Cost], Pin]]:
    """Collocation groups (and lone functions) as (member ids, member costs, pin), in order.

    The pin is a node name, None, or a tuple of the distinct pins of a group pinned to
    more than one node (reported by ``_checked_unit``).
    """
    position: dict[Hashable, int] = {}
    for k, fn in enumerate(fns):
        if fn.id in position:
            raise DuplicateFunctionError(fn.id)
        position[fn.id] = k
    links = []
    for k, fn in enumerate(fns):
        if isinstance(fn.node, Collocated):
            other = position.get(fn.node.function_id)
            if fn.node.function_id in inline_ids:
                raise InvalidFunctionError(
                    fn.id,
                    f"collocated with inline function {fn.node.function_id!r}, "
                    "which is never placed",
                )
            if other is None:
                raise InvalidFunctionError(
                    fn.id,
                    f"collocated with {fn.node.function_id!r}, "
                    "which is not among the functions to allocate",
                )
            links.append((k, other))
    group_of = {}
    for group in collocation_groups(links):
        for k in group:
            group_of[k] = group
    units: list[tuple[list[Hashable], list[Cost], Pin]] = []
    for k in range(len(fns)):
        members = group_of.get(k, [k])
        if members[0] != k:
            continue
        pins = sorted({node for node in (fns[j].node for j in members) if isinstance(node, str)})
        pin: Pin = (tuple(pins) if len(pins) > 1 else pins[0]) if pins else None
        units.append(([fns[j].id for j in members], [fns[j].cost for j in members], pin))
    return units


def _checked_unit(
    ledger: _core.ResourceLedger,
    capacities: dict[str, dict[str, float]],
    members: list[Hashable],
    costs: list[Cost],
    pin: Pin,
) -> tuple[list[Hashable], dict[str, float], str | None]:
    """(members, cost to claim, pin) of a placeable unit; raises AllocationError otherwise."""
    fid = members[0]
    total, each = group_costs(costs)
    grouped = len(members) > 1
    what = f"the collocated functions {members}" if grouped else "it"
    verb = "are" if grouped else "is"
    if isinstance(pin, tuple):
        raise AllocationError(
            fid, total, capacities, reason=f"{what} are pinned to different nodes {list(pin)}"
        )
    if pin is not None and not ledger.has_node(pin):
        raise AllocationError(
            fid,
            total,
            capacities,
            reason=f"{what} {verb} pinned to node {pin!r}, which is not in caps",
        )
    if grouped:
        error = check_group(members, costs, pin, ledger)
        if error is not None:
            raise error
        fitting = ledger.fitting_nodes_total(total)
        if fitting and (pin is None or pin in fitting):
            return members, total, pin
        return members, each, pin
    fitting = ledger.fitting_nodes_total(total)
    if pin is not None and pin not in fitting:
        raise AllocationError(
            fid,
            total,
            capacities,
            reason=f"the total capacity of node {pin!r}, where it is pinned, does not fit",
        )
    if not fitting:
        raise AllocationError(fid, total, capacities, reason=unfit_reason(total, capacities))
    return members, total, pin


def apply_plan(dag: DAG, allocator: Allocator, caps: Caps) -> DAG:
    """``dag`` with ``allocator.allocate(functions, caps)``'s answer as pins (called once).

    Functions the plan leaves out are placed by the scheduler as usual. A collocation group
    goes where the plan puts any of its members (all that are planned must agree). Raises
    ``AllocationError`` when the plan names a node not in ``caps``, puts a function on a
    node whose total capacity does not fit it (saying what that node lacks), moves a
    pinned function, or splits a collocation group; ``TypeError``/``ValueError`` for a
    plan that is not ``{function_id: node name}`` over the DAG's non-inline functions.
    """
    functions = list(dag)
    plan = allocator.allocate(functions, caps)
    if not isinstance(plan, Mapping):
        raise TypeError(
            f"{type(allocator).__name__}.allocate must return {{function_id: node}}, "
            f"got {type(plan).__name__}"
        )
    unknown = [fid for fid in plan if fid not in dag.functions]
    if unknown:
        raise ValueError(f"the allocator's plan names functions not in the DAG: {unknown!r}")
    inline = [fid for fid in plan if dag.functions[fid].is_inline]
    if inline:
        raise ValueError(f"the allocator's plan places inline functions {inline!r}")
    for fid, node in plan.items():
        if not isinstance(node, str):
            raise ValueError(f"the allocator's plan puts {fid!r} on {node!r}, not a node name")
    capacities = {name: dict(c) for name, c in caps.items()}
    position = {fn.id: k for k, fn in enumerate(functions)}
    links = [
        (position[fn.id], position[fn.node.function_id])
        for fn in functions
        if isinstance(fn.node, Collocated) and fn.node.function_id in position
    ]
    target: dict[Hashable, str] = {}
    for group in collocation_groups(links):
        ids = [functions[k].id for k in group]
        planned = {fid: plan[fid] for fid in ids if fid in plan}
        nodes = sorted(set(planned.values()))
        if len(nodes) > 1:
            raise AllocationError(
                ids[0],
                None,
                capacities,
                reason=f"the allocator split the collocated functions {ids} over nodes {planned}",
            )
        if nodes:
            target.update((fid, nodes[0]) for fid in ids)
    for fid, node in plan.items():
        target.setdefault(fid, node)
    out = DAG(dag.id)
    for fn in functions:
        planned_node = target.get(fn.id)
        if planned_node is not None:
            _check_planned(fn, planned_node, capacities)
            fn = replace(fn, node=planned_node)
        out.add_function(fn)
    return out


def _check_planned(fn: Function, node: str, capacities: dict[str, dict[str, float]]) -> None:
    """Raise AllocationError if ``fn`` may not go to ``node``, as the plan says."""
    if isinstance(fn.node, str) and fn.node != node:
        raise AllocationError(
            fn.id,
            fn.cost,
            capacities,
            reason=f"it is pinned to node {fn.node!r}, but the allocator placed it on {node!r}",
        )
    if node not in capacities:
        live = ", ".join(map(repr, capacities)) or "none"
        raise AllocationError(
            fn.id,
            fn.cost,
            capacities,
            reason=f"the allocator placed it on node {node!r}, which is not a live node "
            f"(live nodes: {live})",
        )
    lacks = shortfall(fn.cost, capacities[node])
    if lacks:
        raise AllocationError(
            fn.id,
            fn.cost,
            capacities,
            reason=f"the allocator placed it on node {node!r}, whose total capacity does "
            f"not fit it: node {node!r} has {lacks}",
        )

"""Placement rules shared by the scheduler and ``SimpleAllocator``: collocation groups, ranking.

Collocation means the same node, not the same time: a group may go to any node whose total
capacity fits each member alone (the ledger then runs them one after another if they do
not fit together), preferably one that fits their summed cost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Hashable, Iterable, Mapping, Sequence

import numpy as np

from handoff import _core
from handoff.dag import Collocated
from handoff.errors import AllocationError

if TYPE_CHECKING:
    from handoff._core import ResourceLedger
    from handoff.scheduler.run import RunState

__all__ = [
    "check_group",
    "collocation_groups",
    "group_costs",
    "group_tiers",
    "lacking",
    "name_nodes",
    "order_nodes",
    "read_placement",
    "shortfall",
    "unfit_reason",
]


def cost_key(cost: Mapping[str, float] | None) -> tuple:
    """Hashable form of a cost; () when it claims nothing."""
    if not cost:
        return ()
    return tuple(sorted((name, float(amount)) for name, amount in cost.items() if amount))


def shortfall(
    cost: Mapping[str, float] | None, caps: Mapping[str, float], free: bool = False
) -> str:
    """What one node's total capacity (or, ``free``, its free resources) lacks for ``cost``
    ("cpu=2 of the 4 it needs, no gpu"); "" when it fits."""
    short = []
    for name, amount in sorted((cost or {}).items()):
        need, have = float(amount), float(caps.get(name, 0.0))
        if need > have + 1e-9:
            if have or free:
                short.append(f"{name}={have:g} of the {need:g} it needs")
            else:
                short.append(f"no {name}")
    return ", ".join(short)


NAMES_SHOWN = 5  # nodes named in one explanation shared by many; the rest are counted


def name_nodes(names: Sequence[str]) -> str:
    """``node 'a'``, or ``nodes 'a', 'b' and 3 more`` for nodes that share an explanation."""
    if len(names) == 1:
        return f"node {names[0]!r}"
    shown = ", ".join(repr(n) for n in names[:NAMES_SHOWN])
    more = f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else ""
    return f"nodes {shown}{more}"


def lacking(cost: Mapping[str, float] | None, capacities: Mapping[str, Mapping]) -> str:
    """What each node's total capacity lacks for ``cost`` ("node 'a' has no gpu; nodes 'b',
    'c' have cpu=2 of the 4 it needs"); nodes that lack the same share one entry."""
    by_lack: dict[str, list[str]] = {}
    for node, caps in capacities.items():
        by_lack.setdefault(shortfall(cost, caps), []).append(node)
    return "; ".join(f"{name_nodes(nodes)} {'has' if len(nodes) == 1 else 'have'} {lacks}"
                     for lacks, nodes in by_lack.items())


def unfit_reason(cost: Mapping[str, float] | None, capacities: Mapping[str, Mapping]) -> str:
    """Why ``cost`` fits no node, node by node."""
    why = lacking(cost, capacities)
    return "its cost fits no node's total capacity" + (f" ({why})" if why else "")


def collocation_groups(links: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Indices joined by ``(member, other)`` links, transitively: each group sorted, groups
    ordered by their first member. Indices in no link are in no group."""
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in links:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[int]] = {}
    for x in sorted(parent):
        members.setdefault(root(x), []).append(x)
    return list(members.values())


def group_costs(costs: Iterable[Mapping[str, float] | None]) -> tuple[dict, dict]:
    """(summed cost, resource-wise largest cost) of a group's members.

    A node's total capacity fits every member alone exactly when it fits the largest.
    """
    total: dict[str, float] = {}
    each: dict[str, float] = {}
    for cost in costs:
        for name, amount in (cost or {}).items():
            amount = float(amount)
            total[name] = total.get(name, 0.0) + amount
            each[name] = max(each.get(name, 0.0), amount)
    return total, each


def check_group(
    fids: Sequence[Hashable],
    costs: Sequence[Mapping[str, float] | None],
    pin: str | None,
    ledger: ResourceLedger,
) -> AllocationError | None:
    """None if a node (``pin``, when set) fits each member's cost alone; else the error
    naming the first member that no node fitting the ones before it can hold."""
    _, each = group_costs(costs)
    nodes = ledger.fitting_nodes_total(each) if each else list(ledger.nodes)
    if nodes and (pin is None or pin in nodes):
        return None
    allowed = [pin] if pin is not None else list(ledger.nodes)
    for fid, cost in zip(fids, costs):
        fitting = ledger.fitting_nodes_total(cost) if cost else list(ledger.nodes)
        allowed = [n for n in allowed if n in fitting]
        if allowed:
            continue
        if pin is not None:
            reason = (
                f"the total capacity of node {pin!r}, where the collocated functions "
                f"{list(fids)} are pinned, does not fit it"
            )
        elif not fitting:
            reason = unfit_reason(cost, ledger.capacities())  # it fits no node even alone
        else:
            _, need = group_costs(costs[: list(fids).index(fid) + 1])
            why = lacking(need, ledger.capacities())  # no node fits them all: each lacks some
            reason = (
                f"the collocated functions {list(fids)} need one node that fits each of them, "
                f"and no node that fits the ones before it fits it ({why})"
            )
        return AllocationError(fid, cost, ledger.capacities(), reason=reason)
    raise AssertionError("a group that fits no node has a member that fits none")


def group_tiers(
    ledger: ResourceLedger, total: Mapping[str, float], each: Mapping[str, float]
) -> list[list]:
    """Nodes a group may go to, in ledger order: those whose total capacity fits its summed
    cost (preferred: the members can run side by side), then the others that fit each member."""
    if not each:
        return [list(ledger.nodes)]
    preferred = ledger.fitting_nodes_total(total)
    if len(preferred) == len(ledger.nodes):
        return [preferred]
    taken = set(preferred)
    return [preferred, [n for n in ledger.fitting_nodes_total(each) if n not in taken]]


def order_nodes(
    ledger: ResourceLedger,
    strategy: str,
    vec: np.ndarray | None,
    names: list,
    busy: Mapping[str, int],
) -> list:
    """``names`` best first for ``strategy``, by ``_core.rank_nodes`` (exact ties: fewer
    in-flight tasks first, then the order given). Zero-cost work is placed by slots alone,
    as ``Orchestrator`` places it: by in-flight count for load_balanced, else as given."""
    if len(names) <= 1 or (vec is None and strategy != "load_balanced"):
        return list(names)
    if strategy != "first_available":
        names = sorted(names, key=busy.__getitem__)  # stable; rank_nodes keeps it among ties
    if vec is None:
        return names
    index, node_name = ledger.node_index, ledger.node_name
    rows = np.fromiter((index(n) for n in names), dtype=np.int64, count=len(names))
    return [node_name(j) for j in _core.rank_nodes(ledger, vec, rows, strategy).tolist()]


def read_placement(
    run: RunState, ledger: ResourceLedger, local_node: str, vec_cache: dict
) -> AllocationError | None:
    """Fill ``run``'s costs, pins and collocation groups; the error that fails it at start, if any.

    ``vec_cache`` maps cost keys to resource vectors, shared across runs so equal costs
    share one array (the orchestrator uses its identity to tell cost classes apart).
    """
    functions = run.functions
    inline = run.graph.inline
    if run.spec.local_only:
        if not ledger.has_node(local_node):
            return AllocationError(
                functions[0].id if functions else None,
                None,
                ledger.capacities(),
                reason=f"the local node {local_node!r} is not in the ledger",
            )
        run.pin_all = local_node
        for i, fn in enumerate(functions):
            if fn.max_retries is not None:
                run.retries[i] = fn.max_retries
        return None
    fits: dict[tuple, list] = {}  # cost key -> nodes whose total capacity fits it
    links: list[tuple[int, int]] = []
    index = run.graph.index
    for i, fn in enumerate(functions):
        if inline[i]:
            continue
        if fn.max_retries is not None:
            run.retries[i] = fn.max_retries
        cost, node = fn.cost, fn.node
        key = cost_key(cost)
        if key:
            vec = vec_cache.get(key)
            if vec is None:
                vec = vec_cache[key] = ledger.resource_vector(dict(key))
            run.vecs[i] = vec
            run.costs[i] = dict(key)
        if node is None and not key:
            continue
        if isinstance(node, Collocated):
            links.append((i, index[node.function_id]))
            node = None
        if node is not None:
            if not ledger.has_node(node):
                return AllocationError(
                    fn.id,
                    cost,
                    ledger.capacities(),
                    reason=f"it is pinned to node {node!r}, which is not in the cluster",
                )
            run.pins[i] = node
        if key:
            nodes = fits.get(key)
            if nodes is None:
                nodes = fits[key] = ledger.fitting_nodes_total(dict(key))
            if not nodes:
                capacities = ledger.capacities()
                reason = unfit_reason(cost, capacities)
                return AllocationError(fn.id, cost, capacities, reason=reason)
            if node is not None and node not in nodes:
                capacities = ledger.capacities()
                lacks = shortfall(cost, capacities[node])
                return AllocationError(
                    fn.id,
                    cost,
                    capacities,
                    reason=f"it is pinned to node {node!r}, whose total capacity is too small "
                    f"(node {node!r} has {lacks})",
                )
    if links:
        return _read_groups(run, links, ledger)
    return None


def _read_groups(
    run: RunState, links: list[tuple[int, int]], ledger: ResourceLedger
) -> AllocationError | None:
    ids = run.graph.ids
    for group in collocation_groups(links):
        fids = [ids[i] for i in group]
        costs = [run.costs.get(i) for i in group]
        pins = sorted({run.pins[i] for i in group if i in run.pins})
        if len(pins) > 1:
            return AllocationError(
                fids[0],
                None,
                ledger.capacities(),
                reason=f"the collocated functions {fids} are pinned to different nodes {pins}",
            )
        pin = pins[0] if pins else None
        error = check_group(fids, costs, pin, ledger)
        if error is not None:
            return error
        total, each = group_costs(costs)
        g = len(run.group_members)
        for i in group:
            run.group_of[i] = g
            if pin is not None:
                run.pins[i] = pin
        run.group_members.append(group)
        run.group_node.append(pin)
        run.group_cost.append(total)
        run.group_need.append(each)
    return None

"""The driver's side of the result cache for one run, before it is submitted: lineage keys,
one question to each live node, and the hits pinned to a node that holds them."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from handoff.cache.keys import lineage_keys
from handoff.dag import Collocated

if TYPE_CHECKING:
    from handoff.node.runs import RunContext
    from handoff.node.server import Node

__all__ = ["plan_cache"]


def plan_cache(node: Node, ctx: RunContext) -> None:
    """Fill ``ctx``'s cache keys (functions with ``cache=True``) and hits.

    A hit is pinned to a node that holds its key (this node first: its value need not
    travel to the driver), costs nothing there (loading claims no resources) and is loaded
    instead of computed. A function pinned elsewhere by the user, or in a collocation
    group, only hits on the node it must run on anyway (not at all, for a group).
    Raises ``InvalidFunctionError`` when a key cannot be computed.
    """
    functions = ctx.functions
    wanted = [i for i, fn in enumerate(functions) if fn.cache]
    if not wanted:
        return
    indptr, indices = ctx.graph.indptr.tolist(), ctx.graph.indices.tolist()  # inputs in args order
    deps = [indices[indptr[i]:indptr[i + 1]] for i in range(len(functions))]
    keys = lineage_keys(functions, deps, wanted)
    ctx.cache_keys = {i: keys[i] for i in wanted}
    held = node.cache.ask_everyone(sorted(set(ctx.cache_keys.values())))
    holders: dict[str, list[str]] = {}
    for name in sorted(held, key=lambda n: (n != node.name, n)):
        for key in held[name]:
            holders.setdefault(key, []).append(name)
    grouped = {i for i, fn in enumerate(functions) if isinstance(fn.node, Collocated)}
    grouped |= {ctx.graph.index[fn.node.function_id] for fn in functions if isinstance(fn.node, Collocated)}
    hits: dict[int, str] = {}
    for i in wanted:
        nodes = holders.get(ctx.cache_keys[i])
        if not nodes or i in grouped:
            continue
        pin = functions[i].node
        if isinstance(pin, str):
            if pin in nodes:
                hits[i] = pin
        else:
            hits[i] = nodes[0]
    if hits:
        scheduled = list(functions)
        for i, name in hits.items():
            scheduled[i] = dataclasses.replace(functions[i], node=name, cost=None)
        ctx.scheduled = scheduled
    ctx.hits = hits

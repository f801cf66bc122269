"""DAG pictures as text: Mermaid and Graphviz DOT, no Graphviz needed to make them.

Node ids are generated (``n0``, ``n1``, ... or ``g0``, ... for groups), so they match
``[A-Za-z0-9_]+`` and are never a keyword of either language; labels are the function ids,
quoted and escaped. Past ``limit`` functions the picture has one box per group with its count,
and edges between groups are counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from handoff.dag import Collocated

if TYPE_CHECKING:
    from handoff.dag import DAG, CompiledGraph, Function

__all__ = ["Picture", "PictureNode", "picture_of", "to_mermaid", "to_dot", "COLLAPSE_ABOVE"]

COLLAPSE_ABOVE = 500


@dataclass(slots=True)
class PictureNode:
    id: str  # generated, [A-Za-z0-9_]+
    label: str
    group: str
    count: int  # functions it stands for
    pin: str | None
    cost: str | None
    members: list[int]  # function indices


@dataclass(slots=True)
class Picture:
    """What to draw: boxes, counted edges (``(from, to, count)`` by position), collapsed or not."""

    title: str
    collapsed: bool
    functions: int
    nodes: list[PictureNode]
    edges: list[tuple[int, int, int]]


def _pin(fn: Function) -> str | None:
    if fn.node is None:
        return None
    if isinstance(fn.node, Collocated):
        return f"with {fn.node.function_id}"
    return str(fn.node)


def _cost(fn: Function) -> str | None:
    if not fn.cost:
        return None
    return ", ".join(f"{k}={v:g}" for k, v in sorted(fn.cost.items()))


def picture_of(graph: CompiledGraph, functions: Sequence[Function], title: Any,
               limit: int = COLLAPSE_ABOVE, groups: tuple[Sequence[int], list[str]] | None = None) -> Picture:
    """The boxes and edges of a compiled DAG; one box per group past ``limit`` functions."""
    n = len(functions)
    indptr, indices = graph.indptr.tolist(), graph.indices.tolist()
    if n <= limit:
        nodes = [PictureNode(f"n{i}", str(fn.id), fn.group_name, 1, _pin(fn), _cost(fn), [i])
                 for i, fn in enumerate(functions)]
        edges = [(int(d), i, 1) for i in range(n) for d in indices[indptr[i]:indptr[i + 1]]]
        return Picture(str(title), False, n, nodes, edges)
    if groups is None:
        from handoff.observe.record import groups_of

        groups = groups_of(list(functions))
    group, names = groups
    g = np.asarray(group, dtype=np.int64)
    order = np.argsort(g, kind="stable")
    bounds = np.searchsorted(g[order], np.arange(len(names) + 1))
    members = [order[bounds[k]:bounds[k + 1]].tolist() for k in range(len(names))]
    nodes = []
    for k, name in enumerate(names):
        pins = {_pin(functions[i]) for i in members[k]}
        costs = {_cost(functions[i]) for i in members[k]}
        nodes.append(PictureNode(f"g{k}", name, name, len(members[k]),
                                 pins.pop() if len(pins) == 1 else "various",
                                 costs.pop() if len(costs) == 1 else "various", members[k]))
    consumer = np.repeat(np.arange(n), np.diff(graph.indptr))
    keys, counts = np.unique(g[graph.indices] * len(names) + g[consumer], return_counts=True)
    edges = [(key // len(names), key % len(names), count)
             for key, count in zip(keys.tolist(), counts.tolist())]
    return Picture(str(title), True, n, nodes, edges)


def _dag_picture(dag: DAG, limit: int) -> Picture:
    graph = dag.compile()
    return picture_of(graph, [dag.functions[i] for i in graph.ids], dag.id, limit)


def _box_lines(node: PictureNode, collapsed: bool) -> list[str]:
    lines = [node.label]
    if collapsed:
        lines[0] = f"{node.label} ({node.count})"
    if node.pin:
        lines.append(f"@{node.pin}")
    if node.cost:
        lines.append(node.cost)
    return lines


_MERMAID = {"#": "#35;", '"': "#quot;", "<": "#lt;", ">": "#gt;", "&": "#amp;", "`": "#96;",
            "\n": "\\n", "\r": "\\r", "\t": " "}


def mermaid_text(text: str) -> str:
    """``text`` safe inside a quoted Mermaid label (entity codes; line breaks shown as \\n)."""
    return "".join(_MERMAID.get(c, c) if c in _MERMAID or ord(c) >= 32 else " " for c in text)


def dot_text(text: str) -> str:
    """``text`` safe inside a double-quoted DOT string (escapes, line breaks shown as \\n)."""
    out = []
    for c in text:
        if c == "\\":
            out.append("\\\\")
        elif c == '"':
            out.append('\\"')
        elif c == "\n":
            out.append("\\\\n")
        elif c == "\r":
            out.append("\\\\r")
        elif ord(c) < 32:
            out.append(" ")
        else:
            out.append(c)
    return "".join(out)


def to_mermaid(dag: DAG, limit: int = COLLAPSE_ABOVE) -> str:
    """A Mermaid flowchart of ``dag`` (see the module docstring)."""
    pic = _dag_picture(dag, limit)
    out = ["flowchart LR"]
    if pic.collapsed:
        out.append(f"    %% {pic.functions} functions, one box per group")
    for node in pic.nodes:
        label = "<br/>".join(mermaid_text(line) for line in _box_lines(node, pic.collapsed))
        out.append(f'    {node.id}["{label}"]')
    for a, b, count in pic.edges:
        arrow = f'-->|"{count}"|' if pic.collapsed and count > 1 else "-->"
        out.append(f"    {pic.nodes[a].id} {arrow} {pic.nodes[b].id}")
    return "\n".join(out) + "\n"


def to_dot(dag: DAG, limit: int = COLLAPSE_ABOVE) -> str:
    """A Graphviz DOT digraph of ``dag`` (see the module docstring)."""
    pic = _dag_picture(dag, limit)
    out = [f'digraph "{dot_text(pic.title)}" {{', "    rankdir=LR;",
           '    node [shape=box, style=rounded, fontname="Helvetica"];']
    for node in pic.nodes:
        label = "\\n".join(dot_text(line) for line in _box_lines(node, pic.collapsed))
        out.append(f'    {node.id} [label="{label}"];')
    for a, b, count in pic.edges:
        attrs = f' [label="{count}"]' if pic.collapsed and count > 1 else ""
        out.append(f"    {pic.nodes[a].id} -> {pic.nodes[b].id}{attrs};")
    out.append("}")
    return "\n".join(out) + "\n"


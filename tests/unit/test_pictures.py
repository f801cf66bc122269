"""DAG.to_mermaid and DAG.to_dot: generated ids, quoted and escaped labels, pins and costs,
one box per group past 500 functions."""

from __future__ import annotations

import re

import pytest

from handoff import DAG, Collocated, Function
from handoff.errors import MissingFunctionError
from handoff.observe.pictures import COLLAPSE_ABOVE

HOSTILE = ['say "hi"', "two\nlines", "end", "subgraph", "graph", "日本語 ✓", "a;b{c}[d]", "x -> y",
           "back\\slash", "<b>&amp;</b>", "#35;", "`tick`", 7, ("tuple", 1)]

ID = re.compile(r"^[A-Za-z0-9_]+$")
KEYWORDS = {"end", "graph", "subgraph", "flowchart", "digraph", "node", "edge", "strict", "style",
            "class", "classDef", "click", "linkStyle", "direction"}


def hostile_dag() -> DAG:
    dag = DAG('dag "x"\n')
    dag.add_function(Function(id=HOSTILE[0], code=len))
    for fid in HOSTILE[1:]:
        dag.add_function(Function(id=fid, code=len, args=[HOSTILE[0]]))
    dag.add_function(Function(id="pinned", code=len, args=["end"], node="gpu-1", cost={"cpu": 2, "gpu": 1}))
    dag.add_function(Function(id="near", code=len, args=["pinned"], node=Collocated("pinned")))
    return dag


def mermaid_lines(text: str) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """Boxes {id: label} and edges (from, to, label) of a flowchart; fails on any other line."""
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    boxes, edges = {}, []
    for line in lines[1:]:
        if line.strip().startswith("%%"):
            continue
        box = re.fullmatch(r'    ([A-Za-z0-9_]+)\["([^"\n]*)"\]', line)
        edge = re.fullmatch(r'    ([A-Za-z0-9_]+) -->(?:\|"(\d+)"\|)? ([A-Za-z0-9_]+)', line)
        assert box or edge, f"not a box or an edge: {line!r}"
        if box:
            boxes[box.group(1)] = box.group(2)
        else:
            edges.append((edge.group(1), edge.group(3), edge.group(2) or ""))
    return boxes, edges


def unmermaid(label: str) -> list[str]:
    codes = {"#quot;": '"', "#lt;": "<", "#gt;": ">", "#amp;": "&", "#96;": "`", "#35;": "#"}
    lines = label.split("<br/>")
    out = []
    for line in lines:
        assert "<" not in line and ">" not in line and '"' not in line
        out.append(re.sub(r"#(quot|lt|gt|amp|96|35);", lambda m: codes[m.group(0)], line).replace("\\n", "\n"))
    return out


DOT_STRING = r'"((?:[^"\\\n]|\\.)*)"'


def undot(label: str) -> list[str]:
    """The lines of a DOT label: \\n breaks a line, \\" and \\\\ are the characters."""
    lines, cur, i = [], [], 0
    while i < len(label):
        c = label[i]
        if c == "\\":
            nxt = label[i + 1]
            if nxt == "n":
                lines.append("".join(cur))
                cur = []
            else:
                cur.append(nxt)
            i += 2
        else:
            cur.append(c)
            i += 1
    lines.append("".join(cur))
    return lines


def dot_lines(text: str) -> tuple[str, dict[str, str], list[tuple[str, str, str]]]:
    lines = text.splitlines()
    head = re.fullmatch(r"digraph " + DOT_STRING + r" \{", lines[0])
    assert head, lines[0]
    assert lines[-1] == "}"
    boxes, edges = {}, []
    for line in lines[1:-1]:
        if line.strip() in ("rankdir=LR;",) or line.strip().startswith("node ["):
            continue
        box = re.fullmatch(r"    ([A-Za-z0-9_]+) \[label=" + DOT_STRING + r"\];", line)
        edge = re.fullmatch(r'    ([A-Za-z0-9_]+) -> ([A-Za-z0-9_]+)(?: \[label="(\d+)"\])?;', line)
        assert box or edge, f"not a box or an edge: {line!r}"
        if box:
            boxes[box.group(1)] = box.group(2)
        else:
            edges.append((edge.group(1), edge.group(2), edge.group(3) or ""))
    return head.group(1), boxes, edges


def test_mermaid_ids_are_safe_and_labels_round_trip():
    dag = hostile_dag()
    boxes, edges = mermaid_lines(dag.to_mermaid())
    assert all(ID.match(i) and i not in KEYWORDS for i in boxes)
    labels = {unmermaid(label)[0]: i for i, label in boxes.items()}
    assert set(labels) == {str(fid) for fid in dag.functions}
    # every dependency is an edge between the right boxes
    expected = {(labels[str(a)], labels[str(fn.id)]) for fn in dag for a in fn.dependency_ids}
    assert {(a, b) for a, b, _ in edges} == expected
    pinned = unmermaid(boxes[labels["pinned"]])
    assert pinned == ["pinned", "@gpu-1", "cpu=2, gpu=1"]
    assert unmermaid(boxes[labels["near"]]) == ["near", "@with pinned"]


def test_dot_ids_are_safe_and_labels_round_trip():
    dag = hostile_dag()
    title, boxes, edges = dot_lines(dag.to_dot())
    assert undot(title) == ['dag "x"\\n']  # a newline is shown, not obeyed
    assert all(ID.match(i) and i not in KEYWORDS for i in boxes)
    labels = {undot(label)[0]: i for i, label in boxes.items()}
    # a newline inside an id is shown as the two characters \n, so the box keeps one title line
    assert set(labels) == {str(fid).replace("\n", "\\n") for fid in dag.functions}
    expected = {(labels[str(a).replace("\n", "\\n")], labels[str(fn.id).replace("\n", "\\n")])
                for fn in dag for a in fn.dependency_ids}
    assert {(a, b) for a, b, _ in edges} == expected
    assert undot(boxes[labels["pinned"]]) == ["pinned", "@gpu-1", "cpu=2, gpu=1"]
    assert undot(boxes[labels["back\\slash"]]) == ["back\\slash"]


def big_dag(n: int) -> DAG:
    dag = DAG("big")
    for i in range(n):
        dag.add_function(Function(id=f"load-{i}", code=len, group="load"))
        dag.add_function(Function(id=f"parse-{i}", code=str, args=[f"load-{i}"]))
    dag.add_function(Function(id="merge", code=max, args=[f"parse-{i}" for i in range(n)]))
    return dag


def test_large_dags_collapse_to_one_box_per_group_with_counts():
    n = COLLAPSE_ABOVE // 2 + 1  # 2n + 1 > 500 functions
    dag = big_dag(n)
    boxes, edges = mermaid_lines(dag.to_mermaid())
    labels = {unmermaid(label)[0]: i for i, label in boxes.items()}
    assert set(labels) == {f"load ({n})", f"str ({n})", "max (1)"}
    assert {(a, b, c) for a, b, c in edges} == {
        (labels[f"load ({n})"], labels[f"str ({n})"], str(n)),
        (labels[f"str ({n})"], labels["max (1)"], str(n)),
    }
    _, dot_boxes, dot_edges = dot_lines(dag.to_dot())
    assert len(dot_boxes) == 3 and len(dot_edges) == 2
    assert all(c == str(n) for _, _, c in dot_edges)


def test_small_dags_are_drawn_function_by_function():
    dag = big_dag(COLLAPSE_ABOVE // 2 - 1)  # 499 functions
    boxes, _ = mermaid_lines(dag.to_mermaid())
    assert len(boxes) == len(dag)


def test_an_invalid_dag_has_no_picture():
    dag = DAG().add_function(Function(id="a", code=len, args=["missing"]))
    with pytest.raises(MissingFunctionError):
        dag.to_mermaid()
    with pytest.raises(MissingFunctionError):
        dag.to_dot()


def test_group_must_be_a_non_empty_string():
    from handoff.errors import InvalidFunctionError

    for bad in ("", 3, ["x"]):
        with pytest.raises(InvalidFunctionError, match="group"):
            DAG().add_function(Function(id="a", code=len, group=bad))
    assert Function(id="a", code=len, group="g").group_name == "g"
    assert Function(id="a", code=len).group_name == "len"
    assert Function(id="p", type="input").group_name == "input"  # a stream's input has no code
    dag = DAG().add_function(Function(id="p", type="input")).add_function(Function(id="q", code=len, args=["p"]))
    assert mermaid_lines(dag.to_mermaid()) == ({"n0": "p", "n1": "q"}, [("n0", "n1", "")])

"""Graphviz rendering of a graph, for `t2c inspect --format dot`.

Each transformer layer (module path up to its first numeric component, e.g.
`model.layers.0`) becomes one cluster, so the picture reads layer by layer;
nodes with no recorded module, or outside any numbered layer, sit at the top
level. Params are not drawn: a model has hundreds, and they would bury the
dataflow. Each op's label counts the params it reads instead.

Output is deterministic: node ids follow graph order, clusters follow the
order in which layers first appear.
"""

from __future__ import annotations

import re

from .core import Graph, Node
from .summary import node_layer


def to_dot(graph: Graph, *, max_nodes: int | None = None) -> str:
    """The graph as a Graphviz `digraph`.

    Inputs are ellipses, outputs doubleoctagons, ops boxes labelled with the
    op name, the number of params it reads and its result types. With
    `max_nodes`, only the first `max_nodes` nodes are drawn and a note says how
    many were left out.
    """
    nodes = graph.nodes if max_nodes is None else graph.nodes[: max(0, max_nodes)]
    omitted = len(graph.nodes) - len(nodes)

    # Which dot node draws each SSA value: graph inputs and node results.
    source: dict[int, str] = {}
    for i, v in enumerate(graph.inputs):
        source[id(v)] = f"in{i}"
    node_ids: dict[int, str] = {}
    for i, node in enumerate(nodes):
        node_ids[id(node)] = f"n{i}"
        for out in node.outputs:
            source[id(out)] = f"n{i}"

    lines = [
        f"digraph {_quote(graph.name)} {{",
        f"  label={_quote('graph ' + graph.name)};",
        "  labelloc=t;",
        '  node [shape=box, fontname="monospace", fontsize=10];',
        '  edge [fontname="monospace", fontsize=9];',
    ]

    for i, v in enumerate(graph.inputs):
        lines.append(f"  in{i} [shape=ellipse, label={_quote(_lines(v.name, v.type))}];")

    # Group nodes by layer; a dict keeps the order of first appearance.
    top: list[Node] = []
    clusters: dict[str, list[Node]] = {}
    for node in nodes:
        layer = node_layer(node)
        if layer is None:
            top.append(node)
        else:
            clusters.setdefault(layer, []).append(node)

    for node in top:
        lines.append(f"  {_node_decl(graph, node, node_ids[id(node)])}")
    for ci, (layer, members) in enumerate(clusters.items()):
        lines.append(f"  subgraph cluster_{ci}_{_ident(layer)} {{")
        lines.append(f"    label={_quote(layer)};")
        lines.append('    style=rounded; color="#888888";')
        for node in members:
            lines.append(f"    {_node_decl(graph, node, node_ids[id(node)])}")
        lines.append("  }")

    for i, (oname, v) in enumerate(graph.outputs):
        lines.append(f"  out{i} [shape=doubleoctagon, label={_quote(_lines(oname, v.type))}];")

    if omitted:
        lines.append(f"  omitted [shape=plaintext, label={_quote(f'... {omitted} more nodes not shown')}];")

    edges: list[str] = []
    seen: set[tuple[str, str]] = set()

    def edge(src: str, dst: str) -> None:
        if (src, dst) not in seen:
            seen.add((src, dst))
            edges.append(f"  {src} -> {dst};")

    for node in nodes:
        for v in node.inputs:
            src = source.get(id(v))
            if src is not None:  # params are not drawn
                edge(src, node_ids[id(node)])
    for i, (_, v) in enumerate(graph.outputs):
        src = source.get(id(v))
        if src is not None:  # outputs of omitted nodes (or params) have no drawn producer
            edge(src, f"out{i}")
    lines.extend(edges)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _node_decl(graph: Graph, node: Node, nid: str) -> str:
    n_params = len({id(v) for v in node.inputs if graph.is_param(v)})
    head = node.op
    if n_params:
        head += f" ({n_params} param{'s' if n_params != 1 else ''})"
    types = ", ".join(str(o.type) for o in node.outputs)
    return f"{nid} [label={_quote(_lines(head, types))}];"


def _quote(text: str) -> str:
    """A double-quoted dot string; newlines become dot's centred line breaks."""
    escaped = (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("{", "\\{")
        .replace("}", "\\}")
        .replace("\n", "\\n")
    )
    return f'"{escaped}"'


def _ident(text: str) -> str:
    return re.sub(r"\W", "_", text)


def _lines(*parts: object) -> str:
    return "\n".join(str(p) for p in parts)

"""The IR's text form: one node a line, deterministic numbering, parseable back.

    graph tiny
    input %0 "input_ids" : i64[batch,seq]
    param @embed.weight : f32[100,64]
    %1 = embedding(@embed.weight, %0) {padding_idx=-1} : f32[batch,seq,64]
    output "logits" = %1

Inputs are numbered first, then node results in order; params are named.
Attrs print every field of the op's attrs dataclass, in declaration order, so
two graphs are structurally equal exactly when their texts are equal.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable

from .core import DType, Graph, Node, SymDim, Value


def format_attr(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (DType, SymDim)):
        return str(v)
    if isinstance(v, (tuple, list)):
        return "[" + ",".join(format_attr(x) for x in v) + "]"
    raise TypeError(f"cannot print attr value {v!r}")


def format_attrs(attrs: Any) -> str:
    fields = dataclasses.fields(attrs)
    if not fields:
        return ""
    return "{" + ", ".join(f"{f.name}={format_attr(getattr(attrs, f.name))}" for f in fields) + "}"


class Namer:
    """Deterministic names for values: %N for SSA values, @name for params."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.ids: dict[int, str] = {}
        n = 0
        for v in graph.inputs:
            self.ids[id(v)] = f"%{n}"
            n += 1
        for node in graph.nodes:
            for out in node.outputs:
                self.ids[id(out)] = f"%{n}"
                n += 1

    def __call__(self, v: Value) -> str:
        if id(v) in self.ids:
            return self.ids[id(v)]
        if self.graph.is_param(v):
            return f"@{v.name}"
        return f"%<undefined {v!r}>"


def format_node(node: Node, name: Callable[[Value], str]) -> str:
    outs = ", ".join(name(o) for o in node.outputs)
    args = ", ".join(name(v) for v in node.inputs)
    attrs = format_attrs(node.attrs)
    types = ", ".join(str(o.type) for o in node.outputs)
    return f"{outs} = {node.op}({args}){' ' + attrs if attrs else ''} : {types}"


def print_graph(graph: Graph, *, comments: bool = False) -> str:
    """The canonical text of `graph`. `comments` adds each node's source module as `# ...` lines."""
    name = Namer(graph)
    lines = [f"graph {graph.name}"]
    for v in graph.inputs:
        lines.append(f"input {name(v)} {json.dumps(v.name)} : {v.type}")
    lines.extend(f"constraint {c}" for c in graph.constraint_lines())
    lines.extend(f"state {json.dumps(n)} {json.dumps(spec, sort_keys=True)}" for n, spec in graph.states.items())
    for pname, v in graph.param_values.items():
        lines.append(f"param @{pname} : {v.type}")
    last_scope = None
    for node in graph.nodes:
        if comments:
            scope = node.meta.get("module")
            if scope and scope != last_scope:
                lines.append(f"# {scope}")
                last_scope = scope
        lines.append(format_node(node, name))
    for oname, v in graph.outputs:
        lines.append(f"output {json.dumps(oname)} = {name(v)}")
    return "\n".join(lines) + "\n"

"""A JSON-friendly summary of a graph, for `t2c inspect --format json`.

Value ids are the ones the text form prints (`%5`, `@embed.weight`), so a
summary can be read next to `print_graph` output. Nodes are grouped into
layers by their source module (`model.layers.3.self_attn.q_proj` belongs to
layer `model.layers.3`); the DOT renderer uses the same grouping.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any

from .core import DType, Graph, SymDim, TensorType
from .printer import Namer


def layer_of(module_path: str | None) -> str | None:
    """The layer a module path belongs to: its prefix up to the first numeric component.

    `model.layers.0.mlp.up` -> `model.layers.0`; `model.norm`, `lm_head`, `""`
    and `None` -> `None` (not inside a numbered layer).
    """
    if not module_path:
        return None
    parts = module_path.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return None


def node_layer(node) -> str | None:
    """The layer of a node, from the module path its frontend recorded in `node.meta`."""
    module = node.meta.get("module")
    return layer_of(module) if isinstance(module, str) else None


def graph_summary(graph: Graph) -> dict[str, Any]:
    """Name, signature, param totals, op counts (overall and per layer) and every node.

    The result contains only dicts, lists, strings, ints, floats, bools and
    None, so `json.dumps` takes it as is (non-finite floats become strings
    such as `"inf"`, so the output is strict JSON).
    """
    name = Namer(graph)

    elements = 0
    nbytes = 0
    for v in graph.param_values.values():
        n = _static_numel(v.type)
        if n is not None:
            elements += n
            nbytes += n * _itemsize(v.type.dtype)

    layers: dict[str, dict[str, int]] = {}
    nodes = []
    for node in graph.nodes:
        layer = node_layer(node)
        if layer is not None:
            counts = layers.setdefault(layer, {})
            counts[node.op] = counts.get(node.op, 0) + 1
        outs = [name(o) for o in node.outputs]
        module = node.meta.get("module")
        nodes.append(
            {
                "id": outs[0] if outs else None,
                "outputs": outs,
                "op": node.op,
                "inputs": [name(v) for v in node.inputs],
                "attrs": _attrs_json(node.attrs),
                "types": [str(o.type) for o in node.outputs],
                "module": module if isinstance(module, str) else None,
                "layer": layer,
            }
        )

    return {
        "name": graph.name,
        "inputs": [{"id": name(v), "name": v.name, "type": str(v.type)} for v in graph.inputs],
        "outputs": [{"id": name(v), "name": oname, "type": str(v.type)} for oname, v in graph.outputs],
        "params": {"count": len(graph.param_values), "elements": elements, "bytes": nbytes},
        "node_count": len(graph.nodes),
        "op_counts": graph.op_counts(),
        "layers": {k: dict(sorted(v.items())) for k, v in layers.items()},
        "nodes": nodes,
    }


def _static_numel(t: TensorType) -> int | None:
    if not t.is_static:
        return None
    return math.prod(t.shape)  # type: ignore[arg-type]


def _itemsize(d: DType) -> int:
    return d.torch.itemsize


def _attrs_json(attrs: Any) -> dict[str, Any]:
    if attrs is None or not dataclasses.is_dataclass(attrs):
        return {}
    return {f.name: _json_value(getattr(attrs, f.name)) for f in dataclasses.fields(attrs)}


def _json_value(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    if isinstance(v, (DType, SymDim)):
        return str(v)
    if isinstance(v, enum.Enum):
        return _json_value(v.value)
    if isinstance(v, (tuple, list)):
        return [_json_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return _attrs_json(v)
    return str(v)

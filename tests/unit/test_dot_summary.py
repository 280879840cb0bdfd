"""`to_dot` and `graph_summary`: layer grouping, well-formed DOT, JSON-friendly summaries."""

from __future__ import annotations

import json
import re

import pytest
import torch

from t2c.ir import DType, Graph, SymDim, TensorType, print_graph, verify
from t2c.ir.dot import to_dot
from t2c.ir.opdefs.reduction import TopKAttrs
from t2c.ir.opdefs.shape import ShapeAttrs
from t2c.ir.summary import graph_summary, layer_of

F32 = DType.F32


def _graph() -> Graph:
    """Two layers of linear/add, then a top-level reshape and topk (two results)."""
    g = Graph(name="tiny")
    x = g.add_input("x", TensorType(F32, ("batch", "seq", 64)))
    w_up = g.add_param("model.layers.0.mlp.up.weight", torch.zeros(128, 64))
    b_up = g.add_param("model.layers.0.mlp.up.bias", torch.zeros(128))
    w_down = g.add_param("model.layers.0.mlp.down.weight", torch.zeros(64, 128))
    w_q = g.add_param("model.layers.1.self_attn.q_proj.weight", torch.zeros(64, 64))

    def node(op, inputs, attrs=None, module=None):
        n = g.add_node(op, inputs, attrs)
        if module is not None:
            n.meta["module"] = module
        return n

    up = node("linear", [x, w_up, b_up], module="model.layers.0.mlp.up").output
    act = node("relu", [up], module="model.layers.0.mlp.act").output
    down = node("linear", [act, w_down], module="model.layers.0.mlp.down").output
    h = node("add", [x, down], module="model.layers.0").output
    q = node("linear", [h, w_q], module="model.layers.1.self_attn.q_proj").output
    h2 = node("add", [q, q], module="model.layers.1").output
    flat = node("reshape", [h2], ShapeAttrs((SymDim("batch*seq"), 64))).output
    topk = node("topk", [flat], TopKAttrs(k=2), module="model.norm")
    g.set_output("hidden", flat)
    g.set_output("values", topk.outputs[0])
    g.set_output("indices", topk.outputs[1])
    g.set_output("x_again", x)
    verify(g)
    return g


# -- a structural reader for the DOT we emit (no `dot` binary in CI) -------------------


def _strip_strings(text: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)


def _parse_dot(text: str) -> dict:
    bare = _strip_strings(text)
    depth = 0
    for ch in bare:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0, "a closing brace without an opening one"
    assert depth == 0, "unbalanced braces"
    assert bare.startswith("digraph ")

    decls: dict[str, str] = {}  # node id -> its attribute text
    cluster_of: dict[str, str | None] = {}
    clusters: dict[str, str] = {}  # cluster id -> label
    edges: list[tuple[str, str]] = []
    current = None
    for line in text.splitlines():
        s = line.strip()
        if m := re.fullmatch(r"subgraph (cluster_\w+) \{", s):
            current = m.group(1)
            clusters[current] = ""
        elif s == "}":
            current = None
        elif current and (m := re.fullmatch(r'label=("(?:[^"\\]|\\.)*");', s)):
            clusters[current] = json.loads(m.group(1))
        elif m := re.fullmatch(r"(\w+) -> (\w+);", s):
            edges.append((m.group(1), m.group(2)))
        elif (m := re.fullmatch(r"(\w+) \[(.*)\];", s)) and m.group(1) not in ("node", "edge", "graph"):
            assert m.group(1) not in decls, f"{m.group(1)} declared twice"
            decls[m.group(1)] = m.group(2)
            cluster_of[m.group(1)] = current
    return {"decls": decls, "cluster_of": cluster_of, "clusters": clusters, "edges": edges}


def _label(attrs: str) -> str:
    m = re.search(r'label="((?:[^"\\]|\\.)*)"', attrs)
    assert m
    return m.group(1).replace("\\n", "\n").replace("\\{", "{").replace("\\}", "}").replace('\\"', '"')


# -- layer_of --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, layer",
    [
        ("model.layers.0.self_attn.q_proj", "model.layers.0"),
        ("model.layers.12", "model.layers.12"),
        ("model.layers.1.mlp.experts.3.up", "model.layers.1"),
        ("encoder.layer.5.attention", "encoder.layer.5"),
        ("model.norm", None),
        ("lm_head", None),
        ("", None),
        (None, None),
    ],
)
def test_layer_of(path, layer):
    assert layer_of(path) == layer


# -- dot -------------------------------------------------------------------------------


def test_dot_one_cluster_per_layer():
    dot = _parse_dot(to_dot(_graph()))
    assert sorted(dot["clusters"].values()) == ["model.layers.0", "model.layers.1"]
    by_label = {label: cid for cid, label in dot["clusters"].items()}
    members = {label: [n for n, c in dot["cluster_of"].items() if c == cid] for label, cid in by_label.items()}
    assert members == {"model.layers.0": ["n0", "n1", "n2", "n3"], "model.layers.1": ["n4", "n5"]}
    # No module, or a module outside a numbered layer: top level.
    assert dot["cluster_of"]["n6"] is None and dot["cluster_of"]["n7"] is None


def test_dot_edges_are_declared():
    g = _graph()
    dot = _parse_dot(to_dot(g))
    for src, dst in dot["edges"]:
        assert src in dot["decls"] and dst in dot["decls"], (src, dst)
    edges = set(dot["edges"])
    assert len(edges) == len(dot["edges"])  # add(q, q) draws one edge
    # Every producer -> user pair of non-param values, and each output from its producer.
    assert edges == {
        ("in0", "n0"), ("n0", "n1"), ("n1", "n2"), ("in0", "n3"), ("n2", "n3"), ("n3", "n4"),
        ("n4", "n5"), ("n5", "n6"), ("n6", "n7"),
        ("n6", "out0"), ("n7", "out1"), ("n7", "out2"), ("in0", "out3"),
    }


def test_dot_shapes_and_labels():
    g = _graph()
    dot = _parse_dot(to_dot(g))
    decls = dot["decls"]
    assert "shape=ellipse" in decls["in0"] and _label(decls["in0"]) == "x\nf32[batch,seq,64]"
    outs = [n for n in decls if n.startswith("out")]
    assert outs == ["out0", "out1", "out2", "out3"]
    assert all("shape=doubleoctagon" in decls[o] for o in outs)
    assert _label(decls["out2"]) == "indices\ni64[batch*seq,2]"
    # Params are counted, not drawn.
    assert _label(decls["n0"]) == "linear (2 params)\nf32[batch,seq,128]"
    assert _label(decls["n4"]) == "linear (1 param)\nf32[batch,seq,64]"
    assert _label(decls["n1"]) == "relu\nf32[batch,seq,128]"
    assert _label(decls["n7"]) == "topk\nf32[batch*seq,2], i64[batch*seq,2]"
    assert not any("weight" in d for d in decls)
    assert len(decls) == 1 + len(g.nodes) + len(g.outputs)


def test_dot_is_deterministic():
    assert to_dot(_graph()) == to_dot(_graph())
    g = _graph()
    assert to_dot(g) == to_dot(g)


def test_dot_escapes_quotes_and_braces():
    g = Graph(name='odd "name"')
    x = g.add_input('ids "a" {b}', TensorType(F32, (2,)))
    y = g.add_node("relu", [x]).output
    y.producer.meta["module"] = 'blocks.0.f"x"'
    g.set_output("out}{", y)
    text = to_dot(g)
    dot = _parse_dot(text)  # balanced braces outside strings, every edge declared
    assert _label(dot["decls"]["in0"]) == 'ids "a" {b}\nf32[2]'
    assert list(dot["clusters"].values()) == ["blocks.0"]
    assert '\\{b\\}' in text and '\\"a\\"' in text


def test_dot_max_nodes():
    g = _graph()
    text = to_dot(g, max_nodes=3)
    dot = _parse_dot(text)
    ops = [n for n in dot["decls"] if re.fullmatch(r"n\d+", n)]
    assert ops == ["n0", "n1", "n2"]
    assert "5 more nodes not shown" in _label(dot["decls"]["omitted"])
    for src, dst in dot["edges"]:
        assert src in dot["decls"] and dst in dot["decls"]
    assert ("in0", "out3") in dot["edges"]


# -- summary ---------------------------------------------------------------------------


def test_summary_is_json():
    s = graph_summary(_graph())
    assert json.loads(json.dumps(s, allow_nan=False)) == s


def test_summary_counts():
    g = _graph()
    s = graph_summary(g)
    assert s["name"] == "tiny"
    assert s["inputs"] == [{"id": "%0", "name": "x", "type": "f32[batch,seq,64]"}]
    assert [o["name"] for o in s["outputs"]] == ["hidden", "values", "indices", "x_again"]
    assert s["outputs"][2] == {"id": "%9", "name": "indices", "type": "i64[batch*seq,2]"}
    elements = 128 * 64 + 128 + 64 * 128 + 64 * 64
    assert s["params"] == {"count": 4, "elements": elements, "bytes": 4 * elements}
    assert s["node_count"] == 8
    assert s["op_counts"] == {"add": 2, "linear": 3, "relu": 1, "reshape": 1, "topk": 1}
    assert s["layers"] == {
        "model.layers.0": {"add": 1, "linear": 2, "relu": 1},
        "model.layers.1": {"add": 1, "linear": 1},
    }


def test_summary_nodes_match_printed_ids():
    g = _graph()
    s = graph_summary(g)
    printed = [line for line in print_graph(g).splitlines() if line.startswith("%")]
    assert len(printed) == len(s["nodes"])
    for line, node in zip(printed, s["nodes"]):
        lhs, rhs = line.split(" = ", 1)
        assert lhs.split(", ") == node["outputs"] and lhs.startswith(node["id"])
        op, args = re.match(r"(\w+)\(([^)]*)\)", rhs).groups()
        assert op == node["op"]
        assert (args.split(", ") if args else []) == node["inputs"]
        assert rhs.rsplit(" : ", 1)[1] == ", ".join(node["types"])
    first = s["nodes"][0]
    assert first["inputs"] == ["%0", "@model.layers.0.mlp.up.weight", "@model.layers.0.mlp.up.bias"]
    assert first["module"] == "model.layers.0.mlp.up" and first["layer"] == "model.layers.0"
    reshape = s["nodes"][6]
    assert reshape["attrs"] == {"shape": ["batch*seq", 64]} and reshape["module"] is None
    assert s["nodes"][7]["attrs"] == {"k": 2, "dim": -1, "largest": True, "sorted": True}


def test_summary_non_finite_attrs_and_dtypes():
    from t2c.ir.opdefs.pointwise import CastAttrs, ClampAttrs

    g = Graph()
    x = g.add_input("x", TensorType(F32, (4,)))
    y = g.add_node("cast", [x], CastAttrs(DType.F16)).output
    z = g.add_node("clamp", [y], ClampAttrs(min=float("-inf"), max=None)).output
    g.set_output("z", z)
    s = graph_summary(g)
    assert s["nodes"][0]["attrs"] == {"dtype": "f16"}
    assert s["nodes"][1]["attrs"] == {"min": "-inf", "max": None}
    assert s["params"] == {"count": 0, "elements": 0, "bytes": 0}
    assert s["layers"] == {}
    json.dumps(s, allow_nan=False)

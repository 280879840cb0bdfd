"""The ONNX lowering of `rope` and of `attention` with rope fused, in onnxruntime vs the interpreter.

cos/sin built in the graph as Hugging Face does (`cos(cat(f, f))` for rotate-half,
each angle repeated twice for interleaved) prove their pairs equal, so the lowering
uses the opset-23 `RotaryEmbedding` op with half-width caches; cos/sin passed in
as inputs cannot be proven so and get explicit ops. Both agree with the IR
reference to 1e-5 at two shapes, as does attention with rope in all three forms
(Attention op, blocked window, dense).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from t2c.backends.onnx import lower
from t2c.ir import DType, Graph, SymDim, TensorType, run_graph
from t2c.ir.opdefs.attention import AttentionAttrs
from t2c.ir.opdefs.rope import RopeAttrs
from t2c.ir.opdefs.shape import AxisAttrs, ShapeAttrs

F32, BOOL = DType.F32, DType.BOOL
B, S = SymDim("batch"), SymDim("seq")
D = 8
SIZES = [(2, 5), (3, 11)]  # (batch, seq)


def _cos_sin(g: Graph, rd: int, interleaved: bool, proven: bool):
    """cos, sin [batch, 1, seq, rd] in the full layout: from angles f [batch, seq, rd/2], or as inputs."""
    if not proven:
        t = TensorType(F32, ("batch", 1, "seq", rd))
        return g.add_input("cos", t), g.add_input("sin", t)
    f = g.add_input("f", TensorType(F32, ("batch", "seq", rd // 2)))
    if interleaved:
        u = g.add_node("unsqueeze", [f], AxisAttrs(-1)).output
        e = g.add_node("expand", [u], ShapeAttrs((B, S, rd // 2, 2))).output
        emb = g.add_node("reshape", [e], ShapeAttrs((B, S, rd))).output
    else:
        emb = g.add_node("cat", [f, f], AxisAttrs(-1)).output
    out = []
    for fn in ("cos", "sin"):
        out.append(g.add_node("unsqueeze", [g.add_node(fn, [emb]).output], AxisAttrs(1)).output)
    return out


def _feeds(g: Graph, b: int, s: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    feeds = {}
    for v in g.inputs:
        shape = v.type.concrete_shape({"batch": b, "seq": s})
        feeds[v.name] = torch.rand(shape, generator=gen) > 0.2 if v.type.dtype == BOOL else torch.randn(shape, generator=gen)
    return feeds


def _check(g: Graph, rotary_op: bool, tol: float = 1e-5):
    model = lower(g)
    ops = {n.op_type for n in model.graph.node}
    assert ("RotaryEmbedding" in ops) == rotary_op, sorted(ops)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for b, s in SIZES:
        feeds = _feeds(g, b, s)
        want = run_graph(g, feeds)["y"]
        have = session.run(["y"], {k: v.numpy() for k, v in feeds.items()})[0]
        err = float(np.abs(have - want.numpy()).max())
        assert err <= tol, f"{b}x{s}: {err}"


@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
@pytest.mark.parametrize("rd", [D, 4], ids=["full", "partial"])
@pytest.mark.parametrize("proven", [True, False], ids=["rotary-op", "explicit"])
def test_rope(interleaved, rd, proven):
    g = Graph()
    x = g.add_input("x", TensorType(F32, ("batch", 4, "seq", D)))
    cos, sin = _cos_sin(g, rd, interleaved, proven)
    cache = "paired" if proven else "full"  # what fuse-rope records for such cos/sin (tests/golden/fuse-rope)
    g.set_output("y", g.add_node("rope", [x, cos, sin], RopeAttrs(interleaved, rd, cache)).output)
    _check(g, rotary_op=proven)


ATTN = {
    "causal": dict(causal=True),  # the Attention op
    "windowed": dict(causal=True, window=(2, -1)),  # blocked
    "dense": dict(window=(-1, 1)),  # dense fallback
    "padding-mask": dict(causal=True, window=(3, -1)),
}


@pytest.mark.parametrize("form", list(ATTN))
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
def test_attention_with_rope(form, interleaved):
    rd = 4 if interleaved else D
    g = Graph()
    q = g.add_input("q", TensorType(F32, ("batch", 4, "seq", D)))
    k = g.add_input("k", TensorType(F32, ("batch", 2, "seq", D)))
    v = g.add_input("v", TensorType(F32, ("batch", 2, "seq", D)))
    ins = [q, k, v]
    if form == "padding-mask":
        ins.append(g.add_input("mask", TensorType(BOOL, ("batch", 1, 1, "seq"))))
    ins += _cos_sin(g, rd, interleaved, proven=True)
    attrs = AttentionAttrs(scale=0.35, kv_heads=2, rope="interleaved" if interleaved else "half", rotary_dim=rd, rope_cache="paired", **ATTN[form])
    g.set_output("y", g.add_node("attention", ins, attrs).output)
    _check(g, rotary_op=True)

"""ONNX lowering of the norms: `add_norm`, `rms_norm`, `layer_norm`, in both flavors.

Each graph runs in onnxruntime at two shapes (dynamic batch/seq) and is compared with
the interpreter. In float16 the ort flavor must really use com.microsoft
SkipLayerNormalization / SkipSimplifiedLayerNormalization for add_norm (its 4th output is
the residual sum), and fall back to the standard ops where those kernels would not compute
the same thing; in float32 it must not use them (slower on ORT's CPU provider).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from t2c.backends.onnx import lower
from t2c.ir import DType, Graph, TensorType, run_graph
from t2c.ir.opdefs.add_norm import AddNormAttrs
from t2c.ir.opdefs.nn import NormAttrs, RMSNormAttrs

F32, F16 = DType.F32, DType.F16
H = 16
SIZES = [(2, 5), (3, 9)]


def _graph(op, attrs, *, dtype=F32, shape=("batch", "seq", H), residual_shape=None, weight=True, bias=False):
    torch.manual_seed(0)
    g = Graph()
    ins = [g.add_input("x", TensorType(dtype, shape))]
    if op == "add_norm":
        ins.append(g.add_input("r", TensorType(dtype, residual_shape or shape)))
    wshape = tuple(attrs.normalized_shape)
    if weight:
        ins.append(g.add_param("w", (torch.randn(wshape) * 0.5 + 1).to(dtype.torch)))
    if bias:
        ins.append(g.add_param("b", torch.randn(wshape).to(dtype.torch)))
    node = g.add_node(op, ins, attrs)
    for i, out in enumerate(node.outputs):
        g.set_output(f"y{i}", out)
    return g


def _run(g: Graph, flavor: str, tol: float) -> list[str]:
    proto = lower(g, flavor=flavor)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for b, s in SIZES:
        gen = torch.Generator().manual_seed(b * 10 + s)
        feeds = {}
        for v in g.inputs:
            shape = [{"batch": b, "seq": s}.get(str(d), d) if not isinstance(d, int) else d for d in v.type.shape]
            feeds[v.name] = (torch.randn(shape, generator=gen) * 3 + 1).to(v.type.dtype.torch)
        want = run_graph(g, feeds)
        got = session.run(None, {k: t.numpy() for k, t in feeds.items()})
        for (name, w), h in zip(want.items(), got):
            h = torch.from_numpy(np.asarray(h))
            assert h.dtype == w.dtype and h.shape == w.shape, name
            torch.testing.assert_close(h.float(), w.float(), atol=tol, rtol=tol, msg=f"{name} at {(b, s)} ({flavor})")
    return [n.op_type for n in proto.graph.node]


CASES = {
    "add_norm-rms": dict(op="add_norm", attrs=AddNormAttrs("rms", (H,), 1e-6)),
    "add_norm-rms-default-eps": dict(op="add_norm", attrs=AddNormAttrs("rms", (H,), None)),
    "add_norm-rms-noweight": dict(op="add_norm", attrs=AddNormAttrs("rms", (H,), 1e-6), weight=False),
    "add_norm-layer": dict(op="add_norm", attrs=AddNormAttrs("layer", (H,), 1e-5), bias=True),
    "add_norm-layer-nobias": dict(op="add_norm", attrs=AddNormAttrs("layer", (H,), 1e-12)),
    "add_norm-layer-2d": dict(op="add_norm", attrs=AddNormAttrs("layer", (H,), 1e-5), shape=("seq", H), bias=True),
    # Not what ORT's Skip* kernels compute (two normalised dims; a broadcast residual): standard ops.
    "add_norm-layer-two-dims": dict(op="add_norm", attrs=AddNormAttrs("layer", (4, H), 1e-5), shape=("batch", 4, H), bias=True),
    "add_norm-rms-broadcast": dict(op="add_norm", attrs=AddNormAttrs("rms", (H,), 1e-6), residual_shape=(1, "seq", H)),
    "rms_norm": dict(op="rms_norm", attrs=RMSNormAttrs((H,), 1e-6)),
    "layer_norm": dict(op="layer_norm", attrs=NormAttrs((H,), 1e-5), bias=True),
}
SKIP_OPS = {"add_norm-rms": "SkipSimplifiedLayerNormalization", "add_norm-rms-default-eps": "SkipSimplifiedLayerNormalization",
            "add_norm-rms-noweight": "SkipSimplifiedLayerNormalization", "add_norm-layer": "SkipLayerNormalization",
            "add_norm-layer-nobias": "SkipLayerNormalization", "add_norm-layer-2d": "SkipLayerNormalization"}


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("flavor", ["standard", "ort"])
@pytest.mark.parametrize("name", list(CASES))
def test_norm_matches_interpreter(name, flavor, dtype):
    ops = _run(_graph(**CASES[name], dtype=dtype), flavor, 1e-5 if dtype == F32 else 1e-2)
    contrib = {"SkipLayerNormalization", "SkipSimplifiedLayerNormalization"}
    if flavor == "ort" and name in SKIP_OPS and dtype == F16:
        assert SKIP_OPS[name] in ops and "Add" not in ops, ops
    else:
        assert not contrib & set(ops), ops
    if flavor == "standard" and CASES[name]["op"] != "layer_norm" and "rms" in name:
        assert "RMSNormalization" in ops, ops  # the opset-23 op, not a hand-written chain


@pytest.mark.parametrize("flavor", ["standard", "ort"])
def test_add_norm_half(flavor):
    g = _graph("add_norm", AddNormAttrs("rms", (H,), 1e-6), dtype=F16)
    ops = _run(g, flavor, 1e-2)
    assert ("SkipSimplifiedLayerNormalization" in ops) == (flavor == "ort")


def test_ort_flavor_imports_the_contrib_domain_only_when_used():
    fused = lower(_graph(**CASES["add_norm-layer"], dtype=F16), flavor="ort")
    assert {o.domain for o in fused.opset_import} == {"", "com.microsoft"}
    node = next(n for n in fused.graph.node if n.op_type == "SkipLayerNormalization")
    assert node.domain == "com.microsoft"
    assert node.output[1] == node.output[2] == "" and node.output[3]  # the sum, not the training outputs
    plain = lower(_graph(**CASES["rms_norm"]), flavor="ort")
    assert {o.domain for o in plain.opset_import} == {""}


def test_fused_zoo_model_runs_in_both_flavors():
    """-O1 on Llama, lowered: under ort the attention is GroupQueryAttention and add_norm stays
    Add + RMSNormalization (float32); the result matches the interpreter in both flavors."""
    import zoo
    from t2c.frontends.torch_export import trace
    from t2c.passes import Pipeline

    model, examples = zoo.llama()
    graph, _ = Pipeline.preset("O1").run(trace(model, examples))
    assert graph.op_counts().get("add_norm") == 4
    ids = examples["input_ids"]
    want = run_graph(graph, {"input_ids": ids})["logits"]
    for flavor in ("standard", "ort"):
        proto = lower(graph, flavor=flavor)
        ops = [n.op_type for n in proto.graph.node]
        assert ops.count("SkipSimplifiedLayerNormalization") == 0
        assert ops.count("RMSNormalization") == 5  # 4 add_norm + the final norm
        assert ops.count("GroupQueryAttention") == (2 if flavor == "ort" else 0)
        assert ops.count("Attention") == (0 if flavor == "ort" else 2)
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(["logits"], {"input_ids": ids.numpy()})[0])
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

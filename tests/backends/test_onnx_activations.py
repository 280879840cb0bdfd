"""ONNX lowerings of `gated_act` and `bias_act` in both flavors, run in onnxruntime against the interpreter.

The `ort` flavor turns bias + GELU into com.microsoft BiasGelu (erf) or FastGelu
(tanh) for float32 and keeps the standard lowering elsewhere; a model without
contrib nodes imports no contrib domain.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

import zoo
from t2c.backends.onnx import lower
from t2c.frontends.torch_export import trace
from t2c.ir import DType, Graph, TensorType, run_graph
from t2c.ir.opdefs.activation import ActivationAttrs
from t2c.passes import Pipeline

F32, F16 = DType.F32, DType.F16
ACTS = ["silu", "gelu", "gelu_tanh", "relu"]
SHAPES = [(2, 5), (3, 8)]


def _graph(op: str, act: str, dtype: DType = F32, hidden: int = 16) -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType(dtype, ("batch", "seq", hidden)))
    if op == "bias_act":
        other = g.add_param("bias", (torch.randn(hidden) * 2).to(dtype.torch))
    else:
        other = g.add_input("up", TensorType(dtype, ("batch", "seq", hidden)))
    g.set_output("y", g.add_node(op, [x, other], ActivationAttrs(act)).output)
    return g


def _run(g: Graph, flavor: str, tol: float = 1e-5):
    proto = lower(g, flavor=flavor)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    for b, s in SHAPES:
        feeds = {v.name: (torch.randn(b, s, *v.type.shape[2:], generator=gen) * 3).to(v.type.dtype.torch) for v in g.inputs}
        want = run_graph(g, feeds)["y"]
        have = torch.from_numpy(np.asarray(session.run(None, {k: v.numpy() for k, v in feeds.items()})[0]))
        assert have.dtype == want.dtype
        torch.testing.assert_close(have.float(), want.float(), atol=tol, rtol=tol)
    return proto


def _op_types(proto) -> list[tuple[str, str]]:
    return [(n.domain, n.op_type) for n in proto.graph.node]


@pytest.mark.parametrize("flavor", ["standard", "ort"])
@pytest.mark.parametrize("op", ["gated_act", "bias_act"])
@pytest.mark.parametrize("act", ACTS)
def test_matches_interpreter(op, act, flavor):
    proto = _run(_graph(op, act), flavor)
    assert all(d == "" for d, _ in _op_types(proto)) or flavor == "ort"


@pytest.mark.parametrize("act, contrib", [("gelu", "BiasGelu"), ("gelu_tanh", "FastGelu")])
def test_ort_flavor_emits_contrib_bias_gelu(act, contrib):
    proto = _run(_graph("bias_act", act), "ort")
    ops = _op_types(proto)
    assert ("com.microsoft", contrib) in ops
    assert not any(t in ("Gelu", "Add") for _, t in ops), ops
    assert {o.domain for o in proto.opset_import} == {"", "com.microsoft"}
    # standard stays ai.onnx: Add then Gelu
    std = _op_types(_run(_graph("bias_act", act), "standard"))
    assert ("", "Gelu") in std and all(d == "" for d, _ in std)
    assert {o.domain for o in lower(_graph("bias_act", act)).opset_import} == {""}


def test_ort_flavor_falls_back_where_contrib_differs():
    # silu has no BiasSilu; f16 has no CPU BiasGelu kernel: both lower as standard, no contrib import.
    for g in (_graph("bias_act", "silu"), _graph("bias_act", "gelu", F16), _graph("gated_act", "gelu")):
        proto = lower(g, flavor="ort")
        assert all(d == "" for d, _ in _op_types(proto))
        assert {o.domain for o in proto.opset_import} == {""}
    _run(_graph("bias_act", "gelu", F16), "ort", tol=1e-2)


def test_gated_act_promotes_like_the_reference():
    g = Graph()
    x = g.add_input("x", TensorType(F16, ("batch", "seq", 8)))
    up = g.add_input("up", TensorType(F32, ("batch", "seq", 8)))
    g.set_output("y", g.add_node("gated_act", [x, up], ActivationAttrs("silu")).output)
    assert g.outputs[0][1].type.dtype == F32
    _run(g, "standard", tol=1e-3)


def test_gpt2_ort_flavor_uses_fast_gelu():
    model, examples = zoo.gpt2()
    graph, _ = Pipeline.parse("fold-shapes,cse,lift-attention,fuse-activation,dce").run(trace(model, examples))
    for flavor, want in [("ort", 2), ("standard", 0)]:
        proto = lower(graph, flavor=flavor)
        assert sum(n.op_type == "FastGelu" for n in proto.graph.node) == want
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        ids = torch.randint(0, zoo.VOCAB, (3, 11), generator=torch.Generator().manual_seed(2))
        want_logits = run_graph(graph, {"input_ids": ids})["logits"]
        have = torch.from_numpy(session.run(None, {"input_ids": ids.numpy()})[0])
        torch.testing.assert_close(have, want_logits, atol=1e-4, rtol=1e-4)

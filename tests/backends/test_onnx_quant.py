"""ONNX lowerings of the int8 ops against the IR reference, in ONNX Runtime, both flavors.

qlinear and qembedding are bit-identical to the interpreter (weight_only: the
folded Cast * scale weight is the reference's dequantized weight; w8a8: the
integers are the same and the scales are applied in the reference's order, by
MatMulIntegerToFloat's output stage in the ort flavor). qexperts adds only summation-order rounding. Weights are stored int8.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from t2c.backends.onnx import initializer_bytes, lower
from t2c.ir import DType, Graph, TensorType, run_graph
from t2c.ir.opdefs import quant as Q

F32, I64 = DType.F32, DType.I64
FLAVORS = ("standard", "ort")
LEVELS = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}


def _session(g: Graph, flavor: str, level: str = "all") -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = LEVELS[level]
    so.log_severity_level = 3
    return ort.InferenceSession(lower(g, flavor=flavor).SerializeToString(), so, providers=["CPUExecutionProvider"])


def _qlinear_graph(mode: str, group: int, bias: bool, shape=("batch", "seq", 64)) -> Graph:
    gen = torch.Generator().manual_seed(0)
    q, s = Q.quantize_weight(torch.randn(48, 64, generator=gen) * 0.1, group)
    g = Graph()
    ins = [g.add_input("x", TensorType(F32, shape)), g.add_param("w", q), g.add_param("s", s)]
    if bias:
        ins.append(g.add_param("b", torch.randn(48, generator=gen)))
    g.set_output("y", g.add_node("qlinear", ins, Q.QLinearAttrs(mode, group)).output)
    return g


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("mode,group,bias", [("weight_only", 0, False), ("weight_only", 0, True), ("weight_only", 16, True),
                                             ("w8a8", 0, False), ("w8a8", 0, True)])
def test_qlinear_bit_identical(mode, group, bias, flavor, level):
    g = _qlinear_graph(mode, group, bias)
    session = _session(g, flavor, level)
    gen = torch.Generator().manual_seed(1)
    for b, s in ((2, 5), (3, 17)):
        x = torch.randn(b, s, 64, generator=gen) * 3
        x[0, 0] = 0.0  # an all-zero token
        x[0, 1, 5] = 40.0  # an outlier: its token's other entries round to few levels
        want = run_graph(g, {"x": x})["y"]
        got = torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
        assert torch.equal(got, want), f"max diff {(got - want).abs().max():.3g}"


def test_qlinear_2d_gemm_and_storage():
    g = _qlinear_graph("weight_only", 0, True, shape=("tokens", 64))
    model = lower(g)
    assert {t.name: t.data_type for t in model.graph.initializer}["w.T"] == onnx.TensorProto.INT8
    assert "DequantizeLinear" not in {n.op_type for n in model.graph.node}  # ORT would turn it into approximate MatMulNBits
    x = torch.randn(9, 64)
    assert torch.equal(torch.from_numpy(_session(g, "standard").run(None, {"x": x.numpy()})[0]), run_graph(g, {"x": x})["y"])
    fp32 = Graph()
    fp32.set_output("y", fp32.add_node("linear", [fp32.add_input("x", TensorType(F32, ("tokens", 64))), fp32.add_param("w", torch.randn(48, 64))]).output)
    assert initializer_bytes(model) < initializer_bytes(lower(fp32)) / 3.5  # int8 weights, f32 scales and bias


def test_w8a8_shares_one_quantization_per_input():
    gen = torch.Generator().manual_seed(0)
    g = Graph()
    x = g.add_input("x", TensorType(F32, ("tokens", 32)))
    outs = []
    for name in "qkv":
        q, s = Q.quantize_weight(torch.randn(16, 32, generator=gen))
        outs.append(g.add_node("qlinear", [x, g.add_param(name, q), g.add_param(f"s{name}", s)], Q.QLinearAttrs("w8a8")).output)
    for name, v in zip("qkv", outs):
        g.set_output(name, v)
    model = lower(g)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulInteger") == 3 and ops.count("Round") == 1
    got = _session(g, "standard").run(None, {"x": np.random.default_rng(0).standard_normal((7, 32)).astype(np.float32)})
    assert all(o.shape == (7, 16) for o in got)


def test_w8a8_ort_form_and_ties():
    """The ort overlay (QuantizeLinear per token, MatMulIntegerToFloat, * sx) on inputs that sit on rounding ties."""
    g = _qlinear_graph("w8a8", 0, True)
    ops = [n.op_type for n in lower(g, flavor="ort").graph.node]
    assert ops.count("MatMulIntegerToFloat") == 1 and ops.count("QuantizeLinear") == 1
    assert not {"MatMulInteger", "Round", "Clip", "Cast"} & set(ops)
    sessions = [_session(g, "ort", level) for level in LEVELS]
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(4, 64, 64, generator=gen) * 10.0 ** torch.randint(-3, 4, (4, 64, 1), generator=gen)
    # x = (k + 1/2) * sx in float32, for scales that are not powers of two: x / sx lands on or next to a tie,
    # where a reciprocal multiply or another rounding would differ.
    sx = x.abs().amax(-1, keepdim=True) / 127
    k = torch.randint(-127, 127, (4, 64, 32), generator=gen).float()
    x[..., :32] = (k + 0.5) * sx
    x[1, :, 40] = 0.0
    x[2, 3] = 0.0
    want = run_graph(g, {"x": x})["y"]
    for session in sessions:
        got = torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
        assert torch.equal(got, want), f"max diff {(got - want).abs().max():.3g}"


def test_w8a8_ort_shares_one_quantization_per_input():
    gen = torch.Generator().manual_seed(0)
    g = Graph()
    x = g.add_input("x", TensorType(F32, ("tokens", 32)))
    for name in "qkv":
        q, s = Q.quantize_weight(torch.randn(16, 32, generator=gen))
        g.set_output(name, g.add_node("qlinear", [x, g.add_param(name, q), g.add_param(f"s{name}", s)], Q.QLinearAttrs("w8a8")).output)
    ops = [n.op_type for n in lower(g, flavor="ort").graph.node]
    assert ops.count("MatMulIntegerToFloat") == 3 and ops.count("QuantizeLinear") == 1
    xv = torch.randn(7, 32, generator=gen)
    want = run_graph(g, {"x": xv})
    got = _session(g, "ort").run(None, {"x": xv.numpy()})
    assert all(torch.equal(torch.from_numpy(o), want[n]) for o, n in zip(got, "qkv"))


def test_qembedding():
    q, s = Q.quantize_weight(torch.randn(50, 16))
    g = Graph()
    ids = g.add_input("ids", TensorType(I64, ("batch", "seq")))
    g.set_output("y", g.add_node("qembedding", [g.add_param("w", q), g.add_param("s", s), ids]).output)
    i = torch.randint(0, 50, (3, 7))
    for flavor in FLAVORS:
        assert torch.equal(torch.from_numpy(_session(g, flavor).run(None, {"ids": i.numpy()})[0]), run_graph(g, {"ids": i})["y"])


def _qexperts_graph(mode: str, group: int, dispatch: str, bias: bool) -> Graph:
    gen = torch.Generator().manual_seed(2)
    uq, us = Q.quantize_weight(torch.randn(4, 32, 16, generator=gen) * 0.3, group)
    dq, ds = Q.quantize_weight(torch.randn(4, 16, 16, generator=gen) * 0.3, group)
    g = Graph()
    ins = [g.add_input("x", TensorType(F32, ("tokens", 16))), g.add_input("idx", TensorType(I64, ("tokens", 2))),
           g.add_input("w", TensorType(F32, ("tokens", 2))),
           g.add_param("up", uq), g.add_param("us", us), g.add_param("down", dq), g.add_param("ds", ds)]
    if bias:
        ins += [g.add_param("bu", torch.randn(4, 32, generator=gen) * 0.1), g.add_param("bd", torch.randn(4, 16, generator=gen) * 0.1)]
    g.set_output("y", g.add_node("qexperts", ins, Q.QExpertsAttrs(mode=mode, group=group, dispatch=dispatch)).output)
    return g


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("dispatch", ("dense", "sparse"))
@pytest.mark.parametrize("mode,group,bias", [("weight_only", 0, False), ("weight_only", 16, True), ("w8a8", 0, True)])
def test_qexperts(mode, group, dispatch, bias, flavor):
    g = _qexperts_graph(mode, group, dispatch, bias)
    session = _session(g, flavor)
    gen = torch.Generator().manual_seed(3)
    for tokens, spread in ((11, 4), (3, 2)):  # at 3 tokens on 2 experts, two experts get no rows
        idx = torch.randint(0, spread, (tokens, 2), generator=gen)
        idx[0, 1] = 4  # out of range: contributes nothing
        feeds = {"x": torch.randn(tokens, 16, generator=gen) * 2, "idx": idx, "w": torch.rand(tokens, 2, generator=gen)}
        want = run_graph(g, feeds)["y"]
        got = torch.from_numpy(session.run(None, {k: v.numpy() for k, v in feeds.items()})[0])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

"""The int8 ops' reference semantics (t2c/ir/opdefs/quant.py): integer arithmetic emulated exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from t2c.errors import VerifyError
from t2c.ir import DType, Graph, TensorType, parse_graph, print_graph, run_graph, verify
from t2c.ir.opdefs import experts as E
from t2c.ir.opdefs import quant as Q

F32, I8 = DType.F32, DType.I8


def test_weight_quantization_is_symmetric_and_within_half_a_step():
    w = torch.randn(48, 64)
    for group in (0, 16):
        q, s = Q.quantize_weight(w, group)
        assert q.dtype == torch.int8 and int(q.abs().max()) <= 127 and s.dtype == torch.float32
        assert s.shape == ((48,) if group == 0 else (48, 4))
        deq = Q.dequantize(q, s, group)
        step = s[:, None] if group == 0 else s.repeat_interleave(group, 1)
        assert bool(((deq - w).abs() <= step / 2 + 1e-7).all())
        if group == 0:
            assert int(q.abs().amax(1).min()) == 127  # the largest weight of a row maps to +-127
    zero_row = torch.zeros(2, 16)
    q, s = Q.quantize_weight(zero_row)
    assert torch.equal(q, torch.zeros_like(q, dtype=torch.int8)) and bool((s > 0).all())


def test_w8a8_is_integer_arithmetic():
    """Per-token scales, round half to even, exact int32 accumulation, then (acc * sw) * sx."""
    torch.manual_seed(0)
    x = torch.randn(5, 7, 96) * 4
    x[0, 0] = 0.0  # an all-zero row quantizes to zeros
    x[1, 2, :3] = torch.tensor([2.5, -2.5, 127.0]) * (x[1, 2].abs().max() / 127)  # exact .5 ties
    q, sw = Q.quantize_weight(torch.randn(40, 96))
    b = torch.randn(40)
    y = Q.qlinear(x, q, sw, b, "w8a8", 0)
    sx = x.abs().amax(-1, keepdim=True).clamp_min(1e-30) / 127
    xi = torch.clamp(torch.round(x / sx), -127, 127).to(torch.int64)
    assert int(xi[1, 2, 0]) == 2 and int(xi[1, 2, 1]) == -2  # half to even, like torch.round and ONNX Round
    acc = torch.einsum("btk,nk->btn", xi, q.to(torch.int64))  # exact integers
    want = (acc.to(torch.float32) * sw) * sx + b
    assert torch.equal(y, want)
    assert torch.equal(y[0, 0], b)


def test_weight_only_is_float_linear_on_the_dequantized_weight():
    x = torch.randn(3, 64)
    for group in (0, 32):
        q, s = Q.quantize_weight(torch.randn(24, 64), group)
        assert torch.equal(Q.qlinear(x, q, s, None, "weight_only", group), F.linear(x, Q.dequantize(q, s, group)))


def test_qembedding_rows():
    q, s = Q.quantize_weight(torch.randn(10, 8))
    g = Graph()
    ids = g.add_input("ids", TensorType(DType.I64, ("batch", "seq")))
    out = g.add_node("qembedding", [g.add_param("w", q), g.add_param("s", s), ids]).output
    g.set_output("y", out)
    verify(g)
    i = torch.tensor([[0, 3, 9], [9, 9, 1]])
    assert torch.equal(run_graph(g, {"ids": i})["y"], Q.dequantize(q, s)[i])


def _experts_graph(mode: str, group: int = 0, dispatch: str = "dense"):
    torch.manual_seed(1)
    up, down = torch.randn(4, 12, 8) * 0.3, torch.randn(4, 8, 6) * 0.3
    uq, us = Q.quantize_weight(up, group)
    dq, ds = Q.quantize_weight(down, 0)
    g = Graph()
    x = g.add_input("x", TensorType(F32, ("tokens", 8)))
    idx = g.add_input("idx", TensorType(DType.I64, ("tokens", 2)))
    w = g.add_input("w", TensorType(F32, ("tokens", 2)))
    attrs = Q.QExpertsAttrs(mode=mode, group=group, dispatch=dispatch)
    ins = [x, idx, w, g.add_param("up", uq), g.add_param("us", us), g.add_param("down", dq), g.add_param("ds", ds)]
    g.set_output("y", g.add_node("qexperts", ins, attrs).output)
    return g, (uq, us, dq, ds)


def test_qexperts_weight_only_is_experts_on_dequantized_weights():
    g, (uq, us, dq, ds) = _experts_graph("weight_only")
    verify(g)
    feeds = {"x": torch.randn(6, 8), "idx": torch.randint(-1, 5, (6, 2)), "w": torch.rand(6, 2)}
    want = E.experts_reference(feeds["x"], feeds["idx"], feeds["w"], Q.dequantize(uq, us), Q.dequantize(dq, ds))
    assert torch.equal(run_graph(g, feeds)["y"], want)


def test_qexperts_w8a8_quantizes_each_projection_per_token():
    g, (uq, us, dq, ds) = _experts_graph("w8a8")
    feeds = {"x": torch.randn(5, 8), "idx": torch.tensor([[0, 1], [1, 1], [3, -1], [2, 0], [4, 3]]), "w": torch.rand(5, 2)}
    out = torch.zeros(5, 8)
    for t in range(5):
        for k in range(2):
            e = int(feeds["idx"][t, k])
            if 0 <= e < 4:
                h = Q.w8a8_linear(feeds["x"][t : t + 1], uq[e], us[e])
                y = Q.w8a8_linear(E.gate(h, E.ExpertsAttrs()), dq[e], ds[e])
                out[t] += (y * feeds["w"][t, k])[0]
    torch.testing.assert_close(run_graph(g, feeds)["y"], out, atol=1e-6, rtol=1e-6)  # same values, another summation order


def test_text_round_trip_and_verify_errors():
    g, _ = _experts_graph("w8a8", dispatch="sparse")
    text = print_graph(g)
    assert 'mode="w8a8"' in text and "qexperts(" in text
    assert print_graph(parse_graph(text)) == text
    x = TensorType(F32, ("b", 64))
    for w, s, attrs, match in [
        (TensorType(F32, (8, 64)), TensorType(F32, (8,)), Q.QLinearAttrs(), "i8"),
        (TensorType(I8, (8, 64)), TensorType(F32, (8, 2)), Q.QLinearAttrs(), "scale must be"),
        (TensorType(I8, (8, 64)), TensorType(F32, (8, 2)), Q.QLinearAttrs("w8a8", 32), "group"),
        (TensorType(I8, (8, 64)), TensorType(F32, (8, 3)), Q.QLinearAttrs("weight_only", 24), "multiple"),
        (TensorType(I8, (8, 64)), TensorType(F32, (8,)), Q.QLinearAttrs("int4"), "mode"),
    ]:
        g = Graph()
        node = g.add_node("qlinear", [g.add_input("x", x), g.add_param("w", None, w), g.add_param("s", None, s)], attrs)
        g.set_output("y", node.output)
        with pytest.raises(VerifyError, match=match):
            verify(g)

"""A half-precision additive mask on ONNX Runtime's Attention op (t2c/backends/onnx/attention.py: half_bias).

The IR and torch's SDPA add a float mask to float32 scores; ONNX Runtime's Attention adds it to half
scores. A query row that every key hides with finfo(float16).min (`masked_fill(~m, finfo.min)` on an
all-padding query) then differed: in float32 the row softmaxes its scores, in float16 s + -65504
rounds every score alike and the row became the mean of v (the fuzzer's reproducer
fp16-fully-masked-row-finfo-min, 0.04-0.13 off). The lowering shifts each row's mask so that its
largest visible value is 0.
"""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch

from t2c.backends.onnx import lower
from t2c.ir import DType, Graph, TensorType
from t2c.ir.opdefs.attention import AttentionAttrs, attention_reference
from t2c.ir.opdefs.nn import SDPAAttrs

B, H, S, D = 2, 2, 7, 8
LOW = torch.finfo(torch.float16).min


def _session(g, flavor="standard"):
    return ort.InferenceSession(lower(g, flavor=flavor).SerializeToString(), providers=["CPUExecutionProvider"])


def _graph(op, attrs, mask_dtype=DType.F16, dtype=DType.F16):
    g = Graph()
    ins = [g.add_input(n, TensorType(dtype, ("batch", H, "seq", D))) for n in "qkv"]
    ins.append(g.add_input("mask", TensorType(mask_dtype, ("batch", 1, "seq", "seq"))))
    g.set_output("y", g.add_node(op, ins, attrs).output)
    return g


def _feeds(mask_dtype=torch.float16, dtype=torch.float16):
    """Scores of a few units (softmax far from uniform); batch element 0: query 0 sees only key 0 under
    causality and key 0 is padding, queries 1.. see keys 1..i; batch element 1: query 3 hidden by -inf,
    query 5 hidden everywhere by finfo.min, the rest random finfo.min / 0."""
    gen = torch.Generator().manual_seed(0)
    f = {n: (2 * torch.randn(B, H, S, D, generator=gen)).to(dtype) for n in "qkv"}
    low = torch.finfo(mask_dtype).min if mask_dtype.is_floating_point else LOW
    m = torch.zeros(B, 1, S, S)
    m[0, :, :, 0] = low
    m[1] = torch.where(torch.rand(1, S, S, generator=gen) > 0.5, 0.0, low)
    m[1, :, 3] = float("-inf")
    m[1, :, 5] = low
    f["mask"] = m.to(mask_dtype)
    return f


def _run(sess, f):
    return torch.from_numpy(sess.run(None, {n: t.numpy() for n, t in f.items()})[0])


@pytest.mark.parametrize("flavor", ["standard", "ort"])
@pytest.mark.parametrize("causal", [False, True], ids=["full-mask", "causal+mask"])
def test_attention_half_mask_rows_of_the_lowest_value(causal, flavor):
    attrs = AttentionAttrs(scale=D ** -0.5, causal=causal, kv_heads=H)
    f = _feeds()
    want = attention_reference(f["q"], f["k"], f["v"], f["mask"], attrs).float()
    have = _run(_session(_graph("attention", attrs), flavor), f).float()
    # the fully hidden row softmaxes its scores (float32 addition), it is not the mean of v
    mean_v = f["v"][1].float().mean(-2)
    assert (want[1, :, 5] - mean_v).abs().max() > 0.1
    torch.testing.assert_close(have, want, atol=1e-2, rtol=1.6e-2)
    assert torch.all(have[1, :, 3] == 0)  # a row of -inf: zeros, as the IR gives
    if causal:  # batch 0, query 0: its one visible key hidden by finfo.min: that key's v
        torch.testing.assert_close(have[0, :, 0], f["v"][0, :, 0].float(), atol=1e-3, rtol=1e-3)


def test_attention_float32_mask_on_half_inputs():
    """A float32 mask on half q/k/v: shifted in float32 before the cast (finfo(float32).min is -inf in half)."""
    attrs = AttentionAttrs(scale=D ** -0.5, causal=True, kv_heads=H)
    f = _feeds(mask_dtype=torch.float32)
    want = attention_reference(f["q"], f["k"], f["v"], f["mask"], attrs).float()
    have = _run(_session(_graph("attention", attrs, mask_dtype=DType.F32)), f).float()
    torch.testing.assert_close(have, want, atol=1e-2, rtol=1.6e-2)


def test_sdpa_half_mask_rows_of_the_lowest_value():
    """The sdpa op (no lift-attention, -O0) against torch's SDPA in float16 itself."""
    f = _feeds()
    want = torch.nn.functional.scaled_dot_product_attention(f["q"], f["k"], f["v"], attn_mask=f["mask"]).float()
    have = _run(_session(_graph("sdpa", SDPAAttrs())), f).float()
    ok = ~torch.isnan(want)  # (torch gives NaN for the -inf row where onnx gives zeros, as the IR defines)
    torch.testing.assert_close(have[ok], want[ok], atol=1e-2, rtol=1.6e-2)
    assert (have[1, :, 5] - f["v"][1].float().mean(-2)).abs().max() > 0.1


@pytest.mark.parametrize("mask_dtype", [DType.F32, DType.BOOL])
def test_float32_and_bool_masks_keep_the_plain_lowering(mask_dtype):
    """The fast path is unchanged: no row maximum for a float32 attention or a bool mask."""
    for dtype in (DType.F32, DType.F16) if mask_dtype == DType.BOOL else (DType.F32,):
        g = _graph("attention", AttentionAttrs(scale=D ** -0.5, causal=True, kv_heads=H), mask_dtype, dtype)
        ops = [n.op_type for n in lower(g).graph.node]
        assert "Attention" in ops and "ReduceMax" not in ops, ops
        attention = next(n for n in lower(g).graph.node if n.op_type == "Attention")
        assert next(a.i for a in attention.attribute if a.name == "is_causal") == 1

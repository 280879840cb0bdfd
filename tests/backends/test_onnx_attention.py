"""The ONNX lowerings of `attention` (Attention op, blocked window/block/global form, dense fallback)
and `linear_attention` (O(n) matmuls; chunked prefix state when causal), checked in onnxruntime
against the IR references at sequence lengths that are not multiples of the block or chunk, and
checked structurally: the blocked and linear forms never hold a seq x seq tensor.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from t2c.backends.onnx import lower
from t2c.backends.onnx import linear_attention as la_lowering
from t2c.plans import attention as attention_plans
from t2c.plans import key_blocks
from t2c.ir import DType, Graph, TensorType
from t2c.ir.opdefs.attention import AttentionAttrs, LinearAttentionAttrs, attention_reference, linear_attention_reference

F32, BOOL = DType.F32, DType.BOOL
D = 8
LENGTHS = [(2, 37), (1, 50), (1, 3)]  # (batch, seq): not multiples of the block; 3 < G


def _graph(op, attrs, hq=4, hkv=4, mask=None, dv=D):
    g = Graph()
    q = g.add_input("q", TensorType(F32, ("batch", hq, "seq", D)))
    k = g.add_input("k", TensorType(F32, ("batch", hkv, "seq", D)))
    v = g.add_input("v", TensorType(F32, ("batch", hkv, "seq", dv)))
    ins = [q, k, v]
    if mask is not None:
        ins.append(g.add_input("mask", TensorType(mask[0], mask[1])))
    g.set_output("y", g.add_node(op, ins, attrs).output)
    return g


def _session(g, flavor="standard"):
    return ort.InferenceSession(lower(g, flavor=flavor).SerializeToString(), providers=["CPUExecutionProvider"])


def _feeds(b, s, hq, hkv, mask=None, dv=D, seed=0):
    gen = torch.Generator().manual_seed(seed)
    f = {
        "q": torch.randn(b, hq, s, D, generator=gen),
        "k": torch.randn(b, hkv, s, D, generator=gen),
        "v": torch.randn(b, hkv, s, dv, generator=gen),
    }
    if mask is not None:
        shape = [{"batch": b, "seq": s}.get(d, d) for d in mask[1]]
        if mask[0] == BOOL:
            m = torch.rand(shape, generator=gen) > 0.3
            m[..., 0] = True  # not every query fully masked
            if s > 5 and m.dim() == 4:
                m[0, ..., : s // 2] = False  # a padding run on one batch element
        else:
            m = torch.randn(shape, generator=gen)
        f["mask"] = m
    return f


def _check_attention(attrs, hq=4, hkv=4, mask=None, lengths=LENGTHS, tol=1e-5, flavor="standard"):
    g = _graph("attention", attrs, hq, hkv, mask)
    sess = _session(g, flavor)
    for b, s in lengths:
        f = _feeds(b, s, hq, hkv, mask)
        want = attention_reference(f["q"], f["k"], f["v"], f.get("mask"), attrs)
        have = torch.from_numpy(sess.run(None, {n: t.numpy() for n, t in f.items()})[0])
        torch.testing.assert_close(have, want, atol=tol, rtol=tol, msg=lambda m: f"{attrs} at b={b} s={s}: {m}")


def A(**kw):
    kw.setdefault("scale", 1 / math.sqrt(D))
    kw.setdefault("kv_heads", 4)
    return AttentionAttrs(**kw)


PAD_MASK = (BOOL, ("batch", 1, 1, "seq"))
FLOAT_PAD_MASK = (F32, ("batch", 1, 1, "seq"))

CASES = {
    # the Attention op
    "plain": (A(), 4, 4, None),
    "plain-gqa": (A(kv_heads=2), 4, 2, None),
    "plain-softcap": (A(softcap=1.5, scale=1.0), 4, 4, None),
    "plain-bool-mask": (A(), 4, 4, (BOOL, ("batch", 1, "seq", "seq"))),
    "plain-float-mask-softcap": (A(softcap=2.0), 4, 4, (F32, (1, 1, "seq", "seq"))),
    "plain-pad-mask": (A(), 4, 4, PAD_MASK),
    "plain-float-pad-mask": (A(), 4, 4, FLOAT_PAD_MASK),
    "plain-pad-mask-one-row": (A(), 4, 4, (BOOL, (1, 1, 1, "seq"))),
    "plain-float-head-mask": (A(), 4, 4, (F32, ("batch", 4, "seq", "seq"))),
    "plain-float-2d-mask": (A(), 4, 4, (F32, ("seq", "seq"))),
    "causal": (A(causal=True), 4, 4, None),
    "causal-gqa-softcap": (A(causal=True, kv_heads=2, softcap=1.0, scale=1.0), 4, 2, None),
    "causal-pad-mask": (A(causal=True), 4, 4, PAD_MASK),
    "causal-global-only": (A(causal=True, global_tokens=3), 4, 4, None),
    # blocked
    "sliding-causal": (A(causal=True, window=(7, -1)), 4, 4, None),
    "sliding-causal-gqa": (A(causal=True, window=(7, -1), kv_heads=2), 4, 2, None),
    "window-bidir": (A(window=(7, 7)), 4, 4, None),
    "window-asym": (A(window=(5, 2)), 4, 4, None),
    "window-right-only": (A(window=(0, 3)), 4, 4, None),
    "window-bidir-global": (A(window=(7, 7), global_tokens=3), 4, 4, None),
    "sliding-causal-global-gqa": (A(causal=True, window=(7, -1), global_tokens=3, kv_heads=2), 4, 2, None),
    "block": (A(block=8), 4, 4, None),
    "block-causal-global": (A(block=8, causal=True, global_tokens=3), 4, 4, None),
    "block-window": (A(block=8, window=(2, 2)), 4, 4, None),
    "sliding-softcap": (A(causal=True, window=(7, -1), softcap=1.0, scale=1.0), 4, 4, None),
    "sliding-pad-mask": (A(causal=True, window=(7, -1)), 4, 4, PAD_MASK),
    "window-global-pad-mask-gqa": (A(window=(7, 7), global_tokens=3, kv_heads=2), 4, 2, PAD_MASK),
    "window-global-float-mask": (A(window=(7, 7), global_tokens=3), 4, 4, FLOAT_PAD_MASK),
    "window-head-mask": (A(window=(4, 4)), 4, 4, (BOOL, ("batch", 4, 1, "seq"))),
    "window-head-mask-gqa": (A(window=(4, 4), kv_heads=2), 4, 2, (BOOL, ("batch", 4, 1, "seq"))),
    "window-global-float-head-mask-gqa": (A(window=(3, 3), global_tokens=2, kv_heads=2), 4, 2, (F32, (1, 4, 1, "seq"))),
    "block-causal-global-gqa-4": (A(block=8, causal=True, global_tokens=3, kv_heads=1), 4, 1, PAD_MASK),
    "window-1d-mask": (A(window=(4, 4)), 4, 4, (BOOL, ("seq",))),
    # dense fallback
    "left-unbounded-bidir": (A(window=(-1, 3), global_tokens=2), 4, 4, None),
    "window-full-mask": (A(window=(7, 7)), 4, 4, (BOOL, ("batch", 1, "seq", "seq"))),
}


# Flavor ort: the com.microsoft kernel each case gets (ort_attention.py); the others lower as in standard.
ORT_KERNEL = {
    "plain": "MultiHeadAttention",
    "plain-pad-mask": "MultiHeadAttention",
    "plain-pad-mask-one-row": "MultiHeadAttention",
    "plain-float-pad-mask": "MultiHeadAttention",
    "plain-float-head-mask": "MultiHeadAttention",
    "plain-float-2d-mask": "MultiHeadAttention",
    "causal": "GroupQueryAttention",
    "causal-gqa-softcap": "GroupQueryAttention",
    "causal-global-only": "GroupQueryAttention",
}
# Not taken, each for a reason: non-causal GQA, softcap without causality, a bool mask that is not
# a key-padding row (a fully masked row would give NaN), a mask with causality, windows (GQA's
# local window is O(n^2)).
assert {"plain-gqa", "plain-softcap", "plain-bool-mask", "causal-pad-mask", "sliding-causal-gqa"}.isdisjoint(ORT_KERNEL)


@pytest.mark.parametrize("flavor", ["standard", "ort"])
@pytest.mark.parametrize("name", list(CASES))
def test_attention(name, flavor):
    attrs, hq, hkv, mask = CASES[name]
    ops = {(n.domain, n.op_type) for n in lower(_graph("attention", attrs, hq, hkv, mask), flavor=flavor).graph.node}
    contrib = {op for domain, op in ops if domain == "com.microsoft"}
    want = {ORT_KERNEL[name]} if flavor == "ort" and name in ORT_KERNEL else set()
    assert contrib == want, ops
    _check_attention(attrs, hq, hkv, mask, flavor=flavor)


def test_ort_key_padding_mask_with_a_fully_padded_row():
    """MultiHeadAttention's key_padding_mask: a batch element with no key left gives zeros, as the IR says."""
    attrs = A()
    g = _graph("attention", attrs, mask=PAD_MASK)
    sess = _session(g, "ort")
    f = _feeds(3, 11, 4, 4, PAD_MASK)
    f["mask"][1] = False  # every key of batch element 1 is padding
    want = attention_reference(f["q"], f["k"], f["v"], f["mask"], attrs)
    have = torch.from_numpy(sess.run(None, {n: t.numpy() for n, t in f.items()})[0])
    assert torch.all(have[1] == 0)
    torch.testing.assert_close(have, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("flavor", ["standard", "ort"])
@pytest.mark.parametrize("mask", [(F32, ("batch", 4, "seq", "seq")), FLOAT_PAD_MASK, (F32, ("batch", 1, 1, "seq"))], ids=["full", "row", "row-window"])
def test_float_mask_rows_of_the_lowest_value(mask, flavor):
    """A float mask of finfo.min is added like any number (`masked_fill(~m, finfo.min)`): a row of it softmaxes
    equal scores, the mean of v. ONNX Runtime's Attention and MultiHeadAttention read that value as -inf
    (zeros) unless the lowering moves it one step up; a row of -inf still gives zeros."""
    attrs = A(window=(3, 3)) if mask[1][2] == 1 and mask is not FLOAT_PAD_MASK else A()
    sess = _session(_graph("attention", attrs, mask=mask), flavor)
    f = _feeds(2, 9, 4, 4, mask)
    low = torch.finfo(torch.float32).min
    f["mask"] = torch.where(torch.rand(f["mask"].shape, generator=torch.Generator().manual_seed(3)) > 0.5, 0.0, low)
    f["mask"][0] = low  # batch element 0: every key hidden for every query
    if mask[1][2] != 1:
        f["mask"][1, :, 2] = float("-inf")  # one query row hidden by -inf
    want = attention_reference(f["q"], f["k"], f["v"], f["mask"], attrs)
    have = torch.from_numpy(sess.run(None, {n: t.numpy() for n, t in f.items()})[0])
    if attrs.window == (-1, -1):
        torch.testing.assert_close(have[0], f["v"][0].mean(-2, keepdim=True).expand_as(have[0]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(have, want, atol=1e-5, rtol=1e-5)


def test_sdpa_float_mask_of_the_lowest_value():
    """torch's SDPA adds a float mask too: a row of finfo.min averages v (the lowered Attention op would give zeros)."""
    g = Graph()
    ins = [g.add_input(n, TensorType(F32, (2, 2, 5, D))) for n in "qkv"]
    ins.append(g.add_input("mask", TensorType(F32, (2, 1, 5, 5))))
    from t2c.ir.opdefs.nn import SDPAAttrs

    g.set_output("y", g.add_node("sdpa", ins, SDPAAttrs()).output)
    gen = torch.Generator().manual_seed(0)
    f = {n: torch.randn(2, 2, 5, D, generator=gen) for n in "qkv"}
    f["mask"] = torch.zeros(2, 1, 5, 5)
    f["mask"][0, :, 1] = torch.finfo(torch.float32).min
    want = torch.nn.functional.scaled_dot_product_attention(f["q"], f["k"], f["v"], attn_mask=f["mask"])
    have = torch.from_numpy(_session(g).run(None, {n: t.numpy() for n, t in f.items()})[0])
    torch.testing.assert_close(have, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("flavor", ["standard", "ort"])
@pytest.mark.parametrize("window", [None, 4], ids=["global-layer", "sliding-layer"])
def test_gemma2_style_softcap_gqa_with_left_padding(window, flavor):
    """Gemma-2's attention as lifted from Hugging Face: soft-capped logits, GQA, causality and the sliding
    window of alternate layers in a float mask of 0 / finfo.min, left padding hiding every key of the first
    queries of one batch element. Eager adds the mask, so those rows are the mean of v; ONNX Runtime's
    Attention read finfo.min as -inf and gave zeros (gemma2, vaultgemma, doge and bigbird_pegasus in the
    coverage sweep: 'the ONNX artifact differs from the IR', logits off by up to 0.389)."""
    attrs = A(softcap=50.0, kv_heads=2, scale=0.0625)
    mask = (F32, ("batch", 1, "seq", "seq"))
    sess = _session(_graph("attention", attrs, 4, 2, mask), flavor)
    for b, s in ((2, 9), (1, 3)):
        f = _feeds(b, s, 4, 2, mask)
        i = torch.arange(s)
        visible = i[None, :] <= i[:, None]
        if window is not None:
            visible &= i[:, None] - i[None, :] < window
        keys = torch.ones(b, s, dtype=torch.bool)
        keys[0, :3] = False  # left padding: queries 0-2 of batch element 0 see no key
        f["mask"] = torch.where(visible & keys[:, None, None, :], 0.0, torch.finfo(torch.float32).min)
        want = attention_reference(f["q"], f["k"], f["v"], f["mask"], attrs)
        have = torch.from_numpy(sess.run(None, {n: t.numpy() for n, t in f.items()})[0])
        hidden = want[0, :, : min(s, 3)]
        torch.testing.assert_close(hidden, f["v"][0].repeat_interleave(2, 0).mean(-2, keepdim=True).expand_as(hidden), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(have, want, atol=1e-5, rtol=1e-5, msg=lambda m: f"b={b} s={s}: {m}")


@pytest.mark.parametrize("head_dim,kernel", [(12, None), (16, "GroupQueryAttention")])
def test_ort_causal_kernel_needs_head_size_multiple_of_8(head_dim, kernel):
    """GroupQueryAttention rejects head sizes not a multiple of 8 at run time: those stay standard, and run."""
    g = Graph()
    ins = [g.add_input(n, TensorType(F32, ("batch", h, "seq", head_dim))) for n, h in (("q", 4), ("k", 2), ("v", 2))]
    attrs = AttentionAttrs(scale=head_dim**-0.5, causal=True, kv_heads=2)
    g.set_output("y", g.add_node("attention", ins, attrs).output)
    proto = lower(g, flavor="ort")
    assert [n.op_type for n in proto.graph.node if n.domain == "com.microsoft"] == ([kernel] if kernel else [])
    f = {n: torch.randn(2, v.type.shape[1], 19, head_dim, generator=torch.Generator().manual_seed(1)) for n, v in zip("qkv", ins)}
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    have = torch.from_numpy(sess.run(None, {n: t.numpy() for n, t in f.items()})[0])
    torch.testing.assert_close(have, attention_reference(f["q"], f["k"], f["v"], None, attrs), atol=1e-5, rtol=1e-5)


def test_ort_attention_only_in_float32():
    """The float32 causal case takes GroupQueryAttention (test above); the same in float16 does not."""
    half = Graph()
    ins = [half.add_input(n, TensorType(DType.F16, ("batch", 4, "seq", D))) for n in ("q", "k", "v")]
    half.set_output("y", half.add_node("attention", ins, A(causal=True)).output)
    assert not [n for n in lower(half, flavor="ort").graph.node if n.domain == "com.microsoft"]


def test_attention_dispatch():
    """Which form each structure gets."""
    assert key_blocks(A(causal=True, window=(7, -1))) == (8, (-1, 0))
    assert key_blocks(A(window=(7, 7))) == (8, (-1, 0, 1))
    assert key_blocks(A(block=16, causal=True)) == (16, (0,))
    assert key_blocks(A(window=(-1, 3))) is None

    def ops(attrs):
        return {n.op_type for n in lower(_graph("attention", attrs)).graph.node}

    assert "Attention" in ops(A()) and "Attention" in ops(A(causal=True))
    assert "Attention" not in ops(A(causal=True, window=(7, -1)))


@pytest.mark.parametrize("attrs", [A(causal=True, window=(7, -1), kv_heads=2), A(window=(7, 7), global_tokens=3, kv_heads=2)])
def test_blocked_gqa_does_not_repeat_kv(attrs):
    """Grouped query heads share their KV head's blocks by broadcasting: no Expand copies K or V."""
    model = lower(_graph("attention", attrs, hq=4, hkv=2))
    ops = [n.op_type for n in model.graph.node]
    assert "Expand" not in ops, ops
    assert ops.count("Gather") == 2  # one gather of key blocks for K, one for V


def _check_linear(attrs, hq=4, hkv=4, lengths=LENGTHS, dv=6):
    g = _graph("linear_attention", attrs, hq, hkv, dv=dv)
    sess = _session(g)
    for b, s in lengths + [(1, 64)]:
        f = _feeds(b, s, hq, hkv, dv=dv)
        want = linear_attention_reference(f["q"], f["k"], f["v"], attrs)
        have = torch.from_numpy(sess.run(None, {n: t.numpy() for n, t in f.items()})[0])
        torch.testing.assert_close(have, want, atol=1e-5, rtol=1e-4, msg=lambda m: f"{attrs} at b={b} s={s}: {m}")


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2)])
@pytest.mark.parametrize("chunk", [16, 64])
def test_linear_attention(monkeypatch, causal, heads, chunk):
    monkeypatch.setattr(la_lowering, "CHUNK", chunk)
    _check_linear(LinearAttentionAttrs(causal=causal, kv_heads=heads[1]), *heads)


# -- no seq x seq tensor anywhere ----------------------------------------------------------


def _largest_intermediate(g, seq, batch=1):
    """Run the lowered model with every node output exposed; the largest element count (and its op)."""
    model = lower(g)
    known = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for out in node.output:
            if out and out not in known:
                model.graph.output.append(onnx.ValueInfoProto(name=out))
                known.add(out)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    hq = g.inputs[0].type.shape[1]
    hkv = g.inputs[1].type.shape[1]
    feeds = {n: t.numpy() for n, t in _feeds(batch, seq, hq, hkv).items()}
    if len(g.inputs) > 3:
        feeds["mask"] = np.ones((batch, 1, 1, seq), dtype=bool)
    outs = sess.run(None, feeds)
    names = [o.name for o in sess.get_outputs()]
    producer = {o: n.name for n in model.graph.node for o in n.output}
    return max((np.asarray(x).size, producer.get(n, n)) for n, x in zip(names, outs))


@pytest.mark.parametrize(
    "op,attrs,mask",
    [
        ("attention", A(causal=True, window=(7, -1)), None),
        ("attention", A(window=(7, 7), global_tokens=3), PAD_MASK),
        ("attention", A(block=8, causal=True, global_tokens=3), None),
        ("linear_attention", LinearAttentionAttrs(causal=True, kv_heads=4), None),
        ("linear_attention", LinearAttentionAttrs(causal=False, kv_heads=4), None),
    ],
)
def test_no_quadratic_intermediate(op, attrs, mask):
    """H=4, D=8, seq=2048: a seq*seq tensor has 4M elements; the band and chunk ones stay O(seq*(W+G)*H), O(seq*C*H)."""
    seq = 2048
    size, where = _largest_intermediate(_graph(op, attrs, mask=mask), seq)
    assert size < seq * seq // 4, f"{where} holds {size} elements at seq={seq}"
    size2, _ = _largest_intermediate(_graph(op, attrs, mask=mask), 2 * seq)
    assert size2 <= 2 * size + 4096, f"the largest intermediate grows faster than seq: {size} -> {size2}"


def test_dense_fallback_is_quadratic():
    """Sanity check of the structural test itself: the dense form does hold seq x seq scores."""
    size, _ = _largest_intermediate(_graph("attention", A(window=(-1, 3))), 256)
    assert size >= 256 * 256


@pytest.mark.parametrize("attrs", [A(causal=True, window=(7, -1), global_tokens=3), A(window=(4, 4)), A(block=8)])
def test_attention_static_shapes(attrs):
    """With an int sequence length the pad and positions are constants (ORT folds the mask)."""
    g = Graph()
    ins = [g.add_input(n, TensorType(F32, (1, 4, 37, D))) for n in "qkv"]
    g.set_output("y", g.add_node("attention", ins, attrs).output)
    sess = ort.InferenceSession(lower(g, static=True).SerializeToString(), providers=["CPUExecutionProvider"])
    f = _feeds(1, 37, 4, 4)
    want = attention_reference(f["q"], f["k"], f["v"], None, attrs)
    have = torch.from_numpy(sess.run(None, {n: t.numpy() for n, t in f.items()})[0])
    torch.testing.assert_close(have, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "attrs",
    [A(causal=True, window=(7, -1)), A(window=(7, 5)), A(causal=True, window=(7, -1), global_tokens=3), A(window=(6, 6), global_tokens=2)],
)
def test_windows_wider_than_a_block(monkeypatch, attrs):
    """Blocks capped below the window: each query block reaches several key blocks back (and forward)."""
    monkeypatch.setattr(attention_plans, "MAX_BLOCK", 3)
    bk, offs = key_blocks(attrs)
    assert bk == 3 and len(offs) > 2
    _check_attention(attrs, hq=4, hkv=2)

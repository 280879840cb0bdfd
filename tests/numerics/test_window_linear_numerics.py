"""`window` and `linear-attention` against independent eager formulas.

The rewritten graph runs in the IR interpreter; the expectation is computed here
from first principles: for windows, PyTorch's SDPA with a boolean mask built
position by position from the pass's documented meaning; for linear attention,
the formula with an explicit loop over positions. Float64 throughout, so the
tolerances only absorb summation order.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from t2c.ir import DType, Graph, TensorType, run_graph, verify
from t2c.ir.opdefs.attention import AttentionAttrs
from t2c.passes import Pipeline

HQ, HKV, D = 4, 2, 8  # grouped-query attention: 2 query heads per kv head
SCALE = 1 / math.sqrt(D)
W = 8


def attention_graph(attrs: AttentionAttrs) -> Graph:
    """One attention over a dynamic batch and sequence length."""
    g = Graph("attn")
    q = g.add_input("q", TensorType(DType.F64, ("batch", HQ, "seq", D)))
    k = g.add_input("k", TensorType(DType.F64, ("batch", HKV, "seq", D)))
    v = g.add_input("v", TensorType(DType.F64, ("batch", HKV, "seq", D)))
    g.set_output("out", g.add_node("attention", [q, k, v], attrs).output)
    verify(g)
    return g


def qkv(seq: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, HQ, seq, D, generator=gen, dtype=torch.float64)
    k = torch.randn(2, HKV, seq, D, generator=gen, dtype=torch.float64)
    v = torch.randn(2, HKV, seq, D, generator=gen, dtype=torch.float64)
    return q, k, v


def rewrite(pipeline: str, attrs: AttentionAttrs) -> Graph:
    g, _ = Pipeline.parse(pipeline).run(attention_graph(attrs), verify_each=True)
    return g


def interpret(g: Graph, q, k, v) -> torch.Tensor:
    return run_graph(g, [q, k, v])["out"]


def rep(x: torch.Tensor) -> torch.Tensor:
    """kv heads repeated for the query heads that share them (head h uses kv head h // 2)."""
    return x.repeat_interleave(HQ // HKV, dim=1)


def visible(seq: int, *, causal: bool, window: int = 0, block: int = 0, global_tokens: int = 0) -> torch.Tensor:
    """[seq, seq] bool, position by position: may query i attend to key j?"""
    mask = torch.zeros(seq, seq, dtype=torch.bool)
    for i in range(seq):
        for j in range(seq):
            local = True
            if window:
                local = abs(i - j) < window  # sliding: keys within W positions
            if block:
                local = local and i // block == j // block
            ok = local or i < global_tokens or j < global_tokens
            if causal:
                ok = ok and j <= i
            mask[i, j] = ok
    return mask


def sdpa(q, k, v, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, rep(k), rep(v), attn_mask=mask, is_causal=causal, scale=SCALE)


# -- window --------------------------------------------------------------------------------


@pytest.mark.parametrize("seq", [37, 20, 13])  # not multiples of W
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("global_tokens", [0, 3])
def test_sliding_window(seq, causal, global_tokens):
    pipeline = f"window{{size={W},global={global_tokens}}}" if global_tokens else f"window{{size={W}}}"
    g = rewrite(pipeline, AttentionAttrs(scale=SCALE, causal=causal, kv_heads=HKV))
    q, k, v = qkv(seq)
    mask = visible(seq, causal=causal, window=W, global_tokens=global_tokens)
    want = sdpa(q, k, v, mask)
    torch.testing.assert_close(interpret(g, q, k, v), want, rtol=1e-10, atol=1e-10)
    # not vacuous: the window really changes the function at this length
    assert not torch.allclose(want, sdpa(q, k, v, causal=causal))


@pytest.mark.parametrize("seq", [37, 13])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("global_tokens", [0, 3])
def test_block_local(seq, causal, global_tokens):
    pipeline = f"window{{size={W},kind=block,global={global_tokens}}}"
    g = rewrite(pipeline, AttentionAttrs(scale=SCALE, causal=causal, kv_heads=HKV))
    q, k, v = qkv(seq, seed=1)
    want = sdpa(q, k, v, visible(seq, causal=causal, block=W, global_tokens=global_tokens))
    torch.testing.assert_close(interpret(g, q, k, v), want, rtol=1e-10, atol=1e-10)


def test_tighter_existing_window_kept():
    # the model sees 2 keys to the left and everything to the right; window{size=8} bounds the right
    g = rewrite(f"window{{size={W}}}", AttentionAttrs(scale=SCALE, window=(2, -1), kv_heads=HKV))
    seq = 37
    q, k, v = qkv(seq, seed=2)
    i = torch.arange(seq)[:, None]
    j = torch.arange(seq)[None, :]
    mask = (j >= i - 2) & (j - i < W)
    torch.testing.assert_close(interpret(g, q, k, v), sdpa(q, k, v, mask), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_exact_when_the_model_already_uses_the_window(causal):
    attrs = AttentionAttrs(scale=SCALE, causal=causal, window=(W - 1, -1 if causal else W - 1), kv_heads=HKV)
    before = attention_graph(attrs)
    q, k, v = qkv(37, seed=3)
    want = interpret(before, q, k, v)
    after, records = Pipeline.parse(f"window{{size={W}}}").run(before, verify_each=True)
    assert records[0].stats["already_windowed"] == 1
    assert torch.equal(interpret(after, q, k, v), want)


@pytest.mark.parametrize("seq", [1, 5, W])
@pytest.mark.parametrize("pipeline", [f"window{{size={W}}}", f"window{{size={W},kind=block}}", f"window{{size={W},global=3}}"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_exact_when_the_sequence_fits_in_the_window(seq, pipeline, causal):
    attrs = AttentionAttrs(scale=SCALE, causal=causal, kv_heads=HKV)
    q, k, v = qkv(seq, seed=4)
    full = interpret(attention_graph(attrs), q, k, v)
    g = rewrite(pipeline, attrs)
    assert g.nodes[0].attrs != attrs  # rewritten, yet the same function at this length
    assert torch.equal(interpret(g, q, k, v), full)
    torch.testing.assert_close(full, sdpa(q, k, v, causal=causal), rtol=1e-10, atol=1e-10)


# -- linear attention ----------------------------------------------------------------------


def phi(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, x + 1, torch.exp(x))  # elu(x) + 1


def linear_loop(q, k, v, causal: bool) -> torch.Tensor:
    """out_i = phi(q_i) S_i / (phi(q_i) . z_i), S_i = sum_j phi(k_j) v_j^T, z_i = sum_j phi(k_j); j <= i if causal."""
    k, v = rep(k), rep(v)
    b, h, seq, _ = q.shape
    out = torch.empty(b, h, seq, v.shape[-1], dtype=q.dtype)
    for bi in range(b):
        for hi in range(h):
            fq, fk, vv = phi(q[bi, hi]), phi(k[bi, hi]), v[bi, hi]
            for i in range(seq):
                last = i + 1 if causal else seq
                s = torch.zeros(fk.shape[-1], vv.shape[-1], dtype=q.dtype)
                z = torch.zeros(fk.shape[-1], dtype=q.dtype)
                for j in range(last):
                    s += torch.outer(fk[j], vv[j])
                    z += fk[j]
                out[bi, hi, i] = (fq[i] @ s) / (fq[i] @ z)
    return out


@pytest.mark.parametrize("seq", [37, 1])
@pytest.mark.parametrize(
    "pipeline, model_causal, causal",
    [
        ("linear-attention", True, True),
        ("linear-attention", False, False),
        ("linear-attention{causal=true}", False, True),
        ("linear-attention{causal=false}", True, False),
    ],
)
def test_linear_attention(seq, pipeline, model_causal, causal):
    g = rewrite(pipeline, AttentionAttrs(scale=SCALE, causal=model_causal, kv_heads=HKV))
    assert [n.op for n in g.nodes] == ["linear_attention"]
    q, k, v = qkv(seq, seed=5)
    torch.testing.assert_close(interpret(g, q, k, v), linear_loop(q, k, v, causal), rtol=1e-10, atol=1e-10)


def test_linear_attention_leaves_a_windowed_model_alone():
    before = attention_graph(AttentionAttrs(scale=SCALE, causal=True, window=(W - 1, -1), kv_heads=HKV))
    q, k, v = qkv(37, seed=6)
    want = interpret(before, q, k, v)
    after, records = Pipeline.parse("linear-attention").run(before, verify_each=True)
    assert records[0].stats == {"linearized": 0, "kv_cache": 0, "skipped": 1}
    assert torch.equal(interpret(after, q, k, v), want)

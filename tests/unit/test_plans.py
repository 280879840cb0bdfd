"""The backend-neutral plans: forms, key blocks, head grouping, mask kinds, and the RoPE layout claim."""

from __future__ import annotations

import math

import pytest
import torch

from t2c.errors import VerifyError
from t2c.ir import DType, Graph, TensorType, run_graph
from t2c.ir.opdefs.attention import AttentionAttrs
from t2c.ir.opdefs.rope import RopeAttrs
from t2c.plans import attention_plan, key_blocks, rope_plan

F32, BOOL = DType.F32, DType.BOOL


def T(*shape, dtype=F32):
    return TensorType(dtype, shape)


def A(**kw):
    kw.setdefault("scale", 1 / math.sqrt(8))
    kw.setdefault("kv_heads", 2)
    return AttentionAttrs(**kw)


Q, KV = T("batch", 4, "seq", 8), T("batch", 2, "seq", 8)


@pytest.mark.parametrize(
    "attrs,form",
    [
        (A(), "fused"),
        (A(causal=True), "fused"),
        (A(causal=True, global_tokens=3), "fused"),  # globals change nothing under plain causality
        (A(causal=True, window=(7, -1)), "blocked"),
        (A(window=(3, 3), global_tokens=2), "blocked"),
        (A(block=16), "blocked"),
        (A(window=(-1, 3)), "dense"),  # unbounded on the left: no band
    ],
)
def test_forms(attrs, form):
    p = attention_plan(attrs, Q, KV, KV)
    assert p.form == form
    assert (p.q_heads, p.kv_heads, p.group) == (4, 2, 2)
    if form == "blocked":
        assert (p.block_size, p.key_offsets) == key_blocks(attrs)


def test_structure_over_different_lengths_is_dense():
    p = attention_plan(A(causal=True, window=(7, -1)), Q, T("batch", 2, "past", 8), T("batch", 2, "past", 8))
    assert p.form == "dense" and not p.same_length


@pytest.mark.parametrize(
    "mask,kind,shape",
    [
        (T("batch", 1, 1, "seq", dtype=BOOL), "row", ("batch", 1, 1, "seq")),
        (T("seq", dtype=BOOL), "row", (1, 1, 1, "seq")),
        (T(1, 4, 1, "seq"), "row", (1, 4, 1, "seq")),
        (T("batch", 1, "seq", "seq", dtype=BOOL), "full", ("batch", 1, "seq", "seq")),
    ],
)
def test_mask_kinds(mask, kind, shape):
    p = attention_plan(A(), Q, KV, KV, mask)
    assert p.mask == kind and tuple(str(d) for d in p.mask_shape) == tuple(str(d) for d in shape)
    assert p.mask_bool == (mask.dtype == BOOL)


def test_rope_half_cache_needs_the_proof_and_the_layout():
    cos = T("batch", 1, "seq", 8)
    assert rope_plan(False, 8, "paired", "length", Q, cos).half_cache
    assert not rope_plan(False, 8, "full", "length", Q, cos).half_cache  # no proof: explicit rotation
    assert not rope_plan(False, 8, "paired", "length", Q, T("batch", 4, "seq", 8)).half_cache  # varies over heads
    assert not rope_plan(False, 8, "paired", "length", T("batch", "seq", 4, 8), T("batch", "seq", 1, 8)).half_cache  # not [B,H,S,D]
    p = attention_plan(A(rope="half", rotary_dim=8, rope_cache="paired", rope_positions="length"), Q, KV, KV, cos=cos)
    assert p.rope is not None and p.rope.half_cache and p.rope.positions == "length"


def test_a_false_paired_claim_fails_loudly():
    """The reference checks what `cache="paired"` claims, so a pass that claims it wrongly is caught."""
    g = Graph()
    x = g.add_input("x", T(1, 2, 3, 8))
    cos, sin = g.add_input("cos", T(1, 1, 3, 8)), g.add_input("sin", T(1, 1, 3, 8))
    g.set_output("y", g.add_node("rope", [x, cos, sin], RopeAttrs(False, 8, "paired", "input")).output)
    half = torch.randn(1, 1, 3, 4)
    paired = {"x": torch.randn(1, 2, 3, 8), "cos": torch.cat([half, half], -1), "sin": torch.cat([half, half], -1)}
    run_graph(g, paired)
    with pytest.raises(VerifyError, match="paired"):
        run_graph(g, {**paired, "cos": torch.randn(1, 1, 3, 8)})

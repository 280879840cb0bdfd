"""Lowerings of `sdpa` and of the semantic `attention` op (t2c/ir/opdefs/attention.py).

`attention` takes the form its plan (t2c/plans/attention.py) names:

1. "fused": the opset-23 `Attention` op, which carries scale, softcap (applied
   before the mask, as in the IR), GQA and a bool/float mask.
2. "blocked": blocked_attention.py, which never materialises an Sq x Sk tensor.
3. "dense": explicit math over whole scores with the structural mask built from
   Range/compare ops.

With rope fused (rope != "none"), q and k are rotated first by the `rope`
lowering (rope.py) and the attention is then lowered as above. The ort flavor's
GroupQueryAttention / MultiHeadAttention are an overlay (ort_attention.py).

Scores are computed in f32 for f16/bf16 inputs, as the IR reference does; rows
that see no key give zeros. The Attention op adds a float mask to half scores,
so a half mask reaches it shifted (`half_bias`, `half_mask_form`).

`sdpa` (torch's scaled_dot_product_attention): 4-D inputs go to the same
`Attention` op, whose semantics match torch for [batch, heads, seq, head_dim]
tensors (default scale 1/sqrt(head_dim), bool or additive mask, `is_causal` as an
upper-left aligned lower triangle, GQA as torch's enable_gqa); other ranks use
explicit MatMul/Softmax math with the same semantics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...ir.core import DType, Node, TensorType, dim_floordiv, dims_equal
from ...ir.opdefs.attention import attention_operands
from ...plans import AttentionPlan, attention_plan
from .context import ONNX_DTYPE
from .lowering import arg, lowers, out_dtype
from .rope import lower_rope


@dataclass(frozen=True)
class AttentionCall:
    """One `attention` as ONNX tensors: q and k already rotated when rope is fused, and its plan."""

    q: str
    k: str
    v: str
    mask: str | None
    q_t: TensorType
    k_t: TensorType
    v_t: TensorType
    mask_t: TensorType | None
    dtype: DType  # of the result
    plan: AttentionPlan


def plan_of(node: Node) -> AttentionPlan:
    """The attention plan of an `attention` node (no ONNX emitted)."""
    q, k, v, mask, cos, _ = attention_operands(node.inputs, node.attrs)
    return attention_plan(node.attrs, q.type, k.type, v.type, mask.type if mask is not None else None, cos.type if cos is not None else None)


def attention_call(ctx, node: Node, plan: AttentionPlan | None = None) -> AttentionCall:
    """Name the operands of `node` in ONNX, rotating q and k first when rope is fused."""
    plan = plan or plan_of(node)
    q_v, k_v, v_v, mask_v, cos_v, sin_v = attention_operands(node.inputs, node.attrs)
    q, k = ctx.name(q_v), ctx.name(k_v)
    if plan.rope is not None:
        cos, sin = ctx.name(cos_v), ctx.name(sin_v)
        q = lower_rope(ctx, plan.rope, q, q_v.type, cos, sin, cos_v.type)
        k = lower_rope(ctx, plan.rope, k, k_v.type, cos, sin, cos_v.type)
    mask = ctx.name(mask_v) if mask_v is not None else None
    return AttentionCall(
        q, k, ctx.name(v_v), mask, q_v.type, k_v.type, v_v.type, mask_v.type if mask_v is not None else None,
        out_dtype(node), plan,
    )


@lowers("attention")
def _attention(ctx, node):
    from .blocked_attention import lower_blocked

    call = attention_call(ctx, node)
    form = call.plan.form
    if form == "fused":
        return [_attention_op(ctx, call)]
    if form == "blocked":
        return [lower_blocked(ctx, call)]
    return [_dense(ctx, call)]


# -- the Attention op --------------------------------------------------------------------


def _attention_op(ctx, call: AttentionCall) -> str:
    p, dt = call.plan, call.dtype
    inputs = [call.q, call.k, call.v]
    causal, kdt = p.causal, dt  # kdt: the dtype the kernel runs in
    if call.mask is not None:
        m_t, m = call.mask_t, call.mask
        mask_form = half_mask_form(m_t.dtype, dt)
        if mask_form == "shift":
            m = half_bias(ctx, m, m_t.dtype, dt, causal, call.q, call.k)
            causal = False  # folded into the mask
        elif m_t.dtype != DType.BOOL:
            if mask_form == "float32":
                kdt = DType.F32
                inputs = [ctx.cast(x, t.dtype, kdt) for x, t in zip(inputs, (call.q_t, call.k_t, call.v_t))]
            m = kernel_bias(ctx, ctx.cast(m, m_t.dtype, kdt), kdt)
        inputs.append(query_rows(ctx, m, m_t, inputs[0], call.q_t))
    attrs = {"is_causal": int(causal), "scale": float(p.scale)}
    if p.softcap > 0:
        attrs["softcap"] = float(p.softcap)
    if kdt in (DType.F16, DType.BF16):
        attrs["softmax_precision"] = ONNX_DTYPE[DType.F32]
    return ctx.cast(ctx.emit("Attention", inputs, **attrs), kdt, dt)


def query_rows(ctx, m: str, m_t, q: str, q_t) -> str:
    """The Attention op's mask with its query dim spelled out: 4-d, [.., Sq, Sk].

    onnxruntime's Attention does not broadcast the mask over queries (a [B,1,1,Sk] padding
    row fails with "inconsistent q_sequence_length"), so such a mask is expanded to Sq rows.
    """
    if m_t.rank < 4:
        m = ctx.emit("Unsqueeze", [m, ctx.ints(list(range(4 - m_t.rank)))])
    if m_t.rank < 2 or not dims_equal(m_t.shape[-2], q_t.shape[-2]):
        sq = ctx.emit("Shape", [q], start=2, end=3)
        m = ctx.emit("Expand", [m, ctx.emit("Concat", [ctx.ints([1, 1]), sq, ctx.ints([1])], axis=0)])
    return m


def kernel_bias(ctx, m: str, dt: DType) -> str:
    """An additive float mask as ONNX Runtime's Attention and MultiHeadAttention kernels must get it.

    The IR (attention_reference) and torch's SDPA add a float mask like any number: a row of
    `finfo.min` (Hugging Face's `masked_fill(~m, finfo.min)`, an all-padding query) gives equal
    scores there, and softmax averages v. The kernels read exactly the lowest finite value as
    -inf and give zeros for such a row (measured: finfo.min + one step is added as a number).
    So `finfo.min` moves one step up (-3.4028233e38 in f32). Nothing else changes: for any
    score below ~1e31 in magnitude, s + either value rounds to that value, and exp of it
    against a visible score is 0 either way. -inf stays -inf, so a row of -inf still gives
    zeros in both (a `Max` clamp would turn it into the mean of v). The dense and blocked
    forms add the mask with Add/Softmax and need none of this.
    """
    low = torch.finfo(dt.torch).min
    up = torch.nextafter(torch.tensor(low, dtype=dt.torch), torch.tensor(0.0, dtype=dt.torch)).item()
    return ctx.emit("Where", [ctx.emit("Equal", [m, ctx.const(low, dt)]), ctx.const(up, dt), m])


def half_mask_form(m_dtype: DType, dt: DType) -> str | None:
    """How an Attention op on `dt` inputs takes a mask of `m_dtype`: None as it is (bool masks,
    float32 attention), "shift" (a float16 mask on float16 inputs: `half_bias`), or "float32" (any
    other float mask on half inputs: the op runs in float32, as the IR adds such a mask).

    A float32 or bfloat16 mask can hold values no half shift reproduces: in float32 a row of
    finfo(float32).min swallows the scores (s + min rounds to min: the mean of v), a row of -1e6
    rounds them partly; so that rare case (torch's SDPA wants the mask in q's dtype) computes
    the whole op in float32 and casts the output back.
    """
    if m_dtype == DType.BOOL or dt not in (DType.F16, DType.BF16):
        return None
    return "shift" if m_dtype == dt == DType.F16 else "float32"


def half_bias(ctx, m: str, m_dtype: DType, dt: DType, causal: bool, q: str, k: str) -> str:
    """A float16 additive mask for the Attention op computing in float16, shifted so that its
    largest visible value in every query row is 0.

    The IR (attention_reference) and torch's SDPA on half inputs add the mask to float32 scores;
    ONNX Runtime's Attention adds it to half scores. The two agree wherever the mask is small,
    but not in a row that every key hides with a large finite value (Hugging Face's
    `masked_fill(~m, finfo(float16).min)` on an all-padding query): in float32 s + -65504 keeps
    the differences between scores and the row softmaxes them, in float16 it rounds every score
    to -65504 (the spacing there is 32) and the row becomes the mean of v (measured, onnxruntime
    1.31 CPU: 0.04-0.13 off). Softmax does not change when a row's mask moves by a constant, so
    the row's maximum over the keys it may see is subtracted first (in the mask's dtype): that
    row becomes 0s, exact in half; in every other row the large values are on keys whose weight
    underflows to 0 either way. A causal plan is folded into the mask first (-inf above the
    diagonal; the caller drops is_causal) so the maximum is over visible keys only. Exact to
    float32's rounding of s + m (|m| <= 65504: steps of 2^-8 at most). A row of -inf stays -inf
    (the shift is clamped at finfo.min: zeros, as the IR gives), and no value left is exactly
    finfo.min of a row that sees nothing else, so `kernel_bias` is not needed.
    """
    if causal:
        i = ctx.emit("Unsqueeze", [arange(ctx, seq_len(ctx, q, 2)), ctx.ints([1])])
        j = arange(ctx, seq_len(ctx, k, 2))
        m = ctx.emit("Where", [ctx.emit("LessOrEqual", [j, i]), m, ctx.const(float("-inf"), m_dtype)])
    row_max = ctx.emit("ReduceMax", [m, ctx.ints([-1])], keepdims=1)
    shift = ctx.emit("Max", [row_max, ctx.const(float(torch.finfo(m_dtype.torch).min), m_dtype)])
    return ctx.cast(ctx.emit("Sub", [m, shift]), m_dtype, dt)


# -- pieces the dense and blocked forms share ------------------------------------------


def compute_dtype(dt: DType) -> DType:
    """Scores and softmax run in f32 for half inputs, as the reference does."""
    return DType.F32 if dt in (DType.F16, DType.BF16) else dt


def scores(ctx, q, k, p: AttentionPlan, cdt, kt_perm):
    """scale * q @ k^T, soft-capped."""
    s = ctx.emit("MatMul", [q, ctx.emit("Transpose", [k], perm=kt_perm)])
    s = ctx.emit("Mul", [s, ctx.const(float(p.scale), cdt)])
    if p.softcap > 0:
        cap = ctx.const(float(p.softcap), cdt)
        s = ctx.emit("Mul", [ctx.emit("Tanh", [ctx.emit("Div", [s, cap])]), cap])
    return s


def all_of(ctx, conds):
    """The And of the conditions that are not None, or None when none is left."""
    conds = [c for c in conds if c is not None]
    if not conds:
        return None
    out = conds[0]
    for c in conds[1:]:
        out = ctx.emit("And", [out, c])
    return out


def i64(ctx, v: int) -> str:
    return ctx.const(v, DType.I64)


def band_rule(ctx, i, j, p: AttentionPlan):
    """The band rule of the IR (window bounds and block-local), or None when it is always true."""
    left, right = p.window
    conds = []
    if left >= 0:
        conds.append(ctx.emit("GreaterOrEqual", [j, ctx.emit("Sub", [i, i64(ctx, left)])]))
    if right >= 0:
        conds.append(ctx.emit("LessOrEqual", [j, ctx.emit("Add", [i, i64(ctx, right)])]))
    if p.block > 0:
        b = i64(ctx, p.block)
        conds.append(ctx.emit("Equal", [ctx.floordiv(i, b), ctx.floordiv(j, b)]))
    return all_of(ctx, conds)


def zero_nan(ctx, probs, cdt):
    """softmax of an all -inf row is NaN; the IR gives zeros there."""
    return ctx.emit("Where", [ctx.emit("IsNaN", [probs]), ctx.const(0.0, cdt), probs])


def seq_len(ctx, x, axis):
    return ctx.emit("Shape", [x], start=axis, end=axis + 1)  # [1] int64


def arange(ctx, n1):
    """Range(0, n) as int64 [n] for a [1] int64 tensor n."""
    n = ctx.emit("Squeeze", [n1, ctx.ints([0])])
    return ctx.emit("Range", [i64(ctx, 0), n, i64(ctx, 1)])


def repeat_heads(ctx, x, t, q_heads):
    """[..., Hkv, S, D] -> [..., Hq, S, D], each kv head repeated Hq/Hkv times in a row."""
    group = dim_floordiv(q_heads, t.shape[-3])
    lead, hkv, s, d = list(t.shape[:-3]), t.shape[-3], t.shape[-2], t.shape[-1]
    x = ctx.emit("Unsqueeze", [x, ctx.ints([t.rank - 2])])
    x = ctx.emit("Expand", [x, ctx.shape(lead + [hkv, group, s, d])])
    return ctx.emit("Reshape", [x, ctx.shape(lead + [q_heads, s, d])], allowzero=1)


# -- dense -------------------------------------------------------------------------------


def _dense(ctx, call: AttentionCall) -> str:
    """Full [B,H,Sq,Sk] scores with the structural mask from Range/compare ops."""
    p, dt = call.plan, call.dtype
    cdt = compute_dtype(dt)
    q, k, v = (ctx.cast(x, t.dtype, cdt) for x, t in ((call.q, call.q_t), (call.k, call.k_t), (call.v, call.v_t)))
    if p.group > 1:
        k, v = repeat_heads(ctx, k, call.k_t, p.q_heads), repeat_heads(ctx, v, call.v_t, p.q_heads)
    s = scores(ctx, q, k, p, cdt, [0, 1, 3, 2])
    i = ctx.emit("Unsqueeze", [arange(ctx, seq_len(ctx, q, 2)), ctx.ints([1])])
    j = arange(ctx, seq_len(ctx, k, 2))
    visible = band_rule(ctx, i, j, p)
    if p.global_tokens > 0 and visible is not None:
        g = i64(ctx, p.global_tokens)
        visible = ctx.emit("Or", [visible, ctx.emit("Or", [ctx.emit("Less", [i, g]), ctx.emit("Less", [j, g])])])
    if p.causal:
        visible = all_of(ctx, [visible, ctx.emit("LessOrEqual", [j, i])])
    if call.mask is not None:
        if p.mask_bool:
            visible = all_of(ctx, [visible, call.mask])
        else:
            s = ctx.emit("Add", [s, ctx.cast(call.mask, call.mask_t.dtype, cdt)])
    if visible is not None:
        s = ctx.emit("Where", [visible, s, ctx.const(float("-inf"), cdt)])
    probs = zero_nan(ctx, ctx.emit("Softmax", [s], axis=-1), cdt)
    return ctx.cast(ctx.emit("MatMul", [probs, v]), cdt, dt)


# -- sdpa --------------------------------------------------------------------------------


@lowers("sdpa")
def _sdpa(ctx, node):
    if node.inputs[0].type.rank == 4:
        a = node.attrs
        inputs = [arg(ctx, node, i) for i in range(len(node.inputs))]
        causal, dt = a.is_causal, node.inputs[0].type.dtype
        kdt = dt  # the dtype the kernel runs in
        if len(inputs) > 3:
            m_t = node.inputs[3].type
            mask_form = half_mask_form(m_t.dtype, dt)  # torch adds a float mask to float32 scores
            if mask_form == "shift":
                inputs[3] = half_bias(ctx, inputs[3], m_t.dtype, dt, causal, inputs[0], inputs[1])
                causal = False
            elif m_t.dtype.is_float:  # added like any number, as in torch
                if mask_form == "float32":
                    kdt = DType.F32
                    inputs[:3] = [ctx.cast(x, node.inputs[i].type.dtype, kdt) for i, x in enumerate(inputs[:3])]
                inputs[3] = kernel_bias(ctx, ctx.cast(inputs[3], m_t.dtype, kdt), kdt)
            inputs[3] = query_rows(ctx, inputs[3], m_t, inputs[0], node.inputs[0].type)
        attrs = {"is_causal": int(causal)}
        if a.scale is not None:
            attrs["scale"] = float(a.scale)
        return [ctx.cast(ctx.emit("Attention", inputs, **attrs), kdt, dt)]
    return [_sdpa_explicit(ctx, node)]


def _sdpa_explicit(ctx, node):
    """softmax(q @ k^T * scale + mask) @ v for any rank >= 2 (GQA repeats k/v heads)."""
    a, dt = node.attrs, out_dtype(node)
    q_t, k_t = node.inputs[0].type, node.inputs[1].type
    q, k, v = (arg(ctx, node, i) for i in range(3))
    if a.enable_gqa and q_t.rank >= 3 and q_t.shape[-3] != k_t.shape[-3]:
        k, v = (repeat_heads(ctx, t, node.inputs[i].type, q_t.shape[-3]) for i, t in ((1, k), (2, v)))
    r = q_t.rank
    scale = a.scale if a.scale is not None else 1.0 / math.sqrt(q_t.shape[-1])
    perm = list(range(r - 2)) + [r - 1, r - 2]
    s = ctx.emit("MatMul", [q, ctx.emit("Transpose", [k], perm=perm)])
    s = ctx.emit("Mul", [s, ctx.const(scale, dt)])
    if a.is_causal:
        s = _add_mask(ctx, s, _causal(ctx, q_t.shape[-2], k_t.shape[-2]), DType.BOOL, dt)
    if len(node.inputs) > 3:
        s = _add_mask(ctx, s, arg(ctx, node, 3), node.inputs[3].type.dtype, dt)
    probs = ctx.emit("Softmax", [s], axis=-1)
    # A fully masked row softmaxes to NaN; torch (and ONNX Attention) give zeros there.
    return ctx.emit("MatMul", [zero_nan(ctx, probs, dt), v])


def _add_mask(ctx, s, mask, mask_dtype, dt):
    if mask_dtype == DType.BOOL:  # True attends; False gets -inf
        mask = ctx.emit("Where", [mask, ctx.const(0.0, dt), ctx.const(float("-inf"), dt)])
    return ctx.emit("Add", [s, ctx.cast(mask, mask_dtype, dt)])


def _causal(ctx, lq, lk):
    """[Lq, Lk] bool, True where key index <= query index (torch's upper-left tril)."""
    zero, one = ctx.const(0, DType.I64), ctx.const(1, DType.I64)
    rows = ctx.emit("Unsqueeze", [ctx.emit("Range", [zero, ctx.dim(lq), one]), ctx.ints([1])])
    cols = ctx.emit("Range", [zero, ctx.dim(lk), one])
    return ctx.emit("LessOrEqual", [cols, rows])

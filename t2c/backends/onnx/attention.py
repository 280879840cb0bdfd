"""Lowering of `sdpa` (torch's scaled_dot_product_attention).

4-D inputs go to the opset-23 `Attention` op, whose semantics match torch for
[batch, heads, seq, head_dim] tensors: `scale` (default 1/sqrt(head_dim)), a
boolean mask where True attends or an additive float mask, `is_causal` as an
upper-left aligned lower triangle, and GQA when q has a multiple of k's heads
(each kv head serves consecutive q heads, as torch's enable_gqa). Other ranks
use explicit MatMul/Softmax math with the same semantics.
"""

from __future__ import annotations

import math

from ...ir.core import DType
from .lowering import arg, lowers, out_dtype


@lowers("sdpa")
def _sdpa(ctx, node):
    q_t = node.inputs[0].type
    if q_t.rank == 4:
        return [_attention_op(ctx, node)]
    return [_explicit(ctx, node)]


def _attention_op(ctx, node):
    a = node.attrs
    inputs = [arg(ctx, node, i) for i in range(len(node.inputs))]
    attrs = {"is_causal": int(a.is_causal)}
    if a.scale is not None:
        attrs["scale"] = float(a.scale)
    return ctx.emit("Attention", inputs, **attrs)


def _explicit(ctx, node):
    """softmax(q @ k^T * scale + mask) @ v for any rank >= 2 (GQA repeats k/v heads)."""
    a, dt = node.attrs, out_dtype(node)
    q_t, k_t = node.inputs[0].type, node.inputs[1].type
    q, k, v = (arg(ctx, node, i) for i in range(3))
    if a.enable_gqa and q_t.rank >= 3 and q_t.shape[-3] != k_t.shape[-3]:
        k, v = (_repeat_heads(ctx, t, node.inputs[i].type, q_t.shape[-3]) for i, t in ((1, k), (2, v)))
    r = q_t.rank
    scale = a.scale if a.scale is not None else 1.0 / math.sqrt(q_t.shape[-1])
    perm = list(range(r - 2)) + [r - 1, r - 2]
    scores = ctx.emit("MatMul", [q, ctx.emit("Transpose", [k], perm=perm)])
    scores = ctx.emit("Mul", [scores, ctx.const(scale, dt)])
    if a.is_causal:
        scores = _add_mask(ctx, scores, _causal(ctx, q_t.shape[-2], k_t.shape[-2]), DType.BOOL, dt)
    if len(node.inputs) > 3:
        scores = _add_mask(ctx, scores, arg(ctx, node, 3), node.inputs[3].type.dtype, dt)
    probs = ctx.emit("Softmax", [scores], axis=-1)
    # A fully masked row softmaxes to NaN; torch (and ONNX Attention) give zeros there.
    probs = ctx.emit("Where", [ctx.emit("IsNaN", [probs]), ctx.const(0.0, dt), probs])
    return ctx.emit("MatMul", [probs, v])


def _add_mask(ctx, scores, mask, mask_dtype, dt):
    if mask_dtype == DType.BOOL:  # True attends; False gets -inf
        mask = ctx.emit("Where", [mask, ctx.const(0.0, dt), ctx.const(float("-inf"), dt)])
    return ctx.emit("Add", [scores, ctx.cast(mask, mask_dtype, dt)])


def _causal(ctx, lq, lk):
    """[Lq, Lk] bool, True where key index <= query index (torch's upper-left tril)."""
    zero, one = ctx.const(0, DType.I64), ctx.const(1, DType.I64)
    rows = ctx.emit("Unsqueeze", [ctx.emit("Range", [zero, ctx.dim(lq), one]), ctx.ints([1])])
    cols = ctx.emit("Range", [zero, ctx.dim(lk), one])
    return ctx.emit("LessOrEqual", [cols, rows])


def _repeat_heads(ctx, x, t, q_heads):
    """[..., Hkv, S, D] -> [..., Hq, S, D], each kv head repeated Hq/Hkv times in a row."""
    from ...ir.core import dim_floordiv

    group = dim_floordiv(q_heads, t.shape[-3])
    lead, hkv, s, d = list(t.shape[:-3]), t.shape[-3], t.shape[-2], t.shape[-1]
    x = ctx.emit("Unsqueeze", [x, ctx.ints([t.rank - 2])])
    x = ctx.emit("Expand", [x, ctx.shape(lead + [hkv, group, s, d])])
    return ctx.emit("Reshape", [x, ctx.shape(lead + [q_heads, s, d])], allowzero=1)

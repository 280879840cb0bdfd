"""Lowering of `rope` (t2c/ir/opdefs/rope.py), also used for `attention` with rope fused.

The opset-23 `RotaryEmbedding` op takes x [B, H, S, D] and cos/sin caches of
*half* width [B, S, r/2], one angle per rotated pair: it can express the IR's
full-layout cos/sin only when both members of every pair carry the same value.
`fuse-rope` proves that from how cos/sin are computed and records it as
cache="paired"; the rope plan (t2c/plans/rope.py) adds the type conditions
(x [B, H, S, D], cos/sin constant over heads) as `half_cache`. The half cache is
then the first half (or the even features) of the IR's cos/sin, squeezed and
expanded to [B, S, r/2]. Anything else (cos/sin passed in) gets explicit ops with
the reference's order of operations: cat(x_r * cos + rot(x_r) * sin, x[..., r:]).
"""

from __future__ import annotations

from ...ir.core import TensorType
from ...plans import RopePlan, rope_plan
from .lowering import arg, lowers

BIG = 1 << 62


@lowers("rope")
def _rope(ctx, node):
    a = node.attrs
    x_t, cos_t = node.inputs[0].type, node.inputs[1].type
    plan = rope_plan(a.interleaved, a.rotary_dim, a.cache, a.positions, x_t, cos_t)
    return [lower_rope(ctx, plan, arg(ctx, node, 0), x_t, arg(ctx, node, 1), arg(ctx, node, 2), cos_t)]


def lower_rope(ctx, plan: RopePlan, x: str, x_t: TensorType, cos: str, sin: str, cos_t: TensorType) -> str:
    """The ONNX name of rope(x) for the ONNX tensors x, cos, sin (IR types x_t, cos_t)."""
    if plan.half_cache:
        return _rotary_op(ctx, plan, x, x_t, cos, sin, cos_t)
    return _explicit(ctx, plan, x, x_t, cos, sin)


# -- RotaryEmbedding ---------------------------------------------------------------------


def _cache(ctx, c: str, c_t: TensorType, x: str, plan: RopePlan) -> str:
    """[B, S, r/2] half cache from the IR's full-layout cos/sin (broadcastable to [B, 1, S, r])."""
    rd = plan.rotary_dim
    if c_t.rank < 4:
        c = ctx.emit("Unsqueeze", [c, ctx.ints(list(range(4 - c_t.rank)))])
    if plan.interleaved:
        c = ctx.emit("Slice", [c, ctx.ints([0]), ctx.ints([rd]), ctx.ints([3]), ctx.ints([2])])
    else:
        c = ctx.emit("Slice", [c, ctx.ints([0]), ctx.ints([rd // 2]), ctx.ints([3])])
    c = ctx.emit("Squeeze", [c, ctx.ints([1])])  # [b?, s?, r/2]
    b = ctx.emit("Shape", [x], start=0, end=1)
    s = ctx.emit("Shape", [x], start=2, end=3)
    return ctx.emit("Expand", [c, ctx.emit("Concat", [b, s, ctx.ints([rd // 2])], axis=0)])


def _rotary_op(ctx, plan: RopePlan, x: str, x_t: TensorType, cos: str, sin: str, cos_t: TensorType) -> str:
    cos_c = _cache(ctx, cos, cos_t, x, plan)
    sin_c = _cache(ctx, sin, cos_t, x, plan)  # sin has cos's type (verified)
    attrs = {"interleaved": int(plan.interleaved)}
    if plan.rotary_dim != x_t.shape[-1]:
        attrs["rotary_embedding_dim"] = plan.rotary_dim
    return ctx.emit("RotaryEmbedding", [x, cos_c, sin_c], **attrs)


# -- explicit ----------------------------------------------------------------------------


def _slice(ctx, x, start, end, step=1):
    return ctx.emit("Slice", [x, ctx.ints([start]), ctx.ints([end]), ctx.ints([-1]), ctx.ints([step])])


def _explicit(ctx, plan: RopePlan, x: str, x_t: TensorType, cos: str, sin: str) -> str:
    d, r, rd = x_t.shape[-1], x_t.rank, plan.rotary_dim
    xr = x if rd == d else _slice(ctx, x, 0, rd)
    if plan.interleaved:
        x1, x2 = _slice(ctx, xr, 0, BIG, 2), _slice(ctx, xr, 1, BIG, 2)
        last = ctx.ints([r])
        pairs = ctx.emit("Concat", [ctx.emit("Unsqueeze", [ctx.emit("Neg", [x2]), last]), ctx.emit("Unsqueeze", [x1, last])], axis=-1)
        rot = ctx.emit("Reshape", [pairs, ctx.ints([0] * (r - 1) + [rd])])
    else:
        h = rd // 2
        rot = ctx.emit("Concat", [ctx.emit("Neg", [_slice(ctx, xr, h, BIG)]), _slice(ctx, xr, 0, h)], axis=-1)
    out = ctx.emit("Add", [ctx.emit("Mul", [xr, cos]), ctx.emit("Mul", [rot, sin])])
    if rd == d:
        return out
    return ctx.emit("Concat", [out, _slice(ctx, x, rd, BIG)], axis=-1)

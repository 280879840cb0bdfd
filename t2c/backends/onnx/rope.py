"""Lowering of `rope` (t2c/ir/opdefs/rope.py), also used for `attention` with rope fused.

The opset-23 `RotaryEmbedding` op takes x [B, H, S, D] and cos/sin caches of
*half* width [B, S, r/2], one angle per rotated pair: it can only express the
IR's full-layout cos/sin when both members of every pair carry the same value
(cos[..., i] == cos[..., i + r/2] for rotate-half, cos[..., 2i] == cos[..., 2i+1]
for interleaved). That holds for every model, but a lowering cannot see data, so
it is used only where the structure proves it: cos/sin computed as
`cos(cat(f, f))` (rotate-half, Hugging Face's `emb = cat(freqs, freqs)`) or as
each value repeated twice by reshape/expand (interleaved, GPT-J's
repeat_interleave), through unsqueeze/reshape/expand/cast, and constant over
heads. The half cache is then the first half (or the even features) of the IR's
cos/sin, squeezed and expanded to [B, S, r/2]. Anything else (cos/sin passed in,
x not [B, H, S, D]) gets explicit ops with the reference's order of operations:
cat(x_r * cos + rot(x_r) * sin, x[..., r:]).
"""

from __future__ import annotations

from ...ir.core import Value
from .lowering import arg, lowers

BIG = 1 << 62


@lowers("rope")
def _rope(ctx, node):
    a = node.attrs
    x = arg(ctx, node, 0)
    return [lower_rope(ctx, x, node.inputs[0], node.inputs[1], node.inputs[2], a.interleaved, a.rotary_dim)]


def lower_rope(ctx, x: str, x_v: Value, cos_v: Value, sin_v: Value, interleaved: bool, rd: int) -> str:
    """The ONNX name of rope(x) (x the ONNX name of IR value x_v)."""
    if x_v.type.rank == 4 and _pairs_equal(cos_v, interleaved) and _pairs_equal(sin_v, interleaved) and _head_free(cos_v, x_v):
        return _rotary_op(ctx, x, x_v, ctx.name(cos_v), cos_v, ctx.name(sin_v), interleaved, rd)
    return _explicit(ctx, x, x_v, ctx.name(cos_v), ctx.name(sin_v), interleaved, rd)


# -- RotaryEmbedding ---------------------------------------------------------------------


def _through(v: Value) -> Value:
    """Look through ops that keep each value's last-dim index: cast, unsqueeze/reshape/expand/permute keeping the last dim."""
    while v.producer is not None:
        n = v.producer
        last = v.type.rank - 1
        ok = n.op == "cast"
        ok |= n.op == "unsqueeze" and n.attrs.dim not in (-1, last)
        ok |= n.op in ("reshape", "expand") and n.inputs[0].type.rank >= 1 and n.inputs[0].type.shape[-1] == v.type.shape[-1]
        ok |= n.op == "permute" and n.attrs.perm[-1] == last
        if not ok:
            break
        v = n.inputs[0]
    return v


def _pairs_equal(v: Value, interleaved: bool) -> bool:
    """Whether the structure proves the two members of every rotated pair of v equal."""
    v = _through(v)
    n = v.producer
    if n is None:
        return False
    if n.op in ("cos", "sin"):  # cos(cat(f, f)) / cos(repeated f)
        return _pairs_equal(n.inputs[0], interleaved)
    if not interleaved:
        return n.op == "cat" and len(n.inputs) == 2 and n.inputs[0] is n.inputs[1] and n.attrs.dim in (-1, v.type.rank - 1)
    # reshape(expand(reshape(f, [..., n, 1]), [..., n, 2]), [..., 2n])
    if n.op != "reshape" or n.inputs[0].type.rank != v.type.rank + 1 or n.inputs[0].type.shape[-1] != 2:
        return False
    e = n.inputs[0].producer
    return e is not None and e.op == "expand" and e.inputs[0].type.shape[-1] == 1 and e.inputs[0].type.shape[-2] == v.type.shape[-1] // 2


def _head_free(cos_v: Value, x_v: Value) -> bool:
    """cos broadcast to x [B, H, S, D] is the same for every head (axis 1 of size 1 or absent)."""
    t = cos_v.type
    full = (1,) * (4 - t.rank) + tuple(t.shape)
    return full[1] == 1


def _cache(ctx, c: str, c_v: Value, x: str, interleaved: bool, rd: int) -> str:
    """[B, S, r/2] half cache from the IR's full-layout cos/sin (broadcastable to [B, 1, S, r])."""
    t = c_v.type
    if t.rank < 4:
        c = ctx.emit("Unsqueeze", [c, ctx.ints(list(range(4 - t.rank)))])
    if interleaved:
        c = ctx.emit("Slice", [c, ctx.ints([0]), ctx.ints([rd]), ctx.ints([3]), ctx.ints([2])])
    else:
        c = ctx.emit("Slice", [c, ctx.ints([0]), ctx.ints([rd // 2]), ctx.ints([3])])
    c = ctx.emit("Squeeze", [c, ctx.ints([1])])  # [b?, s?, r/2]
    b = ctx.emit("Shape", [x], start=0, end=1)
    s = ctx.emit("Shape", [x], start=2, end=3)
    return ctx.emit("Expand", [c, ctx.emit("Concat", [b, s, ctx.ints([rd // 2])], axis=0)])


def _rotary_op(ctx, x, x_v, cos, cos_v, sin, interleaved, rd) -> str:
    cos_c = _cache(ctx, cos, cos_v, x, interleaved, rd)
    # sin has cos's shape (verified), so the same slicing applies
    sin_c = _cache(ctx, sin, cos_v, x, interleaved, rd)
    attrs = {"interleaved": int(interleaved)}
    if rd != x_v.type.shape[-1]:
        attrs["rotary_embedding_dim"] = rd
    return ctx.emit("RotaryEmbedding", [x, cos_c, sin_c], **attrs)


# -- explicit ----------------------------------------------------------------------------


def _slice(ctx, x, start, end, step=1):
    return ctx.emit("Slice", [x, ctx.ints([start]), ctx.ints([end]), ctx.ints([-1]), ctx.ints([step])])


def _explicit(ctx, x, x_v, cos, sin, interleaved, rd) -> str:
    d, r = x_v.type.shape[-1], x_v.type.rank
    xr = x if rd == d else _slice(ctx, x, 0, rd)
    if interleaved:
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

"""Lowering of `nonzero` and `index_add` (t2c/ir/opdefs/data_dependent.py).

nonzero: ONNX NonZero gives [rank, N] where torch gives [N, rank] (both in
row-major order), so a Transpose follows. Its row count is the data-dependent
dim the node introduces; `Context.bind` records the result so later dims read
it with Shape.

data_size: Range(0, x, 1); its length is the dim.

scatter_nd: ScatterND itself (reduction "add" when accumulating).

index_add: ScatterND with reduction "add" accumulates duplicate indices as
torch does. ScatterND indexes the leading axis, so another axis is transposed
to the front and back.

onnxruntime's CPU ScatterND has no float16 / bfloat16 kernel with a reduction ("MLFloat16
data type is not supported with ScatterND opset 16 when reduction is 'add'"): a half
accumulation runs in float32 and is cast back (torch adds each half row in turn, rounding
after each; float32 rounds once: within the half dtype's tolerance).
"""

from __future__ import annotations

from ...ir.core import DType
from ...ir.opdefs._infer import norm_axis
from .lowering import arg, lowers, out_dtype, rank

HALF = (DType.F16, DType.BF16)


def _scatter_add(ctx, dt: DType, x: str, index: str, src: str) -> str:
    """ScatterND(x, index, src, reduction=add), in float32 for a half `dt` (no half kernel in onnxruntime)."""
    if dt not in HALF:
        return ctx.emit("ScatterND", [x, index, src], reduction="add")
    x, src = ctx.cast(x, dt, DType.F32), ctx.cast(src, dt, DType.F32)
    return ctx.cast(ctx.emit("ScatterND", [x, index, src], reduction="add"), DType.F32, dt)


@lowers("nonzero")
def _nonzero(ctx, node):
    return [ctx.emit("Transpose", [ctx.emit("NonZero", [arg(ctx, node, 0)])], perm=[1, 0])]


@lowers("index_add")
def _index_add(ctx, node):
    r = rank(node)
    d = norm_axis(node.attrs.dim, r)
    x, src = arg(ctx, node, 0), arg(ctx, node, 2)
    index = ctx.emit("Unsqueeze", [arg(ctx, node, 1, DType.I64), ctx.ints([1])])  # [N, 1]
    dt = out_dtype(node)
    if d == 0:
        return [_scatter_add(ctx, dt, x, index, src)]
    perm = [d] + [i for i in range(r) if i != d]
    back = [perm.index(i) for i in range(r)]
    moved = _scatter_add(ctx, dt, ctx.emit("Transpose", [x], perm=perm), index, ctx.emit("Transpose", [src], perm=perm))
    return [ctx.emit("Transpose", [moved], perm=back)]


@lowers("data_size")
def _data_size(ctx, node):
    x = arg(ctx, node, 0, DType.I64)
    return [ctx.emit("Range", [ctx.const(0, DType.I64), x, ctx.const(1, DType.I64)])]


@lowers("scatter_nd")
def _scatter_nd(ctx, node):
    x, index, src = arg(ctx, node, 0), arg(ctx, node, 1, DType.I64), arg(ctx, node, 2)
    if node.attrs.accumulate:
        return [_scatter_add(ctx, out_dtype(node), x, index, src)]
    return [ctx.emit("ScatterND", [x, index, src])]

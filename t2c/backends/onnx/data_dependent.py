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
"""

from __future__ import annotations

from ...ir.core import DType
from ...ir.opdefs._infer import norm_axis
from .lowering import arg, lowers, rank


@lowers("nonzero")
def _nonzero(ctx, node):
    return [ctx.emit("Transpose", [ctx.emit("NonZero", [arg(ctx, node, 0)])], perm=[1, 0])]


@lowers("index_add")
def _index_add(ctx, node):
    r = rank(node)
    d = norm_axis(node.attrs.dim, r)
    x, src = arg(ctx, node, 0), arg(ctx, node, 2)
    index = ctx.emit("Unsqueeze", [arg(ctx, node, 1, DType.I64), ctx.ints([1])])  # [N, 1]
    if d == 0:
        return [ctx.emit("ScatterND", [x, index, src], reduction="add")]
    perm = [d] + [i for i in range(r) if i != d]
    back = [perm.index(i) for i in range(r)]
    moved = ctx.emit("ScatterND", [ctx.emit("Transpose", [x], perm=perm), index, ctx.emit("Transpose", [src], perm=perm)], reduction="add")
    return [ctx.emit("Transpose", [moved], perm=back)]


@lowers("data_size")
def _data_size(ctx, node):
    x = arg(ctx, node, 0, DType.I64)
    return [ctx.emit("Range", [ctx.const(0, DType.I64), x, ctx.const(1, DType.I64)])]


@lowers("scatter_nd")
def _scatter_nd(ctx, node):
    x, index, src = arg(ctx, node, 0), arg(ctx, node, 1, DType.I64), arg(ctx, node, 2)
    extra = {"reduction": "add"} if node.attrs.accumulate else {}
    return [ctx.emit("ScatterND", [x, index, src], **extra)]

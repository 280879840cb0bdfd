"""Data movement: reshape, permute, expand, (un)squeeze, slice, select, cat, split, gather, index, pad.

Target shapes and slice bounds are attrs made of dims, possibly symbolic
(`[batch,seq,4,16]`); the interpreter evaluates them from the bound sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy
import torch
import torch.nn.functional as F

from ...errors import VerifyError
from ..core import Dim, TensorType, dim_from_sympy, dim_sympy, dims_equal, dim_prod
from ..ops import define_op
from ._infer import broadcast_shapes, norm_axis


@dataclass(frozen=True)
class ShapeAttrs:
    shape: tuple[Dim, ...] = ()


def _reshape_verify(types, a):
    if not dims_equal(dim_prod(types[0].shape), dim_prod(a.shape)):
        raise VerifyError(f"reshape from {types[0]} to {list(map(str, a.shape))} changes the element count")


define_op(
    "reshape",
    ("x",),
    lambda types, a: [types[0].with_shape(a.shape)],
    lambda ctx, a, x: x.reshape(ctx.shape(a.shape)),
    ShapeAttrs,
    verify=_reshape_verify,
    doc="same elements, new shape",
)


def _expand_verify(types, a):
    t = types[0]
    if len(a.shape) < t.rank:
        raise VerifyError("expand cannot drop dims")
    broadcast_shapes(t.shape, a.shape)


define_op(
    "expand",
    ("x",),
    lambda types, a: [types[0].with_shape(a.shape)],
    lambda ctx, a, x: x.expand(ctx.shape(a.shape)),
    ShapeAttrs,
    verify=_expand_verify,
    doc="broadcast size-1 dims to the given shape",
)


@dataclass(frozen=True)
class PermuteAttrs:
    perm: tuple[int, ...] = ()


def _permute_verify(types, a):
    if sorted(a.perm) != list(range(types[0].rank)):
        raise VerifyError(f"permute perm {a.perm} is not a permutation of rank {types[0].rank}")


define_op(
    "permute",
    ("x",),
    lambda types, a: [types[0].with_shape(types[0].shape[p] for p in a.perm)],
    lambda ctx, a, x: x.permute(a.perm),
    PermuteAttrs,
    verify=_permute_verify,
    doc="reorder dims",
)


@dataclass(frozen=True)
class AxisAttrs:
    dim: int = 0


def _unsqueeze_infer(types, a):
    t = types[0]
    ax = norm_axis(a.dim, t.rank, extra=1)
    s = list(t.shape)
    s.insert(ax, 1)
    return [t.with_shape(s)]


define_op("unsqueeze", ("x",), _unsqueeze_infer, lambda ctx, a, x: x.unsqueeze(a.dim), AxisAttrs, doc="insert a size-1 dim")


@dataclass(frozen=True)
class DimsAttrs:
    dims: tuple[int, ...] = ()


def _squeeze_infer(types, a):
    t = types[0]
    axes = {norm_axis(d, t.rank) for d in a.dims}
    return [t.with_shape(d for i, d in enumerate(t.shape) if not (i in axes and d == 1))]


define_op(
    "squeeze",
    ("x",),
    _squeeze_infer,
    lambda ctx, a, x: x.squeeze(a.dims) if a.dims else x,
    DimsAttrs,
    doc="drop the listed dims where they have size 1",
)
define_op("flip", ("x",), lambda types, a: [types[0]], lambda ctx, a, x: torch.flip(x, a.dims), DimsAttrs, doc="reverse along dims")


@dataclass(frozen=True)
class SliceAttrs:
    dim: int = 0
    start: Dim = 0
    end: Dim = 0
    step: int = 1


def _slice_len(size: Dim, start: Dim, end: Dim, step: int) -> Dim:
    if isinstance(size, int) and isinstance(end, int) and end > size:
        end = size
    n = dim_sympy(end) - dim_sympy(start)
    return dim_from_sympy(n if step == 1 else sympy.floor((n + step - 1) / step))


def _slice_infer(types, a):
    t = types[0]
    ax = norm_axis(a.dim, t.rank)
    s = list(t.shape)
    s[ax] = _slice_len(t.shape[ax], a.start, a.end, a.step)
    return [t.with_shape(s)]


def _slice_ref(ctx, a, x):
    idx = [slice(None)] * x.dim()
    idx[a.dim] = slice(ctx.dim(a.start), ctx.dim(a.end), a.step)
    return x[tuple(idx)]


def _slice_verify(types, a):
    if a.step < 1:
        raise VerifyError("slice step must be positive")


define_op("slice", ("x",), _slice_infer, _slice_ref, SliceAttrs, verify=_slice_verify, doc="x[start:end:step] along dim; bounds are non-negative dims")


@dataclass(frozen=True)
class SelectAttrs:
    dim: int = 0
    index: Dim = 0


def _select_infer(types, a):
    t = types[0]
    ax = norm_axis(a.dim, t.rank)
    return [t.with_shape(d for i, d in enumerate(t.shape) if i != ax)]


define_op(
    "select",
    ("x",),
    _select_infer,
    lambda ctx, a, x: x.select(a.dim, ctx.dim(a.index)),
    SelectAttrs,
    doc="x[index] along dim, dropping it; index is a non-negative dim",
)


def _cat_infer(types, a):
    t0 = types[0]
    ax = norm_axis(a.dim, t0.rank)
    total: Dim = 0
    for t in types:
        total = dim_from_sympy(dim_sympy(total) + dim_sympy(t.shape[ax]))
    s = list(t0.shape)
    s[ax] = total
    from ._infer import promote

    return [TensorType(promote(*types), tuple(s))]


define_op("cat", ("xs*",), _cat_infer, lambda ctx, a, *xs: torch.cat(xs, a.dim), AxisAttrs, doc="concatenate along dim")


@dataclass(frozen=True)
class SplitAttrs:
    dim: int = 0
    sizes: tuple[Dim, ...] = ()


def _split_infer(types, a):
    t = types[0]
    ax = norm_axis(a.dim, t.rank)
    outs = []
    for n in a.sizes:
        s = list(t.shape)
        s[ax] = n
        outs.append(t.with_shape(s))
    return outs


def _split_verify(types, a):
    t = types[0]
    ax = norm_axis(a.dim, t.rank)
    total = dim_from_sympy(sum(dim_sympy(n) for n in a.sizes))
    if not dims_equal(total, t.shape[ax]):
        raise VerifyError(f"split sizes {list(map(str, a.sizes))} do not add up to {t.shape[ax]}")


define_op(
    "split",
    ("x",),
    _split_infer,
    lambda ctx, a, x: tuple(torch.split(x, ctx.shape(a.sizes), a.dim)),
    SplitAttrs,
    verify=_split_verify,
    doc="split along dim into pieces of the given sizes (one output each)",
)


define_op(
    "gather",
    ("x", "index"),
    lambda types, a: [types[1].with_dtype(types[0].dtype)],
    lambda ctx, a, x, i: torch.gather(x, a.dim, i),
    AxisAttrs,
    doc="torch.gather along dim",
)


@dataclass(frozen=True)
class IndexAttrs:
    dims: tuple[int, ...] = ()  # the dim each index operand applies to, ascending


def _index_infer(types, a):
    x, idx = types[0], types[1:]
    if len(idx) != len(a.dims) or list(a.dims) != sorted(set(a.dims)):
        raise VerifyError("index needs one ascending, distinct dim per index operand")
    b = broadcast_shapes(*(t.shape for t in idx))
    rest = [d for i, d in enumerate(x.shape) if i not in a.dims]
    adjacent = list(a.dims) == list(range(a.dims[0], a.dims[-1] + 1))
    if adjacent:
        first = a.dims[0]
        shape = list(x.shape[:first]) + list(b) + list(x.shape[a.dims[-1] + 1 :])
    else:
        shape = list(b) + rest
    return [x.with_shape(shape)]


def _index_ref(ctx, a, x, *idx):
    full: list = [None] * (max(a.dims) + 1)
    for d, i in zip(a.dims, idx):
        full[d] = i
    return torch.ops.aten.index.Tensor(x, full)


define_op("index", ("x", "indices*"), _index_infer, _index_ref, IndexAttrs, doc="advanced indexing x[..., i0, ..., i1]: index operands for the listed dims")


@dataclass(frozen=True)
class DiagonalAttrs:
    diagonal: int = 0


define_op("triu", ("x",), lambda types, a: [types[0]], lambda ctx, a, x: torch.triu(x, a.diagonal), DiagonalAttrs, doc="upper triangle")
define_op("tril", ("x",), lambda types, a: [types[0]], lambda ctx, a, x: torch.tril(x, a.diagonal), DiagonalAttrs, doc="lower triangle")


@dataclass(frozen=True)
class PadAttrs:
    pads: tuple[Dim, ...] = ()  # torch order: (last_lo, last_hi, prev_lo, prev_hi, ...)
    value: float = 0.0


def _pad_infer(types, a):
    t = types[0]
    s = list(t.shape)
    for k in range(len(a.pads) // 2):
        ax = t.rank - 1 - k
        s[ax] = dim_from_sympy(dim_sympy(s[ax]) + dim_sympy(a.pads[2 * k]) + dim_sympy(a.pads[2 * k + 1]))
    return [t.with_shape(s)]


define_op("pad", ("x",), _pad_infer, lambda ctx, a, x: F.pad(x, ctx.shape(a.pads), value=a.value), PadAttrs, doc="constant padding")


@dataclass(frozen=True)
class RepeatAttrs:
    repeats: tuple[Dim, ...] = ()


def _repeat_infer(types, a):
    t = types[0]
    lead = len(a.repeats) - t.rank
    base = [1] * lead + list(t.shape)
    return [t.with_shape(dim_from_sympy(dim_sympy(d) * dim_sympy(r)) for d, r in zip(base, a.repeats))]


define_op("repeat", ("x",), _repeat_infer, lambda ctx, a, x: x.repeat(ctx.shape(a.repeats)), RepeatAttrs, doc="tile the tensor")


define_op(
    "scatter",
    ("x", "index", "src"),
    lambda types, a: [types[0]],
    lambda ctx, a, x, i, s: torch.scatter(x, a.dim, i, s),
    AxisAttrs,
    doc="torch.scatter along dim: x with src written at index",
)


@dataclass(frozen=True)
class ScatterReduceAttrs:
    dim: int = 0
    reduce: str = "sum"  # sum, prod, mean, amax, amin
    include_self: bool = True


SCATTER_REDUCTIONS = ("sum", "prod", "mean", "amax", "amin")


def _scatter_reduce_verify(types, a: ScatterReduceAttrs):
    x, index, src = types
    if a.reduce not in SCATTER_REDUCTIONS:
        raise VerifyError(f"scatter_reduce: reduce must be one of {SCATTER_REDUCTIONS}, got {a.reduce!r}")
    if index.dtype.is_float or index.rank != x.rank or src.rank != x.rank or src.dtype != x.dtype:
        raise VerifyError(f"scatter_reduce: index (integer) and src ({x.dtype}) must have x's rank, got {index}, {src}")


define_op(
    "scatter_reduce",
    ("x", "index", "src"),
    lambda types, a: [types[0]],
    lambda ctx, a, x, i, s: torch.scatter_reduce(x, a.dim, i, s, a.reduce, include_self=a.include_self),
    ScatterReduceAttrs,
    verify=_scatter_reduce_verify,
    doc="torch.scatter_reduce along dim: src reduced into x at index (sum, prod, mean, amax, amin; with or without x's own values)",
)

"""Conversions of ATen ops whose result sizes depend on data, and of what surrounds them.

`torch.where(mask)` / `mask.nonzero()` trace to `aten.nonzero`, whose row count
torch.export represents by an unbacked SymInt (`u0`, `u1`, ...). The handler
here names it as an IR data-dependent dim (`Converter.data_dim`: `n0`, `n1`,
... in order of appearance), so everything computed from those rows carries it
in its type like `batch` or `seq`. `index_add_` and `index_put_(...,
accumulate=True)` put such rows back. torch.export also guards each unbacked
size with `u0 >= 0` assertions; their SymBool conditions only feed the
assertion nodes, which the table skips, so they convert to nothing.

Kept apart from aten_table.py so data-dependent shapes stay one concept; the
handlers register into the same table through its `conversion` decorator.
"""

from __future__ import annotations

import operator

import sympy
import torch

from ..ir.core import DType, Value, dims_equal
from ..ir.opdefs._infer import broadcast_shapes
from ..ir.opdefs.creation import FullAttrs
from ..ir.opdefs.data_dependent import IndexAddAttrs, NonzeroAttrs, ScatterNDAttrs
from ..ir.opdefs.pointwise import CastAttrs
from ..ir.opdefs.shape import AxisAttrs, IndexAttrs, PermuteAttrs, SelectAttrs, ShapeAttrs
from ..ir.ops import get_op
from .aten_table import _cast_to, conversion

aten = torch.ops.aten


@conversion(aten.nonzero.default)
def _nonzero(conv, x):
    size = conv.data_dim(conv.node.meta["val"].shape[0])
    return conv.emit("nonzero", [conv.value(x)], NonzeroAttrs(size))


@conversion(aten._local_scalar_dense.default, aten.item.default)
def _item(conv, x):
    """`t.item()`: the one element as a 0-d tensor.

    Arithmetic with it stays tensor arithmetic. An integer one that torch.export
    turned into a size (`u0`) is remembered: where the size is used (a slice end, a
    reshape), `Converter.sym` makes it a data-dependent dim through `data_size`.
    """
    v = conv.value(x)
    if v.type.rank:
        v = conv.emit("reshape", [v], ShapeAttrs(()))
    val = conv.node.meta.get("val")
    if isinstance(val, torch.SymInt) and isinstance(val.node.expr, sympy.Symbol) and not v.type.dtype.is_float:
        conv.scalar_sources[val.node.expr] = v if v.type.dtype == DType.I64 else conv.emit("cast", [v], CastAttrs(DType.I64))
    return v


@conversion(operator.ge, operator.gt, operator.le, operator.lt, operator.eq, operator.ne)
def _size_condition(conv, *args):
    # Conditions on sizes (`u0 >= 0`) exist only for torch.export's runtime assertions, which are skipped.
    return None


def _index_add(conv, x, dim, index, src):
    """x.index_add(dim, index, src) with src broadcast to the indexed shape and cast to x's dtype."""
    xv, iv, sv = conv.value(x), conv.value(index), conv.value(src)
    if iv.type.rank != 1 or iv.type.dtype in (DType.BOOL,) or iv.type.dtype.is_float:
        raise conv.unsupported("index_add/index_put with an index that is not a 1-d integer tensor")
    d = dim % xv.type.rank
    shape = tuple(iv.type.shape[0] if i == d else s for i, s in enumerate(xv.type.shape))
    if sv.type.shape != shape:
        sv = conv.emit("expand", [sv], ShapeAttrs(shape))
    if sv.type.dtype != xv.type.dtype:
        sv = conv.emit("cast", [sv], CastAttrs(xv.type.dtype))
    return conv.emit("index_add", [xv, iv, sv], IndexAddAttrs(d))


@conversion(aten.index_add.default)
def _index_add_aten(conv, x, dim, index, source, *, alpha=1):
    if alpha != 1:
        sv = conv.value(source)
        scaled = conv.emit("mul", [sv, conv.scalar(alpha, sv)])
        return conv.emit("index_add", [conv.value(x), conv.value(index), scaled], IndexAddAttrs(dim % conv.value(x).type.rank))
    return _index_add(conv, x, dim, index, source)


def mask_coordinates(conv, mask: Value) -> list[Value]:
    """The coordinates of a boolean mask's true elements: one [n] tensor per mask dim.

    One `nonzero` per mask, shared by every conversion that reads the mask (`x[mask]`
    then `x[mask] = v`), so both see the same data-dependent dim. Its name is the
    unbacked size torch gave the current node's result when there is one.
    """
    key = ("nonzero", mask)
    if key not in conv.memo:
        size = _unnamed_unbacked(conv)
        nz = conv.emit("nonzero", [mask], NonzeroAttrs(conv.data_dim(size)))
        cols = [conv.emit("select", [nz], SelectAttrs(1, j)) for j in range(mask.type.rank)]
        conv.memo[key] = cols
    return conv.memo[key]


def _unnamed_unbacked(conv):
    from .torch_export import _is_unbacked

    val = conv.node.meta.get("val")
    for s in getattr(val, "shape", ()):
        expr = s.node.expr if isinstance(s, torch.SymInt) else None
        if isinstance(expr, sympy.Symbol) and expr not in conv.symbols and _is_unbacked(expr):
            return s
    return None


def index_operands(conv, indices) -> tuple[tuple[int, ...], list[Value]]:
    """aten.index's index list as (dims, index tensors): a boolean mask over m dims becomes
    the m coordinate tensors of its true elements (torch does the same), at those dims."""
    dims, vals, d = [], [], 0
    masks = 0
    for t in indices:
        if t is None:
            d += 1
            continue
        v = conv.value(t)
        if v.type.dtype in (DType.BOOL, DType.U8):
            masks += 1
            if masks > 1:
                raise conv.unsupported("indexing with more than one boolean mask")
            mask = v if v.type.dtype == DType.BOOL else conv.emit("cast", [v], CastAttrs(DType.BOOL))
            for col in mask_coordinates(conv, mask):
                dims.append(d)
                vals.append(col)
                d += 1
        else:
            dims.append(d)
            vals.append(v)
            d += 1
    return tuple(dims), vals


@conversion(aten.index_put.default)
def _index_put(conv, x, indices, values, accumulate=False):
    """x[indices] = values (+= with accumulate). One 1-d integer index: index_add; otherwise
    scatter_nd over the indexed dims moved to the front (boolean masks as their coordinates)."""
    given = [(d, i) for d, i in enumerate(indices) if i is not None]
    if accumulate and len(given) == 1 and conv.value(given[0][1]).type.rank == 1 and conv.value(given[0][1]).type.dtype not in (DType.BOOL, DType.U8):
        d, index = given[0]
        return _index_add(conv, x, d, index, values)
    xv = conv.value(x)
    dims, idx = index_operands(conv, indices)
    dims = list(dims)
    k, rank = len(dims), xv.type.rank
    # The shape x[indices] has (torch broadcasts values to it), and the index shape B.
    result = get_op("index").infer_type([xv.type] + [i.type for i in idx], IndexAttrs(tuple(dims)))[0].shape
    b = broadcast_shapes(*(i.type.shape for i in idx))
    src = _cast_to(conv, conv.operand(values, xv), xv.type.dtype)
    if not (src.type.rank == len(result) and all(dims_equal(p, q) for p, q in zip(src.type.shape, result))):
        src = conv.emit("expand", [src], ShapeAttrs(result))
    adjacent = dims == list(range(dims[0], dims[0] + k))
    if adjacent and dims[0] > 0:  # values are [pre, B, post]: scatter_nd wants [B, pre, post]
        p, nb = dims[0], len(b)
        src = conv.emit("permute", [src], PermuteAttrs(tuple(range(p, p + nb)) + tuple(range(p)) + tuple(range(p + nb, len(result)))))
    coords = {id(c) for key, found in conv.memo.items() if key[0] == "nonzero" for c in found}
    cols = []
    for d, i in zip(dims, idx):
        if i.type.dtype != DType.I64:
            i = conv.emit("cast", [i], CastAttrs(DType.I64))
        if id(i) not in coords:  # a user's index may count from the end, as in torch
            size = conv.emit("full", [], FullAttrs((), xv.type.shape[d], DType.I64))
            i = conv.emit("where", [conv.emit("lt", [i, conv.scalar(0, i)]), conv.emit("add", [i, size]), i])
        if not (i.type.rank == len(b) and all(dims_equal(p, q) for p, q in zip(i.type.shape, b))):
            i = conv.emit("expand", [i], ShapeAttrs(b))
        cols.append(conv.emit("unsqueeze", [i], AxisAttrs(len(b))))
    index = cols[0] if k == 1 else conv.emit("cat", cols, AxisAttrs(len(b)))
    perm = dims + [a for a in range(rank) if a not in dims]
    moved = xv if perm == list(range(rank)) else conv.emit("permute", [xv], PermuteAttrs(tuple(perm)))
    out = conv.emit("scatter_nd", [moved, index, src], ScatterNDAttrs(bool(accumulate)))
    if perm == list(range(rank)):
        return out
    back = tuple(perm.index(a) for a in range(rank))
    return conv.emit("permute", [out], PermuteAttrs(back))

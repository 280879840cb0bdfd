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

import torch

from ..ir.core import DType
from ..ir.opdefs.data_dependent import IndexAddAttrs, NonzeroAttrs
from ..ir.opdefs.pointwise import CastAttrs
from ..ir.opdefs.shape import ShapeAttrs
from .aten_table import conversion

aten = torch.ops.aten


@conversion(aten.nonzero.default)
def _nonzero(conv, x):
    size = conv.data_dim(conv.node.meta["val"].shape[0])
    return conv.emit("nonzero", [conv.value(x)], NonzeroAttrs(size))


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


@conversion(aten.index_put.default)
def _index_put(conv, x, indices, values, accumulate=False):
    if not accumulate:
        raise conv.unsupported("index_put without accumulate (assignment through an index tensor); t2c supports index_add_ and index_put_(..., accumulate=True)")
    given = [(d, i) for d, i in enumerate(indices) if i is not None]
    if len(given) != 1:
        raise conv.unsupported("index_put with more than one index tensor")
    d, index = given[0]
    return _index_add(conv, x, d, index, values)

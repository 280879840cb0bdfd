"""Ops whose results have sizes known only at run time, and the scatter that consumes them.

    nonzero(x) {size=n0}               : i64[n0, rank(x)]   the coordinates of x's non-zero elements,
                                                            in row-major order (torch.nonzero)
    index_add(x, index, src) {dim=d}   : x's type           x with src's slices added at `index`
                                                            along d, duplicates accumulating

`nonzero` introduces the data-dependent dim named by `size` (`n0`, `n1`, ...:
see t2c/ir/core.py); later nodes may use it in their types and attrs. It is
what `torch.where(mask)` and `mask.nonzero()` trace to; `index_add` is
`x.index_add_` and `x.index_put_(..., accumulate=True)`, which the expert loops
of hand-written mixtures of experts use to put each expert's rows back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import VerifyError
from ..core import Dim, DType, SymDim, dims_equal, is_data_dim
from ..ops import define_op
from ._infer import norm_axis


@dataclass(frozen=True)
class NonzeroAttrs:
    size: Dim = SymDim("n0")  # the data-dependent dim this node introduces: the number of non-zeros


def _nonzero_verify(types, a: NonzeroAttrs):
    if not (isinstance(a.size, SymDim) and is_data_dim(a.size.expr)):
        raise VerifyError(f"nonzero: size must be a fresh data-dependent dim (n0, n1, ...), got {a.size}")
    if types[0].rank < 1:
        raise VerifyError("nonzero of a 0-d tensor is not supported")


define_op(
    "nonzero",
    ("x",),
    lambda types, a: [types[0].with_dtype(DType.I64).with_shape((a.size, types[0].rank))],
    lambda ctx, a, x: torch.nonzero(x),
    NonzeroAttrs,
    verify=_nonzero_verify,
    data_dims=lambda a: ((str(a.size), 0, 0),),
    doc="coordinates of the non-zero elements, one row each, row-major: a data-dependent count of rows",
)


@dataclass(frozen=True)
class IndexAddAttrs:
    dim: int = 0


def _index_add_verify(types, a: IndexAddAttrs):
    x, index, src = types
    d = norm_axis(a.dim, x.rank)
    if index.rank != 1 or index.dtype.is_float or index.dtype == DType.BOOL:
        raise VerifyError("index_add: index is a 1-d integer tensor")
    if src.dtype != x.dtype or src.rank != x.rank:
        raise VerifyError(f"index_add: src must have x's dtype and rank ({x}), got {src}")
    for i, (s, t) in enumerate(zip(src.shape, x.shape)):
        want = index.shape[0] if i == d else t
        if not dims_equal(s, want):
            raise VerifyError(f"index_add: src is {src}, expected {want} at axis {i}")


define_op(
    "index_add",
    ("x", "index", "src"),
    lambda types, a: [types[0]],
    lambda ctx, a, x, index, src: x.index_add(a.dim, index, src),
    IndexAddAttrs,
    verify=_index_add_verify,
    doc="x with each slice of src added at its index along dim (duplicates accumulate)",
)

"""Ops whose results have sizes known only at run time, and the scatter that consumes them.

    nonzero(x) {size=n0}               : i64[n0, rank(x)]   the coordinates of x's non-zero elements,
                                                            in row-major order (torch.nonzero)
    index_add(x, index, src) {dim=d}   : x's type           x with src's slices added at `index`
                                                            along d, duplicates accumulating
    data_size(x) {size=n0}             : i64[n0]            arange(x) for a 0-d integer x >= 0: makes the
                                                            value of x a dim (`n.item()` used as a size)
    scatter_nd(x, index, src) {accumulate}: x's type        x[index[..., 0], ..., index[..., k-1]] = src
                                                            (+= when accumulate): ONNX ScatterND

`nonzero` introduces the data-dependent dim named by `size` (`n0`, `n1`, ...:
see t2c/ir/core.py); later nodes may use it in their types and attrs. It is
what `torch.where(mask)` and `mask.nonzero()` trace to (and `x[mask]`, through
it); `data_size` is what `t.item()` becomes once the value is used as a size
(a slice end, a reshape); `index_add` is
`x.index_add_` and `x.index_put_(..., accumulate=True)`, which the expert loops
of hand-written mixtures of experts use to put each expert's rows back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import VerifyError
from ..core import Dim, DType, SymDim, TensorType, dims_equal, is_data_dim
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


@dataclass(frozen=True)
class DataSizeAttrs:
    size: Dim = SymDim("n0")  # the data-dependent dim this node introduces: the value of x


def _data_size_verify(types, a: DataSizeAttrs):
    if not (isinstance(a.size, SymDim) and is_data_dim(a.size.expr)):
        raise VerifyError(f"data_size: size must be a fresh data-dependent dim (n0, n1, ...), got {a.size}")
    x = types[0]
    if x.rank != 0 or x.dtype.is_float or x.dtype == DType.BOOL:
        raise VerifyError(f"data_size takes a 0-d integer tensor, got {x}")


def _data_size_ref(ctx, a, x):
    n = int(x)
    if n < 0:
        raise ValueError(f"data_size: a size computed from tensor data is negative ({n})")
    return torch.arange(n, dtype=torch.int64)


define_op(
    "data_size",
    ("x",),
    lambda types, a: [TensorType(DType.I64, (a.size,))],
    _data_size_ref,
    DataSizeAttrs,
    verify=_data_size_verify,
    data_dims=lambda a: ((str(a.size), 0, 0),),
    doc="arange(x) of a 0-d integer tensor: the value of x becomes the data-dependent dim `size`",
)


@dataclass(frozen=True)
class ScatterNDAttrs:
    accumulate: bool = False


def _scatter_nd_verify(types, a: ScatterNDAttrs):
    x, index, src = types
    if index.rank < 1 or index.dtype.is_float or index.dtype == DType.BOOL:
        raise VerifyError(f"scatter_nd: index is an integer tensor [..., k], got {index}")
    k = index.shape[-1]
    if not isinstance(k, int) or not 1 <= k <= x.rank:
        raise VerifyError(f"scatter_nd: index's last axis (k) must be a static 1..{x.rank}, got {k}")
    want = tuple(index.shape[:-1]) + tuple(x.shape[k:])
    if src.dtype != x.dtype or len(src.shape) != len(want) or not all(dims_equal(s, w) for s, w in zip(src.shape, want)):
        raise VerifyError(f"scatter_nd: src must be {x.dtype}{[str(d) for d in want]}, got {src}")


def _scatter_nd_ref(ctx, a, x, index, src):
    return x.index_put(tuple(index.unbind(-1)), src, accumulate=a.accumulate)


define_op(
    "scatter_nd",
    ("x", "index", "src"),
    lambda types, a: [types[0]],
    _scatter_nd_ref,
    ScatterNDAttrs,
    verify=_scatter_nd_verify,
    doc="x with src written (or added) at the coordinates index[..., :k] of x's first k dims",
)

"""Reductions and scans: sum/mean/max/min/var, argmax, softmax family, cumsum, topk, sort."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core import Dim, DType, TensorType
from ..ops import define_op
from ._infer import norm_axis


@dataclass(frozen=True)
class ReduceAttrs:
    dims: tuple[int, ...] = ()  # empty: every dim
    keepdim: bool = False


def _reduced(t: TensorType, dims: tuple[int, ...], keepdim: bool) -> tuple:
    axes = {norm_axis(d, t.rank) for d in dims} if dims else set(range(t.rank))
    if keepdim:
        return tuple(1 if i in axes else d for i, d in enumerate(t.shape))
    return tuple(d for i, d in enumerate(t.shape) if i not in axes)


def _reduce(name: str, fn, out_dtype=None) -> None:
    def infer(types, a):
        (t,) = types
        dtype = out_dtype(t.dtype) if out_dtype else t.dtype
        return [TensorType(dtype, _reduced(t, a.dims, a.keepdim))]

    def ref(ctx, a, x):
        dims = list(a.dims) if a.dims else list(range(x.dim()))
        return fn(x, dims, a.keepdim)

    define_op(name, ("x",), infer, ref, ReduceAttrs, doc=f"{name} over dims (all when empty)")


def _sum_dtype(d: DType) -> DType:
    return DType.I64 if d in (DType.BOOL, DType.U8, DType.I8, DType.I16, DType.I32) else d


_reduce("sum", lambda x, d, k: torch.sum(x, d, k), _sum_dtype)
_reduce("mean", lambda x, d, k: torch.mean(x, d, k))
_reduce("amax", lambda x, d, k: torch.amax(x, d, k))
_reduce("amin", lambda x, d, k: torch.amin(x, d, k))
_reduce("any", lambda x, d, k: torch.any(x, dim=tuple(d), keepdim=k) if d else torch.any(x), lambda d: DType.BOOL)
_reduce("all", lambda x, d, k: torch.all(x, dim=tuple(d), keepdim=k) if d else torch.all(x), lambda d: DType.BOOL)


@dataclass(frozen=True)
class VarAttrs:
    dims: tuple[int, ...] = ()
    correction: float = 1.0
    keepdim: bool = False


define_op(
    "var",
    ("x",),
    lambda types, a: [TensorType(types[0].dtype, _reduced(types[0], a.dims, a.keepdim))],
    lambda ctx, a, x: torch.var(x, list(a.dims) if a.dims else None, correction=a.correction, keepdim=a.keepdim),
    VarAttrs,
    doc="variance with Bessel-style correction",
)


@dataclass(frozen=True)
class ArgAttrs:
    dim: int = -1
    keepdim: bool = False


def _arg_infer(types, a):
    (t,) = types
    return [TensorType(DType.I64, _reduced(t, (a.dim,), a.keepdim))]


define_op("argmax", ("x",), _arg_infer, lambda ctx, a, x: torch.argmax(x, a.dim, a.keepdim), ArgAttrs, doc="index of the max")
define_op("argmin", ("x",), _arg_infer, lambda ctx, a, x: torch.argmin(x, a.dim, a.keepdim), ArgAttrs, doc="index of the min")


@dataclass(frozen=True)
class DimAttrs:
    dim: int = -1


def _dim_op(name, fn, doc):
    define_op(name, ("x",), lambda types, a: [types[0]], lambda ctx, a, x: fn(x, a.dim), DimAttrs, doc=doc)


_dim_op("softmax", torch.softmax, "softmax along dim")
_dim_op("log_softmax", torch.log_softmax, "log-softmax along dim")


def _cumsum_infer(types, a):
    (t,) = types
    return [t.with_dtype(_sum_dtype(t.dtype))]


define_op("cumsum", ("x",), _cumsum_infer, lambda ctx, a, x: torch.cumsum(x, a.dim), DimAttrs, doc="inclusive prefix sum")


@dataclass(frozen=True)
class TopKAttrs:
    k: Dim = 1  # may be symbolic: top-min(2048, seq) of a sparse-attention indexer
    dim: int = -1
    largest: bool = True
    sorted: bool = True


def _topk_infer(types, a):
    (t,) = types
    ax = norm_axis(a.dim, t.rank)
    shape = tuple(a.k if i == ax else d for i, d in enumerate(t.shape))
    return [TensorType(t.dtype, shape), TensorType(DType.I64, shape)]


define_op(
    "topk",
    ("x",),
    _topk_infer,
    lambda ctx, a, x: tuple(torch.topk(x, ctx.dim(a.k), a.dim, a.largest, a.sorted)),
    TopKAttrs,
    doc="k largest (or smallest) values and their indices",
)


@dataclass(frozen=True)
class SortAttrs:
    dim: int = -1
    descending: bool = False
    stable: bool = False


define_op(
    "sort",
    ("x",),
    lambda types, a: [types[0], types[0].with_dtype(DType.I64)],
    lambda ctx, a, x: tuple(torch.sort(x, dim=a.dim, descending=a.descending, stable=a.stable)),
    SortAttrs,
    doc="sorted values and their indices",
)

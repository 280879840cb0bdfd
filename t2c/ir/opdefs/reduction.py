"""Reductions and scans: sum/mean/max/min/var, argmax, softmax family, cumsum, topk, sort, max_pool."""

from __future__ import annotations

from dataclasses import dataclass

import torch

import sympy
import torch.nn.functional as F

from ...errors import VerifyError
from ..core import Dim, DType, TensorType, dim_from_sympy, dim_sympy
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


def _topk_ref(ctx, a, x):
    # Ties go to the lower index, as ONNX TopK specifies: torch.topk's order among equal
    # values is unspecified on the CPU (a zero-initialised router scores every expert alike
    # and it picks [2, 3] of 4), which would make the reference disagree with every lowering.
    values, indices = torch.sort(x, stable=True, dim=a.dim, descending=a.largest)
    k = ctx.dim(a.k)
    return values.narrow(a.dim, 0, k), indices.narrow(a.dim, 0, k)


define_op(
    "topk",
    ("x",),
    _topk_infer,
    _topk_ref,
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


@dataclass(frozen=True)
class PoolAttrs:
    """A window per spatial dim (the last len(kernel) dims of an [N, C, *spatial] tensor)."""

    kernel: tuple[int, ...] = (1,)
    stride: tuple[int, ...] = (1,)
    padding: tuple[int, ...] = (0,)  # on both sides; padded positions never win the max
    dilation: tuple[int, ...] = (1,)
    ceil_mode: bool = False


def _pooled(size: Dim, k: int, s: int, p: int, d: int, ceil_mode: bool) -> Dim:
    span = dim_sympy(size) + 2 * p - d * (k - 1) - 1
    if not ceil_mode:
        return dim_from_sympy(sympy.floor(span / s) + 1)
    out = sympy.floor((span + s - 1) / s) + 1  # the ceiling, written as torch writes it
    # torch: the last window must start inside the input or its left padding. It starts at
    # ceiling(span / s) * s <= span + s - 1, inside whenever s + p <= d * (k - 1) + 1.
    if s + p <= d * (k - 1) + 1:
        return dim_from_sympy(out)
    drop = sympy.simplify((out - 1) * s >= dim_sympy(size) + p)
    if drop not in (sympy.true, sympy.false):
        raise VerifyError(f"max_pool with ceil_mode over the dynamic dim {size} is not supported")
    return dim_from_sympy(out - 1 if drop == sympy.true else out)


def _pool_infer(types, a):
    (t,) = types
    n = len(a.kernel)
    spatial = t.shape[t.rank - n:]
    dilation = getattr(a, "dilation", (1,) * n)
    out = [_pooled(*args, a.ceil_mode) for args in zip(spatial, a.kernel, a.stride, a.padding, dilation)]
    return [t.with_shape(tuple(t.shape[: t.rank - n]) + tuple(out))]


def _pool_verify(types, a):
    n = len(a.kernel)
    dilation = getattr(a, "dilation", (1,) * n)
    if not 1 <= n <= 3 or not all(len(f) == n for f in (a.stride, a.padding, dilation)):
        raise VerifyError(f"pooling: kernel, stride, padding and dilation need one entry per spatial dim (1 to 3), got {a}")
    if types[0].rank != n + 2:
        raise VerifyError(f"pooling over {n} dims takes an [N, C, *spatial] tensor of rank {n + 2}, got {types[0]}")
    if min(a.kernel + a.stride + dilation) < 1 or min(a.padding) < 0 or any(2 * p > k for p, k in zip(a.padding, a.kernel)):
        raise VerifyError(f"pooling: sizes must be positive and padding at most half the kernel, got {a}")
    if not types[0].dtype.is_float:
        raise VerifyError(f"pooling takes a floating-point tensor, got {types[0]}")


def _pool_ref(ctx, a: PoolAttrs, x):
    fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[len(a.kernel) - 1]
    return fn(x, a.kernel, a.stride, a.padding, a.dilation, ceil_mode=a.ceil_mode)


define_op(
    "max_pool",
    ("x",),
    _pool_infer,
    _pool_ref,
    PoolAttrs,
    verify=_pool_verify,
    doc="max over sliding windows of the spatial dims (torch's max_pool1d/2d/3d)",
)


@dataclass(frozen=True)
class AvgPoolAttrs:
    kernel: tuple[int, ...] = (1,)
    stride: tuple[int, ...] = (1,)
    padding: tuple[int, ...] = (0,)
    ceil_mode: bool = False
    count_include_pad: bool = True  # padded positions count in the divisor (windows past the padding never do)


def _avg_pool_ref(ctx, a: AvgPoolAttrs, x):
    fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[len(a.kernel) - 1]
    return fn(x, a.kernel, a.stride, a.padding, a.ceil_mode, a.count_include_pad)


define_op(
    "avg_pool",
    ("x",),
    _pool_infer,
    _avg_pool_ref,
    AvgPoolAttrs,
    verify=_pool_verify,
    doc="mean over sliding windows of the spatial dims (torch's avg_pool1d/2d/3d)",
)

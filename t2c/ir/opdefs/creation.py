"""Ops that make tensors from attrs alone: full (scalars and filled tensors) and arange."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import sympy
import torch

from ...errors import VerifyError
from ..core import Dim, DType, SymDim, TensorType, dim_from_sympy, dim_sympy
from ..ops import define_op

# A symbolic value (`seq`) makes a scalar from a dynamic size, as `x + x.shape[1]` needs.
Scalar = Union[bool, int, float, SymDim]


@dataclass(frozen=True)
class FullAttrs:
    shape: tuple[Dim, ...] = ()
    value: Scalar = 0.0
    dtype: DType = DType.F32


def _full_verify(types, a):
    if isinstance(a.value, float) and not a.dtype.is_float and a.value == a.value and a.value != int(a.value):
        raise VerifyError(f"full value {a.value} does not fit dtype {a.dtype}")


define_op(
    "full",
    (),
    lambda types, a: [TensorType(a.dtype, a.shape)],
    lambda ctx, a, *_: torch.full(ctx.shape(a.shape), ctx.dim(a.value) if isinstance(a.value, SymDim) else a.value, dtype=a.dtype.torch),
    FullAttrs,
    verify=_full_verify,
    doc="a tensor filled with one value; shape [] is a scalar constant",
)


@dataclass(frozen=True)
class ArangeAttrs:
    start: Dim = 0
    end: Dim = 0
    step: Dim = 1
    dtype: DType = DType.I64


def _arange_infer(types, a):
    span = dim_sympy(a.end) - dim_sympy(a.start)
    # Bounds are dims, integers when the graph runs: with step 1 the length is their difference.
    # sympy may not know that (`seq/8 + 1` under the constraint `seq % 8 == 0`), and would keep
    # a `ceiling` around it that the same size written elsewhere lacks.
    if a.step == 1:
        return [TensorType(a.dtype, (dim_from_sympy(span),))]
    return [TensorType(a.dtype, (dim_from_sympy(sympy.ceiling(span / dim_sympy(a.step))),))]


define_op(
    "arange",
    (),
    _arange_infer,
    lambda ctx, a, *_: torch.arange(ctx.dim(a.start), ctx.dim(a.end), ctx.dim(a.step), dtype=a.dtype.torch),
    ArangeAttrs,
    doc="start, start+step, ... < end",
)

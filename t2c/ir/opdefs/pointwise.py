"""Elementwise ops: unary math, binary arithmetic with broadcasting, comparisons, where, cast."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..core import DType, TensorType
from ..ops import define_op
from ._infer import broadcast_shapes, promote


def _float_result(t: TensorType) -> DType:
    return t.dtype if t.dtype.is_float else DType.F32


_UNARY = {
    "neg": (torch.neg, False),
    "abs": (torch.abs, False),
    "exp": (torch.exp, True),
    "log": (torch.log, True),
    "sqrt": (torch.sqrt, True),
    "rsqrt": (torch.rsqrt, True),
    "reciprocal": (torch.reciprocal, True),
    "sin": (torch.sin, True),
    "cos": (torch.cos, True),
    "tanh": (torch.tanh, True),
    "sigmoid": (torch.sigmoid, True),
    "erf": (torch.erf, True),
    "relu": (torch.relu, False),
    "silu": (F.silu, True),
    "floor": (torch.floor, False),
    "ceil": (torch.ceil, False),
    "round": (torch.round, False),  # half to even, like ONNX Round
    "sign": (torch.sign, False),
    "tan": (torch.tan, True),
    "asin": (torch.asin, True),
    "acos": (torch.acos, True),
    "atan": (torch.atan, True),
    "logical_not": (torch.logical_not, None),
}


def _unary(name: str, fn, to_float: bool | None) -> None:
    def infer(types, attrs):
        (t,) = types
        if to_float is None:
            return [t.with_dtype(DType.BOOL)]
        return [t.with_dtype(_float_result(t)) if to_float else t]

    define_op(name, ("x",), infer, lambda ctx, attrs, x: fn(x), doc=f"elementwise {name}")


for _name, (_fn, _tf) in _UNARY.items():
    _unary(_name, _fn, _tf)


@dataclass(frozen=True)
class GeluAttrs:
    approximate: str = "none"  # "none" (erf) or "tanh"


define_op(
    "gelu",
    ("x",),
    lambda types, a: [types[0]],
    lambda ctx, a, x: F.gelu(x, approximate=a.approximate),
    GeluAttrs,
    verify=lambda types, a: _check_in(a.approximate, ("none", "tanh"), "gelu approximate"),
    doc="GELU, exact (erf) or tanh-approximated",
)


def _check_in(v, allowed, what):
    from ...errors import VerifyError

    if v not in allowed:
        raise VerifyError(f"{what} must be one of {allowed}, got {v!r}")


@dataclass(frozen=True)
class ClampAttrs:
    min: Optional[float] = None
    max: Optional[float] = None


def _clamp_ref(ctx, a, x):
    # Python float bounds would promote an integer x to float in torch; the result keeps x's dtype.
    lo, hi = a.min, a.max
    if not x.dtype.is_floating_point:
        lo, hi = (None if b is None else int(b) for b in (lo, hi))
    return torch.clamp(x, lo, hi)


def _clamp_verify(types, a):
    from ...errors import VerifyError

    if not types[0].dtype.is_float:
        for b in (a.min, a.max):
            if b is not None and b == b and b not in (float("inf"), float("-inf")) and b != int(b):
                raise VerifyError(f"clamp of an integer tensor needs integral bounds, got {b}")


define_op(
    "clamp",
    ("x",),
    lambda types, a: [types[0]],
    _clamp_ref,
    ClampAttrs,
    verify=_clamp_verify,
    doc="clamp to [min, max], keeping x's dtype (integral bounds for integers); either bound may be none",
)


@dataclass(frozen=True)
class CastAttrs:
    dtype: DType = DType.F32


define_op(
    "cast",
    ("x",),
    lambda types, a: [types[0].with_dtype(a.dtype)],
    lambda ctx, a, x: x.to(a.dtype.torch),
    CastAttrs,
    doc="convert element type",
)


_BINARY = {
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "pow": torch.pow,
    "maximum": torch.maximum,
    "minimum": torch.minimum,
    "remainder": torch.remainder,
    "floor_divide": torch.floor_divide,
    "bitwise_and": torch.bitwise_and,
    "bitwise_or": torch.bitwise_or,
    "logical_and": torch.logical_and,
    "logical_or": torch.logical_or,
}


def _binary(name: str, fn) -> None:
    def infer(types, attrs):
        a, b = types
        dtype = DType.BOOL if name.startswith("logical") else promote(a, b)
        return [TensorType(dtype, broadcast_shapes(a.shape, b.shape))]

    define_op(name, ("a", "b"), infer, lambda ctx, attrs, a, b: fn(a, b), doc=f"elementwise {name}, broadcasting")


for _name, _fn in _BINARY.items():
    _binary(_name, _fn)


@dataclass(frozen=True)
class DivAttrs:
    rounding_mode: Optional[str] = None  # none (true division), "trunc" or "floor"


def _div_infer(types, a):
    x, y = types
    dtype = promote(x, y)
    if a.rounding_mode is None and not dtype.is_float:
        dtype = DType.F32
    return [TensorType(dtype, broadcast_shapes(x.shape, y.shape))]


define_op(
    "div",
    ("a", "b"),
    _div_infer,
    lambda ctx, a, x, y: torch.div(x, y, rounding_mode=a.rounding_mode),
    DivAttrs,
    verify=lambda types, a: _check_in(a.rounding_mode, (None, "trunc", "floor"), "div rounding_mode"),
    doc="division; integer inputs give f32 unless a rounding mode is set",
)

_COMPARE = {"eq": torch.eq, "ne": torch.ne, "lt": torch.lt, "le": torch.le, "gt": torch.gt, "ge": torch.ge}


def _compare(name: str, fn) -> None:
    def infer(types, attrs):
        a, b = types
        return [TensorType(DType.BOOL, broadcast_shapes(a.shape, b.shape))]

    define_op(name, ("a", "b"), infer, lambda ctx, attrs, a, b: fn(a, b), doc=f"elementwise comparison {name}")


for _name, _fn in _COMPARE.items():
    _compare(_name, _fn)


def _where_infer(types, attrs):
    c, a, b = types
    return [TensorType(promote(a, b), broadcast_shapes(c.shape, a.shape, b.shape))]


define_op(
    "where",
    ("cond", "a", "b"),
    _where_infer,
    lambda ctx, attrs, c, a, b: torch.where(c, a, b),
    doc="select a where cond else b, broadcasting",
)

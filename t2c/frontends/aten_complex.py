"""Complex tensors as pairs of reals: RoPE written in complex numbers (`torch.polar`, `view_as_complex`).

The IR has no complex dtype. Rotary embeddings in the style of Meta's original Llama code
(DeepSeek-V2 among Hugging Face families) build `freqs_cis = torch.polar(ones, angles)`, view q
and k as complex (`view_as_complex(x.reshape(..., -1, 2))`), multiply, and view the product back as
real (`view_as_real(...).flatten(3)`). Each complex tensor here is its `view_as_real` form, a real
tensor with a trailing dim of 2 (re, im), wrapped in `Complex` so that an op this file does not
convert fails by name instead of computing on the wrong layout. Converted: polar,
view_as_complex, view_as_real, mul (complex x complex, complex x real) and the shape ops RoPE applies
to its table (unsqueeze). The arithmetic is exact: the lifting passes then see the ordinary
interleaved rotation (x_even * cos - x_odd * sin, ...).

FNet mixes tokens with `torch.fft.fftn(x).real`: a real tensor cast to complex, then `_fft_c2c` over
some dims. Each dim's transform is a matmul with the n x n DFT matrix, built at run time for the
dynamic n from `(k * j) mod n` (integers, so the angles stay in [0, 2 pi) and float32-exact enough).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import math

from ..ir.core import DType, Value
from ..ir.opdefs.creation import ArangeAttrs, FullAttrs
from ..ir.opdefs.pointwise import CastAttrs
from ..ir.opdefs.shape import AxisAttrs, PermuteAttrs, SelectAttrs
from .aten_table import CONVERSIONS, conversion

aten = torch.ops.aten


@dataclass(frozen=True)
class Complex:
    """A complex tensor of shape S, held as its real view: a float Value of shape S + [2]."""

    pairs: Value

    @property
    def rank(self) -> int:
        return self.pairs.type.rank - 1


def _complex(conv, arg) -> Complex | None:
    v = conv.lookup(arg) if isinstance(arg, torch.fx.Node) else None
    return v if isinstance(v, Complex) else None


def _stack_last(conv, re: Value, im: Value) -> Value:
    re, im = (conv.emit("unsqueeze", [t], AxisAttrs(t.type.rank)) for t in (re, im))
    return conv.emit("cat", [re, im], AxisAttrs(re.type.rank - 1))


def _parts(conv, z: Complex) -> tuple[Value, Value]:
    last = z.pairs.type.rank - 1
    return tuple(conv.emit("select", [z.pairs], SelectAttrs(last, i)) for i in (0, 1))  # type: ignore[return-value]


@conversion(aten.polar.default)
def _polar(conv, magnitude, angle):
    r, a = conv.value(magnitude), conv.value(angle)
    re = conv.emit("mul", [r, conv.emit("cos", [a])])
    im = conv.emit("mul", [r, conv.emit("sin", [a])])
    return Complex(_stack_last(conv, re, im))


@conversion(aten.view_as_complex.default)
def _view_as_complex(conv, x):
    return Complex(conv.value(x))


@conversion(aten.view_as_real.default)
def _view_as_real(conv, z):
    c = _complex(conv, z)
    if c is None:
        raise conv.unsupported("view_as_real of a tensor that is not complex")
    return c.pairs


def _complex_aware(target, complex_handler):
    """Register `complex_handler` for `target` when an operand is Complex; the real conversion otherwise."""
    real_handler = CONVERSIONS[target]

    @conversion(target)
    def handler(conv, *args, **kwargs):
        if any(_complex(conv, a) is not None for a in args):
            return complex_handler(conv, *args, **kwargs)
        return real_handler(conv, *args, **kwargs)

    return handler


def _mul(conv, a, b):
    x, y = _complex(conv, a), _complex(conv, b)
    if x is None or y is None:  # complex x real (a tensor or a number): scale both parts
        z, r = (x, b) if x is not None else (y, a)
        if isinstance(r, torch.fx.Node):
            real = conv.value(r)
            real = conv.emit("unsqueeze", [real], AxisAttrs(real.type.rank))
        elif isinstance(r, complex):
            raise conv.unsupported("a complex tensor times a complex Python number")
        else:
            real = conv.scalar(r, like=z.pairs)
        return Complex(conv.emit("mul", [z.pairs, real]))
    xr, xi = _parts(conv, x)
    yr, yi = _parts(conv, y)
    re = conv.emit("sub", [conv.emit("mul", [xr, yr]), conv.emit("mul", [xi, yi])])
    im = conv.emit("add", [conv.emit("mul", [xr, yi]), conv.emit("mul", [xi, yr])])
    return Complex(_stack_last(conv, re, im))


def _unsqueeze(conv, z, dim):
    c = _complex(conv, z)
    axis = dim if dim >= 0 else dim + c.rank + 1
    return Complex(conv.emit("unsqueeze", [c.pairs], AxisAttrs(axis)))


def _to_complex(conv, x, *args, **kwargs):
    dtype = kwargs.get("dtype", args[0] if args and isinstance(args[0], torch.dtype) else None)
    v = conv.value(x)
    if dtype is None or not dtype.is_complex:
        return _real_to_copy(conv, x, *args, **kwargs)
    if dtype != torch.complex64:
        raise conv.unsupported(f"complex dtype {dtype} (only complex64: pairs of float32)")
    re = v if v.type.dtype == DType.F32 else conv.emit("cast", [v], CastAttrs(DType.F32))
    zeros = conv.emit("full", [], FullAttrs(re.type.shape, 0.0, DType.F32))
    return Complex(_stack_last(conv, re, zeros))


_real_to_copy = CONVERSIONS[aten._to_copy.default]
conversion(aten._to_copy.default)(_to_complex)


def _dft(conv, n) -> tuple[Value, Value]:
    """cos and -sin of the n x n DFT angles 2 pi (k j mod n) / n."""
    k = conv.emit("arange", [], ArangeAttrs(0, n, 1, DType.I64))
    kj = conv.emit("mul", [conv.emit("unsqueeze", [k], AxisAttrs(1)), conv.emit("unsqueeze", [k], AxisAttrs(0))])
    n_t = conv.emit("full", [], FullAttrs((), n, DType.I64))
    turns = conv.emit("remainder", [kj, n_t])
    angle = conv.emit("div", [conv.emit("cast", [turns], CastAttrs(DType.F32)), conv.emit("cast", [n_t], CastAttrs(DType.F32))])
    angle = conv.emit("mul", [angle, conv.scalar(2 * math.pi, like=angle)])
    return conv.emit("cos", [angle]), conv.emit("neg", [conv.emit("sin", [angle])])


@conversion(aten._fft_c2c.default)
def _fft_c2c(conv, z, dims, normalization, forward):
    c = _complex(conv, z)
    if c is None or not forward or normalization != 0:
        raise conv.unsupported("fft other than the forward, unnormalised transform of a complex tensor")
    re, im = _parts(conv, c)
    for d in dims:
        d = d % c.rank
        perm = [i for i in range(c.rank) if i != d] + [d]  # the transformed dim last, for the matmul
        back = [perm.index(i) for i in range(c.rank)]
        re, im = (conv.emit("permute", [t], PermuteAttrs(tuple(perm))) for t in (re, im))
        wr, wi = _dft(conv, re.type.shape[-1])  # symmetric: x @ W transforms the last dim
        re, im = (conv.emit("sub", [conv.emit("matmul", [re, wr]), conv.emit("matmul", [im, wi])]),
                  conv.emit("add", [conv.emit("matmul", [re, wi]), conv.emit("matmul", [im, wr])]))
        re, im = (conv.emit("permute", [t], PermuteAttrs(tuple(back))) for t in (re, im))
    return Complex(_stack_last(conv, re, im))


_complex_aware(aten.mul.Tensor, _mul)
_complex_aware(aten.unsqueeze.default, _unsqueeze)

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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ir.core import Value
from ..ir.opdefs.shape import AxisAttrs, SelectAttrs
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


_complex_aware(aten.mul.Tensor, _mul)
_complex_aware(aten.unsqueeze.default, _unsqueeze)

"""ATen convolutions -> the IR's `conv` (registered in `aten_table.CONVERSIONS`).

`conv1d`, `conv2d`, `conv3d` and `nn.Conv*d` all reach core ATen as
`aten.convolution(input, weight, bias, stride, padding, dilation, transposed,
output_padding, groups)`; string paddings ("same") arrive already resolved
into numbers, or as an explicit `constant_pad_nd` when they are uneven.
An input without a batch dim (torch's unbatched conv) gets one and loses it
again. Transposed convolutions are not converted: the error names them.
"""

from __future__ import annotations

import torch

from ..ir.opdefs.conv import ConvAttrs
from ..ir.opdefs.shape import AxisAttrs, DimsAttrs
from .aten_table import conversion

aten = torch.ops.aten


def _ints(conv, values, n: int, what: str) -> tuple[int, ...]:
    out = [conv.dim(v) for v in values]
    if not all(isinstance(v, int) for v in out):
        raise conv.unsupported(f"a convolution with a symbolic {what}")
    if len(out) == 1 and n > 1:  # torch lets one number stand for every spatial dim
        out = out * n
    return tuple(out)


@conversion(aten.convolution.default)
def _convolution(conv, x, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    if transposed:
        raise conv.unsupported("a transposed convolution (ConvTranspose); t2c converts only forward convolutions")
    w = conv.value(weight)
    n = w.type.rank - 2
    if n not in (1, 2, 3):
        raise conv.unsupported(f"a convolution with {n} spatial dims")
    attrs = ConvAttrs(_ints(conv, stride, n, "stride"), _ints(conv, padding, n, "padding"), _ints(conv, dilation, n, "dilation"), int(groups))
    xv = conv.value(x)
    unbatched = xv.type.rank == n + 1
    if unbatched:
        xv = conv.emit("unsqueeze", [xv], AxisAttrs(0))
    ins = [xv, w] + ([conv.value(bias)] if bias is not None else [])
    y = conv.emit("conv", ins, attrs)
    return conv.emit("squeeze", [y], DimsAttrs((0,))) if unbatched else y

"""`conv` (`t2c/ir/opdefs/conv.py`) as ai.onnx Conv.

torch's padding is symmetric per spatial dim; ONNX's `pads` lists every dim's
start, then every dim's end. Groups, strides and dilations carry over as they
are. ONNX Runtime's CPU provider has Conv kernels for float and double only,
so half-precision convs run in float32 and are cast back (torch accumulates
them in float32 on the CPU too).
"""

from __future__ import annotations

from ...ir.core import DType
from .lowering import arg, lowers, out_dtype

_NATIVE = (DType.F32, DType.F64)


@lowers("conv")
def _conv(ctx, node):
    a, dt = node.attrs, out_dtype(node)
    run = dt if dt in _NATIVE else DType.F32
    ins = [arg(ctx, node, i, run) for i in range(len(node.inputs))]
    kernel = list(node.inputs[1].type.shape[2:])
    y = ctx.emit("Conv", ins, group=a.groups, strides=list(a.stride), dilations=list(a.dilation),
                 pads=list(a.padding) * 2, kernel_shape=kernel)
    return [ctx.cast(y, run, dt)]

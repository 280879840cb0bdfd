"""Lowerings of the fused activations `gated_act` and `bias_act` (`t2c/ir/opdefs/activation.py`).

standard: `gated_act` is the activation then Mul; `bias_act` is Add then the
activation. GELU is ai.onnx Gelu (opset 20) with `approximate` "none" or "tanh",
which ONNX Runtime computes as torch does; SiLU is x * Sigmoid(x).

ort: `bias_act` with GELU becomes one com.microsoft node: BiasGelu(x, bias)
for the erf form, FastGelu(x, bias) for the tanh form (ONNX Runtime's
0.5 * x * (1 + tanh(0.7978845608 * x + 0.0356774081 * x^3)) over x + bias).
Their CPU kernels take float32 only, so other dtypes and other activations
lower as in standard.
"""

from __future__ import annotations

from ...ir.core import DType
from .lowering import arg, lowers, out_dtype

MS_DOMAIN = "com.microsoft"
_ORT_BIAS_GELU = {"gelu": "BiasGelu", "gelu_tanh": "FastGelu"}


def activation(ctx, name: str, x: str) -> str:
    """`name` (silu, gelu, gelu_tanh, relu) applied to the ONNX tensor `x`."""
    if name == "silu":
        return ctx.emit("Mul", [x, ctx.emit("Sigmoid", [x])])
    if name == "relu":
        return ctx.emit("Relu", [x])
    return ctx.emit("Gelu", [x], approximate="tanh" if name == "gelu_tanh" else "none")


@lowers("gated_act")
def _gated_act(ctx, node):
    dt = out_dtype(node)
    gate = activation(ctx, node.attrs.activation, arg(ctx, node, 0))
    # The reference applies the activation in the gate's dtype, then promotes for the product.
    return [ctx.emit("Mul", [ctx.cast(gate, node.inputs[0].type.dtype, dt), arg(ctx, node, 1, dt)])]


@lowers("bias_act")
def _bias_act(ctx, node):
    dt, act = out_dtype(node), node.attrs.activation
    x, bias = arg(ctx, node, 0, dt), arg(ctx, node, 1, dt)
    if ctx.flavor == "ort" and act in _ORT_BIAS_GELU and dt == DType.F32:
        return [ctx.emit(_ORT_BIAS_GELU[act], [x, bias], domain=MS_DOMAIN)]
    return [activation(ctx, act, ctx.emit("Add", [x, bias]))]

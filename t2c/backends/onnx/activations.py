"""Lowerings of the fused activations `gated_act` and `bias_act` (`t2c/ir/opdefs/activation.py`),
and `activation`, the one emitter of the activations by name that every lowering uses.

`gated_act` is the activation then Mul; `bias_act` is Add then the activation.
GELU is ai.onnx Gelu (opset 20) with `approximate` "none" or "tanh", which ONNX
Runtime computes as torch does; SiLU is x * Sigmoid(x). The ort flavor's
BiasGelu / FastGelu are an overlay (ort_fusions.py).
"""

from __future__ import annotations

from .lowering import arg, lowers, out_dtype


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
    dt = out_dtype(node)
    x, bias = arg(ctx, node, 0, dt), arg(ctx, node, 1, dt)
    return [activation(ctx, node.attrs.activation, ctx.emit("Add", [x, bias]))]

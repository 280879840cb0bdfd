"""Lowerings of the norms: `layer_norm`, `rms_norm` and `add_norm` (a residual add fused into either;
see t2c/ir/opdefs/nn.py and add_norm.py).

LayerNormalization and RMSNormalization-23 over the trailing normalized_shape
(axis = -len(normalized_shape), the same epsilon; stash_type float, so halves
are normalised in float32 as torch does). `add_norm` is Add, then the norm; the
Add's output is its second result. The ort flavor's fused Skip*Normalization
kernels are an overlay (ort_fusions.py).
"""

from __future__ import annotations

import torch

from ...ir.core import DType, Node
from .lowering import arg, lowers, out_dtype


def norm_eps(node: Node, dt: DType) -> float:
    """The node's epsilon; an rms_norm without one uses torch's default, the dtype's machine epsilon."""
    eps = node.attrs.eps
    return float(eps if eps is not None else torch.finfo(dt.torch).eps)


def norm_scale(ctx, node: Node, i: int, dt: DType) -> str:
    """Operand i (the weight), or ones of normalized_shape when the op has none (ONNX needs a scale)."""
    if len(node.inputs) > i:
        return arg(ctx, node, i)
    shape = list(node.attrs.normalized_shape)
    return ctx.const(torch.ones(shape).tolist(), dt, shape)


def _normalize(ctx, kind: str, x: str, scale: str, bias: list[str], node: Node, dt: DType) -> str:
    axis = -len(node.attrs.normalized_shape)
    if kind == "rms":
        return ctx.emit("RMSNormalization", [x, scale], axis=axis, epsilon=norm_eps(node, dt))
    return ctx.emit("LayerNormalization", [x, scale] + bias, axis=axis, epsilon=norm_eps(node, dt))


@lowers("layer_norm", "rms_norm")
def _norm(ctx, node):
    dt = out_dtype(node)
    x, scale = arg(ctx, node, 0), norm_scale(ctx, node, 1, dt)
    bias = [arg(ctx, node, 2)] if len(node.inputs) > 2 else []
    return [_normalize(ctx, "rms" if node.op == "rms_norm" else "layer", x, scale, bias, node, dt)]


def add_norm_operands(ctx, node) -> tuple[str, str, str, list[str]]:
    """x, residual (in the result dtype), the scale and the optional bias of an `add_norm`."""
    dt = out_dtype(node)
    x, residual = arg(ctx, node, 0, dt), arg(ctx, node, 1, dt)
    scale = norm_scale(ctx, node, 2, dt)
    bias = [arg(ctx, node, 3)] if len(node.inputs) > 3 else []
    return x, residual, scale, bias


@lowers("add_norm")
def _add_norm(ctx, node):
    x, residual, scale, bias = add_norm_operands(ctx, node)
    total = ctx.emit("Add", [x, residual])
    return [_normalize(ctx, node.attrs.kind, total, scale, bias, node, out_dtype(node)), total]

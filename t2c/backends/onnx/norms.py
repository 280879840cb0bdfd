"""Lowering of `add_norm` (a residual add fused into a LayerNorm/RMSNorm; see `t2c/ir/opdefs/add_norm.py`).

`layer_norm` and `rms_norm` keep their lowerings in `lowering.py` (LayerNormalization
and RMSNormalization-23, in every flavor).

standard: Add, then LayerNormalization or RMSNormalization-23 (axis = -len(normalized_shape),
the same epsilon; stash_type float, so halves are normalised in float32 as torch does).
The Add's output is the op's second result.

ort: one com.microsoft node, SkipLayerNormalization (kind "layer") or
SkipSimplifiedLayerNormalization (kind "rms"), with inputs (input, skip, gamma, beta?)
and outputs (output, mean, inv_std_var, input_skip_bias_sum); the 4th output is the
sum. Their `bias` input is an extra term added into the sum, which `add_norm` does not
have, so it is left out. ONNX Runtime's kernels normalise over the last axis of a 2-D
or 3-D input whose skip has the same shape, with one gamma of the hidden size; any
other case lowers as in standard.

The ort flavor uses them for float16 only. In float32, ONNX Runtime's CPU kernels are
slower than Add + LayerNormalization / RMSNormalization (`benchmarks/ort_kernels.py`:
SkipLayerNormalization 4.3-5.1x, SkipSimplifiedLayerNormalization 1.7-1.9x the time at
[1, 512, 384..512]), so float32 lowers as in standard. Half-precision models are the
GPU case the fused kernels exist for (not measured here: no GPU).
"""

from __future__ import annotations

import torch
from onnx import helper

from ...ir.core import DType, Node
from .lowering import arg, lowers, out_dtype

MS_DOMAIN = "com.microsoft"
_SKIP_OPS = {"layer": "SkipLayerNormalization", "rms": "SkipSimplifiedLayerNormalization"}


def _eps(node: Node, dt: DType) -> float:
    eps = node.attrs.eps
    return float(eps if eps is not None else torch.finfo(dt.torch).eps)  # rms: torch's default


def _scale(ctx, node: Node, dt: DType) -> str:
    """The weight, or ones of normalized_shape when the op has none (ONNX needs a scale)."""
    if len(node.inputs) > 2:
        return arg(ctx, node, 2)
    shape = list(node.attrs.normalized_shape)
    return ctx.const(torch.ones(shape).tolist(), dt, shape)


def _ort_skip_ok(node: Node) -> bool:
    """Whether ONNX Runtime's Skip(Simplified)LayerNormalization computes exactly add_norm."""
    x, r = node.inputs[0].type, node.inputs[1].type
    dt = out_dtype(node)
    return (
        len(node.attrs.normalized_shape) == 1
        and x == r == node.outputs[0].type
        and x.rank in (2, 3)
        and dt == DType.F16  # float32: the standard ops are faster on ORT's CPU provider (see above)
        and all(v.type.dtype == dt for v in node.inputs[2:])
    )


@lowers("add_norm")
def _add_norm(ctx, node):
    a, dt = node.attrs, out_dtype(node)
    eps = _eps(node, dt)
    x, residual = arg(ctx, node, 0, dt), arg(ctx, node, 1, dt)
    scale = _scale(ctx, node, dt)
    bias = [arg(ctx, node, 3)] if len(node.inputs) > 3 else []
    if ctx.flavor == "ort" and _ort_skip_ok(node):
        op = _SKIP_OPS[a.kind]
        normed, total = ctx.fresh(op.lower()), ctx.fresh(f"{op.lower()}_sum")
        # mean and inv_std_var are left unnamed: they are training outputs.
        ctx.nodes.append(helper.make_node(
            op, [x, residual, scale] + bias, [normed, "", "", total],
            name=ctx.fresh(f"{ctx.current_op}/{op}"), domain=MS_DOMAIN, epsilon=eps,
        ))
        return [normed, total]
    total = ctx.emit("Add", [x, residual])
    axis = -len(a.normalized_shape)
    if a.kind == "rms":
        return [ctx.emit("RMSNormalization", [total, scale], axis=axis, epsilon=eps), total]
    return [ctx.emit("LayerNormalization", [total, scale] + bias, axis=axis, epsilon=eps), total]

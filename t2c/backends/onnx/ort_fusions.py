"""The ort flavor's fused norm and activation kernels (com.microsoft), an overlay on norms.py and activations.py.

`add_norm` -> SkipLayerNormalization (kind "layer") or SkipSimplifiedLayerNormalization
(kind "rms"), with inputs (input, skip, gamma, beta?) and outputs (output, mean,
inv_std_var, input_skip_bias_sum); the 4th output is the sum. Their `bias` input is an
extra term added into the sum, which `add_norm` does not have, so it is left out.
ONNX Runtime's kernels normalise over the last axis of a 2-D or 3-D input whose skip
has the same shape, with one gamma of the hidden size. Used for float16 only: in
float32, ONNX Runtime's CPU kernels are slower than Add + LayerNormalization /
RMSNormalization (`benchmarks/ort_kernels.py`: SkipLayerNormalization 4.3-5.1x,
SkipSimplifiedLayerNormalization 1.7-1.9x the time at [1, 512, 384..512]).
Half-precision models are the GPU case the fused kernels exist for.

`bias_act` with GELU -> BiasGelu(x, bias) for the erf form, FastGelu(x, bias) for
the tanh form (ONNX Runtime's 0.5 * x * (1 + tanh(0.7978845608 * x + 0.0356774081 *
x^3)) over x + bias). Their CPU kernels take float32 only.

Every other case returns None: the standard lowering takes it.
"""

from __future__ import annotations

from ...ir.core import DType, Node
from .flavors import MS_DOMAIN, overlay
from .lowering import arg, out_dtype
from .norms import add_norm_operands, norm_eps

_SKIP_OPS = {"layer": "SkipLayerNormalization", "rms": "SkipSimplifiedLayerNormalization"}
_BIAS_GELU = {"gelu": "BiasGelu", "gelu_tanh": "FastGelu"}


def _skip_norm_exact(node: Node) -> bool:
    """Whether ONNX Runtime's Skip(Simplified)LayerNormalization computes exactly this add_norm (and is worth it)."""
    x, r = node.inputs[0].type, node.inputs[1].type
    dt = out_dtype(node)
    return (
        len(node.attrs.normalized_shape) == 1
        and x == r == node.outputs[0].type
        and x.rank in (2, 3)
        and dt == DType.F16  # float32: the standard ops are faster on ORT's CPU provider (see above)
        and all(v.type.dtype == dt for v in node.inputs[2:])
    )


@overlay("ort", "add_norm")
def _skip_norm(ctx, node):
    if not _skip_norm_exact(node):
        return None
    x, residual, scale, bias = add_norm_operands(ctx, node)
    # mean and inv_std_var are left unnamed: they are training outputs.
    normed, _, _, total = ctx.emit(
        _SKIP_OPS[node.attrs.kind], [x, residual, scale] + bias, 4, unused=(1, 2),
        domain=MS_DOMAIN, epsilon=norm_eps(node, out_dtype(node)),
    )
    return [normed, total]


@overlay("ort", "bias_act")
def _bias_gelu(ctx, node):
    dt, act = out_dtype(node), node.attrs.activation
    if act not in _BIAS_GELU or dt != DType.F32:
        return None
    return [ctx.emit(_BIAS_GELU[act], [arg(ctx, node, 0, dt), arg(ctx, node, 1, dt)], domain=MS_DOMAIN)]

"""Lowering of the int8 ops `qlinear` and `qembedding` (t2c/ir/opdefs/quant.py), standard flavor.

Weights are stored as int8 initializers (4x smaller files); scales as float32.

weight_only: the float weight is `Cast(int8 -> float) * scale` of initializers,
then MatMul. Runtimes fold that constant subgraph once at load (ONNX Runtime
does: the MatMul then runs at fp32 speed, on exactly the reference's
dequantized weight, so it matches fp32 matmul to the last bit). We do not use
DequantizeLinear: ONNX Runtime's optimizer turns DequantizeLinear + MatMul into
MatMulNBits with accuracy level 4, which quantizes the activations as well
(max error 0.03 on a 512x512 product) and ran slower (1.08 vs 0.73 ms).

w8a8: the activations are quantized per token, written out with ai.onnx ops
exactly as the reference does (Abs, ReduceMax, Max(1e-30), Div 127, Div, Round
half to even, Clip [-127, 127]); the integers are shifted to uint8 (+128,
a_zero_point 128) because ONNX Runtime's u8s8 MatMulInteger is 48x faster than
s8s8 on its CPU provider, with the same integer results. Then
`(Cast(acc) * w_scale) * x_scale`: that order is what ONNX Runtime's fused
MatMulIntegerToFloat computes, so the result is bit-identical to the reference
whether or not the runtime fuses. Several qlinears of one input (q, k, v)
quantize it once. DynamicQuantizeLinear is not used: its scale is per tensor and
asymmetric, not the per-token symmetric scale of the reference.

qembedding: Gather of int8 rows, Cast, times the Gathered row scales.

The ort flavor overlays w8a8 qlinear with a shorter form of the same arithmetic
(`_qlinear_ort`): per-token QuantizeLinear (blocked, one block per token: x / sx
divided, rounded half to even, +128, saturated to uint8, which the +-127 clip
never reaches) and com.microsoft.MatMulIntegerToFloat with a_scale 1 and the
per-channel weight scales as b_scale: its output stage computes float32(acc) *
(1 * w_scale), the reference's first product, fused into the integer GEMM;
then `* sx` and the bias as in standard. Bit-identical to the reference
(tests/backends/test_onnx_quant.py), and 0.91x (Llama-style) / 0.83x (BERT-style)
the time of the standard lowering on cpu_latency.py's base models at hidden 256,
one thread (benchmarks/int8.py --lowerings, int8-vm-20261202-133626.json).
ORT does not fuse MatMulInteger + Cast + Mul into MatMulIntegerToFloat itself
here (its fusion wants the scales as one scalar product), and its per-column
b_scale is what takes the per-channel scales.

The ort flavor has no other overlay for these ops (nor for qexperts), measured on
ONNX Runtime 1.31's CPU provider (benchmarks/int8.py --kernels, one thread):
MatMulNBits bits=8 matches the weight-only reference only at accuracy_level 0,
where it is slower than the folded fp32 MatMul (1.2 vs 0.9 ms at 256x512x512),
and level 4 quantizes the activations per block (0.6% error);
DynamicQuantizeMatMul quantizes the activations per tensor, asymmetric
(another function: 1.1% from the per-token reference); QMoE with 8-bit weights
is exact for weight-only experts but took 1.9x the time of the sparse lowering
in qexperts.py.
"""

from __future__ import annotations

import torch

from ...ir.core import DType, Node
from .context import ONNX_DTYPE
from .flavors import MS_DOMAIN, overlay
from .lowering import arg, lowers, out_dtype, rank


def derived(ctx, v, suffix: str, fn) -> str:
    """An initializer `<param>.<suffix>` holding fn(param data), made once; v must be a param with data."""
    name = f"{v.name}.{suffix}"
    if name not in ctx.initializers:
        ctx.add_initializer(name, fn(ctx.param_tensor(v)).contiguous())
    return name


def weight_in_out(ctx, node: Node, i: int) -> str:
    """Operand i (an int8 weight [..., out, in]) as [..., in, out] for MatMul: pre-transposed `<w>.T` for params."""
    v = node.inputs[i]
    r = v.type.rank
    perm = list(range(r - 2)) + [r - 1, r - 2]
    if ctx.param_tensor(v) is None:
        return ctx.emit("Transpose", [ctx.name(v)], perm=perm)
    return derived(ctx, v, "T", lambda t: t.permute(perm))


def scale_in_out(ctx, node: Node, i: int, group: int) -> str:
    """Scale operand i laid out to broadcast against the [..., in, out] weight.

    Per channel: [..., out] -> [..., 1, out]. Per group: [..., out, in/G] -> [..., in/G, 1, out]
    (against the weight reshaped to [..., in/G, G, out]).
    """
    v = node.inputs[i]
    r = v.type.rank

    def per_channel(t: torch.Tensor) -> torch.Tensor:
        return t.unsqueeze(-2)

    def per_group(t: torch.Tensor) -> torch.Tensor:
        return t.permute(*range(r - 2), r - 1, r - 2).unsqueeze(-2)

    if ctx.param_tensor(v) is not None:
        return derived(ctx, v, "io", per_group if group else per_channel)
    s = ctx.name(v)
    if group:
        s = ctx.emit("Transpose", [s], perm=list(range(r - 2)) + [r - 1, r - 2])
    return ctx.emit("Unsqueeze", [s, ctx.ints([-2 if not group else r - 1])])


def dequantized(ctx, w_io: str, s_io: str, lead: list, in_dim: int, out_dim: int, group: int, dt: DType) -> str:
    """float(w) * scale as [..., in, out] from the laid-out weight and scale: constants the runtime folds at load."""
    w = ctx.emit("Cast", [w_io], to=ONNX_DTYPE[DType.F32])
    if not group:
        return ctx.cast(ctx.emit("Mul", [w, s_io]), DType.F32, dt)
    blocks = ctx.emit("Reshape", [w, ctx.shape(lead + [in_dim // group, group, out_dim])])
    full = ctx.emit("Reshape", [ctx.emit("Mul", [blocks, s_io]), ctx.shape(lead + [in_dim, out_dim])])
    return ctx.cast(full, DType.F32, dt)


def quantized_tokens(ctx, x: str, may_be_empty: bool = False) -> tuple[str, str]:
    """(xq uint8 = round(x / sx) clipped to +-127, plus 128; sx [..., 1]) for float32 x; once per tensor.

    `may_be_empty`: x may have no rows (an expert no token chose). ONNX Runtime 1.31's
    ReduceMax then keeps the reduced axis ([0, K] instead of [0, 1]); a Reshape restores it.
    """
    key = ("quantized_tokens", x)
    if key in ctx.shared:
        return ctx.shared[key]
    f32 = DType.F32
    amax = ctx.emit("ReduceMax", [ctx.emit("Abs", [x]), ctx.ints([-1])], keepdims=1)
    if may_be_empty:
        rows = ctx.emit("Shape", [x], end=-1)
        amax = ctx.emit("Reshape", [amax, ctx.emit("Concat", [rows, ctx.ints([1])], axis=0)], allowzero=1)
    sx = ctx.emit("Div", [ctx.emit("Max", [amax, ctx.const(1e-30, f32)]), ctx.const(127.0, f32)])
    q = ctx.emit("Clip", [ctx.emit("Round", [ctx.emit("Div", [x, sx])]), ctx.const(-127.0, f32), ctx.const(127.0, f32)])
    xq = ctx.emit("Cast", [ctx.emit("Add", [q, ctx.const(128.0, f32)])], to=ONNX_DTYPE[DType.U8])
    ctx.shared[key] = (xq, sx)
    return xq, sx


def int8_matmul(ctx, x: str, w_io: str, scale_io: str, may_be_empty: bool = False) -> str:
    """(float32(xq @ w) * scale) * sx for float32 x [..., K], int8 w [..., K, N], scale broadcasting to [..., N]."""
    xq, sx = quantized_tokens(ctx, x, may_be_empty)
    acc = ctx.emit("MatMulInteger", [xq, w_io, ctx.const(128, DType.U8)])
    return ctx.emit("Mul", [ctx.emit("Mul", [ctx.emit("Cast", [acc], to=ONNX_DTYPE[DType.F32]), scale_io]), sx])


@lowers("qlinear")
def _qlinear(ctx, node):
    a, dt = node.attrs, out_dtype(node)
    n_out, k_in = node.inputs[1].type.shape
    x = arg(ctx, node, 0)
    if a.mode == "w8a8":
        y = int8_matmul(ctx, x, weight_in_out(ctx, node, 1), scale_in_out(ctx, node, 2, 0))
        return [ctx.emit("Add", [y, arg(ctx, node, 3)]) if len(node.inputs) > 3 else y]
    w = dequantized(ctx, weight_in_out(ctx, node, 1), scale_in_out(ctx, node, 2, a.group), [], k_in, n_out, a.group, dt)
    if len(node.inputs) > 3 and rank(node) == 2:
        return [ctx.emit("Gemm", [x, w, arg(ctx, node, 3)])]
    y = ctx.emit("MatMul", [x, w])
    return [ctx.emit("Add", [y, arg(ctx, node, 3)]) if len(node.inputs) > 3 else y]


def quantized_tokens_ql(ctx, x: str, k: int) -> tuple[str, str]:
    """quantized_tokens' (xq, sx) for float32 x [..., k] with QuantizeLinear: one block of k per token.

    The same scale ops; then QuantizeLinear(x, sx, 128) computes saturate(round_half_even(x / sx) + 128)
    as uint8 (ONNX Runtime's MLAS divides, as the reference does). |x / sx| <= 127 rounds to at most
    127, so the saturation stands in for the reference's Clip. Once per tensor.
    """
    key = ("quantized_tokens_ql", x)
    if key in ctx.shared:
        return ctx.shared[key]
    f32 = DType.F32
    amax = ctx.emit("ReduceMax", [ctx.emit("Abs", [x]), ctx.ints([-1])], keepdims=1)
    sx = ctx.emit("Div", [ctx.emit("Max", [amax, ctx.const(1e-30, f32)]), ctx.const(127.0, f32)])
    zp = ctx.emit("ConstantOfShape", [ctx.emit("Shape", [sx])], value=_u8_tensor(128))
    xq = ctx.emit("QuantizeLinear", [x, sx, zp], axis=-1, block_size=int(k))
    ctx.shared[key] = (xq, sx)
    return xq, sx


def _u8_tensor(v: int):
    from onnx import TensorProto, helper

    return helper.make_tensor("value", TensorProto.UINT8, [1], [v])


@overlay("ort", "qlinear")
def _qlinear_ort(ctx, node):
    """w8a8 with int8 weights and scales held as params: QuantizeLinear, MatMulIntegerToFloat, * sx (+ bias)."""
    a = node.attrs
    w, s = node.inputs[1], node.inputs[2]
    k_in = w.type.shape[1]
    if a.mode != "w8a8" or not isinstance(k_in, int) or ctx.param_tensor(w) is None or ctx.param_tensor(s) is None:
        return None
    xq, sx = quantized_tokens_ql(ctx, arg(ctx, node, 0), k_in)
    y = ctx.emit("MatMulIntegerToFloat", [xq, weight_in_out(ctx, node, 1), ctx.const([1.0], DType.F32, (1,)), ctx.name(s), ctx.const(128, DType.U8)],
                 domain=MS_DOMAIN)
    y = ctx.emit("Mul", [y, sx])
    return [ctx.emit("Add", [y, arg(ctx, node, 3)]) if len(node.inputs) > 3 else y]


@lowers("qembedding")
def _qembedding(ctx, node):
    ids = arg(ctx, node, 2, DType.I64)
    rows = ctx.emit("Cast", [ctx.emit("Gather", [arg(ctx, node, 0), ids], axis=0)], to=ONNX_DTYPE[DType.F32])
    s = node.inputs[1]
    col = derived(ctx, s, "col", lambda t: t[:, None]) if ctx.param_tensor(s) is not None else ctx.emit("Unsqueeze", [ctx.name(s), ctx.ints([1])])
    return [ctx.emit("Mul", [rows, ctx.emit("Gather", [col, ids], axis=0)])]

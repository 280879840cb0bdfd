"""INT8 GEMM for the IR op `qlinear` (t2c/ir/opdefs/quant.py), weight-only and W8A8, in Triton.

Contract: `qlinear(x, weight, scale, bias?, attrs=QLinearAttrs)` takes the IR op's operands in its
order and returns what the op's reference returns: y [..., N] in x's dtype, contiguous.

    weight_only:  y = x @ dequantize(weight, scale, group)^T + bias
    w8a8:         sx  = max(amax(|x|, last axis), 1e-30) / 127            per token, float32
                  xq  = clamp(round_half_even(x / sx), -127, 127)         int8
                  acc = xq @ weight^T                                     exact int32
                  y   = (float32(acc) * scale) * sx + bias                in this order

Layouts: x [..., K] (leading dims flattened to M rows, made contiguous), weight int8 [N, K]
(nn.Linear's layout), scale float32 [N] (per output channel) or [N, K/group] (per group of
`group` consecutive input features, weight_only only), bias [N] in x's dtype. Any M, N, K:
tiles are masked at the edges.

Kernels. W8A8 runs two (`quantize_tokens` and `w8a8_gemm` launch each alone):
`_quantize_rows_kernel` (one program per token, two passes over the row: amax, then x / sx
rounded to int8; writes xq int8 [M, K] and sx float32 [M]) and the GEMM, `_qlinear_kernel`,
whose K loop feeds int8 tiles to tl.dot with an int32 accumulator and whose epilogue applies
the scales in the reference's order, then the bias. Every float step is one correctly rounded
IEEE operation, so the result is bit-identical to the reference in float32 (the tests check
torch.equal, and check the sm_90 PTX for the steps below): divisions are tl.math.div_rn
(Triton's `/` is approximate on NVIDIA GPUs); round half to even is (v + 1.5 * 2^23) - 1.5 * 2^23,
exact for |v| < 2^22 (|x / sx| <= 127 here), the same two adds under the interpreter (which has
no libdevice rint) and on a GPU; float32(acc) is a round-to-nearest conversion like the
reference's int -> float32; and the kernels are launched with LAUNCH_OPTIONS
(enable_fp_fusion=False) so that `(acc * scale) * sx + bias` is never contracted into an FMA
(one rounding fewer than the reference). acc is exact in int32 while 127 * 127 * K < 2^31:
K <= MAX_W8A8_K.

Weight-only runs the GEMM alone: the int8 tile is converted to x's dtype in the K loop (exact:
|w| <= 127 fits fp16's and bf16's mantissas) and multiplied on the tensor cores with float32
accumulation; the per-channel scale multiplies the float32 accumulator in the epilogue
(one rounding per output, fewer than the reference, which rounds every dequantised weight to
x's dtype). Per group, the weight is dequantised in the loop as the reference does it,
float32(w) * scale[n, k // group] rounded to x's dtype. float32 x: IEEE dots (no TF32; CUDA-core
FMAs, correct but far slower than fp16/bf16). Output: one rounding of the float32 result to x's
dtype (bfloat16 with integer ops, as t2c/kernels/norm.py does: the interpreter truncates
float32 -> bfloat16 casts).

Epilogue hook: the constexpr ACT applies an activation after the bias ("none", "relu", "silu"),
the place a future fuse-activation rewrite of `qlinear` + activation would use; the IR op
itself always runs with "none".

Tiles: block sizes by M, the token count: M <= 16 (decode) gets BLOCK_M = 16 and long K
blocks, larger M the usual square tiles with grouped program order for L2 reuse. On a GPU
each class is autotuned per (N, K, a power-of-two bucket of M, mode, flags, dtypes); under
TRITON_INTERPRET=1 one small config runs (16 x 32 x 32, which also exercises the edge masks on
small test shapes), with fp16/bf16 dot operands widened to float32 (the interpreter cannot
multiply bf16; every product of a half and an int8 is exact in float32, as on the tensor cores).

Dtypes: x float32, float16, bfloat16 for weight_only; float32 for w8a8 (the op's verifier
requires it). Refused with NotImplementedError: other x dtypes (float64), w8a8 on
non-float32 x, w8a8 with a group, w8a8 with K > MAX_W8A8_K. Shape mismatches raise
ValueError. CPU tensors run only under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl
import triton.testing

from ..ir.opdefs.quant import MODES, QMAX, TINY, QLinearAttrs
from .norm import _round_to

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ACTIVATIONS = ("none", "relu", "silu")
MAX_W8A8_K = (2**31 - 1) // (QMAX * QMAX)  # 133143: the largest K whose int32 sum cannot overflow
SMALL_M = 16  # decode: at most this many tokens take the small-M configs
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
# No FMA contraction: `(acc * scale) * sx + bias` rounds after every operation, as the reference does.
LAUNCH_OPTIONS = {"enable_fp_fusion": False}
ROUND_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2^23: v + it has an ulp of 1, so (v + it) - it is v rounded half to even

# The interpreter runs every config it is given: one small tile there.
INTERPRETER_CONFIG = [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}, num_warps=4, num_stages=1)]


def _cfg(bm, bn, bk, warps, stages, group_m=8):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m},
                         num_warps=warps, num_stages=stages)


# Decode: few tokens, the weight read once; narrow N tiles give enough programs to use every SM
# (N = 4096 in tiles of 32 is 128 programs), long K tiles keep each load wide. Few configs: each
# is compiled when its kind of key is first tuned (benchmarks/gpu/int8_gemm.py has 50 s in all).
GPU_SMALL_M_CONFIGS = [_cfg(16, 32, 256, 4, 4), _cfg(16, 64, 256, 4, 4), _cfg(16, 32, 512, 4, 3)]
# Prefill: compute bound. int8 x int8 takes BLOCK_K 128 (the bytes of bf16's 64); float
# activations take BLOCK_K 64 (the int8 weight is widened in registers).
GPU_LARGE_M_CONFIGS = [
    _cfg(128, 256, 128, 8, 3), _cfg(128, 128, 128, 8, 4),  # int8 activations
    _cfg(128, 256, 64, 8, 3), _cfg(128, 128, 64, 4, 4),  # float activations
]


def _tune_bench(kernel_call, quantiles):
    """The autotuner's timer, shorter than its default (25 ms warm-up, 100 ms): a few configs, clear winners."""
    return triton.testing.do_bench(kernel_call, warmup=10, rep=40, quantiles=quantiles)


def _per_group_stages(configs, args):
    """Per group, the [BLOCK_K, BLOCK_N] float32 scale tile is pipelined too: two stages keep it in shared memory."""
    if not args["PER_GROUP"]:
        return configs
    return [triton.Config(c.kwargs, num_warps=c.num_warps, num_stages=min(c.num_stages, 2)) for c in configs]


def _prune_large(configs, named_args, **kwargs):
    """int8 tiles for W8A8, float tiles otherwise, and no 128 x 256 tile for float32 x (shared memory)."""
    args = {**named_args, **kwargs}
    if args["W8A8"]:
        return [c for c in configs if c.kwargs["BLOCK_K"] == 128]
    fp32 = args["X"].dtype == torch.float32
    kept = [c for c in configs if c.kwargs["BLOCK_K"] == 64 and not (fp32 and c.kwargs["BLOCK_N"] == 256)]
    return _per_group_stages(kept, args)


def _prune_small(configs, named_args, **kwargs):
    """float32 x: no 512-long K tile (16 x 512 x 4 bytes a stage)."""
    args = {**named_args, **kwargs}
    if args["X"].dtype == torch.float32 and not args["W8A8"]:
        configs = [c for c in configs if c.kwargs["BLOCK_K"] <= 256]
    return _per_group_stages(configs, args)


@triton.jit
def _activation(y, ACT: tl.constexpr):
    """The epilogue's activation on the float32 result (after the bias)."""
    if ACT == "relu":
        y = tl.maximum(y, 0.0)
    elif ACT == "silu":
        y = y / (1.0 + tl.exp(-y))
    return y


@triton.jit
def _quantize_rows_kernel(X, XQ, SX, K, BLOCK_K: tl.constexpr):
    """Row r of x [M, K] float32 -> xq int8 [M, K] and sx[r] = max(amax|x_r|, 1e-30) / 127."""
    row = tl.program_id(0).to(tl.int64) * K
    offs = tl.arange(0, BLOCK_K)
    amax = tl.zeros([BLOCK_K], dtype=tl.float32)
    for start in range(0, K, BLOCK_K):
        cols = start + offs
        v = tl.load(X + row + cols, mask=cols < K, other=0.0)
        amax = tl.maximum(amax, tl.abs(v))
    sx = tl.math.div_rn(tl.maximum(tl.max(amax, axis=0), 1e-30), 127.0)
    tl.store(SX + tl.program_id(0), sx)
    for start in range(0, K, BLOCK_K):
        cols = start + offs
        mask = cols < K
        v = tl.math.div_rn(tl.load(X + row + cols, mask=mask, other=0.0), sx)
        r = (v + ROUND_MAGIC) - ROUND_MAGIC  # round half to even: two exact-rounding IEEE adds
        r = tl.minimum(tl.maximum(r, -127.0), 127.0)
        tl.store(XQ + row + cols, r.to(tl.int8), mask=mask)


# M and its bucket are not specialised on: decode's M = 1 and M = 16 share one compiled kernel per config.
@triton.jit(do_not_specialize=["M", "M_KEY"])
def _qlinear_kernel(
    X, W, S, B, SX, Y,  # x [M, K] (float, or int8 xq for W8A8), weight i8 [N, K], scale, bias [N], sx [M], y [M, N]
    M, N, K, GROUP, NUM_GROUPS, M_KEY,  # M_KEY: the autotuning bucket of M (unused in the body)
    W8A8: tl.constexpr, PER_GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Grouped program order: GROUP_M row tiles share each column tile of the weight in L2.
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    in_group = GROUP_M * tiles_n
    first_m = (pid // in_group) * GROUP_M
    group_m = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % group_m
    pid_n = (pid % in_group) // group_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    # int64: M * K and N * K pass 2^31 elements at long prefills and wide layers
    x_ptrs = X + offs_m.to(tl.int64)[:, None] * K + offs_k[None, :]
    w_ptrs = W + offs_n.to(tl.int64)[None, :] * K + offs_k[:, None]  # the [BLOCK_K, BLOCK_N] tile of weight^T

    if W8A8:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        mask_k = k0 + offs_k < K
        a = tl.load(x_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0)
        b = tl.load(w_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0)
        if W8A8:
            acc = tl.dot(a, b, acc)  # int8 x int8 -> int32, exact
        else:
            if PER_GROUP:
                s = tl.load(S + offs_n.to(tl.int64)[None, :] * NUM_GROUPS + (k0 + offs_k[:, None]) // GROUP,
                            mask=mask_k[:, None] & mask_n[None, :], other=0.0)
                b = _round_to(b.to(tl.float32) * s, X.dtype.element_ty)  # the reference's dequantised weight
            elif UPCAST:
                b = b.to(tl.float32)  # the interpreter mangles int8 -> bfloat16; float32 is exact too
            else:
                b = b.to(X.dtype.element_ty)  # exact: |w| <= 127
            if UPCAST:
                acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K

    if W8A8:
        y = acc.to(tl.float32)  # round to nearest, as the reference's int -> float32
        y = y * tl.load(S + offs_n, mask=mask_n, other=0.0)[None, :]
        y = y * tl.load(SX + offs_m, mask=mask_m, other=0.0)[:, None]
    elif PER_GROUP:
        y = acc
    else:
        y = acc * tl.load(S + offs_n, mask=mask_n, other=0.0)[None, :]
    if HAS_BIAS:
        y = y + tl.load(B + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    y = _activation(y, ACT)
    y_ptrs = Y + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    tl.store(y_ptrs, _round_to(y, Y.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


_KEY = ["N", "K", "M_KEY", "W8A8", "PER_GROUP", "HAS_BIAS", "ACT"]
if INTERPRETING:
    _gemm_small = _gemm_large = triton.autotune(configs=INTERPRETER_CONFIG, key=_KEY)(_qlinear_kernel)
else:
    _gemm_small = triton.autotune(configs=GPU_SMALL_M_CONFIGS, key=_KEY, do_bench=_tune_bench,
                                  prune_configs_by={"early_config_prune": _prune_small})(_qlinear_kernel)
    _gemm_large = triton.autotune(configs=GPU_LARGE_M_CONFIGS, key=_KEY, do_bench=_tune_bench,
                                  prune_configs_by={"early_config_prune": _prune_large})(_qlinear_kernel)


def supports(attrs) -> bool:
    """What the Triton backend may hand this module: both modes, per channel, and per group for weight_only."""
    return attrs.mode in MODES and attrs.group >= 0 and (attrs.mode == "weight_only" or attrs.group == 0)


def _check_device(t: torch.Tensor) -> None:
    if not t.is_cuda and not INTERPRETING:
        raise RuntimeError("t2c.kernels.int8_gemm needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")


def quantize_tokens(x: torch.Tensor, block_k: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(xq int8 [M, K], sx float32 [M]) of x float32 [M, K]: the reference's quantize_tokens, bit for bit."""
    if x.dtype != torch.float32 or x.dim() != 2:
        raise NotImplementedError(f"quantize_tokens: x must be float32 [M, K], got {x.dtype} {tuple(x.shape)}")
    _check_device(x)
    x = x.contiguous()
    m, k = x.shape
    xq = torch.empty((m, k), dtype=torch.int8, device=x.device)
    sx = torch.empty((m,), dtype=torch.float32, device=x.device)
    if m and k:
        block = block_k or min(triton.next_power_of_2(k), 4096)
        _quantize_rows_kernel[(m,)](x, xq, sx, k, BLOCK_K=block, num_warps=4 if block <= 1024 else 8,
                                    **LAUNCH_OPTIONS)
    elif m:
        sx.fill_(TINY / QMAX)  # no features: the row's amax is the floor
    return xq, sx


def _launch_gemm(a, weight, scale, bias, sx, y, group: int, w8a8: bool, activation: str) -> None:
    """y [M, N] = the GEMM of a [M, K] (float x, or int8 xq with sx [M] for W8A8) and weight [N, K]; all contiguous."""
    m, k = a.shape
    n = weight.shape[0]
    gemm = _gemm_small if m <= SMALL_M else _gemm_large

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    gemm[grid](
        a, weight, scale, bias, sx, y, m, n, k, max(group, 1), k // group if group else 1,
        min(triton.next_power_of_2(m), 8192),
        W8A8=w8a8, PER_GROUP=bool(group), HAS_BIAS=bias is not None, ACT=activation,
        DOT_PRECISION="ieee" if y.dtype == torch.float32 else "tf32",
        UPCAST=INTERPRETING and y.dtype != torch.float32,
        **LAUNCH_OPTIONS,
    )


def w8a8_gemm(xq: torch.Tensor, sx: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
              bias: Optional[torch.Tensor] = None, activation: str = "none") -> torch.Tensor:
    """The W8A8 GEMM alone on tokens already quantized (xq int8 [M, K], sx float32 [M], as quantize_tokens
    returns them): float32 [M, N] = (float32(xq @ weight^T) * scale) * sx + bias. Benchmarks time it alone."""
    m, k = xq.shape
    n = weight.shape[0]
    if xq.dtype != torch.int8 or weight.dtype != torch.int8 or weight.shape[1] != k or tuple(scale.shape) != (n,):
        raise ValueError("w8a8_gemm: xq int8 [M, K], weight int8 [N, K] and scale [N]")
    if k > MAX_W8A8_K or activation not in ACTIVATIONS:
        raise NotImplementedError(f"w8a8_gemm: K = {k} (at most {MAX_W8A8_K}), activation {activation!r}")
    _check_device(xq)
    y = torch.empty((m, n), dtype=torch.float32, device=xq.device)
    if m and n:
        _launch_gemm(xq.contiguous(), weight.contiguous(), scale.contiguous(),
                     None if bias is None else bias.contiguous(), sx.contiguous(), y, 0, True, activation)
    return y


def qlinear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor] = None,
            *, attrs: QLinearAttrs = QLinearAttrs(), activation: str = "none") -> torch.Tensor:
    """The IR op `qlinear` (see the module docstring); `activation` is the epilogue hook ("none" for the op)."""
    if not supports(attrs):
        raise NotImplementedError(f"qlinear: mode {attrs.mode!r} with group {attrs.group} is not supported")
    if activation not in ACTIVATIONS:
        raise NotImplementedError(f"qlinear: activation {activation!r} is not one of {ACTIVATIONS}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise NotImplementedError(f"qlinear: x of dtype {x.dtype} is not supported (float16, bfloat16, float32)")
    w8a8 = attrs.mode == "w8a8"
    if w8a8 and x.dtype != torch.float32:
        raise NotImplementedError(f"qlinear: w8a8 takes float32 x, got {x.dtype}")
    if weight.dtype != torch.int8 or weight.dim() != 2 or scale.dtype != torch.float32:
        raise ValueError(f"qlinear: weight must be int8 [N, K] and scale float32, got {weight.dtype} "
                         f"{tuple(weight.shape)} and {scale.dtype}")
    n, k = weight.shape
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"qlinear: x {tuple(x.shape)} does not match weight {tuple(weight.shape)}")
    group = attrs.group
    if group and k % group:
        raise ValueError(f"qlinear: in_features {k} is not a multiple of group {group}")
    want = (n, k // group) if group else (n,)
    if tuple(scale.shape) != want:
        raise ValueError(f"qlinear: scale must be {list(want)}, got {tuple(scale.shape)}")
    if bias is not None and (tuple(bias.shape) != (n,) or bias.dtype != x.dtype):
        raise ValueError(f"qlinear: bias must be [{n}] of x's dtype {x.dtype}, got {bias.dtype} {tuple(bias.shape)}")
    if w8a8 and k > MAX_W8A8_K:
        raise NotImplementedError(f"qlinear: w8a8 with K = {k} > {MAX_W8A8_K} could overflow the int32 accumulator")
    _check_device(x)

    lead = x.shape[:-1]
    x2 = x.reshape(-1, k).contiguous()
    m = x2.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return y.reshape(*lead, n)
    weight, scale = weight.contiguous(), scale.contiguous()
    bias = None if bias is None else bias.contiguous()
    if w8a8:
        a, sx = quantize_tokens(x2)
    else:
        a, sx = x2, None
    _launch_gemm(a, weight, scale, bias, sx, y, group, w8a8, activation)
    return y.reshape(*lead, n)

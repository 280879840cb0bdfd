"""LayerNorm, RMSNorm and residual-add + norm (`layer_norm`, `rms_norm`, `add_norm`) in Triton.

Contract: each launcher takes the IR op's operands in the IR's order and its attrs, and returns
what the op's reference (t2c/ir/opdefs/nn.py, add_norm.py) returns, so the Triton backend calls
`t2c.kernels.norm.<op>(*node_inputs, attrs=node.attrs)`:

    layer_norm(x, weight?, bias?, attrs=NormAttrs)          -> y       (F.layer_norm)
    rms_norm(x, weight?, attrs=RMSNormAttrs)                -> y       (F.rms_norm)
    add_norm(x, residual, weight?, bias?, attrs=AddNormAttrs) -> (y, s)  s = x + residual

Math, per row r of the N = prod(normalized_shape) trailing elements, all in float32:

    layer:  mean = sum(r) / N,  var = sum((r - mean)^2) / N   (biased, two passes: no
            cancellation when |mean| >> std),  y = (r - mean) * rsqrt(var + eps) * w + b
    rms:    y = r * rsqrt(sum(r^2) / N + eps) * w

then one rounding to the output dtype, as torch does (it upcasts halves to float32, multiplies
the weight in float32 and casts the result back). rms's eps None is torch's default, float32's
machine epsilon for float16/bfloat16/float32 inputs. add_norm's sum is computed in float32 and
rounded to its dtype (torch's result_type of x and residual) before the norm reads it, exactly
as the reference normalises the stored sum.

Layouts: any leading shape; inputs are made contiguous and viewed as [rows, N]; weight and bias
have shape normalized_shape. add_norm broadcasts x and residual as torch.add does (a broadcast
operand is materialised first). Outputs are contiguous, in the input's (the sum's) dtype.

Kernel: one program per row; the row is read in blocks of BLOCK_N (a power of two) with masked
loads, so any N works; a block of N or more holds the whole row and each pass reads it once
(later passes hit the cache). The three ops share one kernel: they differ only in constexpr
flags (IS_RMS, HAS_RESIDUAL, HAS_WEIGHT, HAS_BIAS), and Triton compiles one specialised kernel
per combination, so the loops are written once. add_norm writes the sum in its first pass and
recomputes x + residual in later passes rather than reading back its own stores.
On a GPU num_warps is autotuned (2-16) per row length and flags; the interpreter runs one config.

Dtypes: float16, bfloat16, float32 for every float tensor (weight and bias may differ from x);
an integer or bool add_norm operand is cast to the sum's dtype first, as torch.add does.
Limits (NotImplementedError): float64 and other float dtypes (the kernel accumulates in float32,
not the float64 torch would use).
"""

from __future__ import annotations

import math
import os
from typing import Optional

import torch
import triton
import triton.language as tl

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Largest block: 16K elements keeps a float32 block at 64 elements a thread with 8 warps;
# longer rows loop over blocks.
MAX_BLOCK_N = 16384

# The interpreter runs every config it benchmarks in Python: give it one.
_AUTOTUNE_CONFIGS = (
    [triton.Config({}, num_warps=4)]
    if os.environ.get("TRITON_INTERPRET") == "1"
    else [triton.Config({}, num_warps=w) for w in (2, 4, 8, 16)]
)


@triton.jit
def _round_to(v, dtype: tl.constexpr):
    """float32 -> dtype, rounding to nearest even.

    bfloat16 is rounded with integer ops on the float32 bits because the interpreter
    (TRITON_INTERPRET=1, the tests) truncates fp32 -> bf16 casts and mangles subnormals; on a
    GPU the bits equal the native cvt.rn.bf16.f32's."""
    if dtype == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # carries into the exponent, up to inf
        bits = tl.where(v != v, 0x7FC0, bits)  # NaN stays NaN (its low payload would round to inf)
        out = bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        out = v.to(dtype)
    return out


@triton.jit
def _load_row_block(X, R, S, row_start, cols, mask, HAS_RESIDUAL: tl.constexpr, STORE_SUM: tl.constexpr):
    """The normalised input of one block in float32: x, or x + residual rounded to the sum's dtype."""
    v = tl.load(X + row_start + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        v += tl.load(R + row_start + cols, mask=mask, other=0.0).to(tl.float32)
        v = _round_to(v, S.dtype.element_ty)  # the reference normalises the stored (rounded) sum
        if STORE_SUM:
            tl.store(S + row_start + cols, v, mask=mask)
        v = v.to(tl.float32)
    return v


# The flags are in the key: one tuning per specialised kernel, not one per row length.
@triton.autotune(configs=_AUTOTUNE_CONFIGS,
                 key=["N", "BLOCK_N", "IS_RMS", "HAS_RESIDUAL", "HAS_WEIGHT", "HAS_BIAS"])
@triton.jit
def _norm_rows_kernel(
    X, R, W, B, Y, S,  # x, residual, weight, bias, normed output, sum output ([rows, N], contiguous)
    N, eps,
    IS_RMS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # int64: rows * N passes 2^31 elements at long contexts
    row_start = tl.program_id(0).to(tl.int64) * N
    offsets = tl.arange(0, BLOCK_N)

    # Pass 1: the row total of r (layer) or r^2 (rms); add_norm stores its sum here, once.
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        cols = start + offsets
        mask = cols < N
        v = _load_row_block(X, R, S, row_start, cols, mask, HAS_RESIDUAL, True)
        if IS_RMS:
            acc += v * v
        else:
            acc += v

    if IS_RMS:
        mean = 0.0
        rstd = tl.math.rsqrt(tl.sum(acc, axis=0) / N + eps)
    else:
        mean = tl.sum(acc, axis=0) / N
        # Pass 2: the centred variance (masked lanes would add mean^2 each)
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        for start in range(0, N, BLOCK_N):
            cols = start + offsets
            mask = cols < N
            v = _load_row_block(X, R, S, row_start, cols, mask, HAS_RESIDUAL, False)
            d = tl.where(mask, v - mean, 0.0)
            acc += d * d
        rstd = tl.math.rsqrt(tl.sum(acc, axis=0) / N + eps)

    # Last pass: normalise, scale, shift, one rounding to the output dtype.
    for start in range(0, N, BLOCK_N):
        cols = start + offsets
        mask = cols < N
        v = _load_row_block(X, R, S, row_start, cols, mask, HAS_RESIDUAL, False)
        y = (v - mean) * rstd
        if HAS_WEIGHT:
            y *= tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            y += tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + row_start + cols, _round_to(y, Y.dtype.element_ty), mask=mask)


def _check_dtype(t: torch.Tensor, what: str) -> None:
    if t.dtype not in SUPPORTED_DTYPES:
        raise NotImplementedError(f"Triton norm kernels: {what} of dtype {t.dtype} is not supported "
                                  f"(float16, bfloat16, float32)")


def _row_length(x: torch.Tensor, normalized_shape: tuple[int, ...], op: str) -> int:
    shape = tuple(int(d) for d in normalized_shape)
    if not shape or x.dim() < len(shape) or tuple(x.shape[-len(shape):]) != shape:
        raise ValueError(f"{op}: normalized_shape {shape} does not match the trailing dims of {tuple(x.shape)}")
    return math.prod(shape)


def _param(p: Optional[torch.Tensor], normalized_shape, what: str, op: str) -> Optional[torch.Tensor]:
    """A weight or bias flattened to [N]; torch requires exactly normalized_shape."""
    if p is None:
        return None
    _check_dtype(p, what)
    if tuple(p.shape) != tuple(int(d) for d in normalized_shape):
        raise ValueError(f"{op}: {what} of shape {tuple(p.shape)} is not normalized_shape {tuple(normalized_shape)}")
    return p.contiguous().view(-1)


def _block_n(n: int, block_n: Optional[int]) -> int:
    if block_n is None:
        return min(triton.next_power_of_2(n), MAX_BLOCK_N)
    if block_n <= 0 or block_n & (block_n - 1):
        raise ValueError(f"block_n must be a power of two, got {block_n}")
    return block_n


def _launch(x, residual, weight, bias, y, total, n: int, eps: float, is_rms: bool, block_n: Optional[int]) -> None:
    """One program per row of the contiguous tensors viewed as [rows, n]."""
    if x.numel() == 0:
        return  # nothing to normalise; the outputs are empty
    rows = x.numel() // n
    _norm_rows_kernel[(rows,)](
        x, residual, weight, bias, y, total, n, float(eps),
        IS_RMS=is_rms, HAS_RESIDUAL=residual is not None,
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
        BLOCK_N=_block_n(n, block_n),
    )


def _rms_eps(eps: Optional[float]) -> float:
    # torch's default is the machine epsilon of the computation dtype: float32 for halves too
    return torch.finfo(torch.float32).eps if eps is None else eps


def layer_norm(x: torch.Tensor, weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
               *, attrs, block_n: Optional[int] = None) -> torch.Tensor:
    """F.layer_norm(x, attrs.normalized_shape, weight, bias, attrs.eps) over the trailing dims.

    `block_n` (a power of two) overrides the block the row is read in (tests and tuning)."""
    _check_dtype(x, "x")
    n = _row_length(x, attrs.normalized_shape, "layer_norm")
    w = _param(weight, attrs.normalized_shape, "weight", "layer_norm")
    b = _param(bias, attrs.normalized_shape, "bias", "layer_norm")
    x = x.contiguous()
    y = torch.empty_like(x)
    _launch(x, None, w, b, y, None, n, attrs.eps, False, block_n)
    return y


def rms_norm(x: torch.Tensor, weight: Optional[torch.Tensor] = None,
             *, attrs, block_n: Optional[int] = None) -> torch.Tensor:
    """F.rms_norm(x, attrs.normalized_shape, weight, attrs.eps) over the trailing dims.

    eps None is torch's default (float32's machine epsilon). `block_n` as in layer_norm."""
    _check_dtype(x, "x")
    n = _row_length(x, attrs.normalized_shape, "rms_norm")
    w = _param(weight, attrs.normalized_shape, "weight", "rms_norm")
    x = x.contiguous()
    y = torch.empty_like(x)
    _launch(x, None, w, None, y, None, n, _rms_eps(attrs.eps), True, block_n)
    return y


def add_norm(x: torch.Tensor, residual: torch.Tensor, weight: Optional[torch.Tensor] = None,
             bias: Optional[torch.Tensor] = None, *, attrs,
             block_n: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(norm(x + residual), x + residual) with norm the LayerNorm or RMSNorm attrs.kind names.

    The sum follows torch.add (broadcasting, result_type); both results have its shape and
    dtype. `block_n` as in layer_norm."""
    if attrs.kind not in ("layer", "rms"):
        raise ValueError(f"add_norm kind must be 'layer' or 'rms', got {attrs.kind!r}")
    if attrs.kind == "rms" and bias is not None:
        raise ValueError("add_norm of kind rms takes no bias")
    if attrs.kind == "layer" and attrs.eps is None:
        raise ValueError("add_norm of kind layer needs an eps")
    sum_dtype = torch.result_type(x, residual)
    if sum_dtype not in SUPPORTED_DTYPES:
        raise NotImplementedError(f"Triton norm kernels: a sum of dtype {sum_dtype} is not supported")
    # torch.add casts an integer or bool tensor to the sum's dtype first; floats widen in the kernel
    x, residual = (t if t.is_floating_point() else t.to(sum_dtype) for t in (x, residual))
    _check_dtype(x, "x")
    _check_dtype(residual, "residual")
    if x.shape != residual.shape:
        shape = torch.broadcast_shapes(x.shape, residual.shape)
        x, residual = x.expand(shape), residual.expand(shape)
    n = _row_length(x, attrs.normalized_shape, "add_norm")
    w = _param(weight, attrs.normalized_shape, "weight", "add_norm")
    b = _param(bias, attrs.normalized_shape, "bias", "add_norm")
    x, residual = x.contiguous(), residual.contiguous()
    total = torch.empty(x.shape, dtype=sum_dtype, device=x.device)
    y = torch.empty_like(total)
    is_rms = attrs.kind == "rms"
    eps = _rms_eps(attrs.eps) if is_rms else attrs.eps
    _launch(x, residual, w, b, y, total, n, eps, is_rms, block_n)
    return y, total

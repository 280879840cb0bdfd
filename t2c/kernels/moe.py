"""Fused mixture-of-experts kernels for the IR ops `experts` and `qexperts` in Triton.

Contract: each launcher takes the IR op's operands in the IR's order and its attrs, and returns
what the op's reference (t2c/ir/opdefs/experts.py, quant.py) returns, out [T, H] in x's dtype,
so the Triton backend calls `t2c.kernels.moe.<op>(*node_inputs, attrs=node.attrs)`:

    experts(x, top_k_index, top_k_weights, w_up, w_down, b_up?, b_down?, attrs=ExpertsAttrs)
    qexperts(x, top_k_index, top_k_weights, w_up, s_up, w_down, s_down, b_up?, b_down?, attrs=QExpertsAttrs)

Both dispatch values run the same sparse computation (each expert on its own rows only).

Pipeline (vLLM's fused MoE design, written for t2c):

 1. Alignment (torch ops: argsort, bincount, cumsum, searchsorted, scatter; no host sync, no
    data-dependent shapes, so it is CUDA-graph friendly and deterministic). The T*K (token, slot)
    pairs p = t*K + k are sorted by expert id (stable: ascending p within an expert); ids outside
    0..E-1 are dropped; each expert's run is padded to a multiple of BLOCK_M with the sentinel
    T*K, and each BLOCK_M block of the sorted list gets one expert id (-1: a block past the end,
    the grid is sized by the bound cdiv(T*K, BLOCK_M) + min(E, T*K)). Torch ops rather than a
    Triton kernel: they are a few tiny launches next to the two GEMMs, and sort, histogram and
    prefix sum are library kernels already tuned (the interpreter also runs them at full speed).
 2. Up projection, one grouped GEMM (`_moe_gemm_kernel`, GATHER=True): a program owns BLOCK_M
    sorted pairs of one expert and BLOCK_N columns of I; it gathers x's rows by token
    (p // K), accumulates the gate and up columns (split "concat": n and n + I; "interleaved":
    2n and 2n + 1) in two float32 accumulators, and its epilogue adds the bias, clamps (limit),
    adds up_offset and applies act(g) * u (every activation of the op; ungated: act(h)). The
    result goes to an intermediate [blocks * BLOCK_M, I] in x's dtype, in sorted order.
 3. Down projection, the same kernel (GATHER=False): reads the intermediate's rows in place,
    accumulates over I, adds the bias, multiplies by the pair's routing weight (float32) and
    writes y * w, rounded once to x's dtype, to row p of a [T*K, H] buffer.
 4. Combine (`_moe_combine_kernel`): out[t] = the sum of its valid slots' rows, in ascending
    expert order (the reference's index_add_ order; a stable per-token sort of the ids, so a
    duplicate choice adds in slot order), accumulated in float32, one rounding. No atomics: the
    result is deterministic and, in float32, summed in the reference's order.

Math: float32 accumulation throughout; fp32 dots use IEEE precision (no TF32); halves are
multiplied on the tensor cores with fp32 accumulation. Intermediate values are kept in float32
up to the store of the activation (rounded to x's dtype, as the reference's h is) and of y * w;
the reference's extra roundings of h and y in half precision are not reproduced (the kernel is
the more accurate: tests hold it to at most twice PyTorch's half-precision error).
Activations in float32: silu x * sigmoid(alpha x), gelu (erf), gelu_tanh, relu, relu2, identity.

qexperts (x float32, int8 weights [E, out, in], float32 scales [E, out] or [E, out, in/group]):
  weight_only: each int8 tile is dequantised in the K loop, float32(q) * scale (per channel or per
               group, the reference's dequantize bit for bit), then an IEEE fp32 dot.
  w8a8:        each projection's input rows are quantised per token inside the GEMM: a first pass
               over the row finds amax, sx = max(amax, 1e-30) / 127, xq = clamp(rne(x / sx), -127,
               127) with a correctly rounded division (div_rn: Triton's `/` is approximate on NVIDIA
               GPUs) and round half to even as (v + 1.5 * 2^23) - 1.5 * 2^23 (the interpreter has no
               libdevice rint); int8 x int8 dots accumulate exactly in int32 (127 * 127 * in < 2^31:
               in < 133,000), and the epilogue computes (float32(acc) * scale) * sx + bias in the
               reference's order, so the up projection is the reference's bit for bit.

Layouts: w_up/w_down in "out_in" ([E, out, in], nn.Linear's) or "in_out" ([E, in, out]); any
strides (the kernel reads the weights through their strides, nothing is transposed or copied).
x, top_k_index and top_k_weights are made contiguous. Biases [E, U], [E, H].

Dtypes: float32, float16, bfloat16 for x, weights and biases (all x's dtype, as the IR requires);
top_k_weights any of the three; integer ids of any width. qexperts: x float32.
Limits (NotImplementedError): other float dtypes (float64), a qexperts x that is not float32, a
w8a8 group. Empty T returns zeros.

Tiles: BLOCK_M (rows of one expert per program) is picked on the host from the average rows per
expert (16..128, the alignment needs it before any launch); on a GPU BLOCK_N, BLOCK_K, warps and
stages are autotuned per shape and flags; the interpreter runs one 16x16x16 config, and
multiplies bf16 tiles as float32 (it cannot multiply bf16; the products are exact either way).
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

from ..ir.opdefs.experts import ACTIVATIONS, ExpertsAttrs
from ..ir.opdefs.quant import MODES, QExpertsAttrs
from .norm import _round_to

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

ACT_CODES = {name: i for i, name in enumerate(ACTIVATIONS)}  # silu gelu gelu_tanh relu relu2 identity
QUANT_NONE, QUANT_WEIGHT_ONLY, QUANT_W8A8 = 0, 1, 2

INTERPRETER_CONFIGS = [triton.Config({"BLOCK_N": 16, "BLOCK_K": 16}, num_warps=4, num_stages=1)]
# Four configs: each is compiled per (BLOCK_M, flags) key, and the benchmark's sizes meet three BLOCK_Ms.
# The last fits shared memory everywhere (float32, BLOCK_M 128, gated: 64 KiB over two stages);
# autotune skips a config that runs out of it.
GPU_CONFIGS = [
    triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
    for bn, bk, w, s in [(128, 64, 8, 3), (64, 64, 4, 4), (128, 32, 4, 4), (64, 32, 4, 2)]
]
_AUTOTUNE_CONFIGS = INTERPRETER_CONFIGS if INTERPRETING else GPU_CONFIGS
COMBINE_BLOCK_H = 128 if not INTERPRETING else 64


def block_m_for(pairs: int, experts: int) -> int:
    """Rows of one expert per program: the smallest power of two in 16..128 covering the average
    rows per expert (small batches waste less padding; large ones reuse each weight tile more).
    The interpreter always uses 16 (test shapes then span several blocks)."""
    if INTERPRETING:
        return 16
    avg = pairs / max(experts, 1)
    for bm in (16, 32, 64):
        if avg <= bm:
            return bm
    return 128


# -- alignment (torch) -------------------------------------------------------------------------


def align(top_k_index: torch.Tensor, num_experts: int, block_m: int):
    """(sorted_pair [blocks * block_m] int32, block_expert [blocks] int32, slot_order [T, K] int32).

    sorted_pair lists the pairs p = t*K + k grouped by expert, each expert's run padded to
    block_m with the sentinel T*K; block_expert is each block's expert (-1: unused block);
    slot_order[t] is token t's slots by ascending expert id (stable), -1 for out-of-range ids."""
    t, k = top_k_index.shape
    pairs = t * k
    dev = top_k_index.device
    flat = top_k_index.reshape(-1).to(torch.int64)
    valid = (flat >= 0) & (flat < num_experts)
    key = torch.where(valid, flat, torch.full_like(flat, num_experts))
    order = torch.argsort(key, stable=True)
    counts = torch.bincount(key, minlength=num_experts + 1)[:num_experts]
    padded = (counts + block_m - 1) // block_m * block_m
    pad_end = torch.cumsum(padded, 0)
    pad_start = pad_end - padded
    cnt_start = torch.cumsum(counts, 0) - counts
    blocks = triton.cdiv(pairs, block_m) + min(num_experts, pairs)
    size = blocks * block_m
    key_sorted = key[order]
    ok = key_sorted < num_experts
    e = key_sorted.clamp(max=num_experts - 1)
    pos = pad_start[e] + torch.arange(pairs, device=dev) - cnt_start[e]
    pos = torch.where(ok, pos, torch.full_like(pos, size))  # dropped pairs land in a dump slot past the end
    sorted_pair = torch.full((size + 1,), pairs, dtype=torch.int64, device=dev)
    sorted_pair.scatter_(0, pos, order)
    starts = torch.arange(blocks, device=dev, dtype=torch.int64) * block_m
    block_expert = torch.searchsorted(pad_end, starts, right=True)
    block_expert = torch.where(block_expert < num_experts, block_expert, torch.full_like(block_expert, -1))
    slot = torch.argsort(key.view(t, k), dim=1, stable=True)
    slot = torch.where(torch.gather(key.view(t, k), 1, slot) < num_experts, slot, torch.full_like(slot, -1))
    return sorted_pair[:size].to(torch.int32), block_expert.to(torch.int32), slot.to(torch.int32).contiguous()


# -- kernels -----------------------------------------------------------------------------------


@triton.jit
def _activate(v, ACT: tl.constexpr, alpha):
    """ExpertsAttrs' activation of float32 v (codes in ACTIVATIONS' order)."""
    if ACT == 0:  # silu: x * sigmoid(alpha x)
        out = v / (1.0 + tl.exp(-(v * alpha)))
    elif ACT == 1:  # gelu (erf)
        out = 0.5 * v * (1.0 + tl.math.erf(v * 0.7071067811865476))
    elif ACT == 2:  # gelu_tanh
        z = 0.7978845608028654 * (v + 0.044715 * v * v * v)
        tanh = 1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0)
        out = 0.5 * v * (1.0 + tanh)
    elif ACT == 3:  # relu
        out = tl.maximum(v, 0.0)
    elif ACT == 4:  # relu2
        r = tl.maximum(v, 0.0)
        out = r * r
    else:  # identity
        out = v
    return out


@triton.jit
def _quantize_rows(v, sx):
    """clamp(rne(v / sx), -127, 127) as int8: a correctly rounded division, then round half to even
    by the 1.5 * 2^23 trick (|v / sx| <= 127 * (1 + eps), far inside its range)."""
    q = tl.math.div_rn(v, sx)
    q = (q + 12582912.0) - 12582912.0
    q = tl.minimum(tl.maximum(q, -127.0), 127.0)
    return q.to(tl.int8)


@triton.jit
def _load_w(W, S, e, s_we, s_wn, s_wk, s_se, s_sn, s_sg, cols, ks, col_ok, mask, QUANT: tl.constexpr,
            GROUP: tl.constexpr):
    """A [BLOCK_K, BLOCK_N] weight tile: as stored, or (weight_only) dequantised to float32."""
    w = tl.load(W + e * s_we + ks[:, None] * s_wk + cols[None, :] * s_wn, mask=mask, other=0)
    if QUANT == 1:
        if GROUP == 0:
            s = tl.load(S + e * s_se + cols * s_sn, mask=col_ok, other=0.0)
            w = w.to(tl.float32) * s[None, :]
        else:
            s = tl.load(S + e * s_se + cols[None, :] * s_sn + (ks // GROUP)[:, None] * s_sg, mask=mask, other=0.0)
            w = w.to(tl.float32) * s
    return w


@triton.jit
def _dot(a, b, acc, QUANT: tl.constexpr, UPCAST: tl.constexpr):
    if QUANT == 2:
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
    elif UPCAST:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    elif a.dtype == tl.float32:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b.to(a.dtype), acc)
    return acc


@triton.autotune(configs=_AUTOTUNE_CONFIGS,
                 key=["N", "KD", "BLOCK_M", "GATHER", "GATED", "INTERLEAVED", "QUANT", "GROUP", "HAS_BIAS"])
@triton.jit
def _moe_gemm_kernel(
    X, W, S, B, OUT, TW, SORTED, BLOCK_EXPERT,
    N, KD, PAIRS, TOP_K, num_m_blocks,
    s_xm, s_we, s_wn, s_wk, s_se, s_sn, s_sg, s_be, s_om,
    alpha, limit, up_offset,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GATHER: tl.constexpr, GATED: tl.constexpr, INTERLEAVED: tl.constexpr, ACT: tl.constexpr,
    HAS_LIMIT: tl.constexpr, HAS_BIAS: tl.constexpr, QUANT: tl.constexpr, GROUP: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """One (BLOCK_M sorted pairs of one expert) x (BLOCK_N output columns) tile of a projection.

    GATHER (up): input rows are x[p // TOP_K], output rows the sorted positions, epilogue the gate.
    not GATHER (down): input rows are the sorted positions, output rows p, epilogue y * w[p].
    N: output columns (I for the up projection, gated or not; H for down); KD: the reduction."""
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BLOCK_N)
    # grouped ordering: consecutive programs share weight tiles across 8 row blocks
    GROUP_M: tl.constexpr = 8
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    size_m = tl.minimum(num_m_blocks - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m

    e = tl.load(BLOCK_EXPERT + pid_m).to(tl.int64)
    if e < 0:
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(SORTED + offs_m)
    row_ok = pair < PAIRS
    if GATHER:
        in_rows = (pair // TOP_K).to(tl.int64)
    else:
        in_rows = offs_m.to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = offs_n < N
    if GATED:
        if INTERLEAVED:
            g_cols = 2 * offs_n
            u_cols = 2 * offs_n + 1
        else:
            g_cols = offs_n
            u_cols = offs_n + N
    else:
        g_cols = offs_n
        u_cols = offs_n
    offs_k = tl.arange(0, BLOCK_K)
    x_rows = X + in_rows[:, None] * s_xm

    if QUANT == 2:
        # per-token quantisation of the input rows: amax over the whole row first
        amax = tl.zeros([BLOCK_M], dtype=tl.float32)
        for k0 in range(0, KD, BLOCK_K):
            ks = k0 + offs_k
            xv = tl.load(x_rows + ks[None, :], mask=row_ok[:, None] & (ks[None, :] < KD), other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.max(tl.abs(xv), axis=1))
        sx = tl.maximum(amax, 1e-30) / 127.0
        acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
        acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    else:
        acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)

    for k0 in range(0, KD, BLOCK_K):
        ks = k0 + offs_k
        k_ok = ks < KD
        a = tl.load(x_rows + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        if QUANT == 2:
            a = _quantize_rows(a.to(tl.float32), sx[:, None])
        wmask = k_ok[:, None] & col_ok[None, :]
        wg = _load_w(W, S, e, s_we, s_wn, s_wk, s_se, s_sn, s_sg, g_cols, ks, col_ok, wmask, QUANT, GROUP)
        acc_g = _dot(a, wg, acc_g, QUANT, UPCAST)
        if GATED:
            wu = _load_w(W, S, e, s_we, s_wn, s_wk, s_se, s_sn, s_sg, u_cols, ks, col_ok, wmask, QUANT, GROUP)
            acc_u = _dot(a, wu, acc_u, QUANT, UPCAST)

    if QUANT == 2:
        # (float32(acc) * scale) * sx, the reference's order
        sg = tl.load(S + e * s_se + g_cols * s_sn, mask=col_ok, other=0.0)
        g = (acc_g.to(tl.float32) * sg[None, :]) * sx[:, None]
        if GATED:
            su = tl.load(S + e * s_se + u_cols * s_sn, mask=col_ok, other=0.0)
            u = (acc_u.to(tl.float32) * su[None, :]) * sx[:, None]
    else:
        g = acc_g
        if GATED:
            u = acc_u
    if HAS_BIAS:
        g += tl.load(B + e * s_be + g_cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        if GATED:
            u += tl.load(B + e * s_be + u_cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]

    out_mask = row_ok[:, None] & col_ok[None, :]
    if GATHER:
        if GATED:
            if HAS_LIMIT:
                g = tl.minimum(g, limit)
                u = tl.minimum(tl.maximum(u, -limit), limit)
            y = _activate(g, ACT, alpha) * (u + up_offset)
        else:
            y = _activate(g, ACT, alpha)
        out_rows = offs_m.to(tl.int64)
    else:
        rw = tl.load(TW + pair, mask=row_ok, other=0.0).to(tl.float32)
        y = g * rw[:, None]
        out_rows = pair.to(tl.int64)
    tl.store(OUT + out_rows[:, None] * s_om + offs_n[None, :], _round_to(y, OUT.dtype.element_ty), mask=out_mask)


@triton.jit
def _moe_combine_kernel(Y, SLOT, OUT, H, TOP_K, BLOCK_H: tl.constexpr):
    """out[t] = sum over token t's valid slots, in ascending expert order, of Y[t*K + slot]."""
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_ok = cols < H
    acc = tl.zeros([BLOCK_H], dtype=tl.float32)
    for j in range(0, TOP_K):
        slot = tl.load(SLOT + t * TOP_K + j)
        row = t * TOP_K + tl.maximum(slot, 0)
        ok = col_ok & ((tl.zeros([BLOCK_H], dtype=tl.int32) + slot) >= 0)  # -1: an out-of-range id
        acc += tl.load(Y + row * H + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(OUT + t * H + cols, _round_to(acc, OUT.dtype.element_ty), mask=col_ok)


# -- launchers ---------------------------------------------------------------------------------


def supports(attrs) -> bool:
    """Every ExpertsAttrs / QExpertsAttrs the IR verifier accepts (w8a8 per channel only)."""
    if attrs.activation not in ACT_CODES or attrs.split not in ("concat", "interleaved") or attrs.limit < 0:
        return False
    if isinstance(attrs, QExpertsAttrs):
        return attrs.mode in MODES and attrs.group >= 0 and not (attrs.mode == "w8a8" and attrs.group)
    return attrs.layout in ("out_in", "in_out")


def _check_float(t: Optional[torch.Tensor], what: str) -> None:
    if t is not None and t.dtype not in SUPPORTED_DTYPES:
        raise NotImplementedError(f"Triton MoE kernels: {what} of dtype {t.dtype} is not supported "
                                  f"(float16, bfloat16, float32)")


def _gemm(inp, w, s, b, out, tw, sorted_pair, block_expert, *, n, kd, pairs, top_k, block_m, gather,
          attrs, quant, group, w_strides):
    """Launch one projection over every block (see _moe_gemm_kernel)."""
    num_m = block_expert.numel()
    s_we, s_wn, s_wk = w_strides
    if s is None:
        s_se = s_sn = s_sg = 0
    else:
        s_se, s_sn = s.stride(0), s.stride(1)
        s_sg = s.stride(2) if s.dim() == 3 else 0
    gated = bool(gather and attrs.gated)
    grid = lambda meta: (num_m * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    upcast = INTERPRETING and inp.dtype == torch.bfloat16
    _moe_gemm_kernel[grid](
        inp, w, s, b, out, tw, sorted_pair, block_expert,
        n, kd, pairs, top_k, num_m,
        inp.stride(0), s_we, s_wn, s_wk, s_se, s_sn, s_sg, 0 if b is None else b.stride(0), out.stride(0),
        float(attrs.alpha), float(attrs.limit), float(attrs.up_offset),
        BLOCK_M=block_m, GATHER=gather, GATED=gated, INTERLEAVED=gated and attrs.split == "interleaved",
        ACT=ACT_CODES[attrs.activation] if gather else 5, HAS_LIMIT=gated and attrs.limit > 0,
        HAS_BIAS=b is not None, QUANT=quant, GROUP=group, UPCAST=upcast,
    )


def _run(x, idx, tw, w_up, w_down, s_up, s_down, b_up, b_down, attrs, *, up_strides, down_strides,
         inter, hidden, quant, group, block_m: Optional[int]):
    t, k = idx.shape
    out = torch.empty_like(x)
    num_experts = w_up.shape[0]
    if t == 0:
        return out
    if k == 0:
        return out.zero_()
    pairs = t * k
    if block_m is not None and (block_m < 16 or block_m & (block_m - 1)):
        raise ValueError(f"block_m must be a power of two >= 16 (tl.dot's smallest tile), got {block_m}")
    bm = block_m or block_m_for(pairs, num_experts)
    sorted_pair, block_expert, slot_order = align(idx, num_experts, bm)
    tw = tw.contiguous()
    act = torch.empty((sorted_pair.numel(), inter), dtype=x.dtype, device=x.device)
    _gemm(x, w_up, s_up, b_up, act, tw, sorted_pair, block_expert, n=inter, kd=hidden, pairs=pairs, top_k=k,
          block_m=bm, gather=True, attrs=attrs, quant=quant, group=group, w_strides=up_strides)
    y = torch.empty((pairs, hidden), dtype=x.dtype, device=x.device)
    _gemm(act, w_down, s_down, b_down, y, tw, sorted_pair, block_expert, n=hidden, kd=inter, pairs=pairs, top_k=k,
          block_m=bm, gather=False, attrs=attrs, quant=quant, group=group, w_strides=down_strides)
    _moe_combine_kernel[(t, triton.cdiv(hidden, COMBINE_BLOCK_H))](y, slot_order, out, hidden, k, BLOCK_H=COMBINE_BLOCK_H)
    return out


def _check_common(x, idx, tw, b_up, b_down):
    if x.dim() != 2 or idx.dim() != 2 or tw.shape != idx.shape or idx.shape[0] != x.shape[0]:
        raise ValueError(f"experts: x [T, H], top_k_index and top_k_weights [T, K], got {tuple(x.shape)}, "
                         f"{tuple(idx.shape)}, {tuple(tw.shape)}")
    if idx.is_floating_point() or idx.dtype == torch.bool:
        raise ValueError("experts: top_k_index must be integer")
    if (b_up is None) != (b_down is None):
        raise ValueError("experts: give both biases or neither")
    _check_float(x, "x")
    _check_float(tw, "top_k_weights")


def experts(x: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor,
            w_up: torch.Tensor, w_down: torch.Tensor, b_up: Optional[torch.Tensor] = None,
            b_down: Optional[torch.Tensor] = None, *, attrs: ExpertsAttrs = ExpertsAttrs(),
            block_m: Optional[int] = None) -> torch.Tensor:
    """experts_reference(x, top_k_index, top_k_weights, w_up, w_down, b_up, b_down, attrs).

    `block_m` (a power of two >= 16) overrides the rows per expert block (tests and tuning)."""
    if not supports(attrs):
        raise NotImplementedError(f"Triton MoE kernels: attrs {attrs} are not supported")
    _check_common(x, top_k_index, top_k_weights, b_up, b_down)
    for t, what in ((w_up, "w_up"), (w_down, "w_down"), (b_up, "b_up"), (b_down, "b_down")):
        _check_float(t, what)
        if t is not None and t.dtype != x.dtype:
            raise ValueError(f"experts: {what} has dtype {t.dtype}, x {x.dtype} (the IR requires one dtype)")
    if attrs.nonneg_weights and bool((top_k_weights < 0).any()):
        from ..errors import VerifyError

        raise VerifyError("experts: nonneg_weights is claimed but a routing weight is negative")
    out_in = attrs.layout == "out_in"
    hidden = x.shape[1]
    u = w_up.shape[1] if out_in else w_up.shape[2]
    inter = u // 2 if attrs.gated else u
    # (expert, output column, reduction) strides
    up_strides = (w_up.stride(0), w_up.stride(1), w_up.stride(2)) if out_in else (w_up.stride(0), w_up.stride(2), w_up.stride(1))
    down_strides = (w_down.stride(0), w_down.stride(1), w_down.stride(2)) if out_in else (w_down.stride(0), w_down.stride(2), w_down.stride(1))
    return _run(x.contiguous(), top_k_index.contiguous(), top_k_weights, w_up, w_down, None, None,
                None if b_up is None else b_up.contiguous(), None if b_down is None else b_down.contiguous(), attrs,
                up_strides=up_strides, down_strides=down_strides, inter=inter, hidden=hidden,
                quant=QUANT_NONE, group=0, block_m=block_m)


def qexperts(x: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor,
             w_up: torch.Tensor, s_up: torch.Tensor, w_down: torch.Tensor, s_down: torch.Tensor,
             b_up: Optional[torch.Tensor] = None, b_down: Optional[torch.Tensor] = None, *,
             attrs: QExpertsAttrs = QExpertsAttrs(), block_m: Optional[int] = None) -> torch.Tensor:
    """qexperts_reference(x, top_k_index, top_k_weights, w_up, s_up, w_down, s_down, b_up, b_down, attrs)."""
    if not supports(attrs):
        raise NotImplementedError(f"Triton MoE kernels: attrs {attrs} are not supported")
    _check_common(x, top_k_index, top_k_weights, b_up, b_down)
    if x.dtype != torch.float32:
        raise NotImplementedError(f"Triton MoE kernels: qexperts takes float32 x, got {x.dtype}")
    if w_up.dtype != torch.int8 or w_down.dtype != torch.int8 or s_up.dtype != torch.float32 or s_down.dtype != torch.float32:
        raise ValueError("qexperts: weights are int8 and scales float32")
    if attrs.nonneg_weights and bool((top_k_weights < 0).any()):
        from ..errors import VerifyError

        raise VerifyError("qexperts: nonneg_weights is claimed but a routing weight is negative")
    group = attrs.group if attrs.mode == "weight_only" else 0
    for w, s, what in ((w_up, s_up, "w_up"), (w_down, s_down, "w_down")):
        want = (w.shape[0], w.shape[1], w.shape[2] // group) if group else (w.shape[0], w.shape[1])
        if (group and w.shape[2] % group) or tuple(s.shape) != want:
            raise ValueError(f"qexperts: {what} {tuple(w.shape)} needs scales {want} (group {group}), got {tuple(s.shape)}")
    u = w_up.shape[1]
    inter = u // 2 if attrs.gated else u
    quant = QUANT_W8A8 if attrs.mode == "w8a8" else QUANT_WEIGHT_ONLY
    strides = lambda w: (w.stride(0), w.stride(1), w.stride(2))  # noqa: E731  [E, out, in]
    return _run(x.contiguous(), top_k_index.contiguous(), top_k_weights, w_up, w_down, s_up, s_down,
                None if b_up is None else b_up.contiguous(), None if b_down is None else b_down.contiguous(),
                attrs, up_strides=strides(w_up), down_strides=strides(w_down), inter=inter, hidden=x.shape[1],
                quant=quant, group=group, block_m=block_m)


__all__ = ["experts", "qexperts", "supports", "align", "SUPPORTED_DTYPES"]

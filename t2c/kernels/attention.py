"""FlashAttention-style forward kernel for the IR op `attention` (t2c/ir/opdefs/attention.py).

Contract: `attention(*operands, attrs=AttentionAttrs)` takes the IR op's operands in
its order, (q, k, v, mask?, cos?, sin?), and returns what `attention_reference`
returns: out [B, Hq, Sq, Dv] in q's dtype.

Layouts (any strides): q [B, Hq, Sq, D], k [B, Hkv, Sk, D], v [B, Hkv, Sk, Dv];
query head h reads KV head h // (Hq / Hkv) (grouped-query attention, K and V are
never repeated). The mask, when present, broadcasts to [B, Hq, Sq, Sk] (a bool mask:
true = attend; a float mask: added to the scores); cos and sin broadcast to
[..., rotary_dim] of q and of k (t2c/ir/opdefs/rope.py).

Math, per query block of BLOCK_M rows (one program), online softmax over key tiles
of BLOCK_N keys held in SRAM:

    q, k  = rope(q), rope(k)                 (prologue, as the tiles are loaded)
    s     = scale * q @ k^T                  (fp32 accumulation)
    s     = softcap * tanh(s / softcap)      (softcap > 0), before any masking
    s    += mask  |  s = -inf where not mask (the operand, loaded per tile)
    s     = -inf where not structural(i, j)  (only on tiles the structure cuts)
    m, l, acc updated as in FlashAttention; out = acc / l, or 0 for rows that see no key

Structure never costs O(Sq * Sk): the key tiles a query block visits are bounded
by `key_tiles` (causal, window (left, right), block-local), so work grows as
Sq * (W + G); the first G global keys get a separate pass, and query blocks that
hold global rows visit every key. Tiles fully visible to the whole query block
run in their own loop, without the element mask (the cut tiles at the band's
edges and the global keys apply it).

Dtypes: fp32, fp16 and bf16 inputs (all three alike), fp32 accumulation; fp32
dots use IEEE precision (no TF32). Head dims up to 256 (D and Dv padded to the
next power of two, at least 16, with masked loads). Anything else (float64,
mixed q/k/v dtypes, head dims over 256) raises
NotImplementedError naming it, so a caller can fall back to the reference.

A decode step over a KV cache (no structure, few query rows per KV head, more keys than
queries) goes to the split-K kernel in decode_attention.py instead, which spreads the keys over
programs.

Runs on CUDA tensors (autotuned over GPU_CONFIGS), or on CPU tensors under
TRITON_INTERPRET=1 with one 16x16 tile config; the interpreter cannot multiply
bf16, so there bf16 dot operands go to fp32 first (exact, as the tensor cores'
fp32 accumulation of bf16 products is).
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ..ir.opdefs.attention import AttentionAttrs, attention_operands
from ..ir.opdefs.rope import check_paired

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 256
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

# The interpreter runs every config it is given: one small tile there (small tiles
# also exercise the boundary-tile logic on short test sequences).
INTERPRETER_CONFIGS = [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
GPU_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in [(128, 64, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3), (32, 32, 4, 1)]
]  # the last one fits in shared memory for every supported dtype and head dim (fp32 at D = 256)
CONFIGS = INTERPRETER_CONFIGS if INTERPRETING else GPU_CONFIGS


def prune_gpu_configs(configs, named_args, **kwargs):
    """Keep the small fallback tile only where the big ones may not fit (fp32, or head dims over 128):
    every config autotune keeps is compiled, which costs seconds."""
    args = {**named_args, **kwargs}
    big = args["q_ptr"].dtype == torch.float32 or max(args["BLOCK_D"], args["BLOCK_DV"]) > 128
    return [c for c in configs if big or c.kwargs["BLOCK_M"] > 32]


# rope kinds as the kernel's constexpr
ROPE_CODES = {"none": 0, "half": 1, "interleaved": 2}
# mask operand kinds as the kernel's constexpr
NO_MASK, ADDITIVE_MASK, BOOL_MASK = 0, 1, 2


class KeyTiles(NamedTuple):
    """The keys one query block visits, as element bounds; the kernel computes the same.

    Key tiles [0, global_stop) (the global keys left of the band) and [lo, hi)
    stepping by block_n (lo a multiple of block_n); of the latter, the tiles in
    [full_lo, full_hi) are visible to every row of the block and skip the element
    mask. Every other key is invisible to all rows of the block.
    """

    global_stop: int
    lo: int
    full_lo: int
    full_hi: int
    hi: int
    block_n: int

    @property
    def tiles(self) -> int:
        """Key tiles loaded."""
        return -(-self.global_stop // self.block_n) + max(0, -(-(self.hi - self.lo) // self.block_n))

    @property
    def masked_tiles(self) -> int:
        """Key tiles that apply the element mask (the rest are fully visible)."""
        return self.tiles - (self.full_hi - self.full_lo) // self.block_n


def key_tiles(q_start: int, q_stop: int, sq: int, sk: int, a: AttentionAttrs, block_n: int) -> KeyTiles:
    """The KeyTiles of the query block [q_start, q_stop) (rows past sq do not count)."""
    last = min(q_stop, sq) - 1
    left, right = a.window
    all_global = a.global_tokens > 0 and last < a.global_tokens
    lo, hi = 0, sk
    if a.causal:
        hi = min(hi, last + 1)
    if right >= 0:
        hi = min(hi, last + right + 1)
    if left >= 0:
        lo = max(lo, q_start - left)
    if a.block > 0:
        lo = max(lo, (q_start // a.block) * a.block)
        hi = min(hi, (last // a.block + 1) * a.block)
    if a.global_tokens > 0 and q_start < a.global_tokens:  # global rows see every key
        lo, hi = 0, (min(sk, last + 1) if a.causal else sk)
    lo = (lo // block_n) * block_n
    global_stop = min(a.global_tokens, lo, sk) if a.global_tokens > 0 else 0
    # fully visible: whole tiles inside [lo, hi) that every row's band covers (global
    # keys only add visibility, so the band alone is a safe bound unless all rows are global)
    full_lo, full_hi = lo, max(lo, hi)
    if not all_global:
        if left >= 0:
            full_lo = max(full_lo, last - left)
        if right >= 0:
            full_hi = min(full_hi, q_start + right + 1)
        if a.block > 0:
            if q_start // a.block != last // a.block:
                full_hi = full_lo
            full_lo = max(full_lo, (q_start // a.block) * a.block)
            full_hi = min(full_hi, (q_start // a.block + 1) * a.block)
    if a.causal:
        full_hi = min(full_hi, q_start + 1)
    n_tiles = -(-max(0, hi - lo) // block_n)
    first = min(-(-(full_lo - lo) // block_n), n_tiles)
    stop = min(max((max(full_hi, lo) - lo) // block_n, first), n_tiles)
    return KeyTiles(global_stop, lo, lo + first * block_n, lo + stop * block_n, hi, block_n)


@triton.jit
def _dot(a, b, acc, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b; UPCAST takes bf16 operands to fp32 first (exact: the interpreter cannot multiply bf16)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.jit
def _tanh(x):
    """tanh to a few ulp in fp32 (expm1 by its Taylor series near 0, where exp(t) - 1 cancels)."""
    t = -2.0 * tl.abs(x)
    series = t * (1.0 + t * (0.5 + t * (1.0 / 6 + t * (1.0 / 24 + t * (1.0 / 120 + t * (1.0 / 720 + t * (1.0 / 5040 + t / 40320)))))))
    em1 = tl.where(t > -0.5, series, tl.exp(t) - 1.0)
    mag = -em1 / (2.0 + em1)
    return tl.where(x < 0, -mag, mag)


@triton.jit
def _rope_tile(x, x_base, offs_r, r_ok, stride_r, stride_d, cos_base, sin_base, cs_r, cs_d,
               BLOCK_D: tl.constexpr, ROTARY_DIM: tl.constexpr, INTERLEAVED: tl.constexpr):
    """Rotate the first ROTARY_DIM features of a [rows, BLOCK_D] tile: x * cos + rot(x) * sin."""
    offs_d = tl.arange(0, BLOCK_D)
    rotates = offs_d < ROTARY_DIM
    if INTERLEAVED:
        partner = offs_d ^ 1
        negate = (offs_d % 2) == 0
    else:
        partner = tl.where(offs_d < ROTARY_DIM // 2, offs_d + ROTARY_DIM // 2, offs_d - ROTARY_DIM // 2)
        negate = offs_d < ROTARY_DIM // 2
    ok = r_ok[:, None] & rotates[None, :]
    # rot(x) gathers each feature's partner: a second load of the same rows
    xp = tl.load(x_base + offs_r[:, None] * stride_r + partner[None, :] * stride_d, mask=ok, other=0.0).to(tl.float32)
    xp = tl.where(negate[None, :], -xp, xp)
    c = tl.load(cos_base + offs_r[:, None] * cs_r + offs_d[None, :] * cs_d, mask=ok, other=0.0).to(tl.float32)
    s = tl.load(sin_base + offs_r[:, None] * cs_r + offs_d[None, :] * cs_d, mask=ok, other=0.0).to(tl.float32)
    rotated = x.to(tl.float32) * c + xp * s
    return tl.where(rotates[None, :], rotated.to(x.dtype), x)


@triton.jit
def _visible(offs_m, offs_n, key_stop, CAUSAL: tl.constexpr, LEFT: tl.constexpr, RIGHT: tl.constexpr,
             LOCAL_BLOCK: tl.constexpr, GLOBAL: tl.constexpr):
    """[BLOCK_M, BLOCK_N] structural(i, j) of the IR op, and j < key_stop."""
    i = offs_m[:, None]
    j = offs_n[None, :]
    vis = (i >= 0) & (j >= 0)
    if LEFT >= 0:
        vis = vis & (j >= i - LEFT)
    if RIGHT >= 0:
        vis = vis & (j <= i + RIGHT)
    if LOCAL_BLOCK > 0:
        vis = vis & ((i // LOCAL_BLOCK) == (j // LOCAL_BLOCK))
    if GLOBAL > 0:
        vis = vis | (i < GLOBAL) | (j < GLOBAL)
    if CAUSAL:
        vis = vis & (j <= i)
    return vis & (j < key_stop)


@triton.jit
def _attend_tile(acc, l_i, m_i, q, n0, key_stop, offs_m, Sq, scale, softcap,
                 k_base, v_base, mask_base, kcos_base, ksin_base,
                 stride_kn, stride_kd, stride_vn, stride_vd, stride_mm, stride_mn, stride_cn, stride_cd,
                 HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                 BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, LEFT: tl.constexpr, RIGHT: tl.constexpr,
                 LOCAL_BLOCK: tl.constexpr, GLOBAL: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                 MASK_KIND: tl.constexpr, ROPE: tl.constexpr, ROTARY_DIM: tl.constexpr,
                 DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, MASKED: tl.constexpr):
    """One online-softmax step over the key tile [n0, n0 + BLOCK_N); MASKED applies the structure
    (and makes keys >= key_stop invisible), else every key of the tile is visible to every row."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    n_ok = offs_n < key_stop
    k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                mask=n_ok[:, None] & (offs_d[None, :] < HEAD_D), other=0.0)
    if ROPE != 0:
        k = _rope_tile(k, k_base, offs_n, n_ok, stride_kn, stride_kd, kcos_base, ksin_base, stride_cn, stride_cd,
                       BLOCK_D, ROTARY_DIM, ROPE == 2)
    s = _dot(q, tl.trans(k), tl.zeros([q.shape[0], BLOCK_N], tl.float32), DOT_PRECISION, UPCAST) * scale
    if HAS_SOFTCAP:
        s = softcap * _tanh(s / softcap)
    if MASK_KIND != 0:
        m_ok = (offs_m[:, None] < Sq) & n_ok[None, :]
        # int64 rows: a [Sq, Sk] mask passes 2**31 elements near 46k tokens
        mvals = tl.load(mask_base + offs_m.to(tl.int64)[:, None] * stride_mm + offs_n[None, :] * stride_mn,
                        mask=m_ok, other=0)
        if MASK_KIND == 1:
            s = s + mvals.to(tl.float32)
        else:
            s = tl.where(mvals != 0, s, float("-inf"))
    if MASKED:
        s = tl.where(_visible(offs_m, offs_n, key_stop, CAUSAL, LEFT, RIGHT, LOCAL_BLOCK, GLOBAL), s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # a row that has seen no key yet keeps m = -inf: subtract 0 instead, so exp gives 0, not nan
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m_i - m_safe)
    p = tl.exp(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd,
                mask=n_ok[:, None] & (offs_dv[None, :] < HEAD_DV), other=0.0)
    acc = _dot(p.to(v.dtype), v, acc * alpha[:, None], DOT_PRECISION, UPCAST)
    return acc, l_i, m_new


@triton.jit
def _attend_range(acc, l_i, m_i, q, start, stop, key_stop, offs_m, Sq, scale, softcap,
                  k_base, v_base, mask_base, kcos_base, ksin_base,
                  stride_kn, stride_kd, stride_vn, stride_vd, stride_mm, stride_mn, stride_cn, stride_cd,
                  HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                  BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, LEFT: tl.constexpr, RIGHT: tl.constexpr,
                  LOCAL_BLOCK: tl.constexpr, GLOBAL: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                  MASK_KIND: tl.constexpr, ROPE: tl.constexpr, ROTARY_DIM: tl.constexpr,
                  DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, MASKED: tl.constexpr):
    """The key tiles start, start + BLOCK_N, ... below stop; returns (acc, l, m, tiles visited)."""
    tiles = start * 0
    for n0 in range(start, stop, BLOCK_N):
        acc, l_i, m_i = _attend_tile(acc, l_i, m_i, q, n0, key_stop, offs_m, Sq, scale, softcap,
                                     k_base, v_base, mask_base, kcos_base, ksin_base,
                                     stride_kn, stride_kd, stride_vn, stride_vd, stride_mm, stride_mn,
                                     stride_cn, stride_cd, HEAD_D, HEAD_DV, BLOCK_D, BLOCK_DV, BLOCK_N,
                                     CAUSAL, LEFT, RIGHT, LOCAL_BLOCK, GLOBAL, HAS_SOFTCAP, MASK_KIND,
                                     ROPE, ROTARY_DIM, DOT_PRECISION, UPCAST, MASKED)
        tiles += 1
    return acc, l_i, m_i, tiles


@triton.autotune(configs=CONFIGS, key=["seq_bucket", "HEAD_D", "HEAD_DV", "CAUSAL", "LEFT", "RIGHT", "LOCAL_BLOCK"],
                 prune_configs_by=None if INTERPRETING else {"early_config_prune": prune_gpu_configs})
@triton.jit
def _attention_fwd(q_ptr, k_ptr, v_ptr, o_ptr, mask_ptr, qcos_ptr, qsin_ptr, kcos_ptr, ksin_ptr, visits_ptr,
                   stride_qb, stride_qh, stride_qm, stride_qd,
                   stride_kb, stride_kh, stride_kn, stride_kd,
                   stride_vb, stride_vh, stride_vn, stride_vd,
                   stride_ob, stride_oh, stride_om, stride_od,
                   stride_mb, stride_mh, stride_mm, stride_mn,
                   stride_qcb, stride_qch, stride_qcm, stride_qcd,
                   stride_kcb, stride_kch, stride_kcn, stride_kcd,
                   H_Q, Sq, Sk, scale, softcap, seq_bucket,
                   GROUP: tl.constexpr, HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                   CAUSAL: tl.constexpr, LEFT: tl.constexpr, RIGHT: tl.constexpr, LOCAL_BLOCK: tl.constexpr,
                   GLOBAL: tl.constexpr, HAS_SOFTCAP: tl.constexpr, MASK_KIND: tl.constexpr,
                   ROPE: tl.constexpr, ROTARY_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr,
                   UPCAST: tl.constexpr, COUNT_VISITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One program: BLOCK_M query rows of one (batch, query head) against the key tiles its structure allows."""
    # one grid axis (the second is limited to 65535); query blocks of one head are neighbours,
    # so the programs running together share that head's K and V in L2
    n_m = tl.cdiv(Sq, BLOCK_M)
    pid_m = tl.program_id(0) % n_m
    pid_bh = tl.program_id(0) // n_m
    b = pid_bh // H_Q
    h = pid_bh % H_Q
    h_kv = h // GROUP  # grouped-query attention: index the shared KV head, never repeat K/V
    q_base = q_ptr + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    k_base = k_ptr + b.to(tl.int64) * stride_kb + h_kv.to(tl.int64) * stride_kh
    v_base = v_ptr + b.to(tl.int64) * stride_vb + h_kv.to(tl.int64) * stride_vh
    mask_base = mask_ptr + b.to(tl.int64) * stride_mb + h.to(tl.int64) * stride_mh
    qcos_base = qcos_ptr + b.to(tl.int64) * stride_qcb + h.to(tl.int64) * stride_qch
    qsin_base = qsin_ptr + b.to(tl.int64) * stride_qcb + h.to(tl.int64) * stride_qch
    kcos_base = kcos_ptr + b.to(tl.int64) * stride_kcb + h_kv.to(tl.int64) * stride_kch
    ksin_base = ksin_ptr + b.to(tl.int64) * stride_kcb + h_kv.to(tl.int64) * stride_kch

    m0 = pid_m * BLOCK_M
    m_last = tl.minimum(m0 + BLOCK_M, Sq) - 1
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < Sq
    q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                mask=m_ok[:, None] & (offs_d[None, :] < HEAD_D), other=0.0)
    if ROPE != 0:
        q = _rope_tile(q, q_base, offs_m, m_ok, stride_qm, stride_qd, qcos_base, qsin_base, stride_qcm, stride_qcd,
                       BLOCK_D, ROTARY_DIM, ROPE == 2)

    # The keys this block can see (KeyTiles in Python says the same): a band [lo, hi)
    # whose tiles in [full_lo, full_hi) need no element mask, and the global keys left of it.
    lo = m0 * 0
    hi = lo + Sk
    if CAUSAL:
        hi = tl.minimum(hi, m_last + 1)
    if RIGHT >= 0:
        hi = tl.minimum(hi, m_last + RIGHT + 1)
    if LEFT >= 0:
        lo = tl.maximum(lo, m0 - LEFT)
    if LOCAL_BLOCK > 0:
        lo = tl.maximum(lo, (m0 // LOCAL_BLOCK) * LOCAL_BLOCK)
        hi = tl.minimum(hi, (m_last // LOCAL_BLOCK + 1) * LOCAL_BLOCK)
    global_stop = lo * 0
    if GLOBAL > 0:
        all_keys = m0 < GLOBAL
        lo = tl.where(all_keys, 0, lo)
        if CAUSAL:
            hi = tl.where(all_keys, tl.minimum(Sk, m_last + 1), hi)
        else:
            hi = tl.where(all_keys, Sk, hi)
    lo = (lo // BLOCK_N) * BLOCK_N
    if GLOBAL > 0:
        global_stop = tl.minimum(tl.minimum(lo, GLOBAL), Sk)
    full_lo = lo
    full_hi = tl.maximum(lo, hi)
    band_lo = full_lo
    band_hi = full_hi
    if LEFT >= 0:
        band_lo = tl.maximum(band_lo, m_last - LEFT)
    if RIGHT >= 0:
        band_hi = tl.minimum(band_hi, m0 + RIGHT + 1)
    if LOCAL_BLOCK > 0:
        band_hi = tl.where(m0 // LOCAL_BLOCK != m_last // LOCAL_BLOCK, band_lo, band_hi)
        band_lo = tl.maximum(band_lo, (m0 // LOCAL_BLOCK) * LOCAL_BLOCK)
        band_hi = tl.minimum(band_hi, (m0 // LOCAL_BLOCK + 1) * LOCAL_BLOCK)
    if GLOBAL > 0:  # rows that are all global see past the band
        full_lo = tl.where(m_last < GLOBAL, full_lo, band_lo)
        full_hi = tl.where(m_last < GLOBAL, full_hi, band_hi)
    else:
        full_lo = band_lo
        full_hi = band_hi
    if CAUSAL:
        full_hi = tl.minimum(full_hi, m0 + 1)
    n_tiles = (tl.maximum(hi - lo, 0) + BLOCK_N - 1) // BLOCK_N
    first = tl.minimum((full_lo - lo + BLOCK_N - 1) // BLOCK_N, n_tiles)
    stop = tl.minimum(tl.maximum((tl.maximum(full_hi, lo) - lo) // BLOCK_N, first), n_tiles)
    full_lo = lo + first * BLOCK_N
    full_hi = lo + stop * BLOCK_N

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    # (start, stop, keys visible below, masked): the global keys, the band's cut tiles
    # on the left, its full tiles, its cut tiles on the right
    acc, l_i, m_i, n_global = _attend_range(
        acc, l_i, m_i, q, 0, global_stop, global_stop, offs_m, Sq, scale, softcap,
        k_base, v_base, mask_base, kcos_base, ksin_base, stride_kn, stride_kd, stride_vn, stride_vd,
        stride_mm, stride_mn, stride_kcn, stride_kcd, HEAD_D, HEAD_DV, BLOCK_D, BLOCK_DV, BLOCK_N, CAUSAL, LEFT,
        RIGHT, LOCAL_BLOCK, GLOBAL, HAS_SOFTCAP, MASK_KIND, ROPE, ROTARY_DIM, DOT_PRECISION, UPCAST, True)
    acc, l_i, m_i, n_left = _attend_range(
        acc, l_i, m_i, q, lo, full_lo, hi, offs_m, Sq, scale, softcap,
        k_base, v_base, mask_base, kcos_base, ksin_base, stride_kn, stride_kd, stride_vn, stride_vd,
        stride_mm, stride_mn, stride_kcn, stride_kcd, HEAD_D, HEAD_DV, BLOCK_D, BLOCK_DV, BLOCK_N, CAUSAL, LEFT,
        RIGHT, LOCAL_BLOCK, GLOBAL, HAS_SOFTCAP, MASK_KIND, ROPE, ROTARY_DIM, DOT_PRECISION, UPCAST, True)
    acc, l_i, m_i, n_full = _attend_range(
        acc, l_i, m_i, q, full_lo, full_hi, hi, offs_m, Sq, scale, softcap,
        k_base, v_base, mask_base, kcos_base, ksin_base, stride_kn, stride_kd, stride_vn, stride_vd,
        stride_mm, stride_mn, stride_kcn, stride_kcd, HEAD_D, HEAD_DV, BLOCK_D, BLOCK_DV, BLOCK_N, CAUSAL, LEFT,
        RIGHT, LOCAL_BLOCK, GLOBAL, HAS_SOFTCAP, MASK_KIND, ROPE, ROTARY_DIM, DOT_PRECISION, UPCAST, False)
    acc, l_i, m_i, n_right = _attend_range(
        acc, l_i, m_i, q, full_hi, hi, hi, offs_m, Sq, scale, softcap,
        k_base, v_base, mask_base, kcos_base, ksin_base, stride_kn, stride_kd, stride_vn, stride_vd,
        stride_mm, stride_mn, stride_kcn, stride_kcd, HEAD_D, HEAD_DV, BLOCK_D, BLOCK_DV, BLOCK_N, CAUSAL, LEFT,
        RIGHT, LOCAL_BLOCK, GLOBAL, HAS_SOFTCAP, MASK_KIND, ROPE, ROTARY_DIM, DOT_PRECISION, UPCAST, True)

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # l = 0: the row saw no key, its acc is 0
    offs_dv = tl.arange(0, BLOCK_DV)
    o_base = o_ptr + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    tl.store(o_base + offs_m[:, None] * stride_om + offs_dv[None, :] * stride_od, out.to(o_ptr.dtype.element_ty),
             mask=m_ok[:, None] & (offs_dv[None, :] < HEAD_DV))
    if COUNT_VISITS:  # (tiles loaded, tiles masked) per program
        slot = visits_ptr + tl.program_id(0) * 2
        tl.store(slot, n_global + n_left + n_full + n_right)
        tl.store(slot + 1, n_global + n_left + n_right)


def _as_4d(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """t broadcast (numpy rules, no copy) to the 4-d `shape`."""
    return t.reshape((1,) * (4 - t.dim()) + tuple(t.shape)).expand(shape)


def _unsupported(q, k, v, cos) -> str | None:
    """What about these operands the kernel cannot compute, or None."""
    if q.dtype not in SUPPORTED_DTYPES:
        return f"dtype {q.dtype} (the kernel takes float32, float16, bfloat16)"
    if k.dtype != q.dtype or v.dtype != q.dtype:
        return f"mixed dtypes q {q.dtype}, k {k.dtype}, v {v.dtype}"
    if q.shape[-1] > MAX_HEAD_DIM or v.shape[-1] > MAX_HEAD_DIM:
        return f"head dims {q.shape[-1]}/{v.shape[-1]} over {MAX_HEAD_DIM}"
    if cos is not None and cos.dtype != q.dtype:
        return f"rope cache dtype {cos.dtype} differs from q's {q.dtype}"
    if not q.is_cuda and not INTERPRETING:
        return "CPU tensors outside TRITON_INTERPRET=1"
    return None


def _launch(q, k, v, mask, cos, sin, a: AttentionAttrs, visits: torch.Tensor | None = None) -> torch.Tensor:
    """Run the kernel; `visits`, when given ([B*Hq, query blocks, 2] int32), receives each program's
    (key tiles loaded, of them masked)."""
    reason = _unsupported(q, k, v, cos)
    if reason is not None:
        raise NotImplementedError(f"triton attention kernel: {reason}")
    bsz, hq, sq, d = q.shape
    hkv, sk, dv = k.shape[1], k.shape[2], v.shape[-1]
    out = torch.empty((bsz, hq, sq, dv), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    if sk == 0:  # no key at all: every row sees nothing
        return out.zero_()
    mask_kind, mask4 = NO_MASK, q  # q stands in for absent operands: never read
    if mask is not None:
        mask_kind = BOOL_MASK if mask.dtype == torch.bool else ADDITIVE_MASK
        mask4 = _as_4d(mask.view(torch.uint8) if mask.dtype == torch.bool else mask, (bsz, hq, sq, sk))
    qcos = qsin = kcos = ksin = q
    if a.rope != "none":
        if a.rope_cache == "paired":  # the reference checks the claim too
            check_paired(cos, a.rope == "interleaved", "rope cos")
            check_paired(sin, a.rope == "interleaved", "rope sin")
        r = a.rotary_dim
        cos, sin = cos.contiguous(), sin.contiguous()  # one set of strides for both
        qcos, qsin = _as_4d(cos, (bsz, hq, sq, r)), _as_4d(sin, (bsz, hq, sq, r))
        kcos, ksin = _as_4d(cos, (bsz, hkv, sk, r)), _as_4d(sin, (bsz, hkv, sk, r))
    count = visits is not None
    visits = visits if count else out
    left, right = a.window

    def grid(meta):
        return (triton.cdiv(sq, meta["BLOCK_M"]) * bsz * hq,)

    _attention_fwd[grid](
        q, k, v, out, mask4, qcos, qsin, kcos, ksin, visits,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *mask4.stride(), *qcos.stride(), *kcos.stride(),
        hq, sq, sk, float(a.scale), float(a.softcap), triton.next_power_of_2(sq),
        GROUP=hq // hkv, HEAD_D=d, HEAD_DV=dv,
        BLOCK_D=max(16, triton.next_power_of_2(d)), BLOCK_DV=max(16, triton.next_power_of_2(dv)),
        CAUSAL=bool(a.causal), LEFT=int(left), RIGHT=int(right), LOCAL_BLOCK=int(a.block),
        GLOBAL=int(a.global_tokens), HAS_SOFTCAP=a.softcap > 0, MASK_KIND=mask_kind,
        ROPE=ROPE_CODES[a.rope], ROTARY_DIM=int(a.rotary_dim),
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        UPCAST=INTERPRETING and q.dtype == torch.bfloat16, COUNT_VISITS=count,
    )
    return out


def attention(*operands: torch.Tensor, attrs: AttentionAttrs) -> torch.Tensor:
    """The IR op `attention(q, k, v, mask?, cos?, sin?) {attrs}` on the Triton kernel.

    Same operands, order and result (shape and dtype) as `attention_reference`;
    raises NotImplementedError for inputs the kernel does not handle (see the
    module docstring) so that a backend can fall back.
    """
    q, k, v, mask, cos, sin = attention_operands(operands, attrs)
    from .decode_attention import applies, decode_attention  # imported late: it builds on this module

    if applies(q, k, attrs) and _unsupported(q, k, v, cos) is None:  # a decode step over a KV cache
        return decode_attention(q, k, v, mask, attrs)
    return _launch(q, k, v, mask, cos, sin, attrs)


def attention_key_tile_visits(*operands: torch.Tensor, attrs: AttentionAttrs) -> tuple[torch.Tensor, int, int]:
    """Run the kernel; return (visits, BLOCK_M, BLOCK_N), visits [B*Hq, query blocks, 2] holding each
    program's (key tiles loaded, of them masked), as the kernel counted them.

    A diagnostic for tests and benchmarks: it shows that structure skips key tiles.
    """
    q, k, v, mask, cos, sin = attention_operands(operands, attrs)
    if len(CONFIGS) != 1:
        raise NotImplementedError("visit counts need one kernel config (TRITON_INTERPRET=1)")
    cfg = CONFIGS[0].kwargs
    n_blocks = math.ceil(q.shape[2] / cfg["BLOCK_M"])
    visits = torch.full((q.shape[0] * q.shape[1], n_blocks, 2), -1, dtype=torch.int32, device=q.device)
    _launch(q, k, v, mask, cos, sin, attrs, visits=visits)
    return visits, cfg["BLOCK_M"], cfg["BLOCK_N"]

"""Chunked linear attention for the IR op `linear_attention` (t2c/ir/opdefs/attention.py) in Triton.

Contract: `linear_attention(q, k, v, attrs=LinearAttentionAttrs)` takes the IR op's operands in
its order and returns what `linear_attention_reference` returns: out [B, Hq, Sq, Dv] in q's
dtype, contiguous.

Layouts (any strides): q [B, Hq, Sq, D], k [B, Hkv, Sk, D], v [B, Hkv, Sk, Dv]; query head h
reads KV head h // (Hq / Hkv) (grouped-query attention: K, V and their states are never
repeated). Causal needs Sq == Sk (query i and key j share one index space, i, j from 0).

Math, with phi(x) = elu(x) + 1 = (x > 0 ? x + 1 : exp(x)), everything in float32:

    non-causal: out_i = phi(q_i) S / (phi(q_i) . z),   S = sum_j phi(k_j)^T v_j  [D, Dv],
                                                        z = sum_j phi(k_j)        [D]
    causal:     the sums run over j <= i

Kernels, the keys cut into chunks of CHUNK positions (the last one partial, masked):

    1. _chunk_states   per (batch, KV head, chunk, Dv tile):  S_c = phi(K_c)^T V_c,
                       z_c = phi(K_c)^T 1, into a float32 buffer [chunks, D_pad, Dv_pad]
    2. _chunk_prefix   per (batch, KV head, slice of the state): walks the chunks in order,
                       PREFIX_CHUNKS at a time (a scan within, a running sum across);
                       causal: S_c <- S_0 + ... + S_{c-1} in place (exclusive prefix);
                       non-causal: the total, once
    3. _chunk_outputs  per (batch, query head, chunk of queries, Dv tile):
                       num = phi(Q_c) S_pre + mask(phi(Q_c) phi(K_c)^T) V_c
                       den = phi(Q_c) z_pre + rowsum(mask(phi(Q_c) phi(K_c)^T))
                       with mask = (j <= i) inside the diagonal chunk (causal only; non-causal
                       query tiles read the total state and nothing else); out = num / den

so work is O(S (CHUNK + D) Dv) per head, and every phase is parallel over chunks: the only
sequential walk is the prefix, an elementwise sum of [D, Dv] states. Kernels 1 and 3 read the
features D_TILE (<= 64) at a time in a loop and the values in Dv tiles of DV_TILE (<= 64, one
program each), so registers and shared memory stay bounded at any head dim. Padded feature
lanes and key rows past Sk are zeroed after phi (phi(0) = 1 would otherwise count them). The
state buffer holds ceil(Sk / CHUNK) * D_pad * Dv_pad floats per (batch, KV head) (8 MiB at
Sk = 32k, D = Dv = 64); D_pad and Dv_pad are D and Dv rounded up to whole tiles.

Dtypes: float32, float16, bfloat16 (q, k, v may differ among them: each is widened to float32
on load, as the reference's .to(float32) does); dots in IEEE float32 (no TF32: the reference
computes halves in float32, so the only rounding allowed is the final one to q's dtype, round
to nearest even; bfloat16 is rounded with integer ops because the interpreter truncates).
Head dims any size (tiles are powers of two, at least 16, masked loads); sequence lengths any
(masked last chunk); Sq != Sk when non-causal.

Limits: feature maps other than "elu1", float64 and other dtypes, and CPU tensors outside
TRITON_INTERPRET=1 raise NotImplementedError naming the reason (the
backend checks `supports` and `SUPPORTED_DTYPES` first and keeps such nodes on the generic
path); causal with Sq != Sk raises ValueError, as the reference cannot compute it either.

On a GPU num_warps (4 or 8) of the state and output kernels is autotuned, keyed by head dims
and tiles, not by length (CHUNK is fixed per launch, 64, because all three kernels must share
it); the interpreter runs one config and CHUNK 16, so short test sequences still span several
chunks.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

from ..ir.opdefs.attention import LinearAttentionAttrs
from .norm import _round_to  # float32 -> out dtype, ties to even (bf16 by integer ops: the interpreter truncates)

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FEATURES = ("elu1",)
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

# Positions per chunk (and query rows per non-causal tile); a power of two, at least 16 (tl.dot).
CHUNK = 16 if INTERPRETING else 64
# Widest feature (D) and value (Dv) tiles: a program holds [D_TILE, DV_TILE] of the state and
# [CHUNK, D_TILE] of phi(Q) at a time, so registers and shared memory stay bounded at any head dim.
MAX_D_TILE = 64
MAX_DV_TILE = 64
# The prefix programs' tile: PREFIX_CHUNKS chunks (a step) x PREFIX_BLOCK state elements (a
# slice of the flattened [D_pad, Dv_pad] state), both powers of two; the interpreter pays per
# program, a GPU wants many.
PREFIX_CHUNKS = 16
PREFIX_BLOCK = 4096 if INTERPRETING else 256

# The interpreter runs every config it is given: one there. On a GPU the warps per program
# (the [64, 64] float32 tiles take 4 or 8); the feature loop is one or a few steps, so stages
# hardly matter, and each config costs a compile.
_AUTOTUNE_CONFIGS = (
    [triton.Config({}, num_warps=4, num_stages=1)]
    if INTERPRETING
    else [triton.Config({}, num_warps=w, num_stages=2) for w in (4, 8)]
)


@triton.jit
def _phi_tile(base, offs_s, s_ok, d0, stride_s, stride_d, HEAD_D: tl.constexpr, D_TILE: tl.constexpr):
    """phi(x) = elu(x) + 1 of features [d0, d0 + D_TILE) of a [rows, D] tile in float32; 0 on rows
    past the sequence and on padded features (phi(0) = 1 would count them)."""
    offs_d = d0 + tl.arange(0, D_TILE)
    ok = s_ok[:, None] & (offs_d[None, :] < HEAD_D)
    x = tl.load(base + offs_s[:, None] * stride_s + offs_d[None, :] * stride_d, mask=ok, other=0.0).to(tl.float32)
    phi = tl.where(x > 0, x + 1.0, tl.exp(tl.minimum(x, 0.0)))  # the min: no overflow in the unused branch
    return tl.where(ok, phi, 0.0)


@triton.jit
def _load_v(base, offs_s, s_ok, dv0, stride_s, stride_d, HEAD_DV: tl.constexpr, DV_TILE: tl.constexpr):
    """Columns [dv0, dv0 + DV_TILE) of a [rows, Dv] tile in float32, 0 where masked."""
    offs_dv = dv0 + tl.arange(0, DV_TILE)
    ok = s_ok[:, None] & (offs_dv[None, :] < HEAD_DV)
    return tl.load(base + offs_s[:, None] * stride_s + offs_dv[None, :] * stride_d, mask=ok, other=0.0).to(tl.float32)


@triton.autotune(configs=_AUTOTUNE_CONFIGS, key=["HEAD_D", "HEAD_DV", "D_TILE", "DV_TILE", "CHUNK"])
@triton.jit
def _chunk_states(k_ptr, v_ptr, s_ptr, z_ptr,
                  stride_kb, stride_kh, stride_kn, stride_kd,
                  stride_vb, stride_vh, stride_vn, stride_vd,
                  H_KV, Sk, n_chunks, D_PAD, DV_PAD,
                  HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, D_TILE: tl.constexpr, DV_TILE: tl.constexpr,
                  CHUNK: tl.constexpr):
    """One program: S_c[:, tile] = phi(K_c)^T V_c[:, tile] and (first tile) z_c = sum phi(K_c) of one
    chunk, D_TILE features at a time. States are [B * H_KV * n_chunks, D_PAD, DV_PAD], z [.., D_PAD]."""
    pid = tl.program_id(0)  # (batch, kv head, chunk), chunks of one head adjacent
    dv0 = tl.program_id(1) * DV_TILE
    c = pid % n_chunks
    bh = pid // n_chunks
    b = bh // H_KV
    h = bh % H_KV
    offs_n = c * CHUNK + tl.arange(0, CHUNK)
    n_ok = offs_n < Sk
    k_base = k_ptr + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    vv = _load_v(v_ptr + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh, offs_n, n_ok, dv0,
                 stride_vn, stride_vd, HEAD_DV, DV_TILE)
    slot = pid.to(tl.int64)
    offs_dv = dv0 + tl.arange(0, DV_TILE)
    for d0 in range(0, D_PAD, D_TILE):
        fk = _phi_tile(k_base, offs_n, n_ok, d0, stride_kn, stride_kd, HEAD_D, D_TILE)
        state = tl.dot(tl.trans(fk), vv, input_precision="ieee")  # [D_TILE, DV_TILE]
        offs_d = d0 + tl.arange(0, D_TILE)
        tl.store(s_ptr + slot * D_PAD * DV_PAD + offs_d[:, None] * DV_PAD + offs_dv[None, :], state)
        if tl.program_id(1) == 0:
            tl.store(z_ptr + slot * D_PAD + offs_d, tl.sum(fk, 0))


@triton.jit
def _chunk_prefix(x_ptr, total_ptr, n_chunks, E, TOTAL: tl.constexpr, BLOCK_C: tl.constexpr,
                  BLOCK_E: tl.constexpr):
    """x [G, n_chunks, E]: one program sums BLOCK_E elements of one group's states over the chunks,
    in order, BLOCK_C chunks a step (a scan inside the step, a running sum across steps, so the
    sequential chain is n_chunks / BLOCK_C loads long). TOTAL: the sum goes to total [G, E];
    else x becomes its exclusive prefix, in place."""
    g = tl.program_id(0).to(tl.int64)
    offs_e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    e_ok = offs_e < E
    offs_c = tl.arange(0, BLOCK_C)
    run = tl.zeros([BLOCK_E], tl.float32)
    base = x_ptr + g * n_chunks * E
    for c0 in range(0, n_chunks, BLOCK_C):
        chunks = c0 + offs_c
        ok = (chunks < n_chunks)[:, None] & e_ok[None, :]
        ptrs = base + chunks.to(tl.int64)[:, None] * E + offs_e[None, :]
        x = tl.load(ptrs, mask=ok, other=0.0)
        if not TOTAL:
            tl.store(ptrs, run[None, :] + tl.cumsum(x, 0) - x, mask=ok)
        run += tl.sum(x, 0)
    if TOTAL:
        tl.store(total_ptr + g * E + offs_e, run, mask=e_ok)


@triton.autotune(configs=_AUTOTUNE_CONFIGS, key=["HEAD_D", "HEAD_DV", "D_TILE", "DV_TILE", "CHUNK", "CAUSAL"])
@triton.jit
def _chunk_outputs(q_ptr, k_ptr, v_ptr, s_ptr, z_ptr, o_ptr,
                   stride_qb, stride_qh, stride_qm, stride_qd,
                   stride_kb, stride_kh, stride_kn, stride_kd,
                   stride_vb, stride_vh, stride_vn, stride_vd,
                   stride_ob, stride_oh, stride_om, stride_od,
                   H_Q, H_KV, Sq, Sk, n_q_chunks, n_state_chunks, D_PAD, DV_PAD,
                   GROUP: tl.constexpr, HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, D_TILE: tl.constexpr,
                   DV_TILE: tl.constexpr, CHUNK: tl.constexpr, CAUSAL: tl.constexpr):
    """One program: CHUNK query rows, Dv columns [dv0, dv0 + DV_TILE), of one (batch, query head).

    States s [B * H_KV * n_state_chunks, D_PAD, DV_PAD] and z [.., D_PAD]: causal, the exclusive
    prefix of each chunk (n_state_chunks = n_q_chunks); non-causal, the total (n_state_chunks = 1).
    The features are read D_TILE at a time, accumulating num, den and (causal) phi(Q_c) phi(K_c)^T."""
    pid = tl.program_id(0)
    dv0 = tl.program_id(1) * DV_TILE
    c = pid % n_q_chunks
    bh = pid // n_q_chunks
    b = bh // H_Q
    h = bh % H_Q
    h_kv = h // GROUP  # grouped-query attention: the shared KV head's states and keys
    offs_m = c * CHUNK + tl.arange(0, CHUNK)
    m_ok = offs_m < Sq
    n_ok = offs_m < Sk  # causal: the diagonal chunk's keys sit at the queries' positions
    q_base = q_ptr + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    k_base = k_ptr + b.to(tl.int64) * stride_kb + h_kv.to(tl.int64) * stride_kh
    slot = (b * H_KV + h_kv).to(tl.int64) * n_state_chunks
    if CAUSAL:
        slot += c
    offs_dv = dv0 + tl.arange(0, DV_TILE)

    num = tl.zeros([CHUNK, DV_TILE], tl.float32)  # phi(Q_c) S: the chunks before this one
    den = tl.zeros([CHUNK], tl.float32)
    a = tl.zeros([CHUNK, CHUNK], tl.float32)  # phi(Q_c) phi(K_c)^T (causal)
    for d0 in range(0, D_PAD, D_TILE):
        fq = _phi_tile(q_base, offs_m, m_ok, d0, stride_qm, stride_qd, HEAD_D, D_TILE)
        offs_d = d0 + tl.arange(0, D_TILE)
        state = tl.load(s_ptr + slot * D_PAD * DV_PAD + offs_d[:, None] * DV_PAD + offs_dv[None, :])
        z = tl.load(z_ptr + slot * D_PAD + offs_d)
        num = tl.dot(fq, state, num, input_precision="ieee")
        den += tl.sum(fq * z[None, :], 1)
        if CAUSAL:
            fk = _phi_tile(k_base, offs_m, n_ok, d0, stride_kn, stride_kd, HEAD_D, D_TILE)
            a = tl.dot(fq, tl.trans(fk), a, input_precision="ieee")
    if CAUSAL:  # the diagonal chunk: keys c*CHUNK .. i of each row i, as a masked matmul
        rows = tl.arange(0, CHUNK)
        a = tl.where(rows[None, :] <= rows[:, None], a, 0.0)
        vv = _load_v(v_ptr + b.to(tl.int64) * stride_vb + h_kv.to(tl.int64) * stride_vh, offs_m, n_ok, dv0,
                     stride_vn, stride_vd, HEAD_DV, DV_TILE)
        num = tl.dot(a, vv, num, input_precision="ieee")
        den += tl.sum(a, 1)
    den = tl.where(m_ok, den, 1.0)  # rows past Sq are not stored; keep them finite
    out = num / den[:, None]
    o_base = o_ptr + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    tl.store(o_base + offs_m[:, None] * stride_om + offs_dv[None, :] * stride_od,
             _round_to(out, o_ptr.dtype.element_ty), mask=m_ok[:, None] & (offs_dv[None, :] < HEAD_DV))


def supports(attrs: LinearAttentionAttrs) -> bool:
    """Whether the kernel computes a node with these attrs (dtypes and shapes are checked at launch)."""
    return attrs.feature in FEATURES


def _unsupported(q, k, v, attrs) -> Optional[str]:
    """What about these operands the kernel cannot compute, or None."""
    if attrs.feature not in FEATURES:
        return f"feature map {attrs.feature!r} (the kernel computes {', '.join(FEATURES)})"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype not in SUPPORTED_DTYPES:
            return f"{name} of dtype {t.dtype} (the kernel takes float32, float16, bfloat16)"
    if not q.is_cuda and not INTERPRETING:
        return "CPU tensors outside TRITON_INTERPRET=1"
    return None


def _check_shapes(q, k, v, attrs) -> None:
    if not (q.dim() == k.dim() == v.dim() == 4):
        raise ValueError("linear_attention: q, k, v must be [batch, heads, seq, head_dim]")
    bsz, hq, sq, d = q.shape
    if k.shape[0] != bsz or v.shape[0] != bsz or k.shape[-1] != d:
        raise ValueError(f"linear_attention: q {tuple(q.shape)} and k {tuple(k.shape)} disagree on batch or head dim")
    if k.shape[1:3] != v.shape[1:3]:
        raise ValueError(f"linear_attention: k {tuple(k.shape)} and v {tuple(v.shape)} disagree on heads or length")
    hkv = k.shape[1]
    if hkv == 0 or hq % hkv:
        raise ValueError(f"linear_attention: {hkv} KV heads do not divide {hq} query heads")
    if attrs.kv_heads and attrs.kv_heads != hkv:
        raise ValueError(f"linear_attention: kv_heads={attrs.kv_heads} but k has {hkv} heads")
    if attrs.causal and k.shape[2] != sq:
        raise ValueError(f"linear_attention: causal needs as many keys as queries, got {k.shape[2]} and {sq}")


def _tile(n: int, widest: int, override: Optional[int], what: str) -> int:
    """The tile for a dim of n: `override`, checked, or the next power of two (16 to `widest`)."""
    if override is None:
        return min(max(16, triton.next_power_of_2(n)), widest)
    if override < 16 or override & (override - 1):
        raise ValueError(f"{what} must be a power of two, at least 16, got {override}")
    return override


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, attrs: LinearAttentionAttrs,
                     chunk: Optional[int] = None, d_tile: Optional[int] = None,
                     dv_tile: Optional[int] = None) -> torch.Tensor:
    """The IR op `linear_attention(q, k, v) {attrs}` on the Triton kernels.

    Same operands, order and result (shape, dtype) as `linear_attention_reference`; raises
    NotImplementedError for inputs the kernels do not handle (module docstring), so a caller can
    fall back. `chunk`, `d_tile` and `dv_tile` (powers of two, at least 16) override the chunk
    length and the feature and value tiles (tests and tuning)."""
    reason = _unsupported(q, k, v, attrs)
    if reason is not None:
        raise NotImplementedError(f"triton linear_attention kernel: {reason}")
    _check_shapes(q, k, v, attrs)
    bsz, hq, sq, d = q.shape
    hkv, sk, dv = k.shape[1], k.shape[2], v.shape[-1]
    out = torch.empty((bsz, hq, sq, dv), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    if sk == 0 or d == 0:  # no key (or no feature): num = den = 0, as the reference computes
        return out.fill_(float("nan"))

    chunk = _tile(CHUNK, CHUNK, chunk, "chunk")
    d_tile = _tile(d, MAX_D_TILE, d_tile, "d_tile")
    dv_tile = _tile(dv, MAX_DV_TILE, dv_tile, "dv_tile")
    d_pad = triton.cdiv(d, d_tile) * d_tile
    n_dv_tiles = triton.cdiv(dv, dv_tile)
    dv_pad = n_dv_tiles * dv_tile
    n_chunks = triton.cdiv(sk, chunk)
    groups = bsz * hkv
    tiles = dict(HEAD_D=d, HEAD_DV=dv, D_TILE=d_tile, DV_TILE=dv_tile, CHUNK=chunk)

    # per-chunk states, padded to whole tiles (the padding computes to 0 and is never read back)
    states = torch.empty((groups * n_chunks, d_pad, dv_pad), dtype=torch.float32, device=q.device)
    zs = torch.empty((groups * n_chunks, d_pad), dtype=torch.float32, device=q.device)
    _chunk_states[(groups * n_chunks, n_dv_tiles)](
        k, v, states, zs, *k.stride(), *v.stride(), hkv, sk, n_chunks, d_pad, dv_pad, **tiles)

    causal = bool(attrs.causal)
    if causal:  # in place: chunk c's slot becomes the sum of the chunks before it
        s_read, z_read, n_state = states, zs, n_chunks
    else:
        s_read = torch.empty((groups, d_pad, dv_pad), dtype=torch.float32, device=q.device)
        z_read = torch.empty((groups, d_pad), dtype=torch.float32, device=q.device)
        n_state = 1
    for x, total in ((states, s_read), (zs, z_read)):
        e = x.numel() // (groups * n_chunks)
        _chunk_prefix[(groups, triton.cdiv(e, PREFIX_BLOCK))](
            x, total, n_chunks, e, TOTAL=not causal, BLOCK_C=PREFIX_CHUNKS,
            BLOCK_E=min(PREFIX_BLOCK, triton.next_power_of_2(e)), num_warps=4)

    n_q_chunks = triton.cdiv(sq, chunk)
    _chunk_outputs[(bsz * hq * n_q_chunks, n_dv_tiles)](
        q, k, v, s_read, z_read, out, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        hq, hkv, sq, sk, n_q_chunks, n_state, d_pad, dv_pad, GROUP=hq // hkv, CAUSAL=causal, **tiles)
    return out

"""Split-K decode attention (flash-decoding) for the IR op `attention` over a KV cache.

Contract: `decode_attention(q, k, v, mask, attrs)` returns what `attention_reference` returns for
an `attention` with no structure (not causal, no window, block or global tokens: a `--with-past`
graph puts all of that into the mask) and no RoPE prologue: out [B, Hq, Sq, Dv] in q's dtype.
`applies(...)` says when t2c/kernels/attention.py routes a call here: few query rows per KV head
(GROUP * Sq <= MAX_ROWS, a decode step or a short chunk) against more keys than queries (a cache;
the prompt's own step, Sq = Sk, stays on the flash kernel).

Why a second kernel: the flash kernel gives each program one block of query rows and walks every
key, so a decode step (Sq = 1) runs B * Hq programs, each over the whole cache: a long context
leaves most of the GPU idle and reads each KV head GROUP times. Here a program takes one KV head
with all GROUP * Sq query rows of its query heads (K and V read once), and the key axis is split
into chunks handled by separate programs:

    split s of the keys:  m_s, l_s, acc_s = online softmax of the rows over keys in chunk s
    combine:              M = max_s m_s;  out = sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M) l_s

(0 for a row that sees no key). Layouts (any strides): q [B, Hq, Sq, D], k [B, Hkv, Sk, D],
v [B, Hkv, Sk, Dv]; the mask broadcasts to [B, Hq, Sq, Sk] (bool: true = attend; float: added
to the scores); softcap as in the IR (before the mask). fp32, fp16, bf16, fp32 accumulation and
partials; head dims up to 256 (padded to powers of two). Splits: enough programs for about two
per SM on a GPU, each at least one BLOCK_N tile; under TRITON_INTERPRET=1 up to 4 splits of
16-key tiles (so tests cross split boundaries).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..ir.opdefs.attention import AttentionAttrs
from .attention import ADDITIVE_MASK, BOOL_MASK, INTERPRETING, MAX_HEAD_DIM, NO_MASK, SUPPORTED_DTYPES, _as_4d, _dot, _tanh

MAX_ROWS = 64  # GROUP * Sq rows in one program's query tile
BLOCK_N = 16 if INTERPRETING else 64
INTERPRETER_SPLITS = 4


def applies(q: torch.Tensor, k: torch.Tensor, a: AttentionAttrs) -> bool:
    """Whether the call is a decode step this kernel takes (see the module docstring)."""
    unstructured = not a.causal and a.window == (-1, -1) and a.block == 0 and a.global_tokens == 0 and a.rope == "none"
    group = q.shape[1] // max(k.shape[1], 1)
    return unstructured and q.shape[2] * group <= MAX_ROWS and q.shape[2] < k.shape[2]


@triton.jit
def _decode_split(q_ptr, k_ptr, v_ptr, mask_ptr, acc_ptr, ml_ptr,
                  sqb, sqh, sqs, sqd, skb, skh, skn, skd, svb, svh, svn, svd, smb, smh, sms, smn,
                  Hkv, Sq, Sk, chunk, splits, scale, softcap,
                  GROUP: tl.constexpr, HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                  HAS_SOFTCAP: tl.constexpr, MASK_KIND: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Partials (acc, m, l) of one KV head's GROUP * Sq rows over the keys of one split."""
    pid = tl.program_id(0)
    split = tl.program_id(1)
    b = pid // Hkv
    hk = pid % Hkv
    rows = tl.arange(0, BLOCK_M)
    head = hk * GROUP + rows // Sq
    qi = rows % Sq
    r_ok = rows < GROUP * Sq
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = tl.load(q_ptr + b.to(tl.int64) * sqb + head[:, None] * sqh + qi[:, None] * sqs + offs_d[None, :] * sqd,
                mask=r_ok[:, None] & (offs_d[None, :] < HEAD_D), other=0.0)
    k_base = k_ptr + b.to(tl.int64) * skb + hk * skh
    v_base = v_ptr + b.to(tl.int64) * svb + hk * svh
    m_rows = mask_ptr + b.to(tl.int64) * smb + head.to(tl.int64) * smh + qi.to(tl.int64) * sms
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    start = split * chunk
    stop = tl.minimum(start + chunk, Sk)
    for n0 in range(start, stop, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < stop
        k = tl.load(k_base + offs_n[:, None] * skn + offs_d[None, :] * skd, mask=n_ok[:, None] & (offs_d[None, :] < HEAD_D), other=0.0)
        s = _dot(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), DOT_PRECISION, UPCAST) * scale
        if HAS_SOFTCAP:
            s = softcap * _tanh(s / softcap)
        if MASK_KIND != 0:
            mvals = tl.load(m_rows[:, None] + offs_n[None, :] * smn, mask=r_ok[:, None] & n_ok[None, :], other=0)
            if MASK_KIND == 1:
                s = s + mvals.to(tl.float32)
            else:
                s = tl.where(mvals != 0, s, float("-inf"))
        s = tl.where(n_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: exp gives 0, not nan
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_n[:, None] * svn + offs_dv[None, :] * svd, mask=n_ok[:, None] & (offs_dv[None, :] < HEAD_DV), other=0.0)
        acc = _dot(p.to(v.dtype), v, acc * alpha[:, None], DOT_PRECISION, UPCAST)
        m_i = m_new
    slot = (pid.to(tl.int64) * splits + split) * BLOCK_M
    tl.store(acc_ptr + (slot + rows)[:, None] * BLOCK_DV + offs_dv[None, :], acc)
    tl.store(ml_ptr + (slot + rows) * 2, m_i)
    tl.store(ml_ptr + (slot + rows) * 2 + 1, l_i)


@triton.jit
def _decode_combine(acc_ptr, ml_ptr, o_ptr, sob, soh, sos, sod, Hkv, Sq, splits,
                    GROUP: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr):
    """out = the splits' partials merged by their maxima; 0 for rows that saw no key."""
    pid = tl.program_id(0)
    b = pid // Hkv
    hk = pid % Hkv
    rows = tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    m_all = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_all = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    for split in range(0, splits):
        slot = (pid.to(tl.int64) * splits + split) * BLOCK_M
        m_s = tl.load(ml_ptr + (slot + rows) * 2)
        l_s = tl.load(ml_ptr + (slot + rows) * 2 + 1)
        a_s = tl.load(acc_ptr + (slot + rows)[:, None] * BLOCK_DV + offs_dv[None, :])
        m_new = tl.maximum(m_all, m_s)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_all - m_safe)
        beta = tl.exp(m_s - m_safe)
        l_all = l_all * alpha + l_s * beta
        acc = acc * alpha[:, None] + a_s * beta[:, None]
        m_all = m_new
    out = tl.where(l_all[:, None] > 0, acc / tl.where(l_all > 0, l_all, 1.0)[:, None], 0.0)
    head = hk * GROUP + rows // Sq
    qi = rows % Sq
    r_ok = rows < GROUP * Sq
    tl.store(o_ptr + b.to(tl.int64) * sob + head[:, None] * soh + qi[:, None] * sos + offs_dv[None, :] * sod,
             out.to(o_ptr.dtype.element_ty), mask=r_ok[:, None] & (offs_dv[None, :] < HEAD_DV))


def _splits(programs: int, sk: int, device: torch.device) -> int:
    """How many key chunks: about two programs per SM in all (one under the interpreter), each >= one tile."""
    tiles = triton.cdiv(sk, BLOCK_N)
    if INTERPRETING or device.type != "cuda":
        return max(1, min(INTERPRETER_SPLITS, tiles))
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(tiles, triton.cdiv(2 * sms, programs)))


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, a: AttentionAttrs) -> torch.Tensor:
    """The attention of a decode step on the split-K kernels (module docstring); NotImplementedError otherwise."""
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise NotImplementedError(f"triton decode attention: dtypes q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if q.shape[-1] > MAX_HEAD_DIM or v.shape[-1] > MAX_HEAD_DIM:
        raise NotImplementedError(f"triton decode attention: head dims {q.shape[-1]}/{v.shape[-1]} over {MAX_HEAD_DIM}")
    if not applies(q, k, a):
        raise NotImplementedError("triton decode attention: structure, RoPE or too many query rows per KV head")
    bsz, hq, sq, d = q.shape
    hkv, sk, dv = k.shape[1], k.shape[2], v.shape[-1]
    group = hq // hkv
    out = torch.empty((bsz, hq, sq, dv), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    if sk == 0:
        return out.zero_()
    mask_kind, mask4 = NO_MASK, q  # q stands in for an absent mask: never read
    if mask is not None:
        mask_kind = BOOL_MASK if mask.dtype == torch.bool else ADDITIVE_MASK
        mask4 = _as_4d(mask.view(torch.uint8) if mask.dtype == torch.bool else mask, (bsz, hq, sq, sk))
    block_m = max(16, triton.next_power_of_2(group * sq))
    block_d, block_dv = max(16, triton.next_power_of_2(d)), max(16, triton.next_power_of_2(dv))
    programs = bsz * hkv
    splits = _splits(programs, sk, q.device)
    chunk = triton.cdiv(triton.cdiv(sk, splits), BLOCK_N) * BLOCK_N
    splits = triton.cdiv(sk, chunk)  # no empty split
    partial_acc = torch.empty((programs, splits, block_m, block_dv), dtype=torch.float32, device=q.device)
    partial_ml = torch.empty((programs, splits, block_m, 2), dtype=torch.float32, device=q.device)
    _decode_split[(programs, splits)](
        q, k, v, mask4, partial_acc, partial_ml, *q.stride(), *k.stride(), *v.stride(), *mask4.stride(),
        hkv, sq, sk, chunk, splits, float(a.scale), float(a.softcap),
        GROUP=group, HEAD_D=d, HEAD_DV=dv, BLOCK_M=block_m, BLOCK_N=BLOCK_N, BLOCK_D=block_d, BLOCK_DV=block_dv,
        HAS_SOFTCAP=a.softcap > 0, MASK_KIND=mask_kind, DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        UPCAST=INTERPRETING and q.dtype == torch.bfloat16,
    )
    _decode_combine[(programs,)](partial_acc, partial_ml, out, *out.stride(), hkv, sq, splits,
                                 GROUP=group, HEAD_DV=dv, BLOCK_M=block_m, BLOCK_DV=block_dv)
    return out

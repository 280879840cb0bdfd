"""Semantic attention ops: `attention` (softmax, with structured masks) and `linear_attention`.

`attention(q, k, v, mask?, cos?, sin?)`, q [B, Hq, Sq, D], k [B, Hkv, Sk, D], v [B, Hkv, Sk, Dv]:

    q, k            = rope(q, cos, sin), rope(k, cos, sin)      if rope != "none"

    scores[b,h,i,j] = scale * q[b,h,i] . k[b,h // (Hq/Hkv),j]
    scores          = softcap * tanh(scores / softcap)          if softcap > 0
    visible(i, j)   = structural(i, j) and mask[b,h,i,j]        (bool mask), or
    scores         += mask[b,h,i,j]                             (additive float mask)
    out[b,h,i]      = softmax_j(scores where visible, else -inf) @ v[b, h // (Hq/Hkv)]

and a query row that sees no key gives zeros. With rope = "half" or
"interleaved", the LAST two operands are cos and sin and q and k are first
rotated by the `rope` op (t2c/ir/opdefs/rope.py) with interleaved = (rope ==
"interleaved") and that rotary_dim; the mask, if any, stays operand 3, so there
are 5 operands (no mask) or 6 (mask); with rope = "none", 3 or 4 and
rotary_dim = 0. Positions i and j share one index space (no KV cache: Sq == Sk in practice, and i, j count from 0). The structural
mask is, with -1 meaning "no limit":

    base(i, j)       = (left < 0 or j >= i - left) and (right < 0 or j <= i + right)
                       and (block == 0 or i // block == j // block)
    structural(i, j) = (base(i, j) or i < global_tokens or j < global_tokens)
                       and (not causal or j <= i)

So a causal sliding window of width w is `causal=true, window=[w-1,-1]`
(query i sees keys i-w+1..i), a bidirectional window is `window=[w-1,w-1]`
(|i - j| < w), and Longformer/BigBird global tokens are the first G positions.

`linear_attention(q, k, v)` with feature map phi(x) = elu(x) + 1:

    non-causal: out_i = phi(q_i) (sum_j phi(k_j)^T v_j) / (phi(q_i) . sum_j phi(k_j))
    causal:     the sums run over j <= i (prefix sums)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...errors import VerifyError
from ..core import DType, dims_equal
from ..ops import define_op


@dataclass(frozen=True)
class AttentionAttrs:
    scale: float = 1.0
    causal: bool = False
    window: tuple[int, int] = (-1, -1)  # (left, right) keys visible around each query; -1: unlimited
    block: int = 0  # block-local attention with this block size; 0: none
    global_tokens: int = 0  # the first G positions see and are seen by every position
    kv_heads: int = 0  # number of KV heads (grouped-query attention); must equal k's head dim
    softcap: float = 0.0  # logits soft-capping (Gemma-2 style); 0: none
    rope: str = "none"  # rotary embedding of q and k first: "none" | "half" | "interleaved"
    rotary_dim: int = 0  # features of q/k that rotate when rope != "none"
    rope_cache: str = "full"  # the rope's `cache` attr (t2c/ir/opdefs/rope.py): "full" | "paired"
    rope_positions: str = "input"  # the rope's `positions` attr: "input" | "length"


ROPE_KINDS = ("none", "half", "interleaved")


def attention_operands(operands, a: AttentionAttrs):
    """(q, k, v, mask, cos, sin) from an attention's operands (values, types or tensors); absent ones are None."""
    q, k, v = operands[0], operands[1], operands[2]
    rest = list(operands[3:])
    cos = sin = None
    if a.rope != "none":
        cos, sin = rest[-2:] if len(rest) >= 2 else (None, None)
        rest = rest[:-2]
    mask = rest[0] if rest else None
    return q, k, v, mask, cos, sin


def structural_mask(sq: int, sk: int, a: AttentionAttrs, device=None) -> torch.Tensor:
    """[Sq, Sk] bool: which keys each query may see, from the attrs alone."""
    i = torch.arange(sq, device=device)[:, None]
    j = torch.arange(sk, device=device)[None, :]
    left, right = a.window
    base = torch.ones(sq, sk, dtype=torch.bool, device=device)
    if left >= 0:
        base &= j >= i - left
    if right >= 0:
        base &= j <= i + right
    if a.block > 0:
        base &= (i // a.block) == (j // a.block)
    if a.global_tokens > 0:
        base |= (i < a.global_tokens) | (j < a.global_tokens)
    if a.causal:
        base &= j <= i
    return base


def has_structure(a: AttentionAttrs) -> bool:
    return a.causal or a.window != (-1, -1) or a.block > 0 or a.global_tokens > 0


def attention_reference(q, k, v, mask, a: AttentionAttrs, cos=None, sin=None) -> torch.Tensor:
    """Explicit masked-softmax attention; the semantics every lowering must reproduce."""
    if a.rope != "none":
        from .rope import rope_reference

        q = rope_reference(q, cos, sin, a.rope == "interleaved", a.rotary_dim, a.rope_cache)
        k = rope_reference(k, cos, sin, a.rope == "interleaved", a.rotary_dim)
    hq, hkv = q.shape[-3], k.shape[-3]
    if hq != hkv:
        k = k.repeat_interleave(hq // hkv, dim=-3)
        v = v.repeat_interleave(hq // hkv, dim=-3)
    compute = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    scores = (q.to(compute) @ k.to(compute).transpose(-1, -2)) * a.scale
    if a.softcap > 0:
        scores = a.softcap * torch.tanh(scores / a.softcap)
    visible = None
    if has_structure(a):
        visible = structural_mask(q.shape[-2], k.shape[-2], a, q.device)
    if mask is not None:
        if mask.dtype == torch.bool:
            visible = mask if visible is None else (visible & mask)
        else:
            scores = scores + mask.to(compute)
    if visible is not None:
        scores = scores.masked_fill(~visible, -math.inf)
    probs = torch.softmax(scores, dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)  # rows that see no key
    return (probs @ v.to(compute)).to(q.dtype)


def _attention_infer(types, a):
    q, v = types[0], types[2]
    return [q.with_shape(q.shape[:-1] + (v.shape[-1],))]


def _check_qkv(types, kv_heads: int, op: str) -> None:
    q, k, v = types[0], types[1], types[2]
    if not (q.rank == k.rank == v.rank == 4):
        raise VerifyError(f"{op}: q, k, v must be [batch, heads, seq, head_dim]")
    if not dims_equal(q.shape[-1], k.shape[-1]):
        raise VerifyError(f"{op}: q and k head dims differ")
    if not (dims_equal(k.shape[-2], v.shape[-2]) and dims_equal(k.shape[1], v.shape[1])):
        raise VerifyError(f"{op}: k and v disagree on heads or length")
    hq, hkv = q.shape[1], k.shape[1]
    if not (isinstance(hq, int) and isinstance(hkv, int) and hkv == kv_heads and hq % hkv == 0):
        raise VerifyError(f"{op}: kv_heads={kv_heads} must equal k's {hkv} heads and divide q's {hq}")
    if not q.dtype.is_float:
        raise VerifyError(f"{op}: q, k, v must be floating point")


def _attention_verify(types, a):
    _check_qkv(types, a.kv_heads, "attention")
    if has_structure(a) and not dims_equal(types[0].shape[-2], types[1].shape[-2]):
        # i and j count from 0 in one index space: with a KV cache (k longer than q) query i is
        # position past + i, which the structure cannot say; such attention keeps its mask operand.
        raise VerifyError("attention: causal, window, block and global-token structure need as many queries as keys")
    left, right = a.window
    if left < -1 or right < -1 or a.block < 0 or a.global_tokens < 0 or a.softcap < 0:
        raise VerifyError("attention: window bounds are >= -1; block, global_tokens and softcap are >= 0")
    if a.scale <= 0 or not math.isfinite(a.scale):
        raise VerifyError("attention: scale must be positive")
    if a.rope not in ROPE_KINDS:
        raise VerifyError(f"attention: rope must be one of {ROPE_KINDS}, got {a.rope!r}")
    if a.rope == "none":
        if len(types) > 4:
            raise VerifyError("attention: cos/sin operands need rope=\"half\" or \"interleaved\"")
        if a.rotary_dim != 0 or a.rope_cache != "full" or a.rope_positions != "input":
            raise VerifyError("attention: rotary_dim, rope_cache and rope_positions keep their defaults when rope is none")
    else:
        if len(types) not in (5, 6):
            raise VerifyError("attention: with rope the operands are (q, k, v, mask?, cos, sin)")
        from .rope import check_rope_source, check_rope_types

        check_rope_source(a.rope_cache, a.rope_positions, "attention")
        _, _, _, _, cos, sin = attention_operands(types, a)
        for x in (types[0], types[1]):
            check_rope_types(x, cos, sin, a.rope == "interleaved", a.rotary_dim, "attention")
    mask = attention_operands(types, a)[3]
    if mask is not None and mask.dtype not in (DType.BOOL,) and not mask.dtype.is_float:
        raise VerifyError("attention: the mask must be bool (true = keep) or float (added to the scores)")


def _attention_run(ts, a):
    q, k, v, mask, cos, sin = attention_operands(ts, a)
    return attention_reference(q, k, v, mask, a, cos, sin)


define_op(
    "attention",
    ("q", "k", "v", "mask?", "cos?", "sin?"),
    _attention_infer,
    lambda ctx, a, *ts: _attention_run(ts, a),
    AttentionAttrs,
    verify=_attention_verify,
    doc="softmax attention with causal / sliding-window / block-local / global-token structure, GQA, softcap, optional mask, optional rotary embedding of q and k (cos, sin last)",
)


@dataclass(frozen=True)
class LinearAttentionAttrs:
    feature: str = "elu1"  # phi(x) = elu(x) + 1
    causal: bool = False
    kv_heads: int = 0


FEATURE_MAPS = {"elu1": lambda x: F.elu(x) + 1.0}


def linear_attention_reference(q, k, v, a: LinearAttentionAttrs) -> torch.Tensor:
    """The explicit linear-attention formula (prefix sums when causal)."""
    hq, hkv = q.shape[-3], k.shape[-3]
    if hq != hkv:
        k = k.repeat_interleave(hq // hkv, dim=-3)
        v = v.repeat_interleave(hq // hkv, dim=-3)
    phi = FEATURE_MAPS[a.feature]
    compute = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    fq, fk, vv = phi(q.to(compute)), phi(k.to(compute)), v.to(compute)
    if a.causal:
        kv = torch.cumsum(fk.unsqueeze(-1) * vv.unsqueeze(-2), dim=-3)  # [B,H,S,D,Dv]
        z = torch.cumsum(fk, dim=-2)  # [B,H,S,D]
        num = (fq.unsqueeze(-2) @ kv).squeeze(-2)
        den = (fq * z).sum(-1, keepdim=True)
    else:
        num = fq @ (fk.transpose(-1, -2) @ vv)
        den = fq @ fk.sum(-2, keepdim=True).transpose(-1, -2)
    return (num / den).to(q.dtype)


def _linear_verify(types, a):
    _check_qkv(types, a.kv_heads, "linear_attention")
    if a.feature not in FEATURE_MAPS:
        raise VerifyError(f"linear_attention: feature must be one of {sorted(FEATURE_MAPS)}")


define_op(
    "linear_attention",
    ("q", "k", "v"),
    _attention_infer,
    lambda ctx, a, q, k, v: linear_attention_reference(q, k, v, a),
    LinearAttentionAttrs,
    verify=_linear_verify,
    doc="linear attention phi(Q)(phi(K)^T V) / (phi(Q) phi(K)^T 1), phi = elu + 1; causal with prefix sums",
)

"""Neural-network ops kept whole from the frontend: linear, matmul, embedding, norms, SDPA."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ...errors import VerifyError
from ..core import TensorType, dims_equal
from ..ops import define_op
from ._infer import broadcast_shapes, promote, require_float


def _linear_infer(types, a):
    x, w = types[0], types[1]
    if w.rank != 2 or not dims_equal(x.shape[-1], w.shape[1]):
        raise VerifyError(f"linear: input {x} does not match weight {w}")
    return [x.with_shape(x.shape[:-1] + (w.shape[0],))]


define_op(
    "linear",
    ("x", "weight", "bias?"),
    _linear_infer,
    lambda ctx, a, x, w, b=None: F.linear(x, w, b),
    doc="x @ weight.T + bias (weight is [out, in])",
)


def _matmul_infer(types, a):
    x, y = types
    if x.rank < 1 or y.rank < 1:
        raise VerifyError("matmul needs tensors of rank >= 1")
    xs = x.shape if x.rank > 1 else (1,) + x.shape
    ys = y.shape if y.rank > 1 else y.shape + (1,)
    if not dims_equal(xs[-1], ys[-2]):
        raise VerifyError(f"matmul: inner dims of {x} and {y} differ")
    batch = broadcast_shapes(xs[:-2], ys[:-2])
    out = list(batch) + ([xs[-2]] if x.rank > 1 else []) + ([ys[-1]] if y.rank > 1 else [])
    return [TensorType(promote(x, y), tuple(out))]


define_op("matmul", ("a", "b"), _matmul_infer, lambda ctx, a, x, y: torch.matmul(x, y), doc="torch.matmul with batch broadcasting")


@dataclass(frozen=True)
class EmbeddingAttrs:
    padding_idx: int = -1  # only matters for training; kept for fidelity


define_op(
    "embedding",
    ("weight", "ids"),
    lambda types, a: [TensorType(types[0].dtype, types[1].shape + (types[0].shape[1],))],
    lambda ctx, a, w, ids: F.embedding(ids, w),
    EmbeddingAttrs,
    doc="rows of weight picked by integer ids",
)


@dataclass(frozen=True)
class NormAttrs:
    normalized_shape: tuple[int, ...] = ()
    eps: float = 1e-5


def _norm_verify(types, a):
    x = types[0]
    require_float(x, "norm")
    n = len(a.normalized_shape)
    if n == 0 or x.rank < n or not all(dims_equal(d, e) for d, e in zip(x.shape[-n:], a.normalized_shape)):
        raise VerifyError(f"normalized_shape {a.normalized_shape} does not match the trailing dims of {x}")


define_op(
    "layer_norm",
    ("x", "weight?", "bias?"),
    lambda types, a: [types[0]],
    lambda ctx, a, x, w=None, b=None: F.layer_norm(x, a.normalized_shape, w, b, a.eps),
    NormAttrs,
    verify=_norm_verify,
    doc="LayerNorm over the trailing normalized_shape dims",
)


@dataclass(frozen=True)
class RMSNormAttrs:
    normalized_shape: tuple[int, ...] = ()
    eps: Optional[float] = None  # none: the dtype's machine epsilon, as torch


define_op(
    "rms_norm",
    ("x", "weight?"),
    lambda types, a: [types[0]],
    lambda ctx, a, x, w=None: F.rms_norm(x, a.normalized_shape, w, a.eps),
    RMSNormAttrs,
    verify=_norm_verify,
    doc="RMSNorm over the trailing normalized_shape dims",
)


@dataclass(frozen=True)
class SDPAAttrs:
    is_causal: bool = False
    scale: Optional[float] = None  # none: 1/sqrt(head_dim)
    enable_gqa: bool = False


def _sdpa_infer(types, a):
    q, v = types[0], types[2]
    return [q.with_shape(q.shape[:-1] + (v.shape[-1],))]


def _sdpa_verify(types, a):
    q, k, v = types[0], types[1], types[2]
    if q.rank < 2 or k.rank != q.rank or v.rank != q.rank:
        raise VerifyError("sdpa: q, k, v must have the same rank >= 2")
    if not dims_equal(q.shape[-1], k.shape[-1]):
        raise VerifyError("sdpa: q and k head dims differ")


def _sdpa_ref(ctx, a, q, k, v, mask=None):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=a.is_causal, scale=a.scale, enable_gqa=a.enable_gqa)


define_op(
    "sdpa",
    ("q", "k", "v", "mask?"),
    _sdpa_infer,
    _sdpa_ref,
    SDPAAttrs,
    verify=_sdpa_verify,
    doc="torch's scaled_dot_product_attention as traced (lift-attention turns it into `attention`)",
)

"""The `add_norm` op: a residual add followed by a norm, with both results kept.

Semantics, for `add_norm(x, residual, weight?, bias?) {kind, normalized_shape, eps}`:

    sum    = x + residual                     # torch.add: broadcasting, dtype promotion
    normed = F.layer_norm(sum, normalized_shape, weight, bias, eps)   if kind == "layer"
             F.rms_norm(sum, normalized_shape, weight, eps)           if kind == "rms"
    results: (normed, sum)

The second result is the residual stream that continues past the norm (a
pre-norm transformer adds into it again), so fusing the add into the norm never
recomputes it. `bias` is only allowed for kind "layer"; `eps` none means torch's
default for rms (the dtype's machine epsilon) and is not allowed for "layer".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ...errors import VerifyError
from ..core import TensorType, dims_equal
from ..ops import define_op
from ._infer import broadcast_shapes, promote, require_float

KINDS = ("layer", "rms")


@dataclass(frozen=True)
class AddNormAttrs:
    kind: str = "layer"  # "layer" (LayerNorm) or "rms" (RMSNorm)
    normalized_shape: tuple[int, ...] = ()
    eps: Optional[float] = None


def _sum_type(types) -> TensorType:
    x, r = types[0], types[1]
    return TensorType(promote(x, r), broadcast_shapes(x.shape, r.shape))


def _infer(types, a):
    s = _sum_type(types)
    return [s, s]


def _verify(types, a):
    if a.kind not in KINDS:
        raise VerifyError(f"add_norm kind must be one of {KINDS}, got {a.kind!r}")
    s = _sum_type(types)
    require_float(s, "add_norm")
    n = len(a.normalized_shape)
    if n == 0 or s.rank < n or not all(dims_equal(d, e) for d, e in zip(s.shape[-n:], a.normalized_shape)):
        raise VerifyError(f"normalized_shape {a.normalized_shape} does not match the trailing dims of {s}")
    if a.kind == "rms" and len(types) > 3:
        raise VerifyError("add_norm of kind rms takes no bias")
    if a.kind == "layer" and a.eps is None:
        raise VerifyError("add_norm of kind layer needs an eps")


def _reference(ctx, a, x, residual, weight=None, bias=None):
    s = torch.add(x, residual)
    if a.kind == "rms":
        return F.rms_norm(s, a.normalized_shape, weight, a.eps), s
    return F.layer_norm(s, a.normalized_shape, weight, bias, a.eps), s


define_op(
    "add_norm",
    ("x", "residual", "weight?", "bias?"),
    _infer,
    _reference,
    AddNormAttrs,
    verify=_verify,
    doc="(norm(x + residual), x + residual): a residual add fused into the LayerNorm/RMSNorm it feeds",
)

"""Rotary position embeddings: `rope(x, cos, sin) {interleaved, rotary_dim}`.

x [..., D] (in practice q or k, [B, H, S, D], or [B, S, H, D] before the head
transpose); cos and sin broadcast to x[..., :rotary_dim] and hold one angle per
feature in the *full* layout (each frequency appears twice: for rotate-half in
both halves, `cat(f, f)`; for interleaved in both members of its pair,
`repeat_interleave(f, 2)`). Only the first rotary_dim features rotate; the rest
pass through unchanged:

    r   = rotary_dim, h = r / 2, xr = x[..., :r]
    rotate-half:  rot(xr) = cat(-xr[..., h:], xr[..., :h])
    interleaved:  rot(xr)[2i] = -xr[2i+1],  rot(xr)[2i+1] = xr[2i]
    out = cat(xr * cos + rot(xr) * sin, x[..., r:])

The reference computes in that order, as Hugging Face's apply_rotary_pos_emb
(Llama, Mistral, Phi, GPT-NeoX: rotate-half; GPT-J: interleaved) does, so fp32
results agree with eager to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import VerifyError
from ..core import dims_equal
from ..ops import define_op


@dataclass(frozen=True)
class RopeAttrs:
    interleaved: bool = False  # pairs (x0, x1), (x2, x3), ... instead of (x_i, x_{i+r/2})
    rotary_dim: int = 0  # the leading features that rotate; must be > 0, even, <= D


def rotate(x: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """rot(x) of the module docstring, over the whole last dim of x."""
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((-x2, x1), dim=-1).flatten(-2)
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool, rotary_dim: int) -> torch.Tensor:
    """`rope` in eager torch, in Hugging Face's order of operations."""
    if rotary_dim >= x.shape[-1]:
        return (x * cos) + (rotate(x, interleaved) * sin)
    xr, xp = x[..., :rotary_dim], x[..., rotary_dim:]
    return torch.cat(((xr * cos) + (rotate(xr, interleaved) * sin), xp), dim=-1)


def check_rope_types(x, cos, sin, interleaved: bool, rotary_dim: int, op: str) -> None:
    """The contract between x, cos, sin and the attrs (shared with `attention`'s fused rope)."""
    r = rotary_dim
    d = x.shape[-1] if x.rank else None
    if not isinstance(d, int):
        raise VerifyError(f"{op}: the last (feature) dim of x must be static")
    if not (isinstance(r, int) and 0 < r <= d and r % 2 == 0):
        raise VerifyError(f"{op}: rotary_dim={r} must be even and in 1..{d}")
    if not x.dtype.is_float:
        raise VerifyError(f"{op}: x must be floating point")
    for name, t in (("cos", cos), ("sin", sin)):
        if t.dtype != x.dtype:
            raise VerifyError(f"{op}: {name} is {t.dtype}, x is {x.dtype}")
        if t.rank < 1 or t.rank > x.rank or t.shape[-1] != r:
            raise VerifyError(f"{op}: {name} must end in rotary_dim={r} and have rank <= {x.rank}")
        for dc, dx in zip(reversed(t.shape[:-1]), reversed(x.shape[:-1])):
            if dc != 1 and not dims_equal(dc, dx):
                raise VerifyError(f"{op}: {name} {t} does not broadcast to x {x}")
    if cos.shape != sin.shape:
        raise VerifyError(f"{op}: cos {cos} and sin {sin} differ in shape")


def _verify(types, a):
    check_rope_types(types[0], types[1], types[2], a.interleaved, a.rotary_dim, "rope")


define_op(
    "rope",
    ("x", "cos", "sin"),
    lambda types, a: [types[0]],
    lambda ctx, a, x, cos, sin: rope_reference(x, cos, sin, a.interleaved, a.rotary_dim),
    RopeAttrs,
    verify=_verify,
    doc="rotary position embedding on the first rotary_dim features (rotate-half or interleaved pairs)",
)

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

Two attrs say where cos and sin come from (set by `fuse-rope`, which proves them
from the graph; the defaults assume nothing), so that no backend has to walk
the graph to find out:

    cache      "full": any full-layout cos/sin. "paired": both members of every
               rotated pair hold the same angle (cos[..., i] == cos[..., i + r/2]
               for rotate-half, cos[..., 2i] == cos[..., 2i+1] for interleaved),
               so one angle per pair (a half-width cache) says everything. The
               reference checks the claim and fails loudly when it is false.
    positions  "input": cos/sin may depend on a model input (position ids).
               "length": they depend on the sequence length alone (positions 0..S-1).
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
    cache: str = "full"  # "full" | "paired": see the module docstring
    positions: str = "input"  # "input" | "length": see the module docstring


ROPE_CACHES = ("full", "paired")
ROPE_POSITIONS = ("input", "length")


def rotate(x: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """rot(x) of the module docstring, over the whole last dim of x."""
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((-x2, x1), dim=-1).flatten(-2)
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def check_paired(t: torch.Tensor, interleaved: bool, what: str) -> None:
    """Raise when a cos/sin said to be `cache="paired"` is not (a wrong claim by a pass is a t2c bug)."""
    if interleaved:
        a, b = t[..., 0::2], t[..., 1::2]
    else:
        h = t.shape[-1] // 2
        a, b = t[..., :h], t[..., h:]
    if not torch.equal(a, b):
        raise VerifyError(f"{what}: cache=\"paired\" but the two members of a rotated pair differ")


def rope_reference(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool, rotary_dim: int, cache: str = "full"
) -> torch.Tensor:
    """`rope` in eager torch, in Hugging Face's order of operations."""
    if cache == "paired":
        check_paired(cos, interleaved, "rope cos")
        check_paired(sin, interleaved, "rope sin")
    if rotary_dim >= x.shape[-1]:
        return (x * cos) + (rotate(x, interleaved) * sin)
    xr, xp = x[..., :rotary_dim], x[..., rotary_dim:]
    return torch.cat(((xr * cos) + (rotate(xr, interleaved) * sin), xp), dim=-1)


def check_rope_source(cache: str, positions: str, op: str) -> None:
    """The `cache` and `positions` attrs hold one of their values."""
    if cache not in ROPE_CACHES:
        raise VerifyError(f"{op}: cache must be one of {ROPE_CACHES}, got {cache!r}")
    if positions not in ROPE_POSITIONS:
        raise VerifyError(f"{op}: positions must be one of {ROPE_POSITIONS}, got {positions!r}")


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
    check_rope_source(a.cache, a.positions, "rope")


define_op(
    "rope",
    ("x", "cos", "sin"),
    lambda types, a: [types[0]],
    lambda ctx, a, x, cos, sin: rope_reference(x, cos, sin, a.interleaved, a.rotary_dim, a.cache),
    RopeAttrs,
    verify=_verify,
    doc="rotary position embedding on the first rotary_dim features (rotate-half or interleaved pairs)",
)

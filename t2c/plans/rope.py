"""The rotary-embedding plan: how a backend may apply a `rope` (or an `attention`'s fused rope).

Read from the attrs `fuse-rope` recorded (t2c/ir/opdefs/rope.py) and the
operand types, never from the graph:

    interleaved, rotary_dim   which features rotate, and how they pair
    half_cache                one angle per rotated pair is all there is to know:
                              the cache is "paired" (proved by fuse-rope), x is
                              [B, H, S, D] and cos/sin do not vary over heads; a
                              kernel may then take cos/sin as [B, S, rotary_dim/2]
                              (ONNX RotaryEmbedding's caches, a Triton prologue)
    positions                 "length": cos/sin are a function of the sequence
                              length alone; "input": they may follow position ids
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir.core import TensorType


@dataclass(frozen=True)
class RopePlan:
    interleaved: bool
    rotary_dim: int
    half_cache: bool
    positions: str


def rope_plan(interleaved: bool, rotary_dim: int, cache: str, positions: str, x: TensorType, cos: TensorType) -> RopePlan:
    """The plan of rotating `x` by cos/sin of type `cos` with these rope attrs."""
    full = (1,) * (4 - cos.rank) + tuple(cos.shape) if cos.rank <= 4 else tuple(cos.shape)
    head_free = cos.rank <= 4 and full[1] == 1
    half = cache == "paired" and x.rank == 4 and head_free
    return RopePlan(interleaved, rotary_dim, half, positions)

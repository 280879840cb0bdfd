"""Shared type-inference helpers: broadcasting, dtype promotion, axis normalisation."""

from __future__ import annotations

from typing import Sequence

import torch

from ...errors import VerifyError
from ..core import Dim, DType, TensorType, dims_equal


def norm_axis(axis: int, rank: int, *, extra: int = 0) -> int:
    """A non-negative axis; `extra` allows one past the end (unsqueeze)."""
    r = rank + extra
    if not -r <= axis < max(r, 1):
        raise VerifyError(f"axis {axis} out of range for rank {rank}")
    return axis % r if r else 0


def broadcast_shapes(*shapes: Sequence[Dim]) -> tuple[Dim, ...]:
    """numpy broadcasting; a symbolic dim broadcasts against 1 and against itself."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for i in range(rank):
        d: Dim = 1
        for s in shapes:
            j = i - (rank - len(s))
            if j < 0:
                continue
            e = s[j]
            if e == 1:
                continue
            if d == 1:
                d = e
            elif not dims_equal(d, e):
                raise VerifyError(f"shapes {[list(map(str, s)) for s in shapes]} do not broadcast")
        out.append(d)
    return tuple(out)


def promote(*types: TensorType) -> DType:
    """torch's result_type over tensors of these types (0-d ones count as scalars)."""
    dummies = [torch.empty((1,) * t.rank if t.rank else (), dtype=t.dtype.torch) for t in types]
    r = dummies[0]
    dt = r.dtype
    if len(dummies) > 1:
        dt = dummies[0].dtype
        acc = dummies[0]
        for d in dummies[1:]:
            dt = torch.result_type(acc, d)
            acc = torch.empty(acc.shape if acc.dim() >= d.dim() else d.shape, dtype=dt)
    return DType.from_torch(dt)


def same(t: TensorType) -> list[TensorType]:
    return [t]


def require_float(t: TensorType, op: str) -> None:
    if not t.dtype.is_float:
        raise VerifyError(f"{op} needs a floating-point input, got {t.dtype}")

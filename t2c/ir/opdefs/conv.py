"""Convolution: torch's functional conv1d / conv2d / conv3d (grouped, depthwise, strided, dilated, padded)."""

from __future__ import annotations

from dataclasses import dataclass

import sympy
import torch.nn.functional as F

from ...errors import VerifyError
from ..core import Dim, dim_from_sympy, dim_sympy, dims_equal
from ..ops import define_op
from ._infer import promote, require_float


@dataclass(frozen=True)
class ConvAttrs:
    """One entry per spatial dim (1, 2 or 3 of them; the weight's rank - 2 says how many)."""

    stride: tuple[int, ...] = (1,)
    padding: tuple[int, ...] = (0,)  # zeros on both sides of each spatial dim, as torch
    dilation: tuple[int, ...] = (1,)
    groups: int = 1


_FUNCTIONAL = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def conv_out_len(size: Dim, kernel: int, stride: int, padding: int, dilation: int) -> Dim:
    """floor((size + 2*padding - dilation*(kernel-1) - 1) / stride) + 1, symbolic when size is."""
    n = dim_sympy(size) + 2 * padding - dilation * (kernel - 1) - 1
    return dim_from_sympy((n if stride == 1 else sympy.floor(n / stride)) + 1)


def _conv_verify(types, a):
    x, w = types[0], types[1]
    require_float(x, "conv")
    n = w.rank - 2
    if n not in _FUNCTIONAL:
        raise VerifyError(f"conv: weight {w} must be [out, in/groups, k...] with 1 to 3 spatial dims")
    if x.rank != n + 2:
        raise VerifyError(f"conv: input {x} must be [batch, channels, {n} spatial dim(s)] for weight {w}")
    if not all(len(t) == n for t in (a.stride, a.padding, a.dilation)):
        raise VerifyError(f"conv: stride, padding and dilation need {n} entries each")
    if min(a.stride) < 1 or min(a.dilation) < 1 or min(a.padding) < 0 or a.groups < 1:
        raise VerifyError("conv: stride and dilation must be >= 1, padding >= 0, groups >= 1")
    if not isinstance(w.shape[0], int) or w.shape[0] % a.groups:
        raise VerifyError(f"conv: {w.shape[0]} output channels do not split into {a.groups} groups")
    if not dims_equal(x.shape[1], w.shape[1] * a.groups):
        raise VerifyError(f"conv: input channels {x.shape[1]} != weight's {w.shape[1]} x {a.groups} groups")
    if not all(isinstance(k, int) for k in w.shape[2:]):
        raise VerifyError(f"conv: kernel sizes of {w} must be static")
    if len(types) > 2 and (types[2].rank != 1 or not dims_equal(types[2].shape[0], w.shape[0])):
        raise VerifyError(f"conv: bias {types[2]} must be [{w.shape[0]}]")


def _conv_infer(types, a):
    x, w = types[0], types[1]
    n = w.rank - 2
    if x.rank != n + 2 or not all(len(t) == n for t in (a.stride, a.padding, a.dilation)):
        raise VerifyError(f"conv: input {x}, weight {w} and attrs {a} disagree on the spatial rank")
    spatial = tuple(conv_out_len(x.shape[2 + i], w.shape[2 + i], a.stride[i], a.padding[i], a.dilation[i]) for i in range(n))
    return [x.with_dtype(promote(*types)).with_shape((x.shape[0], w.shape[0]) + spatial)]


def _conv_ref(ctx, a, x, w, b=None):
    return _FUNCTIONAL[w.dim() - 2](x, w, b, a.stride, a.padding, a.dilation, a.groups)


define_op(
    "conv",
    ("x", "weight", "bias?"),
    _conv_infer,
    _conv_ref,
    ConvAttrs,
    verify=_conv_verify,
    doc="torch's conv1d/2d/3d: x [B, C_in, *spatial], weight [C_out, C_in/groups, *kernel], symmetric zero padding",
)

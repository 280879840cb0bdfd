"""Fused activations: a gated MLP's `act(gate) * up`, and `act(x + bias)`.

Both come from the `fuse-activation` pass and name the activation by string:
`silu`, `gelu` (exact, erf), `gelu_tanh` (tanh approximation), `relu`.

    gated_act(gate, up) {activation}  = act(gate) * up          (SwiGLU, GeGLU, ReGLU)
    bias_act(x, bias)   {activation}  = act(x + bias)           bias is 1-D, over the last dim of x

The references apply the same torch calls in the same order as the unfused
graph (`F.silu(gate)` then `*`; `+` then the activation), so in fp32 the fused
ops give the unfused results bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...errors import VerifyError
from ..core import TensorType, dims_equal
from ..ops import define_op
from ._infer import broadcast_shapes, promote

ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": torch.relu,
}


@dataclass(frozen=True)
class ActivationAttrs:
    activation: str = "silu"  # one of ACTIVATIONS


def _check_activation(a: ActivationAttrs, op: str) -> None:
    if a.activation not in ACTIVATIONS:
        raise VerifyError(f"{op}: activation must be one of {sorted(ACTIVATIONS)}, got {a.activation!r}")


def _gated_infer(types, a):
    gate, up = types
    if not gate.dtype.is_float:
        raise VerifyError(f"gated_act needs a floating-point gate, got {gate.dtype}")
    return [TensorType(promote(gate, up), broadcast_shapes(gate.shape, up.shape))]


define_op(
    "gated_act",
    ("gate", "up"),
    _gated_infer,
    lambda ctx, a, gate, up: ACTIVATIONS[a.activation](gate) * up,
    ActivationAttrs,
    verify=lambda types, a: _check_activation(a, "gated_act"),
    doc="act(gate) * up, broadcasting: the gated MLP of SwiGLU/GeGLU",
)


def _bias_infer(types, a):
    x, bias = types
    if bias.rank != 1 or x.rank < 1 or not dims_equal(bias.shape[0], x.shape[-1]):
        raise VerifyError(f"bias_act: bias must be 1-D of the last dim of x, got x {x} and bias {bias}")
    dtype = promote(x, bias)
    if not dtype.is_float:
        raise VerifyError(f"bias_act needs floating-point operands, got {x.dtype} and {bias.dtype}")
    return [x.with_dtype(dtype)]


define_op(
    "bias_act",
    ("x", "bias"),
    _bias_infer,
    lambda ctx, a, x, bias: ACTIVATIONS[a.activation](x + bias),
    ActivationAttrs,
    verify=lambda types, a: _check_activation(a, "bias_act"),
    doc="act(x + bias), bias over the last dim (bias + GELU of GPT-2/BERT MLPs)",
)

"""Int8 ops: `qlinear`, `qembedding`, `qexperts` (made by the `quantize-int8` pass).

Weights are symmetric int8 in [-127, 127] with float32 scales, per output
channel (`group` 0) or per group of `group` consecutive input features:

    dequantize(w, s, group)[n, k] = float32(w[n, k]) * s[n]                 group 0, s [N]
                                  = float32(w[n, k]) * s[n, k // group]     s [N, K/group]

`qlinear(x, weight, scale, bias?) {mode, group}`, x [..., K], weight i8 [N, K] (nn.Linear's layout):

    weight_only:  y = x @ dequantize(weight, scale, group)^T + bias        (float matmul)
    w8a8:         (group 0, float32 x) dynamic symmetric per-token activations:
                  sx  = max(amax(|x|, last axis), 1e-30) / 127              [..., 1] float32
                  xq  = clamp(round(x / sx), -127, 127)                     round half to even
                  acc = xq @ weight^T                                       exact integers (int32)
                  y   = (float32(acc) * scale) * sx + bias                  in this order

The w8a8 product order is the one ONNX Runtime's MatMulIntegerToFloat computes,
so its result is bit-identical to this reference on the same input
(tests/backends/test_onnx_quant.py); no other rounding is left to the runtime.

`qembedding(weight, scale, ids)`: rows of an int8 table with a float32 scale per
row: out = float32(weight[ids]) * scale[ids, None].

`qexperts(x, top_k_index, top_k_weights, w_up, s_up, w_down, s_down, b_up?, b_down?)`:
the `experts` op (experts.py: routing, gate, activation, dispatch) with int8
expert weights in the [E, out, in] layout and scales [E, out] (or [E, out, in/group]);
each expert's two projections are `qlinear`s of the same mode on its rows. Its
attributes are `experts`' minus `layout` (always [E, out, in]) plus `mode` and
`group`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...errors import VerifyError
from ..core import DType, TensorType, dims_equal
from ..ops import define_op
from . import experts as E

MODES = ("weight_only", "w8a8")
QMAX = 127
TINY = 1e-30  # the smallest amax a row is scaled by: an all-zero row quantizes to zeros, never 0/0


# -- the arithmetic, shared by the references and the quantize-int8 pass ------------------


def quantize_weight(w: torch.Tensor, group: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, float32 scale) for a float weight [..., N, K]: symmetric, per row or per `group` columns."""
    w = w.detach().to(torch.float32)
    if group:
        blocks = w.reshape(*w.shape[:-1], w.shape[-1] // group, group)
        scale = blocks.abs().amax(-1).clamp_min(TINY) / QMAX  # [..., N, K/group]
        q = torch.clamp(torch.round(blocks / scale[..., None]), -QMAX, QMAX).reshape(w.shape)
    else:
        scale = w.abs().amax(-1).clamp_min(TINY) / QMAX  # [..., N]
        q = torch.clamp(torch.round(w / scale[..., None]), -QMAX, QMAX)
    return q.to(torch.int8), scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, group: int = 0) -> torch.Tensor:
    """float32(q) * scale, per row (scale [..., N]) or per group (scale [..., N, K/group])."""
    w = q.to(torch.float32)
    if group:
        blocks = w.reshape(*w.shape[:-1], w.shape[-1] // group, group)
        return (blocks * scale[..., None]).reshape(w.shape)
    return w * scale[..., None]


def quantize_tokens(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(xq, sx): x [..., K] float32 as integers in [-127, 127] (held in float32) and its per-row scale [..., 1]."""
    sx = x.abs().amax(-1, keepdim=True).clamp_min(TINY) / QMAX
    return torch.clamp(torch.round(x / sx), -QMAX, QMAX), sx


def w8a8_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The w8a8 qlinear: integer matmul of per-token int8 activations and int8 weights, then the scales."""
    xq, sx = quantize_tokens(x)
    # Integers below 2^53 are exact in float64: acc is the int32 sum, rounded to float32 like Cast(int32 -> float).
    acc = torch.matmul(xq.to(torch.float64), q.to(torch.float64).transpose(-1, -2)).to(torch.float32)
    y = (acc * scale) * sx
    return y if bias is None else y + bias


def qlinear(x, q, scale, bias, mode: str, group: int) -> torch.Tensor:
    if mode == "w8a8":
        return w8a8_linear(x, q, scale, bias)
    return F.linear(x, dequantize(q, scale, group).to(x.dtype), bias)


# -- qlinear --------------------------------------------------------------------------------


@dataclass(frozen=True)
class QLinearAttrs:
    mode: str = "weight_only"  # "weight_only" | "w8a8"
    group: int = 0  # 0: one scale per output channel; G: one per G input features (weight_only)


def _check_mode(a, op: str) -> None:
    if a.mode not in MODES:
        raise VerifyError(f"{op}: mode must be one of {MODES}, got {a.mode!r}")
    if a.group < 0 or (a.mode == "w8a8" and a.group):
        raise VerifyError(f"{op}: group must be >= 0, and 0 (per channel) for w8a8")


def _check_scale(w: TensorType, s: TensorType, group: int, op: str) -> None:
    """w [..., N, K] int8 and s [..., N] or [..., N, K/group] float32."""
    if w.dtype != DType.I8 or s.dtype != DType.F32:
        raise VerifyError(f"{op}: weights are i8 and scales f32, got {w.dtype} and {s.dtype}")
    lead = w.shape[:-1]
    if group:
        k = w.shape[-1]
        if not isinstance(k, int) or k % group:
            raise VerifyError(f"{op}: in_features {k} is not a multiple of group {group}")
        want = lead + (k // group,)
    else:
        want = lead
    if s.rank != len(want) or not all(dims_equal(a, b) for a, b in zip(s.shape, want)):
        raise VerifyError(f"{op}: scale must be [{','.join(map(str, want))}] for weight {w} and group {group}, got {s}")


def _qlinear_infer(types, a):
    x, w = types[0], types[1]
    return [x.with_shape(x.shape[:-1] + (w.shape[0],))]


def _qlinear_verify(types, a: QLinearAttrs):
    _check_mode(a, "qlinear")
    x, w, s = types[:3]
    if not x.dtype.is_float or (a.mode == "w8a8" and x.dtype != DType.F32):
        raise VerifyError(f"qlinear: x must be floating point (f32 for w8a8), got {x.dtype}")
    if w.rank != 2 or not dims_equal(w.shape[1], x.shape[-1]):
        raise VerifyError(f"qlinear: weight {w} does not match input {x}")
    _check_scale(w, s, a.group, "qlinear")
    if len(types) > 3:
        b = types[3]
        if b.rank != 1 or not dims_equal(b.shape[0], w.shape[0]) or b.dtype != x.dtype:
            raise VerifyError(f"qlinear: bias must be [{w.shape[0]}] of x's dtype, got {b}")


define_op(
    "qlinear",
    ("x", "weight", "scale", "bias?"),
    _qlinear_infer,
    lambda ctx, a, x, w, s, b=None: qlinear(x, w, s, b, a.mode, a.group),
    QLinearAttrs,
    verify=_qlinear_verify,
    doc="linear with an int8 weight [out, in] and float32 scales; weight_only or w8a8 (per-token int8 activations)",
)


# -- qembedding -----------------------------------------------------------------------------


def _qembedding_verify(types, a):
    w, s, ids = types
    if w.rank != 2 or w.dtype != DType.I8 or s.rank != 1 or s.dtype != DType.F32 or not dims_equal(s.shape[0], w.shape[0]):
        raise VerifyError(f"qembedding: weight is i8 [V, D] and scale f32 [V], got {w} and {s}")
    if ids.dtype.is_float or ids.dtype == DType.BOOL:
        raise VerifyError("qembedding: ids must be integers")


def _qembedding_ref(ctx, a, w, s, ids):
    return F.embedding(ids, w).to(torch.float32) * F.embedding(ids, s[:, None])


define_op(
    "qembedding",
    ("weight", "scale", "ids"),
    lambda types, a: [TensorType(DType.F32, types[2].shape + (types[0].shape[1],))],
    _qembedding_ref,
    verify=_qembedding_verify,
    doc="rows of an int8 table picked by ids, each times its row's float32 scale",
)


# -- qexperts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class QExpertsAttrs:
    activation: str = "silu"
    alpha: float = 1.0
    gated: bool = True
    split: str = "concat"
    limit: float = 0.0
    up_offset: float = 0.0
    dispatch: str = "dense"
    nonneg_weights: bool = False
    mode: str = "weight_only"
    group: int = 0

    def experts_attrs(self) -> E.ExpertsAttrs:
        """The float op's attrs (layout out_in) for the same routing and gate."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(E.ExpertsAttrs) if hasattr(self, f.name)}
        return E.ExpertsAttrs(layout="out_in", **fields)

    @staticmethod
    def from_experts(a: E.ExpertsAttrs, mode: str, group: int) -> "QExpertsAttrs":
        fields = {f.name: getattr(a, f.name) for f in dataclasses.fields(QExpertsAttrs) if hasattr(a, f.name)}
        return QExpertsAttrs(mode=mode, group=group, **fields)


def qexperts_reference(x, idx, w, up, s_up, down, s_down, b_up=None, b_down=None, a: QExpertsAttrs = QExpertsAttrs()):
    ea = a.experts_attrs()
    if a.mode == "weight_only":
        # Dequantized once: the float experts op on float32(q) * scale (what a runtime folds at load).
        return E.experts_reference(x, idx, w, dequantize(up, s_up, a.group), dequantize(down, s_down, a.group), b_up, b_down, ea)
    if a.nonneg_weights and bool((w < 0).any()):
        raise VerifyError("qexperts: nonneg_weights is claimed but a routing weight is negative")
    out = torch.zeros_like(x)
    for e in range(up.shape[0]):
        token, slot = torch.where(idx == e)
        if token.numel() == 0:
            continue
        h = w8a8_linear(x[token], up[e], s_up[e], None if b_up is None else b_up[e])
        y = w8a8_linear(E.gate(h, ea), down[e], s_down[e], None if b_down is None else b_down[e])
        out.index_add_(0, token, (y * w[token, slot, None]).to(out.dtype))
    return out


def _qexperts_verify(types, a: QExpertsAttrs):
    _check_mode(a, "qexperts")
    x, idx, w, up, s_up, down, s_down = types[:7]
    biases = types[7:]
    if x.dtype != DType.F32:
        raise VerifyError(f"qexperts: x must be f32, got {x.dtype}")
    if up.rank != 3 or down.rank != 3:
        raise VerifyError("qexperts: w_up and w_down are [E, out, in]")
    # The float op's checks, on float stand-ins of the weights in its out_in layout.
    ea = a.experts_attrs()
    E._verify([x, idx, w, up.with_dtype(x.dtype), down.with_dtype(x.dtype), *biases], ea)
    _check_scale(up, s_up, a.group, "qexperts (w_up)")
    _check_scale(down, s_down, a.group, "qexperts (w_down)")


define_op(
    "qexperts",
    ("x", "top_k_index", "top_k_weights", "w_up", "s_up", "w_down", "s_down", "b_up?", "b_down?"),
    lambda types, a: [types[0]],
    lambda ctx, a, x, idx, w, up, su, down, sd, bu=None, bd=None: qexperts_reference(x, idx, w, up, su, down, sd, bu, bd, a),
    QExpertsAttrs,
    verify=_qexperts_verify,
    doc="the experts op with int8 expert weights [E, out, in] and float32 scales; weight_only or w8a8",
)

__all__ = ["QLinearAttrs", "QExpertsAttrs", "MODES", "quantize_weight", "dequantize", "quantize_tokens", "w8a8_linear", "qexperts_reference"]

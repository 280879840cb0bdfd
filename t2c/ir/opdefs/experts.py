"""The `experts` op: the expert computation of a mixture-of-experts layer, routing given.

`experts(x, top_k_index, top_k_weights, w_up, w_down, b_up?, b_down?)`

    x              [T, H]    the tokens
    top_k_index    [T, K]    integer expert ids chosen for each token (by any router)
    top_k_weights  [T, K]    the weight of each choice (any float dtype)
    w_up           [E, U, H] ("out_in", nn.Linear's layout) or [E, H, U] ("in_out"), U = 2I when gated else I
    w_down         [E, H, I] ("out_in")                     or [E, I, H] ("in_out")
    b_up, b_down   [E, U], [E, H]   both or neither

For every expert e, in ascending order, over the (token t, slot k) with
top_k_index[t, k] == e:

    h      = x[t] @ w_up[e]^T + b_up[e]                 (x[t] @ w_up[e] for "in_out")
    a      = gate(h)                                    (see below)
    y      = a @ w_down[e]^T + b_down[e]
    out[t] += cast(y * top_k_weights[t, k], x.dtype)    (the product in the promoted dtype)

with out starting at zero. Ids outside 0..E-1 contribute nothing (expert-parallel
sentinels); a token may choose one expert twice (the contributions add). This is
Hugging Face transformers' eager experts loop (`use_experts_implementation`),
operation for operation, so fp32 results agree with it bit for bit.

gate(h), with g and u the gate and up halves of h when gated (split = "concat":
h = [g, u], Hugging Face's default; "interleaved": g = h[0::2], u = h[1::2], gpt-oss):

    gated:    act(min(g, limit)) * (clamp(u, -limit, limit) + up_offset)   (limit 0: no clamping)
    ungated:  act(h)

act: silu (x * sigmoid(alpha * x); alpha 1 is SiLU, 1.702 quick-GELU / gpt-oss), gelu
(erf), gelu_tanh, relu, relu2 (relu(x)^2), identity.

`dispatch` says how backends run it: "dense" every expert on every token,
weighted by a [T, E] matrix that is zero outside the top-k; "sparse" each
expert on its own tokens only (`sparsify-moe`). Both compute the function above.
`nonneg_weights` records that the routing weights are never negative (proved by
`sparsify-moe` from how they are computed: softmax, sigmoid, top-k of those,
their sums and quotients...); it changes nothing in the function, and lets a
backend use kernels that route by probabilities (ONNX Runtime's MoE). The
reference checks the claim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...errors import VerifyError
from ..core import DType, dim_mul, dims_equal
from ..ops import define_op

ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu", "relu2", "identity")
LAYOUTS = ("out_in", "in_out")
SPLITS = ("concat", "interleaved")
DISPATCH = ("dense", "sparse")


@dataclass(frozen=True)
class ExpertsAttrs:
    activation: str = "silu"
    alpha: float = 1.0  # silu's sigmoid scale: x * sigmoid(alpha * x)
    gated: bool = True
    layout: str = "out_in"  # "out_in": w[e] is [out, in] (F.linear); "in_out": [in, out] (x @ w[e])
    split: str = "concat"  # how a gated w_up's U = 2I outputs divide into gate and up
    limit: float = 0.0  # clamp of gate (above) and up (both sides); 0: none
    up_offset: float = 0.0  # added to up before the product (gpt-oss: 1)
    dispatch: str = "dense"
    nonneg_weights: bool = False  # top_k_weights proved >= 0 (sparsify-moe): kernels that take log-weights may be used


def activate(x: torch.Tensor, a: ExpertsAttrs) -> torch.Tensor:
    if a.activation == "silu":
        return F.silu(x) if a.alpha == 1.0 else x * torch.sigmoid(x * a.alpha)
    if a.activation == "gelu":
        return F.gelu(x)
    if a.activation == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if a.activation == "relu":
        return F.relu(x)
    if a.activation == "relu2":
        return torch.square(F.relu(x))
    return x


def gate(h: torch.Tensor, a: ExpertsAttrs) -> torch.Tensor:
    """The activation between the two projections (the module docstring's gate(h))."""
    if not a.gated:
        return activate(h, a)
    if a.split == "interleaved":
        g, u = h[..., 0::2], h[..., 1::2]
    else:
        g, u = h.chunk(2, dim=-1)
    if a.limit > 0:
        g = g.clamp(max=a.limit)
        u = u.clamp(min=-a.limit, max=a.limit)
    if a.up_offset != 0.0:
        u = u + a.up_offset
    return activate(g, a) * u


def _project(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, layout: str) -> torch.Tensor:
    if layout == "out_in":
        return F.linear(x, w, b)
    y = x @ w
    return y if b is None else y + b


def expert_ffn(x, w_up, w_down, b_up, b_down, a: ExpertsAttrs) -> torch.Tensor:
    """One expert's FFN on rows x (weights of that expert)."""
    return _project(gate(_project(x, w_up, b_up, a.layout), a), w_down, b_down, a.layout)


def experts_reference(x, top_k_index, top_k_weights, w_up, w_down, b_up=None, b_down=None, a: ExpertsAttrs = ExpertsAttrs()):
    """The eager semantics (module docstring), shared by the IR op and the frontend's custom op."""
    if a.nonneg_weights and bool((top_k_weights < 0).any()):
        raise VerifyError("experts: nonneg_weights is claimed but a routing weight is negative")
    out = torch.zeros_like(x)
    for e in range(w_up.shape[0]):
        token, slot = torch.where(top_k_index == e)
        if token.numel() == 0:
            continue
        y = expert_ffn(x[token], w_up[e], w_down[e], None if b_up is None else b_up[e], None if b_down is None else b_down[e], a)
        y = y * top_k_weights[token, slot, None]
        out.index_add_(0, token, y.to(out.dtype))
    return out


def _infer(types, a):
    return [types[0]]


def _verify(types, a: ExpertsAttrs):
    x, idx, w, up, down = types[:5]
    biases = types[5:]
    if a.activation not in ACTIVATIONS:
        raise VerifyError(f"experts: activation must be one of {ACTIVATIONS}, got {a.activation!r}")
    if a.layout not in LAYOUTS or a.split not in SPLITS or a.dispatch not in DISPATCH:
        raise VerifyError(f"experts: layout {LAYOUTS}, split {SPLITS}, dispatch {DISPATCH}")
    if a.limit < 0:
        raise VerifyError("experts: limit must be >= 0 (0: no clamping)")
    if x.rank != 2 or idx.rank != 2 or w.rank != 2:
        raise VerifyError("experts: x is [T, H], top_k_index and top_k_weights [T, K]")
    if not (dims_equal(idx.shape[0], x.shape[0]) and dims_equal(w.shape[0], x.shape[0]) and dims_equal(idx.shape[1], w.shape[1])):
        raise VerifyError("experts: x, top_k_index and top_k_weights disagree on T or K")
    if idx.dtype.is_float or idx.dtype == DType.BOOL or not w.dtype.is_float or not x.dtype.is_float:
        raise VerifyError("experts: top_k_index must be integer, x and top_k_weights floating point")
    if up.rank != 3 or down.rank != 3 or not dims_equal(up.shape[0], down.shape[0]) or not isinstance(up.shape[0], int):
        raise VerifyError("experts: w_up and w_down are [E, ., .] with the same static E")
    out_in = a.layout == "out_in"
    u, h_up = (up.shape[1], up.shape[2]) if out_in else (up.shape[2], up.shape[1])
    h_down, i = (down.shape[1], down.shape[2]) if out_in else (down.shape[2], down.shape[1])
    if not (dims_equal(h_up, x.shape[1]) and dims_equal(h_down, x.shape[1])):
        raise VerifyError(f"experts: the weights' hidden size differs from x's {x.shape[1]}")
    if not dims_equal(u, dim_mul(2, i) if a.gated else i):
        raise VerifyError(f"experts: w_up has {u} outputs; {'2I' if a.gated else 'I'} = {dim_mul(2, i) if a.gated else i} expected")
    if len(biases) not in (0, 2):
        raise VerifyError("experts: give both biases or neither")
    if biases:
        b_up, b_down = biases
        if b_up.rank != 2 or b_down.rank != 2 or not dims_equal(b_up.shape[1], u) or not dims_equal(b_down.shape[1], x.shape[1]):
            raise VerifyError("experts: b_up is [E, U], b_down [E, H]")
    if any(t.dtype != x.dtype for t in types[3:]):
        raise VerifyError("experts: the weights and biases have x's dtype")


def _run(ctx, a, x, idx, w, up, down, b_up=None, b_down=None):
    return experts_reference(x, idx, w, up, down, b_up, b_down, a)


define_op(
    "experts",
    ("x", "top_k_index", "top_k_weights", "w_up", "w_down", "b_up?", "b_down?"),
    _infer,
    _run,
    ExpertsAttrs,
    verify=_verify,
    doc="the experts of a mixture-of-experts layer: each token through its top-k experts' FFNs, weighted and summed",
)

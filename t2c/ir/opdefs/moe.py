"""The `moe` op: a routed mixture of gated-MLP experts with top-k routing.

Semantics (Mixtral and its relatives): for each token h (the last dim of x),
    logits = h @ router_weight.T                     # [E]
    probs  = softmax(float32(logits))
    w, e   = topk(probs, top_k)                      # weights and expert ids
    w      = w / sum(w)            if norm_topk_prob
    y      = sum_j w_j * down[e_j] @ (act(gate[e_j] @ h) * (up[e_j] @ h))
with gate_up[e] = concat(gate[e], up[e]) along its first dim ([2I, H]) and
down[e] of shape [H, I]. `dispatch` says how backends run it: `dense` runs
every expert on every token and weights the results, `sparse` gathers each
expert's tokens; both compute the same function.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...errors import VerifyError
from ..core import dim_mul, dims_equal
from ..ops import define_op

ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu}


@dataclass(frozen=True)
class MoEAttrs:
    top_k: int = 2
    norm_topk_prob: bool = True
    activation: str = "silu"
    dispatch: str = "dense"  # "dense" or "sparse"


def _verify(types, a):
    x, router, gate_up, down = types
    e, h = router.shape
    if gate_up.rank != 3 or down.rank != 3:
        raise VerifyError("moe: gate_up must be [E, 2I, H] and down [E, H, I]")
    if not (dims_equal(gate_up.shape[0], e) and dims_equal(down.shape[0], e)):
        raise VerifyError("moe: router, gate_up and down disagree on the number of experts")
    if not (dims_equal(x.shape[-1], h) and dims_equal(gate_up.shape[2], h) and dims_equal(down.shape[1], h)):
        raise VerifyError("moe: hidden sizes disagree")
    if not dims_equal(gate_up.shape[1], dim_mul(2, down.shape[2])):
        raise VerifyError("moe: gate_up's first dim must be twice down's last")
    if not (isinstance(e, int) and 1 <= a.top_k <= e):
        raise VerifyError(f"moe: top_k {a.top_k} must be within 1..{e}")
    if a.activation not in ACTIVATIONS:
        raise VerifyError(f"moe: activation must be one of {sorted(ACTIVATIONS)}")
    if a.dispatch not in ("dense", "sparse"):
        raise VerifyError("moe: dispatch must be dense or sparse")


def route(h: torch.Tensor, router_weight: torch.Tensor, top_k: int, norm_topk_prob: bool):
    """Top-k routing: (weights [T, k] in float32, expert ids [T, k])."""
    logits = F.linear(h, router_weight)
    probs = torch.softmax(logits.float(), dim=-1)
    weights, experts = torch.topk(probs, top_k, dim=-1)
    if norm_topk_prob:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, experts


def moe_reference(x, router_weight, gate_up, down, top_k: int, norm_topk_prob: bool, activation: str):
    """The eager semantics shared by the IR op and the frontend's custom op."""
    hidden = x.shape[-1]
    h = x.reshape(-1, hidden)
    weights, experts = route(h, router_weight, top_k, norm_topk_prob)
    act = ACTIVATIONS[activation]
    out = torch.zeros_like(h)
    for e in range(router_weight.shape[0]):
        token, slot = torch.where(experts == e)
        if token.numel() == 0:
            continue
        gate, up = F.linear(h[token], gate_up[e]).chunk(2, dim=-1)
        y = F.linear(act(gate) * up, down[e])
        y = y * weights[token, slot, None]
        out.index_add_(0, token, y.to(out.dtype))
    return out.reshape(x.shape)


define_op(
    "moe",
    ("x", "router_weight", "gate_up", "down"),
    lambda types, a: [types[0]],
    lambda ctx, a, x, r, gu, d: moe_reference(x, r, gu, d, a.top_k, a.norm_topk_prob, a.activation),
    MoEAttrs,
    verify=_verify,
    doc="top-k routed mixture of gated-MLP experts (see module docstring)",
)

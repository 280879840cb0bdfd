"""Flavor `ort`: sparse `experts` on ONNX Runtime's com.microsoft.MoE kernel (an overlay on experts.py).

What the kernel computes (measured on ONNX Runtime 1.31's CPU provider, not
taken from its documentation): it softmaxes `router_probs` over the E experts,
takes the top k, renormalises them when `normalize_routing_weights` = 1, and
sums the k experts' FFNs weighted by them:

    fc1 [E, F*I, H], fc2 [E, H, I] (nn.Linear's [out, in] layout; another layout is
    silently misread), activation_type relu | silu | gelu (the tanh approximation) |
    identity, or swiglu with swiglu_fusion = 1 (the only fusion its CPU kernel takes):
    gate = even rows of fc1, up = odd rows, min(g, limit) * sigmoid(alpha * min(g,
    limit)) * (clip(u, -limit, limit) + beta).

The IR gives the routing as ids and weights, so we hand the kernel log-weights:
router_probs[t, e] = log(sum of t's weights for e) (log of a tiny number for
experts t did not choose). Its softmax then gives w / sum(w) on the chosen
experts and nothing measurable elsewhere, and the output times sum(w) is the
IR's sum of w_k * FFN_k. That needs weights >= 0, which `sparsify-moe` proves
and records as `nonneg_weights`.

Used only where that is exact: dispatch "sparse" (the user asked for routed
work), nonneg_weights, weights that are params (they are re-laid out into new
initializers: concatenated gate/up halves interleaved, [in, out] transposed),
and a gated SiLU (any alpha, limit and up offset) or an ungated silu / relu /
gelu_tanh / identity. And only in float16: in float32 the kernel took 1.3-2.1x
the time of the standard sparse graph in every case of benchmarks/moe.py
(ONNX Runtime's CPU provider, one thread, E 8-64, k 1-8, 512-8192 tokens), so
float32 lowers as in `standard`; half precision is the GPU case the kernel
exists for (not measured here: no GPU). Everything else returns None too.
"""

from __future__ import annotations

import torch

from ...ir.core import DType, Node
from ...ir.opdefs.experts import ExpertsAttrs
from .experts import experts_operands, safe_routing
from .flavors import MS_DOMAIN, overlay
from .lowering import arg, out_dtype

_UNGATED = {"silu": "silu", "relu": "relu", "gelu_tanh": "gelu", "identity": "identity"}
LOG_TINY = -69.0  # log(1e-30): an expert the token did not choose


def ort_moe_attrs(a: ExpertsAttrs) -> dict | None:
    """The MoE kernel's attributes for these experts attrs, or None when it cannot compute them exactly."""
    if a.gated:
        if a.activation != "silu":
            return None
        attrs = {"activation_type": "swiglu", "swiglu_fusion": 1, "activation_alpha": float(a.alpha), "activation_beta": float(a.up_offset)}
        if a.limit > 0:
            attrs["swiglu_limit"] = float(a.limit)
        return attrs
    if a.activation not in _UNGATED or (a.activation == "silu" and a.alpha != 1.0):
        return None
    return {"activation_type": _UNGATED[a.activation]}


def _usable(ctx, node: Node) -> dict | None:
    a: ExpertsAttrs = node.attrs
    if a.dispatch != "sparse" or not a.nonneg_weights or out_dtype(node) != DType.F16:
        return None
    if any(ctx.param_tensor(v) is None for v in node.inputs[3:]):
        return None
    return ort_moe_attrs(a)


def _fc(ctx, node: Node, i: int, interleave: bool) -> str:
    """Operand i (w_up/w_down or a bias) as the kernel wants it: [E, out, in], gate/up rows interleaved."""
    v = node.inputs[i]
    t = ctx.param_tensor(v)
    if i in (3, 4) and node.attrs.layout == "in_out":
        t = t.transpose(1, 2)
    if interleave:  # [gate(I); up(I)] -> gate0, up0, gate1, up1, ... along the output axis (axis 1)
        half = t.shape[1] // 2
        t = torch.stack((t[:, :half], t[:, half:]), dim=2).reshape(t.shape)
    name = f"{v.name}.moe"
    if name not in ctx.initializers:
        ctx.add_initializer(name, t.contiguous())
    return name


@overlay("ort", "experts")
def _ort_moe(ctx, node):
    attrs = _usable(ctx, node)
    if attrs is None:
        return None
    a: ExpertsAttrs = node.attrs
    e, _, _, _ = experts_operands(node)
    k = node.inputs[1].type.shape[1]
    idx, w = safe_routing(ctx, node, e)
    wdt = node.inputs[2].type.dtype
    w = ctx.cast(w, wdt, DType.F32)  # log-weights computed in float32 (1e-30 is below float16's range), then cast
    tokens = ctx.emit("Shape", [arg(ctx, node, 0)], start=0, end=1)
    zeros = ctx.emit("ConstantOfShape", [ctx.emit("Concat", [tokens, ctx.ints([e])], axis=0)])  # f32 zeros
    per_expert = ctx.emit("ScatterElements", [zeros, idx, w], axis=1, reduction="add")  # [T, E]
    tiny = ctx.const(1e-30, DType.F32)
    logits = ctx.cast(ctx.emit("Log", [ctx.emit("Max", [per_expert, tiny])]), DType.F32, DType.F16)
    interleave = a.gated and a.split == "concat"
    inputs = [arg(ctx, node, 0), logits, _fc(ctx, node, 3, interleave)]
    inputs.append(_fc(ctx, node, 5, interleave) if len(node.inputs) > 5 else "")
    inputs.append(_fc(ctx, node, 4, False))
    if len(node.inputs) > 6:
        inputs.append(_fc(ctx, node, 6, False))
    y = ctx.emit("MoE", inputs, domain=MS_DOMAIN, k=int(k), normalize_routing_weights=1, **attrs)
    total = ctx.emit("ReduceSum", [w, ctx.ints([1])], keepdims=1)  # [T, 1] in float32
    return [ctx.cast(ctx.emit("Mul", [ctx.cast(y, DType.F16, DType.F32), total]), DType.F32, DType.F16)]

"""Lowering of `moe`, dense form: every expert runs on every token, weighted by the routing.

Routing follows `t2c/ir/opdefs/moe.py`: router logits -> softmax in f32 ->
top-k -> renormalise (norm_topk_prob) -> scattered into a dense [T, E] weight
matrix that is zero for unchosen experts. The experts run as two batched
MatMuls over the stacked weights, pre-transposed into initializers
(`<gate_up>.T` [E, H, 2I], `<down>.T` [E, I, H]).
"""

from __future__ import annotations

from ...ir.core import DType, dim_prod
from .activations import activation
from .lowering import arg, lowers, out_dtype, transposed_weight


@lowers("moe")
def _moe(ctx, node):
    a, dt = node.attrs, out_dtype(node)
    x_t, router_t, down_t = node.inputs[0].type, node.inputs[1].type, node.inputs[3].type
    n_experts, hidden = router_t.shape
    inter = down_t.shape[2]
    tokens = dim_prod(x_t.shape[:-1])
    h = ctx.emit("Reshape", [arg(ctx, node, 0), ctx.shape([tokens, hidden])], allowzero=1)

    logits = ctx.emit("MatMul", [h, transposed_weight(ctx, node, 1, [1, 0])])
    probs = ctx.emit("Softmax", [ctx.cast(logits, dt, DType.F32)], axis=-1)
    weights, experts = ctx.emit("TopK", [probs, ctx.ints([a.top_k])], 2, axis=-1, largest=1, sorted=1)
    if a.norm_topk_prob:
        weights = ctx.emit("Div", [weights, ctx.emit("ReduceSum", [weights, ctx.ints([-1])], keepdims=1)])
    zeros = ctx.emit("ConstantOfShape", [ctx.shape([tokens, n_experts])])  # ConstantOfShape defaults to f32 zeros: the routing dtype
    dense = ctx.emit("ScatterElements", [zeros, experts, weights], axis=1)  # [T, E]

    gate_up = ctx.emit("MatMul", [ctx.emit("Unsqueeze", [h, ctx.ints([0])]), transposed_weight(ctx, node, 2, [0, 2, 1])])
    gate, up = ctx.emit("Split", [gate_up, ctx.shape([inter, inter])], 2, axis=-1)
    y = ctx.emit("MatMul", [ctx.emit("Mul", [activation(ctx, a.activation, gate), up]), transposed_weight(ctx, node, 3, [0, 2, 1])])

    # The reference weights each expert's f32-promoted output, then casts back to x's dtype.
    w = ctx.emit("Unsqueeze", [ctx.emit("Transpose", [dense], perm=[1, 0]), ctx.ints([2])])  # [E, T, 1]
    weighted = ctx.emit("Mul", [ctx.cast(y, dt, DType.F32), w])
    out = ctx.cast(ctx.emit("ReduceSum", [weighted, ctx.ints([0])], keepdims=0), DType.F32, dt)
    return [ctx.emit("Reshape", [out, ctx.shape(list(x_t.shape))], allowzero=1)]


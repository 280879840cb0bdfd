"""Lowering of `experts` (t2c/ir/opdefs/experts.py), in the form its `dispatch` attr names.

Both forms first make the routing safe for ONNX: an id outside 0..E-1 (which
contributes nothing in the IR) becomes expert 0 with weight 0.

dense: every expert on every token. Two batched MatMuls over the stacked weights
(pre-transposed into initializers `<w>.T` when they are [E, out, in]) give
y [E, T, H]; the routing becomes a dense [T, E] weight matrix (ScatterElements
with add, so a token that picks an expert twice counts it twice), and
out = sum_e cast(y_e * w[:, e], x dtype). Work: E/K times what the routing asks.

sparse: each expert on its own tokens. The T*K (token, slot) routes are sorted
by expert id (a stable TopK), so expert e's routes are the slice
starts[e] : starts[e] + counts[e] of the sorted list (counts by one
ScatterElements-add over the ids, O(T*K)); each expert gathers its tokens' rows
of x, runs its FFN on them (its weights, gate and up apart, are initializers of
their own: two MatMuls, no Split), and the weighted rows of all experts, in
sorted order, are added into the [T, H] output by one ScatterND-add, which adds
a token's contributions in ascending expert order, as the reference does. Work
follows the routing: K/E of the dense form's, plus a sort of T*K ids. Row
counts are known only at run time; an expert no token chose runs on zero rows.
(Measured by benchmarks/moe.py's profile: the counts as a [T*K, E] compare and
the un-permute by an inverse permutation cost a quarter of the graph.)

The ort flavor's com.microsoft.MoE is an overlay (ort_experts.py).
"""

from __future__ import annotations

import torch

from ...ir.core import DType, Node
from ...ir.opdefs.experts import ExpertsAttrs
from .activations import activation
from .context import ONNX_DTYPE
from .lowering import arg, lowers, out_dtype


def experts_operands(node: Node) -> tuple:
    """(E, H, I, U) of an experts node: experts, hidden, intermediate, w_up's outputs."""
    a: ExpertsAttrs = node.attrs
    up, down = node.inputs[3].type, node.inputs[4].type
    e = up.shape[0]
    h, i = (down.shape[1], down.shape[2]) if a.layout == "out_in" else (down.shape[2], down.shape[1])
    u = up.shape[1] if a.layout == "out_in" else up.shape[2]
    return e, h, i, u


def safe_routing(ctx, node: Node, n_experts: int) -> tuple[str, str]:
    """(ids, weights) with every id in 0..E-1; an id out of range gets expert 0 and weight 0."""
    idx = arg(ctx, node, 1, DType.I64)
    w = arg(ctx, node, 2)
    valid = ctx.emit("And", [ctx.emit("GreaterOrEqual", [idx, ctx.const(0, DType.I64)]), ctx.emit("Less", [idx, ctx.const(n_experts, DType.I64)])])
    zero_id = ctx.const(0, DType.I64)
    zero_w = ctx.const(0.0, node.inputs[2].type.dtype)
    return ctx.emit("Where", [valid, idx, zero_id]), ctx.emit("Where", [valid, w, zero_w])


def gate(ctx, h: str, a: ExpertsAttrs, inter: int, dt: DType) -> str:
    """The activation between the projections (the op's gate(h)), on the last axis of h."""
    if not a.gated:
        return _activate(ctx, h, a, dt)
    last = ctx.ints([-1])
    if a.split == "interleaved":
        big = ctx.ints([1 << 62])
        g = ctx.emit("Slice", [h, ctx.ints([0]), big, last, ctx.ints([2])])
        u = ctx.emit("Slice", [h, ctx.ints([1]), big, last, ctx.ints([2])])
    else:
        g, u = ctx.emit("Split", [h, ctx.ints([inter, inter])], 2, axis=-1)
    return gate_halves(ctx, g, u, a, dt)


def gate_halves(ctx, g: str, u: str, a: ExpertsAttrs, dt: DType) -> str:
    """act(min(g, limit)) * (clamp(u, -limit, limit) + up_offset), from the gate and up halves."""
    if a.limit > 0:
        g = ctx.emit("Min", [g, ctx.const(a.limit, dt)])
        u = ctx.emit("Clip", [u, ctx.const(-a.limit, dt), ctx.const(a.limit, dt)])
    if a.up_offset != 0.0:
        u = ctx.emit("Add", [u, ctx.const(a.up_offset, dt)])
    return ctx.emit("Mul", [_activate(ctx, g, a, dt), u])


def _activate(ctx, x: str, a: ExpertsAttrs, dt: DType) -> str:
    if a.activation == "silu" and a.alpha != 1.0:
        return ctx.emit("Mul", [x, ctx.emit("Sigmoid", [ctx.emit("Mul", [x, ctx.const(a.alpha, dt)])])])
    if a.activation == "relu2":
        r = ctx.emit("Relu", [x])
        return ctx.emit("Mul", [r, r])
    if a.activation == "identity":
        return x
    return activation(ctx, a.activation, x)


def stacked_weight(ctx, node: Node, i: int) -> str:
    """Operand i (w_up or w_down) as [E, in, out] for MatMul: pre-transposed `<w>.T` for the out_in layout."""
    from .lowering import transposed_weight

    if node.attrs.layout == "in_out":
        return arg(ctx, node, i)
    return transposed_weight(ctx, node, i, [0, 2, 1])


def expert_weight(ctx, node: Node, i: int, e: int, part: tuple[int, int] | None = None) -> str:
    """Expert e's slice of operand i as [in, out] (weights) or [out] (biases): an initializer of its own.

    `part` = (start, step) keeps only those outputs of a gated w_up / b_up: (0, 1) and
    (I, 1) the concatenated halves, (0, 2) and (1, 2) the interleaved ones.
    """
    v = node.inputs[i]
    t = ctx.param_tensor(v)
    out_axis = 0 if (i in (3, 4) and node.attrs.layout == "out_in") or i in (5, 6) else 1
    transpose = i in (3, 4) and node.attrs.layout == "out_in"
    if t is None:  # not a param: slice at run time
        s = ctx.emit("Gather", [ctx.name(v), ctx.const(e, DType.I64)], axis=0)
        if part is not None:
            width = node.inputs[i].type.shape[1 + out_axis]
            stop = part[0] + width // 2 if part[1] == 1 else width
            s = ctx.emit("Slice", [s, ctx.ints([part[0]]), ctx.ints([stop]), ctx.ints([out_axis]), ctx.ints([part[1]])])
        return ctx.emit("Transpose", [s], perm=[1, 0]) if transpose else s
    suffix = "" if part is None else f".{part[0]}:{part[1]}"
    name = f"{v.name}.{e}{suffix}" + (".T" if transpose else "")
    if name not in ctx.initializers:
        w = t[e]
        if part is not None:
            width = w.shape[out_axis]
            stop = part[0] + width // 2 if part[1] == 1 else width
            w = w[(slice(None),) * out_axis + (slice(part[0], stop, part[1]),)]
        ctx.add_initializer(name, (w.T if transpose else w).contiguous())
    return name


@lowers("experts")
def _experts(ctx, node):
    a: ExpertsAttrs = node.attrs
    if a.dispatch == "sparse":
        return [_sparse(ctx, node)]
    return [_dense(ctx, node)]


def _weighted(ctx, y: str, w: str, node: Node) -> str:
    """cast(y * w, x dtype) with the product in the promoted dtype, as the reference computes it."""
    dt, wdt = out_dtype(node), node.inputs[2].type.dtype
    prod = _promote(dt, wdt)
    return ctx.cast(ctx.emit("Mul", [ctx.cast(y, dt, prod), ctx.cast(w, wdt, prod)]), prod, dt)


def _promote(a: DType, b: DType) -> DType:
    return DType.from_torch(torch.promote_types(a.torch, b.torch))


def _dense(ctx, node: Node) -> str:
    a, dt = node.attrs, out_dtype(node)
    e, h, inter, _ = experts_operands(node)
    idx, w = safe_routing(ctx, node, e)
    x = ctx.emit("Unsqueeze", [arg(ctx, node, 0), ctx.ints([0])])  # [1, T, H]
    up = ctx.emit("MatMul", [x, stacked_weight(ctx, node, 3)])  # [E, T, U]
    if len(node.inputs) > 5:
        up = ctx.emit("Add", [up, ctx.emit("Unsqueeze", [arg(ctx, node, 5), ctx.ints([1])])])
    y = ctx.emit("MatMul", [gate(ctx, up, a, inter, dt), stacked_weight(ctx, node, 4)])  # [E, T, H]
    if len(node.inputs) > 6:
        y = ctx.emit("Add", [y, ctx.emit("Unsqueeze", [arg(ctx, node, 6), ctx.ints([1])])])
    wdt = node.inputs[2].type.dtype
    acc = wdt if wdt in (DType.F32, DType.F64) else DType.F32  # ONNX Runtime's CPU scatter-add takes no halves
    tokens = ctx.emit("Shape", [arg(ctx, node, 0)], start=0, end=1)
    zeros = ctx.emit("ConstantOfShape", [ctx.emit("Concat", [tokens, ctx.ints([e])], axis=0)], value=_zero(acc))
    dense = ctx.cast(ctx.emit("ScatterElements", [zeros, idx, ctx.cast(w, wdt, acc)], axis=1, reduction="add"), acc, wdt)  # [T, E]
    per_expert = ctx.emit("Unsqueeze", [ctx.emit("Transpose", [dense], perm=[1, 0]), ctx.ints([2])])  # [E, T, 1]
    return ctx.emit("ReduceSum", [_weighted(ctx, y, per_expert, node), ctx.ints([0])], keepdims=0)


def _zero(dt: DType):
    from onnx import helper

    return helper.make_tensor("zero", ONNX_DTYPE[dt], [1], [0])


def _sparse(ctx, node: Node) -> str:
    a, dt = node.attrs, out_dtype(node)
    e, h, inter, _ = experts_operands(node)
    k = node.inputs[1].type.shape[1]
    idx, w = safe_routing(ctx, node, e)
    ids = ctx.emit("Reshape", [idx, ctx.ints([-1])])  # [N = T*K] route r = t*K + slot
    n = ctx.emit("Shape", [ids])
    # Routes sorted by expert, stably: TopK smallest-first puts equal ids in route order.
    _, order = ctx.emit("TopK", [ids, n], 2, axis=0, largest=0, sorted=1)
    ones = ctx.emit("Expand", [ctx.const([1], DType.I64), n])
    counts = ctx.emit("ScatterElements", [ctx.const([0] * e, DType.I64, (e,)), ids, ones], axis=0, reduction="add")  # [E]
    ends = ctx.emit("CumSum", [counts, ctx.const(0, DType.I64)])
    starts = ctx.emit("Sub", [ends, counts])
    tokens = ctx.emit("Div", [order, ctx.const(k, DType.I64)])  # route r belongs to token r // K
    x = arg(ctx, node, 0)
    outs = []
    for i in range(e):
        at = ctx.ints([i])
        mine = ctx.emit("Slice", [tokens, ctx.emit("Gather", [starts, at]), ctx.emit("Gather", [ends, at]), ctx.ints([0])])
        outs.append(_expert_ffn(ctx, node, i, ctx.emit("Gather", [x, mine], axis=0), inter, dt))  # [n_e, H]
    y_sorted = ctx.emit("Concat", outs, axis=0) if len(outs) > 1 else outs[0]  # [N, H] in sorted route order
    w_sorted = ctx.emit("Unsqueeze", [ctx.emit("Gather", [ctx.emit("Reshape", [w, ctx.ints([-1])]), order], axis=0), ctx.ints([1])])
    weighted = _weighted(ctx, y_sorted, w_sorted, node)
    # Sorted order adds each token's contributions by ascending expert, as the reference's index_add does.
    # ONNX Runtime's CPU ScatterND adds only in float32/64: half models sum there and round once.
    acc = dt if dt in (DType.F32, DType.F64) else DType.F32
    zeros = ctx.emit("ConstantOfShape", [ctx.emit("Shape", [x])], value=_zero(acc))  # [T, H]
    rows = ctx.emit("Unsqueeze", [tokens, ctx.ints([1])])
    return ctx.cast(ctx.emit("ScatterND", [zeros, rows, ctx.cast(weighted, dt, acc)], reduction="add"), acc, dt)


def _expert_ffn(ctx, node: Node, i: int, xe: str, inter: int, dt: DType) -> str:
    """Expert i's FFN on its rows xe [n, H]: gate and up as two MatMuls when gated (no Split)."""
    a: ExpertsAttrs = node.attrs
    bias = len(node.inputs) > 5
    if a.gated:
        halves = ((0, 1), (inter, 1)) if a.split == "concat" else ((0, 2), (1, 2))
        g, u = (ctx.emit("MatMul", [xe, expert_weight(ctx, node, 3, i, part)]) for part in halves)
        if bias:
            g, u = (ctx.emit("Add", [t, expert_weight(ctx, node, 5, i, part)]) for t, part in zip((g, u), halves))
        hidden = gate_halves(ctx, g, u, a, dt)
    else:
        hidden = ctx.emit("MatMul", [xe, expert_weight(ctx, node, 3, i)])
        if bias:
            hidden = ctx.emit("Add", [hidden, expert_weight(ctx, node, 5, i)])
        hidden = _activate(ctx, hidden, a, dt)
    ye = ctx.emit("MatMul", [hidden, expert_weight(ctx, node, 4, i)])
    if len(node.inputs) > 6:
        ye = ctx.emit("Add", [ye, expert_weight(ctx, node, 6, i)])
    return ye

"""Lowering of `qexperts` (t2c/ir/opdefs/quant.py): the experts op with int8 expert weights.

The same two forms as `experts` (experts.py), chosen by `dispatch`: dense (every
expert on every token, two batched matmuls over the stacked [E, in, out]
weights, weighted by a dense [T, E] routing matrix) or sparse (routes sorted by
expert, each expert on its own rows). Only the projections differ, and they are
quant.py's: weight_only multiplies by `Cast(int8) * scale` constants that the
runtime folds at load; w8a8 quantizes each row of the projection's input per
token and runs MatMulInteger (u8 activations, s8 weights) followed by the
scales in the reference's order. Per-token quantization is row-local, so the
dense form (all tokens through every expert) gives every routed row exactly
the integers the reference computes for it.
"""

from __future__ import annotations

import torch

from ...ir.core import DType, Node
from ...ir.opdefs.quant import QExpertsAttrs
from .context import ONNX_DTYPE
from .experts import gate, safe_routing
from .lowering import arg, lowers, out_dtype
from .quant import dequantized, derived, int8_matmul

UP, DOWN = (3, 4, 7), (5, 6, 8)  # (weight, scale, bias) operand positions


def _weight(ctx, node: Node, which: tuple[int, int, int], e: int | None) -> tuple[str, str]:
    """(int8 weight as [in, out] or [E, in, out], its scale laid out to broadcast against it)."""
    a: QExpertsAttrs = node.attrs
    wv, sv = node.inputs[which[0]], node.inputs[which[1]]
    if e is None:
        w = derived(ctx, wv, "T", lambda t: t.transpose(1, 2))
        if a.group:
            s = derived(ctx, sv, "io", lambda t: t.transpose(1, 2).unsqueeze(2))  # [E, in/G, 1, out]
        else:
            s = derived(ctx, sv, "io", lambda t: t.unsqueeze(1))  # [E, 1, out]
        return w, s
    w = derived(ctx, wv, f"{e}.T", lambda t: t[e].T)
    s = derived(ctx, sv, f"{e}.io", (lambda t: t[e].T.unsqueeze(1)) if a.group else (lambda t: t[e].unsqueeze(0)))
    return w, s


def _project(ctx, node: Node, rows: str, which: tuple[int, int, int], e: int | None) -> str:
    """rows @ expert weight (+ bias): rows [n, in] for expert e, or [1 or E, T, in] for every expert (e None)."""
    a: QExpertsAttrs = node.attrs
    w_t = node.inputs[which[0]].type
    out_dim, in_dim = w_t.shape[1], w_t.shape[2]
    w, s = _weight(ctx, node, which, e)
    if a.mode == "w8a8":
        y = int8_matmul(ctx, rows, w, s, may_be_empty=e is not None)
    else:
        lead = [w_t.shape[0]] if e is None else []
        y = ctx.emit("MatMul", [rows, dequantized(ctx, w, s, lead, in_dim, out_dim, a.group, DType.F32)])
    if len(node.inputs) > which[2]:
        bv = node.inputs[which[2]]
        b = derived(ctx, bv, "b3", lambda t: t.unsqueeze(1)) if e is None else derived(ctx, bv, str(e), lambda t: t[e])
        y = ctx.emit("Add", [y, b])
    return y


def _ffn(ctx, node: Node, rows: str, e: int | None) -> str:
    a: QExpertsAttrs = node.attrs
    inter = node.inputs[DOWN[0]].type.shape[2]
    h = _project(ctx, node, rows, UP, e)
    return _project(ctx, node, gate(ctx, h, a, inter, DType.F32), DOWN, e)


def _weighted(ctx, y: str, w: str, node: Node) -> str:
    """cast(y * w, x dtype), the product in the promoted dtype (x is float32)."""
    wdt = node.inputs[2].type.dtype
    prod = DType.from_torch(torch.promote_types(torch.float32, wdt.torch))
    return ctx.cast(ctx.emit("Mul", [ctx.cast(y, DType.F32, prod), ctx.cast(w, wdt, prod)]), prod, out_dtype(node))


@lowers("qexperts")
def _qexperts(ctx, node):
    for v in node.inputs[3:]:
        if ctx.param_tensor(v) is None:
            from .context import LoweringError

            raise LoweringError("qexperts: the ONNX backend needs the expert weights, scales and biases as params")
    return [_sparse(ctx, node) if node.attrs.dispatch == "sparse" else _dense(ctx, node)]


def _dense(ctx, node: Node) -> str:
    n_exp = node.inputs[UP[0]].type.shape[0]
    idx, w = safe_routing(ctx, node, n_exp)
    x = ctx.emit("Unsqueeze", [arg(ctx, node, 0), ctx.ints([0])])  # [1, T, H]
    y = _ffn(ctx, node, x, None)  # [E, T, H]
    wdt = node.inputs[2].type.dtype
    from onnx import helper

    tokens = ctx.emit("Shape", [arg(ctx, node, 0)], start=0, end=1)
    zero = helper.make_tensor("zero", ONNX_DTYPE[wdt], [1], [0])
    zeros = ctx.emit("ConstantOfShape", [ctx.emit("Concat", [tokens, ctx.ints([n_exp])], axis=0)], value=zero)
    dense = ctx.emit("ScatterElements", [zeros, idx, w], axis=1, reduction="add")  # [T, E]
    per_expert = ctx.emit("Unsqueeze", [ctx.emit("Transpose", [dense], perm=[1, 0]), ctx.ints([2])])  # [E, T, 1]
    return ctx.emit("ReduceSum", [_weighted(ctx, y, per_expert, node), ctx.ints([0])], keepdims=0)


def _sparse(ctx, node: Node) -> str:
    n_exp = node.inputs[UP[0]].type.shape[0]
    h = node.inputs[0].type.shape[1]
    k = node.inputs[1].type.shape[1]
    idx, w = safe_routing(ctx, node, n_exp)
    ids = ctx.emit("Reshape", [idx, ctx.ints([-1])])  # route r = t*K + slot
    n = ctx.emit("Shape", [ids])
    _, order = ctx.emit("TopK", [ids, n], 2, axis=0, largest=0, sorted=1)  # stable: routes grouped by expert
    experts = ctx.const(list(range(n_exp)), DType.I64, (1, n_exp))
    hits = ctx.emit("Cast", [ctx.emit("Equal", [ctx.emit("Unsqueeze", [ids, ctx.ints([1])]), experts])], to=ONNX_DTYPE[DType.I64])
    counts = ctx.emit("ReduceSum", [hits, ctx.ints([0])], keepdims=0)
    ends = ctx.emit("CumSum", [counts, ctx.const(0, DType.I64)])
    starts = ctx.emit("Sub", [ends, counts])
    rows = ctx.emit("Gather", [arg(ctx, node, 0), ctx.emit("Div", [order, ctx.const(k, DType.I64)])], axis=0)  # [N, H]
    outs = []
    for e in range(n_exp):
        at = ctx.ints([e])
        lo, hi = ctx.emit("Gather", [starts, at]), ctx.emit("Gather", [ends, at])
        outs.append(_ffn(ctx, node, ctx.emit("Slice", [rows, lo, hi, ctx.ints([0])]), e))
    y_sorted = ctx.emit("Concat", outs, axis=0) if len(outs) > 1 else outs[0]
    w_sorted = ctx.emit("Unsqueeze", [ctx.emit("Gather", [ctx.emit("Reshape", [w, ctx.ints([-1])]), order], axis=0), ctx.ints([1])])
    weighted = _weighted(ctx, y_sorted, w_sorted, node)
    positions = ctx.emit("Range", [ctx.const(0, DType.I64), ctx.emit("Squeeze", [n, ctx.ints([0])]), ctx.const(1, DType.I64)])
    inverse = ctx.emit("ScatterElements", [positions, order, positions], axis=0)
    by_route = ctx.emit("Gather", [weighted, inverse], axis=0)
    return ctx.emit("ReduceSum", [ctx.emit("Reshape", [by_route, ctx.ints([-1, k, h])]), ctx.ints([1])], keepdims=0)

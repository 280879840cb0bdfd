"""Where a mixture of experts' routing comes from: the facts lift-moe checks before it trusts it.

The `experts` op takes top-k expert ids and their weights from any router. A
hand-written MoE is lifted to it only when the ids are the indices of a top-k
over the last axis of [T, E] router scores (so each token's ids are distinct,
which the dense forms need: a scatter of a repeated id keeps one weight), and
the weights are computed from that same top-k row by row:

    ids      = topk(scores, k, dim=-1).indices                  scores [T, E], E static
    weights  = f(topk(...).values, gather(s, -1, ids), constants)

f made of elementwise ops, casts, and softmax / sums / maxima over the last axis
(renormalisation `w / w.sum(-1, keepdim=True)`, top-k-then-softmax, a routed
scaling factor), so weights[t, j] belongs to ids[t, j]. Weights from anywhere
else (another tensor, an input) are refused: nothing ties them to the ids.
"""

from __future__ import annotations

from ..ir.core import Graph, Node, Value, dims_equal
from .patterns import full_value, producer, scalar_constant

# Elementwise ops that keep weights[t, j] a function of row t's top-k.
_ELEMENTWISE = (
    "cast", "neg", "exp", "log", "sigmoid", "reciprocal", "sqrt", "rsqrt", "abs", "clamp", "add", "sub", "mul", "div",
    "maximum", "minimum", "pow", "where",
)
_ROW_REDUCTIONS = ("sum", "amax", "amin", "mean")


def topk_of(ids: Value) -> Node | None:
    """The `topk` whose indices `ids` is, when it runs over the last axis of [T, E] scores with E static."""
    n = producer(ids, "topk")
    if n is None or ids.index != 1:
        return None
    scores = n.inputs[0].type
    if scores.rank != 2 or n.attrs.dim % 2 != scores.rank - 1 or not isinstance(scores.shape[1], int):
        return None
    return n


def ids_reason(ids: Value) -> str | None:
    """Why `ids` are not router ids (module docstring), or None when they are."""
    if topk_of(ids) is None:
        what = ids.producer.op if ids.producer is not None else "a graph input or param"
        return f"the expert ids come from {what}, not from the indices of a top-k over the last axis of [T, E] router scores"
    return None


def weights_reason(graph: Graph, weights: Value, topk: Node) -> str | None:
    """Why `weights` are not computed from `topk`'s row (module docstring), or None when they are."""
    bad = _foreign(graph, weights, topk, 24)
    if bad is None:
        return None
    return f"the expert weights are computed from {bad}, not from the router's top-k (its values, or scores gathered at its ids)"


def _foreign(graph: Graph, v: Value, topk: Node, depth: int) -> str | None:
    """The first thing in `v`'s computation that is not the top-k row (a description), or None."""
    if v is topk.outputs[0] or scalar_constant(v) is not None:
        return None
    n = v.producer
    if n is None:
        return "a param" if graph.is_param(v) else "a graph input"
    if depth == 0:
        return "a computation too deep to follow"
    if n.op == "gather" and n.attrs.dim % n.inputs[0].type.rank == n.inputs[0].type.rank - 1 and n.inputs[1] is topk.outputs[1]:
        return None
    if n.op in ("softmax", "log_softmax") and n.attrs.dim % max(v.type.rank, 1) == v.type.rank - 1:
        return _foreign(graph, n.inputs[0], topk, depth - 1)
    if n.op in _ROW_REDUCTIONS and n.attrs.keepdim and tuple(d % v.type.rank for d in n.attrs.dims) == (v.type.rank - 1,):
        return _foreign(graph, n.inputs[0], topk, depth - 1)
    if n.op in _ELEMENTWISE:
        if n.op == "where":
            cond = _foreign(graph, n.inputs[0], topk, depth - 1)
            if cond is not None:
                return cond
        for x in n.inputs[1:] if n.op == "where" else n.inputs:
            if x.type.rank > 2 or (x.type.rank == 2 and not dims_equal(x.type.shape[0], topk.outputs[0].type.shape[0]) and x.type.shape[0] != 1):
                return f"{x.producer.op if x.producer else 'a value'} of shape {x.type} broadcast into the weights"
            bad = _foreign(graph, x, topk, depth - 1)
            if bad is not None:
                return bad
        return None
    return f"{n.op}"


def dense_combine(combine: Value) -> tuple[Node, Value, Value] | str:
    """(topk, ids, weights) when `combine` [T, E] is the top-k weights scattered into zeros; else why not."""
    n = combine.producer
    while n is not None and n.op == "cast":
        n = n.inputs[0].producer
    what = n.op if n is not None else "a graph input or param"
    if n is None or n.op != "scatter":
        return f"the combine weights come from {what}, not from top-k weights scattered into zeros: every expert weighs in (a soft mixture), there is no top-k routing to lift"
    base, ids, weights = n.inputs
    if n.attrs.dim % base.type.rank != base.type.rank - 1 or base.type.rank != 2 or full_value(base) not in (0, 0.0) or isinstance(full_value(base), bool):
        return "the combine is a scatter along another axis or into something other than zeros"
    topk = topk_of(ids)
    if topk is None:
        return ids_reason(ids) or "the scattered ids are not a top-k's"
    if not dims_equal(base.type.shape[1], topk.inputs[0].type.shape[1]) or weights.type.shape != ids.type.shape:
        return f"the combine {base.type} does not have one column per expert of the top-k over {topk.inputs[0].type}"
    return topk, ids, weights

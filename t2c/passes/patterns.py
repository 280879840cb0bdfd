"""Shared matchers: the small graph questions every rewriting pass asks.

Passes import these and never each other. Each helper looks at the graph around
a value or node and answers without changing anything:

    producer(v, "mul", "div")     the node making v, if it is one of these ops
    operands_by(node, "rsqrt")    (producer, other operand) for either operand order
    scalar_constant(v)            the number a scalar-shaped `full` holds
    same_value(a, b)              a is b, or both are computed alike from the same values
    skip_noops / skip_casts       look through reshapes to the same shape and casts
    unrepeat_kv(v)                undo repeat_kv (grouped-query K/V)
    only_use(v, graph, user)      v feeds exactly `user` and is no graph output
    trailing_axes(dims, rank)     k when dims are the last k axes
    on_last_axis(node, dim)       whether dim names the last axis of node's operand
    cone(graph, v)                the nodes computing v, or None when an input feeds it
    nonnegative(v, graph)         whether v's computation proves every element >= 0
"""

from __future__ import annotations

from typing import Callable, Iterator

from ..errors import VerifyError
from ..ir.core import Graph, Node, Value
from ..ir.opdefs._infer import norm_axis
from ..ir.verifier import types_match

__all__ = [
    "cone", "full_value", "nonnegative", "on_last_axis", "only_use", "operands_by", "producer", "same_type", "same_value",
    "scalar_constant", "skip_casts", "skip_noops", "trailing_axes", "unrepeat_kv",
]

same_type = types_match


def producer(v: Value, *ops: str) -> Node | None:
    """The node that computes `v` when its op is one of `ops`, else None."""
    n = v.producer
    return n if n is not None and n.op in ops else None


def operands_by(node: Node, which: "str | tuple[str, ...] | Callable[[Node], bool]") -> Iterator[tuple[Node, Value]]:
    """For a binary commutative node: (producer, the other operand) for each operand made by `which`.

    `which` is an op name, a tuple of op names, or a predicate on the producer.
    Both operand orders are tried, first operand first, so a rule reads
    `for rsqrt, h in operands_by(mul, "rsqrt")` instead of looping over orders.
    """
    if len(node.inputs) != 2:
        return
    ops = (which,) if isinstance(which, str) else which
    for mine, other in (node.inputs, node.inputs[::-1]):
        p = mine.producer
        if p is None:
            continue
        if (p.op in ops) if isinstance(ops, tuple) else ops(p):
            yield p, other


def full_value(v: Value) -> object | None:
    """The fill value when `v` is the result of a `full` node, else None."""
    n = producer(v, "full")
    return n.attrs.value if n is not None else None


def scalar_constant(v: Value) -> float | None:
    """The value of a 0-d or all-ones-shaped numeric `full` constant, else None."""
    n = producer(v, "full")
    if n is None or any(d != 1 for d in n.attrs.shape) or not isinstance(n.attrs.value, (int, float)):
        return None
    return float(n.attrs.value)


def same_value(a: Value, b: Value, depth: int = 12) -> bool:
    """`a is b`, or both come from the same op with the same attrs on the same values, recursively.

    Every IR op is pure, so such values are equal; this is what `cse` would
    merge, checked without running it.
    """
    if a is b:
        return True
    na, nb = a.producer, b.producer
    if na is None or nb is None or depth == 0 or a.index != b.index:
        return False
    if na.op != nb.op or na.attrs != nb.attrs or len(na.inputs) != len(nb.inputs) or a.type != b.type:
        return False
    return all(same_value(x, y, depth - 1) for x, y in zip(na.inputs, nb.inputs))


def skip_noops(v: Value) -> Value:
    """Look through reshape/expand to the same shape (left behind when cleanup has not run)."""
    while v.producer is not None and v.producer.op in ("reshape", "expand") and v.producer.inputs[0].type == v.type:
        v = v.producer.inputs[0]
    return v


def skip_casts(v: Value) -> Value:
    """Look through no-op reshapes and any casts."""
    v = skip_noops(v)
    while v.producer is not None and v.producer.op == "cast":
        v = skip_noops(v.producer.inputs[0])
    return v


def unrepeat_kv(v: Value) -> tuple[Value, int]:
    """(kv, repeats): undo `reshape(expand(unsqueeze(kv, 2)))` that repeats KV heads (Hugging Face's repeat_kv)."""
    r = producer(v, "reshape")
    e = producer(r.inputs[0], "expand") if r else None
    u = producer(e.inputs[0], "unsqueeze") if e else None
    if not (r and e and u) or u.attrs.dim != 2:
        return v, 1
    kv = u.inputs[0]
    b, hkv, s, d = kv.type.shape if kv.type.rank == 4 else (None,) * 4
    shape = e.attrs.shape
    if kv.type.rank != 4 or len(shape) != 5 or shape[1] != hkv or not isinstance(shape[2], int):
        return v, 1
    if r.outputs[0].type.shape != (b, hkv * shape[2] if isinstance(hkv, int) else None, s, d):
        return v, 1
    return kv, shape[2]


def only_use(v: Value, graph: Graph, user: Node | None = None) -> bool:
    """Whether `v` has exactly one use (by `user`, when given) and is not a graph output."""
    if len(v.uses) != 1 or any(v is o for o in graph.output_values()):
        return False
    return user is None or v.uses[0][0] is user


def trailing_axes(dims: tuple[int, ...], rank: int) -> int | None:
    """k when `dims` are exactly the last k axes of a rank-`rank` tensor, else None."""
    if not dims:
        return None
    try:
        axes = sorted({norm_axis(d, rank) for d in dims})
    except VerifyError:
        return None
    k = len(axes)
    return k if len(dims) == k and axes == list(range(rank - k, rank)) else None


def on_last_axis(node: Node, dim: int) -> bool:
    """Whether `dim` names the last axis of the node's first operand."""
    r = node.inputs[0].type.rank
    return dim in (r - 1, -1)


def cone(graph: Graph, value: Value) -> list[Node] | None:
    """The nodes computing `value`, in graph order; None if a graph input feeds it (it depends on data)."""
    seen: set[Value] = set()
    stack = [value]
    nodes: set[Node] = set()
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        if v.producer is None:
            if graph.is_param(v):
                continue
            return None
        nodes.add(v.producer)
        stack.extend(v.producer.inputs)
    return [n for n in graph.nodes if n in nodes]


# Ops whose every result is >= 0 whatever the operands (NaN aside).
_NONNEG_RESULTS = ("softmax", "sigmoid", "exp", "relu", "abs", "sqrt", "rsqrt")
# Ops that keep "every element >= 0" when every tensor operand has it.
_NONNEG_KEEPING = (
    "cast", "reshape", "expand", "permute", "squeeze", "unsqueeze", "slice", "select", "cat", "index", "gather",
    "add", "mul", "div", "sum", "mean", "amax", "amin", "maximum", "minimum", "topk", "sort", "cumsum", "repeat", "flip",
)
_INDEX_OPERANDS = {"index": range(1, 64), "gather": (1,)}  # positions that hold indices, not values


def nonnegative(v: Value, graph: Graph, depth: int = 24) -> bool:
    """Whether the computation of `v` proves every element >= 0 (softmax, sigmoid, their top-k, sums, quotients...).

    Conservative: False unless proved. A param counts when its data is all >= 0.
    """
    n = v.producer
    if n is None:
        t = graph.params.get(v.name) if graph.is_param(v) else None
        return t is not None and t.dtype.is_floating_point and bool((t >= 0).all())
    if depth == 0:
        return False
    if n.op in _NONNEG_RESULTS:
        return True
    if n.op == "full":
        value = n.attrs.value
        return isinstance(value, (int, float)) and value >= 0
    if n.op in ("topk", "sort") and v.index != 0:
        return False  # the indices output: ints, not weights
    if n.op == "clamp" and n.attrs.min is not None and n.attrs.min >= 0:
        return True
    if n.op == "where":
        return all(nonnegative(x, graph, depth - 1) for x in n.inputs[1:])
    if n.op not in _NONNEG_KEEPING:
        return False
    skip = _INDEX_OPERANDS.get(n.op, ())
    return all(nonnegative(x, graph, depth - 1) for i, x in enumerate(n.inputs) if i not in skip)
